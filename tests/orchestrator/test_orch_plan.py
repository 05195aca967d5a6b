"""Chunk planning: automatic sizes, coverage, flat-to-rows splitting."""

from __future__ import annotations

import numpy as np
import pytest

from stokesflow.orchestrator.errors import OrchestratorError
from stokesflow.orchestrator.plan import (
    MAX_CHUNK_PIXELS,
    MIN_CHUNK_PIXELS,
    auto_chunk_pixels,
    default_in_flight,
    flat_to_rows,
    plan_chunks,
)


@pytest.mark.parametrize("workers", [1, 2, 8, 128, 1000, 10000])
def test_full_disk_stays_far_below_100k_tasks(workers):
    npix = 4096 * 4096
    k = auto_chunk_pixels(npix, workers)
    plan = plan_chunks(4096, 4096, k)
    assert MIN_CHUNK_PIXELS <= k <= MAX_CHUNK_PIXELS
    # the issue: a 4096x4096 disk must stay well under 100k tasks
    assert plan.n_chunks <= 16384 < 100_000
    # every worker gets several tasks whenever the floor allows it
    if npix / (8 * workers) >= MIN_CHUNK_PIXELS:
        assert plan.n_chunks >= 0.99 * 8 * workers  # ceil() of the size may drop a few


def test_auto_values():
    assert auto_chunk_pixels(4096 * 4096, 1) == 65536
    assert auto_chunk_pixels(4096 * 4096, 1000) == 2098  # ceil(16777216 / 8000)
    assert auto_chunk_pixels(100, 4) == 100  # never more than the field
    assert auto_chunk_pixels(512 * 512, 2) == 16384
    with pytest.raises(OrchestratorError):
        auto_chunk_pixels(0, 1)


def test_in_flight():
    assert default_in_flight(1) == 3
    assert default_in_flight(4, 2) == 24


def test_plan_covers_every_pixel_once():
    plan = plan_chunks(7, 13, 10)
    covered = np.zeros(plan.npix, dtype=int)
    for c in plan:
        covered[c.start:c.stop] += 1
    assert (covered == 1).all()
    assert plan.n_chunks == len(plan) == 10
    assert plan.chunk(9).stop == 91 and plan.chunk(9).npix == 1
    np.testing.assert_array_equal(plan.stops() - plan.starts(), [c.npix for c in plan])
    with pytest.raises(IndexError):
        plan.chunk(10)
    with pytest.raises(OrchestratorError):
        plan_chunks(0, 3, 4)


def test_flat_to_rows_reconstructs_any_range():
    rng = np.random.default_rng(1)
    ny, nx = 9, 11
    flat = np.arange(ny * nx)
    for _ in range(300):
        start = int(rng.integers(0, ny * nx))
        stop = int(rng.integers(start + 1, ny * nx + 1))
        grid = np.full((ny, nx), -1)
        pieces = flat_to_rows(start, stop, nx)
        assert len(pieces) <= 3
        for y0, y1, x0, x1, off in pieces:
            n = (y1 - y0) * (x1 - x0)
            grid[y0:y1, x0:x1] = flat[start + off:start + off + n].reshape(y1 - y0, x1 - x0)
        expected = np.full(ny * nx, -1)
        expected[start:stop] = flat[start:stop]
        np.testing.assert_array_equal(grid.ravel(), expected)
