"""``kind="slurm"`` and ``kind="pbs"``: Dask workers submitted as batch jobs (dask-jobqueue).

The program (the Dask scheduler and client) runs where it is started, on a
login node or inside a small batch job; each worker job runs
``python -m distributed.cli.dask_worker <scheduler> ...`` on a compute node.

Walltime safety: every worker gets ``--lifetime <L> --lifetime-stagger <S>``
with ``L`` a few minutes below the walltime (:func:`stokesflow.clusters.spec.worker_lifetime`).
At its lifetime a worker retires gracefully: the scheduler moves its data to
other workers and reschedules its task, the worker process exits, the job
ends, and the adaptive cluster submits a replacement.  ``--lifetime-restart``
is deliberately *not* used: it restarts the worker inside the same job, which
the batch system then kills at the walltime anyway.
"""

from __future__ import annotations

import logging
from typing import Any

from stokesflow.clusters.base import require
from stokesflow.clusters.dask_executor import DaskExecutor, _dashboard_kwargs
from stokesflow.clusters.spec import ClusterError, ClusterSpec, worker_lifetime

__all__ = ["job_kwargs", "job_script", "open_jobqueue"]

# dask-jobqueue fills this in for cluster.job_script() before its scheduler
# has an address; job_script() here shows the same placeholder.
SCHEDULER_PLACEHOLDER = "tcp://<insert-scheduler-address-here>:8786"
JOB_NAME = "stokesflow-worker"
DRIVER_JOB_NAME = "stokesflow"


def _classes(kind: str) -> tuple[Any, Any]:
    dj = require("dask_jobqueue", kind)
    if kind == "slurm":
        return dj.SLURMCluster, dj.SLURMCluster.job_cls
    if kind == "pbs":
        return dj.PBSCluster, dj.PBSCluster.job_cls
    raise ClusterError(
        f"job scripts exist for kind 'slurm' and 'pbs' only, not {kind!r}"
    )


def total_workers(spec: ClusterSpec) -> int:
    """Workers of a ``slurm``/``pbs`` spec: ``spec.workers``, default one job's worth."""
    return spec.workers or spec.processes_per_job


def job_kwargs(spec: ClusterSpec, *, job_name: str = JOB_NAME) -> dict[str, Any]:
    """Keyword arguments for ``SLURMCluster`` / ``PBSCluster`` (the per-job part).

    ``None`` values (and empty directive/prologue lists) leave the site's
    dask-jobqueue configuration (``~/.config/dask/jobqueue.yaml``) in charge;
    the lifetime flags are appended to the configured worker arguments.
    """
    import dask

    lifetime, stagger = worker_lifetime(spec.walltime, spec.lifetime)
    site_args = list(dask.config.get(f"jobqueue.{spec.kind}.worker-extra-args", None) or [])
    return {
        "queue": spec.queue,
        "account": spec.account,
        "walltime": spec.walltime,
        "cores": spec.cores_per_job,
        "processes": spec.processes_per_job,
        "memory": spec.memory_per_job,
        # Empty: keep the site's configured directives / prologue.
        "job_extra_directives": list(spec.job_extra_directives) or None,
        "job_script_prologue": list(spec.job_script_prologue) or None,
        "worker_extra_args": site_args + ["--lifetime", lifetime, "--lifetime-stagger", stagger],
        "local_directory": spec.local_directory,
        "interface": spec.interface,
        "job_name": job_name,
        "nanny": True,
    }


def job_script(spec: ClusterSpec, command: str | None = None) -> str:
    """The batch script dask-jobqueue submits for one worker job, without submitting it.

    Needs no batch system and starts no scheduler: the text is built by the
    dask-jobqueue job class with the scheduler address placeholder that
    ``cluster.job_script()`` shows before the cluster starts.

    Parameters
    ----------
    spec : ClusterSpec
        A ``slurm`` or ``pbs`` spec.
    command : str, optional
        Replace the dask-worker line by this command, keeping the directives
        (job name ``stokesflow``) and prologue: e.g.
        ``"stokesflow invert obs.h5 --cluster slurm"`` to run the driver
        itself as a batch job with the same resources as one worker job.

    Returns
    -------
    str
        Shebang, ``#SBATCH``/``#PBS`` directives (queue, account, walltime,
        cores, memory, extra directives), prologue lines, and the worker
        command with ``--lifetime``/``--lifetime-stagger``.

    Raises
    ------
    ClusterError
        For another kind; MissingDependencyError without dask-jobqueue.
    """
    if spec.kind not in ("slurm", "pbs"):
        raise ClusterError(
            f"job_script() needs ClusterSpec(kind='slurm') or kind='pbs', got kind={spec.kind!r}"
        )
    _, job_cls = _classes(spec.kind)
    name = JOB_NAME if command is None else DRIVER_JOB_NAME
    job = job_cls(scheduler=SCHEDULER_PLACEHOLDER, name="dummy-name", **job_kwargs(spec, job_name=name))
    if command is None:
        return job.job_script()
    prologue = "\n".join(line for line in spec.job_script_prologue if line)
    parts = [job.shebang, "", job.job_header]
    if prologue:
        parts.append(prologue)
    parts.append(command)
    return "\n".join(parts) + "\n"


def open_jobqueue(spec: ClusterSpec) -> DaskExecutor:
    """Start a SLURMCluster or PBSCluster scheduler here and request worker jobs.

    ``spec.adapt``: ``cluster.adapt(minimum=spec.minimum_workers,
    maximum=workers)``, so jobs are submitted while tasks wait and retired
    workers are replaced; otherwise ``cluster.scale(workers)``.  Does not wait
    for the jobs to start (they may queue for hours); tasks wait for them.
    """
    cluster_cls, _ = _classes(spec.kind)
    n = total_workers(spec)
    dash = _dashboard_kwargs(spec, "")
    cluster = cluster_cls(
        **job_kwargs(spec),
        scheduler_options={"dashboard_address": dash["dashboard_address"], "dashboard": dash["dashboard"]},
        silence_logs=logging.WARNING,
    )
    try:
        from distributed import Client

        if spec.adapt:
            cluster.adapt(minimum=spec.minimum_workers, maximum=n)
        else:
            cluster.scale(n)
        client = Client(cluster, set_as_default=False)
    except BaseException:
        cluster.close()
        raise
    return DaskExecutor(
        client,
        kind=spec.kind,
        planned_workers=n,
        retries=spec.retries,
        cluster=cluster,
        extra_info={"job_script": cluster.job_script(), "adapt": spec.adapt},
    )
