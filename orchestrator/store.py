"""The result file: HDF5, written by the driver alone, resumable.

Layout (DESIGN.md, "Result file")::

    /params/<name>   (ny, nx) float32   best fit, NaN where not inverted
    /sigma/<name>    (ny, nx) float32   1-sigma uncertainty
                     (ny, nx, ndepth) for the depth-stratified quantities of a
                     depth-stratified backend (SIR: T, Pe, vmic, B, vlos,
                     inclination, azimuth), listed in the attribute ``stratified``
    /log_tau         (ndepth,) float64  their depth grid (log10 tau_500), only then
    /chi2            (ny, nx) float32   reduced weighted chi-square
    /n_iter          (ny, nx) int32     solver iterations
    /status          (ny, nx) uint8     0 ok, 1 max-iter, 2 failed, 3 bad input, 4 poor fit, 255 not run
    /synthetic       (ny, nx, 4, nw) float32, optional best-fit profiles
    /chunks/start    (n_chunks,) int64  first flat (row-major) pixel of each chunk
    /chunks/stop     (n_chunks,) int64  one past the last pixel
    /chunks/done     (n_chunks,) bool   the chunk's pixels are all on disk
    /chunks/seconds  (n_chunks,) float32 worker seconds spent on the chunk (read + invert)
    /chunks/error    (n_chunks,) str    why a chunk failed, "" if it did not

Attributes: ``config`` (TOML text), ``versions`` (JSON), ``backend``,
``backend_options`` (JSON), ``init``, ``parameters``, ``units``, ``input``,
``noise`` (four sigmas I, Q, U, V, when known) and ``noise_source``
(``configuration``, ``observation``, ``estimated`` or ``unknown``), ``fingerprint`` and
``fingerprint_json``, ``time_plan_s``, ``time_setup_s``, ``time_invert_s``,
``time_write_s``, ``time_total_s``, ``chunks_computed`` (chunks inverted by the
last run), ``runs``, ``complete``.

Crash safety
------------
An HDF5 file can be corrupted by a kill *during* a change of its metadata
(object headers, B-trees, heaps). The store therefore makes every metadata
change up front: all datasets are created contiguous with their space
allocated and filled at creation (``ALLOC_TIME_EARLY``), without time
stamps, and the file is flushed. During the run the driver only overwrites
raw bytes at fixed offsets, in this order for each chunk: the chunk's data,
flush, its ``done`` flag, flush. A SIGKILL at any moment can therefore tear
at most the data of the chunk being written, which is not marked done and is
recomputed by ``--resume``. Error texts (variable-length strings, a heap
change) and the final attributes are written once, at the end.

The file uses the default (earliest) HDF5 format on purpose: with
``libver="latest"`` HDF5 marks the superblock "open for writing" and, after a
kill, refuses to reopen the file until ``h5clear`` is run on it, which would
defeat ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from stokesflow.backends.base import STATUS_NAMES, STATUS_NOT_RUN, ChunkResult
from stokesflow.orchestrator.errors import OrchestratorError
from stokesflow.orchestrator.plan import Chunk, Plan, flat_to_rows
from stokesflow.orchestrator.resultview import require_result_layout

__all__ = [
    "StoreError",
    "ResumeError",
    "ChunkOutput",
    "ResultStore",
    "ResultFile",
    "fingerprint_digest",
    "read_result",
    "inspect_result",
    "read_status_counts",
]

_LAYOUT_VERSION = 1


class StoreError(OrchestratorError):
    """The result file cannot be created, opened or written."""


class ResumeError(StoreError):
    """``--resume`` was asked for a result file that does not fit this run."""


@dataclass
class ChunkOutput:
    """What a task sends back to the driver for one chunk: a ChunkResult plus its place.

    Attributes
    ----------
    index, start, stop : int
        The chunk: flat pixels ``start..stop``.
    result : ChunkResult
        Every pixel of the chunk (skipped ones with status 3 and NaN), in
        compact dtypes to keep the pickled payload small: ``params``,
        ``sigma``, ``chi2``, ``synthetic`` float32, ``n_iter`` int32,
        ``status`` uint8.
    seconds : dict of str to float
        Worker-side timings (``read``, ``init``, ``invert``, ``setup``,
        ``total``), in s.
    worker : str
        Host and process id of the worker that did it.
    """

    index: int
    start: int
    stop: int
    result: ChunkResult
    seconds: dict[str, float] = field(default_factory=dict)
    worker: str = ""


def fingerprint_digest(fingerprint: Mapping[str, Any]) -> tuple[str, str]:
    """Canonical JSON text and its SHA-256 hex digest."""
    text = json.dumps(fingerprint, sort_keys=True, default=str, separators=(",", ":"))
    return text, hashlib.sha256(text.encode()).hexdigest()


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{where}: absent in the file, {new[key]!r} in this run")
            elif key not in new:
                out.append(f"{where}: {old[key]!r} in the file, absent in this run")
            else:
                out.extend(_differences(old[key], new[key], where))
        return out
    return [] if old == new else [f"{prefix}: {old!r} in the file, {new!r} in this run"]


def _early_dcpl() -> h5py.h5p.PropDCID:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


class ResultStore:
    """The driver's handle on a result file (create or resume, write, finalise).

    Use :meth:`create` or :meth:`resume`; close with :meth:`close` or a
    ``with`` block.
    """

    def __init__(self, path: str | Path, h5: h5py.File, plan: Plan, names: tuple[str, ...]) -> None:
        self.path = str(path)
        self._h5 = h5
        self.plan = plan
        self.names = names
        self._errors: dict[int, str] = {}
        n = plan.n_chunks
        self._done = np.asarray(h5["chunks/done"][:], dtype=bool)
        if self._done.shape != (n,):
            raise StoreError(f"{self.path}: /chunks/done has shape {self._done.shape}, expected ({n},)")
        self._has_synthetic = "synthetic" in h5
        #: datasets by path, looked up once: each h5py lookup costs ~0.15 ms, and a chunk writes ~25
        self._datasets: dict[str, h5py.Dataset] = {}
        self._stratified = frozenset(json.loads(_attr(h5.attrs.get("stratified", "[]"))))
        self.computed = 0
        self.write_seconds = 0.0

    # -- construction -----------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        plan: Plan,
        parameters: Sequence[Any],
        fingerprint: Mapping[str, Any],
        attrs: Mapping[str, Any],
        nw: int | None = None,
        overwrite: bool = False,
        stratified: Sequence[Any] = (),
        log_tau: np.ndarray | None = None,
    ) -> "ResultStore":
        """Create a fresh result file with every dataset allocated and filled.

        Parameters
        ----------
        path : str or Path
            Result file; an existing one is refused unless ``overwrite``.
        plan : Plan
            Field of view and chunks.
        parameters : sequence of ParameterSpec
            The backend's parameters (name, unit, bounds).
        fingerprint : mapping
            What a resume must match (observation, backend and its options,
            init, chunking); stored as ``fingerprint_json`` and its digest.
        attrs : mapping
            Further file attributes (``config``, ``versions``, ``backend``...).
        nw : int, optional
            Wavelength points; when given, ``/synthetic`` is created.
        overwrite : bool
            Replace an existing file.
        stratified : sequence of ParameterSpec, optional
            Parameters stored depth by depth, (ny, nx, ndepth), from the
            chunk results' ``stratified`` arrays (depth-stratified backends).
        log_tau : ndarray (ndepth,), optional
            Their depth grid; required with ``stratified``.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise StoreError(
                f"result file {str(path)!r} already exists; pass --resume to finish that run, "
                "--overwrite to replace it, or choose another --out"
            )
        if path.parent and not path.parent.exists():
            raise StoreError(f"cannot create result file {str(path)!r}: folder {str(path.parent)!r} does not exist")
        tmp = path.with_name(path.name + ".creating")
        ny, nx = plan.ny, plan.nx
        names = tuple(p.name for p in parameters)
        strat = tuple(p.name for p in stratified)
        if strat and log_tau is None:
            raise StoreError("depth-stratified parameters need their log_tau grid")
        nd = 0 if log_tau is None else int(np.shape(log_tau)[0])
        text, digest = fingerprint_digest(fingerprint)
        try:
            with h5py.File(tmp, "w") as h5:
                kw = dict(dcpl=_early_dcpl(), track_times=False, fill_time="alloc")
                gp, gs = h5.create_group("params"), h5.create_group("sigma")
                for p in parameters:
                    shape = (ny, nx, nd) if p.name in strat else (ny, nx)
                    for g in (gp, gs):
                        d = g.create_dataset(p.name, shape=shape, dtype="f4", fillvalue=np.nan, **kw)
                        d.attrs.update(unit=p.unit, lower=p.lower, upper=p.upper, circular=p.circular)
                if strat:
                    h5.create_dataset("log_tau", data=np.asarray(log_tau, dtype=np.float64), track_times=False)
                h5.create_dataset("chi2", shape=(ny, nx), dtype="f4", fillvalue=np.nan, **kw)
                h5.create_dataset("n_iter", shape=(ny, nx), dtype="i4", fillvalue=0, **kw)
                st = h5.create_dataset("status", shape=(ny, nx), dtype="u1", fillvalue=STATUS_NOT_RUN, **kw)
                st.attrs["codes"] = json.dumps({str(k): v for k, v in STATUS_NAMES.items()})
                if nw is not None:
                    h5.create_dataset("synthetic", shape=(ny, nx, 4, nw), dtype="f4", fillvalue=np.nan, **kw)
                ch = h5.create_group("chunks")
                ch.create_dataset("start", data=plan.starts(), track_times=False)
                ch.create_dataset("stop", data=plan.stops(), track_times=False)
                ch.create_dataset("done", shape=(plan.n_chunks,), dtype=bool, fillvalue=False, **kw)
                ch.create_dataset("seconds", shape=(plan.n_chunks,), dtype="f4", fillvalue=np.nan, **kw)
                ch.create_dataset(
                    "error", data=np.array([""] * plan.n_chunks, dtype=object),
                    dtype=h5py.string_dtype(), track_times=False,
                )
                a = h5.attrs
                for key, value in attrs.items():
                    a[key] = value
                a.update(
                    fingerprint=digest, fingerprint_json=text, parameters=json.dumps(names),
                    units=json.dumps({p.name: p.unit for p in parameters}),
                    ny=ny, nx=nx, n_chunks=plan.n_chunks, chunk_pixels=plan.chunk_pixels,
                    complete=False, chunks_computed=0, runs=0, layout_version=_LAYOUT_VERSION,
                    stratified=json.dumps(strat),
                )
                for phase in ("plan", "setup", "invert", "write", "total"):
                    a[f"time_{phase}_s"] = 0.0
            os.replace(tmp, path)  # a kill during creation leaves only the .creating file
        except OSError as exc:
            raise StoreError(f"cannot create result file {str(path)!r}: {exc}") from exc
        finally:
            if tmp.exists():
                tmp.unlink()
        return cls._open(path, plan, names)

    @classmethod
    def _open(cls, path: Path, plan: Plan, names: tuple[str, ...]) -> "ResultStore":
        try:
            h5 = h5py.File(path, "r+")
        except OSError as exc:
            raise StoreError(f"cannot open result file {str(path)!r} for writing: {exc}") from exc
        return cls(path, h5, plan, names)

    @staticmethod
    def check_resume(path: str | Path, fingerprint: Mapping[str, Any]) -> tuple[Plan, np.ndarray]:
        """Check, read-only, that ``path`` can be resumed by a run with ``fingerprint``.

        Returns
        -------
        plan : Plan
            The chunks stored in the file.
        done : ndarray of bool
            Chunks already on disk.

        Raises
        ------
        ResumeError
            The file is missing, not a stokesflow result file, or was written
            with a different observation, backend, options, init or chunking
            (the message lists what differs).
        """
        path = Path(path)
        if not path.exists():
            raise ResumeError(
                f"--resume was given but result file {str(path)!r} does not exist; "
                "drop --resume to start a new run"
            )
        try:
            with h5py.File(path, "r") as h5:
                a = h5.attrs
                if "fingerprint_json" not in a or "chunks" not in h5:
                    raise ResumeError(
                        f"{str(path)!r} is not a stokesflow result file (no fingerprint or /chunks); "
                        "cannot resume it; choose another --out or --overwrite"
                    )
                old = json.loads(a["fingerprint_json"])
                plan = Plan(int(a["ny"]), int(a["nx"]), int(a["chunk_pixels"]))
                done = np.asarray(h5["chunks/done"][:], dtype=bool)
                written_for = _attr(a.get("input", ""))
        except OSError as exc:
            raise ResumeError(f"cannot read result file {str(path)!r} to resume it: {exc}") from exc
        new = json.loads(fingerprint_digest(fingerprint)[0])
        diff = _differences(old, new)
        if any(d.startswith("observation:") for d in diff):  # a hash alone does not say what differs
            diff.append(f"the observation's identity is its absolute path, shape, wavelengths and reader options, "
                        f"and the file was written for {written_for!r}: an observation moved or renamed counts "
                        "as another one, so resume from that path")
        if diff:
            raise ResumeError(
                f"cannot resume {str(path)!r}: it was written with a different configuration; "
                + "; ".join(diff)
                + ". Run with the original settings, or drop --resume and use --overwrite or another --out"
            )
        return plan, done

    @classmethod
    def resume(
        cls, path: str | Path, *, fingerprint: Mapping[str, Any], parameters: Sequence[Any]
    ) -> "ResultStore":
        """Open an existing result file to finish it (see :meth:`check_resume`)."""
        plan, _ = cls.check_resume(path, fingerprint)
        store = cls._open(Path(path), plan, tuple(p.name for p in parameters))
        # errors of an earlier attempt are stale: failed chunks are tried again
        return store

    # -- state ----------------------------------------------------------------
    @property
    def done(self) -> np.ndarray:
        """Chunks on disk, a copy (bool, (n_chunks,))."""
        return self._done.copy()

    @property
    def errors(self) -> dict[int, str]:
        """Chunks that failed in this run, with the error text."""
        return dict(self._errors)

    def pending(self) -> list[Chunk]:
        """Chunks not yet on disk, in order."""
        return [self.plan.chunk(int(i)) for i in np.flatnonzero(~self._done)]

    # -- writing ----------------------------------------------------------------
    def write_chunk(self, out: ChunkOutput) -> None:
        """Write one chunk's pixels, flush, then mark it done and flush again."""
        t0 = time.perf_counter()
        chunk = self.plan.chunk(out.index)
        if (chunk.start, chunk.stop) != (out.start, out.stop):
            raise StoreError(
                f"{self.path}: chunk {out.index} covers pixels {chunk.start}..{chunk.stop}, "
                f"the task returned {out.start}..{out.stop}"
            )
        npix = chunk.npix
        res = out.result
        if tuple(res.names) != self.names or res.npix != npix:
            raise StoreError(
                f"{self.path}: chunk {out.index} holds {res.npix} pixels with parameters {list(res.names)}, "
                f"expected {npix} pixels with {list(self.names)}"
            )
        ds = self._dataset
        for y0, y1, x0, x1, off in flat_to_rows(chunk.start, chunk.stop, self.plan.nx):
            n = (y1 - y0) * (x1 - x0)
            sl = slice(off, off + n)
            shape = (y1 - y0, x1 - x0)
            for j, name in enumerate(self.names):
                if name in self._stratified:
                    nd = ds(f"params/{name}").shape[2]
                    values = self._depth(res.stratified, name, sl, n, nd)
                    ds(f"params/{name}")[y0:y1, x0:x1] = values.reshape(shape + (nd,))
                    values = self._depth(res.stratified_sigma, name, sl, n, nd)
                    ds(f"sigma/{name}")[y0:y1, x0:x1] = values.reshape(shape + (nd,))
                    continue
                ds(f"params/{name}")[y0:y1, x0:x1] = res.params[sl, j].reshape(shape)
                ds(f"sigma/{name}")[y0:y1, x0:x1] = res.sigma[sl, j].reshape(shape)
            ds("chi2")[y0:y1, x0:x1] = res.chi2[sl].reshape(shape)
            ds("n_iter")[y0:y1, x0:x1] = res.n_iter[sl].reshape(shape)
            ds("status")[y0:y1, x0:x1] = res.status[sl].reshape(shape)
            if self._has_synthetic and res.synthetic is not None:
                ds("synthetic")[y0:y1, x0:x1] = res.synthetic[sl].reshape(shape + res.synthetic.shape[1:])
        ds("chunks/seconds")[out.index] = float(out.seconds.get("total", sum(out.seconds.values())))
        self._h5.flush()
        ds("chunks/done")[out.index] = True
        self._h5.flush()
        self._done[out.index] = True
        self._errors.pop(out.index, None)
        self.computed += 1
        self.write_seconds += time.perf_counter() - t0

    def _dataset(self, path: str) -> h5py.Dataset:
        """The dataset at ``path`` of the open file, looked up once."""
        d = self._datasets.get(path)
        if d is None:
            d = self._datasets[path] = self._h5[path]
        return d

    def _depth(self, arrays: Mapping[str, np.ndarray], name: str, sl: slice, n: int, nd: int) -> np.ndarray:
        """Rows ``sl`` of a stratified result, NaN when the chunk result lacks it."""
        arr = arrays.get(name)
        if arr is None:
            return np.full((n, nd), np.nan, dtype=np.float32)
        if arr.shape[1] != nd:
            raise StoreError(f"{self.path}: stratified {name!r} has {arr.shape[1]} depths, the file {nd}")
        return np.asarray(arr[sl], dtype=np.float32)

    def write_extra_rows(self, name: str, y0: int, values: np.ndarray, attrs: Mapping[str, Any] | None = None) -> None:
        """Write rows ``y0 .. y0 + len(values)`` of an extra per-pixel dataset ``/<name>`` (ny, nx, ...).

        The dataset is created on first use, float32 filled with NaN, with
        ``attrs``. Call it *before* :meth:`write_chunk` of the chunk these rows
        belong to, so that the chunk's done flag is set after its extra data are
        on disk (the crash-safety order of this module).

        Parameters
        ----------
        name : str
            Path inside the file, e.g. ``"interval/B"``.
        y0 : int
            First row.
        values : ndarray (nrows, nx, ...)
            The rows, in the quantity's own unit.
        attrs : mapping, optional
            Attributes set when the dataset is created (units, meaning).
        """
        values = np.asarray(values, dtype=np.float32)
        ny = self._h5["status"].shape[0]
        if name not in self._h5:
            ds = self._h5.create_dataset(name, shape=(ny, *values.shape[1:]), dtype="f4", fillvalue=np.nan)
            for key, value in (attrs or {}).items():
                ds.attrs[key] = value
        ds = self._h5[name]
        if ds.shape[1:] != values.shape[1:] or not 0 <= y0 <= ny - values.shape[0]:
            raise StoreError(f"{self.path}: rows {y0}..{y0 + values.shape[0]} of shape {values.shape[1:]} do not fit "
                             f"/{name} {ds.shape}")
        ds[y0:y0 + values.shape[0]] = values

    def record_error(self, index: int, message: str) -> None:
        """Remember that chunk ``index`` failed; written by :meth:`finalize`."""
        self._errors[int(index)] = message

    def status_counts(self) -> dict[int, int]:
        """Pixels per status code over the whole field (reads /status by rows)."""
        return _count_status(self._h5["status"])

    def finalize(self, attrs: Mapping[str, Any]) -> None:
        """Write error texts and the closing attributes (times, ``complete``)."""
        h5 = self._h5
        err = h5["chunks/error"]
        old = err[:]
        new = np.array(["" if self._done[i] else self._errors.get(i, "") for i in range(self.plan.n_chunks)], dtype=object)
        changed = np.flatnonzero(np.array([o.decode() if isinstance(o, bytes) else o for o in old], dtype=object) != new)
        for i in changed:
            err[int(i)] = new[i]
        a = h5.attrs
        for key, value in attrs.items():
            a[key] = value
        a["complete"] = bool(self._done.all())
        a["runs"] = int(a.get("runs", 0)) + 1
        a["chunks_computed"] = self.computed
        h5.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._h5.id.valid:
            self._h5.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------
