"""Dask-based executors: ``kind="local"`` and ``kind="address"``, and the
:class:`DaskExecutor` that ``slurm``, ``pbs`` and ``mpi`` (dask mode) share.

Tasks go through ``client.submit(fn, *args, pure=False, retries=spec.retries)``:
``pure=False`` because an inversion task is not a pure function of its
arguments as far as caching goes (the same chunk may be re-run on purpose),
``retries`` re-runs a task that raised.  A task whose worker *process* dies is
rescheduled by the scheduler on its own; workers run under a Nanny, which
starts a fresh process in place of one that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from stokesflow.clusters.base import IDLE_INTERVAL_S, Executor, Future, usable_cpus
from stokesflow.clusters.environ import worker_environ
from stokesflow.clusters.spec import ClusterError, ClusterSpec, SchedulerUnreachableError, WorkersUnavailableError

__all__ = ["DaskExecutor", "SchedulerLostError", "open_address", "open_local"]

# Log level of the scheduler and workers we start: warnings (a worker that
# died and was restarted) stay visible, the start/stop chatter does not.
_LOG_LEVEL = logging.WARNING

# Preload module of local worker processes: they ignore SIGINT.
_WORKER_PRELOAD = "stokesflow.clusters._worker_signals"

# Seconds between checks of a cluster's health while tasks wait (jobqueue),
# and between calls of the idle callback.
_WATCH_INTERVAL_S = IDLE_INTERVAL_S

log = logging.getLogger(__name__)


class _ToDebugLog(logging.Handler):
    """Hand a record of another library to this module's logger at debug level."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        log.debug("%s: %s", record.name, text)


@contextlib.contextmanager
def _library_logs_to_debug(names: tuple[str, ...] = ("distributed", "tornado")) -> Iterator[None]:
    """Send the records of Dask's (and tornado's) loggers in this process to the debug log.

    Used while a cluster closes: workers that disappear mid-task, comms
    closed under a pending request and tasks cancelled at close are expected
    then, and their warnings and tracebacks must not reach the terminal.
    """
    handler = _ToDebugLog()
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = [handler]
        logger.propagate = False
    try:
        yield
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate


def _share(obj: Any) -> Any:
    """Task body of :meth:`DaskExecutor.scatter`: returns its argument."""
    return obj


