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
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any, NamedTuple

from stokesflow.clusters.base import require, require_program
from stokesflow.clusters.dask_executor import DaskExecutor, _dashboard_kwargs
from stokesflow.clusters.environ import worker_exports
from stokesflow.clusters.spec import (
    ClusterError,
    ClusterSpec,
    JobSubmissionError,
    WorkersUnavailableError,
    worker_lifetime,
)

__all__ = ["check_programs", "job_kwargs", "job_script", "open_jobqueue", "test_submission"]

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

    ``None`` values (and empty directive lists) leave the site's
    dask-jobqueue configuration (``~/.config/dask/jobqueue.yaml``) in charge;
    the lifetime flags are appended to the configured worker arguments, and the
    worker environment's ``export`` lines (:func:`stokesflow.clusters.environ.worker_exports`)
    come before the given prologue, or else the configured one.
    """
    import dask

    lifetime, stagger = worker_lifetime(spec.walltime, spec.lifetime)
    site_args = list(dask.config.get(f"jobqueue.{spec.kind}.worker-extra-args", None) or [])
    # the worker processes' environment (clusters.environ) before the given or configured prologue
    prologue = worker_exports() + (list(spec.job_script_prologue)
                                   or list(dask.config.get(f"jobqueue.{spec.kind}.job-script-prologue", None) or []))
    return {
        "queue": spec.queue,
        "account": spec.account,
        "walltime": spec.walltime,
        "cores": spec.cores_per_job,
        "processes": spec.processes_per_job,
        "memory": spec.memory_per_job,
        # Empty: keep the site's configured directives / prologue.
        "job_extra_directives": list(spec.job_extra_directives) or None,
        "job_script_prologue": prologue or None,
        "worker_extra_args": site_args + ["--lifetime", lifetime, "--lifetime-stagger", stagger]
        + (["--resources", " ".join(f"{k}={v:g}" for k, v in spec.resources().items())] if spec.worker_resources else []),
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


def _refusal_message(kind: str, said: str) -> str:
    """The one-line error for a worker job the batch system refused; ``said`` is its own message."""
    system = _SYSTEMS[kind]
    return (
        f"--cluster {kind}: the {system.name} submission of a worker job failed: {said}; check queue, "
        "account, walltime, cores_per_job and memory_per_job against what the site allows (print the "
        "job script with stokesflow.clusters.job_script(spec)), or choose another --cluster"
    )


def _batch_states(kind: str, job_ids: list[str]) -> dict[str, str]:
    """State of each job in the batch system, e.g. ``{"12": "PENDING (Resources)"}``.

    One ``squeue`` (``qstat`` for PBS) call for all jobs of this user; a job
    it does not list has ended (finished, cancelled or failed).  Empty when
    the program cannot be run or fails.
    """
    if not job_ids:
        return {}
    if kind == "slurm":
        cmd = ["squeue", "-h", "-o", "%i %T %r", "-u", str(os.getuid())]
    else:
        cmd = ["qstat"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_STATE_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("cannot ask the batch system for job states (%s): %s", " ".join(cmd), exc)
        return {}
    if proc.returncode != 0:  # no listing to trust: say nothing about the jobs
        log.debug("%s exited with code %d: %s", " ".join(cmd), proc.returncode, proc.stderr.strip())
        return {}
    out = proc.stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        fields = line.split()
        if not fields:
            continue
        # PBS ids read "123.server"; SLURM's are plain numbers.
        job = fields[0].split(".")[0]
        if job not in job_ids:
            continue
        if kind == "slurm":
            reason = " ".join(fields[2:])
            found[job] = fields[1] + (f" ({reason})" if reason and reason != "None" else "")
        else:
            found[job] = f"state {fields[4]}" if len(fields) > 4 else " ".join(fields[1:])
    return {job: found.get(job, _GONE) for job in job_ids}


def _lost_worker_timeout() -> float:
    """distributed's ``deploy.lost-worker-timeout`` [s]: how long a cluster waits before replacing a lost worker."""
    import dask
    from dask.utils import parse_timedelta

    try:
        return float(parse_timedelta(dask.config.get("distributed.deploy.lost-worker-timeout", "15s")) or 0.0)
    except (TypeError, ValueError):
        return 15.0


# State of a job the batch system no longer lists.
_GONE = "no longer queued"
# Least seconds between two job-state queries of one cluster while no worker is connected.
_STATE_CHECK_MIN_S = 5.0

# Seconds allowed for one squeue/qstat or sbatch --test-only call.
_STATE_TIMEOUT_S = 30.0


