"""Clustering of spectra (scipy's k-means), representative subsets, and the ``kmeans`` look-up provider.

- :func:`cluster_spectra`: k-means (``scipy.cluster.vq.kmeans2``, k-means++
  seeding) of normalised spectra (:func:`~stokesflow.nn_init.features.normalise_spectra`)
  fitted on a seeded sample of at most ``sample`` pixels, then every pixel
  assigned to its nearest centroid (``scipy.cluster.vq.vq``, by blocks).
- :func:`cluster_field`: the same for a field read by blocks of pixels, from
  their spectra: memory bounded by the sample, not by the field.
- :func:`choose_subset`: a training subset that represents the whole field:
  every cluster sampled in proportion to its size, with a floor per cluster so
  that rare kinds of pixels (umbra, strong plage) are present.
- :func:`medoids`: per cluster, the member closest to its centroid (an
  actual observed spectrum: the *representative profile*).
- :class:`KMeansInit` (``--init kmeans -I database=kmeans.h5``): each pixel
  gets the fitted model of its best-matching representative by chi2 (noise
  weighted, over I, Q, U, V). The database (written by
  :func:`stokesflow.orchestrator.assist.build_kmeans_database`) holds
  ``/wavelength``, ``/profiles`` (k, 4, nw) (the representatives' best-fit
  profiles), ``/params/<name>`` (k,) and the attribute ``noise`` (4).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable, Mapping

import h5py
import numpy as np

from stokesflow.backends.base import valid_pixels
from stokesflow.nn_init.providers import InitError, InitProvider

__all__ = ["BlockMap", "serial_blocks", "pixel_keys", "cluster_spectra", "cluster_field", "cluster_subset",
           "field_block_stats", "field_block_labels", "field_block_candidates", "field_block_rows", "gather_rows",
           "choose_subset",
           "medoids", "best_match", "KMeansInit"]


def _sample_index(n: int, sample: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted flat indices of the rows the centroids are fitted on: all ``n`` rows, or a seeded draw of ``sample``."""
    if n <= sample:
        return np.arange(n)
    return np.sort(rng.choice(n, sample, replace=False))


