"""Observation files: open and validate, read pixel ranges, write.

An observation is a map of ``ny x nx`` pixels, each holding the four Stokes
parameters I, Q, U, V at ``nw`` wavelengths. :func:`open_observation` checks a
file once, up front, and returns a light :class:`Observation` handle (shape,
wavelength grid, metadata, where the data live) that holds no cube data, so it
pickles in microseconds and travels to workers; each worker then reads only its
own range of pixels with :meth:`Observation.read_pixels`.

Formats
-------
``hdf5`` (the contract of DESIGN.md)
    ``/stokes`` float32 ``(ny, nx, 4, nw)`` (I, Q, U, V in units of the
    quiet-Sun continuum), ``/wavelength`` float64 ``(nw,)`` absolute air
    wavelengths in Angstrom, root attributes ``instrument``, ``lines``
    (comma-separated names such as ``"FeI_6301,FeI_6302"``) and optional
    ``noise`` (sigma, continuum units), optional ``/truth/<param>`` maps
    ``(ny, nx)``. Another axis order can be declared with ``axes=``.
``npy``
    One array opened with ``np.load(mmap_mode="r")``. Its axis order is given by
    ``axes=`` (default ``"y,x,stokes,wave"``), the wavelengths by
    ``wavelength=`` (see :func:`parse_wavelength`) or by a side file
    ``<name>.wavelength.npy`` / ``<name>.wavelength.txt`` next to it, and the
    lines by ``lines=`` (a ``.npy`` file carries no metadata).
``fits``
    The first image HDU with four axes (or the HDU named ``STOKES``), axis
    order ``axes=`` in *numpy* order (the reverse of the FITS ``NAXISn``
    order; default ``"y,x,stokes,wave"``). Wavelengths from ``wavelength=``,
    else from a 1-D HDU named ``WAVELENGTH``, else from the WCS keywords
    ``CRVALn``/``CDELTn``/``CRPIXn``/``CUNITn`` of the wavelength axis.
    Metadata from the keywords ``INSTRUME``, ``LINES`` and ``NOISE``. Reads go
    through ``hdu.section`` so only the requested rows leave the disk (also for
    tile-compressed HDUs).
``hmi``, ``hinode_sp``
    Instrument layouts (24 per-segment SDO/HMI ``hmi.S_720s`` files; a
    directory of Hinode SOT/SP level-1 slit files), see
    :mod:`stokesflow.orchestrator.readers`.

Wavelength grids must be strictly monotonic; a decreasing grid is accepted and
flipped on reading, so every :class:`Observation` has increasing wavelengths.
NaN or inf inside the data is allowed (the backend flags those pixels).

Examples
--------
>>> obs = open_observation("scene.h5")                       # doctest: +SKIP
>>> block = obs.read_pixels(0, 4096)    # (4096, 4, nw) float32 # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import h5py
import numpy as np

from stokesflow.orchestrator.errors import ObservationError

__all__ = [
    "CANONICAL_AXES",
    "FORMATS",
    "Observation",
    "ObservationWriter",
    "detect_format",
    "open_observation",
    "parse_axes",
    "parse_wavelength",
    "write_observation",
]

#: Formats :func:`open_observation` understands.
FORMATS: tuple[str, ...] = ("hdf5", "npy", "fits", "hmi", "hinode_sp")

#: Axis order of the contract and of everything :class:`Observation` returns.
CANONICAL_AXES: tuple[str, ...] = ("y", "x", "stokes", "wave")

_FORMAT_ALIASES = {
    "hdf5": "hdf5", "h5": "hdf5", "hdf": "hdf5",
    "npy": "npy", "numpy": "npy",
    "fits": "fits", "fit": "fits", "fts": "fits",
    "hmi": "hmi", "hmi.s_720s": "hmi", "sdo/hmi": "hmi",
    "hinode_sp": "hinode_sp", "hinode": "hinode_sp", "sp": "hinode_sp", "sot/sp": "hinode_sp",
}

_AXIS_ALIASES = {
    "y": "y", "row": "y", "rows": "y",
    "x": "x", "col": "x", "cols": "x", "slit": "x",
    "stokes": "stokes", "s": "stokes", "pol": "stokes", "iquv": "stokes",
    "wave": "wave", "w": "wave", "wavelength": "wave", "lambda": "wave", "wl": "wave",
}

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_NPY_SIGNATURE = b"\x93NUMPY"
_FITS_SIGNATURE = b"SIMPLE  ="

# Absolute wavelengths of solar spectropolarimetry lie between the UV (Mg II,
# 2800 A) and the far IR (12 micron Mg I): anything outside is a unit slip.
_WAVE_MIN_A = 1000.0
_WAVE_MAX_A = 1.0e6

# Target size of one HDF5 chunk of /stokes written by ObservationWriter.
_CHUNK_BYTES = 1 << 20


# --------------------------------------------------------------------------- #
# The handle
# --------------------------------------------------------------------------- #
@dataclass(frozen=True, eq=False, repr=False)
class Observation:
    """A validated, picklable handle on an observation; it holds no cube data.

    Parameters
    ----------
    path : str
        The file (or, for ``hmi`` and ``hinode_sp``, the directory or first
        file) it was opened from, absolute.
    format : str
        One of :data:`FORMATS`.
    ny, nx : int
        Map size in pixels; pixels are numbered row-major, ``p = y * nx + x``.
    nw : int
        Number of wavelength points.
    wavelength : numpy.ndarray
        ``(nw,)`` float64, absolute air wavelengths in Angstrom, strictly
        increasing (read-only).
    meta : Mapping[str, Any]
        ``instrument`` (str), ``lines`` (str, comma-separated), ``noise``
        (float sigma in continuum units, or None) and whatever else the file
        carried (attributes, selected header keywords, the continuum used for
        normalisation, ...).
    _layout : Mapping[str, Any]
        Reader-private description of where the data live (axis order, HDU,
        per-file paths, scaling). Only scalars, strings and tuples, so that it
        pickles and hashes reproducibly.
    """

    path: str
    format: str
    ny: int
    nx: int
    nw: int
    wavelength: np.ndarray
    meta: Mapping[str, Any]
    _layout: Mapping[str, Any] = field(default_factory=dict, repr=False)

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
        block = _row_reader(self.format)(self, y0, y1)
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

    def read_truth(self) -> dict[str, np.ndarray] | None:
        """Return the true parameter maps of a synthetic scene, if the file has them.

        Returns
        -------
        dict[str, numpy.ndarray] or None
            ``/truth/<param>`` maps of shape ``(ny, nx)`` (stokesflow names and
            units: ``B`` G, ``inclination`` and ``azimuth`` deg, ``vlos`` km/s,
            ...), or None when there are none. Datasets of another shape are
            left out.
        """
        if self.format != "hdf5":
            return None
        with _open_h5(self.path) as f:
            group = f.get("truth")
            if not isinstance(group, h5py.Group):
                return None
            axes = tuple(self._layout.get("axes", CANONICAL_AXES))
            ty, tx = ("y", "x") if axes.index("y") < axes.index("x") else ("x", "y")
            out: dict[str, np.ndarray] = {}
            for name, ds in group.items():
                if not isinstance(ds, h5py.Dataset):
                    continue
                data = ds[()]
                if data.shape == (self.ny, self.nx) and ty == "y":
                    out[name] = data
                elif data.shape == (self.nx, self.ny) and ty == "x":
                    out[name] = data.T.copy()
            return out or None

    def fingerprint(self) -> str:
        """A cheap identity of the data, for resume checks.

        Hashes the absolute path, the format, the shape, the wavelength grid and
        the reader layout (axis order, scaling, file list). File size and
        modification time are left out on purpose: they change when a file is
        copied, the data do not.

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
        return f"{self.format}:{h.hexdigest()[:32]}"