class _JobWatch:
    """What the worker jobs of one cluster did, and the check the executor runs while tasks wait.

    The job class of :func:`_watched_job_class` writes here from the
    cluster's event loop; :meth:`check` and :meth:`summary` run in the
    driver (see :class:`stokesflow.clusters.dask_executor.DaskExecutor`).

    Parameters
    ----------
    kind : str
        ``"slurm"`` or ``"pbs"``.
    connect_timeout : float
        Seconds without a connected worker (after the first submission, or
        after the last worker was lost) before a warning; with ``adapt``
        false, losing every worker is an error after this time.
    start_timeout : float
        Seconds without a connected worker before :class:`WorkersUnavailableError`;
        0 waits for ever.
    adapt : bool
        Whether lost workers are replaced by new jobs.
    """

    def __init__(self, kind: str, connect_timeout: float, start_timeout: float = 0.0, adapt: bool = True) -> None:
        self.kind = kind
        self.connect_timeout = connect_timeout
        self.start_timeout = start_timeout
        self.adapt = adapt
        self.failure: str | None = None
        self.job_ids: list[str] = []
        self.first_submit: float | None = None
        self.cluster: Any = None
        self._seen_worker = False
        self._warned = False
        # Since when no worker is connected (None: one is), and whether one was lost.
        self._since: float | None = None
        self._lost = False
        self._last_state_check = float("-inf")

    def submitted(self, job_id: str) -> None:
        if self.first_submit is None:
            self.first_submit = time.monotonic()
        self.job_ids.append(str(job_id))

    def failed(self, exc: BaseException) -> JobSubmissionError:
        """Record a refused submission; returns the error (one line) to raise."""
        system = _SYSTEMS[self.kind]
        message = _refusal_message(self.kind, _describe_submission_error(exc, system.programs[0]))
        if self.failure is None:
            self.failure = message
        return JobSubmissionError(message)

    def _connected(self) -> list[str]:
        """Names of the workers connected now (the cluster's view, no round trip)."""
        workers = self.cluster.scheduler_info.get("workers", {}) if self.cluster is not None else {}
        return [str(w.get("name", addr)) for addr, w in dict(workers).items()]

    def _live_jobs(self) -> list[tuple[str, str]]:
        """``(name, job id)`` of every submitted job the cluster has not closed."""
        from distributed.core import Status

        jobs = []
        for name, job in list(getattr(self.cluster, "workers", {}).items()):
            job_id = getattr(job, "job_id", None)
            if job_id is not None and getattr(job, "status", None) not in (Status.closed, Status.failed):
                jobs.append((str(name), str(job_id)))
        return jobs

    def summary(self) -> str:
        """``"jobs: 2 pending, 1 running; workers: 1"`` (the cluster's view, no batch-system call).

        A job is *running* once one of its workers has connected and
        *pending* before (queued, or starting on its node).
        """
        if self.cluster is None:
            return "jobs: none submitted; workers: 0"
        names = self._connected()
        pending = running = 0
        for name, _ in self._live_jobs():
            if any(n == name or n.startswith(f"{name}-") for n in names):
                running += 1
            else:
                pending += 1
        return f"jobs: {pending} pending, {running} running; workers: {len(names)}"

    def _job_list(self) -> str:
        ids = [job_id for _, job_id in self._live_jobs()] or self.job_ids[-8:]
        states = _batch_states(self.kind, ids)
        if not ids:
            return "no job submitted"
        return ", ".join(f"job {job_id} {states.get(job_id, 'state unknown')}" for job_id in ids)

    def _check_jobs_alive(self, now: float) -> None:
        """Raise if every job submitted has left the queue although no worker ever connected.

        Nothing will connect then (the cluster still counts such jobs as
        running, so even ``adapt`` does not replace them): typically the job
        script failed before the worker started.  Asks the batch system at
        most every ``max(connect_timeout, 5 s)``.
        """
        if now - self._last_state_check < max(self.connect_timeout, _STATE_CHECK_MIN_S):
            return
        self._last_state_check = now
        ids = [job_id for _, job_id in self._live_jobs()]
        states = _batch_states(self.kind, ids)
        if not states or any(state != _GONE for state in states.values()):
            return
        system = _SYSTEMS[self.kind]
        listed = " ".join(ids)
        raise WorkersUnavailableError(
            f"--cluster {self.kind}: every worker job ({listed}) has left the {system.name} queue without a "
            f"worker connecting: cancelled, or the job script failed before the worker started; check "
            f"{system.inspect.format(ids=listed)} (an error there such as a missing Python environment: fix "
            "job_script_prologue)"
        )

    def check(self) -> None:
        """Raise if the cluster cannot deliver; warn once if no worker connected in time.

        Raises
        ------
        JobSubmissionError
            A worker job was refused.
        WorkersUnavailableError
            No worker connected ``start_timeout`` seconds after the first
            submission (or after the last worker was lost); every job left
            the queue without a worker ever connecting (checked from
            ``connect_timeout`` on); or, with ``adapt`` false, every worker
            was lost ``connect_timeout`` seconds ago.
        """
        if self.failure is not None:
            raise JobSubmissionError(self.failure)
        if self.first_submit is None or self.cluster is None:
            return
        now = time.monotonic()
        if self._connected():
            self._seen_worker = True
            self._since = None
            self._warned = False
            return
        if self._since is None:
            self._lost = self._seen_worker
            self._since = now if self._lost else self.first_submit
        waited = now - self._since
        system = _SYSTEMS[self.kind]
        ids = " ".join(job_id for _, job_id in self._live_jobs()) or " ".join(self.job_ids[-8:])
        how = system.inspect.format(ids=ids or "<id>")
        if self._lost and not self.adapt:
            if waited > self.connect_timeout:
                raise WorkersUnavailableError(
                    f"--cluster {self.kind}: every worker was lost (jobs ended: walltime, lifetime, "
                    f"scancel/qdel or a crash) and adapt=false submits no replacement; no worker for "
                    f"{waited:.0f} s (connect_timeout={self.connect_timeout:g} s); {self._job_list()}; "
                    f"check {how}; use -C adapt=true to replace lost workers"
                )
            return
        if not self._seen_worker and waited > self.connect_timeout:
            self._check_jobs_alive(now)
        what = "since the last worker was lost" if self._lost else "after submitting the first worker job"
        # A lost worker is replaced only after distributed's lost-worker
        # timeout (the time a Nanny restart is given to reconnect).
        grace = _lost_worker_timeout() if self._lost else 0.0
        if self.start_timeout and waited > self.start_timeout + grace:
            raise WorkersUnavailableError(
                f"--cluster {self.kind}: no worker connected {waited:.0f} s {what} "
                f"(start_timeout={self.start_timeout:g} s): {self._job_list()}; check {how} (a job that "
                "ended at once usually failed to start Python: fix job_script_prologue; a job still "
                "pending waits for resources: ask for less or use another queue); the jobs are "
                "cancelled; to wait longer set -C start_timeout=SECONDS (0 waits for ever)"
            )
        if not self._warned and waited > self.connect_timeout + grace:
            self._warned = True
            log.warning(
                "no worker connected %.0f s %s: %s; check %s (an error there, e.g. a Python environment "
                "missing in the job, means they will never connect: fix job_script_prologue); %s",
                waited, what, self._job_list(), how,
                f"the run stops after start_timeout={self.start_timeout:g} s" if self.start_timeout
                else "waiting for ever (start_timeout=0)",
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


# Scheduler messages of workers that retire at their lifetime or whose job
# ended: expected on a batch system, so they go to the debug log (-vv).
_RETIREMENT_CHATTER: tuple[str, ...] = (
    "Received heartbeat from unregistered worker",
    "Retiring worker",
    "Remove worker",
    "Removing worker",
    "Worker is already closed",
)


class _RetirementChatterToDebug(logging.Filter):
    """Re-log the scheduler's notes on retiring and vanished workers at debug level, here."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(text in message for text in _RETIREMENT_CHATTER):
            log.debug("%s: %s", record.name, message)
            return False
        return True


_RETIREMENT_FILTER = _RetirementChatterToDebug()


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


def test_submission(spec: ClusterSpec) -> None:
    """Ask SLURM whether it would accept the worker job, without submitting it (``sbatch --test-only``).

    A job that ``sbatch`` refuses (unknown partition or account, memory or
    cores no node has, a walltime above the partition's limit) then fails
    before the scheduler starts and before any chunk is dispatched, with
    ``sbatch``'s own message.  PBS has no such dry run: there the first
    refused submission raises from the executor's ``as_completed``.  If
    ``sbatch --test-only`` itself cannot run (a site wrapper without the
    option, a time-out), nothing is raised: the real submission decides.

    Raises
    ------
    JobSubmissionError
        ``sbatch --test-only`` exited with an error.
    """
    if spec.kind != "slurm":
        return
    script = job_script(spec)
    with tempfile.TemporaryDirectory(prefix="stokesflow-sbatch-") as folder:
        path = os.path.join(folder, "worker-job.sh")
        with open(path, "w", encoding="utf-8") as f:
            f.write(script)
        cmd = ["sbatch", "--test-only", path]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_STATE_TIMEOUT_S, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("sbatch --test-only could not run (%s); the first submission will tell", exc)
            return
    if proc.returncode != 0:
        said = " ".join((proc.stderr.strip() or proc.stdout.strip() or "(no output)").split())
        raise JobSubmissionError(
            _refusal_message(spec.kind, f"sbatch --test-only exited with code {proc.returncode}: {said}")
        )


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
        SLURM: before anything starts, when ``sbatch --test-only`` refuses the
        worker job (:func:`test_submission`); later (PBS, or a refusal that
        only the real submission shows), from the executor's ``as_completed``.
    WorkersUnavailableError
        From ``as_completed``: no worker connected within
        ``spec.start_timeout``, or every worker lost with ``adapt`` false
        (see :class:`_JobWatch`).
    """
    check_programs(spec.kind)
    cluster_cls, job_cls = _classes(spec.kind)
    test_submission(spec)
    n = total_workers(spec)
    dash = _dashboard_kwargs(spec, "")
    watch = _JobWatch(spec.kind, spec.connect_timeout, spec.start_timeout, spec.adapt)
    logging.getLogger("tornado.application").addFilter(_TRACEBACK_FILTER)
    logging.getLogger("distributed.scheduler").addFilter(_RETIREMENT_FILTER)
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
        summary=watch.summary,
    )
