"""``kind="mpi"``: the program itself is started by ``mpiexec -n N``.

Every rank runs the same program up to :func:`stokesflow.clusters.open_executor`; there
the ranks take their roles.  Exactly one rank, the *client rank*, enters the
``with open_executor(spec) as ex:`` block and runs the orchestrator; every
other rank serves tasks inside ``open_executor`` and, when the client rank
is done, leaves by raising ``SystemExit(0)`` - it never returns to the
caller, so code after the ``with`` block runs on the client rank alone.

Two modes (``ClusterSpec.mpi_mode``):

``"dask"`` (default)
    dask-mpi: rank 0 runs the Dask scheduler, rank 1 is the client rank,
    ranks 2.. run Nanny-managed workers (needs ``N >= 3``).  A worker that
    dies (segfault in an external code, ``os._exit``, out of memory) is
    restarted by its Nanny and its task retried; the dashboard, worker
    plugins and the same code path as ``local``/``slurm`` come with it.
    Costs: a Nanny spawns each worker as a fresh Python process (``spawn``
    start method) that re-imports the main module, so nothing may
    initialise MPI at import time; ~1 ms of scheduler work per task.
``"futures"``
    mpi4py.futures: rank 0 is the client rank, ranks 1.. are workers that
    receive pickled tasks over MPI (needs ``N >= 2``; also works under
    ``mpiexec -n N python -m mpi4py.futures prog ...``).  No extra processes
    and microseconds per task, but a worker that dies hard ends the whole
    ``mpiexec`` job - finished chunks must already be on disk (``--resume``
    picks up the rest).  Task exceptions are retried in the same worker.

Dask mode is the default because one crashing pixel fit or external code must
not end a job that holds hundreds of nodes; the per-task overhead is
irrelevant for chunk-sized tasks (thousands of pixels each).

Rules for programs that use ``kind="mpi"``:

* Do not import ``mpi4py.MPI`` (or anything that does) at module level.
* Call ``open_executor`` early; everything before it runs on every rank, so
  only read configuration and check inputs there - open the result file for
  writing inside the ``with`` block.
* ``open_executor`` can be entered once per process: dask-mpi shuts the
  cluster down when the client rank's interpreter exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

from stokesflow.clusters.base import (
    IDLE_INTERVAL_S,
    Executor,
    InProcessFuturesExecutor,
    mpi_rank,
    require,
    require_program,
)
from stokesflow.clusters.dask_executor import DaskExecutor, _connected_workers, _dashboard_kwargs
from stokesflow.clusters.environ import worker_environ
from stokesflow.clusters.spec import ClusterError, ClusterSpec

__all__ = ["MPIFuturesExecutor", "check_launch", "client_rank", "open_mpi"]

# Preload module of the dask-mpi worker processes (see its docstring).
_WORKER_PRELOAD = "stokesflow.clusters._mpi_worker"

# Seconds the client rank waits for all dask-mpi workers to connect.
WORKER_WAIT_S = 120.0

_opened = False

# Set-up functions already run in this (worker) process, by token; see
# MPIFuturesExecutor.run_on_workers.
_SETUP_DONE: set[str] = set()


#: Set in the ranks that serve dask-mpi (scheduler, workers) rather than run the program.
_SERVICE_RANK = False


def is_service_rank() -> bool:
    """Whether this process is a dask-mpi scheduler or worker rank (not the one that runs the program).

    Such a rank holds no result file: after a Ctrl-C or SIGTERM it has nothing to report (the
    client rank says what is on disk, once).
    """
    return _SERVICE_RANK


def client_rank(spec: ClusterSpec) -> int | None:
    """The MPI rank that runs the body of ``with open_executor(spec)``.

    Returns
    -------
    int or None
        1 for ``mpi_mode="dask"``, 0 for ``"futures"``, ``None`` for other kinds.
    """
    if spec.kind != "mpi":
        return None
    return 1 if spec.mpi_mode == "dask" else 0


def _under_srun() -> bool:
    # srun starts MPI programs without always setting the PMI variables
    # mpi_rank() reads (it depends on --mpi); a multi-task step is MPI enough.
    try:
        return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_PROCID" in os.environ
    except ValueError:
        return False


def _under_mpi4py_futures_server() -> bool:
    """True when started as ``python -m mpi4py.futures prog``: only rank 0 runs the program."""
    import sys

    core = sys.modules.get("mpi4py.futures._core")
    return getattr(core, "SharedPool", None) is not None


def check_launch(spec: ClusterSpec) -> None:
    """Check that this process was started by an MPI launcher (nothing is imported or started).

    Raises
    ------
    MissingProgramError
        Not under MPI, and no ``mpiexec`` on the PATH to start it with.
    ClusterError
        Not under MPI (the message shows the ``mpiexec`` command line).
    """
    if mpi_rank() is None and not _under_srun():
        need = 3 if spec.mpi_mode == "dask" else 2
        # Without a launcher on the PATH, the advice below cannot be followed:
        # say that first.
        require_program(
            "mpiexec", "mpi", system="MPI",
            remedy=f"install one (pip install \"stokesflow[mpich]\") or load your MPI module (module load "
            f"openmpi), then start the program with `mpiexec -n {need + 1} stokesflow invert ... --cluster mpi`",
        )
        raise ClusterError(
            "ClusterSpec(kind='mpi') needs the program to be started by MPI, e.g. "
            f"`mpiexec -n {need + 1} stokesflow invert ... --cluster mpi` (at least {need} ranks "
            f"for mpi_mode={spec.mpi_mode!r}); no MPI rank variable (PMI_RANK, PMIX_RANK, "
            "OMPI_COMM_WORLD_RANK) is set in this process. For one machine use kind='local'."
        )


def _check_launch(spec: ClusterSpec) -> None:
    global _opened
    check_launch(spec)
    if _opened:
        raise ClusterError(
            "open_executor(kind='mpi') was already used in this process: the MPI cluster "
            "lives until the program exits, so open it once and keep it"
        )
    _opened = True


def _quiet_dask_logs() -> None:
    # Workers spawned by a Nanny configure their logging from the
    # environment when they import distributed.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logging.getLogger("distributed").setLevel(logging.WARNING)


@contextlib.contextmanager
def open_mpi(spec: ClusterSpec) -> Iterator[Executor]:
    """Turn the ``mpiexec`` ranks into an executor; yields on the client rank only.

    On the other ranks this serves tasks until the client rank finishes and
    then raises ``SystemExit(0)``.

    Raises
    ------
    ClusterError
        Not under ``mpiexec``, too few ranks, opened twice, or workers that do
        not connect within :data:`WORKER_WAIT_S`.
    MissingDependencyError
        Without mpi4py (and dask-mpi for ``mpi_mode="dask"``).
    """
    _check_launch(spec)
    if spec.mpi_mode == "dask":
        with _open_dask_mpi(spec) as ex:
            yield ex
    else:
        with _open_futures(spec) as ex:
            yield ex


@contextlib.contextmanager
def _open_dask_mpi(spec: ClusterSpec) -> Iterator[DaskExecutor]:
    if _under_mpi4py_futures_server():
        # The other ranks serve mpi4py.futures and would never answer
        # dask-mpi's broadcast: refuse instead of hanging.
        raise ClusterError(
            "this program was started with `python -m mpi4py.futures`, which keeps all ranks but "
            "0 busy as mpi4py.futures workers: use ClusterSpec(kind='mpi', mpi_mode='futures'), "
            "or start it without `-m mpi4py.futures` for mpi_mode='dask'"
        )
    dask_mpi = require("dask_mpi", "mpi")
    MPI = require("mpi4py.MPI", "mpi")
    size = MPI.COMM_WORLD.Get_size()
    if size < 3:
        # Every rank sees the same size and raises, so nobody hangs.
        raise ClusterError(
            f"ClusterSpec(kind='mpi', mpi_mode='dask') needs at least 3 MPI ranks (scheduler, "
            f"client, >= 1 worker), got {size}: run `mpiexec -n 3` or more, or use "
            "mpi_mode='futures' (>= 2 ranks)"
        )
    _quiet_dask_logs()
    if MPI.COMM_WORLD.Get_rank() != 1:
        # The scheduler and Nanny ranks: their close-time races at the end of the job stay quiet.
        from stokesflow.clusters._mpi_worker import quiet_close_races

        global _SERVICE_RANK
        _SERVICE_RANK = True
        quiet_close_races()
    import dask

    preload = list(dask.config.get("distributed.worker.preload", None) or [])
    dash = _dashboard_kwargs(spec, "")
    # Rank 0 runs the scheduler and ranks >= 2 a Nanny + worker until the
    # client rank exits; there dask-mpi calls sys.exit() (SystemExit leaves
    # through the caller's `with`).  Rank 1 returns here, with the scheduler
    # address in dask's config and an exit hook that shuts the cluster down.
    with worker_environ():  # the Nanny of a worker rank reads it when it is made (clusters.environ)
        dask_mpi.initialize(
            interface=spec.interface,
            nthreads=spec.threads_per_worker,
            local_directory=spec.local_directory,
            memory_limit=spec.memory_limit or "auto",
            dashboard=spec.dashboard,
            dashboard_address=dash["dashboard_address"],
            worker_class="distributed.Nanny",
            # The worker processes drop the Nanny's close-race traceback at exit.
            worker_options={"preload": [*preload, _WORKER_PRELOAD],
                            **({"resources": spec.resources()} if spec.worker_resources else {})},
            exit=True,
        )
    from distributed import Client

    n_workers = size - 2
    client = Client(set_as_default=False)
    try:
        try:
            client.wait_for_workers(n_workers, timeout=WORKER_WAIT_S)
        except (TimeoutError, OSError) as exc:
            have = _connected_workers(client)
            raise ClusterError(
                f"only {have}/{n_workers} dask-mpi workers connected after {WORKER_WAIT_S:g} s; "
                "check the worker ranks' error output (an import error in the main module "
                "re-imported by the Nanny is a common cause)"
            ) from exc
        ex = DaskExecutor(
            client,
            kind="mpi",
            planned_workers=n_workers,
            retries=spec.retries,
            extra_info={"mpi_mode": "dask", "mpi_rank": mpi_rank(), "mpi_size": size},
        )
        yield ex
    finally:
        # Only the client closes here: the exit hook of dask-mpi shuts the
        # scheduler and workers down when this interpreter exits (calling
        # client.shutdown() ourselves made the ranks wait ~30 s longer).
        client.close()


def _run_task(
    setups: tuple[tuple[str, Callable[..., Any], tuple[Any, ...]], ...],
    retries: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Worker-side wrapper of :meth:`MPIFuturesExecutor.submit`."""
    for token, setup_fn, setup_args in setups:
        if token not in _SETUP_DONE:
            setup_fn(*setup_args)
            _SETUP_DONE.add(token)
    for attempt in range(retries + 1):
        try:
            return fn(*args, **kwargs)
        except Exception:
            if attempt == retries:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