def _stable(value: Any) -> Any:
    """Turn a layout value into something whose ``repr`` is reproducible."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _stable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_stable(v) for v in value)
    if isinstance(value, np.ndarray):
        return tuple(value.ravel().tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- #
# Opening
# --------------------------------------------------------------------------- #
def open_observation(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    axes: str | Sequence[str] | None = None,
    wavelength: Any = None,
    lines: str | Sequence[str] | None = None,
    instrument: str | None = None,
    noise: float | Sequence[float] | None = None,
    continuum: float | str | None = None,
    reader_options: Mapping[str, Any] | None = None,
) -> Observation:
    """Open an observation, validate everything, and return a handle.

    Parameters
    ----------
    path : str or os.PathLike
        An HDF5, ``.npy`` or FITS file; for ``hmi`` one of the 24 segment files
        or their directory; for ``hinode_sp`` the directory of a scan (or one
        of its files).
    format : str, optional
        One of :data:`FORMATS`; detected from the file's signature, its name
        and its header when not given.
    axes : str or sequence of str, optional
        Axis order of the stored cube (numpy order), e.g. ``"stokes,wave,y,x"``;
        names ``y``, ``x``, ``stokes`` (``s``), ``wave`` (``w``,
        ``wavelength``). Default ``"y,x,stokes,wave"``. Not used by the
        instrument layouts.
    wavelength : array_like, str or os.PathLike, optional
        Overrides the file's grid: an array (Angstrom), a ``.npy``/``.txt``
        file, or ``"start:step"`` in Angstrom (see :func:`parse_wavelength`).
        For ``hmi`` the six values of segments 0-5 in segment order.
    lines : str or sequence of str, optional
        Spectral line names (``"FeI_6301,FeI_6302"``); override the file's.
        Required when the file does not carry them. Names are checked by the
        backend, not here.
    instrument : str, optional
        Overrides the file's instrument (default ``"generic"``).
    noise : float or sequence of 4 floats, optional
        Noise sigma in continuum units; overrides the file's.
    continuum : float or str, optional
        ``hmi`` / ``hinode_sp`` only: the quiet-Sun continuum in the file's
        units (DN/s, DN) by which every Stokes parameter is divided, or
        ``"local"`` / ``"disc_centre"``; see :mod:`stokesflow.orchestrator.readers`.
    reader_options : Mapping, optional
        Format-specific options: ``hdu`` (FITS HDU index or name); for ``hmi``:
        ``order``, ``center``, ``mask_offdisc``, ``disc_fraction``; for
        ``hinode_sp``: ``allow_partial``, ``continuum_window``.

    Returns
    -------
    Observation

    Raises
    ------
    ObservationError
        Naming the file, the array, the expected and the actual, and what to do:
        missing file, not HDF5/FITS/npy, missing ``/stokes`` or
        ``/wavelength``, wrong number of axes, Stokes axis not 4, wavelength
        count different from the wave axis, non-monotonic or non-absolute
        wavelengths, no ``lines``, bad ``axes``, missing instrument files.
    """
    p = os.path.abspath(os.fspath(path))
    if not os.path.exists(p):
        raise ObservationError(
            f"observation {os.fspath(path)!r} not found (looked for {p}): no such file or directory; "
            f"check the path (relative paths start at {os.getcwd()})"
        )
    fmt = _normalise_format(format) if format is not None else detect_format(p)
    options = dict(reader_options or {})
    if fmt in ("hmi", "hinode_sp"):
        if axes is not None:
            raise ObservationError(
                f"{p}: axes={axes!r} was given, but the {fmt!r} layout fixes its own axes; leave axes out"
            )
        from stokesflow.orchestrator import readers  # local import: readers imports this module

        opener = readers.open_hmi if fmt == "hmi" else readers.open_hinode_sp
        return opener(
            p, wavelength=wavelength, lines=lines, instrument=instrument, noise=noise,
            continuum=continuum, **options,
        )
    if continuum is not None:
        raise ObservationError(
            f"{p}: continuum={continuum!r} applies to the instrument layouts 'hmi' and 'hinode_sp' only; "
            f"a {fmt!r} file must already be in continuum units"
        )
    if fmt == "hdf5":
        return _open_hdf5(p, axes, wavelength, lines, instrument, noise, options)
    if fmt == "npy":
        return _open_npy(p, axes, wavelength, lines, instrument, noise, options)
    return _open_fits(p, axes, wavelength, lines, instrument, noise, options)


def detect_format(path: str | os.PathLike[str]) -> str:
    """Tell the format of an observation from its signature, name and header.

    Parameters
    ----------
    path : str or os.PathLike
        File or directory.

    Returns
    -------
    str
        One of :data:`FORMATS`.

    Raises
    ------
    ObservationError
        When nothing matches.
    """
    p = os.fspath(path)
    if os.path.isdir(p):
        from stokesflow.orchestrator import readers

        return readers.detect_directory(p)
    with open(p, "rb") as f:
        head = f.read(16)
    if head.startswith(_HDF5_SIGNATURE) or h5py.is_hdf5(p):
        return "hdf5"
    if head.startswith(_NPY_SIGNATURE):
        return "npy"
    if head.startswith(_FITS_SIGNATURE) or (head[:2] == b"\x1f\x8b" and p.lower().endswith((".fits.gz", ".fts.gz"))):
        from stokesflow.orchestrator import readers

        return readers.detect_fits_file(p)
    raise ObservationError(
        f"{p}: cannot tell the format of this file: it starts with {head[:10]!r}, which is neither an "
        f"HDF5 signature, a FITS header ('SIMPLE  =') nor a .npy header; convert it to the HDF5 contract "
        f"(stokesflow.orchestrator.io.write_observation) or pass format= one of {', '.join(FORMATS)}"
    )


def _normalise_format(format: str) -> str:
    key = str(format).strip().lower()
    if key not in _FORMAT_ALIASES:
        raise ObservationError(f"unknown observation format {format!r}; use one of {', '.join(FORMATS)}")
    return _FORMAT_ALIASES[key]


def parse_axes(axes: str | Sequence[str], *, where: str = "axes") -> tuple[str, ...]:
    """Parse an axis declaration such as ``"stokes,wave,y,x"``.

    Parameters
    ----------
    axes : str or sequence of str
        Four names separated by commas or spaces, each of ``y``, ``x``,
        ``stokes`` (``s``, ``pol``), ``wave`` (``w``, ``wavelength``,
        ``lambda``), each exactly once.
    where : str
        Context for the error message.

    Returns
    -------
    tuple of str
        The canonical names, in the stored order.
    """
    items = re.split(r"[\s,;]+", axes.strip()) if isinstance(axes, str) else [str(a) for a in axes]
    items = [a for a in (i.strip().lower() for i in items) if a]
    names = []
    for item in items:
        if item not in _AXIS_ALIASES:
            raise ObservationError(
                f"{where}: unknown axis name {item!r} in {axes!r}; use the four names y, x, stokes, wave "
                f"(e.g. 'y,x,stokes,wave' or 'stokes,wave,y,x')"
            )
        names.append(_AXIS_ALIASES[item])
    if sorted(names) != sorted(CANONICAL_AXES):
        raise ObservationError(
            f"{where}: axes {axes!r} must name each of y, x, stokes, wave exactly once "
            f"(got {names}); e.g. 'y,x,stokes,wave'"
        )
    return tuple(names)


def parse_wavelength(
    spec: Any, nw: int, *, where: str = "wavelength", relative_to: str | None = None
) -> np.ndarray:
    """Turn a wavelength declaration into a float64 array (not yet validated).

    Parameters
    ----------
    spec : array_like, str or os.PathLike
        An array of ``nw`` values in Angstrom; a path to a ``.npy`` file or a
        text file (whitespace- or comma-separated numbers); or the string
        ``"start:step"`` (Angstrom), meaning ``start + step * arange(nw)``.
    nw : int
        Length of the wave axis of the cube.
    where : str
        Context for the error message.
    relative_to : str, optional
        Directory against which a relative file name is tried as well.

    Returns
    -------
    numpy.ndarray
        float64 array.
    """
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        m = re.fullmatch(r"\s*([-+0-9.eE]+)\s*:\s*([-+0-9.eE]+)\s*", text)
        if m and not os.path.exists(text):
            try:
                start, step = float(m.group(1)), float(m.group(2))
            except ValueError:
                raise ObservationError(f"{where}: cannot read 'start:step' from {text!r}") from None
            return start + step * np.arange(nw, dtype=np.float64)
        candidates = [text]
        if relative_to and not os.path.isabs(text):
            candidates.append(os.path.join(relative_to, text))
        for cand in candidates:
            if os.path.isfile(cand):
                try:
                    if cand.lower().endswith(".npy"):
                        return np.asarray(np.load(cand, allow_pickle=False), dtype=np.float64)
                    with open(cand) as fh:
                        numbers = [float(t) for t in re.split(r"[\s,;]+", fh.read()) if t]
                    return np.asarray(numbers, dtype=np.float64)
                except ValueError as exc:
                    raise ObservationError(
                        f"{where}: cannot read wavelengths from {cand}: {exc}; expected a .npy array or a "
                        f"text file of numbers in Angstrom"
                    ) from None
        raise ObservationError(
            f"{where}: {text!r} is neither 'start:step' (Angstrom) nor an existing .npy/.txt file"
        )
    try:
        return np.asarray(spec, dtype=np.float64)
    except (TypeError, ValueError):
        raise ObservationError(f"{where}: cannot turn {type(spec).__name__} into wavelengths") from None


def check_wavelength(wl: Any, nw: int, *, where: str, what: str = "/wavelength") -> tuple[np.ndarray, bool]:
    """Validate a wavelength grid against the cube's wave axis.

    Parameters
    ----------
    wl : array_like
        The grid, Angstrom.
    nw : int
        Length of the cube's wave axis.
    where, what : str
        The file and the array, for the error message.

    Returns
    -------
    grid : numpy.ndarray
        float64, strictly increasing, read-only.
    flipped : bool
        True when the stored grid was decreasing (the data must be flipped too).
    """
    a = np.asarray(wl, dtype=np.float64)
    if a.ndim != 1:
        raise ObservationError(f"{where}: {what} must be one-dimensional (nw,), got shape {a.shape}")
    if a.size != nw:
        raise ObservationError(
            f"{where}: {what} has {a.size} values but the Stokes cube has {nw} wavelength points; "
            f"the two must match (check the axes declaration or the wavelength source)"
        )
    if not np.all(np.isfinite(a)):
        bad = np.flatnonzero(~np.isfinite(a))[:5].tolist()
        raise ObservationError(f"{where}: {what} holds NaN/inf at indices {bad}; all wavelengths must be finite")
    flipped = False
    if a.size > 1:
        d = np.diff(a)
        if np.all(d < 0):
            a, flipped = a[::-1].copy(), True
        elif not np.all(d > 0):
            i = int(np.flatnonzero(d <= 0)[0]) if np.any(d > 0) else int(np.flatnonzero(d >= 0)[0])
            raise ObservationError(
                f"{where}: {what} is not strictly monotonic: value {i + 1} ({a[i + 1]!r} A) does not continue "
                f"the order after value {i} ({a[i]!r} A); sort the cube along its wavelength axis"
            )
    lo, hi = float(a.min()), float(a.max())
    if lo < _WAVE_MIN_A or hi > _WAVE_MAX_A:
        hint = (
            "it looks like nm: multiply by 10" if 100.0 <= lo and hi <= 1.0e5 / 10 else
            "it looks relative to the line centre: add the line's rest wavelength"
            if abs(lo) < 100.0 else "check the units"
        )
        raise ObservationError(
            f"{where}: {what} spans {lo!r} .. {hi!r}, but absolute air wavelengths in Angstrom "
            f"({_WAVE_MIN_A:g} .. {_WAVE_MAX_A:g}) are expected; {hint}"
        )
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a, flipped


def _lines_str(lines: Any, where: str) -> str:
    if lines is None:
        return ""
    if isinstance(lines, bytes):
        lines = lines.decode()
    if isinstance(lines, np.ndarray):
        lines = lines.tolist()
    if isinstance(lines, str):
        items = re.split(r"[\s,;]+", lines)
    elif isinstance(lines, Iterable):
        items = [x.decode() if isinstance(x, bytes) else str(x) for x in lines]
    else:
        raise ObservationError(f"{where}: lines must be a string or a list of names, got {lines!r}")
    return ",".join(s.strip() for s in items if s.strip())


def _noise_value(noise: Any, where: str) -> float | tuple[float, ...] | None:
    if noise is None:
        return None
    a = np.asarray(noise, dtype=np.float64).ravel()
    if a.size not in (1, 4) or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ObservationError(
            f"{where}: noise must be one positive sigma or four (I, Q, U, V) in continuum units, got {noise!r}"
        )
    return float(a[0]) if a.size == 1 else tuple(float(v) for v in a)


def _finish_meta(
    where: str, file_meta: Mapping[str, Any], lines: Any, instrument: Any, noise: Any,
    default_instrument: str = "generic",
) -> dict[str, Any]:
    """Merge file metadata with the caller's overrides and check them."""
    meta = {k: _plain(v) for k, v in file_meta.items()}
    line_str = _lines_str(lines if lines is not None else meta.get("lines"), where)
    if not line_str:
        raise ObservationError(
            f"{where}: no spectral lines declared: the file has no 'lines' attribute and none was given; "
            f"pass lines='FeI_6301,FeI_6302' (comma-separated names known to the backend) or add the "
            f"attribute to the file"
        )
    meta["lines"] = line_str
    inst = instrument if instrument is not None else meta.get("instrument")
    meta["instrument"] = str(inst).strip() if inst not in (None, "") else default_instrument
    if noise is not None:
        meta["noise"] = _noise_value(noise, where)
    else:
        try:
            meta["noise"] = _noise_value(meta.get("noise"), where)
        except ObservationError:  # a placeholder such as 0 or NaN in the file means "unknown"
            meta["noise_attribute"], meta["noise"] = meta.get("noise"), None
    return meta


