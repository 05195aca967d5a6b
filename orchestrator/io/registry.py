"""The table of observation formats: name -> the module that opens, detects and reads it.

Each format lives in its own module of :mod:`stokesflow.orchestrator.io`, which
provides the same four names:

``open(path, request) -> Observation``
    Validate the file(s) once and return the handle
    (``request`` is an :class:`~stokesflow.orchestrator.io.observation.OpenRequest`).
``detect(path, head) -> bool``
    Whether ``path`` (a file whose first bytes are ``head``, or a directory,
    ``head == b""``) is of this format. Cheap: signatures and names first.
``read_rows(obs, y0, y1) -> numpy.ndarray``
    Map rows ``[y0, y1)`` as ``(y1 - y0, nx, 4, nw)`` float32 in continuum units.
``OPTIONS``
    The ``reader_options`` keys it takes (``-R key=value`` on the command line).

and optionally ``read_truth(obs)``. The table names modules by their dotted
path and imports one only when a file of that format is met, so reading HDF5
never imports astropy, and this module imports no format module: the import
direction is formats -> observation -> registry.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from stokesflow.orchestrator.errors import ObservationError

__all__ = [
    "DETECTION_ORDER",
    "FORMATS",
    "FormatSpec",
    "detect_format",
    "format_module",
    "normalise_format",
    "row_reader",
    "spec",
]


@dataclass(frozen=True)
class FormatSpec:
    """One entry of the format table.

    Attributes
    ----------
    name : str
        Canonical name (``format=``, ``--format``, ``[input] format``).
    module : str
        Dotted path of the module that implements it.
    aliases : tuple of str
        Other names accepted for it (case-insensitive).
    layout : bool
        True for instrument layouts (several files, fixed axes, raw units
        divided by a continuum): they take ``continuum`` and refuse ``axes``.
    """

    name: str
    module: str
    aliases: tuple[str, ...] = ()
    layout: bool = False


_PKG = "stokesflow.orchestrator.io"

_SPECS: tuple[FormatSpec, ...] = (
    FormatSpec("hdf5", f"{_PKG}.hdf5", ("h5", "hdf")),
    FormatSpec("npy", f"{_PKG}.npy", ("numpy",)),
    FormatSpec("fits", f"{_PKG}.fits", ("fit", "fts")),
    FormatSpec("hmi", f"{_PKG}.hmi", ("hmi.s_720s", "sdo/hmi"), layout=True),
    FormatSpec("hinode_sp", f"{_PKG}.hinode_sp", ("hinode", "sp", "sot/sp"), layout=True),
)

#: Formats :func:`~stokesflow.orchestrator.io.open_observation` understands.
FORMATS: tuple[str, ...] = tuple(s.name for s in _SPECS)

#: Order in which detectors are asked: the instrument layouts (FITS files with
#: known names or keywords) before the generic FITS cube.
DETECTION_ORDER: tuple[str, ...] = ("hdf5", "npy", "hmi", "hinode_sp", "fits")

_BY_NAME = {s.name: s for s in _SPECS}
_ALIASES = {a: s.name for s in _SPECS for a in (s.name, *s.aliases)}


def normalise_format(format: str) -> str:
    """The canonical name of a format given by name or alias.

    Raises
    ------
    ObservationError
        For an unknown name; the message lists :data:`FORMATS`.
    """
    key = str(format).strip().lower()
    if key not in _ALIASES:
        raise ObservationError(
            f"unknown observation format {format!r}; use one of {', '.join(FORMATS)} (format= or --format)"
        )
    return _ALIASES[key]


def spec(format: str) -> FormatSpec:
    """The :class:`FormatSpec` of a format (name or alias)."""
    return _BY_NAME[normalise_format(format)]


def format_module(format: str) -> ModuleType:
    """Import and return the module implementing a format (name or alias)."""
    return importlib.import_module(spec(format).module)


def row_reader(format: str) -> Callable[[Any, int, int], Any]:
    """The ``read_rows(obs, y0, y1)`` function of a format."""
    return format_module(format).read_rows


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
        When no format recognises it.
    """
    p = os.fspath(path)
    is_dir = os.path.isdir(p)
    head = b""
    if not is_dir:
        with open(p, "rb") as f:
            head = f.read(16)
    for name in DETECTION_ORDER:
        if format_module(name).detect(p, head):
            return name
    if is_dir:
        names = sorted(os.listdir(p))
        raise ObservationError(
            f"{p}: a directory holds an observation only as the 24 segment files of an hmi.S_720s record "
            f"(hmi.S_720s.<T_REC>.<camera>.I0.fits ...) or the slit files of a Hinode SP scan (SP3D*.fits); "
            f"found {len(names)} entries ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); pass a "
            f"file, or format= (--format)"
        )
    raise ObservationError(
        f"{p}: cannot tell the format of this file: it starts with {head[:10]!r}, which is neither an "
        f"HDF5 signature, a FITS header ('SIMPLE  =') nor a .npy header; convert it to the HDF5 contract "
        f"(stokesflow.orchestrator.io.write_observation) or pass format= (--format) one of {', '.join(FORMATS)}"
    )
