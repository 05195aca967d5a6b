"""The training subset of ``stokesflow assist``: its size rule, its reads by blocks (tasks on the executor, two
passes of the field), a worker dying in a block task, the corner box."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from _orchestrator_helpers import write_hmi_observation

from stokesflow.nn_init.training import SUBSET_MAX_PIXELS, SUBSET_MIN_PIXELS, subset_pixels
from stokesflow.orchestrator.assist import AssistSettings, default_subset_bounds, make_subset
from stokesflow.orchestrator.errors import OrchestratorError
from stokesflow.orchestrator.io import open_observation


def test_bounds_by_backend_and_model():
    assert default_subset_bounds("me", "cnn") == (SUBSET_MIN_PIXELS, SUBSET_MAX_PIXELS)
    # a classical code's seconds per pixel, the k-means look-up and the U-Net's patches keep the plain share
    for backend, model in (("sir", "cnn"), ("desire", "cnn"), ("me", "kmeans"), ("me", "unet")):
        assert default_subset_bounds(backend, model) == (64, 2 ** 62)
    s = AssistSettings(cluster={"kind": "serial"})
    assert (s.subset_min, s.subset_max) == (SUBSET_MIN_PIXELS, SUBSET_MAX_PIXELS)
    assert AssistSettings(subset_min=100, subset_max=200).identity()["subset_max"] == 200  # a rerun must match
    with pytest.raises(OrchestratorError, match="64 <= subset_min <= subset_max, got subset_min=500, subset_max=100"):
        AssistSettings(subset_min=500, subset_max=100)
    with pytest.raises(OrchestratorError, match="64 <= subset_min"):
        AssistSettings(subset_min=10)


@pytest.mark.parametrize("bounds, count, expected", [((64, 10_000), 102, 102), ((150, 10_000), 150, 150),
                                                     ((64, 80), 80, 80),
                                                     ((SUBSET_MIN_PIXELS, SUBSET_MAX_PIXELS), 1024, 1023)])
def test_make_subset_takes_the_clamped_count(tmp_path, bounds, count, expected):
    """32 x 32 field (1,024 pixels, one NaN): 10 % is 102 pixels; the bounds clamp it; a field smaller
    than the floor is used whole (all 1,023 valid pixels)."""
    obs = open_observation(write_hmi_observation(tmp_path / "obs.h5", 32, 32, seed=3, nan_pixels=(7,)))
    s = AssistSettings(subset=0.1, subset_min=bounds[0], subset_max=bounds[1], clusters=4,
                       cluster={"kind": "serial"})
    assert subset_pixels(obs.npix, 0.1, *bounds) == count
    info = make_subset(obs, tmp_path / "sub.h5", s)
    # choose_subset's per-cluster floor and rounding move the count by at most a few pixels per cluster
    assert abs(info["pixels"] - expected) <= 4 * 2
    with h5py.File(tmp_path / "sub.h5") as h5:
        index = h5["assist/index"][()]
        labels = h5["assist/labels"][()].reshape(-1)
    assert np.unique(index).size == index.size and 7 not in index
    assert set(labels[index]) == set(labels[labels >= 0])  # every cluster sampled


def test_make_subset_reads_the_field_by_blocks(tmp_path, monkeypatch):
    """The subset phase holds a block of rows at a time, never the whole field (a field larger than
    memory), and chooses the same subset with blocks of 3 rows as with the whole field in one block."""
    import stokesflow.orchestrator.assist as assist

    obs = open_observation(write_hmi_observation(tmp_path / "obs.h5", 24, 20, seed=5, nan_pixels=(9, 300)))
    s = AssistSettings(subset=0.2, subset_min=64, subset_max=10_000, clusters=5, cluster={"kind": "serial"})
    whole = make_subset(obs, tmp_path / "whole.h5", s)
    monkeypatch.setattr(assist, "SUBSET_BLOCK_BYTES", 3 * obs.nx * 4 * obs.nw * 4)  # three rows
    reads = []
    real = type(obs).read_pixels

    def counting(self, start, stop):
        reads.append(stop - start)
        return real(self, start, stop)

    monkeypatch.setattr(type(obs), "read_pixels", counting)
    blocks = make_subset(obs, tmp_path / "blocks.h5", s)
    assert reads and max(reads) <= 3 * obs.nx
    assert blocks == whole
    with h5py.File(tmp_path / "whole.h5") as a, h5py.File(tmp_path / "blocks.h5") as b:
        for name in ("assist/index", "assist/labels", "stokes"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
        assert 9 not in b["assist/index"][()] and 300 not in b["assist/index"][()]


def test_subset_phase_runs_its_blocks_as_tasks_on_the_executor(tmp_path, caplog, monkeypatch):
    """Every read of the field is a task on the loop's executor (here a local Dask cluster of 2
    workers): the k-means's two passes, the second bringing back the subset's profiles, a task per
    block of rows; the subset equals the in-process one; progress is logged."""
    import logging

    import stokesflow.orchestrator.assist as assist
    from stokesflow.clusters import ClusterSpec, open_executor

    obs = open_observation(write_hmi_observation(tmp_path / "obs.h5", 24, 20, seed=5, nan_pixels=(9,)))
    monkeypatch.setattr(assist, "SUBSET_BLOCK_BYTES", 5 * obs.nx * 4 * obs.nw * 4)  # five rows: 5 blocks
    s = AssistSettings(subset=0.2, subset_min=64, subset_max=10_000, clusters=5, cluster={"kind": "serial"},
                       progress="log")
    here = make_subset(obs, tmp_path / "here.h5", s)
    with open_executor(ClusterSpec(kind="local", workers=2, dashboard=False)) as ex:
        submitted = []
        real_submit = ex.submit

        def counting_submit(fn, *args, **kw):
            submitted.append(fn.__name__)
            return real_submit(fn, *args, **kw)

        ex.submit = counting_submit
        with caplog.at_level(logging.INFO, logger="stokesflow"):
            there = make_subset(obs, tmp_path / "there.h5", s, executor=ex)
    assert there == here
    assert {n: submitted.count(n) for n in set(submitted)} == {"field_block_stats": 5, "field_block_candidates": 5}
    with h5py.File(tmp_path / "here.h5") as a, h5py.File(tmp_path / "there.h5") as b:
        for name in ("assist/index", "assist/labels", "stokes"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("subset progress: ")]
    assert lines and lines[-1].startswith(f"subset progress: {2 * obs.npix}/{2 * obs.npix} pixels (100.0%), "
                                          "chunks 10/10")


def test_box_subset_reads_its_corner_after_the_clustering(tmp_path):
    """--subset-method box: the k-means's two passes, then only the blocks holding the corner box."""
    obs = open_observation(write_hmi_observation(tmp_path / "obs.h5", 24, 20, seed=5, nan_pixels=(3,)))
    s = AssistSettings(subset=0.2, subset_min=64, subset_max=10_000, clusters=5, subset_method="box",
                       cluster={"kind": "serial"})
    reads = []
    real = type(obs).read_pixels

    def counting(self, start, stop):
        reads.append((start, stop))
        return real(self, start, stop)

    type(obs).read_pixels = counting
    try:
        info = make_subset(obs, tmp_path / "box.h5", s)
    finally:
        type(obs).read_pixels = real
    with h5py.File(tmp_path / "box.h5") as h5:
        index, stokes = h5["assist/index"][()], h5["stokes"][()]
    # 96 pixels (20 %) as 11 rows of 9 (the field's aspect), less the NaN pixel
    assert info["method"] == "box" and index.size == 11 * 9 - 1 and 3 not in index
    assert index.max() < 11 * obs.nx and np.all(index % obs.nx < 9)
    np.testing.assert_array_equal(stokes.reshape(index.size, 4, obs.nw), obs.read_pixels(0, obs.npix)[index])
    assert sum(b - a for a, b in reads) == 3 * obs.npix  # one block here: two passes and the corner's block


