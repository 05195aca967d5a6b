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

import logging
import signal
import threading
from typing import Any

__all__ = ["dask_setup"]


class _DropCancelledAtClose(logging.Filter):
    """Drop "Async instruction ... ended with CancelledError".

    The driver never cancels a running task; the only time one is cancelled
    is when the driver closes its client with tasks in flight (Ctrl-C,
    SIGTERM, an error), and a warning per task then says nothing new.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "ended with CancelledError" not in record.getMessage()


def dask_setup(worker: Any) -> None:
    """Ignore SIGINT in this worker process (called by Dask when the worker starts)."""
    # signal.signal() works in the main thread only, where a Nanny-spawned
    # worker runs its event loop; elsewhere (an in-process worker) leave it.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("distributed.worker.state_machine").addFilter(_DropCancelledAtClose())
