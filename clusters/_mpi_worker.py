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
``OSError``) is still logged.

The same shutdown lets a worker's heartbeat reach a scheduler that is already
gone (``Failed to communicate with scheduler during heartbeat`` and a
``CommClosedError`` traceback): :func:`quiet_close_races` drops those
close-race records (the filter of :mod:`stokesflow.clusters._worker_signals`)
in the worker processes and in the scheduler and Nanny ranks.  Under
``mpiexec`` the scheduler (rank 0) goes away only at the end of the job: if it
dies earlier, ``mpiexec`` ends every rank and the driver reports it.

Loaded by the Nanny into every worker process it starts, through the worker's
``preload`` option; imports nothing from the project outside this folder.
"""

from __future__ import annotations

import logging
from typing import Any

from stokesflow.clusters._worker_signals import _DropCloseRaces

__all__ = ["dask_setup", "quiet_close_races"]

_MESSAGE = "Worker process died unexpectedly"


class _DropClosedQueueAtExit(logging.Filter):
    """Drop the child's "died unexpectedly" record whose cause is a queue closed in this process."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, TypeError) and record.getMessage().startswith(_MESSAGE))


_FILTER = _DropClosedQueueAtExit()


def quiet_close_races() -> None:
    """Drop Dask's records about the scheduler going away in this process (idempotent).

    On the handlers of the ``distributed`` logger (or the root logger's), so
    that the records of every ``distributed.*`` logger pass through it.
    """
    logger = logging.getLogger("distributed")
    for handler in logger.handlers or logging.getLogger().handlers:
        if not any(isinstance(f, _DropCloseRaces) for f in handler.filters):
            handler.addFilter(_DropCloseRaces())


def dask_setup(worker: Any) -> None:
    """Install the filters in this worker process (called by Dask when the worker starts)."""
    logger = logging.getLogger("distributed.nanny")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    quiet_close_races()
