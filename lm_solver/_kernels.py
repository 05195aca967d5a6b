"""Numba kernels of the many-pixel Levenberg-Marquardt engine.

The engine fits ``npix`` independent problems ("pixels") in one call. Each pixel
has its own observation vector, weights and starting points; all pixels share
one forward model, passed in as a numba-jitted function (a first-class
dispatcher argument), so one engine serves every model.

Model contract
--------------
``model(p, ctx, y, jac) -> None`` with ``p`` float64[::1] of shape (npar,),
``ctx`` any numba-typable object passed through untouched (usually a tuple of
arrays), ``y`` float64[::1] of shape (nobs,) to fill with the synthetic
observation and ``jac`` float64[:, ::1] of shape (nobs, npar) to fill with
dy/dp. The model must fill both on every call and must not write outside them
(numba does not bounds-check).

Algorithm (per pixel and per starting point)
--------------------------------------------
* Work in scaled coordinates ``q = p / scale`` so that damping and the step
  tolerance are dimensionless. Objective
  ``chi2 = sum_i w_i (y_i - obs_i)^2 + sum_k reg_weight_k (q_k - reg_target_k / scale_k)^2``.
* Normal matrix ``A = Jq^T W Jq + diag(reg_weight)`` and half-gradient
  ``g = Jq^T W r + reg_weight (q - q_target)``; step from
  ``(A + lambda D) delta = -g`` by a Cholesky factorisation written as plain
  loops.
* Marquardt damping ``D_k = max(A_kk, running max of A_kk over the
  iterations of this start, DIAG_FLOOR_REL * max_j A_jj)``. The running maximum
  (as in MINPACK's ``lmder``) keeps a parameter that passes through an
  insensitive region (zero column of J) from losing its damping; the relative
  floor keeps an identically zero column from making the system singular.
* lambda starts at ``LAMBDA_INIT`` = 1e-3 and follows Nielsen's rule: on an
  accepted step ``lambda *= max(1/3, 1 - (2 rho - 1)^3)`` (rho = actual /
  predicted decrease), ``nu = 2``; on a rejected step ``lambda *= nu``,
  ``nu *= 2``. lambda never goes below ``LAMBDA_MIN`` = 1e-10.
* Bounds per parameter (``bound_mode``): 0 clip to [lower, upper]; 1 periodic,
  wrapped into [lower, upper); 2 reflect at the bounds (repeatedly, i.e. modulo
  2 (upper - lower)). Applied to the starting point and to every trial point.
  A clipped parameter that sits on its bound with the gradient pushing outward
  is held fixed for that step (projected step), so the other parameters still
  get a proper Gauss-Newton/LM step.
* A step is accepted only if it lowers the objective (so the current point is
  always the best one seen in this start).

Convergence and status codes
----------------------------
* 0 (converged): an accepted step lowered chi2 by a relative amount below
  ``chi2_rtol``; or the largest scaled step ``max_k |delta q_k|`` fell below
  ``step_tol``; or lambda grew past ``LAMBDA_MAX`` = 1e16 without a decrease
  (a minimum to within rounding); or (``sigma_tol`` > 0) the step solved at
  the current point, nearly undamped (lambda <= ``PRESTEP_LAMBDA`` = 1e-2: the
  Gauss-Newton step towards the quadratic model's minimum to within 1 %) and
  promising a chi2 decrease below 1 (the reduced chi2 with ``scale_covar``),
  would move every parameter by less than ``sigma_tol`` times its 1-sigma
  uncertainty at this point (the covariance below, computed once per point
  and only then): the point is within ``sigma_tol`` sigma of the minimum, and
  the step is not evaluated (the iteration counts its solve only). Testing
  the next step instead of the last one saves the model evaluation of a step
  that could not move any parameter by a statistically meaningful amount:
  11 % of the CPU time of ME fits of HMI-like filtergrams started from a
  network's guesses (6.4 LM iterations per pixel). This is the rule that
  stops the slow crawl along the flat, curved
  valleys of sloppy problems (an ME fit of six HMI filtergrams: eta0, the
  source function and the damping trade off), where each step still lowers
  chi2 by more than ``chi2_rtol`` while the parameters move by a small
  fraction of their uncertainty. It assumes statistical weights
  (1/sigma^2) or ``scale_covar``.
* 1 (max_iter): ``max_iter`` iterations (per start) were used; parameters are
  the best found.
* 2 (failed): the model returned non-finite values at the starting point of
  every start, or the damped system could not be factorised even at
  ``LAMBDA_MAX``; parameters NaN.
* 3 (bad input): obs (where weight > 0), weights or p0 of the pixel contain
  NaN/inf, a weight is negative, or no point has weight > 0; the pixel is not
  fitted, parameters and chi2 NaN. A point with weight 0 is ignored entirely,
  so a NaN observation can be masked by giving it weight 0.

One iteration = one solve of the damped system (and, unless the step
tolerance is met first, one model evaluation at the trial point). A pixel's
iteration count is the sum over the starts tried.

Multi-start: starts are tried in order; the start with the lowest objective is
kept; once the best reduced data chi2 is <= ``good_chi2`` (> 0) no further
start is tried.

Covariance: ``inv(A)`` at the solution (undamped, regularisation included),
computed over the parameters with a non-zero diagonal; a parameter with a zero
diagonal (no sensitivity, no regularisation) gets sigma NaN; if the rest is
singular (a Cholesky pivot below ``COV_PIVOT_REL`` = 1e-13 of its diagonal)
all sigmas are NaN. If ``scale_covar`` the covariance is multiplied by the
reduced data chi2 (lmfit's convention), i.e. sigma by its square root.
A start stopped by the ``sigma_tol`` rule reuses the covariance that rule has
just computed at the same point (same matrix, same factor; bit-identical),
instead of factorising the matrix once more (0.7 us of a 9-parameter pixel).

Caching (measured with numba 0.68.1, see tests/lm_solver/test_lm_cache.py)
-------------------------------------------------------------------------------
``fit_pixels_impl`` takes the model as a dispatcher argument. numba types a
dispatcher argument as ``types.Dispatcher``, a *weak* type compared by object
identity; each process gets a new dispatcher object (and a random uuid), so a
cached entry can never match in another process: with ``cache=True`` every
process misses and writes one more never-used entry (the cache grows without
bound; measured: one more ``.nbc`` file per process, never a hit). Hence
``fit_pixels_impl`` is compiled with ``cache=False``: a direct call compiles
once per process and model (about 2.5 s on a 2-core x86-64 machine).

A cached wrapper that calls the engine with the model as a *global* does not
cache either if the engine is an ordinary callee: passing a dispatcher value
lowers it as a process-specific address ("Cannot cache ... as it uses dynamic
globals"). It does cache when the engine is inlined at the numba-IR level,
which is why ``fit_pixels_impl`` is declared with ``inline='always'``. The
pattern that caches (measured: first process about 5 s to compile, second
process loads it in about 0.3 s, cache hit, no compilation) is, in the
caller's own ``_kernels.py``::

    from numba import njit
    from stokesflow.lm_solver._kernels import fit_pixels_impl

    @njit(cache=True, nogil=True)
    def my_model_impl(p, ctx, y, jac):
        ...

    @njit(cache=True, nogil=True)
    def fit_my_model_impl(ctx, obs, weights, p0, lower, upper, bound_mode,
                          scale, reg_target, reg_weight, max_iter, chi2_rtol,
                          step_tol, good_chi2, scale_covar, out_p, out_sigma,
                          out_chi2, out_niter, out_status, sigma_tol=0.0):
        fit_pixels_impl(my_model_impl, ctx, obs, weights, p0, lower, upper,
                        bound_mode, scale, reg_target, reg_weight, max_iter,
                        chi2_rtol, step_tol, good_chi2, scale_covar, out_p,
                        out_sigma, out_chi2, out_niter, out_status, sigma_tol)

(a wrapper without the trailing ``sigma_tol`` still works; :func:`fit` then
refuses ``LMOptions.sigma_tol > 0`` with an error naming the wrapper)

and ``stokesflow.lm_solver.fit(None, ctx, obs, p0, kernel=fit_my_model_impl, ...)``.
Caveat (a general numba limitation): the cache of ``fit_my_model_impl`` is
invalidated only when *its own* source file changes; after editing this file
(or the model in another file) clear the caller's cache (``__pycache__/*.nbi``
and ``*.nbc`` or the ``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = [
    "BOUND_CLIP",
    "BOUND_PERIODIC",
    "BOUND_REFLECT",
    "COV_PIVOT_REL",
    "DIAG_FLOOR_REL",
    "LAMBDA_INIT",
    "LAMBDA_MAX",
    "LAMBDA_MIN",
    "STATUS_BAD_INPUT",
    "STATUS_FAILED",
    "STATUS_MAX_ITER",
    "STATUS_OK",
    "apply_bounds_impl",
    "cholesky_solve_impl",
    "fit_pixels_impl",
    "normal_equations_impl",
    "sigma_from_normal_impl",
]

STATUS_OK = 0
STATUS_MAX_ITER = 1
STATUS_FAILED = 2
STATUS_BAD_INPUT = 3

BOUND_CLIP = 0
BOUND_PERIODIC = 1
BOUND_REFLECT = 2

LAMBDA_INIT = 1e-3
LAMBDA_MIN = 1e-10
LAMBDA_MAX = 1e16
PRESTEP_LAMBDA = 1e-2
DIAG_FLOOR_REL = 1e-12
COV_PIVOT_REL = 1e-13


@njit(cache=True, nogil=True)
def apply_bounds_impl(q, lo, up, mode):
    """Bring ``q`` inside the bounds in place (clip, wrap or reflect).

    Parameters
    ----------
    q : float64[::1], shape (npar,)
        Point to modify (any units, consistent with ``lo`` and ``up``).
    lo, up : float64[::1], shape (npar,)
        Lower and upper bounds. Modes 1 and 2 need finite ``lo < up``.
    mode : int64[::1], shape (npar,)
        0 clip, 1 periodic (wrap into [lo, up)), 2 reflect at the bounds.
    """
    for k in range(q.shape[0]):
        x = q[k]
        m = mode[k]
        if m == 0:
            if x < lo[k]:
                x = lo[k]
            elif x > up[k]:
                x = up[k]
        elif m == 1:
            if x < lo[k] or x >= up[k]:
                period = up[k] - lo[k]
                x = lo[k] + (x - lo[k]) % period
                if x >= up[k] or x < lo[k]:
                    # rounding of the modulo can land exactly on the upper end
                    x = lo[k]
        else:
            if x < lo[k] or x > up[k]:
                width = up[k] - lo[k]
                t = (x - lo[k]) % (2.0 * width)
                if t > width:
                    t = 2.0 * width - t
                x = lo[k] + t
                if x > up[k]:
                    x = up[k]
                elif x < lo[k]:
                    x = lo[k]
        q[k] = x


# Reductions below may be reassociated (SIMD); no-NaN/no-inf assumptions are NOT
# made, so NaN and inf still propagate and are detected.
_REASSOC = {"reassoc", "contract"}


@njit(cache=True, nogil=True, fastmath=_REASSOC)
def _jac_finite(jac, w, all_used):
    """True when jac is finite on every row with weight > 0."""
    nobs, npar = jac.shape
    s = 0.0
    if all_used:
        # branch-free, vectorisable; 0 * x is 0 for finite x, NaN otherwise
        for i in range(nobs):
            for k in range(npar):
                s += jac[i, k] * 0.0
    else:
        for i in range(nobs):
            if w[i] > 0.0:
                for k in range(npar):
                    s += jac[i, k] * 0.0
    return s == 0.0


@njit(cache=True, nogil=True, fastmath=_REASSOC)
def _data_chi2(y, obs, w, all_used):
    """Weighted sum of squared residuals over the points with weight > 0.

    Non-finite when a used model value is not finite.
    """
    s = 0.0
    if all_used:
        for i in range(y.shape[0]):
            r = y[i] - obs[i]
            s += w[i] * r * r
    else:
        for i in range(y.shape[0]):
            wi = w[i]
            if wi > 0.0:
                r = y[i] - obs[i]
                s += wi * r * r
    return s


@njit(cache=True, nogil=True)
def _reg_chi2(q, tq, rw):
    """Regularisation part of the objective (scaled coordinates)."""
    s = 0.0
    for k in range(q.shape[0]):
        if rw[k] != 0.0:
            d = q[k] - tq[k]
            s += rw[k] * d * d
    return s


@njit(cache=True, nogil=True, fastmath=_REASSOC)
def normal_equations_impl(jac, y, obs, sw, scale, q, tq, rw, jw, rs, a, g):
    """Normal matrix and half-gradient in scaled coordinates.

    Parameters
    ----------
    jac : float64[:, ::1], shape (nobs, npar)
        dy/dp at the current point (physical units).
    y, obs : float64[::1], shape (nobs,)
        Model and observation.
    sw : float64[::1], shape (nobs,)
        Square root of the weights, 0 for dropped points (whose y, obs and
        jac are then ignored, even if NaN).
    scale : float64[::1], shape (npar,)
        Parameter scales (q = p / scale).
    q, tq, rw : float64[::1], shape (npar,)
        Current scaled point, scaled regularisation target and weight.
    jw : float64[:, ::1], shape (npar, nobs)
        Workspace: weighted scaled Jacobian, transposed so that every entry
        of the normal matrix is a contiguous dot product.
    rs : float64[::1], shape (nobs,)
        Workspace: weighted residuals.
    a : float64[:, ::1], shape (npar, npar)
        Output ``Jq^T W Jq + diag(rw)`` (full symmetric matrix).
    g : float64[::1], shape (npar,)
        Output ``Jq^T W (y - obs) + rw (q - tq)``.
    """
    nobs, npar = jac.shape
    for i in range(nobs):
        s = sw[i]
        if s > 0.0:
            rs[i] = s * (y[i] - obs[i])
            for k in range(npar):
                jw[k, i] = s * jac[i, k]
        else:
            rs[i] = 0.0
            for k in range(npar):
                jw[k, i] = 0.0
    for j in range(npar):
        sj = scale[j]
        t = 0.0
        for i in range(nobs):
            t += jw[j, i] * rs[i]
        g[j] = t * sj + rw[j] * (q[j] - tq[j])
        for k in range(j + 1):
            t = 0.0
            for i in range(nobs):
                t += jw[j, i] * jw[k, i]
            a[j, k] = t * sj * scale[k]
            a[k, j] = a[j, k]
        a[j, j] += rw[j]


@njit(cache=True, nogil=True, inline="always")
def _cholesky_factor_impl(m, n, pivot_rel):
    """Cholesky factor of the leading ``n`` x ``n`` block of ``m``, in place.

    The one factorisation of this module (the damped solve and the
    covariance both use it). The lower triangle of ``m[:n, :n]`` is
    overwritten by L (m = L L^T); the upper triangle is left untouched.

    Parameters
    ----------
    m : float64[:, ::1], shape (>= n, >= n)
        Symmetric matrix; only its lower triangle is read.
    n : int
        Size of the block to factorise.
    pivot_rel : float
        A pivot must exceed ``pivot_rel`` times its original diagonal (0:
        merely positive) and be finite.

    Returns
    -------
    bool
        False at the first pivot that fails (``m`` is then partly overwritten).
    """
    for j in range(n):
        diag = m[j, j]
        s = diag
        for k in range(j):
            s -= m[j, k] * m[j, k]
        if not (s > pivot_rel * diag) or not math.isfinite(s):
            return False
        d = math.sqrt(s)
        m[j, j] = d
        for i in range(j + 1, n):
            t = m[i, j]
            for k in range(j):
                t -= m[i, k] * m[j, k]
            m[i, j] = t / d
    return True


@njit(cache=True, nogil=True)
def cholesky_solve_impl(m, b, x):
    """Solve ``m x = b`` for symmetric positive definite ``m`` in place.

    The lower triangle of ``m`` is overwritten by its Cholesky factor.

    Returns
    -------
    bool
        False if a pivot is not positive and finite (``x`` is then undefined).
    """
    n = m.shape[0]
    if not _cholesky_factor_impl(m, n, 0.0):
        return False
    for i in range(n):
        t = b[i]
        for k in range(i):
            t -= m[i, k] * x[k]
        x[i] = t / m[i, i]
    for i in range(n - 1, -1, -1):
        t = x[i]
        for k in range(i + 1, n):
            t -= m[k, i] * x[k]
        x[i] = t / m[i, i]
    return True


@njit(cache=True, nogil=True)
def sigma_from_normal_impl(a, scale, factor, work, idx, z, sigma):
    """1-sigma uncertainties from the diagonal of ``inv(a)``.

    Parameters
    ----------
    a : float64[:, ::1], shape (npar, npar)
        Undamped normal matrix in scaled coordinates (not modified).
    scale : float64[::1], shape (npar,)
        Parameter scales; sigma_k = scale_k * sqrt(inv(a)_kk * factor).
    factor : float
        Covariance multiplier (1, or the reduced chi2 when scale_covar).
    work : float64[:, ::1], shape (npar, npar)
        Workspace.
    idx : int64[::1], shape (npar,)
        Workspace.
    z : float64[::1], shape (npar,)
        Workspace.
    sigma : float64[::1], shape (npar,)
        Output; NaN for parameters with a zero diagonal, all NaN if singular.
    """
    npar = a.shape[0]
    na = 0
    for k in range(npar):
        sigma[k] = np.nan
        if a[k, k] > 0.0 and math.isfinite(a[k, k]):
            idx[na] = k
            na += 1
    if na == 0 or not math.isfinite(factor):
        return
    for u in range(na):
        for v in range(na):
            work[u, v] = a[idx[u], idx[v]]
    # Cholesky with a relative pivot test: a pivot that lost all but 1e-13 of
    # its diagonal means a variance inflation beyond what double precision
    # can resolve.
    if not _cholesky_factor_impl(work, na, COV_PIVOT_REL):
        return
    for u in range(na):
        # inv(A)_uu = |L^-1 e_u|^2; z_i = 0 for i < u
        var = 0.0
        for i in range(u, na):
            t = 1.0 if i == u else 0.0
            for k in range(u, i):
                t -= work[i, k] * z[k]
            z[i] = t / work[i, i]
            var += z[i] * z[i]
        sigma[idx[u]] = scale[idx[u]] * math.sqrt(var * factor)


@njit(cache=True, nogil=True)
def _predicted_decrease(a, g, step):
    """Decrease of the objective that the quadratic model ``(a, g)`` predicts for ``step``."""
    pred = 0.0
    n = step.shape[0]
    for j in range(n):
        t = 0.0
        for k in range(n):
            t += a[j, k] * step[k]
        pred -= step[j] * (2.0 * g[j] + t)
    return pred


@njit(cache=False, nogil=True, inline="always")
def fit_pixels_impl(model, ctx, obs, weights, p0, lower, upper, bound_mode, scale,
                    reg_target, reg_weight, max_iter, chi2_rtol, step_tol, good_chi2,
                    scale_covar, out_p, out_sigma, out_chi2, out_niter, out_status,
                    sigma_tol=0.0):
    """Fit every pixel with Levenberg-Marquardt (see the module docstring).

    Parameters
    ----------
    model : numba dispatcher
        ``model(p, ctx, y, jac) -> None``.
    ctx : any numba-typable object
        Passed to the model untouched.
    obs : float64[:, ::1], shape (npix, nobs)
        Observations.
    weights : float64[:, ::1], shape (npix, nobs)
        1/sigma^2 times any user weight; 0 drops a point.
    p0 : float64[:, :, ::1], shape (npix, nstart, npar)
        Starting points (physical units).
    lower, upper, scale : float64[::1], shape (npar,)
        Bounds and scales (physical units; scale > 0).
    bound_mode : int64[::1], shape (npar,)
        0 clip, 1 periodic, 2 reflect.
    reg_target, reg_weight : float64[::1], shape (npar,)
        Regularisation adds ``reg_weight_k ((p_k - reg_target_k) / scale_k)^2``.
    max_iter : int
        Iterations per start.
    chi2_rtol, step_tol, good_chi2 : float
        Relative chi2 decrease, largest scaled step, and the reduced chi2
        below which no further start is tried (<= 0: try all).
    scale_covar : bool
        Multiply the covariance by the reduced data chi2.
    out_p, out_sigma : float64[:, ::1], shape (npix, npar)
        Best parameters and their 1-sigma uncertainties.
    out_chi2 : float64[::1], shape (npix,)
        Reduced data chi2 ``sum(w r^2) / max(n_used - npar, 1)``.
    out_niter : int32[::1], shape (npix,)
        Iterations summed over the starts tried.
    out_status : uint8[::1], shape (npix,)
        0 converged, 1 max_iter, 2 failed, 3 bad input.
    sigma_tol : float, optional
        Converged when the next, nearly undamped step would move every
        parameter by less than this many of its 1-sigma uncertainties at the
        current point (0, the default: rule off; see the module docstring).
        Trailing and defaulted, so a caller's cached wrapper written without
        it still compiles.
    """
    npix, nobs = obs.shape
    nstart = p0.shape[1]
    npar = p0.shape[2]

    # per-call work arrays: nothing is allocated inside the pixel loop
    y = np.empty(nobs)
    y_t = np.empty(nobs)
    jac = np.empty((nobs, npar))
    jac_t = np.empty((nobs, npar))
    a = np.empty((npar, npar))
    m = np.empty((npar, npar))
    g = np.empty(npar)
    rhs = np.empty(npar)
    d = np.empty(npar)
    de = np.empty(npar)
    dmax_run = np.empty(npar)
    dd = np.empty(npar)
    q = np.empty(npar)
    q_t = np.empty(npar)
    p = np.empty(npar)
    sig = np.empty(npar)
    sw = np.empty(nobs)
    rs = np.empty(nobs)
    jw = np.empty((npar, nobs))
    z = np.empty(npar)
    idx = np.empty(npar, dtype=np.int64)
    free = np.empty(npar, dtype=np.bool_)
    unit = np.ones(npar)
    lo = np.empty(npar)
    up = np.empty(npar)
    tq = np.empty(npar)
    for k in range(npar):
        lo[k] = lower[k] / scale[k]
        up[k] = upper[k] / scale[k]
        tq[k] = reg_target[k] / scale[k]

    for ip in range(npix):
        w = weights[ip]
        ob = obs[ip]
        out_niter[ip] = 0
        for k in range(npar):
            out_p[ip, k] = np.nan
            out_sigma[ip, k] = np.nan
        out_chi2[ip] = np.nan

        # ---- input check: one bad pixel never affects the others
        bad = False
        n_used = 0
        for i in range(nobs):
            wi = w[i]
            if not (math.isfinite(wi) and wi >= 0.0):
                bad = True
                break
            if wi > 0.0:
                if not math.isfinite(ob[i]):
                    bad = True
                    break
                n_used += 1
        if not bad:
            for s in range(nstart):
                for k in range(npar):
                    if not math.isfinite(p0[ip, s, k]):
                        bad = True
        if bad or n_used == 0:
            out_status[ip] = STATUS_BAD_INPUT
            continue
        all_used = n_used == nobs
        for i in range(nobs):
            sw[i] = math.sqrt(w[i])
        dof = n_used - npar
        if dof < 1:
            dof = 1

        best_obj = np.inf
        best_status = STATUS_FAILED
        total_it = 0
        for s in range(nstart):
            for k in range(npar):
                q[k] = p0[ip, s, k] / scale[k]
            apply_bounds_impl(q, lo, up, bound_mode)
            for k in range(npar):
                p[k] = q[k] * scale[k]
            model(p, ctx, y, jac)
            chi2d = _data_chi2(y, ob, w, all_used)
            obj = chi2d + _reg_chi2(q, tq, reg_weight)
            if not math.isfinite(obj) or not _jac_finite(jac, w, all_used):
                continue
            normal_equations_impl(jac, y, ob, sw, scale, q, tq, reg_weight, jw, rs, a, g)
            for k in range(npar):
                dmax_run[k] = a[k, k]
            lam = LAMBDA_INIT
            nu = 2.0
            status = STATUS_MAX_ITER
            # sig holds the sigmas of the current a (scaled coordinates) once the sigma rule computed them
            sig_ready = False
            it = 0
            while it < max_iter:
                it += 1
                # ---- damping diagonal and active set
                amax = 0.0
                for k in range(npar):
                    if a[k, k] > dmax_run[k]:
                        dmax_run[k] = a[k, k]
                    if dmax_run[k] > amax:
                        amax = dmax_run[k]
                floor = DIAG_FLOOR_REL * amax if amax > 0.0 else 1.0
                for k in range(npar):
                    dd[k] = dmax_run[k] if dmax_run[k] > floor else floor
                    fr = True
                    if bound_mode[k] == 0:
                        if q[k] <= lo[k] and g[k] > 0.0:
                            fr = False
                        elif q[k] >= up[k] and g[k] < 0.0:
                            fr = False
                    free[k] = fr
                for j in range(npar):
                    for k in range(npar):
                        if free[j] and free[k]:
                            m[j, k] = a[j, k]
                        else:
                            m[j, k] = 0.0
                    if free[j]:
                        m[j, j] += lam * dd[j]
                        rhs[j] = -g[j]
                    else:
                        m[j, j] = 1.0
                        rhs[j] = 0.0
                if not cholesky_solve_impl(m, rhs, d):
                    lam *= nu
                    nu *= 2.0
                    if lam > LAMBDA_MAX:
                        status = STATUS_FAILED
                        break
                    continue
                # ---- trial point
                for k in range(npar):
                    q_t[k] = q[k] + d[k]
                apply_bounds_impl(q_t, lo, up, bound_mode)
                smax = 0.0
                for k in range(npar):
                    # effective step: clipping changes it, wrapping/reflecting
                    # maps to an equivalent point of the model
                    if bound_mode[k] == 0:
                        de[k] = q_t[k] - q[k]
                    else:
                        de[k] = d[k]
                    if abs(de[k]) > smax:
                        smax = abs(de[k])
                if smax < step_tol:
                    status = STATUS_OK
                    break
                # the covariance factor of the current point (sigma_from_normal_impl's convention)
                factor = chi2d / dof if scale_covar else 1.0
                if sigma_tol > 0.0 and lam <= PRESTEP_LAMBDA and _predicted_decrease(a, g, de) < factor:
                    # the nearly undamped step towards the quadratic model's minimum: when it
                    # moves no parameter by sigma_tol of its uncertainty here, this point is
                    # converged and the step is not evaluated. sig is computed once per point.
                    if not sig_ready:
                        sigma_from_normal_impl(a, unit, factor, m, idx, z, sig)
                        sig_ready = True
                    within = True
                    for k in range(npar):
                        if de[k] != 0.0 and not abs(de[k]) < sigma_tol * sig[k]:
                            within = False
                            break
                    if within:
                        status = STATUS_OK
                        break
                for k in range(npar):
                    p[k] = q_t[k] * scale[k]
                model(p, ctx, y_t, jac_t)
                chi2d_t = _data_chi2(y_t, ob, w, all_used)
                obj_t = chi2d_t + _reg_chi2(q_t, tq, reg_weight)
                # NaN compares False: a non-finite model value rejects the step
                if obj_t < obj and _jac_finite(jac_t, w, all_used):
                    # predicted decrease of the quadratic model for the step taken
                    pred = 0.0
                    for j in range(npar):
                        t = 0.0
                        for k in range(npar):
                            t += a[j, k] * de[k]
                        pred -= de[j] * (2.0 * g[j] + t)
                    actual = obj - obj_t
                    if pred > 0.0:
                        rho = actual / pred
                        t = 2.0 * rho - 1.0
                        fac = 1.0 - t * t * t
                        if fac < 1.0 / 3.0:
                            fac = 1.0 / 3.0
                    else:
                        fac = 1.0 / 3.0
                    rel = actual / obj
                    y, y_t = y_t, y
                    jac, jac_t = jac_t, jac
                    for k in range(npar):
                        q[k] = q_t[k]
                    obj = obj_t
                    chi2d = chi2d_t
                    normal_equations_impl(jac, y, ob, sw, scale, q, tq, reg_weight, jw, rs, a,
                                          g)
                    lam *= fac
                    if lam < LAMBDA_MIN:
                        lam = LAMBDA_MIN
                    nu = 2.0
                    sig_ready = False
                    if rel < chi2_rtol or obj == 0.0:
                        status = STATUS_OK
                        break
                else:
                    lam *= nu
                    nu *= 2.0
                    if lam > LAMBDA_MAX:
                        status = STATUS_OK
                        break
            total_it += it
            if status == STATUS_FAILED:
                continue
            if obj < best_obj:
                best_obj = obj
                best_status = status
                redchi = chi2d / dof
                for k in range(npar):
                    out_p[ip, k] = q[k] * scale[k]
                if sig_ready:
                    # the sigma rule's covariance is this one (same a, same factor) with unit
                    # scales: scale_k * (1 * s) is bit-identical to what the call below returns
                    for k in range(npar):
                        out_sigma[ip, k] = scale[k] * sig[k]
                else:
                    sigma_from_normal_impl(a, scale, redchi if scale_covar else 1.0,
                                           m, idx, z, sig)
                    for k in range(npar):
                        out_sigma[ip, k] = sig[k]
                out_chi2[ip] = redchi
            if good_chi2 > 0.0 and out_chi2[ip] <= good_chi2:
                break
        out_niter[ip] = total_it
        out_status[ip] = best_status
