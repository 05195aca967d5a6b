"""Clustering of spectra (scipy's k-means), representative subsets, and the ``kmeans`` look-up provider.

- :func:`cluster_spectra`: k-means (``scipy.cluster.vq.kmeans2``, k-means++
  seeding) of normalised spectra (:func:`~stokesflow.nn_init.features.normalise_spectra`)
  fitted on a seeded sample of at most ``sample`` pixels, then every pixel
  assigned to its nearest centroid (``scipy.cluster.vq.vq``, by blocks).
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
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from stokesflow.nn_init.providers import InitError, InitProvider

__all__ = ["cluster_spectra", "choose_subset", "medoids", "best_match", "KMeansInit"]


def cluster_spectra(features: np.ndarray, k: int, *, seed: int = 0, sample: int = 50_000,
                    block: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """k-means of feature rows; returns (centroids (k', nf), labels (n,) int, -1 for non-finite rows).

    ``k'`` <= ``k``: empty clusters are dropped and labels renumbered.
    """
    from scipy.cluster.vq import kmeans2, vq

    f = np.asarray(features, dtype=np.float64)
    good = np.flatnonzero(np.isfinite(f).all(axis=1))
    if good.size < k:
        raise InitError(f"k-means with k={k} needs at least {k} valid pixels, got {good.size}")
    rng = np.random.default_rng(seed)
    fit_idx = good if good.size <= sample else np.sort(rng.choice(good, sample, replace=False))
    centroids, _ = kmeans2(f[fit_idx], int(k), minit="++", seed=rng, iter=20)
    labels = np.full(f.shape[0], -1, dtype=np.int64)
    for i in range(0, good.size, block):
        idx = good[i:i + block]
        labels[idx], _ = vq(f[idx], centroids, check_finite=False)
    used = np.unique(labels[labels >= 0])
    remap = np.full(centroids.shape[0], -1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    labels[labels >= 0] = remap[labels[labels >= 0]]
    return centroids[used], labels


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
