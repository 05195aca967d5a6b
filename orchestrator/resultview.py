"""Lazy, read-only views of result files: row blocks, display-size maps, masks.

A 4096 x 4096 result holds 64 MB per map; the report and the export never
read more than one full map per quantity at a time, and display maps are
reduced block by block of rows as they are read, so memory stays at a few
full maps whatever the field size.

Reductions for display (``factor`` x ``factor`` pixel blocks):

- ``"mean"``: mean of the finite pixels (NaN where none);
- ``"axial"``: mean of an angle defined modulo 180 deg (the azimuth), taken on
  the doubled angle so that 179 and 1 deg average to 0, not 90;
- ``"stride"``: the block's first pixel (status codes, categorical maps).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import h5py
import numpy as np

from stokesflow.backends import STATUS_BAD_INPUT, STATUS_FAILED, STATUS_NOT_RUN, STATUS_POOR_FIT
from stokesflow.orchestrator.errors import OrchestratorError

__all__ = [
    "ResultViewError",
    "ResultView",
    "MASKED_STATUS",
    "block_reduce",
    "display_factor",
    "axial_difference",
    "require_result_layout",
]

#: Status codes whose parameters are masked in maps and left out of statistics:
#: failed and bad input (NaN anyway), poor fit (kept by the solver, but the fit is
#: far from the data) and not run.
MASKED_STATUS = (STATUS_FAILED, STATUS_BAD_INPUT, STATUS_POOR_FIT, STATUS_NOT_RUN)

_BLOCK_BYTES = 32 << 20  # rows read at a time: about 32 MB of float32


class ResultViewError(OrchestratorError):
    """A result file cannot be read as one (missing, not a result, wrong layout)."""


def display_factor(ny: int, nx: int, max_side: int) -> int:
    """Smallest integer reduction that brings both sides to at most ``max_side`` pixels."""
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    return max(1, -(-max(ny, nx) // max_side))


def axial_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` for angles defined modulo 180 deg, in [-90, 90) deg."""
    return (np.asarray(a, dtype=np.float64) - b + 90.0) % 180.0 - 90.0


