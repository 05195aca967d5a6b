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

A model trained on a depth-stratified backend's results (SIR: node columns
``T@-4`` ... ``azimuth@1`` and height-independent parameters, see
:mod:`stokesflow.orchestrator.train`) is written as a stratified result:
``/log_tau`` holds the model's node depths (deep to high) and
``/params/<quantity>`` (ny, nx, nnodes) the predicted value at each node (NaN
at a node the model does not predict), the other columns as (ny, nx) maps; the
attribute ``columns`` lists the model's columns. ``--init previous -I
file=guess.h5`` reads those nodes back into the backend's init columns (exactly
at the nodes, linearly between them for a run with other ``seed_nodes``).

:func:`seed_guess` merges a seed (an ME result) into such a file: the
backend's ``seed_parameters`` (SIR: B, inclination, azimuth, vlos) from the
seed, constant over the nodes, the network's other columns kept (``stokesflow
assist --backend sir``'s ME seed).

The model may also be a k-means database (:mod:`stokesflow.orchestrator.kmeans_db`):
each pixel then gets the parameters of its best-matching representative, and
``/chi2`` holds that match's reduced chi2 (a quality map of the look-up).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from stokesflow.backends import STATUS_BAD_INPUT, ChunkResult, valid_pixels
from stokesflow.backends.base import ParameterSpec
from stokesflow.orchestrator.errors import OrchestratorError
from stokesflow.orchestrator.store import ChunkOutput, ResultStore

__all__ = ["UNET_HALO", "GuessLayout", "predict_chunk", "predict_unet_band", "predict_observation", "seed_guess"]

#: Rows of context read above and below a unet band [pixels] (twice the network's receptive half-width).
UNET_HALO = 48

log = logging.getLogger("stokesflow.predict")


@dataclass(frozen=True)
class GuessLayout:
    """How a model's columns go into the result-file layout.

    Attributes
    ----------
    columns : tuple of str
        The model's columns (``B``, ``T@-2``, ...), in its output order.
    specs : tuple of ParameterSpec
        The result file's parameters: the plain columns, then one per stratified quantity.
    stratified : tuple of ParameterSpec
        The stratified quantities among ``specs`` (empty without node columns).
    log_tau : ndarray (nnodes,), optional
        The node depths, deep to high; None without node columns.
    """

    columns: tuple[str, ...]
    specs: tuple[ParameterSpec, ...]
    stratified: tuple[ParameterSpec, ...] = ()
    log_tau: np.ndarray | None = None
    _flat: tuple[int, ...] = field(default=(), repr=False)
    _nodes: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, specs: Sequence[ParameterSpec]) -> "GuessLayout":
        """From the model's column specs (named after the columns)."""
        from stokesflow.nn_init.features import split_column

        cols = tuple(p.name for p in specs)
        split = [split_column(c) for c in cols]
        depths = sorted({at for _, at in split if at is not None}, reverse=True)
        if not depths:
            return cls(cols, tuple(specs), _flat=tuple(range(len(cols))))
        flat = tuple(j for j, (_, at) in enumerate(split) if at is None)
        nodes: dict[str, list[tuple[int, int]]] = {}
        strat: dict[str, ParameterSpec] = {}
        for j, ((name, at), p) in enumerate(zip(split, specs)):
            if at is not None:
                nodes.setdefault(name, []).append((j, depths.index(at)))
                strat.setdefault(name, ParameterSpec(name, p.unit, p.lower, p.upper, p.scale, p.circular))
        clash = sorted(set(strat) & {cols[j] for j in flat})
        if clash:
            raise OrchestratorError(f"model columns {cols}: {clash} given both as one value and at nodes")
        st = tuple(strat.values())
        return cls(cols, tuple(specs[j] for j in flat) + st, st, np.asarray(depths, dtype=np.float64), flat,
                   tuple((n, tuple(v)) for n, v in nodes.items()))

    def result(self, values: np.ndarray, chi2: np.ndarray, status: np.ndarray) -> ChunkResult:
        """A chunk result from the model's values (npix, ncol) [units]: sigma NaN, n_iter 0."""
        npix = values.shape[0]
        names = tuple(p.name for p in self.specs)
        params = np.full((npix, len(names)), np.nan, dtype=np.float32)
        params[:, :len(self._flat)] = values[:, list(self._flat)]
        strat: dict[str, np.ndarray] = {}
        for name, nodes in self._nodes:
            arr = np.full((npix, self.log_tau.size), np.nan, dtype=np.float32)  # type: ignore[union-attr]
            for j, k in nodes:
                arr[:, k] = values[:, j]
            strat[name] = arr
        return ChunkResult(
            names=names, params=params, sigma=np.full(params.shape, np.nan, dtype=np.float32),
            chi2=np.asarray(chi2, dtype=np.float32), n_iter=np.zeros(npix, dtype=np.int32),
            status=np.asarray(status, dtype=np.uint8), log_tau=self.log_tau if strat else None, stratified=strat,
        )