def _fit_centroids(x: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """k-means (scipy's ``kmeans2``, k-means++ seeding, 20 iterations) of the finite rows ``x``:
    the centroids and the rows' labels of the last iteration (nearest centroid before the last update)."""
    from scipy.cluster.vq import kmeans2

    if x.shape[0] < k:
        raise InitError(f"k-means with k={k} needs at least {k} valid pixels, got {x.shape[0]}")
    # the rows are finite (checked by the callers): scipy's per-iteration finiteness check skipped
    return kmeans2(np.asarray(x, dtype=np.float64), int(k), minit="++", seed=rng, iter=20, check_finite=False)


def _assign(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> None:
    """Nearest centroid of every finite row of ``x`` into ``labels`` (the others keep -1)."""
    from scipy.cluster.vq import vq

    good = np.isfinite(x).all(axis=1)
    if good.any():
        labels[good], _ = vq(np.asarray(x[good], dtype=np.float64), centroids, check_finite=False)


def _drop_empty(centroids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids without members dropped, labels renumbered (in place) to 0..k'-1."""
    used = np.unique(labels[labels >= 0])
    remap = np.full(centroids.shape[0], -1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    labels[labels >= 0] = remap[labels[labels >= 0]]
    return centroids[used], labels


def cluster_spectra(features: np.ndarray, k: int, *, seed: int = 0, sample: int = 50_000,
                    block: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """k-means of feature rows; returns (centroids (k', nf), labels (n,) int, -1 for non-finite rows).

    The centroids are fitted on at most ``sample`` rows (a seeded draw; the
    non-finite rows of the draw are left out), then every row is assigned to
    its nearest centroid by blocks of ``block`` rows. ``k'`` <= ``k``: empty
    clusters are dropped and labels renumbered.
    """
    f = np.asarray(features)
    rng = np.random.default_rng(seed)
    fit = f[_sample_index(f.shape[0], sample, rng)]
    centroids, _ = _fit_centroids(fit[np.isfinite(fit).all(axis=1)], k, rng)
    labels = np.full(f.shape[0], -1, dtype=np.int64)
    for i in range(0, f.shape[0], block):
        _assign(f[i:i + block], centroids, labels[i:i + block])
    return _drop_empty(centroids, labels)


#: ``map_blocks(fn, tasks)``: runs ``fn(*args)`` for every ``args`` of ``tasks`` (anywhere: in this
#: process or as tasks on a cluster) and yields the results in the order of ``tasks``.
BlockMap = Callable[[Callable[..., Any], list[tuple[Any, ...]]], Iterable[Any]]


def serial_blocks(fn: Callable[..., Any], tasks: list[tuple[Any, ...]]) -> Iterator[Any]:
    """The default :data:`BlockMap`: one block after the other in this process."""
    for args in tasks:
        yield fn(*args)


def field_block_stats(read: Callable[[int, int], np.ndarray], start: int, stop: int,
                      picked: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray]:
    """First pass of :func:`cluster_field` over the flat pixels ``start..stop``.

    Returns the valid-pixel mask (stop - start,), the per-Stokes sums of the unscaled features and
    of their squares (4,), the number of values summed, and the unscaled feature rows of the valid
    pixels among ``picked`` (offsets into the block, sorted) that the centroids are fitted on.
    """
    from stokesflow.nn_init.features import normalise_spectra

    f0, _ = normalise_spectra(read(start, stop), np.ones(4))  # unscaled: I / <I> - 1, Q / <I>, ...
    f0 = f0.reshape(stop - start, 4, -1)
    ok = np.isfinite(f0).all(axis=(1, 2))
    good = f0[ok].astype(np.float64)
    picked = np.asarray(picked, dtype=np.int64)
    return (ok, good.sum(axis=(0, 2)), (good * good).sum(axis=(0, 2)), good.shape[0] * good.shape[2],
            f0[picked[ok[picked]]])


def field_block_labels(read: Callable[[int, int], np.ndarray], start: int, stop: int, scale: np.ndarray,
                       centroids: np.ndarray) -> np.ndarray:
    """Second pass of :func:`cluster_field`: nearest centroid of every pixel ``start..stop`` (-1: invalid)."""
    return _labels_of(read(start, stop), scale, centroids)


def _labels_of(stokes: np.ndarray, scale: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid of each profile (npix, 4, nw), features scaled by ``scale``; -1 for invalid ones."""
    from stokesflow.nn_init.features import normalise_spectra

    f, _ = normalise_spectra(stokes, scale)
    labels = np.full(f.shape[0], -1, dtype=np.int64)
    _assign(f, centroids, labels)
    return labels


def pixel_keys(seed: int, index: np.ndarray) -> np.ndarray:
    """Uniform random keys in [0, 1) of the flat pixels ``index``, a hash of (``seed``, index) (SplitMix64).

    The same for a pixel wherever and in whatever block it is computed: a subset drawn as the
    pixels of smallest key per cluster (:func:`choose_subset`) can be collected block by block.
    """
    z = np.array(index, dtype=np.uint64)
    t = np.empty_like(z)
    z *= np.uint64(0x9E3779B97F4A7C15)
    z += np.uint64((int(seed) * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) % 2 ** 64)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, 0)):
        np.right_shift(z, np.uint64(shift), out=t)
        np.bitwise_xor(z, t, out=z)
        if mult:
            z *= np.uint64(mult)
    np.right_shift(z, np.uint64(11), out=z)
    out = z.astype(np.float64)
    out *= 2.0 ** -53
    return out


def field_block_candidates(read: Callable[[int, int], np.ndarray], start: int, stop: int, scale: np.ndarray,
                           centroids: np.ndarray, below: np.ndarray,
                           seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Second pass of :func:`cluster_subset`: the labels of the pixels ``start..stop``, and the offsets
    and profiles of those whose key (:func:`pixel_keys`) lies below their cluster's ``below``."""
    stokes = read(start, stop)
    labels = _labels_of(stokes, scale, centroids)
    ok = labels >= 0
    take = np.zeros(stop - start, dtype=bool)
    take[ok] = pixel_keys(seed, np.arange(start, stop)[ok]) < below[labels[ok]]
    offsets = np.flatnonzero(take)
    return labels, offsets, np.asarray(stokes[offsets], dtype=np.float32)


def field_block_rows(read: Callable[[int, int], np.ndarray], start: int, stop: int, offsets: np.ndarray) -> np.ndarray:
    """The profiles (n, 4, nw) float32 of the pixels ``start + offsets`` (a block task)."""
    return np.asarray(read(start, stop)[offsets], dtype=np.float32)


def cluster_field(read: Callable[[int, int], np.ndarray], npix: int, k: int, *, seed: int = 0,
                  sample: int = 50_000, block: int = 65_536, per_cluster: int = 4,
                  map_blocks: BlockMap | None = None,
                  on_block: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-means of a field's normalised spectra, read by blocks: memory bounded by the sample, not the field.

    The streaming form of :func:`~stokesflow.nn_init.features.normalise_spectra` followed by
    :func:`cluster_spectra`, for fields larger than memory (a DKIST or Hinode SP map of thousands of
    wavelengths, an HMI full disk): two passes over the field, each a task per block
    (:func:`field_block_stats`, :func:`field_block_labels`) that ``map_blocks`` may spread over a
    cluster. The first collects the valid pixels, the per-Stokes sums that give the feature scale (the
    standard deviation over every valid pixel, as ``normalise_spectra`` computes it) and the
    sample's features; the centroids are fitted on the sample; the second assigns every pixel.
    The sums are added in block order, so the result does not depend on where or in which order
    the blocks ran. Memory: the sample's features, the blocks in flight, and the labels (8 bytes
    per pixel).

    Parameters
    ----------
    read : callable
        ``read(start, stop)`` -> Stokes profiles (stop - start, 4, nw) of flat pixels ``start..stop``
        in continuum units (non-finite rows are invalid pixels). Runs where the block runs: with a
        ``map_blocks`` of a cluster it must pickle (a bound method of an observation handle does).
    npix : int
        Pixels in the field.
    k : int
        Clusters wanted; lowered to ``n_valid // per_cluster`` (at least 1) on a field of few valid pixels.
    seed, sample : int
        Seed of the sample draw and the k-means++ seeding; most pixels the centroids are fitted on.
    block : int
        Pixels per ``read`` call at most.
    per_cluster : int
        Fewest valid pixels per cluster.
    map_blocks : callable, optional
        Runs the block tasks (:data:`BlockMap`); default one after the other in this process.
    on_block : callable, optional
        Called with the pixel count of each finished block of either pass (progress).

    Returns
    -------
    centroids : ndarray (k', 4 nw)
    labels : ndarray (npix,) int64
        Cluster of each pixel, -1 for invalid pixels; empty clusters dropped and labels renumbered.

    Raises
    ------
    InitError
        No valid pixel.
    """
    centroids, labels, _ = _cluster_passes(read, npix, k, seed=seed, sample=sample, block=block,
                                           per_cluster=per_cluster, map_blocks=map_blocks, on_block=on_block)
    return centroids, labels


def _cluster_passes(read: Callable[[int, int], np.ndarray], npix: int, k: int, *, seed: int, sample: int, block: int,
                    per_cluster: int, map_blocks: BlockMap | None, on_block: Callable[[int], None] | None,
                    keep: Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None = None,
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The two passes of :func:`cluster_field`; with ``keep``, the second pass also returns candidates.

    ``keep(sample_labels, centroids, n_valid)`` -> per (raw) centroid, the key threshold below which a
    member's profile comes back from the second pass (:func:`field_block_candidates`). Returns the centroids,
    the labels (empty clusters dropped, renumbered) and the candidates: ``index`` (flat, sorted) and
    ``rows`` (their profiles), empty without ``keep``.
    """
    rng = np.random.default_rng(seed)
    fit_idx = _sample_index(npix, sample, rng)
    run = map_blocks or serial_blocks
    spans = [(a, min(npix, a + block)) for a in range(0, npix, block)]
    tasks = []
    for a, b in spans:
        lo, hi = np.searchsorted(fit_idx, (a, b))
        tasks.append((read, a, b, fit_idx[lo:hi] - a))
    valid = np.zeros(npix, dtype=bool)
    s1, s2, count = np.zeros(4), np.zeros(4), 0
    fit_rows = []
    for (a, b), (ok, t1, t2, n, rows) in zip(spans, run(field_block_stats, tasks)):
        valid[a:b] = ok
        s1 += t1
        s2 += t2
        count += n
        fit_rows.append(rows)
        if on_block is not None:
            on_block(b - a)
    if count == 0:
        raise InitError("no valid pixel to cluster: every pixel of the field has NaN or infinite values")
    scale = np.sqrt(np.maximum(s2 / count - (s1 / count) ** 2, 0.0))
    scale = np.where(scale > 1e-8, scale, 1.0)
    nf = fit_rows[0].shape[1] * fit_rows[0].shape[2]
    fit = np.concatenate(fit_rows).reshape(-1, nf) / np.repeat(scale, nf // 4).astype(np.float32)
    centroids, fit_labels = _fit_centroids(fit, min(int(k), max(1, int(valid.sum()) // per_cluster)), rng)
    labels = np.full(npix, -1, dtype=np.int64)
    cand_idx: list[np.ndarray] = []
    cand_rows: list[np.ndarray] = []
    if keep is None:
        second = run(field_block_labels, [(read, a, b, scale, centroids) for a, b in spans])
    else:
        below = keep(fit_labels, centroids, int(valid.sum()))
        second = run(field_block_candidates, [(read, a, b, scale, centroids, below, seed) for a, b in spans])
    for (a, b), got in zip(spans, second):
        if keep is None:
            labels[a:b] = got
        else:
            labels[a:b], offsets, rows = got
            cand_idx.append(a + offsets)
            cand_rows.append(rows)
        if on_block is not None:
            on_block(b - a)
    centroids, labels = _drop_empty(centroids, labels)
    candidates = {"index": np.concatenate(cand_idx) if cand_idx else np.zeros(0, dtype=np.int64),
                  "rows": np.concatenate(cand_rows) if cand_rows else np.zeros((0, 4, nf // 4), dtype=np.float32)}
    return centroids, labels, candidates


def cluster_subset(read: Callable[[int, int], np.ndarray], npix: int, k: int, n: int, *, seed: int = 0,
                   sample: int = 50_000, block: int = 65_536, per_cluster: int = 4, floor: int | None = None,
                   map_blocks: BlockMap | None = None, on_block: Callable[[int], None] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`cluster_field` and :func:`choose_subset` with the subset's profiles, in two reads of the field.

    The second pass of the k-means (the assignment) also sends back the profiles of the pixels
    that may be chosen: those whose key (:func:`pixel_keys`) lies below a threshold per cluster,
    set from the sample's cluster sizes with a margin (1.5 times the pixels a cluster is expected
    to give, plus 64; every pixel of a cluster with fewer than 64 sample members). The subset is
    then ``choose_subset(labels, n, seed=seed, floor=floor)``'s: per cluster the pixels of
    smallest key, all among the candidates whenever a cluster has enough of them below its
    threshold; a cluster that has not (a sample far from the field) has its chosen pixels read
    again by blocks. Arguments as :func:`cluster_field`; ``n``, ``floor`` as :func:`choose_subset`.

    Returns
    -------
    centroids, labels
        As :func:`cluster_field`.
    index : ndarray (m,) int64
        The subset, sorted flat indices (``choose_subset``'s).
    rows : ndarray (m, 4, nw) float32
        Their Stokes profiles (as ``read`` gives them).
    """
    def keep(lab: np.ndarray, centroids: np.ndarray, n_valid: int) -> np.ndarray:
        in_sample = np.bincount(lab, minlength=centroids.shape[0]).astype(np.float64)
        size = in_sample / max(1, lab.size) * n_valid
        want = _want(size, n, floor)
        return np.where(in_sample < 64, np.inf, (1.5 * want + 64.0) / np.maximum(size, 1.0))

    centroids, labels, cand = _cluster_passes(read, npix, k, seed=seed, sample=sample, block=block,
                                              per_cluster=per_cluster, map_blocks=map_blocks, on_block=on_block,
                                              keep=keep)
    valid = labels >= 0
    want = _want(np.bincount(labels[valid], minlength=centroids.shape[0]), n, floor)
    c_index = cand["index"]
    c_label = labels[c_index]
    c_keys = pixel_keys(seed, c_index)
    parts = []
    for c in range(centroids.shape[0]):
        sel = np.flatnonzero(c_label == c)
        if sel.size >= want[c]:  # the want[c] smallest keys of the cluster are all among its candidates
            parts.append(c_index[sel[_smallest(c_keys[sel], int(want[c]))]])
        else:  # the sample misjudged this cluster's size: draw from all its members
            members = np.flatnonzero(labels == c)
            parts.append(members[_smallest(pixel_keys(seed, members), int(want[c]))])
    index = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    pos = np.minimum(np.searchsorted(c_index, index), max(0, c_index.size - 1))
    have = (c_index[pos] == index) if c_index.size else np.zeros(index.size, dtype=bool)
    rows = np.empty((index.size, 4, cand["rows"].shape[-1]), dtype=np.float32)
    rows[have] = cand["rows"][pos[have]]
    if not have.all():  # read the chosen pixels that were not candidates again
        rows[~have] = gather_rows(read, npix, index[~have], rows.shape[-1], block=block, map_blocks=map_blocks)
    return centroids, labels, index, rows


def gather_rows(read: Callable[[int, int], np.ndarray], npix: int, index: np.ndarray, nw: int, *,
                block: int = 65_536, map_blocks: BlockMap | None = None,
                on_block: Callable[[int], None] | None = None) -> np.ndarray:
    """Stokes profiles (n, 4, nw) float32 of the flat pixels ``index`` (NaN where it is -1), read by blocks
    of ``block`` pixels, each a task of ``map_blocks`` (:func:`field_block_rows`); blocks holding none of
    them are not read (``on_block`` still counts them)."""
    index = np.asarray(index, dtype=np.int64)
    out = np.full((index.size, 4, int(nw)), np.nan, dtype=np.float32)
    tasks, where = [], []
    for a in range(0, npix, block):
        b = min(npix, a + block)
        sel = np.flatnonzero((index >= a) & (index < b))
        if sel.size:
            tasks.append((read, a, b, index[sel] - a))
            where.append(sel)
        elif on_block is not None:
            on_block(b - a)
    for (_, a, b, _), sel, got in zip(tasks, where, (map_blocks or serial_blocks)(field_block_rows, tasks)):
        out[sel] = got
        if on_block is not None:
            on_block(b - a)
    return out


def _want(sizes: np.ndarray, n: int, floor: int | None) -> np.ndarray:
    """Pixels each cluster of ``sizes`` gives to a subset of ``n`` (:func:`choose_subset`'s rule)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    k = int(np.count_nonzero(sizes))
    total = float(sizes.sum())
    n = int(min(max(n, 1), total))
    fl = max(1, n // (4 * max(k, 1))) if floor is None else int(floor)
    return np.minimum(sizes, np.maximum(fl, np.round(n * sizes / max(total, 1.0)))).astype(np.int64)


def choose_subset(labels: np.ndarray, n: int, *, seed: int = 0, floor: int | None = None) -> np.ndarray:
    """Sorted flat indices of ``n`` pixels (about) drawn from every cluster.

    Each cluster gives ``max(floor, n * size / total)`` pixels (all of them if
    it has fewer); ``floor`` defaults to ``n / (4 k)``. Pixels labelled -1 are
    never chosen. The draw: per cluster, the pixels of smallest key
    (:func:`pixel_keys` of ``seed``), a uniform random choice that
    :func:`cluster_subset` can also make block by block.
    """
    lab = np.asarray(labels).reshape(-1)
    valid = lab >= 0
    if not valid.any():
        raise InitError("no valid pixel to choose a subset from")
    k = int(lab[valid].max()) + 1
    want = _want(np.bincount(lab[valid], minlength=k), n, floor)
    chosen = []
    for c in range(k):
        members = np.flatnonzero(lab == c)
        chosen.append(members[_smallest(pixel_keys(seed, members), int(want[c]))])
    return np.sort(np.concatenate(chosen))


def _smallest(keys: np.ndarray, m: int) -> np.ndarray:
    """Positions of the ``m`` smallest of ``keys`` (all when ``m`` >= their number; O(n), not a sort)."""
    if m >= keys.size:
        return np.arange(keys.size)
    return np.argpartition(keys, m - 1)[:m] if m > 0 else np.zeros(0, dtype=np.int64)


def medoids(features: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per cluster, the flat index of the member nearest its centroid (k,)."""
    out = np.empty(centroids.shape[0], dtype=np.int64)
    for c in range(centroids.shape[0]):
        members = np.flatnonzero(labels == c)
        d = ((features[members] - centroids[c]) ** 2).sum(axis=1)
        out[c] = members[int(np.argmin(d))]
    return out


def best_match(stokes: np.ndarray, profiles: np.ndarray, noise: np.ndarray,
               block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Index of the best-matching profile (npix,) and its reduced chi2 (npix,), NaN pixels -> (-1, NaN)."""
    s = np.asarray(stokes, dtype=np.float64)
    npix, nw = s.shape[0], s.shape[2]
    w = (1.0 / np.asarray(noise, dtype=np.float64) ** 2)[:, None]
    prof = np.asarray(profiles, dtype=np.float64).reshape(profiles.shape[0], -1)
    wf = np.broadcast_to(w, (4, nw)).reshape(-1)
    pw = prof * wf
    pp = (prof * pw).sum(axis=1)
    idx = np.full(npix, -1, dtype=np.int64)
    chi2 = np.full(npix, np.nan)
    good = np.flatnonzero(valid_pixels(s))
    for i in range(0, good.size, block):
        g = good[i:i + block]
        x = s[g].reshape(g.size, -1)
        xx = (x * x * wf).sum(axis=1)
        d = xx[:, None] - 2.0 * x @ pw.T + pp[None, :]
        j = np.argmin(d, axis=1)
        idx[g] = j
        chi2[g] = np.maximum(d[np.arange(g.size), j], 0.0) / (4 * nw)
    return idx, chi2


class KMeansInit(InitProvider):
    """Starting points from a database of inverted representative profiles (option ``database``)."""

    name = "kmeans"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        unknown = sorted(set(self.options) - {"database"})
        if unknown:
            raise InitError(f"[init.kmeans] takes only 'database', got {unknown}")
        db = self.options.get("database")
        if not isinstance(db, (str, os.PathLike)) or not str(db):
            raise InitError("init provider 'kmeans' needs a database of inverted representatives: "
                            "-I database=kmeans.h5 (written by stokesflow assist --model kmeans)")
        self.path = str(Path(db).resolve())
        self._db: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def _load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._db is None:
            try:
                with h5py.File(self.path, "r") as h5:
                    names = [n.decode() if isinstance(n, bytes) else str(n) for n in h5.attrs["parameters"]]
                    self._db = (h5["wavelength"][:], h5["profiles"][:],
                                np.column_stack([h5["params"][n][:] for n in names]), np.asarray(h5.attrs["noise"]))
                    self._names = tuple(names)
            except (OSError, KeyError) as exc:
                raise InitError(f"[init.kmeans] database {self.path} cannot be read as a k-means database "
                                f"({type(exc).__name__}: {exc})") from None
        return self._db

    def bind(self, backend: Any) -> "KMeansInit":
        bound = KMeansInit(self.options)
        bound._load()
        if list(bound._names) != list(backend.parameter_names):
            raise InitError(f"[init.kmeans] {self.path} holds parameters {list(bound._names)}, backend "
                            f"{backend.name!r} fits {list(backend.parameter_names)}")
        return bound

    def initial_guess(self, stokes, wavelength, *, start, stop):  # noqa: D102 - see base
        wl, profiles, params, noise = self._load()
        if wl.size != np.asarray(wavelength).size or np.max(np.abs(wl - wavelength)) > 1e-4:
            raise InitError(f"[init.kmeans] {self.path} was built on {wl.size} wavelengths {wl[0]:.4f}..{wl[-1]:.4f} A, "
                            f"the observation has {np.asarray(wavelength).size}")
        idx, _ = best_match(stokes, profiles, noise)
        out = np.full((stokes.shape[0], params.shape[1]), np.nan)
        ok = idx >= 0
        out[ok] = params[idx[ok]]
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {"options": self.options, "path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.options, self.path, self._db = state["options"], state["path"], None
