"""Python front end of the many-pixel Levenberg-Marquardt engine.

:func:`fit` validates and normalises the arrays, optionally splits the pixels
over a thread pool (the numba kernel releases the GIL), calls
:func:`stokesflow.lm_solver._kernels.fit_pixels_impl` (or a caller's cached wrapper of it,
see ``kernel``) and returns a :class:`FitResult`.

Example
-------
>>> import numpy as np
>>> from numba import njit
>>> from lm_solver import fit
>>> @njit
... def line(p, ctx, y, jac):
...     x = ctx[0]
...     for i in range(x.size):
...         y[i] = p[0] + p[1] * x[i]
...         jac[i, 0] = 1.0
...         jac[i, 1] = x[i]
>>> x = np.linspace(0.0, 1.0, 5)
>>> res = fit(line, (x,), (1.0 + 2.0 * x)[None, :], np.array([0.0, 0.0]))
>>> bool(res.success[0]), np.round(res.params[0], 6).tolist()
(True, [1.0, 2.0])
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba.core.dispatcher import Dispatcher

from stokesflow.lm_solver._kernels import (
    BOUND_CLIP,
    BOUND_PERIODIC,
    BOUND_REFLECT,
    STATUS_BAD_INPUT,
    STATUS_FAILED,
    STATUS_MAX_ITER,
    STATUS_OK,
    fit_pixels_impl,
)

__all__ = [
    "BOUND_CLIP",
    "BOUND_MODES",
    "BOUND_PERIODIC",
    "BOUND_REFLECT",
    "FitResult",
    "LMError",
    "LMOptions",
    "STATUS_BAD_INPUT",
    "STATUS_FAILED",
    "STATUS_MAX_ITER",
    "STATUS_MESSAGES",
    "STATUS_OK",
    "fit",
]

#: Human-readable meaning of each status code.
STATUS_MESSAGES: dict[int, str] = {
    STATUS_OK: "converged (relative chi2 decrease < chi2_rtol, scaled step < step_tol, "
               "step < sigma_tol sigma for every parameter, or no further decrease possible)",
    STATUS_MAX_ITER: "max_iter iterations used without converging; parameters are the best found",
    STATUS_FAILED: "failed: the model gave non-finite values at every starting point, or the "
                   "system was singular beyond recovery; parameters are NaN",
    STATUS_BAD_INPUT: "bad input: NaN/inf in obs (with weight > 0), weights or p0, a negative "
                      "weight, or no point with weight > 0; pixel not fitted",
}

#: Names accepted for ``bound_mode`` besides the integer codes.
BOUND_MODES: dict[str, int] = {
    "clip": BOUND_CLIP,
    "periodic": BOUND_PERIODIC,
    "reflect": BOUND_REFLECT,
}


class LMError(ValueError):
    """Base exception of :mod:`lm_solver` (bad arguments to :func:`fit`)."""


@dataclass(frozen=True)
class LMOptions:
    """Stopping rules of the Levenberg-Marquardt iteration.

    Parameters
    ----------
    max_iter : int
        Iterations allowed per starting point (one iteration = one damped
        solve and one model evaluation). 0 evaluates chi2 and sigma at the
        (bounded) starting point only and reports status 1.
    chi2_rtol : float
        Converged when an accepted step lowers the objective by a relative
        amount below this. 1e-6 resolves a parameter to about 0.01 sigma for
        chi2 of order the number of points; use ~1e-12 for reference-quality
        fits.
    step_tol : float
        Converged when the largest step in scaled coordinates ``p / scale``
        falls below this (dimensionless, relative to the scale).
    good_chi2 : float
        Multi-start: stop trying further starts once the best reduced data
        chi2 is <= this. 0 (default) tries every start.
    scale_covar : bool
        Multiply the covariance by the reduced data chi2 (lmfit's default
        convention; use when the weights are relative, not 1/sigma^2).
    sigma_tol : float
        Converged when the next step, nearly undamped (towards the quadratic
        model's minimum), would move every parameter by less than this many
        of its own 1-sigma uncertainties (the covariance at the current
        point, with the ``scale_covar`` convention); that step is then not
        evaluated. A statistical step
        tolerance that stops the slow crawl along flat valleys of sloppy
        problems, where each step still lowers chi2 by more than
        ``chi2_rtol`` but no parameter moves by a meaningful amount. Needs
        statistical weights (1/sigma^2) or ``scale_covar``. 0 (default) turns
        it off; 0.1 keeps every parameter within about 0.1 sigma of where a
        further step would take it.
    """

    max_iter: int = 100
    chi2_rtol: float = 1e-6
    step_tol: float = 1e-8
    good_chi2: float = 0.0
    scale_covar: bool = False
    sigma_tol: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, (int, np.integer)) \
                or self.max_iter < 0:
            raise LMError(f"LMOptions.max_iter must be an integer >= 0, got {self.max_iter!r}")
        for name in ("chi2_rtol", "step_tol", "good_chi2", "sigma_tol"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(float(value)) or float(value) < 0.0:
                raise LMError(f"LMOptions.{name} must be a finite number >= 0, got {value!r}")


@dataclass
class FitResult:
    """Result of :func:`fit` for ``npix`` pixels and ``npar`` parameters.

    Attributes
    ----------
    params : ndarray, float64, shape (npix, npar)
        Best-fit parameters (physical units of the model); NaN for status 2, 3.
    sigma : ndarray, float64, shape (npix, npar)
        1-sigma uncertainties, ``sqrt(diag(inv(J^T W J + R)))`` at the
        solution (R the regularisation), times ``sqrt(chi2)`` if
        ``scale_covar``; NaN where the normal matrix is singular or the
        parameter has no sensitivity.
    chi2 : ndarray, float64, shape (npix,)
        Reduced chi2 of the data term ``sum(w r^2) / max(n_used - npar, 1)``,
        n_used the number of points with weight > 0 (regularisation excluded).
    n_iter : ndarray, int32, shape (npix,)
        Iterations summed over the starting points tried.
    status : ndarray, uint8, shape (npix,)
        0 converged, 1 max_iter, 2 failed, 3 bad input (see
        :data:`STATUS_MESSAGES`).
    """

    params: np.ndarray
    sigma: np.ndarray
    chi2: np.ndarray
    n_iter: np.ndarray
    status: np.ndarray

    @property
    def success(self) -> np.ndarray:
        """Boolean array, True where status == 0 (converged)."""
        return self.status == STATUS_OK

    @property
    def npix(self) -> int:
        """Number of pixels."""
        return int(self.status.shape[0])

    def message(self, i: int) -> str:
        """Status message of pixel ``i``."""
        return STATUS_MESSAGES[int(self.status[i])]

    def status_counts(self) -> dict[int, int]:
        """Number of pixels per status code (codes with no pixel included)."""
        counts = np.bincount(self.status, minlength=4)
        return {code: int(counts[code]) for code in STATUS_MESSAGES}

    def summary(self) -> str:
        """One line: pixel counts per status and median iterations."""
        c = self.status_counts()
        med = float(np.median(self.n_iter)) if self.npix else float("nan")
        return (f"{self.npix} pixels: {c[0]} converged, {c[1]} max_iter, {c[2]} failed, "
                f"{c[3]} bad input; median iterations {med:g}")


def _kernel_array(arr: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """C-contiguous, aligned, writeable copy if needed.

    numba compiles a separate specialisation (the whole engine, seconds) for
    read-only or non-contiguous arrays, and a caller's cached wrapper would
    then miss its cache; normalising here keeps one set of argument types.
    """
    return np.require(arr, dtype=dtype, requirements=["C", "A", "W"])


def _as_float_vector(value: Any, name: str, npar: int, default: float) -> np.ndarray:
    if value is None:
        return np.full(npar, default, dtype=np.float64)
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(npar, float(arr))
    if arr.shape != (npar,):
        raise LMError(f"{name} must have shape (npar,) = ({npar},) (npar from the last axis of "
                      f"p0), got shape {arr.shape}")
    return _kernel_array(arr)


def _bound_modes(value: Any, npar: int) -> np.ndarray:
    if value is None:
        return np.zeros(npar, dtype=np.int64)
    if isinstance(value, str) or np.ndim(value) == 0:
        value = [value] * npar
    codes = []
    for v in value:
        if isinstance(v, str):
            if v not in BOUND_MODES:
                raise LMError(f"bound_mode entry {v!r} is unknown; use one of "
                              f"{sorted(BOUND_MODES)} or 0, 1, 2")
            codes.append(BOUND_MODES[v])
        else:
            codes.append(v)
    arr = np.asarray(codes)
    if arr.shape != (npar,):
        raise LMError(f"bound_mode must have shape (npar,) = ({npar},), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or np.any((arr < 0) | (arr > 2)):
        raise LMError(f"bound_mode entries must be 0 (clip), 1 (periodic) or 2 (reflect), "
                      f"got {arr.tolist()}")
    return _kernel_array(arr, np.int64)


def _default_scale(p0: np.ndarray) -> np.ndarray:
    """Median of |p0| per parameter over pixels and starts; 1 where that is 0."""
    npar = p0.shape[-1]
    flat = np.abs(p0.reshape(-1, npar))
    scale = np.ones(npar)
    for k in range(npar):
        col = flat[:, k]
        col = col[np.isfinite(col) & (col > 0)]
        if col.size:
            scale[k] = float(np.median(col))
    return scale


@functools.cache
def _takes_sigma_tol(kernel: Dispatcher) -> bool:
    """Whether a caller's kernel wrapper accepts the trailing ``sigma_tol`` argument."""
    try:
        params = inspect.signature(kernel.py_func).parameters
    except (TypeError, ValueError):
        return False
    return "sigma_tol" in params or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values())


