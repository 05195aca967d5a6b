"""k-means (scipy) on planted clusters, in memory and by blocks of a field; subsets that cover every cluster;
the best-match look-up."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from stokesflow.nn_init.features import normalise_spectra
from stokesflow.nn_init.kmeans import (best_match, choose_subset, cluster_field, cluster_spectra, cluster_subset,
                                      field_block_candidates, medoids, pixel_keys)
from stokesflow.nn_init.providers import InitError, get_provider


def _planted(rng, sizes=(300, 120, 40, 15), nf=24, spread=0.05):
    centres = rng.normal(0, 1, (len(sizes), nf))
    x = np.concatenate([c + spread * rng.standard_normal((n, nf)) for c, n in zip(centres, sizes)])
    truth = np.repeat(np.arange(len(sizes)), sizes)
    return x, truth


def test_recovers_planted_clusters_and_subset_covers_them():
    rng = np.random.default_rng(11)
    x, truth = _planted(rng)
    x[5] = np.nan  # a bad pixel: label -1, never chosen
    _, labels = cluster_spectra(x, 4, seed=1)
    assert labels[5] == -1
    ok = labels >= 0
    # every planted cluster maps onto exactly one found label, and vice versa (a perfect partition)
    pairs = set(zip(truth[ok].tolist(), labels[ok].tolist()))
    assert len(pairs) == 4 and len({t for t, _ in pairs}) == 4 and len({lab for _, lab in pairs}) == 4
    sub = choose_subset(labels, 40, seed=0)
    found = set(truth[sub].tolist())
    assert found == {0, 1, 2, 3}  # the 15-pixel cluster is present although it is 3 % of the field
    assert 5 not in sub and np.all(np.diff(sub) > 0)
    # proportional share for the large cluster (300 of 474 pixels -> ~25 of 40), floor for the small ones
    assert 20 <= int(np.sum(truth[sub] == 0)) <= 30


def _planted_spectra(rng, sizes=(700, 300, 150, 60), nw=6):
    """Stokes profiles (n, 4, nw) around four kinds of spectra, in a shuffled order, and the kind of each."""
    kinds = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    rng.shuffle(kinds)
    base = np.stack([np.stack([1 - 0.5 * rng.random(nw), *(0.01 * rng.standard_normal((3, nw)))])
                     for _ in sizes])
    return base[kinds] + 1e-3 * rng.standard_normal((kinds.size, 4, nw)), kinds


@pytest.mark.parametrize("block", [97, 1000, 5000])
def test_cluster_field_by_blocks_equals_clustering_in_memory(block):
    rng = np.random.default_rng(4)
    stokes, kinds = _planted_spectra(rng)
    stokes[[3, 500]] = np.nan  # invalid pixels: label -1
    reads = []

    def read(start, stop):
        reads.append(stop - start)
        return stokes[start:stop]

    # fitted on a sample of 600 of the 1,210 pixels, as a field larger than the sample would be
    centroids, labels = cluster_field(read, stokes.shape[0], 4, seed=2, sample=600, block=block)
    assert max(reads) <= block and sum(reads) == 2 * stokes.shape[0]  # two passes, one block at a time
    feats, _ = normalise_spectra(stokes)
    ref_centroids, ref_labels = cluster_spectra(feats, 4, seed=2, sample=600)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(centroids, ref_centroids, rtol=1e-5, atol=1e-6)
    assert labels[3] == labels[500] == -1
    ok = labels >= 0
    assert len(set(zip(kinds[ok].tolist(), labels[ok].tolist()))) == 4  # the planted kinds, one label each


def test_cluster_field_blocks_run_anywhere_give_the_same_clusters():
    """The blocks as tasks of a thread pool that finishes them in reverse order (yielded in task order,
    as ``map_blocks`` promises): the same centroids and labels, bit for bit; every block counted."""
    from concurrent.futures import ThreadPoolExecutor

    stokes, _ = _planted_spectra(np.random.default_rng(6))
    stokes[[11, 900]] = np.nan

    def read(start, stop):
        return stokes[start:stop]

    ref_c, ref_l = cluster_field(read, stokes.shape[0], 4, seed=1, sample=500, block=100)
    calls = []

    def pool_map(fn, tasks):
        assert fn.__name__ in ("field_block_stats", "field_block_labels")
        calls.append(len(tasks))
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(fn, *args) for args in reversed(tasks)][::-1]
            for fut in futures:
                yield fut.result()

    counted = []
    centroids, labels = cluster_field(read, stokes.shape[0], 4, seed=1, sample=500, block=100,
                                      map_blocks=pool_map, on_block=counted.append)
    assert calls == [13, 13]  # 1,210 pixels in blocks of 100, two passes
    assert sum(counted) == 2 * stokes.shape[0]
    np.testing.assert_array_equal(labels, ref_l)
    np.testing.assert_array_equal(centroids, ref_c)


def test_pixel_keys_are_uniform_and_the_same_in_any_block():
    keys = pixel_keys(3, np.arange(200_000))
    assert keys.min() >= 0.0 and keys.max() < 1.0
    hist, _ = np.histogram(keys, bins=20, range=(0.0, 1.0))
    assert np.all(np.abs(hist / 10_000 - 1.0) < 0.05)  # 10,000 expected per bin, sd 1 %
    assert abs(np.corrcoef(keys[:-1], keys[1:])[0, 1]) < 0.01  # neighbours independent
    np.testing.assert_array_equal(pixel_keys(3, np.arange(1234, 5678)), keys[1234:5678])
    assert np.mean(pixel_keys(4, np.arange(1000)) == keys[:1000]) == 0.0


def test_choose_subset_draws_uniformly_within_each_cluster():
    labels = np.repeat(np.arange(3), (600, 200, 50))
    counts = np.zeros(labels.size)
    for seed in range(400):
        sub = choose_subset(labels, 85, seed=seed)
        np.testing.assert_array_equal(np.bincount(labels[sub], minlength=3), [60, 20, 7])  # 10 %, floor 7
        counts[sub] += 1
    # each member of a cluster chosen with the same probability (binomial sd 5-6 % of 40 draws)
    for c, p in ((0, 0.1), (1, 0.1), (2, 7 / 50)):
        freq = counts[labels == c] / 400
        assert abs(freq.mean() - p) < 1e-12 and freq.std() < 2.0 * np.sqrt(p * (1 - p) / 400)


@pytest.mark.parametrize("block", [97, 2000])
def test_cluster_subset_reads_twice_and_equals_cluster_field_then_choose_subset(block):
    stokes, _ = _planted_spectra(np.random.default_rng(8))
    stokes[[20, 700]] = np.nan
    reads = []

    def read(start, stop):
        reads.append(stop - start)
        return stokes[start:stop]

    centroids, labels, index, rows = cluster_subset(read, stokes.shape[0], 4, 150, seed=3, sample=600, block=block)
    assert sum(reads) == 2 * stokes.shape[0]
    ref_c, ref_l = cluster_field(lambda a, b: stokes[a:b], stokes.shape[0], 4, seed=3, sample=600, block=block)
    np.testing.assert_array_equal(labels, ref_l)
    np.testing.assert_array_equal(centroids, ref_c)
    np.testing.assert_array_equal(index, choose_subset(ref_l, 150, seed=3))
    np.testing.assert_array_equal(rows, stokes[index].astype(np.float32))
    assert 20 not in index and 700 not in index


def test_cluster_subset_reads_again_what_the_candidates_missed():
    """Key thresholds a quarter of those the sample asks for (as if it had misjudged the clusters'
    sizes): the clusters short of candidates are drawn from all their members and the missing
    profiles read again; the subset and its rows stay exact."""
    stokes, _ = _planted_spectra(np.random.default_rng(9))
    reads = []

    def read(start, stop):
        reads.append(stop - start)
        return stokes[start:stop]

    def thinning(fn, tasks):
        for args in tasks:
            if fn is field_block_candidates:
                read_, a, b, scale, centroids, below, seed = args
                args = (read_, a, b, scale, centroids, below / 4, seed)
            yield fn(*args)

    _, labels, index, rows = cluster_subset(read, stokes.shape[0], 4, 200, seed=1, block=300, map_blocks=thinning)
    assert 2 * stokes.shape[0] < sum(reads) <= 3 * stokes.shape[0]  # a third read, of the blocks concerned
    np.testing.assert_array_equal(index, choose_subset(labels, 200, seed=1))
    np.testing.assert_array_equal(rows, stokes[index].astype(np.float32))


def test_cluster_field_lowers_k_on_few_pixels_and_refuses_an_all_nan_field():
    stokes, _ = _planted_spectra(np.random.default_rng(5), sizes=(5, 4))
    _, labels = cluster_field(lambda a, b: stokes[a:b], 9, 16, block=4)
    assert labels.max() + 1 <= 9 // 4  # at least 4 valid pixels per cluster
    with pytest.raises(InitError, match="no valid pixel"):
        cluster_field(lambda a, b: np.full((b - a, 4, 6), np.nan), 10, 4, block=3)


def test_best_match_and_provider(tmp_path):
    rng = np.random.default_rng(2)
    profiles = rng.normal(0, 1, (5, 4, 6))
    profiles[:, 0] = 0.5 + np.abs(profiles[:, 0])  # Stokes I is an intensity (a pixel without light is skipped)
    idx = rng.integers(0, 5, 50)
    stokes = profiles[idx] + 1e-3 * rng.standard_normal((50, 4, 6))
    got, chi2 = best_match(stokes, profiles, np.full(4, 1e-3))
    np.testing.assert_array_equal(got, idx)
    assert np.median(chi2) == pytest.approx(1.0, rel=0.3)  # noise-level residuals: reduced chi2 ~ 1
    centroids = profiles.reshape(5, -1)
    feats = stokes.reshape(50, -1)
    med = medoids(feats, centroids, idx)
    assert all(idx[m] == c for c, m in enumerate(med))

    class Specs:
        name = "double"
        parameter_names = ("a", "b")

    wl = 6173.0 + 0.07 * np.arange(6)
    with h5py.File(tmp_path / "db.h5", "w") as h5:
        h5["wavelength"] = wl
        h5["profiles"] = profiles
        h5["params/a"] = np.arange(5.0)
        h5["params/b"] = 10 + np.arange(5.0)
        h5.attrs["parameters"] = ["a", "b"]
        h5.attrs["noise"] = np.full(4, 1e-3)
    prov = get_provider("kmeans", {"database": str(tmp_path / "db.h5")}).bind(Specs())
    g = prov.initial_guess(stokes, wl, start=0, stop=50)
    np.testing.assert_array_equal(g[:, 0], idx)
    with pytest.raises(InitError, match="built on 6 wavelengths"):
        prov.initial_guess(stokes, wl + 0.01, start=0, stop=50)