def _lookup(db_path: str, stokes: np.ndarray) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    from stokesflow.nn_init.kmeans import KMeansInit, best_match

    prov = KMeansInit({"database": db_path})
    _, profiles, params, noise = prov._load()
    idx, chi2 = best_match(stokes, profiles, noise)
    out = np.full((stokes.shape[0], params.shape[1]), np.nan)
    out[idx >= 0] = params[idx[idx >= 0]]
    return prov._names, out, chi2


def predict_chunk(obs: Any, model_path: str, threads: int, index: int, start: int, stop: int,
                  kind: str = "network", layout: GuessLayout | None = None) -> ChunkOutput:
    """The task: the model's parameters for flat pixels ``start..stop`` of ``obs`` (in ``layout``, default:
    one (ny, nx) map per column)."""
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
    good = valid_pixels(stokes)
    if layout is None:
        layout = GuessLayout(tuple(names), tuple(ParameterSpec(n, "", -np.inf, np.inf, 1.0) for n in names),
                             _flat=tuple(range(len(names))))
    res = layout.result(params, chi2, np.where(good, 0, STATUS_BAD_INPUT))
    return ChunkOutput(index=index, start=start, stop=stop, result=res,
                       seconds={"total": time.perf_counter() - t0}, worker=f"{os.getpid()}")


