"""serial, local and address executors on this machine (real Dask processes)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import _cluster_helpers as h
from stokesflow.clusters import (
    ClusterError,
    ClusterSpec,
    Executor,
    SchedulerUnreachableError,
    open_executor,
)

N_TASKS = 12


def _run_task_set(ex: Executor) -> dict[int, int]:
    """The same small task set for every kind: {x: x**2} collected via as_completed."""
    futures = {ex.submit(h.square_with_pid, x): x for x in range(N_TASKS)}
    out = {}
    for fut in ex.as_completed(list(futures)):
        assert fut.done()
        out[futures[fut]] = fut.result()[0]
    return out


def _wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached after {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def local_ex() -> Iterator[Executor]:
    with open_executor(ClusterSpec(kind="local", workers=2, memory_limit="1GiB", retries=2)) as ex:
        yield ex


@pytest.fixture
def serial_ex() -> Iterator[Executor]:
    with open_executor(ClusterSpec(kind="serial")) as ex:
        yield ex


# --- serial and local give the same answers -------------------------------------------


def test_serial_and_local_same_results(serial_ex: Executor, local_ex: Executor) -> None:
    expected = {x: x * x for x in range(N_TASKS)}
    assert _run_task_set(serial_ex) == expected
    assert _run_task_set(local_ex) == expected


@pytest.mark.parametrize("which", ["serial_ex", "local_ex"])
def test_kwargs_exceptions_and_scatter(which: str, request: pytest.FixtureRequest) -> None:
    ex: Executor = request.getfixturevalue(which)
    # Task keyword arguments reach the task, even ones that Client.submit
    # would otherwise take for itself.
    assert ex.submit(h.add, 1.0, b=2.0, scale=3.0).result() == 9.0
    fut = ex.submit(h.raise_value_error, "pixel 7 exploded")
    assert isinstance(fut.exception(), ValueError)
    with pytest.raises(ValueError, match="pixel 7 exploded"):
        fut.result()
    shared = ex.scatter(list(range(5)))
    assert [ex.submit(h.total_length, shared).result() for _ in range(3)] == [5, 5, 5]


def test_local_runs_tasks_in_worker_processes(local_ex: Executor) -> None:
    pids = {local_ex.submit(h.square_with_pid, x).result()[1] for x in range(20)}
    info = local_ex.info()
    assert os.getpid() not in pids
    assert pids <= set(info["worker_pids"].values())
    assert info["kind"] == "local" and info["n_workers"] == local_ex.n_workers == 2
    assert info["scheduler_address"].startswith("tcp://127.0.0.1:")
    assert len(info["worker_pids"]) == 2


def test_local_workers_get_the_worker_environment(local_ex: Executor) -> None:
    # clusters.environ: glibc's mmap threshold fixed at 32 MiB beside Dask's MALLOC_TRIM_THRESHOLD_
    futures = [local_ex.submit(h.environ, "MALLOC_MMAP_THRESHOLD_") for _ in range(8)]  # both workers
    assert {f.result() for f in futures} == {str(32 << 20)}
    assert local_ex.submit(h.environ, "MALLOC_TRIM_THRESHOLD_").result() == "65536"  # Dask's own, kept


def test_as_completed_yields_all_in_completion_order(local_ex: Executor) -> None:
    futs = [local_ex.submit(time.sleep, d) for d in (1.0, 0.0)]
    order = list(local_ex.as_completed(futs))
    assert len(order) == 2 and set(order) == set(futs)
    assert order[0] is futs[1]  # the 0 s task finishes first
    assert list(local_ex.as_completed([])) == []


def test_run_on_workers_once_per_worker(local_ex: Executor, tmp_path: Path) -> None:
    local_ex.run_on_workers(h.record_pid, str(tmp_path))
    pids = [int(p.name.split("-")[0]) for p in tmp_path.iterdir()]
    worker_pids = set(local_ex.info()["worker_pids"].values())
    assert sorted(pids) == sorted(worker_pids)  # each worker exactly once
    assert os.getpid() not in pids


def test_run_on_workers_error_is_raised(local_ex: Executor) -> None:
    with pytest.raises(ValueError, match="no warm-up"):
        local_ex.run_on_workers(h.raise_value_error, "no warm-up")
    # The failed plugin is not left behind for later workers.
    names = local_ex.client.run_on_scheduler(h.scheduler_worker_plugins)
    assert not [n for n in names if "raise_value_error" in n]
    assert local_ex.submit(h.add, 1.0).result() == 1.0


def test_serial_run_on_workers_runs_in_process(serial_ex: Executor, tmp_path: Path) -> None:
    serial_ex.run_on_workers(h.record_pid, str(tmp_path))
    assert [int(p.name.split("-")[0]) for p in tmp_path.iterdir()] == [os.getpid()]
    assert serial_ex.info()["worker_pids"] == {"serial": os.getpid()}


def test_local_retries_a_failing_task(local_ex: Executor, tmp_path: Path) -> None:
    # retries=2: two failures then success on the third run.
    assert local_ex.submit(h.fail_until, str(tmp_path / "a"), 2).result() == 3
    # Three failures exhaust the retries.
    with pytest.raises(RuntimeError, match="planned failure 3 of 3"):
        local_ex.submit(h.fail_until, str(tmp_path / "b"), 3).result()
    assert (tmp_path / "b").read_text() == "3"


def test_serial_does_not_retry(serial_ex: Executor, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="planned failure 1 of 1"):
        serial_ex.submit(h.fail_until, str(tmp_path / "c"), 1).result()
    assert (tmp_path / "c").read_text() == "1"


# --- a worker process killed mid-task ---------------------------------------------------


@pytest.mark.timeout(180)
def test_killed_worker_task_is_rerun(tmp_path: Path) -> None:
    task_dir = tmp_path / "task"
    setup_dir = tmp_path / "setup"
    task_dir.mkdir()
    setup_dir.mkdir()
    # retries=0: task *exceptions* are not retried, yet the scheduler
    # reschedules a task whose worker died.
    with open_executor(ClusterSpec(kind="local", workers=1, memory_limit="1GiB", retries=0)) as ex:
        ex.run_on_workers(h.record_pid, str(setup_dir))
        # The first run sleeps far longer than the test's timeout: the result
        # can only come from a second run of the task.
        fut = ex.submit(h.slow_once, str(task_dir), 3600.0)
        _wait_for(lambda: any(task_dir.iterdir()), what="the task to start")
        victim = int(next(task_dir.iterdir()).name)
        assert victim in ex.info()["worker_pids"].values()
        os.kill(victim, signal.SIGKILL)
        new_pid = fut.result()
        # The task ran again, in another process: the Nanny's replacement worker.
        assert new_pid != victim
        assert sorted(int(p.name) for p in task_dir.iterdir()) == sorted([victim, new_pid])
        assert new_pid in ex.info()["worker_pids"].values()
        # The restarted worker also ran the set-up function.
        def setup_pids() -> set[int]:
            return {int(p.name.split("-")[0]) for p in setup_dir.iterdir()}

        _wait_for(lambda: new_pid in setup_pids(), timeout=60, what="set-up in the restarted worker")
        assert setup_pids() == {victim, new_pid}


# --- address: an existing scheduler -----------------------------------------------------


def test_address_runs_tasks_on_existing_scheduler() -> None:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address="127.0.0.1:0",
        memory_limit="1GiB",
    ) as cluster:
        spec = ClusterSpec(kind="address", address=cluster.scheduler_address)
        with open_executor(spec) as ex:
            assert _run_task_set(ex) == {x: x * x for x in range(N_TASKS)}
            info = ex.info()
            assert info["scheduler_address"] == cluster.scheduler_address
            assert ex.n_workers == 2 and len(info["worker_pids"]) == 2
        # Closing the executor leaves the scheduler and its workers running.
        assert len(cluster.scheduler_info["workers"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_address_nobody_answers() -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    # Not the default (10 s): the message must name the configured time-out.
    spec = ClusterSpec(kind="address", address=address, connect_timeout=1.5)
    with pytest.raises(SchedulerUnreachableError) as err:
        with open_executor(spec):
            pass  # pragma: no cover
    msg = str(err.value)
    assert f"no Dask scheduler answered at {address} after 1.5 s" in msg
    assert "dask scheduler" in msg
    assert isinstance(err.value, ClusterError)


@pytest.mark.parametrize("address", ["http://127.0.0.1:8787", "foo://host:1"])
def test_address_of_another_scheme_is_refused_at_once(address) -> None:
    with pytest.raises(ClusterError, match=r"is not a Dask scheduler address: the scheme '(http|foo)' is not one"):
        ClusterSpec(kind="address", address=address)
    ClusterSpec(kind="address", address="127.0.0.1:8786")  # bare host:port is TCP
    ClusterSpec(kind="address", address="tls://host:8786")


def test_address_scheduler_without_workers() -> None:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=0, processes=True, host="127.0.0.1", scheduler_port=0, dashboard_address="127.0.0.1:0"
    ) as cluster:
        spec = ClusterSpec(kind="address", address=cluster.scheduler_address, connect_timeout=1.0)
        with pytest.raises(ClusterError, match=r"has 0 worker\(s\), expected at least 1"):
            with open_executor(spec):
                pass  # pragma: no cover


# --- closing after an error ---------------------------------------------------------------


def test_error_in_the_block_wins_over_an_error_while_closing(monkeypatch: pytest.MonkeyPatch) -> None:
    from stokesflow.clusters.serial import SerialExecutor

    def broken_close(self: SerialExecutor) -> None:
        raise RuntimeError("close failed")

    monkeypatch.setattr(SerialExecutor, "close", broken_close)
    with pytest.raises(ValueError, match="the real problem"):
        with open_executor(ClusterSpec(kind="serial")):
            raise ValueError("the real problem")
    # Without an error in the block, a failing close is raised.
    with pytest.raises(RuntimeError, match="close failed"):
        with open_executor(ClusterSpec(kind="serial")):
            pass


def test_on_idle_is_called_while_a_local_task_runs_and_not_after() -> None:
    # A local Dask cluster: the callback runs while as_completed waits on a sleeping task, and a
    # callback that raises only goes to the debug log.
    calls: list[float] = []

    def idle() -> None:
        calls.append(time.monotonic())
        raise RuntimeError("a broken progress line")

    with open_executor(ClusterSpec(kind="local", workers=1)) as ex:
        ex.on_idle(idle)
        fut = ex.submit(time.sleep, 1.2)
        assert list(ex.as_completed([fut])) == [fut]
        n = len(calls)
        assert n >= 1
        ex.on_idle(None)
        fut = ex.submit(time.sleep, 0.6)
        assert list(ex.as_completed([fut])) == [fut]
        assert len(calls) == n
        assert ex.worker_summary() == "workers: 1"


def _holds_gpu() -> float:
    """In a task: how much of the worker's GPU resource is free while this task runs."""
    from distributed import get_worker

    return float(get_worker().state.available_resources.get("GPU", -1.0))


