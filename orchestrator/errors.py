"""Exceptions of the orchestrator folder.

Every error raised on purpose by :mod:`orchestrator` derives from
:class:`OrchestratorError`, so a caller can catch the whole folder with one
``except``. Messages name the file, the array, the expected and the actual
value, and what to do next.
"""

from __future__ import annotations

__all__ = ["OrchestratorError", "ObservationError"]


class OrchestratorError(Exception):
    """Base class of every error raised by :mod:`orchestrator`."""


class ObservationError(OrchestratorError, ValueError):
    """An observation file (or a set of instrument files) cannot be used.

    Raised by :func:`stokesflow.orchestrator.io.open_observation` and the instrument
    readers of :mod:`stokesflow.orchestrator.readers` when a file is missing, is not of
    the declared format, or holds arrays of the wrong shape, order or units.
    Also a :class:`ValueError`, so generic callers that catch bad values keep
    working.
    """
