"""slurm/pbs job scripts, checked as text with no batch system present."""

from __future__ import annotations

import re

import pytest

from stokesflow.clusters import ClusterError, ClusterSpec, job_script

SLURM = ClusterSpec(
    kind="slurm",
    queue="regular",
    account="abc123",
    walltime="02:00:00",
    cores_per_job=8,
    processes_per_job=4,
    memory_per_job="16GiB",
    workers=16,
    job_extra_directives=("--constraint=haswell",),
    job_script_prologue=("module load python", "source venv/bin/activate"),
    local_directory="$TMPDIR",
)

PBS = ClusterSpec(
    kind="pbs",
    queue="workq",
    account="P48500028",
    walltime="00:30:00",
    cores_per_job=4,
    memory_per_job="8GiB",
    job_extra_directives=("-m abe",),
    job_script_prologue=("module load python",),
)


def _worker_line(script: str) -> str:
    lines = [line for line in script.splitlines() if "distributed.cli.dask_worker" in line]
    assert len(lines) == 1, script
    return lines[0]


def test_slurm_directives() -> None:
    script = job_script(SLURM)
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for directive in (
        "#SBATCH -J stokesflow-worker",
        "#SBATCH -p regular",
        "#SBATCH -A abc123",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=16G",  # dask-jobqueue writes GiB as SLURM's "G"
        "#SBATCH -t 02:00:00",
        "#SBATCH --constraint=haswell",
    ):
        assert directive in lines, f"{directive!r} missing from:\n{script}"
    # Prologue after the directives, before the worker command.
    i_last_directive = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    i_module = lines.index("module load python")
    i_source = lines.index("source venv/bin/activate")
    i_worker = lines.index(_worker_line(script))
    assert i_last_directive < i_module < i_source < i_worker


def test_slurm_worker_command() -> None:
    cmd = _worker_line(job_script(SLURM))
    # 16 GiB and 8 cores shared by 4 worker processes.
    assert "--nworkers 4" in cmd and "--nthreads 2" in cmd
    assert "--memory-limit 4.00GiB" in cmd
    assert "--nanny" in cmd
    assert "--local-directory $TMPDIR" in cmd
    # 2 h walltime: retire 6 min early (5 %), +- 2 min.
    assert re.search(r"--lifetime 114m --lifetime-stagger 2m(\s|$)", cmd), cmd
    assert "--lifetime-restart" not in cmd  # would restart inside the dying job
    assert "tcp://<insert-scheduler-address-here>:8786" in cmd


def test_pbs_directives_and_worker_command() -> None:
    script = job_script(PBS)
    lines = script.splitlines()
    for directive in (
        "#PBS -N stokesflow-worker",
        "#PBS -q workq",
        "#PBS -A P48500028",
        "#PBS -l select=1:ncpus=4:mem=8192MB",
        "#PBS -l walltime=00:30:00",
        "#PBS -m abe",
    ):
        assert directive in lines, f"{directive!r} missing from:\n{script}"
    assert lines.index("module load python") < lines.index(_worker_line(script))
    cmd = _worker_line(script)
    assert "--nthreads 4" in cmd and "--memory-limit 8.00GiB" in cmd
    assert re.search(r"--lifetime 25m --lifetime-stagger 2m(\s|$)", cmd), cmd


def test_explicit_lifetime() -> None:
    spec = ClusterSpec(kind="slurm", walltime="01:00:00", lifetime="50m")
    assert "--lifetime 50m --lifetime-stagger 2m" in _worker_line(job_script(spec))


def test_driver_command_script() -> None:
    script = job_script(SLURM, command="stokesflow invert obs.h5 --cluster slurm")
    lines = script.splitlines()
    assert "#SBATCH -J stokesflow" in lines
    assert "#SBATCH -p regular" in lines and "#SBATCH -t 02:00:00" in lines
    assert lines[-1] == "stokesflow invert obs.h5 --cluster slurm"
    assert "module load python" in lines
    assert "dask_worker" not in script


def test_same_text_as_dask_jobqueue_cluster() -> None:
    # job_script() builds without a scheduler; a real SLURMCluster (scheduler
    # started here, no job submitted) must produce the same script.
    from dask_jobqueue import SLURMCluster

    from stokesflow.clusters.jobqueue import SCHEDULER_PLACEHOLDER, job_kwargs

    with SLURMCluster(**job_kwargs(SLURM), scheduler_options={"dashboard_address": "127.0.0.1:0"}) as cluster:
        real = cluster.job_script().replace(cluster.scheduler_address, SCHEDULER_PLACEHOLDER)
    assert real == job_script(SLURM)


@pytest.mark.parametrize("kind", ["local", "serial", "mpi"])
def test_job_script_needs_a_batch_kind(kind: str) -> None:
    with pytest.raises(ClusterError, match="needs ClusterSpec\\(kind='slurm'\\)"):
        job_script(ClusterSpec(kind=kind))


def test_worker_resources_reach_the_worker_command() -> None:
    from dataclasses import replace

    from stokesflow.clusters.jobqueue import job_kwargs

    args = job_kwargs(replace(SLURM, worker_resources=("GPU=1",)))["worker_extra_args"]
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert "--resources" not in job_kwargs(SLURM)["worker_extra_args"]
