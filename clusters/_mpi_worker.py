"""Preload of the dask-mpi worker processes (``kind="mpi"``, ``mpi_mode="dask"``).

At the end of every successful run dask-mpi's exit hook shuts the cluster
down; each worker process a Nanny spawned then exits while its thread that
waits for the Nanny's stop message still reads from the queue, which Python
has already closed in this process.  ``multiprocessing`` raises
``TypeError: 'NoneType' object cannot be interpreted as an integer`` there
and distributed logs it as ``Worker process died unexpectedly`` with a
traceback: the last lines of an otherwise clean job log.  This module drops
exactly that record (a ``TypeError`` from reading a queue closed in this
process); a stop queue broken by the Nanny going away (``EOFError``,
``OSError``) is still logged.  Loaded by the Nanny into every worker process
it starts, through the worker's ``preload`` option; imports nothing from the
project.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["dask_setup"]

_MESSAGE = "Worker process died unexpectedly"


class _DropClosedQueueAtExit(logging.Filter):
    """Drop the child's "died unexpectedly" record whose cause is a queue closed in this process."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, TypeError) and record.getMessage().startswith(_MESSAGE))


_FILTER = _DropClosedQueueAtExit()


def dask_setup(worker: Any) -> None:
    """Install the filter on ``distributed.nanny`` in this worker process (called by Dask at start)."""
    logger = logging.getLogger("distributed.nanny")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
