"""A result against a reference: another result file, or the observation's ``/truth``.

:func:`compare` reads one parameter at a time at full resolution (result and
reference, about 4 x 64 MB for a 4096 x 4096 field), computes the statistics of
:mod:`stokesflow.orchestrator.stats` over the whole field and per field-strength
class, and keeps only small products for the figures: a display-size
difference map and a 2-D histogram per parameter.

Pixels compared: finite in both, and of a status outside
:data:`~stokesflow.orchestrator.resultview.MASKED_STATUS` in the result (and in a
reference result).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import h5py
import numpy as np

from stokesflow.orchestrator.errors import OrchestratorError
from stokesflow.orchestrator.geometry import find_observation
from stokesflow.orchestrator.resultview import MASKED_STATUS, ResultView, block_reduce
from stokesflow.orchestrator import stats

__all__ = [
    "ComparisonError",
    "Reference",
    "ResultReference",
    "TruthReference",
    "Comparison",
    "comparable",
    "compare",
]

_HIST_BINS = 200
_FIXED_RANGES = {"inclination": (0.0, 180.0), "azimuth": (0.0, 180.0)}


class ComparisonError(OrchestratorError):
    """The reference cannot be compared with the result (missing, other shape, no truth)."""


class Reference(Protocol):
    """What :func:`compare` needs from a reference."""

    label: str
    kind: str
    names: tuple[str, ...]

    def read(self, name: str) -> np.ndarray:
        """Full map of ``name``, NaN where unusable."""


class ResultReference:
    """Another result file as the reference (bad-status pixels are NaN)."""

    kind = "result"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.view = ResultView(path)
        self.label = self.view.path
        self.names = self.view.names
        self.shape = (self.view.ny, self.view.nx)

    def read(self, name: str) -> np.ndarray:
        return self.view.read(name)

    def close(self) -> None:
        self.view.close()


class TruthReference:
    """The ``/truth/<param>`` maps of the result's own observation (a synthetic scene)."""

    kind = "truth"

    def __init__(self, result_path: str | os.PathLike[str]) -> None:
        path, _, note = find_observation(result_path)
        if path is None or not (os.path.isfile(path) and h5py.is_hdf5(path)):
            raise ComparisonError(
                f"--truth: the observation of {os.fspath(result_path)!r} is needed for its /truth maps, but "
                f"{note if path is None else path + ' is not an HDF5 observation'}; "
                "use --reference OTHER.h5 instead, or move the observation back"
            )
        self._h5 = h5py.File(path, "r")
        group = self._h5.get("truth")
        if not isinstance(group, h5py.Group) or not len(group):
            self._h5.close()
            raise ComparisonError(
                f"--truth: observation {path!r} has no /truth/<param> maps (only synthetic observations, "
                "`stokesflow synth`, carry them); use --reference OTHER.h5 instead"
            )
        self.label = f"{path}:/truth"
        self.names = tuple(n for n, d in group.items() if isinstance(d, h5py.Dataset) and d.ndim == 2)
        self.shape = self._h5["truth"][self.names[0]].shape if self.names else (0, 0)

    def read(self, name: str) -> np.ndarray:
        ds = self._h5["truth"][name]
        return ds[()] if ds.dtype == np.float32 else ds.astype(np.float32)[()]

    def close(self) -> None:
        if self._h5.id.valid:
            self._h5.close()


@dataclass
class Comparison:
    """What :func:`compare` found.

    Attributes
    ----------
    table : dict
        JSON-ready: ``reference``, ``kind``, ``n_compared``, ``masked_status``,
        ``tolerances``, ``parameters`` (name -> ``unit`` and ``classes``,
        class label -> :func:`~stokesflow.orchestrator.stats.difference_stats`),
        ``flux`` (``classes`` -> ``result``/``reference`` ->
        :func:`~stokesflow.orchestrator.stats.flux_sums`, ``unit``,
        ``pixel_area_cm2``) or None without B and inclination.
    differences : dict of str to ndarray
        Display-size maps of result minus reference (azimuth modulo 180).
    histograms : dict of str to (counts, xrange, yrange)
        2-D histograms of (reference, result): counts ``[iy, ix]``.
    """

    table: dict[str, Any]
    differences: dict[str, np.ndarray] = field(default_factory=dict)
    histograms: dict[str, tuple[np.ndarray, tuple[float, float], tuple[float, float]]] = field(default_factory=dict)


