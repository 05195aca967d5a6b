"""ClusterSpec validation, walltime/lifetime arithmetic, mpi_rank, missing packages."""

from __future__ import annotations

import sys

import pytest

from stokesflow.clusters import (
    ClusterError,
    ClusterSpec,
    MissingDependencyError,
    job_script,
    mpi_rank,
    open_executor,
)
from stokesflow.clusters.spec import parse_walltime, worker_lifetime


def test_defaults() -> None:
    spec = ClusterSpec()
    assert spec.kind == "local" and spec.workers is None and spec.retries == 2
    assert spec.mpi_mode == "dask" and spec.threads_per_worker == 1


def test_from_mapping_round_trip_and_lists() -> None:
    table = {
        "kind": "slurm",
        "workers": 8,
        "queue": "regular",
        "job_extra_directives": ["--constraint=haswell"],
        "job_script_prologue": ["module load python"],
    }
    spec = ClusterSpec.from_mapping(table)
    assert spec.job_extra_directives == ("--constraint=haswell",)
    assert spec.job_script_prologue == ("module load python",)
    assert ClusterSpec.from_mapping(spec.to_mapping()) == spec


def test_from_mapping_rejects_unknown_keys_listing_valid_ones() -> None:
    with pytest.raises(ClusterError) as err:
        ClusterSpec.from_mapping({"kind": "local", "n_workers": 4, "qeue": "x"})
    msg = str(err.value)
    assert "'n_workers'" in msg and "'qeue'" in msg
    for valid in ("workers", "queue", "walltime", "mpi_mode", "retries"):
        assert valid in msg


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"kind": "kubernetes"}, "choose one of serial, local, mpi, slurm, pbs, address"),
        ({"workers": 0}, "workers must be an integer >= 1, got 0"),
        ({"workers": "4"}, "workers must be an integer >= 1, got '4'"),
        ({"threads_per_worker": True}, "threads_per_worker must be an integer"),
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"memory_limit": "lots"}, "memory_limit='lots' is not a memory size"),
        ({"mpi_mode": "mpi4py"}, "choose one of dask, futures"),
        ({"kind": "address"}, "needs address='tcp://host:port'"),
        ({"kind": "slurm", "walltime": "1 hour"}, "walltime '1 hour' is not a batch walltime"),
        ({"kind": "slurm", "walltime": "01:00:00", "lifetime": "2h"}, "is not shorter than walltime"),
        ({"kind": "slurm", "cores_per_job": 2, "processes_per_job": 4}, "processes_per_job=4 exceeds"),
        ({"kind": "pbs", "workers": 2, "minimum_workers": 3}, "minimum_workers=3 exceeds workers=2"),
        ({"job_script_prologue": "module load x"}, "sequence of strings"),
        ({"connect_timeout": 0}, "connect_timeout must be a positive number"),
        ({"worker_resources": ("GPU",)}, "entry 'GPU' is not NAME=AMOUNT"),
        ({"worker_resources": ("GPU=0",)}, "entry 'GPU=0' is not NAME=AMOUNT with a positive amount"),
    ],
)
def test_invalid_values_are_named(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ClusterError) as err:
        ClusterSpec(**kwargs)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("01:00:00", 3600),
        ("00:30:00", 1800),
        ("48:00:00", 172800),
        ("1-12:00:00", 129600),
        ("2-06", 194400),  # SLURM D-HH
        ("90", 5400),  # SLURM: minutes
        ("10:30", 630),  # SLURM: MM:SS
    ],
)
def test_parse_walltime(text: str, seconds: float) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize(
    ("walltime", "lifetime", "expected"),
    [
        # margin 5 % of the walltime, at least 5 min, at most 30 min, at most half.
        ("01:00:00", None, ("55m", "2m")),
        ("02:00:00", None, ("114m", "2m")),
        ("24:00:00", None, ("1410m", "2m")),
        ("00:10:00", None, ("5m", "2m")),
        ("00:04:00", None, ("2m", "1m")),
        # explicit lifetime; the stagger shrinks to half the remaining margin
        ("01:00:00", "55m", ("55m", "2m")),
        ("01:00:00", "58m", ("58m", "1m")),
        ("01:00:00", "3000s", ("50m", "2m")),
    ],
)
def test_worker_lifetime(walltime: str, lifetime: str | None, expected: tuple[str, str]) -> None:
    assert worker_lifetime(walltime, lifetime) == expected


@pytest.mark.parametrize("var", ["PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"])
def test_mpi_rank_from_environment(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    for v in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        monkeypatch.delenv(v, raising=False)
    assert mpi_rank() is None
    monkeypatch.setenv(var, "3")
    assert mpi_rank() == 3


def test_importing_clusters_does_not_import_mpi() -> None:
    import subprocess

    code = (
        "import sys, clusters; "
        "from clusters import ClusterSpec, mpi_rank; mpi_rank(); ClusterSpec(kind='mpi'); "
        "print(sorted(m for m in sys.modules if m.startswith(('mpi4py', 'dask_mpi', 'dask_jobqueue', 'distributed'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# Test doubles for an uninstalled package: a None entry in sys.modules makes
# `import name` raise ImportError, as it would without the package.


def test_missing_dask_jobqueue_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "stokesflow\[hpc\]"') as err:
        job_script(ClusterSpec(kind="slurm"))
    assert "dask-jobqueue" in str(err.value)
    assert isinstance(err.value, ClusterError)


def test_missing_dask_mpi_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask_mpi", None)
    monkeypatch.setenv("PMI_RANK", "0")  # pretend to be under mpiexec
    import stokesflow.clusters.mpi
    monkeypatch.setattr(stokesflow.clusters.mpi, "_opened", False)
    with pytest.raises(MissingDependencyError, match=r'pip install "stokesflow\[mpi\]"') as err:
        with open_executor(ClusterSpec(kind="mpi")):
            pass  # pragma: no cover
    assert "dask-mpi" in str(err.value)


def test_open_executor_needs_a_spec() -> None:
    with pytest.raises(ClusterError, match="needs a ClusterSpec"):
        with open_executor({"kind": "serial"}):  # type: ignore[arg-type]
            pass  # pragma: no cover


def test_worker_resources_from_a_string_or_a_list() -> None:
    assert ClusterSpec(worker_resources="GPU=1, MEM=2e9").resources() == {"GPU": 1.0, "MEM": 2e9}
    assert ClusterSpec.from_mapping({"worker_resources": ["GPU=2"]}).resources() == {"GPU": 2.0}
    assert ClusterSpec().resources() == {}
