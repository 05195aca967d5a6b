"""The base exception of the Lightweaver backend."""

from __future__ import annotations

from stokesflow.backends.base import BackendError

__all__ = ["LightweaverError"]


class LightweaverError(BackendError):
    """The Lightweaver synthesis cannot run as configured; the message says why and the fix."""