def _plain(v: Any) -> Any:
    """HDF5/FITS attribute value -> plain Python (str, float, int, list)."""
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, np.generic):
        v = v.item()
        return v.decode(errors="replace") if isinstance(v, bytes) else v
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()] if v.dtype.kind in "SO" else v.tolist()
    return v


# --------------------------------------------------------------------------- #
# HDF5
# --------------------------------------------------------------------------- #
def _open_h5(path: str) -> h5py.File:
    try:
        try:
            # Read-only: no HDF5 file locks, which fail on some network file systems (NFS).
            return h5py.File(path, "r", locking=False)
        except (TypeError, ValueError):  # an HDF5 library without the locking switch
            return h5py.File(path, "r")
    except OSError as exc:
        raise ObservationError(
            f"{path}: not a readable HDF5 file ({exc}); the HDF5 contract wants /stokes (ny, nx, 4, nw) and "
            f"/wavelength (nw,); pass format= if the file is FITS or .npy"
        ) from None


def _open_hdf5(p, axes, wavelength, lines, instrument, noise, options) -> Observation:
    if options:
        raise ObservationError(f"{p}: reader_options {sorted(options)} are not used by HDF5 files")
    ax = parse_axes(axes, where=p) if axes is not None else CANONICAL_AXES
    with _open_h5(p) as f:
        ds = f.get("stokes")
        if not isinstance(ds, h5py.Dataset):
            raise ObservationError(
                f"{p}: no /stokes dataset (top-level names: {sorted(f.keys())}); the HDF5 contract wants "
                f"/stokes float32 (ny, nx, 4, nw) in I, Q, U, V order"
            )
        sizes = _axis_sizes(p, "/stokes", ds.shape, ax)
        if wavelength is not None:
            wl_raw = parse_wavelength(wavelength, sizes["wave"], where=p, relative_to=os.path.dirname(p))
            what = "the given wavelength"
        else:
            wds = f.get("wavelength")
            if not isinstance(wds, h5py.Dataset):
                raise ObservationError(
                    f"{p}: no /wavelength dataset (top-level names: {sorted(f.keys())}); add /wavelength "
                    f"float64 (nw,) absolute air wavelengths in Angstrom, or pass wavelength="
                )
            wl_raw, what = wds[()], "/wavelength"
        wl, flipped = check_wavelength(wl_raw, sizes["wave"], where=p, what=what)
        if ds.dtype.kind not in "fiu":
            raise ObservationError(f"{p}: /stokes has dtype {ds.dtype}; expected float32 (or another number type)")
        meta = _finish_meta(p, dict(f.attrs), lines, instrument, noise)
    layout = {"axes": ax, "flip_wave": flipped, "dataset": "stokes"}
    return Observation(p, "hdf5", sizes["y"], sizes["x"], sizes["wave"], wl, meta, layout)


