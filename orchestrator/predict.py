"""``stokesflow predict``: a trained network's parameters for every pixel, in the result-file layout.

The prediction runs as chunk tasks on the executor (the same plan, store and
resume as ``invert``): each task reads its pixels, applies the model and
returns the parameters with status 0 (3 for NaN/inf pixels), ``chi2`` and
``sigma`` NaN and ``n_iter`` 0. The output serves as a fast approximate
inversion on its own, and as an init cube for ``--init previous -I file=guess.h5``.
The model is checked against the observation first (lines, wavelength grid,
spectral instrument): a mismatch is an error naming it, before any work.

A ``unet`` model (:mod:`stokesflow.nn_init.unet`) needs neighbouring pixels:
its chunks are bands of whole rows (``chunk_pixels`` rounded to whole rows),
and each task reads its band plus a halo of ``UNET_HALO`` rows above and below,
runs the tiled network on it and keeps its own rows, so bands join without
seams. It also writes the calibrated 90 % intervals, ``/interval/<name>``
(ny, nx, 2) [units] (written before the chunk is marked done, so a resumed
prediction keeps them).

The model may also be a k-means database (:mod:`stokesflow.orchestrator.kmeans_db`):
each pixel then gets the parameters of its best-matching representative, and
``/chi2`` holds that match's reduced chi2 (a quality map of the look-up).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from stokesflow.backends import STATUS_BAD_INPUT, ChunkResult
from stokesflow.backends.base import ParameterSpec
from stokesflow.orchestrator.errors import OrchestratorError
from stokesflow.orchestrator.store import ChunkOutput, ResultStore

__all__ = ["UNET_HALO", "predict_chunk", "predict_unet_band", "predict_observation"]

#: Rows of context read above and below a unet band [pixels] (twice the network's receptive half-width).
UNET_HALO = 48

log = logging.getLogger("stokesflow.predict")


def _lookup(db_path: str, stokes: np.ndarray) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    from stokesflow.nn_init.kmeans import KMeansInit, best_match

    prov = KMeansInit({"database": db_path})
    _, profiles, params, noise = prov._load()
    idx, chi2 = best_match(stokes, profiles, noise)
    out = np.full((stokes.shape[0], params.shape[1]), np.nan)
    out[idx >= 0] = params[idx[idx >= 0]]
    return prov._names, out, chi2


def predict_chunk(obs: Any, model_path: str, threads: int, index: int, start: int, stop: int,
                  kind: str = "network") -> ChunkOutput:
    """The task: the model's parameters for flat pixels ``start..stop`` of ``obs``."""
    t0 = time.perf_counter()
    stokes = obs.read_pixels(start, stop)
    npix = stop - start
    chi2 = np.full(npix, np.nan)
    if kind == "kmeans":
        names, params, chi2 = _lookup(model_path, stokes)
    else:
        import torch

        from stokesflow.nn_init.network_init import loaded_model

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        model = loaded_model(model_path)
        names, params = model.parameters, model.predict(stokes)
    good = np.isfinite(stokes).all(axis=(1, 2))
    res = ChunkResult(
        names=names, params=params.astype(np.float32),
        sigma=np.full(params.shape, np.nan, dtype=np.float32), chi2=chi2.astype(np.float32),
        n_iter=np.zeros(npix, dtype=np.int32),
        status=np.where(good, 0, STATUS_BAD_INPUT).astype(np.uint8),
    )
    return ChunkOutput(index=index, start=start, stop=stop, result=res,
                       seconds={"total": time.perf_counter() - t0}, worker=f"{os.getpid()}")


def predict_unet_band(obs: Any, model_path: str, threads: int, index: int, start: int,
                      stop: int) -> tuple[ChunkOutput, np.ndarray]:
    """The unet task: parameters and intervals (npix, npar, 2) of the rows ``start // nx .. stop // nx``.

    ``start`` and ``stop`` are whole rows; :data:`UNET_HALO` rows of context above and below are read too.
    """
    import torch

    from stokesflow.nn_init.network_init import loaded_model
    from stokesflow.nn_init.unet import predict_field

    t0 = time.perf_counter()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    nx = obs.nx
    y0, y1 = start // nx, stop // nx
    h0, h1 = max(0, y0 - UNET_HALO), min(obs.ny, y1 + UNET_HALO)
    model = loaded_model(model_path)
    cube = obs.read_rows(h0, h1)
    vals, iv = predict_field(model, cube)
    vals, iv = vals[y0 - h0:y1 - h0].reshape(-1, vals.shape[2]), iv[y0 - h0:y1 - h0].reshape(-1, vals.shape[2], 2)
    good = np.isfinite(cube[y0 - h0:y1 - h0]).all(axis=(2, 3)).reshape(-1)
    npix = stop - start
    res = ChunkResult(
        names=model.parameters, params=vals.astype(np.float32),
        sigma=np.full(vals.shape, np.nan, dtype=np.float32), chi2=np.full(npix, np.nan, dtype=np.float32),
        n_iter=np.zeros(npix, dtype=np.int32), status=np.where(good, 0, STATUS_BAD_INPUT).astype(np.uint8),
    )
    return (ChunkOutput(index=index, start=start, stop=stop, result=res,
                        seconds={"total": time.perf_counter() - t0}, worker=f"{os.getpid()}"), iv.astype(np.float32))


def _write_intervals(store: ResultStore, names: tuple[str, ...], start: int, stop: int, nx: int,
                     iv: np.ndarray) -> None:
    """Write a band's intervals into ``/interval/<name>`` of the open store (before the chunk is marked done)."""
    y0, y1 = start // nx, stop // nx
    attrs = {"level": 0.9, "description": "calibrated central 90 % interval (lower, upper) of the unet's distribution"}
    for j, name in enumerate(names):
        store.write_extra_rows(f"interval/{name}", y0, iv[:, j].reshape(y1 - y0, nx, 2), attrs)


