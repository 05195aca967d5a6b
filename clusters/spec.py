"""Declarative description of where tasks run: :class:`ClusterSpec`.

A spec is a frozen dataclass; :meth:`ClusterSpec.from_mapping` builds one from
a configuration table (TOML) and rejects unknown keys with the list of valid
ones.  Every field is checked at construction, so a bad value fails when the
configuration is read, not minutes later on a batch node.

This module also holds the walltime arithmetic used for dask-jobqueue workers:
:func:`parse_walltime` and :func:`worker_lifetime`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KINDS",
    "MPI_MODES",
    "ClusterError",
    "ClusterSpec",
    "JobSubmissionError",
    "MissingDependencyError",
    "MissingProgramError",
    "SchedulerUnreachableError",
    "WorkersUnavailableError",
    "dask_duration",
    "parse_walltime",
    "worker_lifetime",
]

#: The executor kinds understood by :func:`stokesflow.clusters.open_executor`.
KINDS: tuple[str, ...] = ("serial", "local", "mpi", "slurm", "pbs", "address")
#: The communication schemes of Dask's scheduler addresses (``distributed.comm``); a bare
#: ``host:port`` is TCP.
_SCHEDULER_SCHEMES: tuple[str, ...] = ("tcp", "tls", "inproc", "ucx", "ws", "wss")

#: How ``kind="mpi"`` reaches its workers (see :mod:`stokesflow.clusters.mpi`).
MPI_MODES: tuple[str, ...] = ("dask", "futures")


class ClusterError(Exception):
    """Base exception of the ``clusters`` folder.

    Raised for an invalid :class:`ClusterSpec`, a missing optional dependency,
    a scheduler nobody answers at, or workers that do not arrive.
    """


class MissingDependencyError(ClusterError, ImportError):
    """An optional package needed by the requested cluster kind is missing."""


class MissingProgramError(ClusterError):
    """A program the requested cluster kind runs (``sbatch``, ``qsub``, ``mpiexec``) is not on the PATH.

    Raised when the executor is opened, before anything is submitted.
    """


class JobSubmissionError(ClusterError):
    """The batch system refused a worker job (``sbatch``/``qsub`` exited with an error)."""


class WorkersUnavailableError(ClusterError):
    """No worker of a ``slurm``/``pbs`` cluster connected within ``start_timeout``, every worker job ended
    without one connecting, or every worker was lost with ``adapt`` false.

    The message lists the worker jobs and their states in the batch system.
    """


class SchedulerUnreachableError(ClusterError, OSError):
    """No Dask scheduler answered at the given address within the timeout."""


# Seconds by which workers retire before the batch walltime: 5 % of the
# walltime, at least 5 min and at most 30 min, and never more than half of it.
_MARGIN_FRACTION = 0.05
_MARGIN_MIN_S = 300.0
_MARGIN_MAX_S = 1800.0
# Default --lifetime-stagger, shrunk for short lifetimes so that
# lifetime + stagger stays below the walltime.
_STAGGER_S = 120.0

_WALLTIME_RE = re.compile(
    r"^(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$"
)


def parse_walltime(walltime: str) -> float:
    """Convert a batch-system walltime to seconds.

    Parameters
    ----------
    walltime : str
        ``"HH:MM:SS"`` (PBS and SLURM), ``"D-HH:MM:SS"``, ``"D-HH:MM"``,
        ``"D-HH"`` or ``"HH:MM:SS"`` with hours above 24 (SLURM), ``"MM:SS"``
        or ``"MM"`` (SLURM: minutes).

    Returns
    -------
    float
        The walltime in seconds (> 0).

    Raises
    ------
    ClusterError
        If the text is not one of the forms above or is zero.
    """
    m = _WALLTIME_RE.match(str(walltime).strip())
    if m is None:
        raise ClusterError(
            f"walltime {walltime!r} is not a batch walltime: expected 'HH:MM:SS', "
            "'D-HH:MM:SS' or 'MM' (minutes), e.g. walltime='01:00:00'"
        )
    days = int(m["days"]) if m["days"] else 0
    parts = [int(p) for p in (m["a"], m["b"], m["c"]) if p is not None]
    if days:
        # SLURM: D-HH, D-HH:MM, D-HH:MM:SS
        parts = parts + [0] * (3 - len(parts))
        hours, minutes, seconds = parts
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:
        hours, minutes, seconds = 0, parts[0], parts[1]
    else:
        hours, minutes, seconds = 0, parts[0], 0
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ClusterError(f"walltime {walltime!r} is zero: give the job some time, e.g. '01:00:00'")
    return float(total)


def dask_duration(seconds: float) -> str:
    """A duration in the syntax of ``dask worker --lifetime`` (the clock form of
    :func:`stokesflow.orchestrator.progress.format_duration` is not accepted there).

    Parameters
    ----------
    seconds : float
        Duration in seconds.

    Returns
    -------
    str
        ``"55m"`` for whole minutes, otherwise whole seconds (``"150s"``).
    """
    s = int(round(seconds))
    if s % 60 == 0 and s > 0:
        return f"{s // 60}m"
    return f"{s}s"


def _parse_duration(text: str, field: str) -> float:
    from dask.utils import parse_timedelta

    try:
        value = parse_timedelta(text, default="s")
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterError(
            f"{field}={text!r} is not a duration: use e.g. '55m', '3300s' or '1h'"
        ) from exc
    if value is None or value <= 0:
        raise ClusterError(f"{field}={text!r} must be a positive duration, e.g. '55m'")
    return float(value)


def worker_lifetime(walltime: str, lifetime: str | None = None) -> tuple[str, str]:
    """Worker ``--lifetime`` and ``--lifetime-stagger`` for a batch walltime.

    A dask-jobqueue worker that reaches its lifetime retires gracefully (its
    data moves to other workers, its running task is rescheduled) and its job
    ends, so the adaptive cluster submits a replacement job.  Without it the
    batch system kills the worker at the walltime and its tasks count as
    failures (``KilledWorker`` after a few).

    Parameters
    ----------
    walltime : str
        Batch walltime, see :func:`parse_walltime`.
    lifetime : str or None
        Explicit lifetime (``"55m"``); ``None`` derives it as the walltime
        minus a margin of 5 % (at least 5 min, at most 30 min, at most half
        the walltime).

    Returns
    -------
    (str, str)
        Lifetime and stagger, e.g. ``("55m", "2m")`` for ``"01:00:00"``.  The
        stagger is 2 min, or half the margin when that is smaller, so that
        lifetime + stagger always ends before the walltime; never more than
        half the lifetime.

    Raises
    ------
    ClusterError
        If the lifetime is not shorter than the walltime.
    """
    wall_s = parse_walltime(walltime)
    if lifetime is None:
        margin = min(max(_MARGIN_FRACTION * wall_s, _MARGIN_MIN_S), _MARGIN_MAX_S, wall_s / 2)
        life_s = wall_s - margin
    else:
        life_s = _parse_duration(lifetime, "lifetime")
        margin = wall_s - life_s
        if margin <= 0:
            raise ClusterError(
                f"lifetime={lifetime!r} ({life_s:.0f} s) is not shorter than "
                f"walltime={walltime!r} ({wall_s:.0f} s): workers would be killed by the "
                "batch system before they retire; choose a lifetime a few minutes "
                "below the walltime or leave lifetime unset"
            )
    # Whole seconds, so the text round-trips exactly.
    life_s = float(int(life_s))
    # At most half the lifetime: a stagger above the lifetime would
    # let a worker retire at once (distributed draws lifetime +/- stagger).
    stagger_s = float(int(min(_STAGGER_S, margin / 2, life_s / 2)))
    return dask_duration(life_s), dask_duration(stagger_s) if stagger_s > 0 else "0s"


def _check_memory(value: str | None, field: str, *, allow_none: bool) -> None:
    if value is None:
        if allow_none:
            return
        raise ClusterError(f"{field} must be a memory size such as '4GiB', got None")
    from dask.utils import parse_bytes

    try:
        nbytes = parse_bytes(value)
    except (ValueError, TypeError) as exc:
        raise ClusterError(
            f"{field}={value!r} is not a memory size: use e.g. '1GiB', '4GB' or '512MiB'"
        ) from exc
    if nbytes <= 0:
        raise ClusterError(f"{field}={value!r} must be positive, e.g. '1GiB'")


@dataclass(frozen=True)
class ClusterSpec:
    """Where and how the tasks of a run are executed.

    Parameters
    ----------
    kind : str
        ``"serial"`` (in-process, for debugging), ``"local"`` (default; a
        Dask ``LocalCluster`` of worker processes), ``"mpi"`` (program started
        under ``mpiexec``), ``"slurm"`` / ``"pbs"`` (workers submitted as batch
        jobs through dask-jobqueue), ``"address"`` (an existing Dask scheduler).
    workers : int or None
        ``local``: worker processes (default: the CPUs usable by this
        process).  ``slurm``/``pbs``: total workers = jobs x
        ``processes_per_job`` (default: one job).  ``address``: ignored.
        ``mpi``: ignored, the ranks decide.
    threads_per_worker : int
        Threads per worker process (``local``, ``mpi``).  Keep 1 for numba
        kernels that use all of a core; for ``slurm``/``pbs`` the threads per
        worker are ``cores_per_job // processes_per_job``.
    memory_limit : str or None
        Memory per worker (``local``, ``mpi``), e.g. ``"2GiB"``; ``None`` lets
        Dask share the machine's memory among the workers.  The Nanny
        restarts a worker that goes beyond 95 % of it.
    address : str or None
        ``kind="address"``: scheduler address, e.g. ``"tcp://host:8786"``
        (``dask scheduler``, dask-kubernetes, a cloud cluster).
    queue, account : str or None
        Batch partition/queue and account (``-p``/``-A`` on SLURM,
        ``-q``/``-A`` on PBS).  ``None``: the site's dask-jobqueue
        configuration or the batch system's default.
    walltime : str
        Batch walltime per worker job, ``"HH:MM:SS"``.
    cores_per_job, processes_per_job : int
        CPUs requested per job and worker processes started in each.
    memory_per_job : str
        Memory requested per job, shared by its worker processes.
    job_extra_directives : tuple of str
        Extra ``#SBATCH`` / ``#PBS`` lines, without the prefix, e.g.
        ``("--constraint=haswell",)``.
    job_script_prologue : tuple of str
        Shell lines run before the worker starts (``module load``,
        ``source venv/bin/activate``).
    lifetime : str or None
        Worker lifetime, e.g. ``"55m"``; ``None`` derives it from the
        walltime (see :func:`worker_lifetime`).
    adapt : bool
        ``slurm``/``pbs``: scale the number of jobs with the work
        (``cluster.adapt(minimum=minimum_workers, maximum=workers)``); replaces
        workers that retire at their lifetime.  ``False``: a fixed
        ``cluster.scale(workers)``.
    minimum_workers : int
        Lower bound of the adaptive cluster.  ``address``: the number of
        workers (at least one) to wait for when connecting.
    local_directory : str or None
        Scratch directory of the workers (spilled data, worker files).
    retries : int
        How often a task that raised is run again (Dask: on any worker;
        ``mpi_mode="futures"``: in the same worker).  A task whose worker
        process died is rescheduled by Dask independently of this (up to
        ``distributed.scheduler.allowed-failures``, default 3, deaths).
        ``serial`` never retries, so errors show at once.
    mpi_mode : str
        ``kind="mpi"``: ``"dask"`` (default; dask-mpi with Nanny workers, a
        crashed worker is restarted and its task retried) or ``"futures"``
        (mpi4py.futures; no process spawning, lower overhead, but a worker
        that dies ends the whole job).
    interface : str or None
        Network interface for the scheduler and workers (``"ib0"``) on HPC
        (``slurm``, ``pbs``, ``mpi``).
    dashboard : bool
        Serve the Dask dashboard on a free port when bokeh is installed
        (never on the fixed port 8787, so several runs do not collide).
    connect_timeout : float
        Seconds to wait for a scheduler (``address``) before giving up;
        ``slurm``/``pbs``: seconds after the first job submission (or after
        the last worker was lost) without a connected worker before a warning
        lists the jobs and their batch states; with ``adapt=False``, losing
        every worker is an error after this time (no job replaces them).
    start_timeout : float
        ``slurm``/``pbs``: seconds after the first job submission (or after
        the last worker was lost) without a connected worker before the run
        stops with :class:`WorkersUnavailableError` (exit 2 on the command
        line), listing the jobs and their batch states.  ``0`` waits for ever
        (jobs may queue for hours on a busy machine).  Default one hour.
    worker_resources : tuple of str
        Abstract resources each worker offers, ``"NAME=AMOUNT"`` (Dask worker
        resources, e.g. ``("GPU=1",)``; a string ``"GPU=1 MEM=2"`` is split at
        spaces or commas).  ``local``, ``mpi`` (``mpi_mode="dask"``), ``slurm``
        and ``pbs`` start their workers with them; ``address``: start your
        workers with ``dask worker --resources "GPU=1"``.  Tasks that prefer a
        resource (training a network prefers ``GPU``) go to a worker offering
        it when there is one (:meth:`Executor.submit_preferring`).
    """

    kind: str = "local"
    workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str | None = None
    address: str | None = None
    queue: str | None = None
    account: str | None = None
    walltime: str = "01:00:00"
    cores_per_job: int = 1
    processes_per_job: int = 1
    memory_per_job: str = "4GiB"
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()
    lifetime: str | None = None
    adapt: bool = True
    minimum_workers: int = 0
    local_directory: str | None = None
    retries: int = 2
    mpi_mode: str = "dask"
    interface: str | None = None
    dashboard: bool = True
    connect_timeout: float = 10.0
    start_timeout: float = 3600.0
    worker_resources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ClusterError(
                f"ClusterSpec.kind={self.kind!r} is not a cluster kind: choose one of {', '.join(KINDS)}"
            )
        if self.mpi_mode not in MPI_MODES:
            raise ClusterError(
                f"ClusterSpec.mpi_mode={self.mpi_mode!r} is not known: choose one of {', '.join(MPI_MODES)}"
            )
        for name in ("threads_per_worker", "cores_per_job", "processes_per_job"):
            _check_int(self, name, minimum=1)
        _check_int(self, "minimum_workers", minimum=0)
        _check_int(self, "retries", minimum=0)
        if self.workers is not None:
            _check_int(self, "workers", minimum=1)
            if self.minimum_workers > self.workers and self.kind in ("slurm", "pbs"):
                raise ClusterError(
                    f"ClusterSpec.minimum_workers={self.minimum_workers} exceeds "
                    f"workers={self.workers}: lower minimum_workers or raise workers"
                )
        for name in ("adapt", "dashboard"):
            if not isinstance(getattr(self, name), bool):
                raise ClusterError(
                    f"ClusterSpec.{name} must be true or false, got {getattr(self, name)!r}"
                )
        if isinstance(self.connect_timeout, bool) or not isinstance(self.connect_timeout, (int, float)) or self.connect_timeout <= 0:
            raise ClusterError(
                f"ClusterSpec.connect_timeout must be a positive number of seconds, got {self.connect_timeout!r}"
            )
        if isinstance(self.start_timeout, bool) or not isinstance(self.start_timeout, (int, float)) or self.start_timeout < 0:
            raise ClusterError(
                f"ClusterSpec.start_timeout must be a number of seconds >= 0 (0 waits for ever), "
                f"got {self.start_timeout!r}"
            )
        for name in ("memory_limit", "address", "queue", "account", "lifetime", "local_directory", "interface"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ClusterError(f"ClusterSpec.{name} must be a string or None, got {value!r}")
        for name in ("job_extra_directives", "job_script_prologue"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ClusterError(
                    f"ClusterSpec.{name} must be a sequence of strings (one per line), got {value!r}"
                )
            object.__setattr__(self, name, tuple(value))
        if isinstance(self.worker_resources, str):
            object.__setattr__(self, "worker_resources", tuple(self.worker_resources.replace(",", " ").split()))
        object.__setattr__(self, "worker_resources", tuple(self.worker_resources))
        self.resources()  # validates
        _check_memory(self.memory_limit, "ClusterSpec.memory_limit", allow_none=True)
        _check_memory(self.memory_per_job, "ClusterSpec.memory_per_job", allow_none=False)
        if self.kind == "address" and not self.address:
            raise ClusterError(
                "ClusterSpec(kind='address') needs address='tcp://host:port' of a running "
                "Dask scheduler (start one with `dask scheduler`)"
            )
        if self.kind == "address" and "://" in str(self.address):
            scheme = str(self.address).split("://", 1)[0]
            if scheme not in _SCHEDULER_SCHEMES:
                raise ClusterError(
                    f"ClusterSpec.address {self.address!r} is not a Dask scheduler address: the scheme "
                    f"{scheme!r} is not one of {list(_SCHEDULER_SCHEMES)}; give the address `dask scheduler` "
                    "prints, e.g. tcp://host:8786 (8787 is its dashboard, not the scheduler)"
                )
        if self.kind in ("slurm", "pbs"):
            if self.processes_per_job > self.cores_per_job:
                raise ClusterError(
                    f"ClusterSpec.processes_per_job={self.processes_per_job} exceeds "
                    f"cores_per_job={self.cores_per_job}: each worker process needs at least one core"
                )
            # Validates walltime and lifetime together.
            worker_lifetime(self.walltime, self.lifetime)

    def resources(self) -> dict[str, float]:
        """``worker_resources`` as a mapping NAME -> amount (empty when none).

        Raises
        ------
        ClusterError
            An entry is not ``NAME=AMOUNT`` with a positive number.
        """
        out: dict[str, float] = {}
        for item in self.worker_resources:
            name, sep, amount = str(item).partition("=")
            try:
                value = float(amount)
            except ValueError:
                value = -1.0
            if not sep or not name.strip() or not value > 0:
                raise ClusterError(
                    f"ClusterSpec.worker_resources entry {item!r} is not NAME=AMOUNT with a positive amount; "
                    "use e.g. worker_resources = [\"GPU=1\"]"
                )
            out[name.strip()] = value
        return out

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> ClusterSpec:
        """Build a spec from a configuration table.

        Parameters
        ----------
        d : Mapping
            Keys are field names (e.g. the ``[cluster]`` table of a TOML
            file); lists become tuples.

        Returns
        -------
        ClusterSpec

        Raises
        ------
        ClusterError
            For an unknown key (the message lists the valid ones) or a bad value.
        """
        if not isinstance(d, Mapping):
            raise ClusterError(f"cluster configuration must be a table (mapping), got {type(d).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ClusterError(
                f"unknown cluster option(s) {', '.join(map(repr, unknown))}; "
                f"valid options are: {', '.join(valid)}"
            )
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """Return the fields as a plain dict (tuples as lists), the inverse of :meth:`from_mapping`."""
        return {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self).items()
        }


def _check_int(spec: ClusterSpec, name: str, *, minimum: int) -> None:
    value = getattr(spec, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ClusterError(f"ClusterSpec.{name} must be an integer >= {minimum}, got {value!r}")
