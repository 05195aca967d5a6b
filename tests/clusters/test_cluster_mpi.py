"""kind="mpi": real ``mpiexec`` runs of tests/clusters/_mpi_script.py.

Each run is a subprocess with a timeout, so a hang fails the test instead of
blocking CI; on timeout the whole process group (mpiexec and its ranks) is
killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stokesflow.clusters import (
    ClusterError,
    ClusterSpec,
    MissingProgramError,
    client_rank,
    open_executor,
    preflight,
)

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "_mpi_script.py"
TIMEOUT_S = 120



def _run_mpi(args: list[str], outdir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # mpi4py.futures workers unpickle _cluster_helpers functions by reference.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    cmd = ["mpiexec", *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish within {TIMEOUT_S} s; output:\n{out}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


def _result(outdir: Path, proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, f"{' '.join(proc.args)} exited with {proc.returncode}:\n{proc.stdout}"
    path = outdir / "result.json"
    assert path.exists(), f"the client rank wrote no {path}; output:\n{proc.stdout}"
    return json.loads(path.read_text())


def _check_common(res: dict, outdir: Path, *, n_workers: int, rank: int) -> None:
    assert res["rank"] == rank == res["client_rank"]
    assert res["values"] == [i * i for i in range(40)]
    assert res["n_yielded"] == 40
    assert res["n_workers"] == n_workers
    assert res["kwargs"] == 9.0  # (1 + 2) * 3
    assert res["retried"] == 3  # two planned failures, retries=2
    assert res["error"] == ["ValueError", "bad pixel"]
    assert res["scatter_len"] == 7
    # Only the client rank gets past the `with open_executor(...)` block.
    assert sorted(p.name for p in outdir.glob("after-*")) == [f"after-{rank}"]
    # run_on_workers ran once in every worker process that ran tasks.
    setup_pids = [int(p.name.split("-")[0]) for p in (outdir / "setup").iterdir()]
    assert len(setup_pids) == len(set(setup_pids))
    assert set(res["task_pids"]) <= set(setup_pids)


@pytest.mark.mpi
def test_dask_mpi_runs_tasks_and_survives_a_worker_crash(tmp_path: Path) -> None:
    proc = _run_mpi(["-n", "4", sys.executable, str(SCRIPT), "dask", str(tmp_path)], tmp_path)
    res = _result(tmp_path, proc)
    _check_common(res, tmp_path, n_workers=2, rank=1)
    assert res["info"]["mpi_mode"] == "dask" and res["info"]["mpi_size"] == 4
    assert res["info"]["scheduler_address"].startswith("tcp://")
    # A task that killed its worker process (os._exit) was retried elsewhere
    # and the Nanny started a new worker process in place of the dead one.
    assert (tmp_path / "marker").exists()
    assert res["crash_pid"] in res["pids_before_crash"]
    assert len(res["pids_after_crash"]) == 2
    assert res["pids_after_crash"] != res["pids_before_crash"]
    # The worker plugin also ran in the restarted worker.
    new_pids = set(res["pids_after_crash"]) - set(res["pids_before_crash"])
    setup_pids = {int(p.name.split("-")[0]) for p in (tmp_path / "setup").iterdir()}
    assert new_pids <= setup_pids
    assert res["worker_environ"] == [str(32 << 20)]


@pytest.mark.mpi
def test_mpi4py_futures_comm_executor(tmp_path: Path) -> None:
    proc = _run_mpi(["-n", "3", sys.executable, str(SCRIPT), "futures", str(tmp_path)], tmp_path)
    res = _result(tmp_path, proc)
    _check_common(res, tmp_path, n_workers=2, rank=0)
    assert res["info"]["mpi_mode"] == "futures"


@pytest.mark.mpi
def test_mpi4py_futures_under_python_m_mpi4py_futures(tmp_path: Path) -> None:
    proc = _run_mpi(
        ["-n", "3", sys.executable, "-m", "mpi4py.futures", str(SCRIPT), "futures", str(tmp_path)], tmp_path
    )
    res = _result(tmp_path, proc)
    _check_common(res, tmp_path, n_workers=2, rank=0)


@pytest.mark.mpi
def test_mpi4py_futures_worker_death_ends_the_job(tmp_path: Path) -> None:
    # The documented limit of mpi_mode="futures": no restart, the job ends.
    proc = _run_mpi(["-n", "2", sys.executable, str(SCRIPT), "futures-crash", str(tmp_path)], tmp_path)
    assert proc.returncode != 0
    assert (tmp_path / "marker").exists()
    assert not (tmp_path / "result.json").exists()


@pytest.mark.mpi
def test_dask_mpi_with_two_ranks_fails_clearly(tmp_path: Path) -> None:
    proc = _run_mpi(["-n", "2", sys.executable, str(SCRIPT), "dask", str(tmp_path)], tmp_path)
    assert proc.returncode != 0
    assert "needs at least 3 MPI ranks" in proc.stdout
    assert "got 2" in proc.stdout


@pytest.mark.mpi
def test_dask_mode_under_python_m_mpi4py_futures_is_refused(tmp_path: Path) -> None:
    # Would hang in dask-mpi's broadcast: the other ranks serve mpi4py.futures.
    proc = _run_mpi(
        ["-n", "3", sys.executable, "-m", "mpi4py.futures", str(SCRIPT), "dask", str(tmp_path)], tmp_path
    )
    assert proc.returncode != 0
    assert "use ClusterSpec(kind='mpi', mpi_mode='futures')" in proc.stdout


_RANK_VARS = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


@pytest.mark.parametrize("mode", ["dask", "futures"])
def test_mpi_outside_mpiexec_is_refused(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    for var in (*_RANK_VARS, "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ClusterError, match="mpiexec -n"):
        with open_executor(ClusterSpec(kind="mpi", mpi_mode=mode)):
            pass  # pragma: no cover


def test_mpi_without_mpiexec_on_the_path_names_the_program(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in (*_RANK_VARS, "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no mpiexec
    with pytest.raises(MissingProgramError) as err:
        preflight(ClusterSpec(kind="mpi"))
    msg = str(err.value)
    assert "\n" not in msg
    assert "--cluster mpi needs the MPI program 'mpiexec', which is not on the PATH" in msg
    assert 'pip install "stokesflow[mpich]"' in msg and "module load" in msg and "mpiexec -n 4" in msg


def test_mpi_tests_skip_on_a_developer_machine_and_fail_on_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from conftest import missing_for_mpi, skip_or_fail_on_ci

    monkeypatch.setenv("PATH", str(tmp_path))
    assert "the program mpiexec" in missing_for_mpi()
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="mpiexec not found"):
        skip_or_fail_on_ci("mpiexec not found")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="mpiexec not found; CI must run this test"):
        skip_or_fail_on_ci("mpiexec not found")


def test_client_rank() -> None:
    assert client_rank(ClusterSpec(kind="mpi")) == 1
    assert client_rank(ClusterSpec(kind="mpi", mpi_mode="futures")) == 0
    assert client_rank(ClusterSpec(kind="local")) is None