def test_a_task_preferring_a_gpu_holds_it_on_a_worker_that_offers_one() -> None:
    with open_executor(ClusterSpec(kind="local", workers=1, worker_resources=("GPU=1",))) as ex:
        assert ex.offered_resources() == {"GPU": 1.0}
        # the scheduler gave the task the worker's only GPU: none left while it runs
        assert ex.submit_preferring({"GPU": 1}, _holds_gpu).result() == 0.0
        assert ex.submit(_holds_gpu).result() == 1.0  # a plain task holds nothing


def test_preferring_a_resource_nobody_offers_runs_anywhere(local_ex: Executor, serial_ex: Executor) -> None:
    assert local_ex.offered_resources() == {}
    assert local_ex.submit_preferring({"GPU": 1}, h.square_with_pid, 3).result()[0] == 9
    assert serial_ex.submit_preferring({"GPU": 1}, h.square_with_pid, 4).result()[0] == 16


def test_executor_for_lends_an_open_executor_and_leaves_it_open(serial_ex: Executor) -> None:
    from stokesflow.clusters import executor_for

    with executor_for(ClusterSpec(kind="local"), serial_ex) as ex:  # lent: no local cluster is started
        assert ex is serial_ex
    assert serial_ex.submit(pow, 2, 5).result() == 32  # still open after the block
    with executor_for(ClusterSpec(kind="serial")) as ex:  # none lent: one is opened and closed
        assert ex is not serial_ex and ex.submit(pow, 3, 2).result() == 9
    with pytest.raises(RuntimeError, match="closed"):
        ex.submit(pow, 1, 1)


