"""Preload of the worker processes of ``kind="local"``: Ctrl-C belongs to the driver.

A terminal's Ctrl-C sends SIGINT to every process of the foreground process
group, the driver and the worker processes its Nannies spawned alike.  The
driver stops the run and closes the cluster; workers that also took the
signal would die first, each printing ``KeyboardInterrupt`` and
``CancelledError`` tracebacks.  Loaded by the Nanny into every worker process
it starts (also those that replace a crashed one) through Dask's ``preload``
option; this module imports nothing from the project.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any

__all__ = ["dask_setup"]


# Messages of a worker whose scheduler is going away.  The scheduler of a
# local cluster lives in the driver process, so it only goes away when the
# driver closes the cluster (Ctrl-C, SIGTERM, an error, the end of the run):
# then each of these says nothing new.
_CLOSE_RACES: tuple[str, ...] = (
    "ended with CancelledError",  # a running task cancelled as the client closed
    "Failed to communicate with scheduler",
    "Scheduler was unaware of this worker",
    "Connection to scheduler broken",
)


class _DropCloseRaces(logging.Filter):
    """Drop a worker's warnings and tracebacks about the scheduler or its tasks going away."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # CommClosedError and tornado's StreamClosedError are OSErrors.
        if isinstance(exc, (OSError, asyncio.CancelledError)):
            return False
        message = record.getMessage()
        return not any(text in message for text in _CLOSE_RACES)


def dask_setup(worker: Any) -> None:
    """Ignore SIGINT in this worker process and keep Dask's close-time chatter off the terminal.

    Called by Dask when the worker starts.
    """
    # signal.signal() works in the main thread only, where a Nanny-spawned
    # worker runs its event loop; elsewhere (an in-process worker) leave it.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # On the handlers, so that the records of every distributed.* logger
    # pass through it (a logger's own filter sees only its own records).
    close_races = _DropCloseRaces()
    logger = logging.getLogger("distributed")
    for handler in logger.handlers or logging.getLogger().handlers:
        handler.addFilter(close_races)
