"""The HDF5 contract (DESIGN.md): reader and writer.

Layout
------
``/stokes``
    float32 ``(ny, nx, 4, nw)``: I, Q, U, V in units of the quiet-Sun
    continuum. Another axis order can be declared with ``axes=`` (``--axes``).
``/wavelength``
    float64 ``(nw,)``: absolute air wavelengths in Angstrom (a decreasing grid
    is accepted and flipped on reading).
root attributes
    ``lines`` (comma-separated names such as ``"FeI_6301,FeI_6302"``,
    required), ``instrument``, ``noise`` (one sigma, or four for I, Q, U, V, in
    continuum units; 0, negative or NaN mean unknown), and how the spectra
    were taken: ``spectral_instrument`` (``"grid"``, ``"psf"``,
    ``"hmi_filters"`` or ``"filters"``) with, optionally, ``psf_fwhm`` [mA]
    for ``"psf"``.
``/filters/wavelength``, ``/filters/transmission``
    Measured transmission profiles, ``(nf,)`` [A] and ``(nw, nf)``, for
    ``spectral_instrument = "filters"`` (a file that has them and states no
    ``spectral_instrument`` means ``"filters"``; one that states another kind
    is refused); read into ``meta["filters"] = (wavelength, transmission)``.
    Without them, ``"filters"`` needs the backend's ``-B filters_file``.
``/truth/<param>``
    Optional ``(ny, nx)`` true parameter maps of a synthetic scene.

Every other attribute is passed through into ``Observation.meta``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import h5py
import numpy as np

from stokesflow.orchestrator.errors import ObservationError
from stokesflow.orchestrator.io._cube import axis_order, axis_sizes, row_index, to_canonical
from stokesflow.orchestrator.io.checks import (
    CANONICAL_AXES,
    check_filters,
    check_wavelength,
    finish_meta,
    parse_wavelength,
    reject_unknown_options,
)
from stokesflow.orchestrator.io.observation import Observation, OpenRequest

__all__ = ["OPTIONS", "SIGNATURE", "detect", "open", "open_h5", "read_rows", "read_truth", "TruthMaps"]

#: Reader options of HDF5 files: none.
OPTIONS: tuple[str, ...] = ()

#: First bytes of every HDF5 file (without a user block).
SIGNATURE = b"\x89HDF\r\n\x1a\n"


def open_h5(path: str) -> h5py.File:
    """Open an HDF5 file read-only, without file locks (which fail on some NFS mounts)."""
    try:
        try:
            return h5py.File(path, "r", locking=False)
        except (TypeError, ValueError):  # an HDF5 library without the locking switch
            return h5py.File(path, "r")
    except OSError as exc:
        raise ObservationError(
            f"{path}: not a readable HDF5 file ({exc}); the HDF5 contract wants /stokes (ny, nx, 4, nw) and "
            f"/wavelength (nw,); pass format= (--format) if the file is FITS or .npy"
        ) from None


def detect(path: str, head: bytes) -> bool:
    """An HDF5 file: the signature, or a user block before it (``h5py.is_hdf5``)."""
    if not head:
        return False
    return head.startswith(SIGNATURE) or bool(h5py.is_hdf5(path))


def _read_filters(f: h5py.File, where: str, nw: int) -> tuple[np.ndarray, np.ndarray] | None:
    group = f.get("filters")
    if group is None:
        return None
    is_group = isinstance(group, h5py.Group)
    wl = group.get("wavelength") if is_group else None
    tr = group.get("transmission") if is_group else None
    if not isinstance(wl, h5py.Dataset) or not isinstance(tr, h5py.Dataset):
        raise ObservationError(
            f"{where}: /filters must hold two datasets, /filters/wavelength (nf,) [A] and "
            f"/filters/transmission (nw, nf); found {sorted(group) if is_group else 'a dataset'}"
        )
    return check_filters(wl[()], tr[()], nw, where)


def open(path: str, request: OpenRequest) -> Observation:
    """Open and validate an HDF5 observation (see the module documentation)."""
    reject_unknown_options(path, "hdf5", request.reader_options, OPTIONS)
    ax = axis_order(request.axes, path)
    with open_h5(path) as f:
        ds = f.get("stokes")
        if not isinstance(ds, h5py.Dataset):
            raise ObservationError(
                f"{path}: no /stokes dataset (top-level names: {sorted(f.keys())}); the HDF5 contract wants "
                f"/stokes float32 (ny, nx, 4, nw) in I, Q, U, V order"
            )
        sizes = axis_sizes(path, "/stokes", ds.shape, ax)
        if request.wavelength is not None:
            wl_raw = parse_wavelength(request.wavelength, sizes["wave"], where=path,
                                      relative_to=os.path.dirname(path))
            what = "the given wavelength"
        else:
            wds = f.get("wavelength")
            if not isinstance(wds, h5py.Dataset):
                raise ObservationError(
                    f"{path}: no /wavelength dataset (top-level names: {sorted(f.keys())}); add /wavelength "
                    f"float64 (nw,) absolute air wavelengths in Angstrom, or pass wavelength= (--wavelength)"
                )
            wl_raw, what = wds[()], "/wavelength"
        wl, flipped = check_wavelength(wl_raw, sizes["wave"], where=path, what=what)
        if ds.dtype.kind not in "fiu":
            raise ObservationError(f"{path}: /stokes has dtype {ds.dtype}; expected float32 (or another number type)")
        file_meta: dict[str, Any] = dict(f.attrs)
        filters = _read_filters(f, path, sizes["wave"])
        if filters is not None:
            if flipped:  # profiles follow the stored order of the wave axis
                filters = (filters[0], np.ascontiguousarray(filters[1][::-1]))
            file_meta["filters"] = filters
    meta = finish_meta(path, file_meta, request.lines, request.instrument, request.noise)
    layout = {"axes": ax, "flip_wave": flipped, "dataset": "stokes"}
    return Observation(path, "hdf5", sizes["y"], sizes["x"], sizes["wave"], wl, meta, layout, request.identity())


def read_rows(obs: Observation, y0: int, y1: int) -> np.ndarray:
    """Rows ``[y0, y1)`` of ``/stokes`` in the contract's order, float32."""
    with open_h5(obs.path) as f:
        block = f[obs._layout.get("dataset", "stokes")][row_index(obs._layout, y0, y1)]
    return to_canonical(block, obs._layout)


