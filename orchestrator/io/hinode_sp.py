"""Hinode SOT/SP level 1: a directory of per-slit FITS files.

Files
-----
One FITS file per slit position (``SP3D20070101_000000.0C.fits``), all files of
one scan in one directory (the layout of the CSAC/LMSAL/DARTS archives). The
primary HDU holds ``(4, ny_slit, nw)`` (Stokes, position along the slit,
wavelength), ``nw = 112`` for the Fe I 6301.5/6302.5 A pair. Keywords (SOT Data
Analysis Guide, SP keywords): ``CRVAL1``/``CDELT1``/``CRPIX1`` give the
wavelength axis in Angstrom (FITS 1-based pixel numbers), ``SLITINDX`` (0 ..
``NSLITPOS - 1``) the scan position, ``XSCALE``/``YSCALE`` the step and pixel
size in arcsec, ``XCEN``/``YCEN`` and ``TSTART`` the pointing and time. The map
is ``y`` = position along the slit, ``x`` = slit index (files sorted by
``SLITINDX``; missing positions are an error unless
``reader_options={"allow_partial": True}``, ``-R allow_partial=true``, which
leaves them NaN).

Integer storage
---------------
Level-1 data are 16-bit integers as produced by SP_PREP (Lites & Ichimoto
2013, Sol. Phys. 283, 601): Stokes I is unsigned, so values above 32767 appear
negative in the signed 16-bit array and get 65536 added; and on-board bit
shifting, recorded in ``SPBSHFT``, halved some Stokes parameters, which are
doubled back: ``SPBSHFT >= 1`` I, ``>= 2`` also V, ``>= 3`` also Q and U. This
follows the level-1 reading routine ``readl1_sbsp.pro`` distributed with the
HAO SP data (unwrap I first, then undo the shifts), see
:func:`hinode_sp_unscale`.

Continuum
---------
Per pixel, the continuum proxy is the mean of the four brightest wavelength
points of I (the SP is in space, without telluric lines, and the window has
continuum on both sides of each line), or the mean of I inside
``reader_options={"continuum_window": (lo, hi)}`` (``-R
continuum_window=[6302.9,6303.1]``, Angstrom). The scan's quiet-Sun level is
:func:`~stokesflow.orchestrator.io._fits_common.quiet_sun_level` of that map
(up to 64 slits evenly spread over the scan are read for it); ``continuum=`` a
number (DN, ``-R continuum=...``) overrides it.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from stokesflow.orchestrator.errors import ObservationError
from stokesflow.orchestrator.io._fits_common import is_fits, keywords, open_fits, quiet_sun_level
from stokesflow.orchestrator.io.checks import (
    check_wavelength,
    finish_meta,
    option_bool,
    option_float,
    option_pair,
    parse_wavelength,
    reject_unknown_options,
)
from stokesflow.orchestrator.io.observation import Observation, OpenRequest

__all__ = [
    "HINODE_SP_LINES",
    "OPTIONS",
    "detect",
    "find_hinode_sp_files",
    "hinode_sp_unscale",
    "open",
    "open_hinode_sp",
    "read_rows",
]

#: Reader options (``-R key=value``).
OPTIONS: tuple[str, ...] = ("allow_partial", "continuum_window")

#: Line list of Hinode SOT/SP observations.
HINODE_SP_LINES = "FeI_6301,FeI_6302"

_NAME = re.compile(r"^SP3D\d{8}_\d{6}\.\d+C\.fits$", re.IGNORECASE)
_KEYWORDS = (
    "TSTART", "TEND", "DATE_OBS", "DATE-OBS", "TELESCOP", "INSTRUME", "OBS_TYPE", "XCEN", "YCEN",
    "XSCALE", "YSCALE", "FOVX", "FOVY", "CRVAL1", "CDELT1", "CRPIX1", "CRVAL2", "CDELT2", "CRPIX2",
    "NSLITPOS", "EXPTIME",
)
_CONT_SLITS = 64  # slits read to estimate a scan's quiet-Sun level


def _is_sp_file(path: str) -> bool:
    with open_fits(path) as hdul:
        h0 = hdul[0]
        return str(h0.header.get("INSTRUME", "")).strip().upper() == "SOT/SP" and len(h0.shape or ()) == 3


def detect(path: str, head: bytes) -> bool:
    """A directory of ``SP3D*.fits`` files (or whose first FITS file is SP), or one SP file."""
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        if any(_NAME.match(n) for n in names):
            return True
        fits_files = [n for n in names if n.lower().endswith(".fits")]
        return bool(fits_files) and _is_sp_file(os.path.join(path, fits_files[0]))
    return is_fits(path, head) and _is_sp_file(path)


def hinode_sp_unscale(raw: np.ndarray, spbshft: int, stokes: str = "IQUV") -> np.ndarray:
    """Undo the 16-bit storage of a Hinode SP level-1 slit image.

    Parameters
    ----------
    raw : numpy.ndarray
        ``(len(stokes), ny, nw)`` (or ``(len(stokes), ...)``) data as stored,
        Stokes first.
    spbshft : int
        The file's ``SPBSHFT`` keyword (0-3).
    stokes : str
        The Stokes parameters along the first axis of ``raw``: ``"IQUV"``
        (the whole file) or a part of it, e.g. ``"I"`` when only Stokes I
        was read.

    Returns
    -------
    numpy.ndarray
        float32 counts: I unwrapped from signed to unsigned 16 bit (only when
        the data are integers), then I doubled for ``SPBSHFT >= 1``, V for
        ``>= 2``, Q and U for ``>= 3`` (``readl1_sbsp.pro``, HAO).
    """
    d = np.array(raw, dtype=np.float32, copy=True)
    if len(d) != len(stokes):
        raise ObservationError(f"hinode_sp_unscale: raw has {len(d)} Stokes images but stokes={stokes!r}")
    shift = int(spbshft)
    doubled = {"I": shift >= 1, "V": shift >= 2, "Q": shift >= 3, "U": shift >= 3}
    for k, name in enumerate(stokes):
        if name == "I" and np.asarray(raw).dtype.kind in "iu":
            d[k][d[k] < 0] += 65536.0
        if doubled[name]:
            d[k] *= 2.0
    return d


def find_hinode_sp_files(path: str) -> list[str]:
    """The slit files of one Hinode SP scan (a directory, or the directory of a file)."""
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    names = sorted(os.listdir(directory))
    picked = [n for n in names if _NAME.match(n)] or [n for n in names if n.lower().endswith(".fits")]
    if not picked:
        raise ObservationError(
            f"{path}: no Hinode SP level-1 files (SP3D*.fits, one per slit position) in {directory}"
        )
    return [os.path.join(directory, n) for n in picked]


def _slit_layout(path: str, infos: list, allow_partial: bool) -> tuple[list[str | None], list[int]]:
    """File and ``SPBSHFT`` of each slit position ``x`` (None where a position is missing)."""
    idx = [h.get("SLITINDX") for _, _, h in infos]
    if not all(i is not None for i in idx):  # no SLITINDX: the file names (times) give the order
        return [f for f, _, _ in infos], [int(h.get("SPBSHFT", 0) or 0) for _, _, h in infos]
    idx = [int(i) for i in idx]
    seen: dict[int, str] = {}
    for (f, _, _), i in zip(infos, idx):
        if i in seen:
            raise ObservationError(
                f"{path}: two files have SLITINDX {i}: {os.path.basename(seen[i])} and {os.path.basename(f)}; "
                f"a directory must hold one scan"
            )
        seen[i] = f
    nslit = infos[0][2].get("NSLITPOS")
    nx = int(nslit) if nslit is not None else max(idx) + 1
    if max(idx) >= nx or min(idx) < 0:
        raise ObservationError(f"{path}: SLITINDX values {min(idx)}..{max(idx)} do not fit NSLITPOS = {nx}")
    missing = sorted(set(range(nx)) - set(idx))
    if missing and not allow_partial:
        shown = ", ".join(str(m) for m in missing[:20]) + (", ..." if len(missing) > 20 else "")
        raise ObservationError(
            f"{path}: the scan is incomplete: {len(missing)} of {nx} slit positions are missing "
            f"(SLITINDX {shown}); fetch the missing files, or pass reader_options={{'allow_partial': True}} "
            f"(-R allow_partial=true) to leave those columns NaN"
        )
    by_x: list[str | None] = [None] * nx
    shifts = [0] * nx
    for (f, _, h), i in zip(infos, idx):
        by_x[i] = f
        shifts[i] = int(h.get("SPBSHFT", 0) or 0)
    return by_x, shifts


def _keyword_grid(infos: list, nw: int) -> tuple[np.ndarray, str]:
    ref_file, _, ref = infos[0]
    for key in ("CRVAL1", "CDELT1"):
        if key not in ref:
            raise ObservationError(
                f"{ref_file}: keyword {key} (wavelength axis) is missing; pass wavelength= (--wavelength, Angstrom)"
            )

    def grid(h) -> np.ndarray:
        return float(h["CRVAL1"]) + (np.arange(nw) + 1.0 - float(h.get("CRPIX1", 1.0))) * float(h["CDELT1"])

    wl = grid(ref)
    for f, _, h in infos[1:]:
        if "CRVAL1" in h and "CDELT1" in h and np.max(np.abs(grid(h) - wl)) > 1e-4:
            raise ObservationError(
                f"{f}: its wavelength keywords (CRVAL1={h['CRVAL1']}, CDELT1={h['CDELT1']}) disagree with "
                f"{os.path.basename(ref_file)} (CRVAL1={ref['CRVAL1']}, CDELT1={ref['CDELT1']}) "
                f"by more than 0.1 mA; one scan has one wavelength grid"
            )
    return wl, "CRVAL1 + (i + 1 - CRPIX1) * CDELT1"


def _continuum(path: str, continuum: Any, by_x: list, shifts: list, wl_file: np.ndarray,
               window: tuple[float, float] | None) -> tuple[float, str]:
    mode = continuum.strip().lower() if isinstance(continuum, str) else continuum
    if mode is not None and mode != "local":
        try:
            value = option_float(mode, "continuum", path)
        except ObservationError:
            value = -1.0
        if value <= 0:
            raise ObservationError(
                f"{path}: continuum={continuum!r} (-R continuum=...): use a positive number (DN) or 'local' "
                f"(default: the scan's quiet-Sun level)"
            )
        return value, "given"
    present = [x for x in range(len(by_x)) if by_x[x] is not None]
    spread = np.unique(np.linspace(0, len(present) - 1, min(_CONT_SLITS, len(present))).round())
    pick = [present[int(i)] for i in spread]
    icont = []
    for x in pick:
        with open_fits(by_x[x]) as hdul:
            raw_i = hinode_sp_unscale(np.asarray(hdul[0].section[0:1, :, :]), shifts[x], "I")[0]
        if window is not None:
            icont.append(raw_i[:, (wl_file >= window[0]) & (wl_file <= window[1])].mean(axis=1))
        else:
            icont.append(np.sort(raw_i, axis=1)[:, -min(4, raw_i.shape[1]):].mean(axis=1))
    how = f"{window} A" if window is not None else "the 4 brightest points"
    return quiet_sun_level(np.concatenate(icont)), f"quiet-Sun level of the mean I over {how} ({len(pick)} slits)"


def open(path: str, request: OpenRequest) -> Observation:
    """Open a Hinode SOT/SP level-1 scan (see the module documentation)."""
    opts = dict(request.reader_options)
    reject_unknown_options(path, "hinode_sp", opts, OPTIONS)
    allow_partial = option_bool(opts.get("allow_partial", False), "allow_partial", path)
    window = opts.get("continuum_window")
    window = option_pair(window, "continuum_window", path) if window is not None else None
    infos = []
    for f in find_hinode_sp_files(path):
        with open_fits(f) as hdul:
            infos.append((f, tuple(hdul[0].shape or ()), hdul[0].header.copy()))
    ref_file, ref_shape, ref_header = infos[0]
    if len(ref_shape) != 3 or ref_shape[0] != 4:
        raise ObservationError(
            f"{ref_file}: primary HDU has shape {ref_shape}, expected (4, ny_slit, nw) = (Stokes, slit "
            f"pixel, wavelength) for a Hinode SP level-1 file"
        )
    for f, shape, _ in infos[1:]:
        if shape != ref_shape:
            raise ObservationError(
                f"{f}: primary HDU has shape {shape} but {os.path.basename(ref_file)} has {ref_shape}; all slit "
                f"files of one scan must agree (is another scan or map file in {os.path.dirname(ref_file)}?)"
            )
    _, ny, nw = ref_shape
    by_x, shifts = _slit_layout(path, infos, allow_partial)

    if request.wavelength is not None:
        wl_raw, how_wl = parse_wavelength(request.wavelength, nw, where=path), "given"
    else:
        wl_raw, how_wl = _keyword_grid(infos, nw)
    wl, flipped = check_wavelength(wl_raw, nw, where=path, what="the SP wavelength grid")
    if window is not None and not np.any((wl >= window[0]) & (wl <= window[1])):
        raise ObservationError(
            f"{path}: continuum_window={window} (-R continuum_window=...) holds no wavelength of the scan "
            f"({wl[0]:.4f} .. {wl[-1]:.4f} A)"
        )
    cont, how = _continuum(path, request.continuum, by_x, shifts, wl[::-1] if flipped else wl, window)

    file_meta = {"instrument": "hinode", "lines": HINODE_SP_LINES, **keywords(ref_header, _KEYWORDS)}
    meta = finish_meta(path, file_meta, request.lines, request.instrument, request.noise,
                       default_instrument="hinode")
    meta.update(continuum=cont, continuum_method=how, wavelength_method=how_wl, nfiles=len(infos),
                first_file=os.path.basename(infos[0][0]))
    layout = {"files": tuple(by_x), "spbshft": tuple(shifts), "continuum": cont, "flip_wave": flipped}
    return Observation(path, "hinode_sp", int(ny), len(by_x), int(nw), wl, meta, layout, request.identity())


def open_hinode_sp(
    path: str | os.PathLike[str],
    *,
    wavelength: Any = None,
    lines: Any = None,
    instrument: str | None = None,
    noise: Any = None,
    continuum: float | str | None = None,
    **reader_options: Any,
) -> Observation:
    """Open a Hinode SOT/SP level-1 scan: its directory, or one of its files.

    Parameters
    ----------
    path : str or os.PathLike
        The scan's directory, or one of its files (the whole directory is used).
    wavelength : array_like or str, optional
        Replaces the grid of the ``CRVAL1``/``CDELT1``/``CRPIX1`` keywords.
    lines, instrument, noise
        Override the defaults ``"FeI_6301,FeI_6302"``, ``"hinode"``, None (unknown).
    continuum : float or str, optional
        Quiet-Sun continuum in DN (after unscaling); None/``"local"``
        estimates it from the scan.
    **reader_options
        ``allow_partial`` (bool), ``continuum_window`` ((lo, hi) Angstrom).

    Returns
    -------
    Observation
        ``format="hinode_sp"``; ``y`` along the slit, ``x`` the slit index.
    """
    request = OpenRequest(wavelength=wavelength, lines=lines, instrument=instrument, noise=noise,
                          continuum=continuum, reader_options=reader_options)
    return open(os.path.abspath(os.fspath(path)), request)


def read_rows(obs: Observation, y0: int, y1: int) -> np.ndarray:
    """Rows ``[y0, y1)`` (positions along the slit) of every slit file, divided by the continuum."""
    lay = obs._layout
    out = np.full((y1 - y0, obs.nx, 4, obs.nw), np.nan, dtype=np.float32)
    for x, f in enumerate(lay["files"]):
        if f is None:
            continue
        with open_fits(f) as hdul:
            raw = np.asarray(hdul[0].section[:, y0:y1, :])
        out[:, x] = hinode_sp_unscale(raw, lay["spbshft"][x]).transpose(1, 0, 2)
    out /= np.float32(lay["continuum"])
    if lay.get("flip_wave"):
        out = np.ascontiguousarray(out[..., ::-1])
    return out