def _axis_sizes(where: str, what: str, shape: tuple[int, ...], ax: tuple[str, ...]) -> dict[str, int]:
    if len(shape) != 4:
        raise ObservationError(
            f"{where}: {what} has {len(shape)} axes, shape {shape}; expected 4 axes "
            f"({', '.join(ax)}); declare another order with axes='...' if the layout differs"
        )
    sizes = dict(zip(ax, (int(n) for n in shape)))
    if sizes["stokes"] != 4:
        raise ObservationError(
            f"{where}: {what} has shape {shape} read as ({', '.join(ax)}), so its Stokes axis has "
            f"{sizes['stokes']} entries, expected 4 (I, Q, U, V); declare the true order with axes='...'"
        )
    if min(sizes.values()) < 1:
        raise ObservationError(f"{where}: {what} is empty, shape {shape}")
    return sizes


def _to_canonical(block: np.ndarray, layout: Mapping[str, Any]) -> np.ndarray:
    ax = tuple(layout.get("axes", CANONICAL_AXES))
    if ax != CANONICAL_AXES:
        block = np.transpose(block, [ax.index(a) for a in CANONICAL_AXES])
    if layout.get("flip_wave"):
        block = block[..., ::-1]
    return np.ascontiguousarray(block, dtype=np.float32)


