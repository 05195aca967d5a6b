"""Inversion backends: the Backend protocol, parameter specs and the registry.

Imports ``lm_solver`` only; never imports ``orchestrator``, ``nn_init`` or ``clusters``.
"""

from stokesflow.backends.base import (
    INVALID_PIXEL,
    STATUS_BAD_INPUT,
    STATUS_FAILED,
    STATUS_MAX_ITER,
    STATUS_NAMES,
    STATUS_NOT_RUN,
    STATUS_OK,
    STATUS_POOR_FIT,
    Backend,
    BackendError,
    BackendUnavailable,
    ChunkResult,
    ConfigError,
    ParameterSpec,
    valid_pixels,
)
from stokesflow.backends.registry import get_backend, get_backend_class, list_backends

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "ChunkResult",
    "ConfigError",
    "ParameterSpec",
    "STATUS_OK",
    "STATUS_MAX_ITER",
    "STATUS_FAILED",
    "STATUS_BAD_INPUT",
    "STATUS_POOR_FIT",
    "STATUS_NOT_RUN",
    "STATUS_NAMES",
    "get_backend",
    "get_backend_class",
    "list_backends",
    "valid_pixels",
    "INVALID_PIXEL",
]