class MPIFuturesExecutor(InProcessFuturesExecutor):
    """Executor over an ``mpi4py.futures.MPIPoolExecutor`` (``mpi_mode="futures"``).

    Futures are :class:`concurrent.futures.Future`.  Tasks and their
    arguments are pickled with the standard ``pickle``: functions must be
    importable by the workers (module-level in a package or the main script).
    """

    kind = "mpi"

    def __init__(self, pool: Any, *, retries: int, size: int) -> None:
        self._pool = pool
        self._retries = int(retries)
        self._size = size
        self._setups: tuple[tuple[str, Callable[..., Any], tuple[Any, ...]], ...] = ()
        self._n_workers = max(1, int(pool.num_workers))

    @property
    def n_workers(self) -> int:
        return self._n_workers

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return self._pool.submit(_run_task, self._setups, self._retries, fn, tuple(args), dict(kwargs))

    def as_completed(self, futures: Iterable[Future]) -> Iterator[Future]:
        from concurrent.futures import as_completed

        if self._idle is None:
            return as_completed(list(futures))
        return self._waiting(list(futures))

    def _waiting(self, futures: list[Future]) -> Iterator[Future]:
        """``as_completed`` that calls the idle callback while nothing finishes (see :meth:`on_idle`)."""
        from concurrent.futures import FIRST_COMPLETED, wait

        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=IDLE_INTERVAL_S, return_when=FIRST_COMPLETED)
            if not done:
                self._call_idle()
            yield from done

    def run_on_workers(self, fn: Callable[..., Any], /, *args: Any) -> None:
        """Run ``fn(*args)`` once in every worker process, before its next task.

        mpi4py.futures cannot address a given worker, so the function travels
        with every later task and runs in a worker the first time that worker
        gets one (tracked per process); workers that never get a task never
        run it.  An exception in ``fn`` fails that task, not this call.
        """
        token = uuid.uuid4().hex
        self._setups = self._setups + ((token, fn, tuple(args)),)

    def _info_extra(self) -> dict[str, Any]:
        return {"mpi_mode": "futures", "mpi_rank": mpi_rank(), "mpi_size": self._size}


@contextlib.contextmanager
def _open_futures(spec: ClusterSpec) -> Iterator[MPIFuturesExecutor]:
    MPI = require("mpi4py.MPI", "mpi")
    futures = require("mpi4py.futures", "mpi")
    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    # Under `python -m mpi4py.futures` only rank 0 runs the program and the
    # other ranks already serve a shared pool; MPICommExecutor then uses it.
    if size < 2:
        raise ClusterError(
            "ClusterSpec(kind='mpi', mpi_mode='futures') needs at least 2 MPI ranks "
            f"(client + >= 1 worker), got {size}: run `mpiexec -n 2` or more"
        )
    manager = futures.MPICommExecutor(comm, root=0)
    pool = manager.__enter__()
    if pool is None:
        # A worker rank: __enter__ served tasks until the client rank left
        # its `with` block.
        manager.__exit__(None, None, None)
        raise SystemExit(0)
    try:
        yield MPIFuturesExecutor(pool, retries=spec.retries, size=size)
    finally:
        manager.__exit__(None, None, None)