def _row_index(layout: Mapping[str, Any], y0: int, y1: int) -> tuple[slice, ...]:
    ax = tuple(layout.get("axes", CANONICAL_AXES))
    return tuple(slice(y0, y1) if a == "y" else slice(None) for a in ax)


def _read_rows_hdf5(obs: Observation, y0: int, y1: int) -> np.ndarray:
    with _open_h5(obs.path) as f:
        block = f[obs._layout.get("dataset", "stokes")][_row_index(obs._layout, y0, y1)]
    return _to_canonical(block, obs._layout)


# --------------------------------------------------------------------------- #
# .npy
# --------------------------------------------------------------------------- #
def _load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ObservationError(
            f"{path}: cannot memory-map this .npy file ({exc}); it must hold one numeric array "
            f"(not pickled objects)"
        ) from None


def _open_npy(p, axes, wavelength, lines, instrument, noise, options) -> Observation:
    if options:
        raise ObservationError(f"{p}: reader_options {sorted(options)} are not used by .npy files")
    arr = _load_npy(p)
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise ObservationError(f"{p}: expected one numeric array, got {getattr(arr, 'dtype', type(arr))}")
    ax = parse_axes(axes, where=p) if axes is not None else CANONICAL_AXES
    sizes = _axis_sizes(p, "the array", arr.shape, ax)
    if wavelength is None:
        stem = p[:-4] if p.lower().endswith(".npy") else p
        side = [s for s in (stem + ".wavelength.npy", stem + ".wavelength.txt") if os.path.isfile(s)]
        if not side:
            raise ObservationError(
                f"{p}: a .npy cube carries no wavelengths; pass wavelength= (an array, a .npy/.txt file, or "
                f"'start:step' in Angstrom) or put them in {os.path.basename(stem)}.wavelength.npy next to it"
            )
        wavelength = side[0]
    wl, flipped = check_wavelength(
        parse_wavelength(wavelength, sizes["wave"], where=p, relative_to=os.path.dirname(p)),
        sizes["wave"], where=p, what="the wavelength grid",
    )
    meta = _finish_meta(p, {}, lines, instrument, noise)
    layout = {"axes": ax, "flip_wave": flipped}
    return Observation(p, "npy", sizes["y"], sizes["x"], sizes["wave"], wl, meta, layout)


