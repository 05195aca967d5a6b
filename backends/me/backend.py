"""The Milne-Eddington backend: numba ME forward model + lm_solver.

Usable without any cluster::

    from stokesflow.backends import get_backend
    me = get_backend("me", {"lines": ["FeI_6301", "FeI_6302"]})
    stokes = me.synthesize(params, wavelength)          # (npix, 4, nw)
    result = me.invert(stokes, wavelength)              # ChunkResult
"""

from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from stokesflow.backends.base import (
    STATUS_BAD_INPUT,
    STATUS_FAILED,
    Backend,
    BackendError,
    ChunkResult,
    ConfigError,
    ParameterSpec,
)
from stokesflow.backends.me import _kernels
from stokesflow.backends.me.estimates import classical_estimates
from stokesflow.backends.me.instrument import INSTRUMENT_KINDS
from stokesflow.backends.me.lines import get_lines
from stokesflow.backends.me.model import ME_PARAMETERS, MEModel, me_parameters, params_to_array
from stokesflow.lm_solver import LMOptions, fit

__all__ = ["MEOptions", "MEBackend"]

_STOKES_WEIGHT_DEFAULT = (1.0, 1.0, 1.0, 1.0)


@dataclass(frozen=True)
class MEOptions:
    """Options of the ME backend (TOML table ``[backend.me]``).

    Attributes
    ----------
    lines : tuple of str, optional
        Line names fitted together; default: the observation's ``lines``.
    line_table : str, optional
        User TOML line table extending/overriding the packaged one.
    instrument : str
        ``grid`` (no convolution), ``psf``, ``hmi_filters`` or ``filters``.
    psf_fwhm : float
        Gaussian spectral PSF FWHM [mA] for ``psf``.
    psf_file : str, optional
        PSF kernel sampled at the observed step (``psf``).
    filters_file : str, optional
        ``.npz`` with ``wavelength`` and ``transmission`` (``filters``).
    mu : float
        Heliocentric cosine of the observation.
    noise : float, optional
        Noise sigma [continuum units]; default: the observation's ``noise``,
        else sigma is scaled by the fit's reduced chi2.
    stokes_weights : tuple of 4 float
        Relative weights of I, Q, U, V in chi2.
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
        Stop trying further starts once the reduced chi2 is below this.
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

    lines: tuple[str, ...] | None = None
    line_table: str | None = None
    instrument: str = "grid"
    psf_fwhm: float = 0.0
    psf_file: str | None = None
    filters_file: str | None = None
    mu: float = 1.0
    noise: float | None = None
    stokes_weights: tuple[float, float, float, float] = _STOKES_WEIGHT_DEFAULT
    max_iter: int = 50
    chi2_tol: float = 0.02
    n_starts: int = 2
    good_chi2: float = 3.0
    regularize: tuple = ()
    stray_light_file: str | None = None
    return_synthetic: bool = False
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lines is not None:
            lines = (self.lines,) if isinstance(self.lines, str) else tuple(self.lines)
            object.__setattr__(self, "lines", lines)
        if self.instrument not in INSTRUMENT_KINDS:
            raise ConfigError(f"[backend.me] instrument = {self.instrument!r}; valid: {list(INSTRUMENT_KINDS)}")
        if len(tuple(self.stokes_weights)) != 4 or min(self.stokes_weights) < 0:
            raise ConfigError(f"[backend.me] stokes_weights must be 4 numbers >= 0, got {self.stokes_weights!r}")
        if self.noise is not None and not self.noise > 0:
            raise ConfigError(f"[backend.me] noise must be > 0, got {self.noise!r}")
        if not 0 < self.mu <= 1:
            raise ConfigError(f"[backend.me] mu must be in (0, 1], got {self.mu!r}")
        if not self.chi2_tol > 0:
            raise ConfigError(f"[backend.me] chi2_tol must be > 0, got {self.chi2_tol!r}")
        if int(self.n_starts) < 1 or int(self.max_iter) < 1:
            raise ConfigError("[backend.me] n_starts and max_iter must be >= 1")
        names = {p.name for p in ME_PARAMETERS}
        reg = tuple(tuple(r) for r in self.regularize)
        for r in reg:
            if len(r) != 3 or r[0] not in names:
                raise ConfigError(
                    f"[backend.me] regularize entries are [name, target, weight] with name in {sorted(names)}; got {r!r}"
                )
        object.__setattr__(self, "regularize", reg)
        object.__setattr__(self, "stokes_weights", tuple(float(w) for w in self.stokes_weights))


class MEBackend(Backend):
    """Milne-Eddington inversion with the numba model and Levenberg-Marquardt solver."""

    name = "me"
    options_class = MEOptions

    def __init__(self, options: MEOptions | Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self._models: dict[bytes, MEModel] = {}
        self._stray = None
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

    def for_observation(self, meta: Mapping[str, Any]) -> "MEBackend":
        updates: dict[str, Any] = {}
        if self.options.lines is None and meta.get("lines"):
            raw = meta["lines"]
            raw = raw.decode() if isinstance(raw, bytes) else str(raw)
            updates["lines"] = tuple(n.strip() for n in raw.split(",") if n.strip())
        if self.options.noise is None and meta.get("noise") is not None:
            noise = float(meta["noise"])
            if noise > 0:
                updates["noise"] = noise
        if not updates:
            return self
        return MEBackend(dataclasses.replace(self.options, **updates))

    def model_for(self, wavelength: np.ndarray) -> MEModel:
        """The (cached) forward model for an observed grid."""
        wl = np.ascontiguousarray(wavelength, dtype=np.float64)
        key = wl.tobytes()
        model = self._models.get(key)
        if model is None:
            o = self.options
            if wl.ndim != 1 or wl.size < 2 or not np.all(np.isfinite(wl)):
                raise BackendError(f"wavelength must be a finite 1-D array of >= 2 points, got shape {wl.shape}")
            model = MEModel.for_grid(
                self.lines, wl, o.instrument, psf_fwhm=o.psf_fwhm, psf_file=o.psf_file,
                filters_file=o.filters_file, mu=o.mu, stray=self._stray,
            )
            lo = min(ln.wavelength for ln in self.lines)
            hi = max(ln.wavelength for ln in self.lines)
            mw = model.instrument.model_wavelength
            if hi < mw.min() - 2.0 or lo > mw.max() + 2.0:
                raise BackendError(
                    f"lines {[ln.name for ln in self.lines]} ({lo:.2f}-{hi:.2f} A) lie outside the observed "
                    f"wavelength range {mw.min():.2f}-{mw.max():.2f} A: wrong line names or wavelength units?"
                )
            self._models[key] = model
        return model

    def setup(self) -> None:
        """Compile (or load from numba's on-disk cache) the kernels with one tiny fit.

        Called once per worker process; the kernels do not depend on the
        lines, so a backend that does not know its lines yet warms up on
        Fe I 6173.
        """
        warm = self if (self._lines is not None and self._stray is None) else MEBackend(
            MEOptions(lines=("FeI_6173",), noise=1e-3)
        )
        wl = warm.lines[0].wavelength + np.linspace(-0.3, 0.3, 8)
        p = np.array([[1000.0, 45.0, 30.0, 0.5, 30.0, 10.0, 0.1, 0.3, 0.7]])
        warm.invert(warm.synthesize(p, wl), wl)

    def synthesize(self, params: np.ndarray | Mapping[str, np.ndarray], wavelength: np.ndarray) -> np.ndarray:
        """Stokes profiles (npix, 4, nw) [continuum units] at ``wavelength`` [A]."""
        return self.model_for(wavelength).synthesize(params)

    def _weights(self, nw: int) -> tuple[np.ndarray, bool]:
        o = self.options
        sw = np.repeat(np.asarray(o.stokes_weights, dtype=np.float64), nw)
        if o.noise is not None:
            return sw / o.noise**2, False
        return sw, True

    def _starts(self, est: np.ndarray, n: int) -> np.ndarray:
        """Starting points (npix, n, npar) around the classical estimate."""
        npix, npar = est.shape
        p0 = np.empty((npix, n, npar))
        p0[:, 0] = est
        if n > 1:
            p0[:, 1] = est
            p0[:, 1, 2] = np.mod(est[:, 2] + 90.0, 180.0)
        if n > 2:
            p0[:, 2] = est
            p0[:, 2, 1] = 180.0 - est[:, 1]
        rng = np.random.default_rng(self.options.seed)
        for k in range(3, n):
            p0[:, k] = est
            p0[:, k, 0] = rng.uniform(100.0, 3000.0, npix)
            p0[:, k, 1] = rng.uniform(5.0, 175.0, npix)
            p0[:, k, 2] = rng.uniform(0.0, 180.0, npix)
            p0[:, k, 5] = est[:, 5] * rng.uniform(0.5, 2.0, npix)
        return p0

    def invert(self, stokes: np.ndarray, wavelength: np.ndarray, init: np.ndarray | None = None) -> ChunkResult:
        """Invert ``stokes`` (npix, 4, nw) observed at ``wavelength`` [A].

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
        specs = self.parameters
        npar = len(specs)
        names = tuple(p.name for p in specs)
        obs = np.ascontiguousarray(stokes.reshape(npix, 4 * nw), dtype=np.float64)
        bad = ~np.all(np.isfinite(obs), axis=1)
        est = np.zeros((npix, 9))
        good = ~bad
        if good.any():
            est[good] = classical_estimates(stokes[good], wl, self.lines, self.options.mu)
        est[bad] = [1000.0, 90.0, 90.0, 0.0, 30.0, 10.0, 0.1, 0.3, 0.7]
        if npar > 9:
            est = np.concatenate([est, np.full((npix, 1), 0.5)], axis=1)
        if init is not None:
            init = params_to_array(init, names) if not isinstance(init, np.ndarray) else np.asarray(init, float)
            if init.shape != (npix, npar):
                raise BackendError(f"init has shape {init.shape}; expected ({npix}, {npar}) for {list(names)}")
            ok = np.all(np.isfinite(init), axis=1)
            est[ok] = init[ok]
        # B may go negative inside the fit (the same field with opposite polarity);
        # folded back below so B >= 0 in the result.
        lower = np.array([p.lower for p in specs])
        upper = np.array([p.upper for p in specs])
        lower[0] = -upper[0]
        mode = np.zeros(npar, dtype=np.int64)
        mode[1] = 2  # inclination: reflect at 0 and 180 (an exact symmetry of the model)
        mode[2] = 1  # azimuth: periodic modulo 180
        scale = np.array([p.scale for p in specs])
        reg_t = np.zeros(npar)
        reg_w = np.zeros(npar)
        for name, target, weight in self.options.regularize:
            k = names.index(name)
            reg_t[k], reg_w[k] = float(target), float(weight)
        weights, scale_covar = self._weights(nw)
        o = self.options
        p0 = self._starts(est, int(o.n_starts))
        res = fit(
            None, model.ctx, obs, p0, weights=weights, lower=lower, upper=upper, bound_mode=mode,
            scale=scale, reg_target=reg_t, reg_weight=reg_w,
            options=LMOptions(max_iter=int(o.max_iter), chi2_rtol=float(o.chi2_tol) / max(obs.shape[1] - npar, 1),
                              good_chi2=float(o.good_chi2), scale_covar=scale_covar),
            threads=int(o.threads), kernel=_kernels.me_fit_pixels_impl,
        )
        params = res.params.copy()
        neg = params[:, 0] < 0
        params[neg, 0] = -params[neg, 0]
        params[neg, 1] = 180.0 - params[neg, 1]
        status = res.status.astype(np.uint8)
        status[bad] = STATUS_BAD_INPUT
        params[status >= STATUS_FAILED] = np.nan
        sigma = res.sigma.copy()
        sigma[status >= STATUS_FAILED] = np.nan
        errors = {int(i): "non-finite values in the observed profiles" for i in np.flatnonzero(bad)}
        synthetic = None
        if o.return_synthetic:
            synthetic = np.full((npix, 4, nw), np.nan, dtype=np.float32)
            ok = status < STATUS_FAILED
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
