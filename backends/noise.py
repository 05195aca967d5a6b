"""Noise of observed Stokes profiles: a model-free estimate and the chi2 calibration.

Two tools shared by every backend:

- :func:`continuum_noise`, the model-free default of
  :meth:`stokesflow.backends.base.Backend.estimate_noise`: the robust scatter of
  second differences at the continuum points;
- :func:`noise_from_residuals`, the calibration a backend with a forward model
  uses instead: per Stokes parameter, the median over pixels of the residual
  sum of squares divided by the median of a chi2 distribution with that
  Stokes parameter's effective degrees of freedom. A median, not a mean, so
  that fits that failed (outliers with huge residuals) do not bias it.
"""

from __future__ import annotations

import numpy as np
from scipy.special import chdtri  # chi-square inverse survival function; scipy.stats costs ~0.5 s to import

__all__ = ["continuum_noise", "noise_from_residuals", "continuum_points", "MAD_TO_SIGMA", "POOR_CHI2_FLOOR",
           "POOR_CHI2_TAIL", "poor_chi2_threshold"]

#: Median absolute deviation of a unit normal variable, inverted (sigma = MAD_TO_SIGMA * MAD).
MAD_TO_SIGMA = 1.482602218505602

#: A point belongs to the continuum when the median I profile lies within this
#: fraction of the deepest line depth below its maximum.
_CONTINUUM_DEPTH_FRACTION = 0.05


