"""Opening an observation: :func:`open_observation`, dispatched through the format registry."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from stokesflow.orchestrator.errors import ObservationError
from stokesflow.orchestrator.io.observation import Observation, OpenRequest
from stokesflow.orchestrator.io.registry import FORMATS, detect_format, format_module, normalise_format, spec

__all__ = ["open_observation"]


def _same_value(a: Any, b: Any) -> bool:
    """Equal as numbers (``2`` and ``"2.0"``) or as words (``"Local"`` and ``"local"``)."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a).strip().lower() == str(b).strip().lower()


def _split_continuum(where: str, continuum: Any, options: dict[str, Any]) -> Any:
    """``continuum`` may come as its own argument or as ``-R continuum=...`` among the reader options."""
    if "continuum" not in options:
        return continuum
    given = options.pop("continuum")
    if continuum is not None and not _same_value(continuum, given):
        raise ObservationError(
            f"{where}: continuum={continuum!r} ([input] continuum) and reader_options continuum={given!r} "
            f"(-R continuum=...) disagree; give it once"
        )
    return given


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
        One of :data:`~stokesflow.orchestrator.io.FORMATS` (``--format``);
        detected from the file's signature, its name and its header when not
        given.
    axes : str or sequence of str, optional
        Axis order of the stored cube (numpy order, ``--axes``), e.g.
        ``"stokes,wave,y,x"``; names ``y``, ``x``, ``stokes`` (``s``),
        ``wave`` (``w``, ``wavelength``). Default ``"y,x,stokes,wave"``. Not
        used by the instrument layouts.
    wavelength : array_like, str or os.PathLike, optional
        Overrides the file's grid (``--wavelength``): an array (Angstrom), a
        ``.npy``/``.txt`` file, or ``"start:step"`` in Angstrom (see
        :func:`~stokesflow.orchestrator.io.parse_wavelength`). For ``hmi`` the
        six values of segments 0-5 in segment order.
    lines : str or sequence of str, optional
        Spectral line names (``"FeI_6301,FeI_6302"``); override the file's.
        Required when the file does not carry them. Names are checked by the
        backend, not here.
    instrument : str, optional
        Overrides the file's instrument (default ``"generic"``).
    noise : float or sequence of 4 floats, optional
        Noise sigma in continuum units (one, or I, Q, U, V); overrides the
        file's.
    continuum : float or str, optional
        ``hmi`` / ``hinode_sp`` only (``[input] continuum``, ``-R
        continuum=...``): the quiet-Sun continuum in the file's units (DN/s,
        DN) by which every Stokes parameter is divided, or ``"local"`` /
        ``"disc_centre"``; see :mod:`stokesflow.orchestrator.io.hmi` and
        :mod:`stokesflow.orchestrator.io.hinode_sp`. A ``continuum`` key
        inside ``reader_options`` means the same.
    reader_options : Mapping, optional
        Format-specific options (``[input] reader_options``, ``-R key=value``):
        ``hdu`` (FITS HDU index or name); for ``hmi``: ``order``, ``center``,
        ``mask_offdisc``, ``disc_fraction``; for ``hinode_sp``:
        ``allow_partial``, ``continuum_window``. Values may be given as text
        (``"true"``, ``"0.2"``, ``"6302.9,6303.1"``).

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
        wavelengths, no ``lines``, bad ``axes``, missing instrument files,
        reader options the format does not take.
    """
    p = os.path.abspath(os.fspath(path))
    if not os.path.exists(p):
        raise ObservationError(
            f"observation {os.fspath(path)!r} not found (looked for {p}): no such file or directory; "
            f"check the path (relative paths start at {os.getcwd()})"
        )
    fmt = normalise_format(format) if format is not None else detect_format(p)
    options = dict(reader_options or {})
    continuum = _split_continuum(p, continuum, options)
    if spec(fmt).layout:
        if axes is not None:
            raise ObservationError(
                f"{p}: axes={axes!r} (--axes) was given, but the {fmt!r} layout fixes its own axes; leave it out"
            )
    elif continuum is not None:
        raise ObservationError(
            f"{p}: continuum={continuum!r} (-R continuum=...) applies to the instrument layouts "
            f"{', '.join(f for f in FORMATS if spec(f).layout)} only; a {fmt!r} file must already be in "
            f"continuum units"
        )
    request = OpenRequest(axes=axes, wavelength=wavelength, lines=lines, instrument=instrument, noise=noise,
                          continuum=continuum, reader_options=options)
    return format_module(fmt).open(p, request)