def _run_on_worker_plugin(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    # Built lazily so that importing clusters does not import distributed.
    from distributed.diagnostics.plugin import WorkerPlugin

    class RunOnWorkers(WorkerPlugin):
        """Run ``fn(*args)`` when a worker starts or the plugin is registered."""

        def __init__(self) -> None:
            self.fn = fn
            self.args = args

        async def setup(self, worker: Any) -> None:
            # In a thread: a warm-up that compiles numba kernels for seconds
            # must not block the worker's event loop (heartbeats).
            await asyncio.to_thread(self.fn, *self.args)

    return RunOnWorkers()


class DaskExecutor(Executor):
    """Executor over a ``distributed.Client``.

    Parameters
    ----------
    client : distributed.Client
        Connected client; closed by :meth:`close`.
    kind : str
        Cluster kind, for :meth:`info`.
    planned_workers : int
        Workers expected (``local``: started; ``slurm``/``pbs``: the adaptive
        maximum; ``address``: found at connection).  :attr:`n_workers` is the
        larger of this and the workers connected now.
    retries : int
        Re-runs of a task that raised.
    cluster : object, optional
        Cluster object to close after the client (LocalCluster,
        SLURMCluster, ...).
    extra_info : dict, optional
        Added to :meth:`info`.
    watch : callable, optional
        Called every half second while :meth:`as_completed` waits; raises a
        :class:`stokesflow.clusters.ClusterError` when the cluster cannot
        deliver (``slurm``/``pbs``: a worker job the batch system refused),
        so the driver stops instead of waiting for ever.
    summary : callable, optional
        Returns the text of :meth:`worker_summary` (``slurm``/``pbs``: the
        worker jobs pending and running).
    """

    def __init__(
        self,
        client: Any,
        *,
        kind: str,
        planned_workers: int,
        retries: int,
        cluster: Any = None,
        extra_info: dict[str, Any] | None = None,
        watch: Callable[[], None] | None = None,
        summary: Callable[[], str] | None = None,
    ) -> None:
        self.kind = kind
        self.client = client
        self.cluster = cluster
        self._planned = int(planned_workers)
        self._retries = int(retries)
        self._extra_info = dict(extra_info or {})
        self._plugins: list[str] = []
        self._watch = watch
        self._summary = summary
        self._closed = False

    @property
    def n_workers(self) -> int:
        if self._closed:
            return self._planned
        try:
            current = _connected_workers(self.client)
        except Exception:  # a closing client: fall back to the plan
            current = 0
        return max(self._planned, current)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if kwargs:
            # Keyword arguments of the task must not collide with those of
            # Client.submit (key, workers, retries, ...).
            fn = functools.partial(fn, **kwargs)
        return self.client.submit(fn, *args, pure=False, retries=self._retries)

    def offered_resources(self) -> dict[str, float]:
        """Sum over the connected workers of the resources they offer (``{}`` when none)."""
        total: dict[str, float] = {}
        try:
            workers = self.client.scheduler_info().get("workers", {})
        except Exception:  # noqa: BLE001 - no scheduler info: nothing known to be offered
            return total
        for w in workers.values():
            for name, amount in (w.get("resources") or {}).items():
                total[name] = total.get(name, 0.0) + float(amount)
        return total

    def submit_preferring(self, resources: Mapping[str, float], fn: Callable[..., Any], /, *args: Any,
                          **kwargs: Any) -> Future:
        offered = self.offered_resources()
        if resources and all(offered.get(k, 0.0) >= float(v) for k, v in resources.items()):
            if kwargs:
                fn = functools.partial(fn, **kwargs)
            return self.client.submit(fn, *args, pure=False, retries=self._retries, resources=dict(resources))
        return self.submit(fn, *args, **kwargs)

    def as_completed(self, futures: Iterable[Future]) -> Iterator[Future]:
        from distributed import as_completed

        futures = list(futures)
        if not futures:
            return iter(())
        ac = as_completed(futures, loop=self.client.loop)
        if self._watch is None and self._idle is None:
            return iter(ac)
        return self._watched(ac)

    def _watched(self, ac: Any) -> Iterator[Future]:
        """Iterate ``ac`` (a ``distributed.as_completed``); while nothing is ready, run the watch
        (which may raise) and the idle callback (see :meth:`on_idle`)."""
        while True:
            if ac.has_ready():
                yield next(ac)
                continue
            if ac.is_empty():
                return
            self._tick()
            # Woken early when a future finishes.
            with ac.thread_condition:
                ac.thread_condition.wait(timeout=_WATCH_INTERVAL_S)

    def outcome(self, future: Future) -> tuple[BaseException | None, Any]:
        """The task's exception or result, fetched in slices of the watch interval.

        A finished task's result lives on the worker that computed it. If that
        worker is lost before the driver fetches it (a cancelled batch job, a
        retired worker), the scheduler computes it again, and a plain
        ``result()`` waits for that; with no worker left and none coming
        (``adapt=false``) it would wait for ever (seen on CI: "Couldn't gather
        keys ... rescheduling", then no line). Between the slices the watch
        runs, as in :meth:`as_completed`, and raises when the cluster cannot
        deliver.
        """
        while True:
            try:
                exc = future.exception(timeout=_WATCH_INTERVAL_S)
                if exc is not None:
                    return exc, None
                return None, future.result(timeout=_WATCH_INTERVAL_S)
            except TimeoutError:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - distributed's FutureCancelledError, among others
                if getattr(exc, "reason", None) == "scheduler-connection-lost":
                    raise SchedulerLostError(
                        f"--cluster {self.kind}: the connection to the Dask scheduler {self._address()} was "
                        "lost: it stopped, was killed, or the network failed; finished chunks are on disk: "
                        "start the scheduler (and its workers) again and finish the run with --resume"
                    ) from None
                raise

    def _address(self) -> str:
        try:
            return str(self.client.scheduler.address)
        except Exception:  # noqa: BLE001 - for a message only
            return "(address unknown)"

    def _tick(self) -> None:
        """While the driver waits: the watch (which may raise) and the idle callback."""
        if self._watch is not None:
            self._watch()
        self._call_idle()

    def run_on_workers(self, fn: Callable[..., Any], /, *args: Any) -> None:
        """Run ``fn(*args)`` once in every worker process, now and in workers that start later.

        Registered as a ``WorkerPlugin``: the scheduler runs it on every
        connected worker before this call returns, and on each worker that
        connects afterwards (adaptive scale-up, a Nanny restart after a
        crash).  Each call registers a new plugin, so calling twice runs
        ``fn`` twice per worker.

        Raises
        ------
        Exception
            Whatever ``fn`` raised on a worker; the plugin is then removed
            again so that later workers do not fail the same way.
        """
        name = f"stokesflow-run-{getattr(fn, '__name__', 'fn')}-{uuid.uuid4().hex[:12]}"
        plugin = _run_on_worker_plugin(fn, tuple(args))
        try:
            self.client.register_plugin(plugin, name=name)
        except BaseException:
            try:
                self.client.unregister_worker_plugin(name)
            except Exception:  # it may not have been stored at all
                pass
            raise
        self._plugins.append(name)

    def scatter(self, obj: Any) -> Any:
        """Share ``obj`` with all tasks through one task that returns it.

        Unlike ``Client.scatter`` data, the result of a task is recomputed by
        the scheduler if every worker holding it dies or retires (worker
        lifetime on batch systems), so the tasks that need it never fail
        with lost data.
        """
        return self.client.submit(
            _share, obj, pure=False, key=f"stokesflow-shared-{uuid.uuid4().hex}", retries=self._retries
        )

    def close(self) -> None:
        """Close the client, then the cluster we started (if any); idempotent.

        Dask's warnings and tracebacks while closing go to the debug log
        (a run interrupted by Ctrl-C cancels tasks and loses workers on
        purpose).
        """
        if self._closed:
            return
        self._closed = True
        with _library_logs_to_debug():
            try:
                self.client.close()
            finally:
                if self.cluster is not None:
                    self.cluster.close()

    def worker_summary(self) -> str:
        """One line on the workers, cheap enough for every progress line.

        ``slurm``/``pbs``: ``"jobs: 2 pending, 1 running; workers: 1"`` (a
        job is pending until one of its workers connects); other kinds:
        ``"workers: 4"``.  No batch-system call; the cluster's own view
        where this process started the cluster, else one small scheduler
        round trip (``mpi``).
        """
        if self._closed:
            return "workers: 0 (closed)"
        if self._summary is not None:
            try:
                return self._summary()
            except Exception as exc:  # a closing cluster: never break a progress line
                log.debug("worker summary failed: %s: %s", type(exc).__name__, exc)
        try:
            if self.cluster is not None:  # the cluster's cached view
                return f"workers: {len(self.cluster.scheduler_info.get('workers', {}))}"
            return f"workers: {_connected_workers(self.client)}"  # one small round trip
        except Exception:
            return f"workers: {self._planned} planned"

    def worker_pids(self) -> dict[str, int]:
        """Process id of every connected worker, by worker address."""
        return dict(self.client.run(os.getpid))

    def info(self) -> dict[str, Any]:
        sched = self.client.scheduler_info(n_workers=0)
        dashboard = None
        # The scheduler's HTTP server always runs; it serves a dashboard only
        # where bokeh is installed (known here for schedulers we started).
        if "dashboard" in sched.get("services", {}) and (
            self.kind == "address" or importlib.util.find_spec("bokeh") is not None
        ):
            dashboard = self.client.dashboard_link
        out = {
            "kind": self.kind,
            "n_workers": self.n_workers,
            "scheduler_address": self.client.scheduler.address,
            "dashboard_link": dashboard,
            "worker_pids": self.worker_pids(),
        }
        out.update(self._extra_info)
        return out


def _connected_workers(client: Any) -> int:
    """Workers connected to the client's scheduler now (one round trip, no per-worker data)."""
    return int(client.scheduler_info(n_workers=0).get("n_workers", 0))


def _dashboard_kwargs(spec: ClusterSpec, host: str) -> dict[str, Any]:
    # Always a free port: the scheduler's HTTP server (health, metrics, and
    # the dashboard when bokeh is installed) would otherwise try 8787 and warn
    # when several runs share a machine.
    return {"dashboard_address": f"{host}:0", "dashboard": spec.dashboard}


class SchedulerLostError(ClusterError):
    """The driver lost its connection to the Dask scheduler during the run."""


#: Seconds a local cluster may have no worker before the run stops: a Nanny restarts a crashed
#: worker in a few seconds, and gives up after repeated crashes in a row.
LOCAL_NO_WORKER_S = 30.0


class _LocalWatch:
    """Raise when a local cluster has had no worker for ``limit`` seconds (every Nanny gave up).

    Without it the driver waited for ever, printing ``workers: 0`` (seen when the worker
    processes were killed again and again, as an out-of-memory killer does).
    """

    def __init__(self, connected: Callable[[], int], limit: float,
                 now: Callable[[], float] | None = None) -> None:
        import time

        self._connected = connected
        self._limit = float(limit)
        self._now = now or time.monotonic
        self._since: float | None = None

    def check(self) -> None:
        try:
            n = self._connected()
        except Exception:  # noqa: BLE001 - a closing client: nothing to judge
            return
        if n > 0:
            self._since = None
            return
        t = self._now()
        if self._since is None:
            self._since = t
        elif t - self._since > self._limit:
            raise WorkersUnavailableError(
                f"--cluster local: no worker for {t - self._since:.0f} s: every worker process died and its "
                "Nanny stopped restarting it (repeated crashes: often the memory limit or the system's "
                "out-of-memory killer; see the log above); finished chunks are on disk, finish the run with "
                "--resume (fewer workers or a larger -C memory_limit if memory is short)"
            )


def open_local(spec: ClusterSpec) -> DaskExecutor:
    """Start a ``distributed.LocalCluster`` of worker processes and connect to it.

    Parameters
    ----------
    spec : ClusterSpec
        Uses ``workers`` (default: the usable CPUs), ``threads_per_worker``,
        ``memory_limit``, ``local_directory``, ``dashboard``, ``retries``.

    Returns
    -------
    DaskExecutor
        Scheduler on 127.0.0.1, one Nanny-managed worker process per worker.
        The worker processes ignore SIGINT: a Ctrl-C in the terminal reaches
        the whole process group, and only the driver acts on it (it stops
        and closes the cluster).
    """
    import dask
    from distributed import Client, LocalCluster

    n_workers = spec.workers or usable_cpus()
    dash = _dashboard_kwargs(spec, "127.0.0.1")
    kwargs: dict[str, Any] = {}
    if spec.local_directory is not None:
        kwargs["local_directory"] = spec.local_directory
    # Ctrl-C is the driver's: the worker processes ignore SIGINT (see the
    # preload module), keeping any preload the site configured.
    preload = list(dask.config.get("distributed.worker.preload", None) or [])
    with worker_environ():  # the Nannies read it when they are made (clusters.environ)
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=spec.threads_per_worker,
            processes=True,
            memory_limit=spec.memory_limit or "auto",
            host="127.0.0.1",
            scheduler_port=0,
            dashboard_address=dash["dashboard_address"],
            scheduler_kwargs={"dashboard": dash["dashboard"]},
            silence_logs=_LOG_LEVEL,
            preload=[*preload, _WORKER_PRELOAD],
            resources=spec.resources() or None,
            **kwargs,
        )
    try:
        client = Client(cluster, set_as_default=False)
    except BaseException:
        cluster.close()
        raise
    watch = _LocalWatch(lambda: _connected_workers(client), max(LOCAL_NO_WORKER_S, spec.connect_timeout))
    return DaskExecutor(client, kind="local", planned_workers=n_workers, retries=spec.retries, cluster=cluster,
                        watch=watch.check)