def _check(stokes: np.ndarray, wavelength: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    st = np.asarray(stokes, dtype=np.float64)
    wl = np.asarray(wavelength, dtype=np.float64)
    if st.ndim != 3 or st.shape[1] != 4:
        raise ValueError(f"stokes must have shape (npix, 4, nw), got {st.shape}")
    if wl.shape != (st.shape[2],):
        raise ValueError(f"wavelength must have shape ({st.shape[2]},) to match stokes, got {wl.shape}")
    good = np.all(np.isfinite(st), axis=(1, 2))
    if not good.any():
        raise ValueError("no pixel with finite values to estimate the noise from")
    order = np.argsort(wl, kind="stable")
    return st[good][:, :, order], wl[order]


def continuum_points(stokes: np.ndarray, wavelength: np.ndarray) -> np.ndarray:
    """Boolean mask (nw,) of the continuum points, in increasing-wavelength order.

    A point is continuum when the median Stokes I profile over the pixels lies
    within 5 % of the deepest line depth below its maximum.
    """
    st, _ = _check(stokes, wavelength)
    ref = np.median(st[:, 0, :], axis=0)
    depth = ref.max() - ref
    return depth <= _CONTINUUM_DEPTH_FRACTION * depth.max() if depth.max() > 0 else np.ones(ref.size, bool)


def continuum_noise(stokes: np.ndarray, wavelength: np.ndarray) -> np.ndarray:
    """Model-free noise per Stokes parameter from second differences in the continuum.

    For white noise of sigma s, the second difference x[i-1] - 2 x[i] + x[i+1]
    has standard deviation sqrt(6) s. This estimate takes the second
    differences centred on triples of consecutive continuum points (see
    :func:`continuum_points`), over every pixel, and converts their median
    absolute deviation to a sigma (robust to a few bad pixels).

    Limits: it needs at least one triple of consecutive continuum points.
    Filtergrams (six HMI tunings) and grids that sample only the line core
    have none; the estimate then uses every triple, so the line's own
    curvature adds to it and it is an upper bound (use a model-based estimate,
    e.g. the ME backend's, there). Correlated noise (after a spectral PSF or
    resampling) makes it low. A continuum slope is harmless; telluric or blend
    lines deeper than 5 % of the main line are excluded with the line.

    Parameters
    ----------
    stokes : ndarray (npix, 4, nw)
        Pixels (non-finite ones are dropped), in the data's units.
    wavelength : ndarray (nw,)
        Observed wavelengths [A] (any order).

    Returns
    -------
    ndarray (4,)
        Noise sigma of I, Q, U, V in the data's units.
    """
    st, wl = _check(stokes, wavelength)
    nw = wl.size
    if nw < 3:
        raise ValueError(f"a noise estimate from second differences needs >= 3 wavelength points, got {nw}")
    cont = continuum_points(st, wl)
    centre = cont[1:-1] & cont[:-2] & cont[2:]
    if not centre.any():
        centre = np.ones(nw - 2, dtype=bool)
    c = np.flatnonzero(centre) + 1
    d2 = st[:, :, c - 1] - 2.0 * st[:, :, c] + st[:, :, c + 1]  # (npix, 4, nc)
    d2 = d2.transpose(1, 0, 2).reshape(4, -1)
    mad = np.median(np.abs(d2 - np.median(d2, axis=1, keepdims=True)), axis=1)
    return MAD_TO_SIGMA * mad / np.sqrt(6.0)


def noise_from_residuals(residual: np.ndarray, dof: np.ndarray, *, min_dof: float = 0.5) -> np.ndarray:
    """Noise per Stokes parameter from fit residuals, robust to failed fits.

    Per pixel p and Stokes parameter s, the residual sum of squares RSS_ps is
    sigma_s^2 times a chi2 variable with ``dof[p, s]`` degrees of freedom, so
    sigma_s^2 = median over p of RSS_ps / median(chi2(dof_ps)).

    Parameters
    ----------
    residual : ndarray (npix, 4, nw)
        Observed minus fitted profiles (NaN rows are ignored).
    dof : ndarray (npix, 4) or (4,)
        Effective degrees of freedom of each Stokes parameter (number of
        points minus the share of the fitted parameters it carries, e.g. the
        trace of its block of the hat matrix).
    min_dof : float
        Pixels whose dof for s is below this are left out for s.

    Returns
    -------
    ndarray (4,)
        Noise sigma of I, Q, U, V; NaN where no pixel qualifies.
    """
    r = np.asarray(residual, dtype=np.float64)
    rss = np.sum(r * r, axis=2)  # (npix, 4)
    dof = np.broadcast_to(np.asarray(dof, dtype=np.float64), rss.shape)
    out = np.full(4, np.nan)
    for s in range(4):
        ok = np.isfinite(rss[:, s]) & np.isfinite(dof[:, s]) & (dof[:, s] >= min_dof)
        if ok.any():
            out[s] = np.sqrt(np.median(rss[ok, s] / chdtri(dof[ok, s], 0.5)))
    return out


#: Tail probability of the automatic poor-fit threshold: a fit is poor when its
#: reduced chi2 exceeds the (1 - 1e-6) quantile of chi2(dof) / dof, i.e. a value
#: that noise alone reaches once in a million pixels.
POOR_CHI2_TAIL = 1e-6
#: Floor of the automatic poor-fit threshold [reduced chi2], i.e. an rms
#: residual of 10 noise sigma. Real data carry model error the noise does not
#: (an ME atmosphere for a stratified one, line data, instrument profiles), so
#: the noise quantile alone (3.8 for 15 dof, 1.35 for 439) would flag them: ME
#: fits of the SIR sample (LTE, gradients; noise 1e-3) reach a reduced chi2 of
#: 66 (median 20) with the field right, while the wrong minima of the HMI
#: sunspot of issue 6 (B off by > 1000 G) sat at 2,300-13,000.
POOR_CHI2_FLOOR = 100.0


def poor_chi2_threshold(dof: int, floor: float = POOR_CHI2_FLOOR, tail: float = POOR_CHI2_TAIL) -> float:
    """Automatic poor-fit threshold in reduced chi2 for ``dof`` degrees of freedom.

    ``max(floor, chi2.isf(tail, dof) / dof)``: the floor (100) for every grid
    in use (the 1e-6 quantile is 3.8 for 15 dof, HMI-like; 1.35 for 439,
    Hinode-like), the quantile only for fits of one or two points per
    parameter.
    """
    return max(float(floor), float(chdtri(max(int(dof), 1), tail) / max(int(dof), 1)))