def test_subset_phase_survives_a_worker_dying_in_a_block_task(tmp_path):
    """A worker process that ends in the middle of a block task (os._exit) is restarted by its Nanny
    and the block runs again: the phase finishes with the subset of an undisturbed run."""
    from _orchestrator_doubles import ExitOnceObservation

    from stokesflow.clusters import ClusterSpec, open_executor

    obs = open_observation(write_hmi_observation(tmp_path / "obs.h5", 24, 20, seed=5, nan_pixels=(9,)))
    s = AssistSettings(subset=0.2, subset_min=64, subset_max=10_000, clusters=5, cluster={"kind": "serial"})
    here = make_subset(obs, tmp_path / "here.h5", s)
    marker = tmp_path / "exited"
    with open_executor(ClusterSpec(kind="local", workers=2, dashboard=False)) as ex:
        there = make_subset(ExitOnceObservation.of(obs, marker), tmp_path / "there.h5", s, executor=ex)
    assert marker.exists() and int(marker.read_text()) != os.getpid()
    assert there == here
    with h5py.File(tmp_path / "here.h5") as a, h5py.File(tmp_path / "there.h5") as b:
        for name in ("assist/index", "assist/labels", "stokes"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)


def test_kmeans_sample_shrinks_for_long_spectra(tmp_path, monkeypatch):
    """The centroids are fitted on at most SUBSET_SAMPLE_BYTES of float32 features: a spectrum of
    thousands of points gets fewer sample pixels (here the bound scaled down to a 6-point field)."""
    import stokesflow.nn_init.kmeans as kmeans
    import stokesflow.orchestrator.assist as assist

    obs = open_observation(write_hmi_observation(tmp_path / "obs.h5", 24, 20, seed=5))
    fitted = []
    real_fit = kmeans._fit_centroids

    def recording(x, k, rng):
        fitted.append(x.shape)
        return real_fit(x, k, rng)

    monkeypatch.setattr(kmeans, "_fit_centroids", recording)
    s = AssistSettings(subset=0.2, subset_min=64, subset_max=10_000, clusters=5, cluster={"kind": "serial"})
    make_subset(obs, tmp_path / "all.h5", s)
    monkeypatch.setattr(assist, "SUBSET_SAMPLE_MIN", 50)
    monkeypatch.setattr(assist, "SUBSET_SAMPLE_BYTES", 200 * 4 * obs.nw * 4)
    info = make_subset(obs, tmp_path / "few.h5", s)
    assert fitted == [(obs.npix, 4 * obs.nw), (200, 4 * obs.nw)]  # the whole 480-pixel field, then 200
    assert info["clusters"] == 5 and info["pixels"] >= 96
