"""``--cluster slurm`` (and ``pbs``, ``mpi`` inside a batch job) against a real one-node SLURM.

The cluster is Debian's slurm-wlm started by ``.ci/start_slurm.sh`` (the
fixture ``slurm_conf``); every test drives the real command line
(``python -m stokesflow.orchestrator.cli invert``) with real ``sbatch``,
``squeue`` and ``scancel``.  Skipped on a developer machine where SLURM
cannot start (the reason is printed); on CI (``CI`` set) that is a failure.

Results are compared with a ``--cluster serial`` run of the same observation
made in the same session: the chunk tasks run the same code on the same
pixels, so the parameter maps must be equal, not merely close.

Every test is bounded by ``pytest.mark.timeout``; the machine has 2 CPUs,
so at most two one-core jobs run at once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from _assist_loop import LOOP_ARGS, assert_same_loop, serial_loop
from _slurm import (  # noqa: F401 - slurm_conf is a fixture
    CLI,
    ROOT,
    assert_same_parameters,
    cancel_jobs,
    jobs_in_queue,
    run_cli,
    slurm_conf,
    slurm_env,
    start_cli,
    wait_for,
    wait_job_ended,
)

pytestmark = pytest.mark.slurm

# Worker jobs of 1 core and 1 GiB: two fit on the 2-CPU node besides the driver.
JOB = ["-C", "memory_per_job=1GiB", "--progress", "log", "--log-interval", "2"]


@pytest.fixture(scope="session")
def observations(tmp_path_factory: pytest.TempPathFactory, slurm_conf: str) -> dict[str, Path]:
    """A 24 x 24 and a 64 x 64 synthetic HMI sunspot, and their ``--cluster serial`` results.

    The references use the chunk sizes of the tests (48 and 64 pixels): the ME backend seeds the
    random extra starts of a pixel per chunk, so a few pixels of a run with other chunks differ.
    """
    folder = tmp_path_factory.mktemp("slurm-observations")
    out: dict[str, Path] = {}
    for name, size, chunk in (("small", "24", "48"), ("big", "64", "64")):
        obs = folder / f"{name}.h5"
        subprocess.run([*CLI, "synth", "--instrument", "hmi", "--scene", "sunspot", "--size", size, size,
                        "--seed", "1", "--out", str(obs)], check=True, capture_output=True, timeout=120)
        ref = folder / f"{name}-serial.h5"
        subprocess.run([*CLI, "invert", "-i", str(obs), "-o", str(ref), "--cluster", "serial", "-q",
                        "--chunk-pixels", chunk], check=True, capture_output=True, timeout=300)
        out[name], out[f"{name}-serial"] = obs, ref
    return out


@pytest.fixture(scope="session")
def large_observation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 256 x 256 synthetic sunspot (several seconds of fitting for one worker) and its serial result."""
    folder = tmp_path_factory.mktemp("slurm-large")
    obs, ref = folder / "large.h5", folder / "large-serial.h5"
    subprocess.run([*CLI, "synth", "--instrument", "hmi", "--scene", "sunspot", "--size", "256", "256",
                    "--seed", "2", "--out", str(obs)], check=True, capture_output=True, timeout=300)
    subprocess.run([*CLI, "invert", "-i", str(obs), "-o", str(ref), "--cluster", "serial", "-q",
                    "--chunk-pixels", "1024"], check=True, capture_output=True, timeout=300)
    return obs, ref


@pytest.fixture
def slurm(slurm_conf: str, tmp_path: Path):  # noqa: ANN201
    """The SLURM of the session for one test; afterwards no job the test submitted is left in the queue."""
    yield slurm_conf
    left = jobs_in_queue(slurm_conf, tmp_path)
    cancel_jobs(slurm_conf, tmp_path)
    assert not left, f"jobs left in squeue after the test: {left}"


def _worker_outputs(folder: Path) -> list[Path]:
    """The ``slurm-<id>.out`` of the worker jobs submitted from ``folder``."""
    return sorted(folder.glob("slurm-*.out"))


