"""Chunking: which pixels each task inverts.

A chunk is a contiguous range ``[start, stop)`` of flat, row-major pixel
indices (``flat = y * nx + x``). Contiguous ranges keep a worker's read of its
own slice to a few contiguous hyperslabs and let the driver write the result
as whole rows plus at most two partial rows.

Chunk size
----------
The scheduler costs of order a millisecond per task (about 2 ms with Dask on
two cores) while a Milne-Eddington pixel costs of order a millisecond of
solver time, so a task must carry thousands of pixels. On the other hand each
worker should see several tasks, so that a slow or lost worker does not leave
the others idle at the end. The automatic size is therefore

``chunk_pixels = clamp(ceil(npix / (tasks_per_worker * workers)), 1024, 65536)``

with ``tasks_per_worker = 8``: a 4096 x 4096 disk (16.8 M pixels) gives 256
tasks of 65536 pixels on 1 worker, 2 048 tasks of 8 192 pixels on 128 workers
and 7 997 tasks of 2 098 pixels on 1 000 workers; the 1 024-pixel floor caps
any field at npix / 1024 tasks (16 384 for a 4096 x 4096 disk), far below the
~100k tasks where Dask graphs get sluggish.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from stokesflow.orchestrator.errors import OrchestratorError

__all__ = [
    "MIN_CHUNK_PIXELS",
    "MAX_CHUNK_PIXELS",
    "TASKS_PER_WORKER",
    "IN_FLIGHT_PER_WORKER",
    "Chunk",
    "Plan",
    "auto_chunk_pixels",
    "default_in_flight",
    "plan_chunks",
    "flat_to_rows",
]

#: Floor of the automatic chunk size, in pixels.
MIN_CHUNK_PIXELS = 1024
#: Ceiling of the automatic chunk size, in pixels (bounds a task's memory:
#: 65536 HMI pixels are 6 MB of Stokes data, 112-point Hinode pixels 117 MB).
MAX_CHUNK_PIXELS = 65536
#: Tasks per worker the automatic size aims at (load balance at the end).
TASKS_PER_WORKER = 8
#: Tasks kept in flight per worker (one running, the next ones queued).
IN_FLIGHT_PER_WORKER = 3


@dataclass(frozen=True)
class Chunk:
    """One task's pixels: flat row-major indices ``start <= i < stop``."""

    index: int
    start: int
    stop: int

    @property
    def npix(self) -> int:
        """Number of pixels."""
        return self.stop - self.start


@dataclass(frozen=True)
class Plan:
    """All chunks of one field of view.

    Attributes
    ----------
    ny, nx : int
        Field of view, in pixels.
    chunk_pixels : int
        Pixels per chunk (the last one may be shorter).
    """

    ny: int
    nx: int
    chunk_pixels: int

    @property
    def npix(self) -> int:
        """Pixels in the field of view."""
        return self.ny * self.nx

    @property
    def n_chunks(self) -> int:
        """Number of chunks."""
        return -(-self.npix // self.chunk_pixels)

    def chunk(self, index: int) -> Chunk:
        """Chunk number ``index``."""
        if not 0 <= index < self.n_chunks:
            raise IndexError(f"chunk {index} outside 0..{self.n_chunks - 1}")
        start = index * self.chunk_pixels
        return Chunk(index, start, min(start + self.chunk_pixels, self.npix))

    def __iter__(self) -> Iterator[Chunk]:
        return (self.chunk(i) for i in range(self.n_chunks))

    def __len__(self) -> int:
        return self.n_chunks

    def starts(self) -> np.ndarray:
        """First flat pixel of every chunk, int64 (n_chunks,)."""
        return np.arange(self.n_chunks, dtype=np.int64) * self.chunk_pixels

    def stops(self) -> np.ndarray:
        """One past the last flat pixel of every chunk, int64 (n_chunks,)."""
        return np.minimum(self.starts() + self.chunk_pixels, self.npix)


def auto_chunk_pixels(
    npix: int,
    workers: int,
    *,
    tasks_per_worker: int = TASKS_PER_WORKER,
    minimum: int = MIN_CHUNK_PIXELS,
    maximum: int = MAX_CHUNK_PIXELS,
) -> int:
    """Automatic chunk size, in pixels (see the module docstring).

    Parameters
    ----------
    npix : int
        Pixels in the field of view.
    workers : int
        Worker processes expected (at least 1 is assumed).
    tasks_per_worker, minimum, maximum : int
        Target tasks per worker and the clamp, in pixels.

    Returns
    -------
    int
        ``clamp(ceil(npix / (tasks_per_worker * workers)), minimum, maximum)``,
        and never more than ``npix``.
    """
    if npix <= 0:
        raise OrchestratorError(f"cannot plan chunks for {npix} pixels; the field of view is empty")
    target = math.ceil(npix / (tasks_per_worker * max(1, int(workers))))
    return int(max(1, min(npix, max(minimum, min(maximum, target)))))


def default_in_flight(workers: int, threads_per_worker: int = 1) -> int:
    """Tasks to keep in flight: :data:`IN_FLIGHT_PER_WORKER` per worker thread."""
    return max(2, IN_FLIGHT_PER_WORKER * max(1, int(workers)) * max(1, int(threads_per_worker)))


def plan_chunks(ny: int, nx: int, chunk_pixels: int) -> Plan:
    """The chunks of an ``ny`` x ``nx`` field of ``chunk_pixels`` pixels each."""
    if ny <= 0 or nx <= 0:
        raise OrchestratorError(f"cannot plan chunks for a {ny} x {nx} field of view")
    if chunk_pixels <= 0:
        raise OrchestratorError(f"chunk_pixels must be positive, got {chunk_pixels}")
    return Plan(int(ny), int(nx), int(min(chunk_pixels, ny * nx)))


def flat_to_rows(start: int, stop: int, nx: int) -> list[tuple[int, int, int, int, int]]:
    """Split a flat range into row pieces for writing into (ny, nx) maps.

    Returns
    -------
    list of (y0, y1, x0, x1, offset)
        Rectangles ``[y0:y1, x0:x1]`` covering the range, in order; ``offset``
        is where the rectangle's first pixel sits in the flat chunk. There are
        at most three: a partial first row, a block of whole rows, a partial
        last row.
    """
    pieces: list[tuple[int, int, int, int, int]] = []
    pos = start
    while pos < stop:
        y, x = divmod(pos, nx)
        if x == 0 and stop - pos >= nx:  # block of whole rows
            nrows = (stop - pos) // nx
            pieces.append((y, y + nrows, 0, nx, pos - start))
            pos += nrows * nx
        else:  # partial row
            x1 = min(nx, x + (stop - pos))
            pieces.append((y, y + 1, x, x1, pos - start))
            pos += x1 - x
    return pieces
