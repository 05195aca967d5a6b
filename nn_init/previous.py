"""The ``previous`` provider: start every pixel from a finished result file or an init cube.

``--init previous -I file=prev.h5`` (``[init.previous] file = "prev.h5"``).
The file is a result file (``stokesflow invert``), the output of
``stokesflow predict`` (a network's guesses, same layout), or any HDF5 *init
cube* with ``/params/<name>`` maps of shape (ny, nx), one per parameter of
the backend, in its units (a ``unit`` attribute on each map is checked when
present). Pixels whose map value is NaN, or whose ``/status`` says the fit
failed, was skipped or was not run (2, 3, 255), start from the backend's own
estimate instead.

Checks: when the provider is bound, every parameter the backend fits must be
in the file with the backend's unit, except those a depth-stratified backend
takes from its own guess model: a backend with a ``seed_parameters`` attribute
(SIR: B, inclination, azimuth, vlos) needs only those in the file, and its other
parameters missing from the file are NaN columns (the backend keeps its guess
model's values there), so an ME result seeds a SIR inversion; :meth:`PreviousInit.check_observation`
compares the maps' (ny, nx) with the observation, and a pixel range beyond the
file is refused in :meth:`PreviousInit.initial_guess` (naming both shapes).

Depth-stratified results (``/log_tau`` and (ny, nx, ndepth) maps, e.g. a SIR
result) seed a backend that takes node columns (``init_columns`` such as
``"T@-2"``): each stratified map is interpolated linearly in log tau to the
backend's nodes (nodes outside the file's depth range are left NaN, "not
given"); the backend interpolates the nodes onto its own grid.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from stokesflow.nn_init.providers import InitError, InitProvider

__all__ = ["PreviousInit", "UNUSABLE_STATUS"]

#: Status codes whose parameters are not used as a start (failed, bad input, not run).
UNUSABLE_STATUS = (2, 3, 255)


def _decode(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def _depth_columns(h5: h5py.File, shapes: Mapping[str, tuple[int, ...]],
                   columns: tuple[str, ...]) -> dict[str, list[tuple[int, int, int, float]]]:
    """For each (ny, nx, ndepth) map with node columns ``NAME@LOGTAU`` among ``columns``: the
    column index and the linear interpolation (depth index below, above, weight of above) from
    the file's ``/log_tau`` to each node inside its range."""
    if "log_tau" not in h5:
        return {}
    lt = np.asarray(h5["log_tau"][:], dtype=np.float64)
    order = np.argsort(lt)
    out: dict[str, list[tuple[int, int, int, float]]] = {}
    for name, shape in shapes.items():
        if len(shape) != 3 or shape[2] != lt.size:
            continue
        nodes = []
        for col, label in enumerate(columns):
            base, sep, at = label.partition("@")
            if not sep or base != name:
                continue
            x = float(at)
            if not lt[order[0]] <= x <= lt[order[-1]]:
                continue  # outside the file's depths: not given
            k = int(np.clip(np.searchsorted(lt[order], x), 1, lt.size - 1))
            lo, hi = order[k - 1], order[k]
            w = 0.0 if lt[hi] == lt[lo] else (x - lt[lo]) / (lt[hi] - lt[lo])
            nodes.append((col, int(lo), int(hi), float(w)))
        if nodes:
            out[name] = nodes
    return out