class _LostResult:
    """A finished Dask future whose result is being recomputed: fetching it times out ``slices`` times."""

    def __init__(self, slices: int, value: object = "chunk", error: BaseException | None = None) -> None:
        self.slices, self.value, self.error, self.calls = slices, value, error, 0

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self.calls += 1
        if self.calls <= self.slices:
            raise TimeoutError(f"timed out after {timeout} s.")
        return self.error

    def result(self, timeout: float | None = None) -> object:
        return self.value


def test_dask_outcome_watches_the_cluster_while_a_lost_result_is_recomputed() -> None:
    """A result lost with its worker is waited for in slices, the watch running between them.

    The driver once hung for ever in ``result()`` after the only worker's job
    was cancelled just as its chunk finished (``adapt=false``: nothing would
    recompute it). Now: the value once it comes, the task's own exception as
    an outcome, and the watch's error raised when the cluster cannot deliver.
    """
    from stokesflow.clusters import ClusterError
    from stokesflow.clusters.dask_executor import DaskExecutor

    watched = []
    ex = DaskExecutor(None, kind="slurm", planned_workers=1, retries=0, watch=lambda: watched.append(1))
    assert ex.outcome(_LostResult(3)) == (None, "chunk") and len(watched) == 3
    boom = ValueError("bad chunk")
    assert ex.outcome(_LostResult(1, error=boom)) == (boom, None)

    def no_workers() -> None:
        raise ClusterError("no worker connected within connect_timeout")

    ex = DaskExecutor(None, kind="slurm", planned_workers=1, retries=0, watch=no_workers)
    with pytest.raises(ClusterError, match="connect_timeout"):
        ex.outcome(_LostResult(10))


