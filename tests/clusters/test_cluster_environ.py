"""The worker processes' environment (clusters.environ): added to Dask's pre-spawn environment and to the
batch jobs' scripts, unless the site or the user set the variable already."""

from __future__ import annotations

import dask
import distributed  # noqa: F401 - its configuration defaults
import pytest

from stokesflow.clusters import ClusterSpec, job_script
from stokesflow.clusters.environ import WORKER_ENVIRON, worker_environ, worker_exports

KEY = "distributed.nanny.pre-spawn-environ"
NAME = "MALLOC_MMAP_THRESHOLD_"


def test_added_to_dasks_pre_spawn_environment_only_inside_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NAME, raising=False)
    before = dict(dask.config.get(KEY))
    with worker_environ():
        inside = dict(dask.config.get(KEY))
    assert inside == {**before, **WORKER_ENVIRON} and inside[NAME] == str(32 << 20)
    assert "MALLOC_TRIM_THRESHOLD_" in inside  # Dask's own stays
    assert dict(dask.config.get(KEY)) == before


@pytest.mark.parametrize("where", ["os.environ", "dask config", "dask config None"])
def test_a_value_set_by_the_site_or_the_user_wins(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NAME, raising=False)
    configured = dict(dask.config.get(KEY))
    if where == "os.environ":
        monkeypatch.setenv(NAME, "1048576")
    else:
        configured[NAME] = "1048576" if where == "dask config" else None
    with dask.config.set({KEY: configured}):
        with worker_environ():
            assert dict(dask.config.get(KEY)) == configured
        assert worker_exports() == []
        assert NAME not in job_script(ClusterSpec(kind="slurm"))


def test_batch_jobs_export_it_before_the_prologue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NAME, raising=False)
    assert worker_exports({}) == [f"export {NAME}={32 << 20}"]
    for kind in ("slurm", "pbs"):
        lines = job_script(ClusterSpec(kind=kind, job_script_prologue=("module load python",))).splitlines()
        assert lines.index(f"export {NAME}={32 << 20}") + 1 == lines.index("module load python")
    # without a given prologue, the site's configured one still follows the export
    with dask.config.set({"jobqueue.slurm.job-script-prologue": ["source site.sh"]}):
        lines = job_script(ClusterSpec(kind="slurm")).splitlines()
    assert lines.index(f"export {NAME}={32 << 20}") + 1 == lines.index("source site.sh")
    # the driver's own job (a command) is not a worker: no export
    assert NAME not in job_script(ClusterSpec(kind="slurm"), command="stokesflow invert -i a.h5 -o b.h5")
