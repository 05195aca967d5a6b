"""``kind="serial"``: run every task in the calling process, at submit time.

For debugging (a breakpoint or a traceback in a task lands in your own
process) and for tests.  Tasks are never retried, so an error shows at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

from stokesflow.clusters.base import InProcessFuturesExecutor

__all__ = ["SerialExecutor"]


class SerialExecutor(InProcessFuturesExecutor):
    """Synchronous executor: ``submit`` runs the task and returns a finished future.

    An exception raised by the task is stored in the future (``result()``
    re-raises it, ``exception()`` returns it); ``KeyboardInterrupt`` and
    ``SystemExit`` propagate at once.
    """

    kind = "serial"

    @property
    def n_workers(self) -> int:
        return 1

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if self._closed:
            raise RuntimeError("submit() on a closed SerialExecutor")
        fut: Future = Future()
        fut.set_running_or_notify_cancel()
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
        return fut

    def as_completed(self, futures: Iterable[Future]) -> Iterator[Future]:
        # All are finished already; keep the caller's order.
        yield from list(futures)

    def run_on_workers(self, fn: Callable[..., Any], /, *args: Any) -> None:
        # The only "worker" is this process.
        fn(*args)

    def _worker_pids(self) -> dict[str, int]:
        return {"serial": os.getpid()}
