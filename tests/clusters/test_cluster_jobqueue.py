"""kind="slurm" end to end with a test double for the batch system.

``sbatch`` and ``scancel`` are replaced by small shell scripts (test doubles,
written by the fixture) that run the job script in the background on this
machine and kill it again.  Everything else is real: dask-jobqueue builds
and "submits" the job script, the adaptive cluster asks for jobs when tasks
wait, the workers in those jobs connect to the scheduler started here.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import _cluster_helpers as h
from stokesflow.clusters import ClusterSpec, open_executor

HERE = Path(__file__).resolve().parent

FAKE_SBATCH = """#!/bin/bash
# Test double for SLURM's sbatch: run the job script in the background.
set -e
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


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    jobs = tmp_path / "jobs"
    bindir.mkdir()
    jobs.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        path = bindir / name
        path.write_text(text)
        path.chmod(0o755)
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
