""":func:`open_executor`: one entry point for every cluster kind."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from stokesflow.clusters.base import Executor
from stokesflow.clusters.spec import ClusterError, ClusterSpec

__all__ = ["open_executor", "executor_for", "preflight"]

log = logging.getLogger(__name__)


def preflight(spec: ClusterSpec) -> None:
    """Check, without starting or importing anything, what ``open_executor(spec)`` needs from this machine.

    ``slurm``: ``sbatch`` and ``scancel`` on the PATH; ``pbs``: ``qsub`` and
    ``qdel``; ``mpi``: the process was started by an MPI launcher (and, if
    not, whether ``mpiexec`` is there to do it).  :func:`open_executor` runs
    it first; call it earlier to fail before other expensive work (reading
    the input, compiling kernels).

    Raises
    ------
    MissingProgramError
        A program is not on the PATH; one line with the program, the kind
        and what to do.
    ClusterError
        ``mpi`` outside ``mpiexec``.
    """
    if spec.kind in ("slurm", "pbs"):
        from stokesflow.clusters.jobqueue import check_programs

        check_programs(spec.kind)
    elif spec.kind == "mpi":
        from stokesflow.clusters.mpi import check_launch

        check_launch(spec)


@contextlib.contextmanager
def open_executor(spec: ClusterSpec) -> Iterator[Executor]:
    """Open the executor described by ``spec`` and close it on leaving the block.

    Parameters
    ----------
    spec : ClusterSpec
        ``kind`` selects serial, local (default), mpi, slurm, pbs or address.

    Yields
    ------
    Executor

    Raises
    ------
    ClusterError
        A spec that cannot be opened here (see the kind's module);
        ``MissingDependencyError`` names the package to install;
        ``SchedulerUnreachableError`` for ``address`` nobody answers at;
        ``MissingProgramError`` for ``sbatch``/``qsub``/``mpiexec`` not on
        the PATH (before anything starts); ``JobSubmissionError`` from the
        executor's ``as_completed`` when the batch system refused a worker job.

    Notes
    -----
    ``kind="mpi"``: only one MPI rank (1 in dask mode, 0 in futures mode)
    runs the body of the ``with`` block; the others serve tasks and leave by
    ``SystemExit(0)`` when it ends - see :mod:`stokesflow.clusters.mpi`.

    Examples
    --------
    >>> with open_executor(ClusterSpec(kind="serial")) as ex:
    ...     ex.submit(pow, 2, 10).result()
    1024
    """
    if not isinstance(spec, ClusterSpec):
        raise ClusterError(
            f"open_executor() needs a ClusterSpec, got {type(spec).__name__}; "
            "build one with ClusterSpec(kind=...) or ClusterSpec.from_mapping(table)"
        )
    preflight(spec)
    if spec.kind == "mpi":
        from stokesflow.clusters.mpi import open_mpi

        with open_mpi(spec) as ex:
            yield ex
        return
    ex: Executor
    if spec.kind == "serial":
        from stokesflow.clusters.serial import SerialExecutor

        ex = SerialExecutor()
    elif spec.kind == "local":
        from stokesflow.clusters.dask_executor import open_local

        ex = open_local(spec)
    elif spec.kind == "address":
        from stokesflow.clusters.dask_executor import open_address

        ex = open_address(spec)
    elif spec.kind in ("slurm", "pbs"):
        from stokesflow.clusters.jobqueue import open_jobqueue

        ex = open_jobqueue(spec)
    else:  # pragma: no cover - ClusterSpec validates kind
        raise ClusterError(f"unknown cluster kind {spec.kind!r}")
    try:
        yield ex
    except BaseException:
        # The error of the body (or Ctrl-C) is what the caller must see: a
        # close that fails as well (a cluster that never started) only logs.
        try:
            ex.close()
        except Exception as exc:
            log.debug("closing the %s executor after an error failed too: %s: %s", spec.kind,
                      type(exc).__name__, exc)
        raise
    ex.close()


def executor_for(spec: ClusterSpec, executor: Executor | None = None) -> contextlib.AbstractContextManager[Executor]:
    """``open_executor(spec)``, or ``executor`` lent for the block (left open at its end).

    For a run made of several steps on one cluster (``stokesflow assist``:
    reference, training, prediction, inversions): the caller opens the executor
    once and each step borrows it, so workers start once and, under
    ``mpiexec``, dask-mpi is initialised once.

    Parameters
    ----------
    spec : ClusterSpec
        What to open when no executor is given.
    executor : Executor, optional
        An open executor to use instead.
    """
    return contextlib.nullcontext(executor) if executor is not None else open_executor(spec)