@pytest.mark.parametrize("which", ["serial_ex", "local_ex"])
def test_outcome_is_the_exception_or_the_result(which: str, request: pytest.FixtureRequest) -> None:
    ex = request.getfixturevalue(which)
    assert ex.outcome(ex.submit(abs, -3)) == (None, 3)
    exc, value = ex.outcome(ex.submit(int, "x"))
    assert isinstance(exc, ValueError) and value is None
    assert ex.result(ex.submit(abs, -4)) == 4
    with pytest.raises(ValueError):
        ex.result(ex.submit(int, "x"))


def test_local_watch_stops_a_run_whose_workers_stay_gone() -> None:
    """A local cluster whose Nannies gave up (workers killed again and again) has no worker for
    good: after the limit the watch raises instead of the driver waiting for ever."""
    from stokesflow.clusters import WorkersUnavailableError
    from stokesflow.clusters.dask_executor import _LocalWatch

    clock = {"t": 0.0, "n": 2}
    watch = _LocalWatch(lambda: clock["n"], 30.0, now=lambda: clock["t"])
    watch.check()
    clock.update(n=0, t=5.0)
    watch.check()  # a worker restarting: no judgement yet
    clock.update(t=20.0)
    watch.check()
    clock.update(n=1, t=25.0)  # restarted: the count starts again
    watch.check()
    clock.update(n=0, t=26.0)
    watch.check()
    clock.update(t=50.0)
    watch.check()  # 24 s without a worker
    clock.update(t=57.0)
    with pytest.raises(WorkersUnavailableError, match=r"--cluster local: no worker for 31 s: every worker process "
                                                      r"died .* finish the run with --resume"):
        watch.check()


def test_a_lost_scheduler_is_one_clusters_error_naming_it() -> None:
    """The scheduler killed mid-run: distributed cancels every future with the reason
    'scheduler-connection-lost'; the executor says so as a ClusterError (exit 2, --resume)."""
    import types

    from distributed.client import FutureCancelledError

    from stokesflow.clusters.dask_executor import DaskExecutor, SchedulerLostError

    class Cancelled:
        def exception(self, timeout=None):
            raise FutureCancelledError("k", reason="scheduler-connection-lost")

    class Failed:
        def exception(self, timeout=None):
            raise FutureCancelledError("k", reason="lost dependencies")

    client = types.SimpleNamespace(scheduler=types.SimpleNamespace(address="tcp://10.0.0.1:8786"))
    ex = DaskExecutor(client, kind="address", planned_workers=1, retries=0)
    with pytest.raises(SchedulerLostError, match=r"--cluster address: the connection to the Dask scheduler "
                                                 r"tcp://10\.0\.0\.1:8786 was lost: .* --resume"):
        ex.outcome(Cancelled())
    with pytest.raises(FutureCancelledError):  # any other cancellation is left as it was
        ex.outcome(Failed())
    assert issubclass(SchedulerLostError, ClusterError)
