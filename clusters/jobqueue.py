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
import re
import signal
import threading
import time
from typing import Any, NamedTuple

from stokesflow.clusters.base import require, require_program
from stokesflow.clusters.dask_executor import DaskExecutor, _dashboard_kwargs
from stokesflow.clusters.spec import ClusterError, ClusterSpec, JobSubmissionError, worker_lifetime

__all__ = ["check_programs", "job_kwargs", "job_script", "open_jobqueue"]

# dask-jobqueue fills this in for cluster.job_script() before its scheduler
# has an address; job_script() here shows the same placeholder.
SCHEDULER_PLACEHOLDER = "tcp://<insert-scheduler-address-here>:8786"
JOB_NAME = "stokesflow-worker"
DRIVER_JOB_NAME = "stokesflow"

log = logging.getLogger(__name__)

class _BatchSystem(NamedTuple):
    """What the messages about one batch system say."""

    name: str
    #: Submit and cancel programs (those of dask-jobqueue's SLURMJob / PBSJob).
    programs: tuple[str, str]
    #: How to get the programs.
    remedy: str
    #: How to look at jobs ``{ids}``.
    inspect: str


_SYSTEMS: dict[str, _BatchSystem] = {
    "slurm": _BatchSystem(
        "SLURM", ("sbatch", "scancel"),
        "run on a login node of a SLURM cluster or load its module (module load slurm)",
        "`squeue -j {ids}` and the job output slurm-<id>.out",
    ),
    "pbs": _BatchSystem(
        "PBS", ("qsub", "qdel"),
        "run on a login node of a PBS/Torque cluster or load its module (module load pbs)",
        "`qstat {ids}` and the job output files <name>.o<id> / <name>.e<id>",
    ),
}


def _import_dask_jobqueue(kind: str) -> Any:
    """Import dask_jobqueue without letting it take over Ctrl-C.

    ``dask_jobqueue.runner`` installs ``signal(SIGINT, lambda *_: sys.exit())``
    when imported: Ctrl-C would then exit 0 (or fail in a close path)
    instead of raising ``KeyboardInterrupt`` in the driver.  The handler
    found before the import is put back.
    """
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    try:
        return require("dask_jobqueue", kind)
    finally:
        if main and before is not None and signal.getsignal(signal.SIGINT) is not before:
            signal.signal(signal.SIGINT, before)


def _classes(kind: str) -> tuple[Any, Any]:
    dj = _import_dask_jobqueue(kind)
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


# dask-jobqueue's error for a submit command that exited non-zero (Job._call).
_CALL_ERROR = re.compile(r"Exit code: (?P<code>-?\d+)\s*Command:.*?stdout:(?P<out>.*?)stderr:(?P<err>.*)$", re.S)


def _describe_submission_error(exc: BaseException, program: str) -> str:
    """``"sbatch exited with code 1: sbatch: error: ..."`` on one line, from dask-jobqueue's error."""
    m = _CALL_ERROR.search(str(exc))
    if m is None:
        return " ".join(f"{type(exc).__name__}: {exc}".split())
    said = " ".join((m["err"].strip() or m["out"].strip() or "(no output)").split())
    return f"{program} exited with code {m['code']}: {said}"


