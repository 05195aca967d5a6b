"""stokesflow.clusters: how tasks reach workers.

One :class:`Executor` interface over an in-process loop (``serial``), a Dask
``LocalCluster`` (``local``, the default), an ``mpiexec`` job (``mpi``:
dask-mpi or mpi4py.futures), batch-system worker jobs (``slurm``, ``pbs``
through dask-jobqueue) and an existing Dask scheduler (``address``).

This package imports no other stokesflow folder, and imports dask, mpi4py and
dask-jobqueue only when an executor that needs them is opened - importing it
never initialises MPI.

Examples
--------
>>> from clusters import ClusterSpec, open_executor
>>> with open_executor(ClusterSpec(kind="serial")) as ex:
...     [f.result() for f in ex.as_completed([ex.submit(abs, -3)])]
[3]
"""

from __future__ import annotations

from stokesflow.clusters.base import Executor, Future, mpi_rank, mpi_size
from stokesflow.clusters.factory import executor_for, open_executor, preflight
from stokesflow.clusters.jobqueue import job_script
from stokesflow.clusters.mpi import client_rank, is_service_rank
from stokesflow.clusters.spec import (
    ClusterError,
    ClusterSpec,
    JobSubmissionError,
    MissingDependencyError,
    MissingProgramError,
    SchedulerUnreachableError,
    WorkersUnavailableError,
)

__all__ = [
    "ClusterError",
    "ClusterSpec",
    "Executor",
    "Future",
    "JobSubmissionError",
    "MissingDependencyError",
    "MissingProgramError",
    "SchedulerUnreachableError",
    "WorkersUnavailableError",
    "client_rank",
    "is_service_rank",
    "job_script",
    "mpi_rank",
    "mpi_size",
    "open_executor",
    "executor_for",
    "preflight",
]
