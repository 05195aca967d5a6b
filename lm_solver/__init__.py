"""Generic numba Levenberg-Marquardt engine for many independent small fits.

Knows nothing of the Sun: a forward model is a jitted callable that fills the
synthetic observation and its Jacobian for one parameter vector.

Public API
----------
fit(model, ctx, obs, p0, *, weights, lower, upper, bound_mode, scale,
    reg_target, reg_weight, options, threads, kernel) -> FitResult
LMOptions, FitResult, LMError, STATUS_* codes and STATUS_MESSAGES,
BOUND_* codes. The numba kernel and the caching pattern for callers are
documented in :mod:`stokesflow.lm_solver._kernels`.
"""

from stokesflow.lm_solver.solver import (
    BOUND_CLIP,
    BOUND_MODES,
    BOUND_PERIODIC,
    BOUND_REFLECT,
    STATUS_BAD_INPUT,
    STATUS_FAILED,
    STATUS_MAX_ITER,
    STATUS_MESSAGES,
    STATUS_OK,
    FitResult,
    LMError,
    LMOptions,
    fit,
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