class _JobWatch:
    """What the worker jobs of one cluster did, and the check the executor runs while tasks wait.

    The job class of :func:`_watched_job_class` writes here from the
    cluster's event loop; :meth:`check` runs in the driver (see
    :class:`stokesflow.clusters.dask_executor.DaskExecutor`).
    """

    def __init__(self, kind: str, connect_timeout: float) -> None:
        self.kind = kind
        self.connect_timeout = connect_timeout
        self.failure: str | None = None
        self.job_ids: list[str] = []
        self.first_submit: float | None = None
        self.cluster: Any = None
        self._seen_worker = False
        self._warned = False

    def submitted(self, job_id: str) -> None:
        if self.first_submit is None:
            self.first_submit = time.monotonic()
        self.job_ids.append(str(job_id))

    def failed(self, exc: BaseException) -> JobSubmissionError:
        """Record a refused submission; returns the error (one line) to raise."""
        system = _SYSTEMS[self.kind]
        message = (
            f"--cluster {self.kind}: the {system.name} submission of a worker job failed: "
            f"{_describe_submission_error(exc, system.programs[0])}; check queue, account, walltime, "
            "cores_per_job and memory_per_job against what the site allows (print the job script with "
            "stokesflow.clusters.job_script(spec)), or choose another --cluster"
        )
        if self.failure is None:
            self.failure = message
        return JobSubmissionError(message)

    def check(self) -> None:
        """Raise :class:`JobSubmissionError` if a job was refused; warn once if no worker came.

        No worker ``connect_timeout`` seconds after the first job was
        accepted is only a warning: jobs may wait in the queue for hours.
        """
        if self.failure is not None:
            raise JobSubmissionError(self.failure)
        if self._seen_worker or self._warned or self.first_submit is None or self.cluster is None:
            return
        if self.cluster.scheduler_info.get("workers"):
            self._seen_worker = True
        elif time.monotonic() - self.first_submit > self.connect_timeout:
            self._warned = True
            how = _SYSTEMS[self.kind].inspect
            ids = " ".join(self.job_ids)
            log.warning(
                "no worker has connected %.0f s after submitting job(s) %s: they may still wait in the "
                "queue; check %s (an error there, e.g. a Python environment missing in the job, means "
                "they will never connect: fix job_script_prologue)",
                self.connect_timeout, ids, how.format(ids=ids),
            )


def _watched_job_class(job_cls: Any, watch: _JobWatch) -> Any:
    """``job_cls`` reporting submissions to ``watch``; a refused job is left "failed".

    dask-jobqueue only logs a failed submission (a traceback from the event
    loop) and then waits for that worker for ever; the driver learns of it
    through ``watch``.  The failed job's status is set to ``failed`` because
    ``SpecCluster._close`` asserts that no job it created is still
    ``created`` (an ``AssertionError`` on close otherwise).
    """
    from distributed.core import Status

    class WatchedJob(job_cls):  # type: ignore[misc, valid-type]
        async def start(self) -> None:
            try:
                await super().start()
            except Exception as exc:
                self.status = Status.failed
                raise watch.failed(exc) from exc
            watch.submitted(self.job_id)

    WatchedJob.__name__ = WatchedJob.__qualname__ = f"Watched{job_cls.__name__}"
    return WatchedJob


class _DropSubmissionTracebacks(logging.Filter):
    """Drop the event loop's traceback for a refused job: the driver raises it as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, JobSubmissionError)


_TRACEBACK_FILTER = _DropSubmissionTracebacks()


def check_programs(kind: str) -> None:
    """Raise :class:`MissingProgramError` unless the batch system's submit and cancel programs are on the PATH.

    Parameters
    ----------
    kind : str
        ``"slurm"`` (``sbatch``, ``scancel``) or ``"pbs"`` (``qsub``, ``qdel``).
    """
    system = _SYSTEMS[kind]
    for program in system.programs:
        require_program(program, kind, system=system.name, remedy=system.remedy)


def open_jobqueue(spec: ClusterSpec) -> DaskExecutor:
    """Start a SLURMCluster or PBSCluster scheduler here and request worker jobs.

    ``spec.adapt``: ``cluster.adapt(minimum=spec.minimum_workers,
    maximum=workers)``, so jobs are submitted while tasks wait and retired
    workers are replaced; otherwise ``cluster.scale(workers)``.  Does not wait
    for the jobs to start (they may queue for hours); tasks wait for them.

    Raises
    ------
    MissingProgramError
        ``sbatch``/``scancel`` (``qsub``/``qdel``) not on the PATH, before
        anything starts.
    JobSubmissionError
        Later, from the executor's ``as_completed``, when the batch system
        refused a worker job.
    """
    check_programs(spec.kind)
    cluster_cls, job_cls = _classes(spec.kind)
    n = total_workers(spec)
    dash = _dashboard_kwargs(spec, "")
    watch = _JobWatch(spec.kind, spec.connect_timeout)
    logging.getLogger("tornado.application").addFilter(_TRACEBACK_FILTER)
    cluster = cluster_cls(
        **job_kwargs(spec),
        job_cls=_watched_job_class(job_cls, watch),
        scheduler_options={"dashboard_address": dash["dashboard_address"], "dashboard": dash["dashboard"]},
        silence_logs=logging.WARNING,
    )
    watch.cluster = cluster
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
        watch=watch.check,
    )
