"""The :class:`Executor` interface shared by every cluster kind, and small helpers.

An executor hands tasks to workers and gives back futures.  The orchestrator
drives every kind with the same loop::

    with open_executor(spec) as ex:
        ex.run_on_workers(warm_up)            # once per worker process
        futures = [ex.submit(invert_chunk, c) for c in first_chunks]
        for fut in ex.as_completed(futures):
            store(fut.result())
"""

from __future__ import annotations

import abc
import importlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from stokesflow.clusters.spec import MissingDependencyError, MissingProgramError

#: Seconds between two calls of the :meth:`Executor.on_idle` callback while nothing finishes.
IDLE_INTERVAL_S = 0.5

log = logging.getLogger(__name__)

__all__ = [
    "IDLE_INTERVAL_S",
    "Executor",
    "Future",
    "InProcessFuturesExecutor",
    "mpi_rank",
    "mpi_size",
    "require",
    "require_program",
    "usable_cpus",
]

# Environment variables holding the MPI rank, by launcher: MPICH/Intel MPI
# (Hydra) and Cray PMI, PMIx (Open MPI 5, srun --mpi=pmix), Open MPI,
# MVAPICH2.
_RANK_VARS: tuple[str, ...] = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_SIZE_VARS: tuple[str, ...] = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")

# Which optional extra of stokesflow installs which package.
_EXTRAS: dict[str, tuple[str, str]] = {
    "dask_jobqueue": ("dask-jobqueue", "hpc"),
    "dask_mpi": ("dask-mpi", "mpi"),
    "mpi4py": ("mpi4py", "mpi"),
}


@runtime_checkable
class Future(Protocol):
    """What :meth:`Executor.submit` returns.

    Satisfied by :class:`concurrent.futures.Future` (``serial``,
    ``mpi_mode="futures"``) and :class:`distributed.Future` (Dask kinds).
    """

    def result(self, timeout: float | None = None) -> Any: ...

    def exception(self, timeout: float | None = None) -> BaseException | None: ...

    def done(self) -> bool: ...

    def cancel(self) -> Any: ...


class Executor(abc.ABC):
    """One interface over the ways tasks reach workers.

    Attributes
    ----------
    kind : str
        The :attr:`stokesflow.clusters.ClusterSpec.kind` it was opened for.
    n_workers : int
        Worker processes available now, or planned (``slurm``/``pbs`` with
        adaptive scaling start with none).  Use it to bound the tasks in
        flight.

    Notes
    -----
    Use as a context manager or call :meth:`close`; :func:`stokesflow.clusters.open_executor`
    does both.
    """

    kind: str

    @property
    @abc.abstractmethod
    def n_workers(self) -> int:
        """Number of worker processes available now (or planned)."""

    @abc.abstractmethod
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on a worker.

        Parameters
        ----------
        fn : callable
            A picklable function: defined at module level in an importable
            module (not a lambda in ``__main__`` for ``mpi_mode="futures"``).
        *args, **kwargs
            Its arguments, sent with the task.

        Returns
        -------
        Future
            With ``result()``, ``exception()``, ``done()``, ``cancel()``.  An
            exception raised by ``fn`` is re-raised by ``result()`` once the
            retries are used up.
        """

    def offered_resources(self) -> dict[str, float]:
        """Abstract resources (``GPU``, ...) the workers offer in total; ``{}`` for kinds without any."""
        return {}

    def submit_preferring(self, resources: Mapping[str, float], fn: Callable[..., Any], /, *args: Any,
                          **kwargs: Any) -> Future:
        """Like :meth:`submit`, on a worker offering ``resources`` when any worker does, else anywhere.

        Parameters
        ----------
        resources : mapping
            NAME -> amount the task holds while it runs, e.g. ``{"GPU": 1}``
            (workers get them from :attr:`ClusterSpec.worker_resources`).
        fn, *args, **kwargs
            As for :meth:`submit`.
        """
        return self.submit(fn, *args, **kwargs)

    @abc.abstractmethod
    def as_completed(self, futures: Iterable[Future]) -> Iterator[Future]:
        """Yield the given futures as they finish (successfully or not)."""

    def outcome(self, future: Future) -> tuple[BaseException | None, Any]:
        """``(exception, None)`` if the finished ``future``'s task raised, else ``(None, result)``.

        For futures that :meth:`as_completed` yielded. Executors whose results
        can be lost after the task finished (Dask: a result lives on the worker
        that computed it) wait for its recomputation watching the cluster,
        so that a cluster that cannot deliver raises instead of hanging.
        """
        exc = future.exception()
        return (exc, None) if exc is not None else (None, future.result())

    def result(self, future: Future) -> Any:
        """The finished ``future``'s result, or its task's exception raised (fetched as :meth:`outcome` does)."""
        exc, value = self.outcome(future)
        if exc is not None:
            raise exc
        return value

    @abc.abstractmethod
    def run_on_workers(self, fn: Callable[..., Any], /, *args: Any) -> None:
        """Run ``fn(*args)`` once in every worker process.

        For set-up and warm-up (compile numba kernels, open scratch folders).
        Dask kinds also run it in workers that join or restart later; see
        each executor for details.  An exception in ``fn`` is raised here.
        """

    @abc.abstractmethod
    def scatter(self, obj: Any) -> Any:
        """Share a small object with all tasks.

        Returns a handle to pass to :meth:`submit` in place of ``obj``; the
        task receives ``obj``.  Kinds without shared storage return ``obj``.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the workers and connections (idempotent)."""

    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """Describe the executor.

        Returns
        -------
        dict
            ``kind``, ``n_workers``, ``scheduler_address`` (or ``None``),
            ``dashboard_link`` (or ``None``), ``worker_pids`` (mapping worker
            name to process id, or ``None`` where unknown), plus kind-specific
            entries.
        """

    #: Set by :meth:`on_idle`.
    _idle: Callable[[], None] | None = None

    def on_idle(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback()`` about every :data:`IDLE_INTERVAL_S` while :meth:`as_completed` waits.

        Only while no future of the iteration has finished (a driver waiting
        on queued batch jobs); ``None`` removes it.  For a progress line that
        says what the workers do, e.g. with :meth:`worker_summary`.  An
        exception other than ``KeyboardInterrupt`` raised by ``callback`` goes
        to the debug log and does not stop the iteration.  Executors whose
        futures finish inside :meth:`submit` (``serial``) never wait, so never
        call it.
        """
        self._idle = callback

    def _call_idle(self) -> None:
        if self._idle is None:
            return
        try:
            self._idle()
        except Exception as exc:  # a progress line must not end the run
            log.debug("idle callback %r failed: %s: %s", self._idle, type(exc).__name__, exc)

    def worker_summary(self) -> str:
        """One line on the workers for a progress line, e.g. ``"workers: 4"``.

        Cheap (no batch-system call); ``slurm``/``pbs`` executors also count
        the worker jobs pending and running.
        """
        return f"workers: {self.n_workers}"

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind!r} n_workers={self.n_workers}>"


