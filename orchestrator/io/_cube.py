"""Helpers of the three cube formats (HDF5, .npy, FITS): one 4-D array in a declared axis order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from stokesflow.orchestrator.errors import ObservationError
from stokesflow.orchestrator.io.checks import CANONICAL_AXES, parse_axes

__all__ = ["axis_order", "axis_sizes", "row_index", "to_canonical"]


def axis_order(axes: Any, where: str) -> tuple[str, ...]:
    """The declared axis order (``axes=`` / ``--axes``), or the contract's."""
    return parse_axes(axes, where=where) if axes is not None else CANONICAL_AXES


def axis_sizes(where: str, what: str, shape: tuple[int, ...], ax: tuple[str, ...]) -> dict[str, int]:
    """Sizes of the named axes of a stored cube, checking it is 4-D with 4 Stokes parameters."""
    if len(shape) != 4:
        raise ObservationError(
            f"{where}: {what} has {len(shape)} axes, shape {shape}; expected 4 axes "
            f"({', '.join(ax)}); declare another order with axes='...' (--axes) if the layout differs"
        )
    sizes = dict(zip(ax, (int(n) for n in shape)))
    if sizes["stokes"] != 4:
        raise ObservationError(
            f"{where}: {what} has shape {shape} read as ({', '.join(ax)}), so its Stokes axis has "
            f"{sizes['stokes']} entries, expected 4 (I, Q, U, V); declare the true order with axes='...' (--axes)"
        )
    if min(sizes.values()) < 1:
        raise ObservationError(f"{where}: {what} is empty, shape {shape}")
    return sizes


def to_canonical(block: np.ndarray, layout: Mapping[str, Any]) -> np.ndarray:
    """A block in stored order -> ``(rows, nx, 4, nw)`` float32 with increasing wavelength."""
    ax = tuple(layout.get("axes", CANONICAL_AXES))
    if ax != CANONICAL_AXES:
        block = np.transpose(block, [ax.index(a) for a in CANONICAL_AXES])
    if layout.get("flip_wave"):
        block = block[..., ::-1]
    return np.ascontiguousarray(block, dtype=np.float32)


def row_index(layout: Mapping[str, Any], y0: int, y1: int) -> tuple[slice, ...]:
    """The index of map rows ``[y0, y1)`` in the stored axis order."""
    ax = tuple(layout.get("axes", CANONICAL_AXES))
    return tuple(slice(y0, y1) if a == "y" else slice(None) for a in ax)
