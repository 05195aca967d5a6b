"""One ``.npy`` array, memory-mapped.

Its axis order is given by ``axes=`` (``--axes``, default
``"y,x,stokes,wave"``), the wavelengths by ``wavelength=`` (``--wavelength``;
an array, a ``.npy``/``.txt`` file, or ``"start:step"`` in Angstrom) or by a
side file ``<name>.wavelength.npy`` / ``<name>.wavelength.txt`` next to it, and
the lines by ``lines=`` (``--lines``): a ``.npy`` file carries no metadata.
"""

from __future__ import annotations

import os

import numpy as np

from stokesflow.orchestrator.errors import ObservationError
from stokesflow.orchestrator.io._cube import axis_order, axis_sizes, row_index, to_canonical
from stokesflow.orchestrator.io.checks import check_wavelength, finish_meta, parse_wavelength, reject_unknown_options
from stokesflow.orchestrator.io.observation import Observation, OpenRequest

__all__ = ["OPTIONS", "SIGNATURE", "detect", "open", "read_rows"]

#: Reader options of .npy files: none.
OPTIONS: tuple[str, ...] = ()

#: First bytes of every .npy file.
SIGNATURE = b"\x93NUMPY"


def detect(path: str, head: bytes) -> bool:
    """A .npy file: its magic string."""
    return head.startswith(SIGNATURE)


def _load(path: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ObservationError(
            f"{path}: cannot memory-map this .npy file ({exc}); it must hold one numeric array "
            f"(not pickled objects)"
        ) from None


def open(path: str, request: OpenRequest) -> Observation:
    """Open and validate a .npy cube (see the module documentation)."""
    reject_unknown_options(path, "npy", request.reader_options, OPTIONS)
    arr = _load(path)
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise ObservationError(f"{path}: expected one numeric array, got {getattr(arr, 'dtype', type(arr))}")
    ax = axis_order(request.axes, path)
    sizes = axis_sizes(path, "the array", arr.shape, ax)
    wavelength = request.wavelength
    if wavelength is None:
        stem = path[:-4] if path.lower().endswith(".npy") else path
        side = [s for s in (stem + ".wavelength.npy", stem + ".wavelength.txt") if os.path.isfile(s)]
        if not side:
            raise ObservationError(
                f"{path}: a .npy cube carries no wavelengths; pass wavelength= (--wavelength: an array, a "
                f".npy/.txt file, or 'start:step' in Angstrom) or put them in "
                f"{os.path.basename(stem)}.wavelength.npy next to it"
            )
        wavelength = side[0]
    wl, flipped = check_wavelength(
        parse_wavelength(wavelength, sizes["wave"], where=path, relative_to=os.path.dirname(path)),
        sizes["wave"], where=path, what="the wavelength grid",
    )
    meta = finish_meta(path, {}, request.lines, request.instrument, request.noise)
    layout = {"axes": ax, "flip_wave": flipped}
    return Observation(path, "npy", sizes["y"], sizes["x"], sizes["wave"], wl, meta, layout, request.identity())


def read_rows(obs: Observation, y0: int, y1: int) -> np.ndarray:
    """Rows ``[y0, y1)`` of the memory-mapped array in the contract's order, float32."""
    arr = _load(obs.path)
    return to_canonical(np.asarray(arr[row_index(obs._layout, y0, y1)]), obs._layout)