def _read_rows_npy(obs: Observation, y0: int, y1: int) -> np.ndarray:
    arr = _load_npy(obs.path)
    return _to_canonical(np.asarray(arr[_row_index(obs._layout, y0, y1)]), obs._layout)


# --------------------------------------------------------------------------- #
# FITS (generic cube)
# --------------------------------------------------------------------------- #
def _fits_open(path: str):
    from astropy.io import fits

    try:
        return fits.open(path, lazy_load_hdus=True)
    except (OSError, ValueError) as exc:
        raise ObservationError(
            f"{path}: not a readable FITS file ({exc}); pass format= if it is HDF5 or .npy"
        ) from None


def _find_cube_hdu(path: str, hdul, hdu_opt: Any) -> int:
    if hdu_opt is not None:
        try:
            index = hdul.index_of(hdu_opt)
        except (KeyError, IndexError):
            raise ObservationError(f"{path}: no HDU {hdu_opt!r}; it has {len(hdul)} HDUs") from None
        return int(index)
    names = [h.name.upper() for h in hdul]
    if "STOKES" in names:
        return names.index("STOKES")
    found = []
    for i, h in enumerate(hdul):
        shape = getattr(h, "shape", None) or ()
        found.append(tuple(shape))
        if h.is_image and len(shape) == 4:
            return i
    raise ObservationError(
        f"{path}: no image HDU with 4 axes (HDU shapes: {found}); the cube must be 4-D (y, x, stokes, wave "
        f"in some order); give the HDU with reader_options={{'hdu': ...}}"
    )


_CUNIT_TO_A = {"angstrom": 1.0, "a": 1.0, "aa": 1.0, "nm": 10.0, "um": 1.0e4, "m": 1.0e10, "mm": 1.0e7}


def _fits_wavelength(path: str, hdul, header, ax: tuple[str, ...], nw: int) -> np.ndarray:
    names = [h.name.upper() for h in hdul]
    for cand in ("WAVELENGTH", "WAVE", "LAMBDA"):
        if cand in names:
            return np.asarray(hdul[names.index(cand)].data, dtype=np.float64).ravel()
    n = len(ax) - ax.index("wave")  # FITS axis number of the wave axis
    if f"CRVAL{n}" not in header:
        raise ObservationError(
            f"{path}: no wavelengths: no HDU named WAVELENGTH and no CRVAL{n}/CDELT{n} keywords for the wave "
            f"axis (FITS axis {n}); pass wavelength= (array, .npy/.txt file, or 'start:step' in Angstrom)"
        )
    step = header.get(f"CDELT{n}", header.get(f"CD{n}_{n}"))
    if step is None:
        raise ObservationError(f"{path}: CRVAL{n} is set but neither CDELT{n} nor CD{n}_{n}; pass wavelength=")
    unit = str(header.get(f"CUNIT{n}", "Angstrom")).strip().lower()
    if unit not in _CUNIT_TO_A:
        raise ObservationError(f"{path}: CUNIT{n} = {unit!r} is not a wavelength unit I know ({sorted(_CUNIT_TO_A)})")
    pix = np.arange(nw, dtype=np.float64) + 1.0 - float(header.get(f"CRPIX{n}", 1.0))
    return (float(header[f"CRVAL{n}"]) + float(step) * pix) * _CUNIT_TO_A[unit]


def _open_fits(p, axes, wavelength, lines, instrument, noise, options) -> Observation:
    opts = dict(options)
    hdu_opt = opts.pop("hdu", None)
    if opts:
        raise ObservationError(f"{p}: reader_options {sorted(opts)} are not used by FITS cubes (only 'hdu')")
    ax = parse_axes(axes, where=p) if axes is not None else CANONICAL_AXES
    with _fits_open(p) as hdul:
        index = _find_cube_hdu(p, hdul, hdu_opt)
        hdu = hdul[index]
        header = hdu.header
        sizes = _axis_sizes(p, f"HDU {index}", tuple(hdu.shape), ax)
        if wavelength is not None:
            wl_raw = parse_wavelength(wavelength, sizes["wave"], where=p, relative_to=os.path.dirname(p))
        else:
            wl_raw = _fits_wavelength(p, hdul, header, ax, sizes["wave"])
        wl, flipped = check_wavelength(wl_raw, sizes["wave"], where=p, what="the wavelength grid")
        file_meta: dict[str, Any] = {}
        for key, name in (("INSTRUME", "instrument"), ("LINES", "lines"), ("NOISE", "noise")):
            if key in header:
                file_meta[name] = header[key]
        for key in ("TELESCOP", "DATE-OBS", "OBJECT"):
            if key in header:
                file_meta[key.lower().replace("-", "_")] = header[key]
    meta = _finish_meta(p, file_meta, lines, instrument, noise)
    layout = {"axes": ax, "flip_wave": flipped, "hdu": index}
    return Observation(p, "fits", sizes["y"], sizes["x"], sizes["wave"], wl, meta, layout)