class InProcessFuturesExecutor(Executor):
    """Base of the executors without a Dask scheduler (``serial``, ``mpi_mode="futures"``).

    Their futures are :class:`concurrent.futures.Future`; :meth:`scatter`
    hands back the object itself (it travels pickled with each task) and
    :meth:`info` has no scheduler address, dashboard or per-worker pids
    unless the subclass knows them (:meth:`_worker_pids`, :meth:`_info_extra`).
    """

    _closed: bool = False

    def scatter(self, obj: Any) -> Any:
        return obj

    def close(self) -> None:
        self._closed = True

    def _worker_pids(self) -> dict[str, int] | None:
        return None

    def _info_extra(self) -> dict[str, Any]:
        return {}

    def info(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n_workers": self.n_workers,
            "scheduler_address": None,
            "dashboard_link": None,
            "worker_pids": self._worker_pids(),
            **self._info_extra(),
        }


def _int_env(names: tuple[str, ...]) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return None


def mpi_rank() -> int | None:
    """MPI rank of this process if it was started by ``mpiexec``/``srun``, else ``None``.

    Read from the launcher's environment variables (``PMI_RANK``,
    ``PMIX_RANK``, ``OMPI_COMM_WORLD_RANK``, ``MV2_COMM_WORLD_RANK``) without
    importing mpi4py, so calling it never initialises MPI.

    Notes
    -----
    Processes started by an MPI rank inherit its variables: a Dask worker
    that a dask-mpi Nanny spawned reports the rank of its Nanny.
    """
    return _int_env(_RANK_VARS)


def mpi_size() -> int | None:
    """Number of MPI ranks from the launcher's environment (``PMI_SIZE``, ...), else ``None``."""
    return _int_env(_SIZE_VARS)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as set by a batch system or taskset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def require(module: str, kind: str) -> ModuleType:
    """Import an optional dependency or say what to install.

    Parameters
    ----------
    module : str
        Importable name (``"dask_jobqueue"``, ``"dask_mpi"``, ``"mpi4py"``).
    kind : str
        The cluster kind that needs it, for the message.

    Raises
    ------
    MissingDependencyError
        Naming the package and the ``pip install`` command.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        package, extra = _EXTRAS.get(top, (top, "all"))
        raise MissingDependencyError(
            f"cluster kind {kind!r} needs the Python package {package!r}, which cannot be "
            f"imported ({exc}): install it with  pip install \"stokesflow[{extra}]\"  "
            f"(or  pip install {package})"
        ) from exc


def require_program(program: str, kind: str, *, system: str, remedy: str) -> str:
    """Find a program the cluster kind runs, or say what to do, before any work starts.

    Parameters
    ----------
    program : str
        Executable name looked up on the ``PATH`` (``"sbatch"``, ``"qsub"``, ``"mpiexec"``).
    kind : str
        The cluster kind that needs it, for the message.
    system : str
        What the program belongs to (``"SLURM"``, ``"PBS"``, ``"MPI"``).
    remedy : str
        How to get it, e.g. ``"load the SLURM module (module load slurm) or run on a login node"``.

    Returns
    -------
    str
        The full path of the program.

    Raises
    ------
    MissingProgramError
        One line: the program, the kind, the remedy, and the other kinds.
    """
    path = shutil.which(program)
    if path is None:
        raise MissingProgramError(
            f"--cluster {kind} needs the {system} program {program!r}, which is not on the PATH: "
            f"{remedy}, or choose another --cluster (local, mpi, address)"
        )
    return path
