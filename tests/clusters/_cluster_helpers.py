"""Task functions for the clusters tests.

They live in an importable module (not in a test file or ``__main__``) so
that every kind of worker can unpickle them by reference: Dask workers
spawned by a Nanny get the parent's ``sys.path``, mpi4py.futures workers get
this folder through ``PYTHONPATH`` set by the tests.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

__all__ = [
    "add",
    "crash_once",
    "fail_until",
    "raise_value_error",
    "record_pid",
    "scheduler_worker_plugins",
    "slow_once",
    "square_with_pid",
    "total_length",
    "environ",
]


def square_with_pid(x: int) -> tuple[int, int]:
    """Return ``(x * x, pid of the process that ran it)``."""
    return x * x, os.getpid()


def environ(name: str) -> str | None:
    """The value of the environment variable ``name`` in the process that runs this (None: unset)."""
    return os.environ.get(name)


def add(a: float, b: float = 0.0, *, scale: float = 1.0) -> float:
    """``(a + b) * scale``: exercises positional and keyword arguments."""
    return (a + b) * scale


def total_length(obj: object) -> int:
    """``len(obj)``, for checking that a scattered object arrives whole."""
    return len(obj)  # type: ignore[arg-type]


def raise_value_error(message: str) -> None:
    """Raise ``ValueError(message)``."""
    raise ValueError(message)


def record_pid(directory: str) -> None:
    """Leave a file named ``<pid>-<random>`` in ``directory`` (one per call)."""
    Path(directory, f"{os.getpid()}-{uuid.uuid4().hex}").touch()


def fail_until(counter: str, n_failures: int) -> int:
    """Count calls in the file ``counter``; raise on the first ``n_failures`` calls.

    Returns
    -------
    int
        The number of the call that succeeded (``n_failures + 1``).
    """
    path = Path(counter)
    count = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(count))
    if count <= n_failures:
        raise RuntimeError(f"planned failure {count} of {n_failures}")
    return count


def slow_once(directory: str, seconds: float) -> int:
    """Write ``<pid>`` into ``directory``; sleep ``seconds`` on the first call only.

    The first call gives the test time to kill the worker mid-task; the
    retried call returns at once.  Returns the pid.
    """
    first = not any(Path(directory).iterdir())
    Path(directory, str(os.getpid())).touch()
    if first:
        time.sleep(seconds)
    return os.getpid()


def crash_once(marker: str) -> int:
    """Kill the calling process (``os._exit(3)``) unless ``marker`` exists; create it first.

    Returns the pid of the process that finally ran it.
    """
    path = Path(marker)
    if not path.exists():
        path.touch()
        os._exit(3)
    return os.getpid()


def scheduler_worker_plugins(dask_scheduler: object) -> list[str]:
    """Names of the worker plugins a Dask scheduler holds (for ``client.run_on_scheduler``)."""
    return sorted(dask_scheduler.worker_plugins)  # type: ignore[attr-defined]
