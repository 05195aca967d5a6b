"""The Milne-Eddington backend: numba ME forward model + lm_solver.

Usable without any cluster::

    from stokesflow.backends import get_backend
    me = get_backend("me", {"lines": ["FeI_6301", "FeI_6302"]})
    stokes = me.synthesize(params, wavelength)          # (npix, 4, nw)
    result = me.invert(stokes, wavelength)              # ChunkResult
"""

from __future__ import annotations

import dataclasses
import hashlib
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from stokesflow.backends.base import (
    STATUS_BAD_INPUT,
    STATUS_FAILED,
    STATUS_MAX_ITER,
    STATUS_OK,
    STATUS_POOR_FIT,
    Backend,
    BackendError,
    ChunkResult,
    ConfigError,
    ParameterSpec,
    valid_pixels,
)
from stokesflow.backends.me import _kernels
from stokesflow.backends.me.estimates import (
    ESTIMATE_COLUMNS,
    classical_estimates,
    depth_table,
    depth_table_estimates,
    doppler_magnetogram,
    doppler_calibration,
    field_calibration,
    field_depth_table,
    field_depth_table_estimates,
    template_azimuth,
)
from stokesflow.backends.me.instrument import HMI_OFFSETS_MA, INSTRUMENT_KINDS, read_filters_file
from stokesflow.backends.me.lines import get_lines
from stokesflow.backends.me.model import ME_PARAMETERS, MEModel, me_parameters, params_to_array
from stokesflow.backends.noise import (
    POOR_CHI2_FLOOR,
    POOR_CHI2_TAIL,
    continuum_noise,
    continuum_points,
    noise_from_residuals,
    poor_chi2_threshold,
)
from stokesflow.lm_solver import BOUND_MODES, FitResult, LMOptions, fit

__all__ = ["MEOptions", "MEBackend", "POOR_CHI2_FLOOR", "POOR_CHI2_TAIL", "RETRY_RELATIVE", "poor_chi2_threshold"]

_STOKES_WEIGHT_DEFAULT = (1.0, 1.0, 1.0, 1.0)

#: The filter instrument's estimate tables per process (:meth:`MEBackend._filter_tables`), keyed by
#: what they are computed from, so that every backend instance of a process computes them once: each
#: run builds its own instance (the phases of ``stokesflow assist``, a worker serving several runs),
#: and the tables cost 0.12 s per instance on HMI filter profiles. At most this many are kept.
_TABLES_PER_PROCESS = 8
_FILTER_TABLES: dict[str, dict[str, Any]] = {}


def _tables_key(model: MEModel, wl: np.ndarray, lines: Any, mu: float, npar: int) -> str:
    """A digest of everything the filter tables depend on: the model's kernel context (lines,
    instrument matrix, model grid, mu), the observed grid, the lines and the number of parameters."""
    h = hashlib.blake2b(digest_size=16)
    for a in tuple(model.ctx) + (wl,):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    h.update(repr((tuple(lines), float(mu), int(npar), int(model.n_observed))).encode())
    return h.hexdigest()

#: A pixel above good_chi2 gets extra starts when its reduced chi2 is also above
#: this many times the median of the converged pixels fitted with it (or above
#: the poor-fit threshold).
RETRY_RELATIVE = 3.0


def _as_noise(value: Any, where: str) -> float | tuple[float, float, float, float] | None:
    """Noise as a float, 4 floats (I, Q, U, V), or None; ConfigError if malformed."""
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64).ravel()
    if arr.size == 1:
        return float(arr[0])
    if arr.size == 4:
        return tuple(float(v) for v in arr)
    raise ConfigError(f"{where} noise must be one number or 4 numbers (I, Q, U, V), got {value!r}")


