"""kind="slurm" and "pbs" end to end with test doubles for the batch system.

``sbatch`` and ``scancel`` are replaced by small shell scripts (test doubles,
written by the fixtures) that run the job script in the background on this
machine and kill it again, or that refuse every job, or that accept jobs and
never run them.  Everything else is real: dask-jobqueue builds and "submits"
the job script, the adaptive cluster asks for jobs when tasks wait, the
workers in those jobs connect to the scheduler started here.  Without the
programs on the PATH nothing starts at all.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import _cluster_helpers as h
from stokesflow.clusters import (
    ClusterError,
    ClusterSpec,
    JobSubmissionError,
    MissingProgramError,
    open_executor,
    preflight,
)

HERE = Path(__file__).resolve().parent

FAKE_SBATCH = """#!/bin/bash
# Test double for SLURM's sbatch: run the job script in the background.
set -e
# `sbatch --test-only` (the dry run before the cluster starts): accepted.
if [ "$1" = --test-only ]; then echo "sbatch: Job 1 to start at now" >&2; exit 0; fi
id=$(( $(ls "$FAKE_SLURM_DIR"/*.sh 2>/dev/null | wc -l) + 1000 ))
cp "$1" "$FAKE_SLURM_DIR/$id.sh"
setsid bash "$FAKE_SLURM_DIR/$id.sh" > "$FAKE_SLURM_DIR/$id.log" 2>&1 < /dev/null &
echo $! > "$FAKE_SLURM_DIR/$id.pid"
echo "Submitted batch job $id"
"""

FAKE_SCANCEL = """#!/bin/bash
# Test double for SLURM's scancel: kill the job's process group.
for id in "$@"; do
    kill -TERM -- -"$(cat "$FAKE_SLURM_DIR/$id.pid")" 2>/dev/null || true
    echo "$id" >> "$FAKE_SLURM_DIR/cancelled"
done
"""


# Refuses every job it is given, as sbatch does for an account or partition that does not exist,
# but passes the dry run: a refusal that only the real submission shows (as under PBS).
REFUSING_SBATCH = """#!/bin/bash
# `sbatch --test-only` (the dry run before the cluster starts): accepted.
if [ "$1" = --test-only ]; then echo "sbatch: Job 1 to start at now" >&2; exit 0; fi
echo "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified" >&2
exit 1
"""

# Accepts every job and never runs it: a job waiting in the queue (or one
# that dies before its worker starts).
QUEUEING_SBATCH = """#!/bin/bash
# `sbatch --test-only` (the dry run before the cluster starts): accepted.
if [ "$1" = --test-only ]; then echo "sbatch: Job 1 to start at now" >&2; exit 0; fi
cp "$1" "$FAKE_SLURM_DIR/4242.sh"
echo "Submitted batch job 4242"
"""


def _install_programs(bindir: Path, programs: dict[str, str]) -> None:
    bindir.mkdir(exist_ok=True)
    for name, text in programs.items():
        path = bindir / name
        path.write_text(text)
        path.chmod(0o755)


def _only_python_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH = an empty folder (returned, for test doubles) + the folder of this Python."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{Path(sys.executable).parent}")
    return bindir


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    _install_programs(bindir, {"sbatch": FAKE_SBATCH, "scancel": FAKE_SCANCEL})
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(jobs))
    yield jobs
    # Whatever happens, no job process outlives the test.
    for pidfile in jobs.glob("*.pid"):
        try:
            os.killpg(int(pidfile.read_text()), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_slurm_adaptive_cluster_runs_tasks(fake_slurm: Path) -> None:
    spec = ClusterSpec(
        kind="slurm",
        workers=2,
        walltime="00:10:00",
        memory_per_job="1GiB",
        # The prologue makes the test helpers importable in the job, as a
        # user would `source venv/bin/activate` there.
        job_script_prologue=(f"export PYTHONPATH={HERE}",),
        adapt=True,
    )
    with open_executor(spec) as ex:
        assert ex.kind == "slurm" and ex.n_workers == 2
        # Adaptive with minimum 0: nothing submitted before there is work.
        time.sleep(1.5)
        assert not list(fake_slurm.glob("*.sh"))
        futs = [ex.submit(h.square_with_pid, x) for x in range(8)]
        values = sorted(f.result(timeout=90)[0] for f in ex.as_completed(futs))
        assert values == [x * x for x in range(8)]
        scripts = sorted(fake_slurm.glob("*.sh"))
        assert 1 <= len(scripts) <= 2  # adapt never asks for more than `workers`
        text = scripts[0].read_text()
        assert "#SBATCH -t 00:10:00" in text and "--lifetime 5m --lifetime-stagger 2m" in text
        assert ex.info()["scheduler_address"] in text
        pgids = [int(p.read_text()) for p in fake_slurm.glob("*.pid")]
    # Closing the executor cancels the jobs.
    deadline = time.monotonic() + 20
    while any(_alive(g) for g in pgids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(g) for g in pgids)
    cancelled = (fake_slurm / "cancelled").read_text().split()
    assert sorted(cancelled) == sorted(p.stem for p in fake_slurm.glob("*.pid"))


# --- what is checked before anything starts -------------------------------------------------


class _MustNotStart:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("a dask-jobqueue cluster was started although a program is missing")


@pytest.mark.parametrize(
    ("kind", "present", "missing"),
    [("slurm", (), "sbatch"), ("slurm", ("sbatch",), "scancel"), ("pbs", (), "qsub"), ("pbs", ("qsub",), "qdel")],
)
def test_missing_batch_program_is_one_line_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, present: tuple[str, ...], missing: str
) -> None:
    from stokesflow.clusters.jobqueue import _import_dask_jobqueue

    dj = _import_dask_jobqueue(kind)
    monkeypatch.setattr(dj, "SLURMCluster", _MustNotStart)
    monkeypatch.setattr(dj, "PBSCluster", _MustNotStart)
    bindir = _only_python_on_path(tmp_path, monkeypatch)
    _install_programs(bindir, {name: "#!/bin/sh\nexit 0\n" for name in present})
    spec = ClusterSpec(kind=kind, walltime="00:10:00")
    with pytest.raises(MissingProgramError) as err:
        preflight(spec)
    with pytest.raises(MissingProgramError) as err_open:
        with open_executor(spec):
            pass  # pragma: no cover
    msg = str(err.value)
    assert str(err_open.value) == msg
    assert "\n" not in msg
    assert f"--cluster {kind} needs the {'SLURM' if kind == 'slurm' else 'PBS'} program {missing!r}" in msg
    assert "not on the PATH" in msg and "module load" in msg and "choose another --cluster" in msg
    assert isinstance(err.value, ClusterError)


def test_importing_dask_jobqueue_leaves_ctrl_c_to_the_program() -> None:
    # dask_jobqueue.runner installs `signal(SIGINT, lambda *_: sys.exit())` at
    # import, which turned Ctrl-C into a silent exit 0; a fresh interpreter
    # shows whether the handler survives the first import.
    code = (
        "import signal\n"
        "before = signal.getsignal(signal.SIGINT)\n"
        "from stokesflow.clusters import ClusterSpec, job_script\n"
        "job_script(ClusterSpec(kind='slurm'))\n"
        "import dask_jobqueue\n"
        "after = signal.getsignal(signal.SIGINT)\n"
        "assert after is before, after\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- a batch system that refuses or sits on the jobs ---------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("adapt", [True, False], ids=["adapt", "scale"])
def test_refused_worker_job_raises_instead_of_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, adapt: bool
) -> None:
    bindir = _only_python_on_path(tmp_path, monkeypatch)
    _install_programs(bindir, {"sbatch": REFUSING_SBATCH, "scancel": "#!/bin/sh\nexit 0\n"})
    spec = ClusterSpec(kind="slurm", workers=1, walltime="00:10:00", memory_per_job="1GiB", adapt=adapt)
    with open_executor(spec) as ex:
        fut = ex.submit(h.add, 1.0)
        with pytest.raises(JobSubmissionError) as err:
            list(ex.as_completed([fut]))
        # Closing a cluster whose job never started: no AssertionError from
        # distributed's SpecCluster._close, nothing raised at all.
        ex.close()
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        "--cluster slurm: the SLURM submission of a worker job failed: sbatch exited with code 1: "
        "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified;"
    )
    assert "check queue, account, walltime" in msg
    # The event loop's traceback of the refused job is not printed besides.
    assert not [r for r in caplog.records if "Exception in callback" in r.getMessage()]


@pytest.mark.timeout(120)
def test_no_worker_after_connect_timeout_warns_once_and_keeps_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    bindir = _only_python_on_path(tmp_path, monkeypatch)
    _install_programs(bindir, {"sbatch": QUEUEING_SBATCH, "scancel": "#!/bin/sh\nexit 0\n"})
    monkeypatch.setenv("FAKE_SLURM_DIR", str(jobs))
    spec = ClusterSpec(kind="slurm", workers=1, walltime="00:10:00", memory_per_job="1GiB", connect_timeout=1.0)
    caplog.set_level(logging.WARNING, logger="stokesflow.clusters")
    yielded: list[object] = []
    with open_executor(spec) as ex:
        fut = ex.submit(h.add, 1.0)
        waiter = threading.Thread(target=lambda: yielded.extend(ex.as_completed([fut])), daemon=True)
        waiter.start()

        def warnings() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name.startswith("stokesflow.clusters")]

        while not warnings():  # guard: pytest-timeout ends a hang
            time.sleep(0.1)
        assert waiter.is_alive()  # a queued job is not an error: the driver keeps waiting
        fut.cancel()
        waiter.join(timeout=30)
        assert not waiter.is_alive() and yielded == [fut]
    (msg,) = warnings()
    # the seconds are those waited when the watch noticed (>= connect_timeout; 2 on a loaded machine)
    got = re.search(r"no worker connected (\d+) s after submitting the first worker job: job 4242 state unknown;", msg)
    assert got and 1 <= int(got.group(1)) <= 10, msg
    assert "squeue -j 4242" in msg and "slurm-<id>.out" in msg


# Refuses the dry run as SLURM does for a partition that does not exist; a real submission would
# be refused the same way, so it must never come.
DRY_RUN_REFUSING_SBATCH = """#!/bin/bash
if [ "$1" = --test-only ]; then
    echo "sbatch: error: invalid partition specified: nosuch" >&2
    echo "allocation failure: Invalid partition name specified" >&2
    exit 1
fi
touch "$FAKE_SLURM_DIR/submitted"
echo "Submitted batch job 7"
"""


@pytest.mark.timeout(60)
def test_job_refused_by_the_dry_run_fails_before_the_cluster_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    bindir = _only_python_on_path(tmp_path, monkeypatch)
    _install_programs(bindir, {"sbatch": DRY_RUN_REFUSING_SBATCH, "scancel": "#!/bin/sh\nexit 0\n"})
    monkeypatch.setenv("FAKE_SLURM_DIR", str(jobs))
    spec = ClusterSpec(kind="slurm", queue="nosuch", workers=1, walltime="00:10:00", memory_per_job="1GiB")
    with pytest.raises(JobSubmissionError) as err:
        with open_executor(spec):
            pytest.fail("the executor opened although sbatch --test-only refused the job")
    assert str(err.value).startswith(
        "--cluster slurm: the SLURM submission of a worker job failed: sbatch --test-only exited with code 1: "
        "sbatch: error: invalid partition specified: nosuch allocation failure: Invalid partition name specified;"
    )
    assert not (jobs / "submitted").exists()


@pytest.mark.timeout(120)
def test_no_worker_within_start_timeout_is_an_error_naming_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stokesflow.clusters import WorkersUnavailableError

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    bindir = _only_python_on_path(tmp_path, monkeypatch)
    _install_programs(bindir, {"sbatch": QUEUEING_SBATCH, "scancel": "#!/bin/sh\nexit 0\n"})
    monkeypatch.setenv("FAKE_SLURM_DIR", str(jobs))
    spec = ClusterSpec(kind="slurm", workers=1, walltime="00:10:00", memory_per_job="1GiB",
                       connect_timeout=0.5, start_timeout=1.5)
    seen: list[str] = []
    with open_executor(spec) as ex:
        # The driver's progress line while it waits: called as nothing finishes.
        ex.on_idle(lambda: seen.append(ex.worker_summary()))
        fut = ex.submit(h.add, 1.0)
        with pytest.raises(WorkersUnavailableError) as err:
            list(ex.as_completed([fut]))
        assert ex.worker_summary() == "jobs: 1 pending, 0 running; workers: 0"
    assert len(seen) >= 2 and seen[-1] == "jobs: 1 pending, 0 running; workers: 0"
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("--cluster slurm: no worker connected ")
    assert "s after submitting the first worker job (start_timeout=1.5 s): job 4242 state unknown; " in msg
    assert "-C start_timeout=SECONDS (0 waits for ever)" in msg


def test_start_timeout_must_be_a_non_negative_number() -> None:
    with pytest.raises(ClusterError, match=r"start_timeout must be a number of seconds >= 0 \(0 waits for ever\), got -1"):
        ClusterSpec(kind="slurm", start_timeout=-1)
    assert ClusterSpec(kind="slurm", start_timeout=0).start_timeout == 0


# --- the watch of a jobqueue cluster, on a stand-in cluster (no batch system) -------------------------


class _StandInJob:
    def __init__(self, job_id: str) -> None:
        from distributed.core import Status

        self.job_id = job_id
        self.status = Status.running


class _StandInCluster:
    """What _JobWatch reads of a dask-jobqueue cluster: its jobs by name and the connected workers."""

    def __init__(self) -> None:
        self.workers: dict[str, _StandInJob] = {}
        self.scheduler_info: dict[str, dict[str, dict[str, str]]] = {"workers": {}}

    def connect(self, name: str) -> None:
        self.scheduler_info["workers"][f"tcp://10.0.0.1:{len(self.scheduler_info['workers'])}"] = {"name": name}


def _watch(connect_timeout: float, start_timeout: float, adapt: bool) -> tuple[object, _StandInCluster]:
    from stokesflow.clusters.jobqueue import _JobWatch

    watch = _JobWatch("slurm", connect_timeout, start_timeout, adapt)
    watch.cluster = cluster = _StandInCluster()
    for i, job_id in enumerate(("101", "102")):
        cluster.workers[f"SLURMCluster-{i}"] = _StandInJob(job_id)
        watch.submitted(job_id)
    return watch, cluster


def test_watch_summary_counts_jobs_by_connected_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")  # no squeue: job states unknown
    watch, cluster = _watch(10.0, 0.0, adapt=True)
    assert watch.summary() == "jobs: 2 pending, 0 running; workers: 0"
    cluster.connect("SLURMCluster-1")
    assert watch.summary() == "jobs: 1 pending, 1 running; workers: 1"
    watch.check()  # a worker is connected: nothing to say


def test_watch_every_worker_lost_without_adapt_is_an_error_after_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stokesflow.clusters import WorkersUnavailableError

    monkeypatch.setenv("PATH", "")
    watch, cluster = _watch(0.2, 0.0, adapt=False)
    cluster.connect("SLURMCluster-0")
    watch.check()
    cluster.scheduler_info["workers"].clear()  # the job was cancelled
    watch.check()  # lost just now: not yet an error
    time.sleep(0.3)
    with pytest.raises(WorkersUnavailableError) as err:
        watch.check()
    msg = str(err.value)
    assert msg.startswith("--cluster slurm: every worker was lost (jobs ended: walltime, lifetime, scancel/qdel "
                          "or a crash) and adapt=false submits no replacement; no worker for ")
    assert "job 101 state unknown, job 102 state unknown; check `squeue -j 101 102`" in msg


def test_watch_lost_workers_with_adapt_wait_for_the_replacement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    watch, cluster = _watch(0.1, 0.0, adapt=True)  # start_timeout 0: wait for ever
    cluster.connect("SLURMCluster-0")
    watch.check()
    cluster.scheduler_info["workers"].clear()
    time.sleep(0.2)
    watch.check()  # adapt replaces lost workers: no error
