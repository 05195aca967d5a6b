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

from stokesflow.nn_init.providers import InitError, InitProvider

__all__ = ["BlockMap", "serial_blocks", "cluster_spectra", "cluster_field", "field_block_stats", "field_block_labels",
           "choose_subset", "medoids", "best_match", "KMeansInit"]


def _sample_index(n: int, sample: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted flat indices of the rows the centroids are fitted on: all ``n`` rows, or a seeded draw of ``sample``."""
    if n <= sample:
        return np.arange(n)
    return np.sort(rng.choice(n, sample, replace=False))


def _fit_centroids(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means (scipy's ``kmeans2``, k-means++ seeding, 20 iterations) of the finite rows ``x``."""
    from scipy.cluster.vq import kmeans2

    if x.shape[0] < k:
        raise InitError(f"k-means with k={k} needs at least {k} valid pixels, got {x.shape[0]}")
    centroids, _ = kmeans2(np.asarray(x, dtype=np.float64), int(k), minit="++", seed=rng, iter=20)
    return centroids


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
    centroids = _fit_centroids(fit[np.isfinite(fit).all(axis=1)], k, rng)
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
    from stokesflow.nn_init.features import normalise_spectra

    f, _ = normalise_spectra(read(start, stop), scale)
    labels = np.full(stop - start, -1, dtype=np.int64)
    _assign(f, centroids, labels)
    return labels


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
    rng = np.random.default_rng(seed)
    fit_idx = _sample_index(npix, sample, rng)
    run = map_blocks or serial_blocks
    starts = list(range(0, npix, block))
    spans = [(a, min(npix, a + block)) for a in starts]
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
    centroids = _fit_centroids(fit, min(int(k), max(1, int(valid.sum()) // per_cluster)), rng)
    labels = np.full(npix, -1, dtype=np.int64)
    for (a, b), lab in zip(spans, run(field_block_labels, [(read, a, b, scale, centroids) for a, b in spans])):
        labels[a:b] = lab
        if on_block is not None:
            on_block(b - a)
    return _drop_empty(centroids, labels)


def choose_subset(labels: np.ndarray, n: int, *, seed: int = 0, floor: int | None = None) -> np.ndarray:
    """Sorted flat indices of ``n`` pixels (about) drawn from every cluster.

    Each cluster gives ``max(floor, n * size / total)`` pixels (all of them if
    it has fewer); ``floor`` defaults to ``n / (4 k)``. Pixels labelled -1 are
    never chosen.
    """
    lab = np.asarray(labels)
    valid = lab >= 0
    k = int(lab[valid].max()) + 1 if valid.any() else 0
    if k == 0:
        raise InitError("no valid pixel to choose a subset from")
    total = int(valid.sum())
    n = int(min(max(n, 1), total))
    fl = max(1, n // (4 * k)) if floor is None else int(floor)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(k):
        members = np.flatnonzero(lab == c)
        want = min(members.size, max(fl, int(round(n * members.size / total))))
        chosen.append(rng.choice(members, want, replace=False))
    return np.sort(np.concatenate(chosen))


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
    good = np.flatnonzero(np.isfinite(s).all(axis=(1, 2)))
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