def open_address(spec: ClusterSpec) -> DaskExecutor:
    """Connect to a running Dask scheduler at ``spec.address``.

    Waits up to ``spec.connect_timeout`` seconds for the scheduler, then as
    long again for ``max(1, spec.minimum_workers)`` workers.

    Raises
    ------
    SchedulerUnreachableError
        If no scheduler answers in time.
    ClusterError
        If the scheduler has too few workers.
    """
    from distributed import Client

    address = spec.address
    timeout = spec.connect_timeout
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, asyncio.TimeoutError, TimeoutError) as exc:
        raise SchedulerUnreachableError(
            f"no Dask scheduler answered at {address} after {timeout:g} s: start one with "
            f"`dask scheduler` (and workers with `dask worker {address}`) or check the address "
            f"and the firewall ({type(exc).__name__}: {exc})"
        ) from exc
    want = max(1, spec.minimum_workers)
    try:
        client.wait_for_workers(want, timeout=timeout)
    except (asyncio.TimeoutError, TimeoutError) as exc:
        have = _connected_workers(client)
        client.close()
        raise ClusterError(
            f"the Dask scheduler at {address} has {have} worker(s), expected at least {want} "
            f"after {timeout:g} s: start workers with `dask worker {address}` or lower "
            "minimum_workers"
        ) from exc
    planned = _connected_workers(client)
    return DaskExecutor(client, kind="address", planned_workers=planned, retries=spec.retries)
