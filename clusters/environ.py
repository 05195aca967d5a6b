"""The environment of the Dask worker processes that stokesflow starts (``local``, ``mpi``, ``slurm``, ``pbs``).

Dask's Nanny starts every worker process with ``MALLOC_TRIM_THRESHOLD_=65536``
(``distributed.nanny.pre-spawn-environ``), so that glibc gives freed memory
back to the system. Setting any of glibc's malloc thresholds also switches off
its *dynamic* mmap threshold: every allocation of 128 KiB or more then gets
pages of its own from ``mmap`` and gives them back at ``free``, and code that
allocates and frees buffers of a few hundred KiB to a few MiB many times - a
network's training steps - pays page faults on every one of them. Measured on
a 2-vCPU machine, the CNN of an HMI-like 1024^2 loop (34,114 subset pixels,
one thread): 4.9-5.0 s plain, 7.8-8.7 s with ``MALLOC_TRIM_THRESHOLD_=65536``,
4.9 s with ``MALLOC_MMAP_THRESHOLD_=33554432`` added (glibc's own upper bound of
its dynamic threshold, 32 MiB); in a ``LocalCluster`` worker the training took
8.9-9.1 s before. :data:`WORKER_ENVIRON` adds that variable, and Dask's trimming
of the heap stays as it is.

A value already in ``os.environ`` or in the site's Dask configuration wins (set
it to another value there, or ``None`` in the configuration to leave it out).
With ``--cluster address`` the workers are yours: start them with the variable
set (``MALLOC_MMAP_THRESHOLD_=33554432 dask worker ...``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

__all__ = ["WORKER_ENVIRON", "worker_environ", "worker_exports"]

#: Variables set in the worker processes that stokesflow starts, unless already set (see the module docstring).
WORKER_ENVIRON: dict[str, str] = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20)}

_KEY = "distributed.nanny.pre-spawn-environ"


def _missing(configured: dict) -> dict[str, str]:
    """The :data:`WORKER_ENVIRON` entries neither ``os.environ`` nor the configuration ``configured`` has."""
    return {k: v for k, v in WORKER_ENVIRON.items() if k not in configured and k not in os.environ}


def _configured() -> dict:
    """The Nanny's pre-spawn environment in Dask's configuration (distributed's defaults included)."""
    import dask
    import distributed  # noqa: F401 - registers its configuration defaults

    return dict(dask.config.get(_KEY, None) or {})


@contextmanager
def worker_environ() -> Iterator[None]:
    """Dask's configuration with :data:`WORKER_ENVIRON` added to the Nanny's pre-spawn environment.

    Wrap the creation of the Nanny objects (``LocalCluster(...)``, dask-mpi's
    ``initialize``): each reads the variables when it is made and sets them in
    every worker process it starts, restarts included.
    """
    configured = _configured()
    extra = _missing(configured)
    if not extra:
        yield
        return
    import dask

    with dask.config.set({_KEY: {**configured, **extra}}):
        yield


def worker_exports(configured: dict | None = None) -> list[str]:
    """Job-script lines (``export NAME=value``) that give a batch job's worker processes :data:`WORKER_ENVIRON`.

    ``configured``: the pre-spawn environment of the Dask configuration (read when None); a variable set
    there or in ``os.environ`` gets no line (the worker node's own configuration then decides).
    """
    if configured is None:
        configured = _configured()
    return [f"export {k}={v}" for k, v in _missing(configured).items()]
