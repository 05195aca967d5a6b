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

import zipfile
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
    "read_filters_file",
    "gaussian_psf_matrix",
    "kernel_psf_matrix",
    "filter_matrix",
    "hmi_filter_profiles",
    "filter_model_grid",
    "interpolation_matrix",
    "resample_filter_matrix",
    "FILTER_STEP_MA",
    "FILTER_CORE_MA",
    "FILTER_WING_TOL",
]

INSTRUMENT_KINDS = ("grid", "psf", "hmi_filters", "filters")

#: Centre of the HMI tuning range [A] (Fe I 6173.34, Schou et al. 2012).
HMI_LINE_CENTRE = 6173.3433
#: Tuning offsets of the six HMI filtergrams [mA].
HMI_OFFSETS_MA = (-172.0, -103.2, -34.4, 34.4, 103.2, 172.0)
#: Approximate FWHM of the HMI transmission profiles [mA] (Schou et al. 2012).
HMI_FWHM_MA = 76.0
#: Default step of the model grid of filter instruments in the line core [mA]
#: (chosen from the accuracy-speed curve of ``benchmarks/me_throughput.py --filter-curve``).
FILTER_STEP_MA = 20.0
#: Default half-width of the evenly sampled line core of filter instruments
#: beyond the outermost filter centre [mA].
FILTER_CORE_MA = 50.0
#: Transmission weight (fraction of a profile's integral) that the model grid of
#: a filter instrument may leave beyond its outermost points; that weight is
#: carried by the outermost points (flat extrapolation: the damping wing there
#: differs from the continuum by < 1e-2, so the error is < 1e-4; measured:
#: 1e-4 instead changes the filtergrams by < 1e-5 and costs 7 more points).
FILTER_WING_TOL = 1e-2


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


#: Growth of the model-grid step beyond the core of a filter instrument (the damping
#: wings are smooth on the scale of their distance from the line).
_WING_GROWTH = 1.6


def interpolation_matrix(model_wavelength: np.ndarray, wavelength: np.ndarray) -> np.ndarray:
    """Matrix P (n, nm) of cubic-spline interpolation from a model grid to ``wavelength``.

    ``P @ s`` is the natural cubic spline through the samples ``s`` of a
    spectrum on ``model_wavelength`` [A], evaluated at ``wavelength`` [A];
    outside the model grid the spectrum is taken as flat (the value at the
    nearest end). Every row sums to 1, so constants are reproduced exactly.
    """
    from scipy.interpolate import CubicSpline

    x = np.asarray(model_wavelength, dtype=np.float64)
    lam = np.clip(np.asarray(wavelength, dtype=np.float64), x[0], x[-1])
    if x.size < 3:
        raise ConfigError(f"a model grid needs at least 3 points, got {x.size}")
    return CubicSpline(x, np.eye(x.size), bc_type="natural", axis=0)(lam)


def resample_filter_matrix(filter_wavelength: np.ndarray, transmission: np.ndarray,
                           model_wavelength: np.ndarray) -> np.ndarray:
    """Filter matrix (nobs, nm) acting on a model computed on ``model_wavelength``.

    The spectrum between the model points is the cubic spline through them
    (flat beyond the ends), integrated through the profiles on their own
    fine grid: ``filter_matrix(filter_wavelength, transmission) @
    interpolation_matrix(model_wavelength, filter_wavelength)``. Each row
    keeps the normalised profile's total weight (1), so a flat spectrum gives
    the same filtergrams, and a spectrum that the spline follows (smooth on
    the scale of the step) gives the same filtergrams as the profiles on
    their own grid, however fine.
    """
    fine = filter_matrix(filter_wavelength, transmission)
    return fine @ interpolation_matrix(model_wavelength, filter_wavelength)


def filter_model_grid(
    filter_wavelength: np.ndarray,
    transmission: np.ndarray,
    *,
    step_mA: float = FILTER_STEP_MA,
    core_mA: float = FILTER_CORE_MA,
    wing_tol: float | None = None,
) -> np.ndarray:
    """Model wavelengths [A] for filter profiles: an even core, then geometric wings.

    The core runs from ``core_mA`` blueward of the bluest profile's peak to
    ``core_mA`` redward of the reddest one, at (about) ``step_mA``: there lie
    the line, its Zeeman components and Doppler shifts, which the step must
    resolve (a Doppler width of 20-40 mA for photospheric Fe I). Beyond it
    the spectrum is the smooth damping wing and the continuum, sampled with
    steps growing by 1.6x until no profile has more than ``wing_tol`` of its
    weight beyond the last point (or the profiles' own grid ends).

    Parameters
    ----------
    filter_wavelength : ndarray (nf,)
        Grid of the profiles [A], increasing.
    transmission : ndarray (nobs, nf)
        Transmission profiles (any normalisation).
    step_mA : float
        Step of the core [mA].
    core_mA : float
        Extent of the core beyond the outermost profile peaks [mA].
    wing_tol : float, optional
        Largest fraction of a profile's weight left beyond the grid's ends
        (default ``FILTER_WING_TOL``).
    """
    lam = np.asarray(filter_wavelength, dtype=np.float64)
    T = np.atleast_2d(np.asarray(transmission, dtype=np.float64))
    if not step_mA > 0 or not core_mA >= 0:
        raise ConfigError(f"filter model grid: step_mA must be > 0 and core_mA >= 0, got {step_mA}, {core_mA}")
    wing_tol = FILTER_WING_TOL if wing_tol is None else float(wing_tol)
    w = filter_matrix(lam, T)  # rows sum to 1
    peaks = lam[np.argmax(T, axis=1)]
    lo, hi = peaks.min() - core_mA * 1e-3, peaks.max() + core_mA * 1e-3
    n = max(int(np.ceil((hi - lo) / (step_mA * 1e-3) - 1e-9)), 2)
    core = np.linspace(lo, hi, n + 1)
    h = (hi - lo) / n
    # weight beyond each wavelength, worst profile
    below = np.max(np.cumsum(w, axis=1), axis=0)             # weight at or below lam[k]
    above = np.max(np.cumsum(w[:, ::-1], axis=1), axis=0)[::-1]  # weight at or above lam[k]
    blue, red = [], []
    x, d = lo, h
    while x > lam[0] and np.interp(x, lam, below) > wing_tol:
        d *= _WING_GROWTH
        x -= d
        blue.append(max(x, lam[0]))
    x, d = hi, h
    while x < lam[-1] and np.interp(x, lam, above) > wing_tol:
        d *= _WING_GROWTH
        x += d
        red.append(min(x, lam[-1]))
    grid = np.concatenate([np.array(blue[::-1]), core, np.array(red)])
    return np.unique(grid)