def predict_observation(input_path: str | os.PathLike[str], model_path: str | os.PathLike[str],
                        out: str | os.PathLike[str], *, cluster: Any = None, chunk_pixels: int = 0,
                        resume: bool = False, overwrite: bool = False, threads: int | None = None,
                        executor: Any = None) -> dict[str, Any]:
    """Apply the model in ``model_path`` to every pixel of ``input_path``; write ``out``.

    Parameters
    ----------
    input_path : path
        Observation (HDF5 contract).
    model_path : path
        Model file of ``stokesflow train`` (``cnn`` or ``unet``: the latter also writes
        ``/interval/<name>``), or a k-means database
        (``assist --model kmeans``: DIR/kmeans.h5).
    out : path
        Output in the result-file layout (``/params/<name>``, ``/status``, ...).
    cluster : ClusterSpec or mapping, optional
        Default ``serial``.
    chunk_pixels : int
        Pixels per task (0: 65536); whole rows for a unet.
    resume, overwrite : bool
        As for ``invert``.
    threads : int, optional
        torch threads per task; default the worker's share of the cores.
    executor : Executor, optional
        An open executor to use (left open) instead of one opened for ``cluster``.

    Returns
    -------
    dict
        ``seconds``, ``pixels``, ``pixels_per_s``, ``out``.

    Raises
    ------
    InitError
        A model that does not fit the observation (ModelMismatchError) or cannot be read.
    OrchestratorError
        Bad input or output path.
    """
    from stokesflow.clusters import ClusterSpec, executor_for
    from stokesflow.nn_init.network_init import loaded_model
    from stokesflow.orchestrator.io import open_observation
    from stokesflow.orchestrator.plan import plan_chunks
    from stokesflow.orchestrator.run import package_versions

    from stokesflow.orchestrator.kmeans_db import database_specs, is_kmeans_database

    t0 = time.perf_counter()
    obs = open_observation(input_path)
    model_path = str(Path(model_path).resolve())
    kind = "kmeans" if is_kmeans_database(model_path) else "network"
    if kind == "kmeans":
        from stokesflow.nn_init.kmeans import KMeansInit

        wl, _, _, _ = KMeansInit({"database": model_path})._load()
        if wl.size != obs.nw or np.max(np.abs(wl - obs.wavelength)) > 1e-4:
            raise OrchestratorError(f"k-means database {model_path} was built on {wl.size} wavelengths, "
                                    f"observation {obs.path} has {obs.nw} (or another grid)")
        specs = database_specs(model_path)
        digest = str(os.path.getmtime(model_path))
    else:
        model = loaded_model(model_path)
        model.check_compatible(where=f"observation {obs.path}", lines=list(obs.lines), wavelength=obs.wavelength,
                               spectral_instrument=obs.meta.get("spectral_instrument") or None)
        enc = model.targets
        specs = tuple(ParameterSpec(n, u, float(lo), float(hi), 1.0, c)
                      for n, u, lo, hi, c in zip(enc.names, enc.units, enc.lower, enc.upper, enc.circular))
        digest = model.metadata.get("data_digest")
    unet = kind == "network" and model.kind == "unet"
    if unet:  # bands of whole rows
        rows = max(1, (chunk_pixels or 65536) // obs.nx)
        chunk_pixels = rows * obs.nx
    out = Path(out)
    if out.exists() and not (resume or overwrite):
        raise OrchestratorError(f"output {out} exists; pass --overwrite to replace it or --resume to finish it")
    plan = plan_chunks(obs.ny, obs.nx, chunk_pixels or 65536)
    fingerprint = {"observation": obs.fingerprint(), "model": model_path, "model_digest": digest,
                   "chunk_pixels": plan.chunk_pixels}
    spec = cluster if isinstance(cluster, ClusterSpec) else ClusterSpec.from_mapping(dict(cluster or {"kind": "serial"}))
    if resume and out.exists():
        store = ResultStore.resume(out, fingerprint=fingerprint, parameters=specs)
    else:
        store = ResultStore.create(out, plan=plan, parameters=specs, fingerprint=fingerprint, overwrite=overwrite,
                                   attrs={"backend": f"network:{kind}", "init": "none", "input": str(obs.path),
                                          "model": model_path, "versions": json.dumps(package_versions()),
                                          "config": "", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    with store, executor_for(spec, executor) as ex:
        from stokesflow.orchestrator.train import worker_threads

        threads = int(threads or worker_threads(ex.n_workers))
        pending = store.pending()
        log.info("predicting %d x %d pixels of %s with %s: %d chunks", obs.ny, obs.nx, obs.path, model_path, len(pending))
        t1 = time.perf_counter()
        if unet:
            futures = {ex.submit(predict_unet_band, obs, model_path, threads, c.index, c.start, c.stop): c
                       for c in pending}
        else:
            futures = {ex.submit(predict_chunk, obs, model_path, threads, c.index, c.start, c.stop, kind): c
                       for c in pending}
        for fut in ex.as_completed(list(futures)):
            if unet:
                chunk_out, iv = fut.result()
                _write_intervals(store, tuple(s.name for s in specs), chunk_out.start, chunk_out.stop, obs.nx, iv)
                store.write_chunk(chunk_out)
            else:
                store.write_chunk(fut.result())
        t_pred = time.perf_counter() - t1
        store.finalize({"time_predict_s": t_pred, "time_total_s": time.perf_counter() - t0})
    npix = int(sum(c.npix for c in pending))
    return {"out": str(out), "pixels": npix, "seconds": t_pred, "pixels_per_s": npix / t_pred if t_pred > 0 else 0.0}