def predict_unet_band(obs: Any, model_path: str, threads: int, index: int, start: int,
                      stop: int, layout: GuessLayout | None = None) -> tuple[ChunkOutput, np.ndarray]:
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
    good = valid_pixels(cube[y0 - h0:y1 - h0]).reshape(-1)
    npix = stop - start
    names = model.parameters
    if layout is None:
        layout = GuessLayout(tuple(names), tuple(ParameterSpec(n, "", -np.inf, np.inf, 1.0) for n in names),
                             _flat=tuple(range(len(names))))
    res = layout.result(vals, np.full(npix, np.nan), np.where(good, 0, STATUS_BAD_INPUT))
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
                        executor: Any = None, columns: Sequence[str] | None = None,
                        input_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
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
    columns : sequence of str, optional
        The init columns of the backend the guesses are for (``Backend.init_columns``):
        a network predicting a column the backend does not take is refused
        (:meth:`~stokesflow.nn_init.model_file.NetworkModel.check_compatible`).

    input_options : mapping, optional
        How to read ``input_path``: keys of the ``[input]`` table (``format``, ``axes``,
        ``wavelength``, ``lines``, ``instrument``, ``noise``, ``continuum``, ``reader_options``),
        as ``invert`` takes them.
    Returns
    -------
    dict
        ``seconds``, ``pixels``, ``pixels_per_s``, ``out``; with ``already_complete`` true
        (and 0 pixels) when ``resume`` found ``out`` complete and left it untouched.

    Raises
    ------
    InitError
        A model that does not fit the observation (ModelMismatchError) or cannot be read.
    OrchestratorError
        Bad input or output path; an observation without one valid pixel or not in continuum
        units (``ObservationError``).
    """
    from stokesflow.clusters import ClusterSpec, executor_for
    from stokesflow.nn_init.network_init import loaded_model
    from stokesflow.orchestrator.plan import plan_chunks
    from stokesflow.orchestrator.run import (
        TRIAL_SAMPLE_PIXELS, check_continuum_units, open_input, package_versions, raise_if_stop_requested,
        sample_valid_pixels,
    )

    from stokesflow.orchestrator.kmeans_db import database_specs, is_kmeans_database
    from stokesflow.orchestrator.paths import check_new_output

    t0 = time.perf_counter()
    obs = open_input(input_path, input_options)
    # refused as by invert: a field without one valid pixel, or not in continuum units
    check_continuum_units(obs.path, sample_valid_pixels(obs, TRIAL_SAMPLE_PIXELS, what="predict")[0])
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
        if columns is not None:
            model.check_compatible(where="the run's backend", columns=list(columns))
        enc = model.targets
        specs = tuple(ParameterSpec(n, u, float(lo), float(hi), 1.0, c)
                      for n, u, lo, hi, c in zip(enc.names, enc.units, enc.lower, enc.upper, enc.circular))
        digest = model.metadata.get("data_digest")
    layout = GuessLayout.of(specs)
    unet = kind == "network" and model.kind == "unet"
    if unet:  # bands of whole rows
        rows = max(1, (chunk_pixels or 65536) // obs.nx)
        chunk_pixels = rows * obs.nx
    out = Path(out)
    if not (resume and out.exists()):
        check_new_output(out, overwrite=overwrite, what=f"output {str(out)!r}", inputs=[obs.path, model_path],
                         exists_remedy="pass --overwrite to replace it or --resume to finish it")
    plan = plan_chunks(obs.ny, obs.nx, chunk_pixels or 65536)
    fingerprint = {"observation": obs.fingerprint(), "model": model_path, "model_digest": digest,
                   "chunk_pixels": plan.chunk_pixels}
    spec = cluster if isinstance(cluster, ClusterSpec) else ClusterSpec.from_mapping(dict(cluster or {"kind": "serial"}))
    if resume and out.exists():
        _, done = ResultStore.check_resume(out, fingerprint)
        if done.all():  # as invert: a complete file is left untouched and no cluster is started
            log.info("%s is already complete (%d of %d chunks): nothing to predict, the file is unchanged",
                     out, done.size, done.size)
            return {"out": str(out), "pixels": 0, "seconds": 0.0, "pixels_per_s": 0.0, "already_complete": True}
        store = ResultStore.resume(out, fingerprint=fingerprint, parameters=layout.specs)
    else:
        store = ResultStore.create(out, plan=plan, parameters=layout.specs, fingerprint=fingerprint,
                                   overwrite=overwrite, stratified=layout.stratified, log_tau=layout.log_tau,
                                   attrs={"backend": f"network:{kind}", "init": "none", "input": str(obs.path),
                                          "model": model_path, "versions": json.dumps(package_versions()),
                                          "columns": json.dumps(list(layout.columns)),
                                          "config": "", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    with store, executor_for(spec, executor) as ex:
        from stokesflow.orchestrator.train import worker_threads

        threads = int(threads or worker_threads(ex.n_workers))
        pending = store.pending()
        log.info("predicting %d x %d pixels of %s with %s: %d chunks", obs.ny, obs.nx, obs.path, model_path, len(pending))
        t1 = time.perf_counter()
        if unet:
            futures = {ex.submit(predict_unet_band, obs, model_path, threads, c.index, c.start, c.stop, layout): c
                       for c in pending}
        else:
            futures = {ex.submit(predict_chunk, obs, model_path, threads, c.index, c.start, c.stop, kind, layout): c
                       for c in pending}
        for fut in ex.as_completed(list(futures)):
            got = ex.result(fut)
            if unet:
                chunk_out, iv = got
                _write_intervals(store, layout.columns, chunk_out.start, chunk_out.stop, obs.nx, iv)
                store.write_chunk(chunk_out)
            else:
                store.write_chunk(got)
            raise_if_stop_requested()  # a Ctrl-C a finalizer swallowed: stop at the chunk boundary
        t_pred = time.perf_counter() - t1
        store.finalize({"time_predict_s": t_pred, "time_total_s": time.perf_counter() - t0})
    npix = int(sum(c.npix for c in pending))
    return {"out": str(out), "pixels": npix, "seconds": t_pred, "pixels_per_s": npix / t_pred if t_pred > 0 else 0.0}


def seed_guess(guess: str | os.PathLike[str], seed: str | os.PathLike[str], out: str | os.PathLike[str],
               backend: Any) -> dict[str, Any]:
    """Write ``out``: the guesses of ``guess`` with ``backend.seed_parameters`` taken from ``seed``.

    The seed is read exactly as ``--init previous -I file=SEED`` reads it for ``backend``
    (:meth:`stokesflow.nn_init.previous.PreviousInit.read_columns`: an ME result's B,
    inclination, azimuth and vlos maps in the backend's units, NaN where the seed's fit failed,
    was skipped or was not run), and each seeded quantity replaces the guess at every node (a
    stratified map of ``guess``, (ny, nx, nnodes)) or its map ((ny, nx)), so the backend builds
    the same constant-with-height start as from the seed alone (:meth:`SIRBackend._model_for`:
    B at least ``B_FLOOR``, the azimuth modulo 180 deg). Where the seed gives no value the
    guess's own values stay. ``out`` is written whole and then renamed (a rerun rewrites it).

    Parameters
    ----------
    guess : path
        Guesses in the result-file layout (:func:`predict_observation` of a model trained on a
        depth-stratified backend: ``/log_tau`` = its nodes).
    seed : path
        A result file with (ny, nx) maps of the seed parameters (``stokesflow invert --backend me``).
    out : path
        The merged guesses (may not be ``guess``).
    backend : Backend
        The backend the guesses are for; its ``seed_parameters`` name what the seed gives.

    Returns
    -------
    dict
        ``parameters`` (the seeded quantities), ``pixels`` (pixels with a usable seed),
        ``seconds``.

    Raises
    ------
    InitError
        A seed that lacks a seed parameter, holds one in other units or has another field size.
    OrchestratorError
        A backend without ``seed_parameters``, or ``out`` equal to ``guess``.
    """
    import shutil

    import h5py

    from stokesflow.nn_init.previous import PreviousInit

    t0 = time.perf_counter()
    names = tuple(getattr(backend, "seed_parameters", ()) or ())
    if not names:
        raise OrchestratorError(f"backend {backend.name!r} names no seed_parameters: an ME seed applies to a "
                                "depth-stratified backend (sir, desire)")
    guess, out = Path(guess), Path(out)
    if guess.resolve() == out.resolve():
        raise OrchestratorError(f"seed_guess writes a new file: out {out} is the guess file itself")
    with h5py.File(guess, "r") as g:
        ny, nx = g["status"].shape
    prov = PreviousInit({"file": str(seed)}).bind(backend)
    prov.check_observation((ny, nx))
    cols = prov.read_columns(0, ny * nx)
    columns = tuple(getattr(backend, "init_columns", backend.parameter_names))
    tmp = out.with_name(out.name + ".partial")
    shutil.copyfile(guess, tmp)
    seeded = np.zeros(ny * nx, dtype=bool)
    with h5py.File(tmp, "r+") as h5:
        for name in names:
            if name not in h5["params"]:
                raise OrchestratorError(f"guess file {guess} has no /params/{name} to seed; its maps are "
                                        f"{sorted(h5['params'])}")
            value = cols[:, columns.index(name)]
            ok = np.isfinite(value)
            seeded |= ok
            ds = h5["params"][name]
            arr = ds[()].reshape(ny * nx, -1)
            arr[ok] = value[ok, None]  # every node of a stratified map, or the (ny, nx) map
            ds[...] = arr.reshape(ds.shape)
        h5.attrs["seed"] = str(Path(seed).resolve())
        h5.attrs["seeded"] = json.dumps(list(names))
    tmp.replace(out)
    return {"parameters": list(names), "pixels": int(seeded.sum()), "seconds": time.perf_counter() - t0}
