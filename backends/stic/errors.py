"""The base exception of the STiC backend."""

from __future__ import annotations

from stokesflow.backends.base import BackendError

__all__ = ["STiCError"]


class STiCError(BackendError):
    """A STiC input, output or run is wrong; the message names the file or option and the fix."""