@dataclass(frozen=True)
class MEOptions:
    """Options of the ME backend (TOML table ``[backend.me]``).

    Attributes
    ----------
    lines : tuple of str, optional
        Line names fitted together; default: the observation's ``lines``.
    line_table : str, optional
        User TOML line table extending/overriding the packaged one.
    instrument : str, optional
        ``grid`` (no convolution), ``psf``, ``hmi_filters`` or ``filters``;
        default: the observation's ``spectral_instrument``, else ``grid``.
    psf_fwhm : float
        Gaussian spectral PSF FWHM [mA] for ``psf``; default: the
        observation's ``psf_fwhm``.
    psf_file : str, optional
        PSF kernel sampled at the observed step (``psf``).
    filters_file : str, optional
        ``.npz`` with ``wavelength`` and ``transmission`` (``filters``);
        default: the observation's ``/filters`` profiles.
    filter_step : float, optional
        ``hmi_filters``/``filters``: step of the model grid in the line core
        [mA], onto which the profiles are resampled so that each keeps its
        weights (``stokesflow.backends.me.instrument.filter_model_grid``);
        default 20 mA; 0 computes the model on the profiles' own grid (as
        fine as they are sampled, e.g. 701 points at 2 mA: exact, but the fits
        are ~15x slower).
    filter_core : float, optional
        Extent of the evenly sampled core beyond the outermost filter peaks
        [mA]; default 50 mA.
    filter_estimates : str
        Starting values for ``hmi_filters``/``filters``: ``hmi`` (default:
        vlos from the HMI pipeline's closed-form Doppler algorithm, eta0 and
        the continuum from depth tables of magnetic lines, the azimuth from
        a synthesis of the pixel's own estimate; median 7 LM iterations on
        measured-style HMI filtergrams) or ``cog`` (centre of gravity,
        field-free depth table and line-centre azimuth: 14 iterations).
    mu : float
        Heliocentric cosine of the observation.
    noise : float or 4 floats, optional
        Noise sigma [continuum units], one for all Stokes parameters or one
        each for I, Q, U, V. Default: the observation's ``noise``, else
        estimated from the data (:meth:`MEBackend.estimate_noise`), so the
        fit is always in statistical units.
    stokes_weights : tuple of 4 float
        Relative weights of I, Q, U, V in chi2 (on top of 1 / noise^2).
    max_iter : int
        Levenberg-Marquardt iterations per start.
    chi2_tol : float
        A fit has converged when a step lowers chi2 by less than this many
        times the reduced chi2 (with the noise known, an absolute chi2 change:
        0.02 leaves each parameter within ~0.15 sigma of the minimum). It
        becomes the solver's relative tolerance ``chi2_tol / dof``, so a fit of
        six points and one of 448 stop at the same statistical precision.
    n_starts : int
        Starting points per pixel: the classical estimate, then its azimuth
        rotated by 90 deg, then its opposite polarity, then seeded random
        draws; the lowest chi2 wins.
    good_chi2 : float
        Stop trying further starts once the reduced chi2 (statistical units:
        the noise is always known or estimated) is below this; a pixel still
        above it after ``n_starts`` may get extra starts (``max_starts``).
    sigma_tol : float
        Statistical step rule of the LM engine (``LMOptions.sigma_tol``): a
        fit has also converged once the next, nearly undamped step would move
        every parameter by less than this fraction of its own 1-sigma
        uncertainty at the current point. 0 (default) turns it off.
        ``stokesflow assist`` uses 0.05 for its short strategy:
        on HMI's six points eta0, the source function and the damping trade
        off along flat valleys where LM otherwise keeps crawling.
    max_starts : int
        Cap on the starts of a pixel still above ``good_chi2`` after its
        ``n_starts``: only those pixels (and of them only the ones above the
        poor-fit threshold or 3x the median chi2 of their chunk, see
        ``RETRY_RELATIVE``) get the extra starts (the same sequence,
        continued), up to this many in all. ``max_starts = n_starts`` turns
        them off.
    poor_chi2 : float, optional
        Reduced chi2 above which a fit that ended is flagged ``poor fit``
        (status 4, parameters kept). Default: :func:`poor_chi2_threshold`,
        ``max(100, chi2.isf(1e-6, dof) / dof)`` (an rms residual of 10 noise
        sigma; see ``POOR_CHI2_FLOOR`` for why).
    regularize : tuple of (name, target, weight)
        Tikhonov pull of parameters towards a value (VFISV pulls eta0 to 5):
        adds ``weight * ((p - target) / scale)^2`` to chi2.
    stray_light_file : str, optional
        ``.npy`` (4, nw) stray-light profile; adds a fitted filling factor.
    return_synthetic : bool
        Also return the best-fit profiles.
    threads : int
        Threads per call (the numba kernels release the GIL).
    seed : int
        Seed of the random extra starts.
    """

    lines: tuple[str, ...] | str | None = field(
        default=None, metadata={"expected": 'a list of line names, e.g. ["FeI_6301", "FeI_6302"]'})
    line_table: str | None = None
    instrument: str | None = field(
        default=None, metadata={"expected": f"one of {list(INSTRUMENT_KINDS)}"})
    psf_fwhm: float = 0.0
    psf_file: str | None = None
    filters_file: str | None = None
    filter_step: float | None = None
    filter_core: float | None = None
    filter_estimates: str = field(default="hmi", metadata={"expected": 'one of ["hmi", "cog"]'})
    mu: float = 1.0
    noise: float | tuple[float, float, float, float] | None = field(
        default=None, metadata={"expected": "a number > 0 or a list of 4 numbers [I, Q, U, V]"})
    stokes_weights: tuple[float, float, float, float] = field(
        default=_STOKES_WEIGHT_DEFAULT, metadata={"expected": "a list of 4 numbers >= 0 [I, Q, U, V]"})
    max_iter: int = 50
    chi2_tol: float = 0.02
    sigma_tol: float = 0.0
    n_starts: int = 2
    good_chi2: float = 3.0
    max_starts: int = 8
    poor_chi2: float | None = None
    regularize: tuple[tuple[str, float, float], ...] = field(
        default=(), metadata={"expected": 'a list of [name, target, weight], e.g. [["eta0", 5.0, 0.1]]'})
    stray_light_file: str | None = None
    return_synthetic: bool = False
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lines is not None:
            lines = self.lines
            if isinstance(lines, str):
                lines = [n.strip() for n in lines.split(",") if n.strip()]
            object.__setattr__(self, "lines", tuple(lines))
        if self.instrument is not None and self.instrument not in INSTRUMENT_KINDS:
            raise ConfigError(f"[backend.me] instrument = {self.instrument!r}; valid: {list(INSTRUMENT_KINDS)}")
        # profiles given as options say which instrument they are for (over the observation's statement)
        implied = "filters" if self.filters_file else "psf" if (self.psf_file or self.psf_fwhm) else None
        if self.instrument is None and implied is not None:
            object.__setattr__(self, "instrument", implied)
        if implied is not None and self.instrument != implied:
            given = "filters_file" if implied == "filters" else "psf_file" if self.psf_file else "psf_fwhm"
            raise ConfigError(f"[backend.me] {given} is used with instrument = {implied!r} only, but instrument = "
                              f"{self.instrument!r}; drop one of them (-B {given}=..., -B instrument=...)")
        if len(tuple(self.stokes_weights)) != 4 or min(self.stokes_weights) < 0:
            raise ConfigError(f"[backend.me] stokes_weights must be 4 numbers >= 0, got {self.stokes_weights!r}")
        noise = _as_noise(self.noise, "[backend.me]")
        if noise is not None and not np.all(np.isfinite(noise) & (np.asarray(noise) > 0)):
            raise ConfigError(f"[backend.me] noise must be > 0 (one number or 4: I, Q, U, V), got {self.noise!r}")
        object.__setattr__(self, "noise", noise)
        for name in ("filter_step", "filter_core"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and v >= 0):
                raise ConfigError(f"[backend.me] {name} must be a number >= 0 [mA] (filter_step = 0: the profiles' "
                                  f"own grid), got {v!r}")
        if self.filter_estimates not in ("hmi", "cog"):
            raise ConfigError(f"[backend.me] filter_estimates must be 'hmi' (default) or 'cog' (the centre-of-gravity "
                              f"starting values of filtergrams), got {self.filter_estimates!r}")
        if not 0 < self.mu <= 1:
            raise ConfigError(f"[backend.me] mu must be in (0, 1], got {self.mu!r}")
        if not self.chi2_tol > 0:
            raise ConfigError(f"[backend.me] chi2_tol must be > 0, got {self.chi2_tol!r}")
        if not (np.isfinite(self.sigma_tol) and self.sigma_tol >= 0):
            raise ConfigError(f"[backend.me] sigma_tol must be a number >= 0 (0 = off), got {self.sigma_tol!r}")
        if int(self.n_starts) < 1 or int(self.max_iter) < 1:
            raise ConfigError(
                f"[backend.me] n_starts and max_iter must be >= 1, got n_starts={self.n_starts!r}, "
                f"max_iter={self.max_iter!r}"
            )
        if int(self.max_starts) < 1:
            raise ConfigError(f"[backend.me] max_starts must be >= 1 (no extra starts: max_starts = n_starts), "
                              f"got {self.max_starts!r}")
        if self.poor_chi2 is not None and not self.poor_chi2 > 0:
            raise ConfigError(f"[backend.me] poor_chi2 must be > 0 (reduced chi2), got {self.poor_chi2!r}")
        names = {p.name for p in ME_PARAMETERS}
        expected = 'a list of [name, target, weight], e.g. regularize = [["eta0", 5.0, 0.1]]'
        if isinstance(self.regularize, str) or not isinstance(self.regularize, (list, tuple)):
            raise ConfigError(f"[backend.me] regularize: expected {expected}, got {self.regularize!r}")
        reg = []
        for r in self.regularize:
            if isinstance(r, str) or not isinstance(r, (list, tuple)) or len(r) != 3 or r[0] not in names:
                raise ConfigError(
                    f"[backend.me] regularize: expected {expected} with name in {sorted(names)}; "
                    f"got entry {r!r}"
                )
            try:
                reg.append((str(r[0]), float(r[1]), float(r[2])))
            except (TypeError, ValueError):
                raise ConfigError(f"[backend.me] regularize: target and weight must be numbers, got {r!r}") from None
        object.__setattr__(self, "regularize", tuple(reg))
        object.__setattr__(self, "stokes_weights", tuple(float(w) for w in self.stokes_weights))


