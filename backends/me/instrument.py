"""Instrument models of the ME backend: how a model spectrum becomes observed points.

Every instrument is a linear map ``observed = matrix @ model`` from a model
wavelength grid to the observed points, applied to each Stokes parameter:

- ``grid``: no convolution, the model is computed at the observed wavelengths;
- ``psf``: a Gaussian spectral PSF of given FWHM, or a user-given kernel, on
  the observed grid;
- ``hmi_filters``: HMI-like filtergrams, each observed point the model
  spectrum integrated through a transmission profile (built-in Gaussian
  profiles of ~76 mA FWHM at the six tuning positions);
- ``filters``: user-supplied measured transmission profiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stokesflow.backends.base import ConfigError

__all__ = [
    "INSTRUMENT_KINDS",
    "HMI_LINE_CENTRE",
    "HMI_OFFSETS_MA",
    "HMI_FWHM_MA",
    "Instrument",
    "make_instrument",
    "gaussian_psf_matrix",
    "kernel_psf_matrix",
    "filter_matrix",
    "hmi_filter_profiles",
]

INSTRUMENT_KINDS = ("grid", "psf", "hmi_filters", "filters")

#: Centre of the HMI tuning range [A] (Fe I 6173.34, Schou et al. 2012).
HMI_LINE_CENTRE = 6173.3433
#: Tuning offsets of the six HMI filtergrams [mA].
HMI_OFFSETS_MA = (-172.0, -103.2, -34.4, 34.4, 103.2, 172.0)
#: Approximate FWHM of the HMI transmission profiles [mA] (Schou et al. 2012).
HMI_FWHM_MA = 76.0


@dataclass(frozen=True)
class Instrument:
    """A linear instrument.

    Attributes
    ----------
    kind : str
        One of ``INSTRUMENT_KINDS``.
    model_wavelength : ndarray, shape (nm,)
        Wavelengths at which the model is computed [A].
    matrix : ndarray, shape (no, nm) or (0, 0)
        observed = matrix @ model; (0, 0) means identity (``grid``).
    """

    kind: str
    model_wavelength: np.ndarray
    matrix: np.ndarray

    @property
    def n_observed(self) -> int:
        """Number of observed points per Stokes parameter."""
        return self.matrix.shape[0] if self.matrix.size else self.model_wavelength.size


def gaussian_psf_matrix(wavelength: np.ndarray, fwhm_mA: float) -> np.ndarray:
    """Row-normalised Gaussian PSF matrix on the observed grid.

    Parameters
    ----------
    wavelength : ndarray (nw,)
        Observed wavelengths [A].
    fwhm_mA : float
        Full width at half maximum [mA].
    """
    if fwhm_mA <= 0:
        raise ConfigError(f"psf_fwhm must be > 0 mA for instrument 'psf', got {fwhm_mA}")
    sig = fwhm_mA * 1e-3 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    d = wavelength[:, None] - wavelength[None, :]
    m = np.exp(-0.5 * (d / sig) ** 2)
    m[m < 1e-8] = 0.0
    return m / m.sum(axis=1, keepdims=True)


def kernel_psf_matrix(nw: int, kernel: np.ndarray) -> np.ndarray:
    """Row-normalised PSF matrix from a kernel sampled at the observed step (odd length)."""
    kernel = np.asarray(kernel, dtype=float).ravel()
    if kernel.size % 2 != 1:
        raise ConfigError(f"a PSF kernel needs an odd number of samples (centred), got {kernel.size}")
    h = kernel.size // 2
    m = np.zeros((nw, nw))
    for i in range(nw):
        for k in range(-h, h + 1):
            j = i + k
            if 0 <= j < nw:
                m[i, j] = kernel[k + h]
    s = m.sum(axis=1, keepdims=True)
    if np.any(s <= 0):
        raise ConfigError("the PSF kernel sums to zero or less")
    return m / s


def filter_matrix(filter_wavelength: np.ndarray, transmission: np.ndarray) -> np.ndarray:
    """Matrix integrating a model on ``filter_wavelength`` through each transmission profile.

    Uses trapezoid weights so that each row integrates the normalised
    profile: observed_i = int T_i(l) S(l) dl / int T_i(l) dl.
    """
    lam = np.asarray(filter_wavelength, dtype=float)
    T = np.atleast_2d(np.asarray(transmission, dtype=float))
    if T.shape[1] != lam.size:
        raise ConfigError(
            f"filter transmission has shape {T.shape}; expected (n_filters, {lam.size}) to match its wavelength grid"
        )
    if np.any(np.diff(lam) <= 0):
        raise ConfigError("filter wavelength grid must increase strictly")
    w = np.zeros_like(lam)
    dl = np.diff(lam)
    w[:-1] += 0.5 * dl
    w[1:] += 0.5 * dl
    m = T * w[None, :]
    s = m.sum(axis=1, keepdims=True)
    if np.any(s <= 0):
        raise ConfigError("a filter transmission profile integrates to zero or less")
    return m / s


def hmi_filter_profiles(
    centre: float = HMI_LINE_CENTRE, step_mA: float = 10.0, half_range_mA: float = 500.0
) -> tuple[np.ndarray, np.ndarray]:
    """Built-in HMI-like transmission profiles: Gaussians of 76 mA FWHM at the six tunings.

    Returns
    -------
    wavelength : ndarray (nf,)
        Fine model grid [A].
    transmission : ndarray (6, nf)
        Profiles, ordered from the bluest to the reddest tuning.
    """
    off = np.arange(-half_range_mA, half_range_mA + 0.5 * step_mA, step_mA)
    lam = centre + off * 1e-3
    sig = HMI_FWHM_MA / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    T = np.exp(-0.5 * ((off[None, :] - np.array(HMI_OFFSETS_MA)[:, None]) / sig) ** 2)
    return lam, T


def _load_array(path: str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    if p.suffix == ".npy":
        return np.load(p)
    return np.loadtxt(p)


def make_instrument(
    kind: str,
    wavelength: np.ndarray,
    *,
    psf_fwhm: float = 0.0,
    psf_file: str | None = None,
    filters_file: str | None = None,
    filters: tuple[np.ndarray, np.ndarray] | None = None,
) -> Instrument:
    """Build the instrument for an observed grid.

    Parameters
    ----------
    kind : str
        One of ``INSTRUMENT_KINDS``.
    wavelength : ndarray (nw,)
        Observed wavelengths [A] (for filter instruments: nominal tuning
        wavelengths, used only to check the count).
    psf_fwhm : float
        Gaussian PSF FWHM [mA] (``psf``).
    psf_file : str, optional
        ``.npy`` or text file with a PSF kernel sampled at the observed step (``psf``).
    filters_file : str, optional
        ``.npz`` with ``wavelength`` (nf,) [A] and ``transmission`` (nw, nf) (``filters``).
    filters : (wavelength (nf,), transmission (nw, nf)), optional
        The same profiles as arrays (e.g. the observation's ``/filters``
        datasets); used when ``filters_file`` is not given.
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    nw = wavelength.size
    if kind == "grid":
        return Instrument(kind, wavelength, np.zeros((0, 0)))
    if kind == "psf":
        if psf_file:
            m = kernel_psf_matrix(nw, _load_array(psf_file, "PSF"))
        else:
            m = gaussian_psf_matrix(wavelength, psf_fwhm)
        return Instrument(kind, wavelength, m)
    if kind == "hmi_filters":
        # centred on the observed tuning positions, which carry the line centre
        lam, T = hmi_filter_profiles(centre=float(wavelength.mean()))
        if nw != T.shape[0]:
            raise ConfigError(f"instrument 'hmi_filters' has 6 filtergrams but the observation has {nw} points")
        return Instrument(kind, lam, filter_matrix(lam, T))
    if kind == "filters":
        if filters_file:
            p = Path(filters_file)
            if not p.is_file():
                raise ConfigError(f"filters file {filters_file} does not exist")
            with np.load(p) as z:
                missing = {"wavelength", "transmission"} - set(z.files)
                if missing:
                    raise ConfigError(f"filters file {filters_file} lacks array(s) {sorted(missing)}")
                lam, T = z["wavelength"], z["transmission"]
            what = f"filters file {filters_file}"
        elif filters is not None:
            if len(filters) != 2:
                raise ConfigError("filters must be a pair (wavelength (nf,), transmission (nobs, nf))")
            lam, T = filters
            what = "the observation's /filters/transmission"
        else:
            raise ConfigError(
                "instrument 'filters' needs filters_file = 'profiles.npz' (wavelength, transmission), "
                "or an observation that stores /filters/wavelength and /filters/transmission"
            )
        lam = np.asarray(lam, dtype=np.float64).ravel()
        T = np.atleast_2d(np.asarray(T, dtype=np.float64))
        if T.shape[0] != nw:
            raise ConfigError(f"{what} has {T.shape[0]} profiles but the observation has {nw} points")
        return Instrument(kind, lam, filter_matrix(lam, T))
    raise ConfigError(f"unknown instrument {kind!r}; valid kinds: {list(INSTRUMENT_KINDS)}")
