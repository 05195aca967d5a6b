"""A generic FITS cube: one 4-D image HDU.

The cube is the HDU named ``STOKES``, else the first image HDU with four axes,
else the one given by ``reader_options={"hdu": ...}`` (``-R hdu=1`` or
``-R hdu=STOKES``). Its axis order is ``axes=`` (``--axes``) in *numpy* order,
the reverse of the FITS ``NAXISn`` order (default ``"y,x,stokes,wave"``).
Wavelengths come from ``wavelength=`` (``--wavelength``), else from a 1-D HDU
named ``WAVELENGTH`` (or ``WAVE``, ``LAMBDA``), else from the WCS keywords
``CRVALn``/``CDELTn`` (or ``CDn_n``)/``CRPIXn``/``CUNITn`` of the wave axis.
Metadata come from the keywords ``INSTRUME``, ``LINES`` and ``NOISE``. Reads
go through ``hdu.section``, so only the requested rows leave the disk (also
for tile-compressed HDUs); ``BSCALE``/``BZERO`` are applied.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from stokesflow.orchestrator.errors import ObservationError
from stokesflow.orchestrator.io._cube import axis_order, axis_sizes, row_index, to_canonical
from stokesflow.orchestrator.io._fits_common import is_fits, open_fits
from stokesflow.orchestrator.io.checks import check_wavelength, finish_meta, parse_wavelength, reject_unknown_options
from stokesflow.orchestrator.io.observation import Observation, OpenRequest

__all__ = ["OPTIONS", "detect", "open", "read_rows"]

#: Reader options of a FITS cube (``-R hdu=...``).
OPTIONS: tuple[str, ...] = ("hdu",)

_CUNIT_TO_A = {"angstrom": 1.0, "a": 1.0, "aa": 1.0, "nm": 10.0, "um": 1.0e4, "m": 1.0e10, "mm": 1.0e7}


def detect(path: str, head: bytes) -> bool:
    """Any FITS file (asked last: the instrument layouts claim theirs first)."""
    return bool(head) and is_fits(path, head)


def _find_cube_hdu(path: str, hdul, hdu_opt: Any) -> int:
    if hdu_opt is not None:
        key = hdu_opt
        if isinstance(key, str) and key.strip().lstrip("-").isdigit():
            key = int(key)
        try:
            return int(hdul.index_of(key))
        except (KeyError, IndexError):
            raise ObservationError(
                f"{path}: no HDU {hdu_opt!r} (hdu= in reader_options, -R hdu=...); it has {len(hdul)} HDUs"
            ) from None
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
        f"in some order); give the HDU with reader_options={{'hdu': ...}} (-R hdu=...)"
    )


def _wcs_wavelength(path: str, hdul, header, ax: tuple[str, ...], nw: int) -> np.ndarray:
    names = [h.name.upper() for h in hdul]
    for cand in ("WAVELENGTH", "WAVE", "LAMBDA"):
        if cand in names:
            return np.asarray(hdul[names.index(cand)].data, dtype=np.float64).ravel()
    n = len(ax) - ax.index("wave")  # FITS axis number of the wave axis
    if f"CRVAL{n}" not in header:
        raise ObservationError(
            f"{path}: no wavelengths: no HDU named WAVELENGTH and no CRVAL{n}/CDELT{n} keywords for the wave "
            f"axis (FITS axis {n}); pass wavelength= (--wavelength: array, .npy/.txt file, or 'start:step' "
            f"in Angstrom)"
        )
    step = header.get(f"CDELT{n}", header.get(f"CD{n}_{n}"))
    if step is None:
        raise ObservationError(
            f"{path}: CRVAL{n} is set but neither CDELT{n} nor CD{n}_{n}; pass wavelength= (--wavelength)"
        )
    unit = str(header.get(f"CUNIT{n}", "Angstrom")).strip().lower()
    if unit not in _CUNIT_TO_A:
        raise ObservationError(f"{path}: CUNIT{n} = {unit!r} is not a wavelength unit I know ({sorted(_CUNIT_TO_A)})")
    pix = np.arange(nw, dtype=np.float64) + 1.0 - float(header.get(f"CRPIX{n}", 1.0))
    return (float(header[f"CRVAL{n}"]) + float(step) * pix) * _CUNIT_TO_A[unit]


def open(path: str, request: OpenRequest) -> Observation:
    """Open and validate a FITS cube (see the module documentation)."""
    reject_unknown_options(path, "fits", request.reader_options, OPTIONS)
    ax = axis_order(request.axes, path)
    with open_fits(path) as hdul:
        index = _find_cube_hdu(path, hdul, request.reader_options.get("hdu"))
        hdu = hdul[index]
        header = hdu.header
        sizes = axis_sizes(path, f"HDU {index}", tuple(hdu.shape), ax)
        if request.wavelength is not None:
            wl_raw = parse_wavelength(request.wavelength, sizes["wave"], where=path,
                                      relative_to=os.path.dirname(path))
        else:
            wl_raw = _wcs_wavelength(path, hdul, header, ax, sizes["wave"])
        wl, flipped = check_wavelength(wl_raw, sizes["wave"], where=path, what="the wavelength grid")
        file_meta: dict[str, Any] = {}
        for key, name in (("INSTRUME", "instrument"), ("LINES", "lines"), ("NOISE", "noise")):
            if key in header:
                file_meta[name] = header[key]
        for key in ("TELESCOP", "DATE-OBS", "OBJECT"):
            if key in header:
                file_meta[key.lower().replace("-", "_")] = header[key]
    meta = finish_meta(path, file_meta, request.lines, request.instrument, request.noise)
    layout = {"axes": ax, "flip_wave": flipped, "hdu": index}
    return Observation(path, "fits", sizes["y"], sizes["x"], sizes["wave"], wl, meta, layout, request.identity())


def read_rows(obs: Observation, y0: int, y1: int) -> np.ndarray:
    """Rows ``[y0, y1)`` of the cube HDU (through ``section``) in the contract's order, float32."""
    with open_fits(obs.path) as hdul:
        block = hdul[obs._layout["hdu"]].section[row_index(obs._layout, y0, y1)]
    return to_canonical(np.asarray(block), obs._layout)
