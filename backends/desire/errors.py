"""The base exception of the DeSIRe backend."""

from __future__ import annotations

from stokesflow.backends.sir.errors import SIRError

__all__ = ["DesireError"]


class DesireError(SIRError):
    """A DeSIRe input, output or run is wrong; the message names the file or option.

    A subclass of :class:`~stokesflow.backends.sir.errors.SIRError` because
    DeSIRe shares SIR's formats and runner, whose errors are SIRError.
    """