class PreviousInit(InitProvider):
    """Starting points read from ``/params/<name>`` of an HDF5 file (option ``file``)."""

    name = "previous"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        unknown = sorted(set(self.options) - {"file"})
        if unknown:
            raise InitError(f"[init.previous] takes only 'file' (-I file=prev.h5), got {unknown}")
        f = self.options.get("file")
        if not isinstance(f, (str, os.PathLike)) or not str(f):
            raise InitError("init provider 'previous' needs the file to start from: -I file=prev.h5 "
                            "([init.previous] file = \"prev.h5\"), a result file or an init cube with /params/<name>")
        self.path = str(Path(f).resolve())
        self.shape: tuple[int, int] | None = None
        self._names: tuple[str, ...] | None = None  # the backend's parameters that the file holds
        self._columns: tuple[str, ...] | None = None  # all the backend's init columns, in its order
        # stratified map name -> [(column, depth index below, above, weight of above)]
        self._depth: dict[str, list[tuple[int, int, int, float]]] = {}

    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r")
        except (OSError, FileNotFoundError) as exc:
            where = "not found" if not os.path.exists(self.path) else f"not a readable HDF5 file ({exc})"
            raise InitError(f"[init.previous] file {self.options['file']!r} ({self.path}): {where}; give a result "
                            "file of stokesflow invert/predict or an init cube with /params/<name>") from None

    def bind(self, backend: Any) -> "PreviousInit":
        specs = tuple(backend.parameters)
        with self._open() as h5:
            if "params" not in h5:
                raise InitError(f"[init.previous] {self.path} has no /params group: it is neither a result file "
                                "nor an init cube (/params/<name> maps of shape (ny, nx))")
            g = h5["params"]
            seed = getattr(backend, "seed_parameters", None)
            needed = [p.name for p in specs] if seed is None else [n for n in seed]
            missing = [n for n in needed if n not in g]
            if missing:
                fits = f"fits {[p.name for p in specs]}" if seed is None else (
                    f"needs {list(seed)} from a seed (its guess model gives the rest)")
                raise InitError(f"[init.previous] {self.path} lacks /params/{missing[0]}"
                                f"{' and more' if len(missing) > 1 else ''}: backend {backend.name!r} {fits}, "
                                f"the file has {sorted(g)}; start from a file that holds them")
            specs = tuple(p for p in specs if p.name in g)
            shapes = {p.name: g[p.name].shape for p in specs}
            columns = tuple(getattr(backend, "init_columns", backend.parameter_names))
            depth = _depth_columns(h5, shapes, columns)
            # stratified maps the backend takes no nodes of (SIR: Pe, which SIR puts in equilibrium itself)
            unused = {n for n, sh in shapes.items() if n not in depth and len(sh) == 3 and "log_tau" in h5
                      and any("@" in c for c in columns)}
            flat = {n: sh for n, sh in shapes.items() if n not in depth and n not in unused}
            plane = {sh[:2] for sh in shapes.values()}
            if len(plane) != 1 or any(len(sh) != 2 for sh in flat.values()) or not shapes:
                hint = ("; it is a depth-stratified result (/log_tau), which seeds only a backend that takes node "
                        "columns (SIR): start from an ME result or an init cube of (ny, nx) maps") if "log_tau" in h5 else ""
                raise InitError(f"[init.previous] {self.path}: the /params maps must all be (ny, nx), got {shapes}"
                                f"{hint}")
            for p in specs:
                unit = _decode(g[p.name].attrs.get("unit"))
                if unit is not None and str(unit) != p.unit:
                    raise InitError(f"[init.previous] {self.path}: /params/{p.name} is in {unit!r}, backend "
                                    f"{backend.name!r} fits it in {p.unit!r}")
        bound = PreviousInit(self.options)
        bound.shape = tuple(int(v) for v in next(iter(plane)))  # type: ignore[assignment]
        bound._names = tuple(p.name for p in specs if p.name in flat)
        bound._depth = depth
        bound._columns = columns
        return bound

    def check_observation(self, shape: tuple[int, int], wavelength: np.ndarray | None = None) -> None:
        """Raise :class:`InitError` unless the file's maps have the observation's (ny, nx)."""
        if self.shape is None:
            raise InitError("PreviousInit.check_observation called before bind(backend)")
        if tuple(shape) != self.shape:
            raise InitError(f"[init.previous] {self.path} holds maps of {self.shape[0]} x {self.shape[1]} pixels, "
                            f"the observation has {shape[0]} x {shape[1]}; start from a file of the same field")

    def initial_guess(self, stokes, wavelength, *, start, stop):  # noqa: D102 - see base
        if self.shape is None or self._names is None:
            raise InitError("PreviousInit.initial_guess called before bind(backend)")
        if stokes.shape[0] != stop - start:
            raise InitError(f"[init.previous] got {stokes.shape[0]} spectra for pixels {start}..{stop}")
        return self.read_columns(start, stop)

    def read_columns(self, start: int, stop: int) -> np.ndarray:
        """The bound backend's init columns (npix, ncol) for flat pixels ``start..stop`` of the file.

        What :meth:`initial_guess` returns, without the spectra: the parameter maps of the file in
        their columns, stratified maps interpolated to the node columns, NaN where a column is not
        given or the pixel's ``/status`` is one of :data:`UNUSABLE_STATUS`. Used by the assist loop
        to merge an ME result into a network's guesses (:func:`stokesflow.orchestrator.predict.seed_guess`).

        Raises
        ------
        InitError
            Not bound, or a pixel range beyond the file.
        """
        if self.shape is None or self._names is None:
            raise InitError("PreviousInit.read_columns called before bind(backend)")
        ny, nx = self.shape
        if not 0 <= start <= stop <= ny * nx:
            raise InitError(f"[init.previous] {self.path} holds {ny} x {nx} = {ny * nx} pixels, asked for pixels "
                            f"{start}..{stop}: the observation is larger than the file's field")
        y0, y1 = start // nx, (stop - 1) // nx + 1 if stop > start else start // nx
        off = start - y0 * nx
        columns = self._columns or self._names
        out = np.full((stop - start, len(columns)), np.nan, dtype=np.float64)
        with self._open() as h5:
            for name in self._names:
                out[:, columns.index(name)] = h5["params"][name][y0:y1].reshape(-1)[off:off + stop - start]
            for name, nodes in self._depth.items():
                cube = h5["params"][name][y0:y1]
                cube = cube.reshape(-1, cube.shape[-1])[off:off + stop - start].astype(np.float64)
                for col, i0, i1, w in nodes:
                    out[:, col] = (1.0 - w) * cube[:, i0] + w * cube[:, i1]
            if "status" in h5:
                status = h5["status"][y0:y1].reshape(-1)[off:off + stop - start]
                out[np.isin(status, UNUSABLE_STATUS)] = np.nan
        return out

    def describe(self) -> dict[str, Any]:  # noqa: D102 - see base
        return {"name": self.name, "options": {"file": self.path}}