@dataclass
class ResultFile:
    """A result file read into memory (small fields: tests, reports).

    Attributes
    ----------
    params, sigma : dict of str to ndarray (ny, nx) float32
    chi2 : ndarray (ny, nx) float32
    n_iter : ndarray (ny, nx) int32
    status : ndarray (ny, nx) uint8
    done : ndarray (n_chunks,) bool
    errors : dict of int to str
        Non-empty ``/chunks/error`` entries.
    attrs : dict
        File attributes.
    synthetic : ndarray (ny, nx, 4, nw), optional
    """

    params: dict[str, np.ndarray]
    sigma: dict[str, np.ndarray]
    chi2: np.ndarray
    n_iter: np.ndarray
    status: np.ndarray
    done: np.ndarray
    errors: dict[int, str]
    attrs: dict[str, Any]
    synthetic: np.ndarray | None = None


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


#: What the store's readers need of a result file (its chunk table too).
_RESULT_GROUPS = ("status", "params", "chunks")


def read_result(path: str | Path) -> ResultFile:
    """Read a whole result file into a :class:`ResultFile`."""
    try:
        with h5py.File(path, "r") as h5:
            require_result_layout(h5, path, StoreError, _RESULT_GROUPS)
            names = json.loads(h5.attrs["parameters"])
            errs = [e.decode() if isinstance(e, bytes) else e for e in h5["chunks/error"][:]]
            return ResultFile(
                params={n: h5["params"][n][:] for n in names},
                sigma={n: h5["sigma"][n][:] for n in names},
                chi2=h5["chi2"][:],
                n_iter=h5["n_iter"][:],
                status=h5["status"][:],
                done=h5["chunks/done"][:].astype(bool),
                errors={i: e for i, e in enumerate(errs) if e},
                attrs={k: _attr(v) for k, v in h5.attrs.items()},
                synthetic=h5["synthetic"][:] if "synthetic" in h5 else None,
            )
    except (OSError, KeyError) as exc:
        raise StoreError(f"cannot read result file {str(path)!r}: {exc}") from exc


