"""``stokesflow train``: train a network on (observation, result file) pairs, as a task on the executor.

:func:`read_training_pairs` reads the pairs: only pixels with status 0 (a
good fit) and finite parameters are kept, optionally also below a chi2
ceiling; bad status, poor fits (status 4), iteration-capped fits (status 1)
and NaN pixels are left out. Every pair must share the lines and the
wavelength grid, and each result file must be the inversion of its
observation (same map size). A depth-stratified result (SIR: (ny, nx, ndepth)
maps on ``/log_tau``) is read into its backend's init columns
(:func:`training_columns`): each stratified quantity sampled at the backend's
log-tau nodes (``T@-4`` ... ``azimuth@1``) plus its height-independent
parameters (vmac, filling factor, stray light), each normalised on its own
(the azimuth through cos 2phi and sin 2phi). ``stokesflow predict`` writes such
a model's guesses back as a stratified file on those nodes, which ``--init
previous`` reads into the same columns.

:func:`train_model` submits :func:`train_task` to the executor (to a worker
that offers a ``GPU`` resource when a Dask cluster has one; on the CPU
otherwise, with ``torch.set_num_threads`` set to every core the worker
process may run on, :func:`task_threads`: the training runs alone, the other
workers wait for its model). The task reads the data itself, trains with a checkpoint beside the
output (``<out>.ckpt``; a rerun of a killed training continues from the last
epoch), writes the history of every epoch to ``<out>.history.json``, which
the driver follows to log progress, and saves the model file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from stokesflow.backends.base import ParameterSpec, valid_pixels
from stokesflow.orchestrator.errors import OrchestratorError

__all__ = ["TrainingData", "TrainingMaps", "read_training_pairs", "read_training_maps", "train_task", "train_model",
           "training_columns", "worker_threads", "task_threads"]

log = logging.getLogger("stokesflow.train")


@dataclass
class TrainingData:
    """Training pairs read from observations and result files.

    Attributes
    ----------
    stokes : ndarray (n, 4, nw) float32
    params : ndarray (n, npar) float64
    specs : tuple of ParameterSpec
        From the result files' ``/params/<name>`` attributes.
    wavelength : ndarray (nw,) [A]
    metadata : dict
        ``instrument``, ``spectral_instrument``, ``lines`` and ``provenance``.
    """

    stokes: np.ndarray
    params: np.ndarray
    specs: tuple[ParameterSpec, ...]
    wavelength: np.ndarray
    metadata: dict[str, Any]


@dataclass(frozen=True)
class _Target:
    """One column a model learns: ``spec`` (named after the column), read from ``/params/<source>``,
    at ``log_tau`` for a column of a depth-stratified map (``"T@-2"``), else the (ny, nx) map itself."""

    spec: ParameterSpec
    source: str
    log_tau: float | None


def _attr_text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def training_columns(result_path: str | os.PathLike[str]) -> tuple[str, ...] | None:
    """The columns a model trained on ``result_path`` predicts, when they are not the file's parameters.

    None for a result without ``/log_tau`` (the model predicts the file's
    parameters, as ME's). For a depth-stratified result (SIR) the init columns
    of the backend that wrote it (``Backend.init_columns``, rebuilt from the
    file's ``backend`` and ``backend_options`` attributes; SIR: ``T@-4`` ...
    ``azimuth@1`` at its ``seed_nodes``, and its parameters): a network
    trained on them seeds that backend at its nodes.

    Raises
    ------
    OrchestratorError
        The backend that wrote the file cannot be built here.
    """
    import h5py

    from stokesflow.backends import BackendError, get_backend

    try:
        with h5py.File(result_path, "r") as h5:
            if "log_tau" not in h5:
                return None
            name = _attr_text(h5.attrs.get("backend", ""))
            options = json.loads(_attr_text(h5.attrs.get("backend_options", "{}")) or "{}")
    except OSError as exc:
        raise OrchestratorError(f"train: cannot read result file {result_path} ({exc}); give a result file "
                                "of stokesflow invert") from None
    try:
        backend = get_backend(name, options)
    except (BackendError, TypeError, ValueError) as exc:
        raise OrchestratorError(
            f"{result_path} is a depth-stratified result of backend {name!r}: a model trained on it predicts that "
            f"backend's init columns (its log-tau nodes), and the backend cannot be built here: {exc}. Make it "
            "available where the training runs (for SIR: STOKESFLOW_SIR)") from None
    return tuple(backend.init_columns)


def _targets_of(result_path: str, columns: Sequence[str] | None) -> tuple[tuple[_Target, ...], np.ndarray | None]:
    """The training targets a result file gives, and its ``/log_tau`` (None when it has none).

    ``columns`` None: every parameter of the file, each a (ny, nx) map. Otherwise
    the columns among ``columns`` that the file holds: a plain name for a
    (ny, nx) map, ``NAME@LOGTAU`` for a (ny, nx, ndepth) map ``NAME`` whose
    depths span LOGTAU; the others (a plain name of a stratified map, a node
    outside the file's depths, a quantity the file lacks) are left out.
    """
    import h5py

    from stokesflow.nn_init.features import split_column

    with h5py.File(result_path, "r") as h5:
        names = json.loads(h5.attrs["parameters"])
        log_tau = np.asarray(h5["log_tau"][:], dtype=np.float64) if "log_tau" in h5 else None
        wanted = list(names) if columns is None else list(columns)
        out = []
        for col in wanted:
            src, at = split_column(col)
            if src not in names:
                continue
            ds = h5["params"][src]
            if at is None and ds.ndim != 2:
                continue
            if at is not None and (ds.ndim != 3 or log_tau is None or not log_tau.min() <= at <= log_tau.max()):
                continue
            a = ds.attrs
            out.append(_Target(ParameterSpec(col, _attr_text(a.get("unit", "")), float(a["lower"]),
                                             float(a["upper"]), 1.0, bool(a.get("circular", False))), src, at))
    if not out:
        raise OrchestratorError(f"result file {result_path} holds none of the columns {list(wanted)} a model "
                                f"would learn (its parameters: {names})")
    return tuple(out), log_tau


def _target_values(r: Any, targets: Sequence[_Target], log_tau: np.ndarray | None) -> np.ndarray:
    """(ny, nx, ncol) float64: each target's map (a stratified map sampled at the column's depth)."""
    from stokesflow.nn_init.features import sample_depth

    cols = []
    for t in targets:
        arr = r.params[t.source]
        if t.log_tau is None:
            cols.append(np.asarray(arr, dtype=np.float64))
        else:
            period = (t.spec.upper - t.spec.lower) if t.spec.circular else None
            cols.append(sample_depth(arr, log_tau, t.log_tau, period=period))  # type: ignore[arg-type]
    return np.stack(cols, axis=2)


def _paired(inputs: Sequence[str], results: Sequence[str], columns: Sequence[str] | None = None,
            input_options: Mapping[str, Any] | None = None) -> Iterator[tuple[str, str, Any, Any, tuple, np.ndarray]]:
    """Open each (observation, result) pair; check counts, map sizes and that every pair is one kind of data.

    Yields ``(input, result, observation, result file, target specs, targets (ny, nx, ncol))``; every
    pair has the first pair's columns, lines and wavelength grid (a model is trained for one kind of data).
    ``input_options``: how to read every observation (``[input]`` keys, as ``invert`` takes them).
    """
    from stokesflow.orchestrator.run import open_input
    from stokesflow.orchestrator.store import read_result

    if len(inputs) != len(results) or not inputs:
        raise OrchestratorError(f"train needs --input and --results in pairs, got {len(inputs)} input(s) and "
                                f"{len(results)} result file(s)")
    first = None
    for inp, res in zip(inputs, results):
        obs = open_input(inp, input_options)
        r = read_result(res)
        if r.status.shape != (obs.ny, obs.nx):
            raise OrchestratorError(f"result file {res} holds a {r.status.shape[0]} x {r.status.shape[1]} map, "
                                    f"observation {inp} is {obs.ny} x {obs.nx}: pass each result with its own input")
        targets, log_tau = _targets_of(res, columns)
        s = tuple(t.spec for t in targets)
        if first is None:
            first = (s, obs.lines, np.asarray(obs.wavelength))
        else:
            specs, lines, wl = first
            if [p.name for p in s] != [p.name for p in specs]:
                raise OrchestratorError(f"{res} gives the columns {[p.name for p in s]}, the first result file "
                                        f"{[p.name for p in specs]}: train on results of one backend and setup")
            if obs.lines != lines or obs.nw != wl.size or np.max(np.abs(obs.wavelength - wl)) > 1e-4:
                raise OrchestratorError(f"{inp}: lines {obs.lines} and {obs.nw} wavelengths differ from the first "
                                        f"input's {lines} and {wl.size}; a model is trained for one kind of data")
        yield inp, res, obs, r, s, _target_values(r, targets, log_tau)


def _provenance(obs: Any, r: Any, res: str, used: int) -> dict[str, Any]:
    """Where a model's training data came from: input and result files, configuration digest, pixels used."""
    config = str(r.attrs.get("config", ""))
    return {"input": str(obs.path), "input_fingerprint": obs.fingerprint(), "result": str(Path(res).resolve()),
            "config_digest": hashlib.sha256(config.encode()).hexdigest()[:16],
            "result_fingerprint": str(r.attrs.get("fingerprint", "")),
            "pixels_used": used, "pixels_total": int(obs.npix)}


def _data_metadata(obs: Any) -> dict[str, Any]:
    """What a model file records of the data it was trained on."""
    return {"instrument": str(obs.meta.get("instrument", "")),
            "spectral_instrument": str(obs.meta.get("spectral_instrument") or ""), "lines": list(obs.lines)}


def read_training_pairs(inputs: Sequence[str], results: Sequence[str], *, max_chi2: float | None = None,
                        max_pixels: int = 500_000, seed: int = 0, columns: Sequence[str] | None = None,
                        input_options: Mapping[str, Any] | None = None) -> TrainingData:
    """Read the good pixels of each (observation, result) pair.

    ``columns``: what the model learns (``TrainingData.specs`` are named after
    them). None: the result files' parameters. A backend's ``init_columns``
    (:func:`training_columns` of a depth-stratified result): its plain names
    read from (ny, nx) maps, its node columns ``NAME@LOGTAU`` sampled from the
    (ny, nx, ndepth) maps on ``/log_tau`` (linear in log tau; the azimuth as a
    unit vector of 2 phi); columns a file cannot give are left out.

    Raises
    ------
    OrchestratorError
        Unequal numbers of inputs and results, a result of another map size,
        pairs with different lines, grids or parameters, no good pixel.
    """
    rng = np.random.default_rng(seed)
    xs, ps, prov = [], [], []
    specs = wl = None
    meta: dict[str, Any] = {}
    for inp, res, obs, r, s, values in _paired(inputs, results, columns, input_options):
        if specs is None:
            specs, wl = s, np.asarray(obs.wavelength)
            meta = _data_metadata(obs)
        params = values.reshape(-1, len(s))
        keep = (r.status.reshape(-1) == 0) & np.isfinite(params).all(axis=1)
        if max_chi2 is not None:
            keep &= r.chi2.reshape(-1) <= max_chi2
        idx = np.flatnonzero(keep)
        stokes = np.empty((idx.size, 4, obs.nw), dtype=np.float32)
        rows = max(1, (1 << 22) // max(1, obs.nx * 4 * obs.nw))
        k = 0
        for y0 in range(0, obs.ny, rows):
            y1 = min(obs.ny, y0 + rows)
            sel = idx[(idx >= y0 * obs.nx) & (idx < y1 * obs.nx)] - y0 * obs.nx
            if sel.size:
                stokes[k:k + sel.size] = obs.read_rows(y0, y1).reshape(-1, 4, obs.nw)[sel]
                k += sel.size
        finite = valid_pixels(stokes)
        xs.append(stokes[finite])
        ps.append(params[idx][finite])
        prov.append(_provenance(obs, r, res, int(finite.sum())))
    x, p = np.concatenate(xs), np.concatenate(ps)
    if x.shape[0] == 0:
        raise OrchestratorError(f"no pixel of {list(results)} has status 0 (a good fit): nothing to train on")
    if x.shape[0] > max_pixels:
        pick = np.sort(rng.choice(x.shape[0], max_pixels, replace=False))
        x, p = x[pick], p[pick]
    meta["provenance"] = {"pairs": prov, "max_chi2": max_chi2, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return TrainingData(x, p, specs, wl, meta)


@dataclass
class TrainingMaps:
    """Training maps for an image network (``unet``): whole fields, with a mask of the pixels that count.

    Attributes
    ----------
    cubes : list of ndarray (ny, nx, 4, nw) float32
    params : list of ndarray (ny, nx, npar) float64
    masks : list of ndarray (ny, nx) bool
        Status 0, finite parameters and spectra (and chi2 below ``max_chi2``).
    specs, wavelength, metadata
        As in :class:`TrainingData`.
    """

    cubes: list[np.ndarray]
    params: list[np.ndarray]
    masks: list[np.ndarray]
    specs: tuple[ParameterSpec, ...]
    wavelength: np.ndarray
    metadata: dict[str, Any]


def read_training_maps(inputs: Sequence[str], results: Sequence[str], *, max_chi2: float | None = None,
                       columns: Sequence[str] | None = None,
                       input_options: Mapping[str, Any] | None = None) -> TrainingMaps:
    """Read each (observation, result) pair as whole maps for the unet; bad pixels are masked, not dropped.

    Raises
    ------
    OrchestratorError
        As :func:`read_training_pairs`.
    """
    cubes, params, masks, prov = [], [], [], []
    specs = wl = None
    meta: dict[str, Any] = {}
    for inp, res, obs, r, s, par in _paired(inputs, results, columns, input_options):
        if specs is None:
            specs, wl = s, np.asarray(obs.wavelength)
            meta = _data_metadata(obs)
        cube = obs.read_rows(0, obs.ny).astype(np.float32)
        mask = (r.status == 0) & np.isfinite(par).all(axis=2) & valid_pixels(cube)
        if max_chi2 is not None:
            mask &= np.asarray(r.chi2) <= max_chi2
        cubes.append(cube)
        params.append(par)
        masks.append(mask)
        prov.append(_provenance(obs, r, res, int(mask.sum())))
    if not any(m.any() for m in masks):
        raise OrchestratorError(f"no pixel of {list(results)} has status 0 (a good fit): nothing to train on")
    meta["provenance"] = {"pairs": prov, "max_chi2": max_chi2, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return TrainingMaps(cubes, params, masks, specs, wl, meta)


def worker_threads(n_workers: int) -> int:
    """A worker's share of this machine's cores (at least 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, int(n_workers)))


def task_threads(requested: int | None) -> int:
    """torch threads of a task that runs alone (the training): ``requested`` when > 0, else every core
    this process may run on (its CPU affinity: a batch job's cores, a whole local machine).

    Resolved where the task runs, not on the driver: a login node's core count says nothing of a
    worker node's. Measured on a 2-vCPU machine, the CNN of an HMI-like 1024^2 loop (34,114
    subset pixels): 4.8 s with one thread, 3.7 s with two.
    """
    if requested and int(requested) > 0:
        return int(requested)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def train_task(inputs: Sequence[str], results: Sequence[str], out: str, settings: Mapping[str, Any],
               threads: int, max_chi2: float | None = None, model: str = "cnn",
               columns: Sequence[str] | None = None, input_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The training task (runs on a worker): read the pairs, train, write ``out``; returns a summary.

    ``columns``: what the model learns (:func:`read_training_pairs`); None: the files' parameters.

    ``model="unet"`` reads whole maps (:func:`read_training_maps`) and trains
    :func:`stokesflow.nn_init.unet.train_unet`. Both checkpoint to ``<out>.ckpt`` after every epoch, so a
    killed training continues from its last finished epoch.
    """
    import torch

    from stokesflow.nn_init.training import train_network
    from stokesflow.orchestrator.run import package_versions, raise_if_stop_requested

    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = task_threads(threads)
    history_path = Path(out + ".history.json")
    history: list[dict[str, Any]] = []

    def on_epoch(entry: dict[str, Any]) -> None:
        history.append(entry)
        tmp = history_path.with_name(history_path.name + ".partial")
        tmp.write_text(json.dumps(history))
        tmp.replace(history_path)
        # the epoch's checkpoint is written: a Ctrl-C that a finalizer swallowed (the command line's
        # handler recorded it) stops the training here, where the task runs in the command's process
        raise_if_stop_requested()

    if model == "unet":
        from stokesflow.nn_init.unet import train_unet

        maps = read_training_maps(inputs, results, max_chi2=max_chi2, columns=columns, input_options=input_options)
        meta = dict(maps.metadata)
        meta["provenance"]["versions"] = package_versions()
        net = train_unet(maps.cubes, maps.params, maps.masks, maps.specs, maps.wavelength, metadata=meta,
                         settings=settings, threads=threads, device=device, on_epoch=on_epoch,
                         checkpoint=out + ".ckpt")
        n_pix = int(sum(m.sum() for m in maps.masks))
        for c in net.metadata["calibration"]:
            log.info("unet %s: 90 %% interval temperature %.3g, scale %.3g, held-out coverage %.1f %%", c["name"],
                     c["temperature"], c["scale"], 100 * c["coverage"])
    else:
        data = read_training_pairs(inputs, results, max_chi2=max_chi2, columns=columns,
                                   input_options=input_options)
        meta = dict(data.metadata)
        meta["provenance"]["versions"] = package_versions()
        net = train_network(data.stokes, data.params, data.specs, data.wavelength, metadata=meta,
                            settings=settings, checkpoint=out + ".ckpt", threads=threads, device=device,
                            on_epoch=on_epoch)
        n_pix = int(data.stokes.shape[0])
    model_ = net
    model_.save(out)
    Path(out + ".ckpt").unlink(missing_ok=True)
    hist = model_.metadata["history"]
    out_summary = {"model": out, "pixels": n_pix, "n_train": model_.metadata["n_train"],
                   "n_val": model_.metadata["n_val"], "epochs": len(hist),
                   "best_epoch": model_.metadata["best_epoch"], "val_loss": min(h["val_loss"] for h in hist),
                   "seconds": time.perf_counter() - t0, "device": device, "threads": threads, "history": hist}
    if model == "unet":
        out_summary["calibration"] = model_.metadata["calibration"]
        out_summary["calibration_curve"] = model_.metadata.get("calibration_curve")
    return out_summary


def _submit(ex: Any, fn: Any, *args: Any) -> Any:
    """Submit to a worker offering a ``GPU`` resource when the cluster has one, else anywhere."""
    if ex.offered_resources().get("GPU", 0.0) >= 1:
        log.info("training on a worker that offers a GPU")
    return ex.submit_preferring({"GPU": 1}, fn, *args)


def train_model(inputs: Sequence[str], results: Sequence[str], out: str | os.PathLike[str], *,
                model: str = "cnn", settings: Mapping[str, Any] | None = None, cluster: Any = None,
                max_chi2: float | None = None, overwrite: bool = False, threads: int | None = None,
                executor: Any = None, columns: Sequence[str] | None = None,
                input_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train a model on the pairs as one task on the executor of ``cluster``; return the task's summary.

    Parameters
    ----------
    inputs, results : sequence of str
        Observation files and their result files, in pairs.
    out : path
        The model file. An existing one is refused unless ``overwrite``; a
        checkpoint ``<out>.ckpt`` left by a killed training is resumed.
    model : {"cnn", "unet"}
    settings : mapping, optional
        :class:`stokesflow.nn_init.training.TrainSettings` keys (``epochs``, ...), or for
        ``unet`` :class:`stokesflow.nn_init.unet.UNetSettings` keys.
    cluster : ClusterSpec or mapping, optional
        Where the task runs (default: ``serial``).
    max_chi2 : float, optional
        Leave out pixels whose reduced chi2 is above it.
    overwrite : bool
        Replace an existing model file.
    threads : int, optional
        torch threads of the task; default every core its worker may use (:func:`task_threads`,
        resolved on the worker: the training runs alone). On a machine loaded by other work, 1 is
        often faster (torch's threads spin); 1 also makes the model the same on any machine.
    executor : Executor, optional
        An open executor to use (left open) instead of one opened for ``cluster``.
    columns : sequence of str, optional
        What the model learns (:func:`read_training_pairs`). Default: the
        result files' parameters, or for a depth-stratified result its
        backend's init columns (:func:`training_columns` of the first result file).
    input_options : mapping, optional
        How to read every observation: keys of the ``[input]`` table (``format``, ``axes``,
        ``wavelength``, ``lines``, ``instrument``, ``noise``, ``continuum``, ``reader_options``),
        as ``invert`` takes them.
    """
    from stokesflow.clusters import ClusterSpec, executor_for
    from stokesflow.nn_init.network import require_torch
    from stokesflow.nn_init.training import TrainSettings
    from stokesflow.orchestrator.paths import check_new_output
    from stokesflow.orchestrator.run import raise_if_stop_requested

    if model not in ("cnn", "unet"):
        raise OrchestratorError(f"--model {model!r} is not available; choose cnn or unet")
    require_torch("stokesflow train")  # not imported here: the task imports it where it runs
    if model == "unet":
        from stokesflow.nn_init.unet import UNetSettings

        st: dict[str, Any] = UNetSettings(**dict(settings or {}))
    else:
        st = TrainSettings(**dict(settings or {}))
    out = str(Path(out).resolve())
    for p in list(inputs) + list(results):
        if not Path(p).exists():
            raise OrchestratorError(f"train: file {p!r} not found")
    check_new_output(Path(out), overwrite=overwrite, what=f"model file {out}", inputs=list(inputs) + list(results),
                     exists_remedy="pass --overwrite to replace it")
    _say_incomplete(results)
    if columns is None:
        columns = training_columns(results[0])
    spec = cluster if isinstance(cluster, ClusterSpec) else ClusterSpec.from_mapping(dict(cluster or {"kind": "serial"}))
    history_path = Path(out + ".history.json")
    history_path.unlink(missing_ok=True)  # the task rewrites it with the epochs it runs
    with executor_for(spec, executor) as ex:
        said = f"{int(threads)} thread(s)" if threads else "threads: every core of its worker"
        log.info("training a %s on %d pair(s), %s, on the %s executor", model, len(inputs), said, spec.kind)
        if Path(out + ".ckpt").exists():  # said here: the task's own log line stays on a remote worker
            log.info("%s.ckpt holds the finished epochs of an interrupted training: it goes on from there", out)
        fut = _submit(ex, train_task, [str(i) for i in inputs], [str(r) for r in results], out, dict(st),
                      int(threads or 0), max_chi2, model, None if columns is None else list(columns),
                      dict(input_options or {}))
        shown = 0
        while not fut.done():
            raise_if_stop_requested()
            time.sleep(0.1)
            shown = _log_new_epochs(history_path, shown, int(st["epochs"]), spec.kind)
        summary = ex.result(fut)
    if spec.kind != "serial":
        _log_new_epochs(history_path, shown, int(st["epochs"]), spec.kind)
    history_path.unlink(missing_ok=True)
    log.info("wrote %s: %d pixels (%d train, %d validation), %d epochs (best %d, validation loss %.4g), %.1f s on %s "
             "(%d thread(s))", out, summary["pixels"], summary["n_train"], summary["n_val"], summary["epochs"],
             summary["best_epoch"], summary["val_loss"], summary["seconds"], summary["device"], summary["threads"])
    return summary


def _say_incomplete(results: Sequence[str | os.PathLike[str]]) -> None:
    """Warn of result files that are not complete: a model trained on them sees part of the field only.

    Raises
    ------
    StoreError
        A file that is not a result file of ``stokesflow invert``.
    """
    from stokesflow.orchestrator.store import inspect_result

    for res in results:
        a = inspect_result(res)
        if not a.get("complete", False):
            log.warning("%s is not complete (%d of %d chunks done): the model learns from its finished pixels "
                        "only; finish it first (`stokesflow invert ... --resume`) to train on the whole field",
                        res, a["n_done"], int(a.get("n_chunks", 0)))


def _log_new_epochs(path: Path, shown: int, epochs: int, kind: str) -> int:
    """Log the epochs of the history file not shown yet (a serial run logs them itself)."""
    if kind == "serial":
        return shown
    try:
        hist = json.loads(path.read_text())
    except (OSError, ValueError):
        return shown
    for h in hist[shown:]:
        log.info("epoch %d/%d: train loss %.4g, validation loss %.4g (%.1f s)", h["epoch"], h.get("planned", epochs),
                 h["train_loss"], h["val_loss"], h["seconds"])
    return max(shown, len(hist))
