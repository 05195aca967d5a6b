"""The base exception of the RH 1.5D backend."""

from __future__ import annotations

from stokesflow.backends.base import BackendError

__all__ = ["RHError"]


class RHError(BackendError):
    """An RH 1.5D input, output or run is wrong; the message names the file or option and the fix."""