def _decode(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


class MEBackend(Backend):
    """Milne-Eddington inversion with the numba model and Levenberg-Marquardt solver."""

    name = "me"
    options_class = MEOptions
    setup_note = "its numba kernels are compiled on the first run (about 10-20 s, once) and loaded from the cache afterwards"

    def __init__(self, options: MEOptions | Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self._models: dict[bytes, MEModel] = {}
        self._depth_tables: dict[bytes, dict[str, Any]] = {}
        self._stray = None
        #: measured filter profiles (wavelength, transmission) from the observation
        self._filters: tuple[np.ndarray, np.ndarray] | None = None
        if self.options.stray_light_file:
            try:
                self._stray = np.load(self.options.stray_light_file)
            except OSError as exc:
                raise ConfigError(f"cannot read stray_light_file {self.options.stray_light_file}: {exc}") from exc
        if self.options.lines is not None:
            self._lines = get_lines(self.options.lines, self.options.line_table)
        else:
            self._lines = None

    # -- pickling: drop compiled-model caches, rebuild on the worker ------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_models"] = {}
        state["_depth_tables"] = {}
        return state

    @property
    def lines(self):
        """The fitted lines (``stokesflow.backends.me.lines.Line``)."""
        if self._lines is None:
            raise BackendError(
                "the ME backend does not know which lines to fit: set [backend.me] lines = ['FeI_6173'] "
                "or give the observation a 'lines' attribute"
            )
        return self._lines

    @property
    def parameters(self) -> tuple[ParameterSpec, ...]:
        return me_parameters(self._stray is not None)

    @property
    def instrument(self) -> str:
        """The instrument kind in use (option ``instrument``, default ``grid``)."""
        return self.options.instrument or "grid"

    @property
    def noise(self) -> np.ndarray | None:
        """Noise sigma of I, Q, U, V (4,) [continuum units], or None when unknown."""
        if self.options.noise is None:
            return None
        return np.broadcast_to(np.asarray(self.options.noise, dtype=np.float64), (4,)).copy()

    def _replace(self, filters: tuple[np.ndarray, np.ndarray] | None = None, **updates: Any) -> "MEBackend":
        new = MEBackend(dataclasses.replace(self.options, **updates))
        new._filters = filters if filters is not None else self._filters
        return new

    def for_observation(self, meta: Mapping[str, Any]) -> "MEBackend":
        """This backend with what the observation states filled in; explicit options win.

        Uses ``meta["lines"]`` (comma-separated names), ``meta["noise"]`` (one
        sigma or four, I, Q, U, V; NaN or <= 0 means unknown),
        ``meta["spectral_instrument"]`` (``grid``, ``psf``, ``hmi_filters``,
        ``filters``), ``meta["psf_fwhm"]`` [mA] and ``meta["filters"]`` =
        (wavelength (nf,) [A], transmission (nobs, nf)).
        """
        updates: dict[str, Any] = {}
        o = self.options
        if o.lines is None and meta.get("lines") is not None:
            raw = str(_decode(meta["lines"]))
            names = tuple(n.strip() for n in raw.split(",") if n.strip())
            if names:
                updates["lines"] = names
        if o.noise is None and meta.get("noise") is not None:
            try:
                noise = _as_noise(meta["noise"], "the observation attribute")
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"the observation attribute noise = {meta['noise']!r} is not one number or 4 (I, Q, U, V): {exc}"
                ) from None
            if noise is not None and np.all(np.isfinite(noise) & (np.asarray(noise) > 0)):
                updates["noise"] = noise
        instrument = o.instrument
        if instrument is None and meta.get("spectral_instrument") is not None:
            instrument = str(_decode(meta["spectral_instrument"])).strip()
            if instrument not in INSTRUMENT_KINDS:
                raise ConfigError(
                    f"the observation's spectral_instrument = {instrument!r} is not one of {list(INSTRUMENT_KINDS)}; "
                    "override it with -B instrument=..."
                )
            updates["instrument"] = instrument
        if instrument == "psf" and not o.psf_fwhm and not o.psf_file and meta.get("psf_fwhm") is not None:
            updates["psf_fwhm"] = float(meta["psf_fwhm"])
        filters = None
        if instrument == "filters" and not o.filters_file and meta.get("filters") is not None:
            lam, T = meta["filters"]
            filters = (np.asarray(lam, dtype=np.float64), np.asarray(T, dtype=np.float64))
        if not updates and filters is None:
            return self
        return self._replace(filters=filters, **updates)

    def model_for(self, wavelength: np.ndarray, *, filter_step: float | None = None) -> MEModel:
        """The (cached) forward model for an observed grid.

        ``filter_step`` [mA] overrides the option of the same name (the
        accuracy-speed curve of the benchmark).
        """
        wl = np.ascontiguousarray(wavelength, dtype=np.float64)
        step = self.options.filter_step if filter_step is None else filter_step
        key = wl.tobytes() + repr(step).encode()
        model = self._models.get(key)
        if model is None:
            o = self.options
            if wl.ndim != 1 or wl.size < 2 or not np.all(np.isfinite(wl)):
                raise BackendError(f"wavelength must be a finite 1-D array of >= 2 points, got shape {wl.shape}")
            model = MEModel.for_grid(
                self.lines, wl, self.instrument, psf_fwhm=o.psf_fwhm, psf_file=o.psf_file,
                filters_file=o.filters_file, filters=self._filters, filter_step=step,
                filter_core=o.filter_core, mu=o.mu, stray=self._stray,
            )
            lo = min(ln.wavelength for ln in self.lines)
            hi = max(ln.wavelength for ln in self.lines)
            mw = model.instrument.model_wavelength
            if hi < mw.min() - 2.0 or lo > mw.max() + 2.0:
                if self.instrument == "filters":  # the model grid is the profiles' own
                    source = o.filters_file or "the observation's /filters"
                    where = (f"the wavelengths of the filter profiles ({source}), {mw.min():.2f}-{mw.max():.2f} A: "
                             "wrong line names, or profiles not in A?")
                else:
                    where = (f"the observed wavelength range {mw.min():.2f}-{mw.max():.2f} A: wrong line names or "
                             "wavelength units?")
                raise BackendError(f"lines {[ln.name for ln in self.lines]} ({lo:.2f}-{hi:.2f} A) lie outside {where}")
            self._models[key] = model
        return model

    # -- worker warm-up ---------------------------------------------------------
    def _warm_grid(self) -> np.ndarray:
        """Observed wavelengths [A] that this backend's instrument accepts (for the warm-up)."""
        centre = self.lines[0].wavelength
        kind = self.instrument
        if kind == "hmi_filters":
            return centre + np.asarray(HMI_OFFSETS_MA) * 1e-3
        if kind == "filters":
            if self.options.filters_file:
                n = int(read_filters_file(self.options.filters_file)[1].shape[0])
            elif self._filters is not None:
                n = int(np.atleast_2d(self._filters[1]).shape[0])
            else:
                n = 6  # make_instrument reports the missing profiles
            return centre + np.linspace(-0.172, 0.172, n)
        return centre + np.linspace(-0.3, 0.3, 8)

    def setup(self, trial: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Compile (or load from numba's on-disk cache) the kernels with one tiny fit.

        Called once per worker process.

        Parameters
        ----------
        trial : (stokes (n, 4, nw), wavelength (nw,)), optional
            Real pixels of the observation: the warm-up inverts (up to two of)
            them on the observation's own grid, which the instrument accepts,
            and so also checks that grid and instrument agree. Without a
            trial the warm-up synthesises one pixel on a grid the configured
            instrument accepts (six points for ``hmi_filters``, one per
            profile for ``filters``, eight otherwise). A backend that does not
            know its lines yet warms up on Fe I 6173 without an instrument:
            the compiled kernels do not depend on either.
        """
        if trial is not None and self._lines is not None:
            stokes, wavelength = trial
            stokes = np.asarray(stokes, dtype=np.float64)
            if stokes.ndim == 2:
                stokes = stokes[None]
            self.invert(stokes[:2], np.asarray(wavelength, dtype=np.float64))
            return
        if self._lines is not None:
            warm = self._replace(
                noise=self.options.noise if self.options.noise is not None else 1e-3,
                stray_light_file=None, return_synthetic=False, threads=1,
            )
        else:
            warm = MEBackend(MEOptions(lines=("FeI_6173",), noise=1e-3))
        wl = warm._warm_grid()
        p = {"B": [1000.0], "inclination": [45.0], "azimuth": [30.0], "vlos": [0.5], "doppler_width": [30.0],
             "eta0": [10.0], "damping": [0.1], "S0": [0.3], "S1": [0.7]}
        warm.invert(warm.synthesize(p, wl), wl)

    def synthesize(self, params: np.ndarray | Mapping[str, np.ndarray], wavelength: np.ndarray) -> np.ndarray:
        """Stokes profiles (npix, 4, nw) [continuum units] at ``wavelength`` [A]."""
        return self.model_for(wavelength).synthesize(params)

    # -- fitting ----------------------------------------------------------------
    def _weights(self, noise: np.ndarray, nw: int) -> np.ndarray:
        """Weights (4*nw,): stokes_weights / noise^2 per Stokes parameter."""
        sw = np.asarray(self.options.stokes_weights, dtype=np.float64) / np.asarray(noise, dtype=np.float64) ** 2
        return np.repeat(sw, nw)

    def _problem(self) -> dict[str, Any]:
        """Bounds, bound modes, scales and regularisation, by parameter name."""
        specs = self.parameters
        names = tuple(p.name for p in specs)
        col = {n: k for k, n in enumerate(names)}
        lower = np.array([p.lower for p in specs])
        upper = np.array([p.upper for p in specs])
        # B may go negative inside the fit (the same field with opposite polarity);
        # folded back in invert() so B >= 0 in the result.
        lower[col["B"]] = -upper[col["B"]]
        mode = np.full(len(specs), BOUND_MODES["clip"], dtype=np.int64)
        mode[col["inclination"]] = BOUND_MODES["reflect"]  # an exact symmetry of the model at 0 and 180
        mode[col["azimuth"]] = BOUND_MODES["periodic"]     # modulo 180
        reg_t = np.zeros(len(specs))
        reg_w = np.zeros(len(specs))
        for name, target, weight in self.options.regularize:
            reg_t[col[name]], reg_w[col[name]] = float(target), float(weight)
        return dict(names=names, col=col, lower=lower, upper=upper, mode=mode,
                    scale=np.array([p.scale for p in specs]), reg_target=reg_t, reg_weight=reg_w)

    def _starts(self, est: np.ndarray, first: int, stop: int) -> np.ndarray:
        """Starting points ``first .. stop-1`` (npix, stop - first, npar) of the start sequence.

        0: the classical estimate; 1: its azimuth rotated by 90 deg; 2: its
        opposite polarity (inclination 180 - i); 3 and on: seeded random
        field vectors and eta0 around the estimate (start k draws from a
        generator seeded with (seed, k), so a pixel's extra starts do not
        depend on which other pixels need them).
        """
        col = self._problem()["col"]
        iB, iinc, iazi, ieta = col["B"], col["inclination"], col["azimuth"], col["eta0"]
        npix, npar = est.shape
        p0 = np.empty((npix, stop - first, npar))
        for j, k in enumerate(range(first, stop)):
            p = est.copy()
            if k == 1:
                p[:, iazi] = np.mod(est[:, iazi] + 90.0, 180.0)
            elif k == 2:
                p[:, iinc] = 180.0 - est[:, iinc]
            elif k >= 3:
                rng = np.random.default_rng((int(self.options.seed), k))
                p[:, iB] = rng.uniform(100.0, 3000.0, npix)
                p[:, iinc] = rng.uniform(5.0, 175.0, npix)
                p[:, iazi] = rng.uniform(0.0, 180.0, npix)
                p[:, ieta] = est[:, ieta] * rng.uniform(0.5, 2.0, npix)
            p0[:, j] = p
        return p0

    def _classical(self, stokes: np.ndarray, wl: np.ndarray, bad: np.ndarray) -> np.ndarray:
        """Classical estimates (npix, npar); finite defaults for the rows ``bad`` marks (non-finite
        data, or a complete initial guess that replaces the estimate), which are not estimated."""
        specs = self.parameters
        npix = stokes.shape[0]
        defaults = {"B": 1000.0, "inclination": 90.0, "azimuth": 90.0, "vlos": 0.0, "doppler_width": 30.0,
                    "eta0": 10.0, "damping": 0.1, "S0": 0.3, "S1": 0.7, "filling_factor": 0.5}
        est = np.tile(np.array([defaults[p.name] for p in specs]), (npix, 1))
        good = ~bad
        if good.any():
            col = self._problem()["col"]
            cols = [col[name] for name in ESTIMATE_COLUMNS]
            est[np.ix_(good, cols)] = classical_estimates(stokes[good], wl, self.lines, self.options.mu)
            if self.instrument in ("hmi_filters", "filters"):
                self._filter_estimates(est, stokes, wl, good)
        return est

    def _filter_estimates(self, est: np.ndarray, stokes: np.ndarray, wl: np.ndarray, good: np.ndarray) -> None:
        """Correct the classical estimates ``est`` (in place, rows ``good``) for a filter instrument.

        Filters make the line shallower and bias the monochromatic formulas.
        Always: the field divided by the instrument's calibration
        (:func:`field_calibration`). With ``filter_estimates = "hmi"`` (the
        default), then: vlos from the HMI pipeline's closed-form Doppler
        algorithm (:func:`doppler_magnetogram`), eta0 and the continuum from
        depth tables of magnetic lines read at the field estimate
        (:func:`field_depth_table_estimates`), and the azimuth by projecting
        Q and U on a synthesis of the pixel's own estimate at azimuth 0
        (:func:`template_azimuth`, one synthesis per pixel). With ``"cog"``:
        the field-free depth table and the line-centre azimuth (before issue
        9's second round). Measured on 1000 random measured-style HMI
        filtergram pixels: median LM iterations 14 (cog) -> 10 (+ template
        azimuth) -> 7 (+ field depth tables), pixels at max_iter 2.7 % ->
        1.3 %.
        """
        col = self._problem()["col"]
        tables = self._filter_tables(wl)
        iB, iinc, iv = col["B"], col["inclination"], col["vlos"]
        inc = np.radians(est[good, iinc])
        blos = est[good, iB] * np.cos(inc) / tables["f_los"]
        bt = est[good, iB] * np.sin(inc) / tables["f_t"]
        est[good, iB] = np.clip(np.hypot(blos, bt), 50.0, 5000.0)
        est[good, iinc] = np.degrees(np.arctan2(bt, blos))
        mu = float(self.options.mu)
        intensity = stokes[good, 0, :]
        if self.options.filter_estimates == "cog":
            eta, cont = depth_table_estimates(tables["depth"], intensity, est[good, iv])
        else:
            if tables["doppler"].raw.size >= 5:  # a usable look-up table (else the centre of gravity stays)
                est[good, iv], _ = doppler_magnetogram(tables["doppler"], stokes[good], wl, self.lines)
            eta, cont = field_depth_table_estimates(tables["field_depth"], intensity, est[good, iv], est[good, iB])
        est[good, col["eta0"]] = np.clip(eta, 1.0, 60.0)
        est[good, col["S0"]] = 0.3 * cont
        est[good, col["S1"]] = 0.7 * cont / mu
        if self.options.filter_estimates != "cog":
            p = est[good].copy()
            p[:, col["azimuth"]] = 0.0
            q_template = self.model_for(wl).synthesize(p)[:, 1, :]
            est[good, col["azimuth"]] = template_azimuth(stokes[good, 1, :], stokes[good, 2, :], q_template)

    def _filter_tables(self, wl: np.ndarray) -> dict[str, Any]:
        """The tables and calibrations of the instrument on ``wl``, computed once per process.

        ``depth`` (:func:`depth_table`), ``f_los`` and ``f_t``
        (:func:`field_calibration`), ``field_depth``
        (:func:`field_depth_table`), ``doppler`` (:func:`doppler_calibration`).
        """
        wl = np.ascontiguousarray(wl, dtype=np.float64)
        key = wl.tobytes()
        tables = self._depth_tables.get(key)
        if tables is None:
            model = self.model_for(wl)
            npar, mu, lam0 = len(self.parameters), float(self.options.mu), self.lines[0].wavelength
            shared = _tables_key(model, wl, self.lines, mu, npar)
            tables = _FILTER_TABLES.get(shared)
            if tables is None:
                f_los, f_t = field_calibration(model.synthesize, wl, self.lines, mu, npar)
                tables = {"depth": depth_table(model.synthesize, lam0, mu, npar), "f_los": f_los, "f_t": f_t,
                          "field_depth": field_depth_table(model.synthesize, lam0, mu, npar),
                          "doppler": doppler_calibration(model.synthesize, wl, self.lines, mu, npar)}
                while len(_FILTER_TABLES) >= _TABLES_PER_PROCESS:
                    _FILTER_TABLES.pop(next(iter(_FILTER_TABLES)))
                _FILTER_TABLES[shared] = tables
            self._depth_tables[key] = tables
        return tables

    def _fit(self, model: MEModel, obs: np.ndarray, p0: np.ndarray, weights: np.ndarray,
             good_chi2: float) -> FitResult:
        """One call of the LM engine (statistical weights, covariance not rescaled)."""
        o = self.options
        pr = self._problem()
        dof = max(int(np.count_nonzero(weights > 0)) - len(pr["names"]), 1)
        return fit(
            None, model.ctx, obs, p0, weights=weights, lower=pr["lower"], upper=pr["upper"],
            bound_mode=pr["mode"], scale=pr["scale"], reg_target=pr["reg_target"], reg_weight=pr["reg_weight"],
            options=LMOptions(max_iter=int(o.max_iter), chi2_rtol=float(o.chi2_tol) / dof,
                              good_chi2=float(good_chi2), scale_covar=False, sigma_tol=float(o.sigma_tol)),
            threads=int(o.threads), kernel=_kernels.me_fit_pixels_impl,
        )

    def _fit_adaptive(self, model: MEModel, obs: np.ndarray, est: np.ndarray, weights: np.ndarray,
                      n_starts: int, max_starts: int, poor: float) -> tuple[FitResult, np.ndarray]:
        """``n_starts`` starts for every pixel, then extra starts up to ``max_starts`` for the misfits.

        A pixel gets the extra starts (the start sequence continued, with
        early exit at ``good_chi2``) when its fit ended above ``good_chi2``
        and either above ``poor`` (it would be flagged otherwise) or above
        ``RETRY_RELATIVE`` times the median reduced chi2 of the converged
        pixels of this call. The second condition keeps data whose every
        pixel carries model error (an ME fit of a stratified atmosphere:
        reduced chi2 ~ 20 everywhere in the SIR sample, where extra starts
        cost 4.6x the inversion and change nothing) from retrying every
        pixel, while a pixel caught in a wrong minimum (100 to 10,000 times
        its neighbours) always gets them.

        Returns the merged result and a boolean mask of the pixels that got
        extra starts.
        """
        good_chi2 = float(self.options.good_chi2)
        res = self._fit(model, obs, self._starts(est, 0, n_starts), weights, good_chi2)
        fitted = (res.status == STATUS_OK) | (res.status == STATUS_MAX_ITER)
        converged = res.status == STATUS_OK
        typical = float(np.median(res.chi2[converged])) if converged.any() else 0.0
        retry = fitted & ~(res.chi2 <= good_chi2) & ((res.chi2 > poor) | (res.chi2 > RETRY_RELATIVE * typical))
        if max_starts > n_starts and retry.any():
            idx = np.flatnonzero(retry)
            more = self._fit(model, obs[idx], self._starts(est[idx], n_starts, max_starts), weights, good_chi2)
            res.n_iter[idx] += more.n_iter
            better = (more.status <= STATUS_MAX_ITER) & (more.chi2 < res.chi2[idx])
            take = idx[better]
            res.params[take] = more.params[better]
            res.sigma[take] = more.sigma[better]
            res.chi2[take] = more.chi2[better]
            res.status[take] = more.status[better]
        return res, retry

    def poor_threshold(self, nw: int) -> float:
        """Reduced chi2 above which a fit on ``nw`` points per Stokes parameter is poor."""
        if self.options.poor_chi2 is not None:
            return float(self.options.poor_chi2)
        n_used = int(np.count_nonzero(np.asarray(self.options.stokes_weights) > 0)) * nw
        return poor_chi2_threshold(n_used - len(self.parameters))

    # -- noise ------------------------------------------------------------------
    def _provisional_noise(self, stokes: np.ndarray, wl: np.ndarray) -> np.ndarray:
        """Model-free starting noise: the continuum estimate, or one common value without continuum."""
        est = continuum_noise(stokes, wl)
        cont = continuum_points(stokes, wl)
        has_triples = bool(np.any(cont[1:-1] & cont[:-2] & cont[2:]))
        ok = np.isfinite(est) & (est > 0)
        if not ok.any():
            return np.full(4, 1e-3 * max(float(np.median(np.max(stokes[:, 0], axis=1))), 1e-30))
        if not has_triples or not ok.all():
            # no continuum: every estimate carries line curvature; the smallest is the least biased
            return np.full(4, float(est[ok].min()))
        return est

    def _leverage_dof(self, model: MEModel, params: np.ndarray, weights: np.ndarray, nw: int) -> np.ndarray:
        """Effective degrees of freedom per Stokes parameter (npix, 4) at the fitted ``params``.

        nw_s minus the trace of the s-block of the weighted hat matrix
        W^1/2 J (J^T W J + R)^+ J^T W^1/2 (R the regularisation); the four
        traces sum to the number of free parameters. Parameters held at a
        clipped bound are not free.
        """
        pr = self._problem()
        npix = params.shape[0]
        scale = pr["scale"]
        clip = pr["mode"] == BOUND_MODES["clip"]
        used = (weights > 0).reshape(4, nw).sum(axis=1).astype(float)
        dof = np.empty((npix, 4))
        block = 256  # pixels per batch: bounds the Jacobian stack (256 x 448 x 9 doubles = 8 MB)
        for b0 in range(0, npix, block):
            p = params[b0:b0 + block]
            jac = np.stack([model.jacobian(row)[1] for row in p])
            jq = jac * scale[None, None, :]
            at_bound = clip[None, :] & ((p <= pr["lower"] + 1e-9 * scale) | (p >= pr["upper"] - 1e-9 * scale))
            jq[np.broadcast_to(at_bound[:, None, :], jq.shape)] = 0.0
            a = np.einsum("pik,i,pil->pkl", jq, weights, jq) + np.diag(pr["reg_weight"])[None]
            ainv = np.linalg.pinv(a, rcond=1e-12, hermitian=True)
            h = np.einsum("pik,pkl,pil->pi", jq, ainv, jq) * weights[None, :]
            dof[b0:b0 + block] = used[None, :] - h.reshape(p.shape[0], 4, nw).sum(axis=2)
        return dof

    def estimate_noise(self, stokes: np.ndarray, wavelength: np.ndarray, *, max_pixels: int = 2000) -> np.ndarray:
        """Noise sigma of I, Q, U, V from the pixels themselves, by a pilot ME fit.

        Works with or without continuum points (filtergrams included):

        1. provisional noise: the model-free continuum estimate
           (:func:`stokesflow.backends.noise.continuum_noise`), or without
           continuum points one common value;
        2. a pilot fit of (a deterministic, evenly spread sample of up to
           ``max_pixels`` of) the pixels with ``max(3, n_starts)`` starts and
           the adaptive extra starts, weighted by the provisional noise;
        3. per Stokes parameter s: sigma_s^2 = median over pixels of
           RSS_s / median(chi2(nu_s)), RSS_s the residual sum of squares of s
           and nu_s its effective degrees of freedom, nw minus the trace of
           its block of the hat matrix (about nw - npar / 4 on average, but
           for six filtergrams I carries most of the parameters and Q, U few);
           the median keeps failed fits (outliers) from biasing it;
        4. once more from the pilot solution, weighted by the estimate of 3.

        Limits: the ME model must describe the profiles; model error (a
        stratified atmosphere, wrong line data) adds to the estimate, so it is
        an upper bound on real data. At least a few dozen pixels are needed for a
        stable median (the relative scatter is about 1.25 / sqrt(npix nu_s / 2)).

        Parameters
        ----------
        stokes : ndarray (npix, 4, nw)
            Pixels in continuum units; non-finite pixels are ignored.
        wavelength : ndarray (nw,)
            Observed wavelengths [A].
        max_pixels : int
            Largest sample fitted.

        Returns
        -------
        ndarray (4,)
            Noise sigma of I, Q, U, V [continuum units].
        """
        st = np.asarray(stokes, dtype=np.float64)
        wl = np.asarray(wavelength, dtype=np.float64)
        if st.ndim != 3 or st.shape[1] != 4 or st.shape[2] != wl.size:
            raise BackendError(f"stokes must have shape (npix, 4, {wl.size}) to match the wavelengths; got {st.shape}")
        st = st[np.all(np.isfinite(st), axis=(1, 2))]
        if st.shape[0] == 0:
            raise BackendError("no pixel with finite values to estimate the noise from")
        if st.shape[0] > max_pixels:
            st = st[np.unique(np.linspace(0, st.shape[0] - 1, max_pixels).round().astype(int))]
        nw = wl.size
        model = self.model_for(wl)
        obs = np.ascontiguousarray(st.reshape(st.shape[0], 4 * nw))
        floor = 1e-9 * max(float(np.median(np.max(st[:, 0], axis=1))), 1e-30)
        noise = np.maximum(self._provisional_noise(st, wl), floor)
        est = self._classical(st, wl, np.zeros(st.shape[0], dtype=bool))
        n_starts = max(3, int(self.options.n_starts))
        params = None
        for it in range(2):
            weights = self._weights(noise, nw)
            if it == 0:
                res, _ = self._fit_adaptive(model, obs, est, weights, n_starts,
                                            max(n_starts, int(self.options.max_starts)), self.poor_threshold(nw))
            else:
                p0 = np.where(np.isfinite(params), params, est)[:, None, :]
                res = self._fit(model, obs, p0, weights, 0.0)
            params = res.params
            ok = np.all(np.isfinite(params), axis=1) & (res.status <= STATUS_MAX_ITER)
            if not ok.any():
                break
            resid = (st[ok] - model.synthesize(params[ok]))
            dof = self._leverage_dof(model, params[ok], weights, nw)
            new = noise_from_residuals(resid, dof)
            good = np.isfinite(new) & (new > 0)
            noise = np.where(good, np.maximum(new, floor), noise)
        return noise

    # -- the inversion ----------------------------------------------------------
    def invert(self, stokes: np.ndarray, wavelength: np.ndarray, init: np.ndarray | None = None) -> ChunkResult:
        """Invert ``stokes`` (npix, 4, nw) observed at ``wavelength`` [A].

        The fit is always in statistical units: weights are
        ``stokes_weights / noise^2`` per Stokes parameter, with the noise from
        the options or the observation, or, when neither states it,
        estimated from these pixels (:meth:`estimate_noise`). Sigma is the
        covariance at the solution, not rescaled by chi2. Pixels above
        ``good_chi2`` after ``n_starts`` starts get extra starts up to
        ``max_starts``; a fit that ends above the poor-fit threshold
        (:meth:`poor_threshold`) gets status 4 and keeps its parameters.

        Parameters
        ----------
        stokes : ndarray (npix, 4, nw)
            I, Q, U, V in continuum units. Pixels with NaN/inf are skipped
            (status 3, parameters NaN).
        wavelength : ndarray (nw,)
            Observed wavelengths [A].
        init : ndarray (npix, npar), optional
            Initial guesses; rows with NaN fall back to the classical estimate.
        """
        stokes = np.asarray(stokes)
        wl = np.asarray(wavelength, dtype=np.float64)
        if stokes.ndim != 3 or stokes.shape[1] != 4:
            raise BackendError(f"stokes must have shape (npix, 4, nw); got {stokes.shape}")
        if stokes.shape[2] != wl.size:
            raise BackendError(
                f"stokes has {stokes.shape[2]} wavelength points but the wavelength array has {wl.size}"
            )
        model = self.model_for(wl)  # make_instrument checks the point count of filter instruments
        npix, nw = stokes.shape[0], wl.size
        pr = self._problem()
        names, col = pr["names"], pr["col"]
        npar = len(names)
        obs = np.ascontiguousarray(stokes.reshape(npix, 4 * nw), dtype=np.float64)
        bad = ~valid_pixels(stokes)
        noise = self.noise
        if noise is None:
            noise = self.estimate_noise(stokes[~bad], wl) if (~bad).any() else np.ones(4)
        weights = self._weights(noise, nw)
        given = np.zeros(npix, dtype=bool)
        if init is not None:
            init = params_to_array(init, names) if not isinstance(init, np.ndarray) else np.asarray(init, float)
            if init.shape != (npix, npar):
                raise BackendError(f"init has shape {init.shape}; expected ({npix}, {npar}) for {list(names)}")
            given = np.all(np.isfinite(init), axis=1)
        # classical estimates only for the pixels whose guess does not give every parameter: a
        # complete guess replaces them entirely (every start derives from it), and they cost
        # 2.4 us per pixel, 15 % of a fit started from a previous result (6 HMI points)
        est = self._classical(stokes, wl, bad | given)
        if init is not None:
            est[given] = init[given]
        o = self.options
        n_starts = int(o.n_starts)
        poor = self.poor_threshold(nw)
        res, _ = self._fit_adaptive(model, obs, est, weights, n_starts, max(n_starts, int(o.max_starts)), poor)
        params = res.params.copy()
        iB, iinc = col["B"], col["inclination"]
        neg = params[:, iB] < 0
        params[neg, iB] = -params[neg, iB]
        params[neg, iinc] = 180.0 - params[neg, iinc]
        status = res.status.astype(np.uint8)
        status[bad] = STATUS_BAD_INPUT
        status[(status == STATUS_OK) & (res.chi2 > poor)] = STATUS_POOR_FIT
        no_fit = (status == STATUS_FAILED) | (status == STATUS_BAD_INPUT)
        params[no_fit] = np.nan
        sigma = res.sigma.copy()
        sigma[no_fit] = np.nan
        errors = {int(i): "non-finite values in the observed profiles" for i in np.flatnonzero(bad)}
        synthetic = None
        if o.return_synthetic:
            synthetic = np.full((npix, 4, nw), np.nan, dtype=np.float32)
            ok = ~no_fit
            if ok.any():
                try:
                    synthetic[ok] = model.synthesize(params[ok]).astype(np.float32)
                except Exception:  # diagnostics only; the fit itself stands
                    errors[-1] = traceback.format_exc()
        return ChunkResult(
            names=names,
            params=params,
            sigma=sigma,
            chi2=res.chi2.astype(np.float64),
            n_iter=res.n_iter.astype(np.int32),
            status=status,
            synthetic=synthetic,
            errors=errors,
        )