def _stokesflow_errors(text: str) -> list[str]:
    """The ERROR lines stokesflow logged; Dask's own (a gather racing a cancelled worker) are not the run's."""
    return [ln for ln in text.splitlines() if " ERROR stokesflow." in ln]


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-4000:]


_CHUNK_DONE = re.compile(r"chunks [1-9][0-9]*/")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill a driver still running after a failed check (and reap it)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def _running_worker(conf: str, folder: Path) -> str:
    """Id of a running job submitted from ``folder``, or ''."""
    return next((j for j, s in jobs_in_queue(conf, folder).items() if s == "RUNNING"), "")


# --- runs that complete -------------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_slurm_run_equals_serial(slurm: str, observations: dict[str, Path], tmp_path: Path) -> None:
    proc = run_cli(["invert", "-i", str(observations["small"]), "-o", "out.h5", "--cluster", "slurm", "-w", "2",
                    "--chunk-pixels", "48", *JOB], tmp_path, slurm, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "result: out.h5 (complete: 12/12 chunks" in proc.stdout
    _no_traceback(proc.stdout)
    assert_same_parameters(tmp_path / "out.h5", observations["small-serial"])
    assert 1 <= len(_worker_outputs(tmp_path)) <= 2


@pytest.mark.timeout(180)
def test_cancelled_worker_job_is_replaced_and_the_run_completes(
    slurm: str, large_observation: tuple[Path, Path], tmp_path: Path
) -> None:
    obs, ref = large_observation
    log = tmp_path / "driver.log"
    proc = start_cli(["invert", "-i", str(obs), "-o", "out.h5", "--cluster", "slurm", "-w", "1",
                      "--chunk-pixels", "1024", *JOB], tmp_path, slurm, log)
    try:
        job = wait_for(lambda: _running_worker(slurm, tmp_path), 90, "the worker job to run")
        wait_for(lambda: _CHUNK_DONE.search(log.read_text()), 90, "the first chunk")  # mid-run
        subprocess.run(["scancel", job], env=slurm_env(slurm), check=True, timeout=30)
        assert proc.wait(timeout=150) == 0, log.read_text()[-3000:]
    finally:
        _stop(proc)
    text = log.read_text()
    _no_traceback(text)
    assert_same_parameters(tmp_path / "out.h5", ref)
    # The only worker was cancelled: the run finished on its replacement.
    assert len(_worker_outputs(tmp_path)) >= 2, text[-3000:]


@pytest.mark.timeout(300)
def test_assist_on_slurm_equals_the_serial_loop(slurm: str, observations: dict[str, Path], tmp_path: Path) -> None:
    # Every phase on two SLURM worker jobs: the reference, the training (a task on a worker job), the
    # prediction, the assisted and the baseline inversion, in chunks of 48 pixels spread over both.
    pytest.importorskip("torch")
    chunks = ["--chunk-pixels", "48"]
    serial = serial_loop(observations["small"], tmp_path, *chunks)
    proc = run_cli(["assist", "-i", str(observations["small"]), "-o", "loop", *LOOP_ARGS, *chunks, "--cluster",
                    "slurm", "-w", "2", "-C", "memory_per_job=1GiB", "--progress", "log"], tmp_path, slurm,
                   timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:]
    _no_traceback(proc.stdout)
    assert "on the slurm executor" in proc.stdout
    assert_same_loop(tmp_path / "loop", serial)
    assert 1 <= len(_worker_outputs(tmp_path)) <= 2


@pytest.fixture(scope="session")
def huge_observation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 512 x 512 synthetic sunspot (about 22 s of fitting for one idle worker) and its serial result.

    384 x 384 took 12.5 s on an idle CI machine: a worker drawing the full
    stagger (8 + 4 s) then outlived the run and the test saw no replacement.
    """
    folder = tmp_path_factory.mktemp("slurm-huge")
    obs, ref = folder / "huge.h5", folder / "huge-serial.h5"
    subprocess.run([*CLI, "synth", "--instrument", "hmi", "--scene", "sunspot", "--size", "512", "512",
                    "--seed", "3", "--out", str(obs)], check=True, capture_output=True, timeout=300)
    subprocess.run([*CLI, "invert", "-i", str(obs), "-o", str(ref), "--cluster", "serial", "-q",
                    "--chunk-pixels", "2048"], check=True, capture_output=True, timeout=300)
    return obs, ref


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_short_lifetime_retires_and_replaces_workers(
    slurm: str, huge_observation: tuple[Path, Path], tmp_path: Path
) -> None:
    # Walltime 1 min, lifetime 8 s (+/- 4 s stagger) against ~22 s of fitting: the worker retires
    # mid-run, its job ends and adapt submits a replacement that goes on.  A shorter lifetime
    # retires workers while they still start up (seconds on a loaded 2-CPU machine): job churn.
    obs, ref = huge_observation
    proc = run_cli(["invert", "-i", str(obs), "-o", "out.h5", "--cluster", "slurm", "-w", "1",
                    "--walltime", "00:01:00", "-C", "lifetime=8s", "--chunk-pixels", "2048", *JOB],
                   tmp_path, slurm, timeout=380)
    assert proc.returncode == 0, proc.stdout[-3000:]
    _no_traceback(proc.stdout)
    # distributed's notes on retired workers stay in the debug log.
    assert "unregistered worker" not in proc.stdout
    outputs = _worker_outputs(tmp_path)
    assert len(outputs) >= 2, proc.stdout[-3000:]
    assert "worker-lifetime-reached" in outputs[0].read_text()
    assert_same_parameters(tmp_path / "out.h5", ref)


@pytest.mark.timeout(180)
def test_driver_submitted_as_a_batch_job_runs_to_the_end(
    slurm: str, observations: dict[str, Path], tmp_path: Path
) -> None:
    command = " ".join([*CLI, "invert", "-i", str(observations["small"]), "-o", "out.h5", "--cluster", "slurm",
                        "-w", "1", "--chunk-pixels", "48", *JOB])
    job = subprocess.run(
        ["sbatch", "--parsable", "-J", "stokesflow-test-driver", "-c", "1", "--mem=2G", "-o", "driver.out",
         "--wrap", command], cwd=tmp_path, env=slurm_env(slurm), capture_output=True, text=True, check=True,
        timeout=30,
    ).stdout.strip()
    wait_job_ended(slurm, tmp_path, job, 170)
    text = (tmp_path / "driver.out").read_text()
    assert "result: out.h5 (complete: 12/12 chunks" in text, text[-3000:]
    _no_traceback(text)
    assert_same_parameters(tmp_path / "out.h5", observations["small-serial"])


@pytest.mark.mpi
@pytest.mark.timeout(200)
@pytest.mark.parametrize(("ranks", "mode"), [(4, "dask"), (3, "futures")])
def test_mpiexec_inside_a_batch_job_equals_serial_without_traceback(
    slurm: str, observations: dict[str, Path], tmp_path: Path, ranks: int, mode: str
) -> None:
    # The whole node (2 CPUs); mpiexec starts its ranks itself inside the allocation.
    command = " ".join(["mpiexec", "-n", str(ranks), *CLI, "invert", "-i", str(observations["small"]), "-o",
                        "out.h5", "--cluster", "mpi", "-C", f"mpi_mode={mode}", "--chunk-pixels", "48",
                        "--progress", "log"])
    job = subprocess.run(
        ["sbatch", "--parsable", "-J", "stokesflow-test-driver", "-c", "2", "--mem=4G", "-o", "mpi.out",
         "--wrap", command], cwd=tmp_path, env=slurm_env(slurm), capture_output=True, text=True, check=True,
        timeout=30,
    ).stdout.strip()
    wait_job_ended(slurm, tmp_path, job, 190)
    text = (tmp_path / "mpi.out").read_text()
    assert "result: out.h5 (complete: 12/12 chunks" in text, text[-3000:]
    _no_traceback(text)
    assert_same_parameters(tmp_path / "out.h5", observations["small-serial"])


@pytest.mark.mpi
@pytest.mark.timeout(300)
def test_mpi_job_example_runs_and_a_resubmission_finds_the_result_complete(
    slurm: str, observations: dict[str, Path], tmp_path: Path
) -> None:
    # examples/mpi_job.sbatch as a user submits it (its #SBATCH lines overridden to fit the 2-CPU node);
    # the stokesflow on its PATH is this environment's.
    env = slurm_env(slurm, INPUT=str(observations["small"]), OUTPUT="out.h5", NRANKS="4",
                    PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")

    def submit(log: str) -> str:
        job = subprocess.run(
            ["sbatch", "--parsable", "-n", "1", "-c", "2", "--mem=4G", "-o", log,
             str(ROOT / "examples" / "mpi_job.sbatch"), "--chunk-pixels", "48"],
            cwd=tmp_path, env=env, capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()
        wait_job_ended(slurm, tmp_path, job, 140)
        return (tmp_path / log).read_text()

    text = submit("first.out")
    assert "result: out.h5 (complete: 12/12 chunks" in text, text[-3000:]
    _no_traceback(text)
    assert_same_parameters(tmp_path / "out.h5", observations["small-serial"])
    again = submit("again.out")
    assert again.startswith("resuming out.h5"), again[-3000:]
    assert "result: out.h5 was already complete (12/12 chunks" in again, again[-3000:]
    _no_traceback(again)


# --- refusals and time-outs: exit 2, nothing left in the queue ---------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("option", "said"),
    [
        ("queue=nosuch", "sbatch: error: invalid partition specified: nosuch"),
        ("memory_per_job=100GiB", "Requested node configuration is not available"),
    ],
    ids=["unknown-partition", "impossible-memory"],
)
def test_refused_job_exits_2_with_sbatchs_message_before_any_chunk(
    slurm: str, observations: dict[str, Path], tmp_path: Path, option: str, said: str
) -> None:
    proc = run_cli(["invert", "-i", str(observations["small"]), "-o", "out.h5", "--cluster", "slurm",
                    "--progress", "log", "-C", option], tmp_path, slurm, timeout=80)
    assert proc.returncode == 2, proc.stdout[-3000:]
    (line,) = _stokesflow_errors(proc.stdout)
    assert "--cluster slurm: the SLURM submission of a worker job failed: sbatch --test-only exited with code 1: " in line
    assert said in line and f"(given on the command line as -C {option})" in line
    _no_traceback(proc.stdout)
    # Refused before the cluster started: no result file, no job, no progress line.
    assert not (tmp_path / "out.h5").exists()
    assert "progress:" not in proc.stdout
    assert not _worker_outputs(tmp_path)


@pytest.mark.timeout(90)
def test_no_worker_within_start_timeout_exits_2_listing_pending_jobs(
    slurm: str, observations: dict[str, Path], tmp_path: Path
) -> None:
    # --hold: sbatch accepts the job and SLURM never starts it (JobHeldUser).
    proc = run_cli(["invert", "-i", str(observations["small"]), "-o", "out.h5", "--cluster", "slurm", *JOB,
                    "-C", 'job_extra_directives=["--hold"]', "-C", "connect_timeout=2", "-C", "start_timeout=6"],
                   tmp_path, slurm, timeout=80)
    assert proc.returncode == 2, proc.stdout[-3000:]
    warning = [ln for ln in proc.stdout.splitlines() if " WARNING " in ln]
    assert len(warning) == 1 and "no worker connected" in warning[0] and "PENDING (JobHeldUser)" in warning[0]
    (line,) = _stokesflow_errors(proc.stdout)
    assert "--cluster slurm: no worker connected " in line
    assert "after submitting the first worker job (start_timeout=6 s): job " in line
    assert " PENDING (JobHeldUser); check `squeue -j " in line
    assert "-C start_timeout=SECONDS (0 waits for ever)" in line
    # while it waited, the progress line (--log-interval 2) said that the worker job is pending
    waiting = [ln for ln in proc.stdout.splitlines() if "progress: 0/" in ln and "jobs: 1 pending" in ln]
    assert waiting, proc.stdout[-3000:]
    _no_traceback(proc.stdout)


@pytest.mark.timeout(150)
def test_every_worker_lost_without_adapt_exits_2_after_connect_timeout(
    slurm: str, large_observation: tuple[Path, Path], tmp_path: Path
) -> None:
    log = tmp_path / "driver.log"
    proc = start_cli(["invert", "-i", str(large_observation[0]), "-o", "out.h5", "--cluster", "slurm", "-w", "1",
                      "--chunk-pixels", "1024", *JOB, "-C", "adapt=false", "-C", "connect_timeout=3"],
                     tmp_path, slurm, log)
    try:
        job = wait_for(lambda: _running_worker(slurm, tmp_path), 90, "the worker job to run")
        # Its worker connected: a chunk came back.
        wait_for(lambda: _CHUNK_DONE.search(log.read_text()), 90, "the first chunk")
        subprocess.run(["scancel", job], env=slurm_env(slurm), check=True, timeout=30)
        assert proc.wait(timeout=60) == 2, log.read_text()[-3000:]
    finally:
        _stop(proc)
    text = log.read_text()
    (line,) = _stokesflow_errors(text)
    assert "--cluster slurm: every worker was lost" in line and "adapt=false submits no replacement" in line
    assert f"job {job} no longer queued" in line and "use -C adapt=true" in line
    _no_traceback(text)
    with h5py.File(tmp_path / "out.h5", "r") as f:  # closed and resumable
        assert not bool(f.attrs["complete"])


@pytest.mark.timeout(90)
def test_worker_job_failing_at_start_exits_2_instead_of_waiting(
    slurm: str, observations: dict[str, Path], tmp_path: Path
) -> None:
    # A prologue that fails (a missing module or environment): the job ends before its worker starts.
    proc = run_cli(["invert", "-i", str(observations["small"]), "-o", "out.h5", "--cluster", "slurm", *JOB,
                    "-C", 'job_script_prologue=["exit 1"]', "-C", "connect_timeout=3"], tmp_path, slurm, timeout=80)
    assert proc.returncode == 2, proc.stdout[-3000:]
    (line,) = _stokesflow_errors(proc.stdout)
    assert "--cluster slurm: every worker job (" in line
    assert ") has left the SLURM queue without a worker connecting: cancelled, or the job script failed" in line
    assert "fix job_script_prologue" in line
    _no_traceback(proc.stdout)


# --- SIGTERM in every state: exit 143, jobs cancelled, --resume finishes ------------------------------------


def _sigterm_when(proc: subprocess.Popen[bytes], log: Path, ready, what: str) -> str:  # noqa: ANN001
    try:
        wait_for(lambda: proc.poll() is not None or ready(), 90, what)
        assert proc.poll() is None, log.read_text()[-3000:]
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 143, log.read_text()[-3000:]
    finally:
        _stop(proc)
    text = log.read_text()
    _no_traceback(text)
    assert "terminated (SIGTERM): " in text and "finish the run with --resume" in text
    return text


@pytest.mark.timeout(120)
def test_sigterm_with_jobs_pending_exits_143_and_cancels_them(
    slurm: str, observations: dict[str, Path], tmp_path: Path
) -> None:
    log = tmp_path / "driver.log"
    proc = start_cli(["invert", "-i", str(observations["small"]), "-o", "out.h5", "--cluster", "slurm", *JOB,
                      "-C", 'job_extra_directives=["--hold"]'], tmp_path, slurm, log)
    _sigterm_when(proc, log, lambda: "PENDING" in jobs_in_queue(slurm, tmp_path).values(), "a pending worker job")
    assert not jobs_in_queue(slurm, tmp_path)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert not bool(f.attrs["complete"])


@pytest.mark.timeout(200)
def test_sigterm_with_jobs_running_exits_143_cancels_them_and_resume_finishes(
    slurm: str, observations: dict[str, Path], tmp_path: Path
) -> None:
    log = tmp_path / "driver.log"
    args = ["invert", "-i", str(observations["big"]), "-o", "out.h5", "--cluster", "slurm", "-w", "1",
            "--chunk-pixels", "64", *JOB]
    proc = start_cli(args, tmp_path, slurm, log)
    _sigterm_when(proc, log, lambda: _running_worker(slurm, tmp_path), "a running worker job")
    assert not jobs_in_queue(slurm, tmp_path)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert not bool(f.attrs["complete"])
    again = run_cli([*args, "--resume"], tmp_path, slurm, timeout=150)
    assert again.returncode == 0, again.stdout[-3000:]
    _no_traceback(again.stdout)
    assert_same_parameters(tmp_path / "out.h5", observations["big-serial"])


@pytest.mark.timeout(90)
def test_refused_pbs_job_exits_2_with_qsubs_message(
    slurm: str, observations: dict[str, Path], tmp_path: Path
) -> None:
    # PBS has no dry run: the refusal comes from the first real qsub (Debian's slurm-wlm-torque
    # wrapper around sbatch), before any chunk is computed.
    proc = run_cli(["invert", "-i", str(observations["small"]), "-o", "out.h5", "--cluster", "pbs", *JOB,
                    "-C", "queue=nosuch"], tmp_path, slurm, timeout=80)
    assert proc.returncode == 2, proc.stdout[-3000:]
    (line,) = _stokesflow_errors(proc.stdout)
    assert "--cluster pbs: the PBS submission of a worker job failed: qsub exited with code 1: " in line
    assert "Invalid partition name specified" in line
    _no_traceback(proc.stdout)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert not bool(f.attrs["complete"])
        assert not f["chunks/done"][()].any()


@pytest.mark.timeout(150)
def test_pbs_run_on_slurms_torque_wrappers_equals_serial(
    slurm: str, observations: dict[str, Path], tmp_path: Path
) -> None:
    # qsub/qstat/qdel of slurm-wlm-torque; sbatch honours the #PBS -N/-l directives of the job script.
    proc = run_cli(["invert", "-i", str(observations["small"]), "-o", "out.h5", "--cluster", "pbs", "-w", "2",
                    "--chunk-pixels", "48", *JOB], tmp_path, slurm, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    _no_traceback(proc.stdout)
    assert_same_parameters(tmp_path / "out.h5", observations["small-serial"])


# --- the executor's own view: worker_summary() -----------------------------------------------------


@pytest.mark.timeout(120)
def test_worker_summary_counts_pending_and_running_jobs(slurm: str, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    from stokesflow.clusters import ClusterSpec, open_executor

    monkeypatch.setenv("SLURM_CONF", slurm)
    monkeypatch.chdir(tmp_path)  # the job's slurm-<id>.out
    spec = ClusterSpec(kind="slurm", workers=1, memory_per_job="1GiB", walltime="00:05:00",
                       job_extra_directives=("--hold",))
    with open_executor(spec) as ex:
        fut = ex.submit(abs, -3)
        held = wait_for(lambda: jobs_in_queue(slurm, tmp_path), 30, "the held worker job")
        assert ex.worker_summary() == "jobs: 1 pending, 0 running; workers: 0"
        subprocess.run(["scontrol", "release", *held], env=slurm_env(slurm), check=True, timeout=30)
        assert next(iter(ex.as_completed([fut]))).result() == 3
        assert ex.worker_summary() == "jobs: 0 pending, 1 running; workers: 1"
    assert not jobs_in_queue(slurm, tmp_path)