class TruthMaps(Mapping):
    """The ``/truth/<param>`` maps of an HDF5 observation, each read from the file when it is asked for.

    Holds no map: a caller that compares or subsets them one at a time needs memory for one map,
    not for all of them (an HMI full disk: 64 MB a map). Names are the datasets of ``/truth`` whose
    shape is the map's, ``(ny, nx)`` in the contract's order (stored transposed when the file's
    axes put x before y).
    """

    def __init__(self, path: str, names: dict[str, bool], ny: int, nx: int) -> None:
        self.path, self._transpose, self.shape = path, dict(names), (int(ny), int(nx))

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._transpose:
            raise KeyError(name)
        try:
            with open_h5(self.path) as f:
                data = f["truth"][name][()]
        except (OSError, KeyError) as exc:
            raise ObservationError(f"{self.path}: cannot read /truth/{name}: {exc}") from exc
        out = data.T.copy() if self._transpose[name] else data
        if out.shape != self.shape:  # the file was replaced after it was opened
            raise ObservationError(f"{self.path}: /truth/{name} has shape {out.shape}, expected {self.shape}")
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._transpose)

    def __len__(self) -> int:
        return len(self._transpose)


def read_truth(obs: Observation) -> TruthMaps | None:
    """The ``/truth/<param>`` maps of shape ``(ny, nx)`` (others are left out), read one per access; or None."""
    with open_h5(obs.path) as f:
        group = f.get("truth")
        if not isinstance(group, h5py.Group):
            return None
        axes = tuple(obs._layout.get("axes", CANONICAL_AXES))
        y_first = axes.index("y") < axes.index("x")
        names: dict[str, bool] = {}
        for name, ds in group.items():
            if not isinstance(ds, h5py.Dataset):
                continue
            if ds.shape == (obs.ny, obs.nx) and y_first:
                names[name] = False
            elif ds.shape == (obs.nx, obs.ny) and not y_first:
                names[name] = True
    return TruthMaps(obs.path, names, obs.ny, obs.nx) if names else None