def block_reduce(data: np.ndarray, factor: int, how: str = "mean") -> np.ndarray:
    """Reduce a 2-D map by ``factor`` along both axes.

    Parameters
    ----------
    data : ndarray, (ny, nx)
        Map; NaN marks missing pixels.
    factor : int
        Block side [pixels]; edge blocks may be partial.
    how : {"mean", "axial", "stride"}
        See the module documentation.

    Returns
    -------
    ndarray, (ceil(ny / factor), ceil(nx / factor))
        float64 for ``mean``/``axial``, ``data.dtype`` for ``stride``.
    """
    if factor == 1:
        return data.astype(np.float64) if how != "stride" else data.copy()
    if how == "stride":
        return data[::factor, ::factor].copy()
    band = factor * max(1, (1 << 18) // (factor * max(1, data.shape[1])))  # ~256k pixels at a time
    if data.shape[0] > band:
        return np.concatenate([block_reduce(data[y:y + band], factor, how) for y in range(0, data.shape[0], band)])
    ny, nx = data.shape
    my, mx = -(-ny // factor), -(-nx // factor)
    dtype = np.float32 if data.dtype == np.float32 else np.float64
    if (ny, nx) == (my * factor, mx * factor):
        pad = np.asarray(data, dtype=dtype)
    else:
        pad = np.full((my * factor, mx * factor), np.nan, dtype=dtype)
        pad[:ny, :nx] = data
    blocks = pad.reshape(my, factor, mx, factor)
    ok = np.isfinite(blocks)
    n = ok.sum(axis=(1, 3))
    if how == "axial":
        ang = np.radians(2.0 * np.where(ok, blocks, 0.0))
        c = np.where(ok, np.cos(ang), 0.0).sum(axis=(1, 3))
        s = np.where(ok, np.sin(ang), 0.0).sum(axis=(1, 3))
        out = (np.degrees(np.arctan2(s, c)) / 2.0) % 180.0
    elif how == "mean":
        out = np.where(ok, blocks, 0.0).sum(axis=(1, 3), dtype=np.float64) / np.maximum(n, 1)
    else:
        raise ValueError(f"how must be 'mean', 'axial' or 'stride', got {how!r}")
    return np.where(n > 0, out, np.nan)


def require_result_layout(h5: h5py.File, path: str | os.PathLike[str], error: type[Exception],
                          groups: tuple[str, ...] = ("status", "params")) -> None:
    """Raise ``error`` unless the open file has the ``groups`` and the ``parameters`` attribute of
    every result file (the check of :class:`ResultView` and of the result store's readers).
    """
    if any(g not in h5 for g in groups) or "parameters" not in h5.attrs:
        raise error(f"{os.fspath(path)!r} is not a stokesflow result file (expected "
                    f"{', '.join('/' + g for g in groups)} and the 'parameters' attribute); give the --out file "
                    "of `stokesflow invert`")


class ResultView:
    """A result file opened read-only, with lazy access to its maps.

    Parameters
    ----------
    path : str or os.PathLike
        Result file (README "The result file").

    Raises
    ------
    ResultViewError
        Missing file, not HDF5, or no ``/status`` and ``parameters`` attribute.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ResultViewError(f"result file {self.path!r} not found; give the --out file of `stokesflow invert`")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise ResultViewError(f"cannot open result file {self.path!r} as HDF5: {exc}") from exc
        h5 = self._h5
        try:
            require_result_layout(h5, self.path, ResultViewError)
        except ResultViewError:
            self._h5.close()
            raise
        self.names: tuple[str, ...] = tuple(json.loads(h5.attrs["parameters"]))
        units = json.loads(h5.attrs["units"]) if "units" in h5.attrs else {}
        self.units: dict[str, str] = {n: str(units.get(n, h5["params"][n].attrs.get("unit", ""))) for n in self.names}
        self.ny, self.nx = (int(v) for v in h5["status"].shape)
        self.attrs: dict[str, Any] = {k: _plain(v) for k, v in h5.attrs.items()}

    # -- plumbing ------------------------------------------------------------------
    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._h5.id.valid:
            self._h5.close()

    def __enter__(self) -> "ResultView":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _dataset(self, name: str) -> h5py.Dataset:
        key = f"params/{name}" if name in self.names else name
        if key not in self._h5:
            raise ResultViewError(
                f"{self.path!r} has no {key!r}; parameters are {list(self.names)}, maps chi2, n_iter, status"
            )
        return self._h5[key]

    def row_blocks(self, rows: int | None = None) -> Iterator[tuple[int, int]]:
        """``(y0, y1)`` row ranges of about 32 MB of float32 each (or ``rows`` rows)."""
        step = rows or max(1, _BLOCK_BYTES // (4 * max(1, self.nx)))
        for y0 in range(0, self.ny, step):
            yield y0, min(self.ny, y0 + step)

    # -- reading -------------------------------------------------------------------
    def read(self, name: str, rows: slice | None = None, *, masked: bool = True) -> np.ndarray:
        """One map (a parameter, ``chi2``, ``n_iter`` or ``status``) at full resolution.

        Parameters
        ----------
        name : str
        rows : slice, optional
            Rows to read (default all).
        masked : bool
            For parameters: NaN where the status is in :data:`MASKED_STATUS`.

        Returns
        -------
        ndarray
            float32 for parameters and ``chi2``, the stored dtype otherwise.
        """
        rows = rows or slice(0, self.ny)
        data = self._dataset(name)[rows]
        if masked and name in self.names:
            data = np.where(self.bad_mask(rows), np.float32(np.nan), data)
        return data

    def bad_mask(self, rows: slice | None = None) -> np.ndarray:
        """True where the status is in :data:`MASKED_STATUS`."""
        status = self._h5["status"][rows or slice(0, self.ny)]
        return np.isin(status, MASKED_STATUS)

    def read_display(self, name: str, factor: int, how: str = "mean", *, masked: bool = True) -> np.ndarray:
        """A map reduced by ``factor`` (see :func:`block_reduce`), read by row blocks.

        Rows are read in multiples of ``factor`` so blocks never straddle
        two reads.
        """
        step = max(factor, (max(1, _BLOCK_BYTES // (4 * max(1, self.nx))) // factor) * factor)
        parts = [block_reduce(self.read(name, slice(y0, y1), masked=masked), factor, how)
                 for y0, y1 in self.row_blocks(step)]
        return np.concatenate(parts, axis=0)

    def status_counts(self) -> dict[int, int]:
        """Pixels per status code."""
        counts = np.zeros(256, dtype=np.int64)
        for y0, y1 in self.row_blocks():
            counts += np.bincount(self._h5["status"][y0:y1].ravel(), minlength=256)
        return {int(k): int(counts[k]) for k in np.flatnonzero(counts)}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value
