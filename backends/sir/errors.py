"""The base exception of the classical-code backends (SIR and the codes that share its formats)."""

from __future__ import annotations

from stokesflow.backends.base import BackendError

__all__ = ["SIRError"]


class SIRError(BackendError):
    """A classical-code input, output or run is wrong; the message names the file or option."""