#: What numpy raises for a file that is not the array file it was told it is.
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def _load_array(path: str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    try:
        return np.load(p) if p.suffix == ".npy" else np.loadtxt(p)
    except _UNREADABLE as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"cannot read {what} file {path} ({why}); it must be a .npy array or a text table of "
                          "numbers") from None


def read_filters_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The filter profiles of an ``.npz``: ``wavelength`` (nf,) [A] and ``transmission`` (nobs, nf).

    Raises
    ------
    ConfigError
        A missing file, a file that is no npz, or one without the two arrays; one line naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"filters file {path} does not exist")
    try:
        with np.load(p) as z:
            missing = {"wavelength", "transmission"} - set(z.files)
            if missing:
                raise ConfigError(f"filters file {path} lacks array(s) {sorted(missing)}; it must be an npz with "
                                  "arrays 'wavelength' (nf,) [A] and 'transmission' (nobs, nf)")
            return (np.asarray(z["wavelength"], dtype=np.float64).ravel(),
                    np.atleast_2d(np.asarray(z["transmission"], dtype=np.float64)))
    except ConfigError:  # a ValueError too: the missing arrays, said above
        raise
    except (*_UNREADABLE, TypeError) as exc:  # TypeError: an .npy array (not a context manager, no .files)
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not an npz archive of arrays"
        raise ConfigError(f"cannot read filters file {path} ({why}); it must be an npz with arrays 'wavelength' "
                          "(nf,) [A] and 'transmission' (nobs, nf)") from None


def _resampled(kind: str, lam: np.ndarray, T: np.ndarray, step: float | None, core: float | None) -> Instrument:
    """Filter instrument on the model grid of :func:`filter_model_grid`, unless the profiles' grid is coarser."""
    step = FILTER_STEP_MA if step is None else float(step)
    core = FILTER_CORE_MA if core is None else float(core)
    grid = filter_model_grid(lam, T, step_mA=step, core_mA=core)
    if grid.size >= lam.size:  # already coarse: nothing to gain
        return Instrument(kind, lam, filter_matrix(lam, T))
    return Instrument(kind, grid, resample_filter_matrix(lam, T, grid))


def make_instrument(
    kind: str,
    wavelength: np.ndarray,
    *,
    psf_fwhm: float = 0.0,
    psf_file: str | None = None,
    filters_file: str | None = None,
    filters: tuple[np.ndarray, np.ndarray] | None = None,
    filter_step: float | None = None,
    filter_core: float | None = None,
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
    filter_step : float, optional
        Step [mA] of the model grid of the filter instruments in the line
        core (:func:`filter_model_grid`), onto which the profiles are
        resampled (:func:`resample_filter_matrix`); default
        ``FILTER_STEP_MA``; 0 computes the model on the profiles' own grid
        (the built-in ``hmi_filters``: +-500 mA at 10 mA).
    filter_core : float, optional
        Extent of the evenly sampled core beyond the outermost profile peaks
        [mA]; default ``FILTER_CORE_MA``.
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
        if nw != len(HMI_OFFSETS_MA):
            raise ConfigError(f"instrument 'hmi_filters' has 6 filtergrams but the observation has {nw} points")
        if filter_step == 0:
            lam, T = hmi_filter_profiles(centre=float(wavelength.mean()))
            return Instrument(kind, lam, filter_matrix(lam, T))
        # the Gaussians on a 1 mA grid out to where they vanish, then onto the model grid
        lam, T = hmi_filter_profiles(centre=float(wavelength.mean()), step_mA=1.0, half_range_mA=500.0)
        return _resampled(kind, lam, T, filter_step, filter_core)
    if kind == "filters":
        if filters_file:
            lam, T = read_filters_file(filters_file)
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
        if filter_step == 0:
            return Instrument(kind, lam, filter_matrix(lam, T))
        filter_matrix(lam, T)  # checks the profiles
        return _resampled(kind, lam, T, filter_step, filter_core)
    raise ConfigError(f"unknown instrument {kind!r}; valid kinds: {list(INSTRUMENT_KINDS)}")
