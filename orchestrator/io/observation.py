"""The observation handle, and the request it is opened with.

An :class:`Observation` is a map of ``ny x nx`` pixels, each holding Stokes I,
Q, U, V at ``nw`` wavelengths. It is checked once, up front, by the format's
opener and holds no cube data, so it pickles in microseconds and travels to
workers; each worker reads only its own range of pixels with
:meth:`Observation.read_pixels`, which dispatches to the format's row reader
through :mod:`stokesflow.orchestrator.io.registry`.

The checks the openers share (axes, wavelength grids, metadata, reader
options) are in :mod:`stokesflow.orchestrator.io.checks`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stokesflow.orchestrator.errors import ObservationError
from stokesflow.orchestrator.io.registry import format_module, row_reader

__all__ = ["Observation", "OpenRequest"]


@dataclass(frozen=True)
class OpenRequest:
    """What the caller of :func:`~stokesflow.orchestrator.io.open_observation` asked for.

    Every field is None when not given; the opener then uses the file's value
    or its own default. See :func:`~stokesflow.orchestrator.io.open_observation`
    for the meaning of each.
    """

    axes: Any = None
    wavelength: Any = None
    lines: Any = None
    instrument: str | None = None
    noise: Any = None
    continuum: Any = None
    reader_options: Mapping[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """The parts that change how the data are read: continuum and reader options.

        Stored in :attr:`Observation.options` and hashed into its
        fingerprint, so a resume with other options is refused.
        """
        return {"continuum": self.continuum, "reader_options": dict(self.reader_options)}


@dataclass(frozen=True, eq=False, repr=False)
class Observation:
    """A validated, picklable handle on an observation; it holds no cube data.

    Parameters
    ----------
    path : str
        The file (or, for ``hmi`` and ``hinode_sp``, the directory or first
        file) it was opened from, absolute.
    format : str
        One of :data:`~stokesflow.orchestrator.io.FORMATS`.
    ny, nx : int
        Map size in pixels; pixels are numbered row-major, ``p = y * nx + x``.
    nw : int
        Number of wavelength points.
    wavelength : numpy.ndarray
        ``(nw,)`` float64, absolute air wavelengths in Angstrom, strictly
        increasing (read-only).
    meta : Mapping[str, Any]
        ``instrument`` (str), ``lines`` (str, comma-separated), ``noise``
        (sigma in continuum units: a float, 4 floats for I, Q, U, V, or None
        when unknown), optionally ``spectral_instrument`` (``"grid"``,
        ``"psf"``, ``"hmi_filters"``, ``"filters"``), ``psf_fwhm`` [mA] and
        ``filters`` (``(wavelength (nf,) [A], transmission (nw, nf))``), and
        whatever else the file carried (attributes, selected header keywords,
        the continuum used for normalisation, ...).
    _layout : Mapping[str, Any]
        Reader-private description of where the data live (axis order, HDU,
        per-file paths, scaling). Only scalars, strings and tuples, so that it
        pickles and hashes reproducibly.
    options : Mapping[str, Any]
        The continuum and reader options it was opened with
        (:meth:`OpenRequest.identity`); part of the fingerprint.
    """

    path: str
    format: str
    ny: int
    nx: int
    nw: int
    wavelength: np.ndarray
    meta: Mapping[str, Any]
    _layout: Mapping[str, Any] = field(default_factory=dict, repr=False)
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        wl = self.wavelength
        return (
            f"Observation({self.path!r}, format={self.format!r}, {self.ny} x {self.nx} pixels, "
            f"{self.nw} wavelengths {wl[0]:.4f}..{wl[-1]:.4f} A, instrument={self.meta.get('instrument')!r}, "
            f"lines={self.meta.get('lines')!r}, noise={self.meta.get('noise')!r})"
        )

    @property
    def npix(self) -> int:
        """Number of pixels of the map, ``ny * nx``."""
        return self.ny * self.nx

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Shape of the whole cube in the contract's order, ``(ny, nx, 4, nw)``."""
        return (self.ny, self.nx, 4, self.nw)

    @property
    def lines(self) -> tuple[str, ...]:
        """The line names of ``meta['lines']`` as a tuple."""
        return tuple(s for s in str(self.meta.get("lines", "")).split(",") if s)

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Read map rows ``[y0, y1)`` from disk.

        Parameters
        ----------
        y0, y1 : int
            First and one-past-last row, ``0 <= y0 <= y1 <= ny``.

        Returns
        -------
        numpy.ndarray
            ``(y1 - y0, nx, 4, nw)`` float32, Stokes in continuum units.
        """
        y0, y1 = int(y0), int(y1)
        if not 0 <= y0 <= y1 <= self.ny:
            raise ObservationError(
                f"{self.path}: row range [{y0}, {y1}) is outside the map of {self.ny} rows; "
                f"expected 0 <= y0 <= y1 <= {self.ny}"
            )
        if y0 == y1:
            return np.empty((0, self.nx, 4, self.nw), dtype=np.float32)
        block = row_reader(self.format)(self, y0, y1)
        expected = (y1 - y0, self.nx, 4, self.nw)
        if block.shape != expected:  # a reader bug or a file changed under us
            raise ObservationError(
                f"{self.path}: reading rows [{y0}, {y1}) gave an array of shape {block.shape}, "
                f"expected {expected}; was the file replaced after it was opened?"
            )
        return block

    def read_pixels(self, start: int, stop: int) -> np.ndarray:
        """Read the flat row-major pixel range ``[start, stop)`` from disk.

        Only the rows that hold the range are read (at most two partial rows
        more than the range itself), so a worker needs memory for its own
        slice only.

        Parameters
        ----------
        start, stop : int
            Flat pixel indices, ``p = y * nx + x``, ``0 <= start <= stop <= npix``.

        Returns
        -------
        numpy.ndarray
            ``(stop - start, 4, nw)`` float32, Stokes I, Q, U, V in units of the
            quiet-Sun continuum; NaN/inf pixels are passed through.
        """
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= self.npix:
            raise ObservationError(
                f"{self.path}: pixel range [{start}, {stop}) is outside the map of "
                f"{self.npix} pixels ({self.ny} x {self.nx}); expected 0 <= start <= stop <= {self.npix}"
            )
        if start == stop:
            return np.empty((0, 4, self.nw), dtype=np.float32)
        y0 = start // self.nx
        y1 = (stop - 1) // self.nx + 1
        flat = self.read_rows(y0, y1).reshape(-1, 4, self.nw)
        offset = start - y0 * self.nx
        out = flat[offset : offset + (stop - start)]
        # A copy only when partial rows were read, so no hidden extra rows stay alive.
        return out if out.shape[0] == flat.shape[0] else out.copy()

    def read_truth(self) -> Mapping[str, np.ndarray] | None:
        """Return the true parameter maps of a synthetic scene, if the file has them.

        Returns
        -------
        Mapping[str, numpy.ndarray] or None
            ``(ny, nx)`` maps (stokesflow names and units: ``B`` G,
            ``inclination`` and ``azimuth`` deg, ``vlos`` km/s, ...), each
            read from the file when it is asked for (none is kept), or None
            when the format or the file carries none.
        """
        reader = getattr(format_module(self.format), "read_truth", None)
        return reader(self) if reader is not None else None

    def fingerprint(self) -> str:
        """A cheap identity of the data, for resume checks.

        Hashes the absolute path, the format, the shape, the wavelength grid,
        the reader layout (axis order, scaling, file list), the continuum and
        reader options it was opened with, and the spectral instrument the
        file states (``spectral_instrument``, ``psf_fwhm``, ``filters``). File
        size and modification time are left out on purpose: they change when
        a file is copied, the data do not.

        Returns
        -------
        str
            ``"<format>:<32 hex digits>"``.
        """
        h = hashlib.sha256()
        h.update(os.path.abspath(self.path).encode())
        h.update(f"|{self.format}|{self.ny}|{self.nx}|{self.nw}|".encode())
        h.update(np.ascontiguousarray(self.wavelength, dtype="<f8").tobytes())
        h.update(repr(sorted((str(k), _stable(v)) for k, v in self._layout.items())).encode())
        # The parts below enter only when present, so an observation opened without options
        # and without spectral attributes keeps the fingerprint of earlier versions (resumable).
        if self.options.get("continuum") is not None or self.options.get("reader_options"):
            h.update(repr(sorted((str(k), _stable(v)) for k, v in self.options.items())).encode())
        spectral = {k: self.meta[k] for k in ("spectral_instrument", "psf_fwhm") if k in self.meta}
        if spectral:
            h.update(repr(sorted((k, _stable(v)) for k, v in spectral.items())).encode())
        for arr in self.meta.get("filters") or ():
            h.update(np.ascontiguousarray(arr, dtype="<f8").tobytes())
        return f"{self.format}:{h.hexdigest()[:32]}"


def _stable(value: Any) -> Any:
    """Turn a layout or option value into something whose ``repr`` is reproducible."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _stable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_stable(v) for v in value)
    if isinstance(value, np.ndarray):
        return tuple(value.ravel().tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
