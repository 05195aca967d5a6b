"""Classical per-pixel estimates used as ME initial guesses.

Centre-of-gravity (COG) line-of-sight velocity and field (Rees & Semel 1979),
the weak-field approximation (WFA) for the transverse field (Landi
Degl'Innocenti & Landolfi 2004, eq. 9.79-9.82), and the azimuth from the
linear polarisation near line centre. Everything is vectorised over pixels and
works on any grid (six HMI tunings or a fully sampled line).

The estimates are starting points, not results: the Levenberg-Marquardt fit
refines them. Their value is to put each pixel in the right basin (polarity,
azimuth quadrant, field regime), which random or constant starts often miss.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from stokesflow.backends.me.lines import ZEEMAN_CONSTANT, Line

__all__ = ["classical_estimates", "typical_doppler_width", "THERMAL_PLUS_MICRO_KMS", "ESTIMATE_COLUMNS"]

_C_KMS = 299792.458
#: Columns of :func:`classical_estimates`: the ME atmosphere's parameters, in the
#: model's order (``stokesflow.backends.me.model.ME_PARAMETERS``).
ESTIMATE_COLUMNS = ("B", "inclination", "azimuth", "vlos", "doppler_width", "eta0", "damping", "S0", "S1")
#: Typical photospheric Doppler velocity sqrt(2kT/m + xi^2) for Fe I lines [km/s].
THERMAL_PLUS_MICRO_KMS = 1.6
#: Fraction of the continuum carried by the source-function gradient, from the
#: solar limb darkening at visible wavelengths (I(mu)/I(1) ~ 0.3 + 0.7 mu).
_S1_FRACTION = 0.7


def typical_doppler_width(wavelength: float) -> float:
    """Doppler width [mA] of a photospheric Fe I line at ``wavelength`` [A]."""
    return wavelength * THERMAL_PLUS_MICRO_KMS / _C_KMS * 1e3


def _window(wavelength: np.ndarray, lines: Sequence[Line]) -> np.ndarray:
    """Boolean mask of points that belong to the first line (nearest line centre)."""
    centres = np.array([ln.wavelength for ln in lines])
    nearest = np.argmin(np.abs(wavelength[:, None] - centres[None, :]), axis=1)
    mask = nearest == 0
    # half-way to the next line or 0.6 A, whichever is closer
    mask &= np.abs(wavelength - centres[0]) < 0.6
    if mask.sum() < 3:
        mask = np.ones_like(mask)
    return mask


def classical_estimates(
    stokes: np.ndarray, wavelength: np.ndarray, lines: Sequence[Line], mu: float = 1.0
) -> np.ndarray:
    """Initial ME parameters for every pixel.

    Parameters
    ----------
    stokes : ndarray (npix, 4, nw)
        Observed profiles in continuum units.
    wavelength : ndarray (nw,)
        Observed wavelengths [A].
    lines : sequence of Line
        The fitted lines; the first one is used for the estimates.
    mu : float
        Heliocentric cosine.

    Returns
    -------
    ndarray (npix, 9)
        B [G], inclination [deg], azimuth [deg], vlos [km/s], doppler_width
        [mA], eta0, damping, S0, S1. Rows of pixels with non-finite data are
        filled with finite defaults (the solver flags those pixels itself).
    """
    st = np.asarray(stokes, dtype=np.float64)
    npix = st.shape[0]
    line = lines[0]
    lam0 = line.wavelength
    g = line.g_eff if line.g_eff > 0 else 1.0
    mask = _window(np.asarray(wavelength, float), lines)
    lam = np.asarray(wavelength, float)[mask]
    I, Q, U, V = (np.nan_to_num(st[:, k, :][:, mask]) for k in range(4))

    ic = np.maximum(np.nan_to_num(st[:, 0, :]).max(axis=1), 1e-3)
    depth = np.clip(ic[:, None] - I, 0.0, None)
    wsum = depth.sum(axis=1) + 1e-12

    # COG velocity of the line
    lam_c = (depth * lam[None, :]).sum(axis=1) / wsum
    vlos = np.clip((lam_c - lam0) / lam0 * _C_KMS, -10.0, 10.0)

    # COG longitudinal field (Rees & Semel 1979): I+V shifts red for B_los > 0
    dp = np.clip(ic[:, None] - (I + V), 0.0, None)
    dm = np.clip(ic[:, None] - (I - V), 0.0, None)
    lp = (dp * lam[None, :]).sum(axis=1) / (dp.sum(axis=1) + 1e-12)
    lm = (dm * lam[None, :]).sum(axis=1) / (dm.sum(axis=1) + 1e-12)
    zfac = ZEEMAN_CONSTANT * lam0 * lam0 * g
    blos = np.clip((lp - lm) / (2.0 * zfac), -5000.0, 5000.0)

    # WFA transverse field from the linear polarisation: L ~ (1/4) G (zfac B_t)^2 |I''|
    # (G = g^2 for a triplet); a least-squares amplitude over the line.
    lin = np.sqrt(Q * Q + U * U)
    if lam.size >= 3:
        d2 = np.gradient(np.gradient(I, lam, axis=1), lam, axis=1)
        num = (lin * np.abs(d2)).sum(axis=1)
        den = 0.25 * zfac * zfac * (d2 * d2).sum(axis=1) + 1e-30
        bt = np.sqrt(np.clip(num / den, 0.0, None))
    else:  # pragma: no cover - guarded by _window
        bt = np.zeros(npix)
    bt = np.clip(bt, 0.0, 5000.0)

    B = np.clip(np.hypot(blos, bt), 50.0, 5000.0)
    incl = np.degrees(np.arctan2(bt, blos))

    # azimuth from Q, U weighted towards line centre (pi component), Q < 0 there for azimuth 0
    core = np.exp(-(((lam[None, :] - lam_c[:, None]) / (typical_doppler_width(lam0) * 1e-3)) ** 2))
    qc = (Q * core).sum(axis=1)
    uc = (U * core).sum(axis=1)
    azi = np.mod(0.5 * np.degrees(np.arctan2(-uc, -qc)), 180.0)

    # source function and line opacity: continuum = S0 + mu S1, line core ~ S0 + mu S1 / (1 + eta0)
    s1 = _S1_FRACTION * ic / mu
    s0 = ic - mu * s1
    imin = np.nan_to_num(st[:, 0, :]).min(axis=1)
    eta0 = np.clip(mu * s1 / np.maximum(imin - s0, 1e-3) - 1.0, 1.0, 60.0)

    columns = {"B": B, "inclination": incl, "azimuth": azi, "vlos": vlos,
               "doppler_width": typical_doppler_width(lam0), "eta0": eta0, "damping": 0.1, "S0": s0, "S1": s1}
    out = np.empty((npix, len(ESTIMATE_COLUMNS)))
    for k, name in enumerate(ESTIMATE_COLUMNS):
        out[:, k] = columns[name]
    return out
