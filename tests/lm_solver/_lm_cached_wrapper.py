"""The caching pattern of stokesflow.lm_solver._kernels, exercised in fresh processes.

``fit_line_impl`` binds the model as a global and calls the inlined engine;
it is cached on disk. Run as a script it fits one small problem and prints
JSON with the cache statistics of the wrapper and the wall times, so that
tests/lm_solver/test_lm_cache.py can compare a cold and a warm process.
"""

from __future__ import annotations

import json
import time

import numpy as np
from numba import njit

from stokesflow.lm_solver._kernels import fit_pixels_impl

__all__ = ["fit_line_impl", "fit_line_sigma_impl", "line_model_impl", "main"]


@njit(cache=True, nogil=True)
def line_model_impl(p, ctx, y, jac):
    """y = p0 + p1 * x."""
    x = ctx[0]
    for i in range(x.size):
        y[i] = p[0] + p[1] * x[i]
        jac[i, 0] = 1.0
        jac[i, 1] = x[i]


@njit(cache=True, nogil=True)
def fit_line_impl(ctx, obs, weights, p0, lower, upper, bound_mode, scale, reg_target, reg_weight,
                  max_iter, chi2_rtol, step_tol, good_chi2, scale_covar, out_p, out_sigma,
                  out_chi2, out_niter, out_status):
    """lm_solver engine with :func:`line_model_impl` bound as a global (cacheable)."""
    fit_pixels_impl(line_model_impl, ctx, obs, weights, p0, lower, upper, bound_mode, scale,
                    reg_target, reg_weight, max_iter, chi2_rtol, step_tol, good_chi2, scale_covar,
                    out_p, out_sigma, out_chi2, out_niter, out_status)


@njit(cache=False, nogil=True)
def fit_line_sigma_impl(ctx, obs, weights, p0, lower, upper, bound_mode, scale, reg_target, reg_weight,
                        max_iter, chi2_rtol, step_tol, good_chi2, scale_covar, out_p, out_sigma,
                        out_chi2, out_niter, out_status, sigma_tol=0.0):
    """As :func:`fit_line_impl`, with the trailing ``sigma_tol`` (not cached: its signatures are counted)."""
    fit_pixels_impl(line_model_impl, ctx, obs, weights, p0, lower, upper, bound_mode, scale,
                    reg_target, reg_weight, max_iter, chi2_rtol, step_tol, good_chi2, scale_covar,
                    out_p, out_sigma, out_chi2, out_niter, out_status, sigma_tol)


def main() -> dict:
    """Fit y = 1 + 2x through the cached wrapper."""
    from stokesflow.lm_solver import fit

    x = np.linspace(0.0, 1.0, 7)
    obs = (1.0 + 2.0 * x)[None, :] + 0.01 * np.cos(5 * x)[None, :]
    t0 = time.perf_counter()
    res = fit(None, (x,), obs, np.zeros(2), kernel=fit_line_impl)
    out = {
        "wrapper_s": time.perf_counter() - t0,
        "hits": sum(fit_line_impl.stats.cache_hits.values()),
        "misses": sum(fit_line_impl.stats.cache_misses.values()),
        "params": res.params[0].tolist(),
    }
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