def _range(name: str, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if name in _FIXED_RANGES:
        return _FIXED_RANGES[name]
    step = max(1, int(np.sqrt(a.size / 250_000)))  # percentiles from ~250k pixels
    sample = np.concatenate([a[::step, ::step].ravel(), b[::step, ::step].ravel()]).astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return float(lo), float(hi)


def comparable(view: ResultView, reference: Reference) -> list[str]:
    """The parameters a result and a reference can be compared on; raises where they cannot.

    Cheap (shapes and names only): :func:`make_report` calls it before it writes anything.

    Parameters
    ----------
    view : ResultView
        The result.
    reference : Reference
        :class:`ResultReference` or :class:`TruthReference`.

    Returns
    -------
    list of str
        The result's parameter names that the reference also has, in the result's order.

    Raises
    ------
    ComparisonError
        Other map size, or no parameter in common.
    """
    shape = tuple(getattr(reference, "shape", (view.ny, view.nx)))
    if shape != (view.ny, view.nx):
        raise ComparisonError(
            f"reference {reference.label!r} is {shape[0]} x {shape[1]} pixels, result {view.path!r} is "
            f"{view.ny} x {view.nx}; compare results of the same field of view"
        )
    names = [n for n in view.names if n in reference.names]
    if not names:
        raise ComparisonError(
            f"reference {reference.label!r} has none of the result's parameters {list(view.names)} "
            f"(it has {list(reference.names)})"
        )
    return names


def compare(
    view: ResultView,
    reference: Reference,
    *,
    tolerances: Mapping[str, float] | None = None,
    pixel_area_cm2: float | None = None,
    display_factor: int = 1,
) -> Comparison:
    """Compare every parameter the result and the reference share.

    Parameters
    ----------
    view : ResultView
        The result.
    reference : Reference
        :class:`ResultReference` or :class:`TruthReference`, same ``(ny, nx)``.
    tolerances : mapping, optional
        Per-parameter tolerance in its unit; merged over
        :data:`~stokesflow.orchestrator.stats.DEFAULT_TOLERANCES`.
    pixel_area_cm2 : float, optional
        Pixel area on the Sun for the flux (else sums in G px).
    display_factor : int
        Reduction of the difference maps.

    Returns
    -------
    Comparison

    Raises
    ------
    ComparisonError
        Other map size, or no parameter in common.
    """
    names = comparable(view, reference)
    tol = {**stats.DEFAULT_TOLERANCES, **dict(tolerances or {})}
    bad = view.bad_mask()
    b_ref = reference.read("B") if "B" in reference.names else None
    table: dict[str, Any] = {
        "reference": reference.label, "kind": reference.kind, "result": view.path,
        "masked_status": list(MASKED_STATUS), "tolerances": {n: tol.get(n) for n in names},
        "field_classes": [c[0] for c in stats.FIELD_CLASSES], "parameters": {}, "flux": None,
    }
    out = Comparison(table)
    # field class of every pixel by the reference's |B| (index into FIELD_CLASSES[1:], -1 none)
    labels = [c[0] for c in stats.FIELD_CLASSES]
    cls_map = np.full((view.ny, view.nx), -1, np.int8)
    if b_ref is not None:
        for i, m in enumerate(list(stats.class_masks(b_ref, np.ones(cls_map.shape, bool)).values())[1:]):
            cls_map[m] = i
    n_compared = 0
    for name in names:
        res = view.read(name, masked=False)
        ref = b_ref if name == "B" and b_ref is not None else reference.read(name)
        valid = np.isfinite(res) & np.isfinite(ref) & ~bad
        n_compared = max(n_compared, int(np.count_nonzero(valid)))
        f = np.asarray(ref[valid], dtype=np.float32)   # 1-D, the compared pixels only
        d = stats.difference(name, res[valid], f, np.float32)
        classes = {"all": stats.vector_stats(name, d, f, tol.get(name))}
        if b_ref is not None:
            cls = cls_map[valid]
            for i, lab in enumerate(labels[1:]):
                sel = cls == i
                classes[lab] = stats.vector_stats(name, d[sel], f[sel], tol.get(name))
        table["parameters"][name] = {"unit": view.units.get(name, ""), "classes": classes}
        xr = yr = _range(name, ref, res)
        out.histograms[name] = (stats.histogram2d(f, res[valid], xr, yr, _HIST_BINS), xr, yr)
        diff = np.full((view.ny, view.nx), np.nan, np.float32)
        diff[valid] = d
        del res, ref, f, d, valid
        out.differences[name] = block_reduce(diff, display_factor, "mean")
        del diff
    table["n_compared"] = n_compared
    if {"B", "inclination"} <= set(names):
        rb, ri = view.read("B", masked=False), view.read("inclination", masked=False)
        fb, fi = b_ref, reference.read("inclination")
        valid = np.isfinite(rb) & np.isfinite(ri) & np.isfinite(fb) & np.isfinite(fi) & ~bad
        blos = {"result": stats.line_of_sight(rb[valid], ri[valid]), "reference": stats.line_of_sight(fb[valid], fi[valid])}
        del rb, ri, fi
        cls = cls_map[valid]
        classes = {}
        for i, lab in enumerate(labels):
            sel = slice(None) if lab == "all" else (cls == i - 1)
            classes[lab] = {k: stats.flux_sums_los(v[sel], pixel_area_cm2) for k, v in blos.items()}
        table["flux"] = {"classes": classes, "unit": "Mx" if pixel_area_cm2 else "G px",
                         "pixel_area_cm2": pixel_area_cm2}
    return out
