"""The files of ``examples/``: configurations load and mean what they say, scripts run.

The real-SLURM run of ``examples/mpi_job.sbatch`` is in
``tests/clusters/test_slurm_real.py``; here its shell logic runs against a test
double of the MPI launcher (``MPIEXEC=echo``: the command it would start).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pathlib import Path

import h5py
import numpy as np
import pytest

from stokesflow.clusters import ClusterSpec, job_script
from stokesflow.orchestrator import load_config, synthesize_observation
from stokesflow.orchestrator.config import tomllib

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CLI = [sys.executable, "-m", "stokesflow.orchestrator.cli"]
TOMLS = sorted(EXAMPLES.glob("*.toml"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12 x 12 HMI-like sunspot."""
    return synthesize_observation(tmp_path_factory.mktemp("examples") / "obs.h5", instrument="hmi",
                                  scene="sunspot", size=(12, 12), seed=3)


def test_every_example_is_listed_in_the_examples_readme() -> None:
    listed = (EXAMPLES / "README.md").read_text()
    files = [p.name for p in EXAMPLES.iterdir() if p.is_file() and p.name != "README.md"]
    assert len(files) >= 7
    assert [f for f in files if f"`{f}`" not in listed] == []


@pytest.mark.parametrize("path", TOMLS, ids=[p.name for p in TOMLS])
def test_configuration_loads_with_every_key_known(path: Path, tiny: Path) -> None:
    layer = tomllib.loads(path.read_text())
    layer.setdefault("input", {})["path"] = str(tiny)
    config = load_config(None, layer)  # unknown tables or keys raise
    spec = config.cluster_spec()
    assert spec.kind == layer["cluster"]["kind"]
    for key, value in layer["cluster"].items():
        got = getattr(spec, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key


@pytest.mark.parametrize(("name", "directives"), [
    ("slurm.toml", ["#SBATCH -p normal", "#SBATCH -t 02:00:00", "#SBATCH --cpus-per-task=16", "#SBATCH --mem=32G"]),
    ("pbs.toml", ["#PBS -q workq", "#PBS -l walltime=02:00:00", "ncpus=8", "mem=16GB"]),
])
def test_batch_example_renders_the_job_script_it_describes(name: str, directives: list[str]) -> None:
    spec = ClusterSpec(**tomllib.loads((EXAMPLES / name).read_text())["cluster"])
    script = job_script(spec)
    missing = [d for d in directives if d not in script]
    assert missing == [], script
    assert "--nworkers" in script or "--nprocs" in script or "dask-worker" in script or "distributed.cli" in script


def test_local_example_inverts_through_the_command_line(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.h5"
    proc = subprocess.run([*CLI, "invert", str(EXAMPLES / "invert_local.toml"), "-i", str(tiny), "-o", str(out),
                           "--cluster", "serial"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with h5py.File(out, "r") as h:
        assert bool(h.attrs["complete"])
        assert np.isfinite(h["params/B"][()]).all()
        assert "n_starts = 2" in h.attrs["config"]


# --- examples/mpi_job.sbatch with a test double of the launcher -------------------------------------------

def _sbatch_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    full.update(env)
    return subprocess.run(["bash", str(EXAMPLES / "mpi_job.sbatch"), "-B", "max_iter=20"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=full)


def test_mpi_job_without_input_says_how_to_give_it(tmp_path: Path) -> None:
    proc = _sbatch_script(tmp_path, MPIEXEC="echo")
    assert proc.returncode != 0
    assert "set INPUT to the observation: sbatch --export=ALL,INPUT=obs.h5" in proc.stderr


def test_mpi_job_refuses_fewer_than_three_ranks(tmp_path: Path) -> None:
    proc = _sbatch_script(tmp_path, MPIEXEC="echo", INPUT="obs.h5", SLURM_NTASKS="2")
    assert proc.returncode == 2
    assert "needs at least 3 ranks (scheduler, driver, one worker); got NRANKS=2" in proc.stderr


def test_mpi_job_starts_a_new_run_then_resumes_an_existing_result(tmp_path: Path) -> None:
    env = {"MPIEXEC": r"printf %s\n", "INPUT": "/data/obs.h5", "OUTPUT": "out.h5", "SLURM_NTASKS": "16"}
    first = _sbatch_script(tmp_path, **env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["-n", "16", "stokesflow", "invert", "--input", "/data/obs.h5", "--out",
                                    "out.h5", "--cluster", "mpi", "--progress", "log", "-B", "max_iter=20"]
    (tmp_path / "out.h5").write_bytes(b"")
    again = _sbatch_script(tmp_path, **env, NRANKS="4")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == "resuming out.h5"
    assert again.stdout.splitlines()[1:3] == ["-n", "4"]
    assert "--resume" in again.stdout.splitlines()


# --- the Python examples ----------------------------------------------------------------------------------

def _run_example(name: str, *args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_invert_from_python_example_runs(tmp_path: Path) -> None:
    out = _run_example("invert_from_python.py", "--size", "12", "--out", "ex", "--cluster", "serial", cwd=tmp_path)
    assert "inverted 144 pixels" in out
    assert "backend alone: 16 pixels" in out
    assert (tmp_path / "ex" / "result.h5").exists()


def test_assisted_loop_example_runs_and_a_rerun_keeps_every_phase(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = _run_example("assisted_loop.py", "--size", "16", "--out", "loop", "--epochs", "3", cwd=tmp_path)
    assert "LM iterations per pixel: assisted" in out
    assert "Pearson with the baseline: B" in out
    summary = tmp_path / "loop" / "summary.json"
    assert json.loads(summary.read_text())["ran"] == ["subset", "reference", "train", "predict", "assisted",
                                                       "baseline"]
    again = _run_example("assisted_loop.py", "--size", "16", "--out", "loop", "--epochs", "3", cwd=tmp_path)
    assert again.splitlines()[-3:-1] == out.splitlines()[-3:-1]  # the same files, the same truth figures
    assert json.loads(summary.read_text())["ran"] == []