def _read_rows_fits(obs: Observation, y0: int, y1: int) -> np.ndarray:
    with _fits_open(obs.path) as hdul:
        block = hdul[obs._layout["hdu"]].section[_row_index(obs._layout, y0, y1)]
    return _to_canonical(np.asarray(block), obs._layout)


# --------------------------------------------------------------------------- #
# Reader table
# --------------------------------------------------------------------------- #
_ROW_READERS: dict[str, Callable[[Observation, int, int], np.ndarray]] = {
    "hdf5": _read_rows_hdf5,
    "npy": _read_rows_npy,
    "fits": _read_rows_fits,
}


def _row_reader(fmt: str) -> Callable[[Observation, int, int], np.ndarray]:
    if fmt in _ROW_READERS:
        return _ROW_READERS[fmt]
    from stokesflow.orchestrator import readers

    if fmt in readers.ROW_READERS:
        return readers.ROW_READERS[fmt]
    raise ObservationError(f"no reader for format {fmt!r}; known: {', '.join(FORMATS)}")


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #
def _writer_attrs(where: str, attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    a = dict(attrs or {})
    line_str = _lines_str(a.get("lines"), where)
    if not line_str:
        raise ObservationError(
            f"{where}: attrs must name the spectral lines, e.g. attrs={{'lines': 'FeI_6173', "
            f"'instrument': 'hmi'}}; a file without them cannot be inverted"
        )
    a["lines"] = line_str
    a["instrument"] = str(a.get("instrument") or "generic")
    if a.get("noise") is None:
        a.pop("noise", None)
    else:
        nv = _noise_value(a["noise"], where)
        a["noise"] = np.asarray(nv, dtype=np.float64) if isinstance(nv, tuple) else nv
    return a


class ObservationWriter:
    """Write an observation file of the HDF5 contract row block by row block.

    Creates ``/stokes`` float32 ``(ny, nx, 4, nw)`` chunked by rows (about
    1 MiB per chunk, unwritten pixels read back as NaN), ``/wavelength``, the
    root attributes, and, on first use, ``/truth/<param>`` float32 maps. Memory
    is that of one row block, so a 4096 x 4096 synthetic scene can be written in
    blocks of a few rows.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (overwritten).
    ny, nx : int
        Map size in pixels.
    wavelength : array_like
        ``(nw,)`` absolute air wavelengths in Angstrom, strictly increasing.
    attrs : Mapping
        Root attributes; ``lines`` is required, ``instrument`` defaults to
        ``"generic"``, ``noise`` (sigma) optional; others are stored as given.
    require_complete : bool
        When True (default), :meth:`close` raises if some rows were never
        written.
    compression : str, optional
        HDF5 filter for ``/stokes`` (e.g. ``"gzip"``); none by default (speed).

    Examples
    --------
    >>> with ObservationWriter("scene.h5", 4096, 4096, wl, {"lines": "FeI_6173"}) as w:  # doctest: +SKIP
    ...     for y0 in range(0, 4096, 16):
    ...         w.write_rows(y0, stokes_block, truth_block)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        ny: int,
        nx: int,
        wavelength: Any,
        attrs: Mapping[str, Any],
        *,
        require_complete: bool = True,
        compression: str | None = None,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.ny, self.nx = int(ny), int(nx)
        if self.ny < 1 or self.nx < 1:
            raise ObservationError(f"{self.path}: map size must be at least 1 x 1, got {ny} x {nx}")
        wl = np.asarray(wavelength, dtype=np.float64)
        self.wavelength, flipped = check_wavelength(wl, wl.size, where=self.path, what="wavelength")
        if flipped:
            raise ObservationError(f"{self.path}: write wavelengths in increasing order (got a decreasing grid)")
        self.nw = int(wl.size)
        self.attrs = _writer_attrs(self.path, attrs)
        self.require_complete = bool(require_complete)
        self._written = np.zeros(self.ny, dtype=bool)
        self._compression = compression
        self._file: h5py.File | None = h5py.File(self.path, "w")
        try:
            self._file.create_dataset("wavelength", data=self.wavelength, dtype=np.float64)
            self._file.create_dataset(
                "stokes", shape=(self.ny, self.nx, 4, self.nw), dtype=np.float32,
                chunks=self._chunks((4, self.nw), 4), fillvalue=np.nan, compression=compression,
            )
            for key, value in self.attrs.items():
                self._file.attrs[key] = value
        except BaseException:
            self._file.close()
            raise

    def _chunks(self, tail: tuple[int, ...], item_bytes: int) -> tuple[int, ...]:
        """Chunk shape of about 1 MiB holding whole rows (or a part of one very long row)."""
        pixel_bytes = item_bytes * int(np.prod(tail, dtype=np.int64))
        row_bytes = self.nx * pixel_bytes
        if row_bytes <= _CHUNK_BYTES:
            rows, cols = max(1, min(self.ny, _CHUNK_BYTES // row_bytes)), self.nx
        else:
            rows, cols = 1, max(1, min(self.nx, _CHUNK_BYTES // pixel_bytes))
        return (rows, cols) + tuple(tail)

    def __enter__(self) -> ObservationWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._close_file()

    def write_rows(
        self, y0: int, stokes_rows: Any, truth_rows: Mapping[str, Any] | None = None
    ) -> None:
        """Write a block of whole rows starting at row ``y0``.

        Parameters
        ----------
        y0 : int
            First row of the block.
        stokes_rows : array_like
            ``(rows, nx, 4, nw)`` Stokes I, Q, U, V in continuum units (cast
            to float32).
        truth_rows : Mapping[str, array_like], optional
            ``(rows, nx)`` true parameter maps of the same rows, by name.
        """
        f = self._require_open()
        block = np.asarray(stokes_rows)
        if block.ndim != 4 or block.shape[1:] != (self.nx, 4, self.nw):
            raise ObservationError(
                f"{self.path}: write_rows got Stokes rows of shape {block.shape}, expected "
                f"(rows, {self.nx}, 4, {self.nw})"
            )
        y0 = int(y0)
        y1 = y0 + block.shape[0]
        if not 0 <= y0 <= y1 <= self.ny:
            raise ObservationError(f"{self.path}: rows [{y0}, {y1}) fall outside the map of {self.ny} rows")
        f["stokes"][y0:y1] = block.astype(np.float32, copy=False)
        for name, values in (truth_rows or {}).items():
            self._write_truth_rows(name, y0, y1, values)
        self._written[y0:y1] = True

    def write_truth(self, name: str, values: Any) -> None:
        """Write one whole ``(ny, nx)`` truth map ``/truth/<name>``."""
        self._require_open()
        self._write_truth_rows(name, 0, self.ny, values)

    def _write_truth_rows(self, name: str, y0: int, y1: int, values: Any) -> None:
        f = self._require_open()
        arr = np.asarray(values)
        if arr.shape != (y1 - y0, self.nx):
            raise ObservationError(
                f"{self.path}: truth map {name!r} for rows [{y0}, {y1}) has shape {arr.shape}, "
                f"expected ({y1 - y0}, {self.nx})"
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
            raise ObservationError(f"{self.path}: truth name {name!r} must be a plain identifier")
        group = f.require_group("truth")
        if name not in group:
            group.create_dataset(
                name, shape=(self.ny, self.nx), dtype=np.float32, chunks=self._chunks((), 4),
                fillvalue=np.nan, compression=self._compression,
            )
        group[name][y0:y1] = arr.astype(np.float32, copy=False)

    def _require_open(self) -> h5py.File:
        if self._file is None:
            raise ObservationError(f"{self.path}: the writer is closed")
        return self._file

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        """Close the file; raise if rows are missing and ``require_complete``."""
        if self._file is None:
            return
        self._close_file()
        if self.require_complete and not self._written.all():
            missing = np.flatnonzero(~self._written)
            runs = np.split(missing, np.flatnonzero(np.diff(missing) > 1) + 1)
            spans = ", ".join(f"[{r[0]}, {r[-1] + 1})" for r in runs[:5])
            raise ObservationError(
                f"{self.path}: closed with {missing.size} of {self.ny} rows never written ({spans}"
                f"{', ...' if len(runs) > 5 else ''}); they hold NaN. Write every row, or pass "
                f"require_complete=False"
            )


def write_observation(
    path: str | os.PathLike[str],
    stokes: Any = None,
    wavelength: Any = None,
    attrs: Mapping[str, Any] | None = None,
    truth: Mapping[str, Any] | None = None,
    *,
    shape: tuple[int, int] | None = None,
) -> None:
    """Write a whole observation file of the HDF5 contract.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (overwritten).
    stokes : array_like, optional
        ``(ny, nx, 4, nw)`` Stokes I, Q, U, V in continuum units.
    wavelength : array_like
        ``(nw,)`` absolute air wavelengths in Angstrom, increasing.
    attrs : Mapping
        ``lines`` (required), ``instrument``, ``noise`` and any other attribute.
    truth : Mapping[str, array_like], optional
        ``(ny, nx)`` true parameter maps, written to ``/truth/<name>``.
    shape : tuple of int, optional
        ``(ny, nx)`` when ``stokes`` is None: the file is laid out with every
        pixel NaN, to be filled later (e.g. by :class:`ObservationWriter` users
        or tests of the NaN policy).
    """
    where = os.fspath(path)
    if wavelength is None:
        raise ObservationError(f"{where}: write_observation needs wavelength= (Angstrom, absolute)")
    wl = np.asarray(wavelength, dtype=np.float64)
    if stokes is None:
        if shape is None or len(shape) != 2:
            raise ObservationError(f"{where}: give stokes=(ny, nx, 4, nw) data or shape=(ny, nx)")
        ny, nx = (int(n) for n in shape)
    else:
        arr = np.asarray(stokes)
        if arr.ndim != 4 or arr.shape[2] != 4 or arr.shape[3] != wl.size:
            raise ObservationError(
                f"{where}: stokes has shape {arr.shape}, expected (ny, nx, 4, {wl.size}) with the wave axis "
                f"as long as the wavelength grid"
            )
        if shape is not None and tuple(shape) != arr.shape[:2]:
            raise ObservationError(f"{where}: shape={tuple(shape)} disagrees with stokes {arr.shape[:2]}")
        ny, nx = arr.shape[:2]
    with ObservationWriter(path, ny, nx, wl, attrs or {}, require_complete=stokes is not None) as w:
        if stokes is not None:
            w.write_rows(0, stokes)
        for name, values in (truth or {}).items():
            w.write_truth(name, values)