def fit(model: Callable[..., None] | None, ctx: Any, obs: np.ndarray, p0: np.ndarray, *,
        weights: np.ndarray | None = None,
        lower: Sequence[float] | np.ndarray | None = None,
        upper: Sequence[float] | np.ndarray | None = None,
        bound_mode: Sequence[int | str] | np.ndarray | str | None = None,
        scale: Sequence[float] | np.ndarray | None = None,
        reg_target: Sequence[float] | np.ndarray | None = None,
        reg_weight: Sequence[float] | np.ndarray | None = None,
        options: LMOptions = LMOptions(),
        threads: int = 1,
        kernel: Callable[..., None] | None = None) -> FitResult:
    """Fit ``npix`` independent problems that share one forward model.

    Parameters
    ----------
    model : numba dispatcher or None
        ``@njit`` function ``model(p, ctx, y, jac) -> None`` filling ``y``
        (nobs,) and ``jac`` (nobs, npar) for parameters ``p`` (npar,). None
        when ``kernel`` is given.
    ctx : any numba-typable object
        Passed to the model untouched (e.g. a tuple of arrays).
    obs : array_like, shape (npix, nobs)
        Observations, one row per pixel.
    p0 : array_like, shape (npar,), (npix, npar) or (npix, nstart, npar)
        Starting point(s), physical units. Several starts per pixel are tried
        in order and the lowest chi2 is kept.
    weights : array_like, shape (nobs,) or (npix, nobs), optional
        1/sigma^2 of each point times any user weight; 0 drops a point
        (its observation may then be NaN). Default 1.
    lower, upper : array_like, shape (npar,), optional
        Bounds (default -inf, +inf). Periodic and reflect modes need finite
        ``lower < upper``; clip needs ``lower <= upper``.
    bound_mode : array_like of int or str, shape (npar,), or one str, optional
        0/"clip", 1/"periodic" (wrap into [lower, upper)), 2/"reflect".
        Default clip.
    scale : array_like, shape (npar,), optional
        Typical magnitude of each parameter (> 0); the fit runs in
        ``p / scale`` and ``step_tol`` is relative to it. Default: median of
        ``|p0|`` per parameter, 1 where that is 0.
    reg_target, reg_weight : array_like, shape (npar,), optional
        Adds ``reg_weight_k * ((p_k - reg_target_k) / scale_k)^2`` to chi2.
        Default no regularisation.
    options : LMOptions
        Stopping rules and covariance convention.
    threads : int
        Split the pixels over this many threads (the kernel releases the GIL).
    kernel : numba dispatcher, optional
        A cached wrapper of :func:`stokesflow.lm_solver._kernels.fit_pixels_impl` with the
        model bound as a global (see that module's docstring); it takes the
        kernel's arguments without ``model``. Lets a caller reuse compiled code
        across processes.

    Returns
    -------
    FitResult

    Raises
    ------
    LMError
        On a wrong shape, non-finite or inconsistent bounds or scales, or a
        model that is not numba-compiled. Bad values *inside* a pixel's data
        never raise: that pixel gets status 3.
    """
    if kernel is None:
        if not isinstance(model, Dispatcher):
            raise LMError(f"model must be a numba @njit function model(p, ctx, y, jac), got "
                          f"{type(model).__name__}; or pass model=None and kernel=<cached wrapper>")
    else:
        if model is not None:
            raise LMError("pass model=None when kernel is given (the kernel already binds its "
                          "model)")
        if not isinstance(kernel, Dispatcher):
            raise LMError(f"kernel must be a numba @njit function, got {type(kernel).__name__}")
    if not isinstance(options, LMOptions):
        raise LMError(f"options must be an LMOptions, got {type(options).__name__}")
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise LMError(f"threads must be an integer >= 1, got {threads!r}")

    obs_a = np.asarray(obs, dtype=np.float64)
    if obs_a.ndim != 2:
        raise LMError(f"obs must have shape (npix, nobs), got shape {obs_a.shape}; use "
                      f"obs[None, :] for a single pixel")
    npix, nobs = obs_a.shape
    if nobs < 1:
        raise LMError(f"obs must have at least one observation per pixel, got shape {obs_a.shape}")
    obs_a = _kernel_array(obs_a)

    p0_a = np.asarray(p0, dtype=np.float64)
    if p0_a.ndim == 1:
        p0_a = np.broadcast_to(p0_a, (npix, 1, p0_a.shape[0]))
    elif p0_a.ndim == 2:
        if p0_a.shape[0] != npix:
            raise LMError(f"p0 of shape (npix, npar) must have npix = {npix} rows (from obs), got "
                          f"shape {p0_a.shape}")
        p0_a = p0_a[:, None, :]
    elif p0_a.ndim == 3:
        if p0_a.shape[0] != npix:
            raise LMError(f"p0 of shape (npix, nstart, npar) must have npix = {npix} (from obs), "
                          f"got shape {p0_a.shape}")
    else:
        raise LMError(f"p0 must have shape (npar,), (npix, npar) or (npix, nstart, npar), got "
                      f"shape {p0_a.shape}")
    if p0_a.shape[1] < 1 or p0_a.shape[2] < 1:
        raise LMError(f"p0 needs at least one start and one parameter, got shape {p0_a.shape}")
    p0_a = _kernel_array(p0_a)
    npar = p0_a.shape[2]

    if weights is None:
        w_a = np.ones((npix, nobs))
    else:
        w_a = np.asarray(weights, dtype=np.float64)
        if w_a.shape == (nobs,):
            w_a = np.broadcast_to(w_a, (npix, nobs))
        elif w_a.shape != (npix, nobs):
            raise LMError(f"weights must have shape (nobs,) = ({nobs},) or (npix, nobs) = "
                          f"({npix}, {nobs}), got shape {w_a.shape}")
        w_a = _kernel_array(w_a)

    lo = _as_float_vector(lower, "lower", npar, -np.inf)
    up = _as_float_vector(upper, "upper", npar, np.inf)
    modes = _bound_modes(bound_mode, npar)
    if np.any(np.isnan(lo)) or np.any(np.isnan(up)) or np.any(lo > up):
        raise LMError(f"need lower <= upper without NaN, got lower={lo.tolist()}, "
                      f"upper={up.tolist()}")
    wrap = modes != BOUND_CLIP
    if np.any(wrap & ~(np.isfinite(lo) & np.isfinite(up) & (lo < up))):
        bad = np.flatnonzero(wrap & ~(np.isfinite(lo) & np.isfinite(up) & (lo < up))).tolist()
        raise LMError(f"periodic/reflect parameters {bad} need finite lower < upper, got "
                      f"lower={lo[bad].tolist()}, upper={up[bad].tolist()}")
    sc = _default_scale(p0_a) if scale is None else _as_float_vector(scale, "scale", npar, 1.0)
    if not np.all(np.isfinite(sc) & (sc > 0)):
        raise LMError(f"scale must be finite and > 0 for every parameter, got {sc.tolist()}")
    rt = _as_float_vector(reg_target, "reg_target", npar, 0.0)
    rw = _as_float_vector(reg_weight, "reg_weight", npar, 0.0)
    if not np.all(np.isfinite(rt)):
        raise LMError(f"reg_target must be finite, got {rt.tolist()}")
    if not np.all(np.isfinite(rw) & (rw >= 0)):
        raise LMError(f"reg_weight must be finite and >= 0, got {rw.tolist()}")

    out_p = np.empty((npix, npar))
    out_sigma = np.empty((npix, npar))
    out_chi2 = np.empty(npix)
    out_niter = np.zeros(npix, dtype=np.int32)
    out_status = np.zeros(npix, dtype=np.uint8)
    scalars = (int(options.max_iter), float(options.chi2_rtol), float(options.step_tol),
               float(options.good_chi2), bool(options.scale_covar))
    # always to the engine itself and to a caller's wrapper that takes it, even when 0, so that
    # one compiled specialisation serves every call (an omitted default is another numba
    # signature: a second compilation of the whole engine, ~4 s, the first time a process
    # switches the rule on); a wrapper written without it keeps working with the rule off
    takes = kernel is None or _takes_sigma_tol(kernel)
    extra: tuple[float, ...] = (float(options.sigma_tol),) if takes else ()
    if options.sigma_tol > 0 and not takes:
        raise LMError(f"LMOptions.sigma_tol = {options.sigma_tol!r} but the kernel wrapper "
                      f"{getattr(kernel, '__name__', kernel)!r} has no trailing sigma_tol parameter; add "
                      f"'sigma_tol=0.0' to its signature and pass it on to fit_pixels_impl (see "
                      f"stokesflow.lm_solver._kernels), or use sigma_tol = 0")

    def run(a: int, b: int) -> None:
        args = (ctx, obs_a[a:b], w_a[a:b], p0_a[a:b], lo, up, modes, sc, rt, rw, *scalars,
                out_p[a:b], out_sigma[a:b], out_chi2[a:b], out_niter[a:b], out_status[a:b], *extra)
        if kernel is None:
            fit_pixels_impl(model, *args)
        else:
            kernel(*args)

    if npix > 0:
        nthreads = min(int(threads), npix)
        if nthreads == 1:
            run(0, npix)
        else:
            # compile (if needed) on a one-pixel slice first, so the threads
            # do not queue on numba's compiler lock
            run(0, 1)
            edges = np.linspace(1, npix, nthreads + 1).astype(int)
            with ThreadPoolExecutor(max_workers=nthreads) as pool:
                futures = [pool.submit(run, int(edges[i]), int(edges[i + 1]))
                           for i in range(nthreads) if edges[i + 1] > edges[i]]
                for f in futures:
                    f.result()
    return FitResult(params=out_p, sigma=out_sigma, chi2=out_chi2, n_iter=out_niter,
                     status=out_status)
