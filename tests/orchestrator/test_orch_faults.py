"""Faults driven for real: a worker process killed or exiting mid-run, the driver
SIGKILLed mid-run and resumed, a chunk failing on every retry of a local cluster."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _orchestrator_doubles import ExitOnceDouble, PoisonDouble, SlowPidDouble  # noqa: E402
from _orchestrator_helpers import assert_same_result, make_config, write_hmi_observation  # noqa: E402

from stokesflow.orchestrator.run import run_inversion  # noqa: E402
from stokesflow.orchestrator.store import read_result  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _reference(obs: Path, tmp_path: Path, chunk_pixels: int):
    out = tmp_path / "reference.h5"
    run_inversion(make_config(obs, out, run={"chunk_pixels": chunk_pixels}))
    return read_result(out)


def test_killed_worker_chunks_are_retried_elsewhere(tmp_path):
    obs = write_hmi_observation(tmp_path / "obs.h5", 12, 16)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    backend = SlowPidDouble({"sleep_s": 0.25, "pid_dir": str(pid_dir)})
    killed: list[int] = []

    def kill_first_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pids = [int(p.name) for p in pid_dir.iterdir() if int(p.name) != os.getpid()]
            if pids:
                time.sleep(0.1)  # the worker is inside its chunk now
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_first_worker, daemon=True)
    killer.start()
    out = tmp_path / "r.h5"
    summary = run_inversion(
        make_config(obs, out, kind="local", run={"chunk_pixels": 12}, cluster={"workers": 2}),
        backend=backend,
    )
    killer.join()
    assert killed, "no worker was seen working"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    assert summary.complete and not summary.failed
    r = read_result(out)
    assert (r.status != 255).all() and r.done.all()
    assert_same_result(r, _reference(obs, tmp_path, 12))


@pytest.mark.parametrize("in_setup", [False, True], ids=["in-a-task", "in-worker-setup"])
def test_worker_exiting_is_replaced(tmp_path, in_setup):
    obs = write_hmi_observation(tmp_path / "obs.h5", 8, 12)
    marker = tmp_path / "exited"
    backend = ExitOnceDouble({"marker": str(marker), "driver_pid": os.getpid(), "in_setup": in_setup})
    out = tmp_path / "r.h5"
    summary = run_inversion(
        make_config(obs, out, kind="local", run={"chunk_pixels": 16}, cluster={"workers": 2}),
        backend=backend,
    )
    assert marker.exists() and int(marker.read_text()) != os.getpid()
    assert summary.complete and not summary.failed
    assert_same_result(read_result(out), _reference(obs, tmp_path, 16))


def test_deterministic_failure_after_retries_on_local_cluster(tmp_path):
    obs = write_hmi_observation(tmp_path / "obs.h5", 6, 10, poison_pixels=(45,))
    out = tmp_path / "r.h5"
    summary = run_inversion(
        make_config(obs, out, kind="local", run={"chunk_pixels": 20}, cluster={"workers": 2, "retries": 1}),
        backend=PoisonDouble(),
    )
    assert summary.partial and list(summary.failed) == [2]
    assert "poisoned pixel" in summary.failed[2]
    r = read_result(out)
    assert r.done.tolist() == [True, True, False] and "poisoned pixel" in r.errors[2]


def _run_cli(args: list[str], *, kill_after_chunks: int | None, rng: np.random.Generator,
             sig: int = signal.SIGKILL):
    """Run ``python -m stokesflow.orchestrator.cli invert ARGS``; send ``sig`` once it logged that many chunks.

    Returns (killed, indices of the chunks it logged as written, its stderr); the exit
    code of the last run is kept in ``_run_cli.returncode``.
    """
    cmd = [sys.executable, "-m", "stokesflow.orchestrator.cli", "invert", *args, "-vv", "--progress", "log",
           "--log-interval", "0.001"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    written: list[int] = []
    lines: list[str] = []
    killed = False
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"chunk (\d+) done by", line)
            if m:
                written.append(int(m.group(1)))
            m = re.search(r"chunks (\d+)/(\d+)", line)
            if not killed and kill_after_chunks is not None and m and int(m.group(1)) >= kill_after_chunks:
                time.sleep(float(rng.uniform(0.0, 0.02)))  # land anywhere: computing or writing
                proc.send_signal(sig)
                killed = True
                if sig == signal.SIGKILL:
                    break
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    if not killed:
        assert proc.returncode == 0, "".join(lines[-30:])
    _run_cli.returncode = proc.returncode
    return killed, written, "".join(lines)


def test_driver_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    obs = write_hmi_observation(tmp_path / "obs.h5", 48, 48, seed=3, nan_pixels=(100,))
    out = tmp_path / "r.h5"
    k = 12  # 192 chunks
    base = ["--input", str(obs), "--out", str(out), "--chunk-pixels", str(k), "--cluster", "serial"]
    rng = np.random.default_rng(7)
    history: list[list[int]] = []
    done_before: list[int] = []
    for i, target in enumerate((25, 70, 120)):
        if i:
            done_before.append(int(read_result(out).done.sum()))
        killed, written, err = _run_cli(base + (["--resume"] if i else []), kill_after_chunks=target, rng=rng)
        assert killed, f"run {i} finished before it could be killed:\n{err[-2000:]}"
        history.append(written)
        r = read_result(out)  # the killed file opens, and every chunk logged as written is marked done
        assert r.done[written].all()
    done_before.append(int(read_result(out).done.sum()))
    killed, written, err = _run_cli(base + ["--resume"], kill_after_chunks=None, rng=rng)
    history.append(written)
    assert re.search(rf"resuming .*: {done_before[-1]} of 192 chunks already done", err)
    # no finished chunk is recomputed: chunks logged as written by one run never reappear later
    for a in range(len(history)):
        for b in range(a + 1, len(history)):
            assert not set(history[a]) & set(history[b]), (a, b)
    final = read_result(out)
    assert final.attrs["complete"] is True and final.done.all()
    assert final.attrs["chunks_computed"] == 192 - done_before[-1] == len(written)
    assert final.attrs["runs"] == 1  # only the last run got to its end
    assert_same_result(final, _reference(obs, tmp_path, k))


def test_driver_sigterm_closes_the_file_then_resume_finishes(tmp_path):
    # Batch systems send SIGTERM before the walltime kill: the driver stops, writes the
    # closing attributes (complete = false), exits 143, and --resume finishes the job.
    obs = write_hmi_observation(tmp_path / "obs.h5", 24, 24, seed=5)
    out = tmp_path / "r.h5"
    base = ["--input", str(obs), "--out", str(out), "--chunk-pixels", "8", "--cluster", "serial"]
    rng = np.random.default_rng(3)
    cmd_killed, written, err = _run_cli(base, kill_after_chunks=10, rng=rng, sig=signal.SIGTERM)
    assert cmd_killed
    assert _run_cli.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM)" in err
    r = read_result(out)
    assert r.attrs["complete"] is False and "time_total_s" in r.attrs
    assert r.done[written].all() and not r.done.all()
    _, rest, err = _run_cli(base + ["--resume"], kill_after_chunks=None, rng=rng)
    assert not set(written) & set(rest)
    final = read_result(out)
    assert final.attrs["complete"] is True and final.done.all()
    assert_same_result(final, _reference(obs, tmp_path, 8))