def _count_status(ds: h5py.Dataset) -> dict[int, int]:
    """Pixels per status code of a (ny, nx) /status dataset, read by blocks of rows."""
    counts = np.zeros(256, dtype=np.int64)
    ny, nx = ds.shape
    step = max(1, (1 << 22) // max(1, nx))
    for y in range(0, ny, step):
        counts += np.bincount(ds[y:y + step].ravel(), minlength=256)
    return {int(k): int(counts[k]) for k in np.flatnonzero(counts)}


def read_status_counts(path: str | Path) -> dict[int, int]:
    """Pixels per status code of a result file, opened read-only (the file is not changed)."""
    try:
        with h5py.File(path, "r") as h5:
            return _count_status(h5["status"])
    except (OSError, KeyError) as exc:
        raise StoreError(f"cannot read /status of result file {str(path)!r}: {exc}") from exc


def inspect_result(path: str | Path) -> dict[str, Any]:
    """Attributes and chunk counts of a result file, without reading the maps."""
    try:
        with h5py.File(path, "r") as h5:
            require_result_layout(h5, path, StoreError, _RESULT_GROUPS)
            done = h5["chunks/done"][:].astype(bool)
            attrs = {k: _attr(v) for k, v in h5.attrs.items()}
    except (OSError, KeyError) as exc:
        raise StoreError(f"cannot read result file {str(path)!r}: {exc}") from exc
    attrs["n_done"] = int(done.sum())
    return attrs
