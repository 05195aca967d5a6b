"""serial, local and mpi executors give bit-identical result files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _orchestrator_doubles import SetupCountingDouble  # noqa: E402
from _orchestrator_helpers import assert_same_result, make_config, write_hmi_observation  # noqa: E402

from stokesflow.orchestrator.run import run_inversion  # noqa: E402
from stokesflow.orchestrator.store import read_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
K = 24


@pytest.fixture(scope="module")
def obs_and_serial(tmp_path_factory):
    d = tmp_path_factory.mktemp("executors")
    obs = write_hmi_observation(d / "obs.h5", 12, 20, seed=11, nan_pixels=(7, 130))
    run_inversion(make_config(obs, d / "serial.h5", run={"chunk_pixels": K}))
    return obs, read_result(d / "serial.h5")


@pytest.mark.slow
def test_local_equals_serial(obs_and_serial, tmp_path):
    obs, serial = obs_and_serial
    out = tmp_path / "local.h5"
    summary = run_inversion(make_config(obs, out, kind="local", run={"chunk_pixels": K}, cluster={"workers": 2}))
    assert summary.complete and summary.workers == 2 and summary.cluster == "local"
    assert_same_result(read_result(out), serial)


@pytest.mark.slow
@pytest.mark.mpi
def test_mpi_equals_serial(obs_and_serial, tmp_path):
    # mpiexec, mpi4py and dask-mpi: checked for every `mpi` test in tests/conftest.py
    obs, serial = obs_and_serial
    out = tmp_path / "mpi.h5"
    cmd = ["mpiexec", "-n", "4", sys.executable, "-m", "stokesflow.orchestrator.cli", "invert", "--input", str(obs),
           "--out", str(out), "--cluster", "mpi", "--chunk-pixels", str(K), "--progress", "log"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "cluster: mpi with 2 worker(s)" in proc.stdout  # 4 ranks: scheduler, driver, 2 workers
    r = read_result(out)
    assert r.attrs["complete"] is True
    assert_same_result(r, serial)


@pytest.mark.slow
def test_worker_setup_happens_once_per_worker_not_per_chunk(obs_and_serial, tmp_path):
    obs, serial = obs_and_serial
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "local.h5"
    summary = run_inversion(
        make_config(obs, out, kind="local", run={"chunk_pixels": K}, cluster={"workers": 2}),
        backend=SetupCountingDouble({"setup_dir": str(marks)}),
    )
    assert summary.complete and summary.n_chunks == 10
    setups: dict[int, int] = {}
    for f in marks.iterdir():
        if not f.name.startswith("chunk-"):
            pid = int(f.name.split("-")[0])
            setups[pid] = setups.get(pid, 0) + 1
    chunk_pids = {int(f.name.split("-")[1]) for f in marks.glob("chunk-*")}
    assert len(list(marks.glob("chunk-*"))) == 10
    assert setups.pop(os.getpid()) == 1  # the driver validates the backend once
    assert chunk_pids <= set(setups)  # every worker that ran chunks was set up ...
    assert all(n == 1 for n in setups.values()), setups  # ... exactly once, not per chunk
    # each set-up was handed the trial pixel: one valid pixel on the observation's own grid
    assert {f.read_text() for f in marks.iterdir() if not f.name.startswith("chunk-")} == {"1x4x6 6"}
    assert_same_result(read_result(out), serial)
