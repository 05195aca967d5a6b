"""Instrument layouts: SDO/HMI ``hmi.S_720s`` and Hinode SOT/SP level 1.

Both are opened through :func:`stokesflow.orchestrator.io.open_observation` (``format="hmi"``
or ``"hinode_sp"``, or detected), return an ordinary
:class:`~stokesflow.orchestrator.io.Observation`, and are read row block by row block by
the workers, so neither a 4096 x 4096 HMI disc nor a long SP scan is ever held
in memory whole. Every Stokes parameter is divided by one quiet-Sun continuum
level, so the data reach the backend in the contract's continuum units.

SDO/HMI ``hmi.S_720s``
----------------------
One record (one ``T_REC``) is 24 FITS files, one per segment, named like
``hmi.S_720s.20110215_000000_TAI.3.I0.fits``: segments ``I0..I5``, ``Q0..Q5``,
``U0..U5``, ``V0..V5``, each a 4096 x 4096 image in DN/s (``BUNIT``), usually
RICE tile-compressed (a ``CompImageHDU`` in HDU 1, integers with
``BSCALE``/``BZERO``, ``BLANK`` off the disc), with the JSOC keywords
``T_REC``, ``WAVELNTH``, ``CRPIX1/2``, ``CDELT1/2``, ``CRVAL1/2``, ``CROTA2``,
``RSUN_OBS``, ``DSUN_OBS``, ``OBS_VR``, ... (JSOC series description of
``hmi.S_720s``).

*Wavelengths.* The six filter positions are tuned to about +-34.4, +-103.2 and
+-172.0 mA from the line (DESIGN.md; Schou et al. 2012, Sol. Phys. 275, 327).
The segment index runs from the red to the blue wing: ``I0`` is the reddest
(+172 mA) and ``I5`` the bluest (-172 mA), the order of the six tuning positions
in the HMI observables pipeline (Couvidat et al. 2012, Sol. Phys. 278, 217;
Couvidat et al. 2016, Sol. Phys. 291, 1887) and in independent readers of
``hmi.S_720s``. That order could not be checked against a primary JSOC document
from here, so it is a parameter: ``reader_options={"order": "blue_to_red"}``
reverses it (and ``wavelength=`` gives six explicit values, in segment order).
The reader returns the segments sorted by wavelength (increasing), so with the
default order the wave axis holds ``I5, I4, ..., I0``. The reference
wavelength is 6173.3433 A, VFISV's ``LAMBDA_0`` in the JSOC pipeline
(``reader_options={"center": ...}`` changes it). The Sun-spacecraft velocity
(``OBS_VR``, up to +-3 km/s) is *not* removed: it stays in the fitted ``vlos``,
as in VFISV; it is recorded in ``meta["OBS_VR"]``.

*Continuum.* HMI gives DN/s. By default the data are divided by the median,
over the pixels within ``disc_fraction`` (0.1) of the solar radius from disc
centre, of the continuum estimate ``(I0 + I5) / 2`` (the two far-wing
positions). Disc centre is the pixel of (0, 0) arcsec from ``CRPIX``,
``CRVAL``, ``CDELT`` and ``CROTA2``; the radius is ``RSUN_OBS / CDELT1`` pixels.
The far wings at +-172 mA are not quite continuum, so normalised intensities
come out a few per cent below 1 in the quiet Sun; ``S0 + S1`` absorbs it.
``continuum="local"`` takes the quiet-Sun level of the field of view instead
(:func:`quiet_sun_level` of ``(I0 + I5) / 2``; for cut-outs that do not contain
disc centre), and a number is used as given (DN/s). Pixels off the disc
(``r > RSUN_OBS``) are set to NaN (``mask_offdisc``); NaN (``BLANK``) pixels
stay NaN.

Hinode SOT/SP level 1
---------------------
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
``reader_options={"allow_partial": True}``, which leaves them NaN).

*Integer storage.* Level-1 data are 16-bit integers as produced by SP_PREP
(Lites & Ichimoto 2013, Sol. Phys. 283, 601): Stokes I is unsigned, so values
above 32767 appear negative in the signed 16-bit array and get 65536 added; and
on-board bit shifting, recorded in ``SPBSHFT``, halved some Stokes parameters,
which are doubled back: ``SPBSHFT >= 1`` I, ``>= 2`` also V, ``>= 3`` also Q and
U. This follows the level-1 reading routine ``readl1_sbsp.pro`` distributed
with the HAO SP data (unwrap I first, then undo the shifts), see
:func:`hinode_sp_unscale`.

*Continuum.* Per pixel, the continuum proxy is the mean of the four brightest
wavelength points of I (the SP is in space, without telluric lines, and the
window has continuum on both sides of each line), or the mean of I inside
``reader_options={"continuum_window": (lo, hi)}`` (Angstrom). The scan's
quiet-Sun level is :func:`quiet_sun_level` of that map (up to 64 slits evenly
spread over the scan are read for it); ``continuum=`` a number (DN) overrides it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np

from stokesflow.orchestrator.errors import ObservationError
from stokesflow.orchestrator.io import Observation, _finish_meta, _plain, check_wavelength, parse_wavelength

__all__ = [
    "HINODE_SP_LINES",
    "HMI_CENTER_A",
    "HMI_LINES",
    "HMI_OFFSETS_MA",
    "HMI_SEGMENTS",
    "ROW_READERS",
    "detect_directory",
    "detect_fits_file",
    "find_hinode_sp_files",
    "find_hmi_files",
    "hinode_sp_unscale",
    "hmi_disc_geometry",
    "open_hinode_sp",
    "open_hmi",
    "quiet_sun_level",
]

# --------------------------------------------------------------------------- #
# Constants
# --------------------------------------------------------------------------- #
#: The 24 segments of an ``hmi.S_720s`` record, Stokes-major.
HMI_SEGMENTS: tuple[str, ...] = tuple(f"{s}{k}" for s in "IQUV" for k in range(6))

#: Reference wavelength of the HMI Fe I line, Angstrom (VFISV ``LAMBDA_0``).
HMI_CENTER_A: float = 6173.3433

#: Tuning offsets of segments 0..5 from the reference, mA, red to blue (see module doc).
HMI_OFFSETS_MA: tuple[float, ...] = (172.0, 103.2, 34.4, -34.4, -103.2, -172.0)

#: Line list of HMI observations.
HMI_LINES = "FeI_6173"

#: Line list of Hinode SOT/SP observations.
HINODE_SP_LINES = "FeI_6301,FeI_6302"

_HMI_NAME = re.compile(r"^(?P<prefix>.+)\.(?P<seg>[IQUV][0-5])\.fits$", re.IGNORECASE)
_SP_NAME = re.compile(r"^SP3D\d{8}_\d{6}\.\d+C\.fits$", re.IGNORECASE)

_HMI_KEYWORDS = (
    "T_REC", "T_OBS", "DATE-OBS", "TELESCOP", "INSTRUME", "WAVELNTH", "CAMERA", "BUNIT", "QUALITY",
    "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CDELT1", "CDELT2", "CUNIT1", "CUNIT2", "CROTA2",
    "RSUN_OBS", "DSUN_OBS", "RSUN_REF", "OBS_VR", "OBS_VW", "OBS_VN", "CRLN_OBS", "CRLT_OBS",
)
_SP_KEYWORDS = (
    "TSTART", "TEND", "DATE_OBS", "DATE-OBS", "TELESCOP", "INSTRUME", "OBS_TYPE", "XCEN", "YCEN",
    "XSCALE", "YSCALE", "FOVX", "FOVY", "CRVAL1", "CDELT1", "CRPIX1", "CRVAL2", "CDELT2", "CRPIX2",
    "NSLITPOS", "EXPTIME",
)
_SP_CONT_SLITS = 64  # slits read to estimate a scan's quiet-Sun level


# --------------------------------------------------------------------------- #
# Shared helpers
# --------------------------------------------------------------------------- #
def quiet_sun_level(icont: Any) -> float:
    """Quiet-Sun continuum level of a field of view.

    The 95th percentile ``c95`` of the finite, positive continuum values sits
    just above the quiet-Sun mean as long as dark features (umbrae, penumbrae,
    pores) cover less than about 90 % of the field; the level is the median of
    the values between ``0.7 c95`` and ``1.2 c95``, which drops those dark
    features but keeps the granulation (whose rms contrast is well below 30 %).

    Parameters
    ----------
    icont : array_like
        Continuum intensities (any units, any shape); NaN allowed.

    Returns
    -------
    float
        The level, same units as ``icont``.
    """
    v = np.asarray(icont, dtype=np.float64).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        raise ObservationError(
            "cannot estimate the quiet-Sun continuum: no finite positive intensity in the field of view; "
            "pass continuum= a number (the quiet-Sun continuum in the file's units)"
        )
    c95 = float(np.percentile(v, 95.0))
    sel = v[(v >= 0.7 * c95) & (v <= 1.2 * c95)]
    return float(np.median(sel))


def _fits():
    from astropy.io import fits

    return fits


def _open_fits(path: str):
    try:
        return _fits().open(path, lazy_load_hdus=True)
    except (OSError, ValueError) as exc:
        raise ObservationError(f"{path}: not a readable FITS file ({exc})") from None


def _image_hdu_index(path: str, hdul, ndim: int) -> int:
    shapes = []
    for i, h in enumerate(hdul):
        shape = tuple(getattr(h, "shape", None) or ())
        shapes.append(shape)
        if h.is_image and len(shape) == ndim:
            return i
    raise ObservationError(f"{path}: no {ndim}-D image HDU (HDU shapes: {shapes})")


def _keywords(header, names: Sequence[str]) -> dict[str, Any]:
    return {k: _plain(header[k]) for k in names if k in header}


def detect_fits_file(path: str) -> str:
    """Format of one FITS file: ``"hmi"``, ``"hinode_sp"`` or ``"fits"``.

    A name of the ``hmi.S_720s`` kind (``<record>.I0.fits``, starting with
    ``hmi.``) means ``hmi``; a 3-D primary image with ``INSTRUME = 'SOT/SP'``
    means ``hinode_sp``; anything else is a generic FITS cube.
    """
    name = os.path.basename(path)
    m = _HMI_NAME.match(name)
    if m and name.lower().startswith("hmi."):
        return "hmi"
    with _open_fits(path) as hdul:
        h0 = hdul[0]
        if str(h0.header.get("INSTRUME", "")).strip().upper() == "SOT/SP" and len(h0.shape or ()) == 3:
            return "hinode_sp"
    return "fits"


def detect_directory(path: str) -> str:
    """Format of a directory: ``"hmi"`` (segment files) or ``"hinode_sp"`` (slit files)."""
    names = sorted(os.listdir(path))
    if any(_HMI_NAME.match(n) and n.lower().startswith("hmi.") for n in names):
        return "hmi"
    if any(_SP_NAME.match(n) for n in names):
        return "hinode_sp"
    fits_files = [n for n in names if n.lower().endswith(".fits")]
    if fits_files and detect_fits_file(os.path.join(path, fits_files[0])) == "hinode_sp":
        return "hinode_sp"
    raise ObservationError(
        f"{path}: a directory holds an observation only as the 24 segment files of an hmi.S_720s record "
        f"(hmi.S_720s.<T_REC>.<camera>.I0.fits ...) or the slit files of a Hinode SP scan (SP3D*.fits); "
        f"found {len(names)} entries ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); pass a "
        f"file, or format="
    )


# --------------------------------------------------------------------------- #
# HMI
# --------------------------------------------------------------------------- #
def find_hmi_files(path: str) -> dict[str, str]:
    """The 24 segment files of one ``hmi.S_720s`` record.

    Parameters
    ----------
    path : str
        One segment file, or a directory holding the files of exactly one
        record.

    Returns
    -------
    dict[str, str]
        Segment name (``"I0"`` ... ``"V5"``) -> path, all 24.
    """
    if os.path.isdir(path):
        directory = path
        groups: dict[str, dict[str, str]] = {}
        for n in sorted(os.listdir(directory)):
            m = _HMI_NAME.match(n)
            if m:
                groups.setdefault(m.group("prefix"), {})[m.group("seg").upper()] = os.path.join(directory, n)
        if not groups:
            raise ObservationError(
                f"{path}: no hmi.S_720s segment files (<record>.I0.fits ... <record>.V5.fits) in this directory"
            )
        if len(groups) > 1:
            raise ObservationError(
                f"{path}: the directory holds {len(groups)} records ({', '.join(sorted(groups)[:4])}"
                f"{', ...' if len(groups) > 4 else ''}); open one of them by passing one of its files"
            )
        prefix, found = next(iter(groups.items()))
    else:
        directory, name = os.path.split(path)
        m = _HMI_NAME.match(name)
        if not m:
            raise ObservationError(
                f"{path}: not an hmi.S_720s segment file name; expected <record>.<segment>.fits with segment "
                f"I0..I5, Q0..Q5, U0..U5 or V0..V5 (e.g. hmi.S_720s.20110215_000000_TAI.3.I0.fits)"
            )
        prefix = m.group("prefix")
        found = {}
        for n in os.listdir(directory or "."):
            mm = _HMI_NAME.match(n)
            if mm and mm.group("prefix") == prefix:
                found[mm.group("seg").upper()] = os.path.join(directory, n)
    missing = [s for s in HMI_SEGMENTS if s not in found]
    if missing:
        raise ObservationError(
            f"{path}: hmi.S_720s record {prefix!r} is incomplete: {len(missing)} of 24 segment files are "
            f"missing: {', '.join(missing)} (expected {prefix}.<segment>.fits next to the others); download "
            f"the whole record (all of I0-I5, Q0-Q5, U0-U5, V0-V5)"
        )
    return {s: found[s] for s in HMI_SEGMENTS}


def hmi_disc_geometry(header: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """Disc centre and radius of an HMI image, in 0-based pixels.

    Parameters
    ----------
    header : Mapping
        FITS header with ``CRPIX1/2``, ``CDELT1/2`` (arcsec/pixel),
        ``CRVAL1/2`` (arcsec), optional ``CROTA2`` (deg) and ``RSUN_OBS``
        (arcsec).

    Returns
    -------
    (yc, xc, rsun_px) or None
        Row and column of the pixel of (0, 0) arcsec, and the solar radius in
        pixels; None when a keyword is missing.
    """
    try:
        crpix1, crpix2 = float(header["CRPIX1"]), float(header["CRPIX2"])
        cdelt1, cdelt2 = float(header["CDELT1"]), float(header["CDELT2"])
        rsun = float(header["RSUN_OBS"])
    except (KeyError, TypeError, ValueError):
        return None
    crval1, crval2 = float(header.get("CRVAL1", 0.0) or 0.0), float(header.get("CRVAL2", 0.0) or 0.0)
    th = math.radians(float(header.get("CROTA2", 0.0) or 0.0))
    # world = crval + R(th) (cdelt * (p - crpix)), R = [[cos, -sin], [sin, cos]] (FITS CROTA2
    # convention); disc centre is world = (0, 0): p - crpix = R(-th) (-crval) / cdelt.
    dx = (math.cos(th) * -crval1 + math.sin(th) * -crval2) / cdelt1
    dy = (-math.sin(th) * -crval1 + math.cos(th) * -crval2) / cdelt2
    if not all(math.isfinite(v) for v in (dx, dy, rsun, cdelt1)) or cdelt1 == 0:
        return None
    return (crpix2 - 1.0 + dy, crpix1 - 1.0 + dx, abs(rsun / cdelt1))


def _hmi_continuum(
    path: str, files: Mapping[str, str], hdu: int, shape: tuple[int, int], geometry, continuum: Any,
    disc_fraction: float,
) -> tuple[float, str]:
    if continuum is not None and not isinstance(continuum, str):
        value = float(continuum)
        if not math.isfinite(value) or value <= 0:
            raise ObservationError(f"{path}: continuum must be a positive number of DN/s, got {continuum!r}")
        return value, "given"
    mode = (continuum or "disc_centre").strip().lower().replace("center", "centre")
    ny, nx = shape
    if mode == "disc_centre":
        if geometry is None:
            raise ObservationError(
                f"{path}: the disc-centre continuum needs CRPIX1/2, CDELT1/2 and RSUN_OBS in the I0 header; "
                f"pass continuum='local' or a number (DN/s)"
            )
        yc, xc, rsun_px = geometry
        rad = disc_fraction * rsun_px
        ya, yb = max(0, int(math.floor(yc - rad))), min(ny, int(math.ceil(yc + rad)) + 1)
        xa, xb = max(0, int(math.floor(xc - rad))), min(nx, int(math.ceil(xc + rad)) + 1)
        if ya >= yb or xa >= xb:
            raise ObservationError(
                f"{path}: disc centre (row {yc:.1f}, column {xc:.1f}) is not inside this {ny} x {nx} image, so "
                f"the disc-centre continuum cannot be measured; pass continuum='local' (quiet Sun of the "
                f"field of view) or a number (DN/s)"
            )
        i0 = _read_section(files["I0"], hdu, ya, yb, xa, xb)
        i5 = _read_section(files["I5"], hdu, ya, yb, xa, xb)
        yy, xx = np.mgrid[ya:yb, xa:xb]
        inside = (yy - yc) ** 2 + (xx - xc) ** 2 <= rad**2
        est = 0.5 * (i0 + i5)
        vals = est[inside & np.isfinite(est)]
        if vals.size == 0:
            raise ObservationError(
                f"{path}: no finite (I0 + I5) / 2 value within {disc_fraction:g} Rsun of disc centre; pass "
                f"continuum='local' or a number (DN/s)"
            )
        value, how = float(np.median(vals)), f"median of (I0+I5)/2 within {disc_fraction:g} Rsun of disc centre"
    elif mode == "local":
        step = max(1, int(math.ceil(max(ny, nx) / 1024)))  # at most ~1024 x 1024 samples
        samples = []
        for ya in range(0, ny, 256):
            yb = min(ny, ya + 256)
            i0 = _read_section(files["I0"], hdu, ya, yb, 0, nx)
            i5 = _read_section(files["I5"], hdu, ya, yb, 0, nx)
            samples.append((0.5 * (i0 + i5))[::step, ::step])
        est = np.concatenate([s.ravel() for s in samples])
        value, how = quiet_sun_level(est), "quiet-Sun level of (I0+I5)/2 over the field of view"
    else:
        raise ObservationError(
            f"{path}: continuum={continuum!r}: use a number (DN/s), 'disc_centre' (default) or 'local'"
        )
    if not math.isfinite(value) or value <= 0:
        raise ObservationError(f"{path}: the continuum estimate came out {value!r}; pass continuum= a number (DN/s)")
    return value, how


def _read_section(path: str, hdu: int, ya: int, yb: int, xa: int, xb: int) -> np.ndarray:
    with _open_fits(path) as hdul:
        return np.asarray(hdul[hdu].section[ya:yb, xa:xb], dtype=np.float64)


def open_hmi(
    path: str,
    *,
    wavelength: Any = None,
    lines: Any = None,
    instrument: str | None = None,
    noise: Any = None,
    continuum: float | str | None = None,
    order: str = "red_to_blue",
    center: float = HMI_CENTER_A,
    mask_offdisc: bool = True,
    disc_fraction: float = 0.1,
) -> Observation:
    """Open one ``hmi.S_720s`` record (24 segment files) as an observation.

    Parameters
    ----------
    path : str
        One segment file, or the directory of one record.
    wavelength : array_like, optional
        Six absolute wavelengths (Angstrom) of segments 0..5, in segment order;
        replaces ``center``/``order``.
    lines, instrument, noise
        Override the defaults ``"FeI_6173"``, ``"hmi"``, None.
    continuum : float or str, optional
        Quiet-Sun continuum in DN/s, ``"disc_centre"`` (default) or
        ``"local"``; see the module documentation.
    order : {"red_to_blue", "blue_to_red"}
        Which wing segment 0 samples (default: the reddest, +172 mA).
    center : float
        Reference wavelength of the tuning offsets, Angstrom.
    mask_offdisc : bool
        Set pixels beyond ``RSUN_OBS`` from disc centre to NaN.
    disc_fraction : float
        Radius of the disc-centre region for the continuum, in solar radii.

    Returns
    -------
    Observation
        ``format="hmi"``, ``nw = 6`` increasing wavelengths.
    """
    files = find_hmi_files(path)
    headers, shapes, hdus = {}, {}, {}
    for seg, f in files.items():
        with _open_fits(f) as hdul:
            hdus[seg] = _image_hdu_index(f, hdul, 2)
            shapes[seg] = tuple(hdul[hdus[seg]].shape)
            if seg == "I0" or "T_REC" in hdul[hdus[seg]].header:
                headers[seg] = hdul[hdus[seg]].header.copy()
    if len(set(shapes.values())) != 1 or len(set(hdus.values())) != 1:
        ref = shapes["I0"]
        odd = [f"{s} {shapes[s]} (HDU {hdus[s]})" for s in HMI_SEGMENTS if shapes[s] != ref or hdus[s] != hdus["I0"]]
        raise ObservationError(
            f"{path}: the 24 segment images must share one shape and HDU layout; I0 is {ref} in HDU "
            f"{hdus['I0']}, but {', '.join(odd)}"
        )
    trecs = {s: str(h["T_REC"]).strip() for s, h in headers.items() if "T_REC" in h}
    if len(set(trecs.values())) > 1:
        raise ObservationError(
            f"{path}: the segment files come from different records: T_REC "
            + ", ".join(f"{s}={t}" for s, t in sorted(trecs.items())[:6])
            + "; keep the 24 files of one T_REC together"
        )
    hdu = hdus["I0"]
    ny, nx = shapes["I0"]
    header = headers["I0"]

    if wavelength is not None:
        seg_wl = parse_wavelength(wavelength, 6, where=path)
        if seg_wl.shape != (6,):
            raise ObservationError(f"{path}: wavelength= must hold 6 values (segments 0..5), got {seg_wl.shape}")
        how_wl = "given"
    else:
        key = str(order).strip().lower()
        if key not in ("red_to_blue", "blue_to_red"):
            raise ObservationError(f"{path}: order={order!r}: use 'red_to_blue' (default) or 'blue_to_red'")
        offsets = np.asarray(HMI_OFFSETS_MA) * (1.0 if key == "red_to_blue" else -1.0)
        seg_wl = float(center) + offsets / 1000.0
        how_wl = f"{center} A + tuning offsets, segment 0 {'reddest' if key == 'red_to_blue' else 'bluest'}"
    wave_order = tuple(int(i) for i in np.argsort(seg_wl, kind="stable"))
    wl, _ = check_wavelength(seg_wl[list(wave_order)], 6, where=path, what="the HMI wavelength grid")

    geometry = hmi_disc_geometry(header)
    cont, how = _hmi_continuum(path, files, hdu, (ny, nx), geometry, continuum, float(disc_fraction))

    file_meta = {"instrument": "hmi", "lines": HMI_LINES, **_keywords(header, _HMI_KEYWORDS)}
    meta = _finish_meta(path, file_meta, lines, instrument, noise, default_instrument="hmi")
    meta.update(
        continuum=cont, continuum_units=str(header.get("BUNIT", "DN/s")), continuum_method=how,
        wavelength_method=how_wl, segments_in_wave_order=",".join(f"k{k}" for k in wave_order),
        record=os.path.basename(files["I0"])[: -len(".I0.fits")],
    )
    layout = {
        "files": tuple(files[s] for s in HMI_SEGMENTS),
        "hdu": hdu,
        "wave_order": wave_order,
        "continuum": cont,
        "disc": tuple(float(v) for v in geometry) if (geometry is not None and mask_offdisc) else None,
    }
    return Observation(path, "hmi", int(ny), int(nx), 6, wl, meta, layout)


def _read_rows_hmi(obs: Observation, y0: int, y1: int) -> np.ndarray:
    lay = obs._layout
    files, hdu, wave_order = lay["files"], lay["hdu"], lay["wave_order"]
    out = np.empty((y1 - y0, obs.nx, 4, obs.nw), dtype=np.float32)
    for s in range(4):
        for w, k in enumerate(wave_order):
            with _open_fits(files[6 * s + k]) as hdul:
                out[:, :, s, w] = hdul[hdu].section[y0:y1, :]
    out /= np.float32(lay["continuum"])
    if lay.get("disc") is not None:
        yc, xc, rsun = lay["disc"]
        yy = (np.arange(y0, y1, dtype=np.float64) - yc)[:, None]
        xx = (np.arange(obs.nx, dtype=np.float64) - xc)[None, :]
        out[yy**2 + xx**2 > rsun**2] = np.nan
    return out


# --------------------------------------------------------------------------- #
# Hinode SOT/SP level 1
# --------------------------------------------------------------------------- #
def hinode_sp_unscale(raw: np.ndarray, spbshft: int) -> np.ndarray:
    """Undo the 16-bit storage of a Hinode SP level-1 slit image.

    Parameters
    ----------
    raw : numpy.ndarray
        ``(4, ny, nw)`` (or ``(4, ...)``) data as stored, Stokes first.
    spbshft : int
        The file's ``SPBSHFT`` keyword (0-3).

    Returns
    -------
    numpy.ndarray
        float32 counts: I unwrapped from signed to unsigned 16 bit (only when
        the data are integers), then I doubled for ``SPBSHFT >= 1``, V for
        ``>= 2``, Q and U for ``>= 3`` (``readl1_sbsp.pro``, HAO).
    """
    d = np.array(raw, dtype=np.float32, copy=True)
    if np.asarray(raw).dtype.kind in "iu":
        i = d[0]
        i[i < 0] += 65536.0
    shift = int(spbshft)
    if shift >= 1:
        d[0] *= 2.0
    if shift >= 2:
        d[3] *= 2.0
    if shift >= 3:
        d[1:3] *= 2.0
    return d


def find_hinode_sp_files(path: str) -> list[str]:
    """The slit files of one Hinode SP scan (a directory, or the directory of a file)."""
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    names = sorted(os.listdir(directory))
    picked = [n for n in names if _SP_NAME.match(n)]
    if not picked:
        picked = [n for n in names if n.lower().endswith(".fits")]
    if not picked:
        raise ObservationError(
            f"{path}: no Hinode SP level-1 files (SP3D*.fits, one per slit position) in {directory}"
        )
    return [os.path.join(directory, n) for n in picked]


def _sp_continuum_map(raw_i: np.ndarray, wl: np.ndarray, window: Any) -> np.ndarray:
    """Per-pixel continuum proxy from Stokes I of one slit, ``(ny, nw)`` -> ``(ny,)``."""
    if window is not None:
        lo, hi = sorted(float(v) for v in window)
        sel = (wl >= lo) & (wl <= hi)
        return raw_i[:, sel].mean(axis=1)
    k = min(4, raw_i.shape[1])
    return np.sort(raw_i, axis=1)[:, -k:].mean(axis=1)


def open_hinode_sp(
    path: str,
    *,
    wavelength: Any = None,
    lines: Any = None,
    instrument: str | None = None,
    noise: Any = None,
    continuum: float | str | None = None,
    allow_partial: bool = False,
    continuum_window: Sequence[float] | None = None,
) -> Observation:
    """Open a Hinode SOT/SP level-1 scan (one FITS file per slit position).

    Parameters
    ----------
    path : str
        The scan's directory, or one of its files (the whole directory is used).
    wavelength : array_like or str, optional
        Replaces the grid of the ``CRVAL1``/``CDELT1``/``CRPIX1`` keywords.
    lines, instrument, noise
        Override the defaults ``"FeI_6301,FeI_6302"``, ``"hinode"``, None.
    continuum : float or str, optional
        Quiet-Sun continuum in DN (after unscaling); ``None``/``"local"``
        estimates it from the scan (module documentation).
    allow_partial : bool
        Accept a scan with missing slit positions (their columns are NaN).
    continuum_window : (float, float), optional
        Wavelength range (Angstrom) whose mean I is the per-pixel continuum.

    Returns
    -------
    Observation
        ``format="hinode_sp"``; ``y`` along the slit, ``x`` the slit index.
    """
    files = find_hinode_sp_files(path)
    infos = []
    for f in files:
        with _open_fits(f) as hdul:
            h = hdul[0].header
            shape = tuple(hdul[0].shape or ())
            infos.append((f, shape, h.copy()))
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

    # x position of each file
    idx = [h.get("SLITINDX") for _, _, h in infos]
    if all(i is not None for i in idx):
        idx = [int(i) for i in idx]
        seen: dict[int, str] = {}
        for (f, _, _), i in zip(infos, idx):
            if i in seen:
                raise ObservationError(
                    f"{path}: two files have SLITINDX {i}: {os.path.basename(seen[i])} and {os.path.basename(f)}; "
                    f"a directory must hold one scan"
                )
            seen[i] = f
        nslit = ref_header.get("NSLITPOS")
        nx = int(nslit) if nslit is not None else max(idx) + 1
        if max(idx) >= nx or min(idx) < 0:
            raise ObservationError(f"{path}: SLITINDX values {min(idx)}..{max(idx)} do not fit NSLITPOS = {nx}")
        missing = sorted(set(range(nx)) - set(idx))
        if missing and not allow_partial:
            shown = ", ".join(str(m) for m in missing[:20]) + (", ..." if len(missing) > 20 else "")
            raise ObservationError(
                f"{path}: the scan is incomplete: {len(missing)} of {nx} slit positions are missing "
                f"(SLITINDX {shown}); fetch the missing files, or pass reader_options={{'allow_partial': True}} "
                f"to leave those columns NaN"
            )
        by_x: list[str | None] = [None] * nx
        shifts = [0] * nx
        for (f, _, h), i in zip(infos, idx):
            by_x[i] = f
            shifts[i] = int(h.get("SPBSHFT", 0) or 0)
    else:  # no SLITINDX: the file names (times) give the order
        nx = len(infos)
        by_x = [f for f, _, _ in infos]
        shifts = [int(h.get("SPBSHFT", 0) or 0) for _, _, h in infos]

    # wavelength grid
    if wavelength is not None:
        wl_raw, how_wl = parse_wavelength(wavelength, nw, where=path), "given"
    else:
        for key in ("CRVAL1", "CDELT1"):
            if key not in ref_header:
                raise ObservationError(
                    f"{ref_file}: keyword {key} (wavelength axis) is missing; pass wavelength= (Angstrom)"
                )

        def grid(h) -> np.ndarray:
            return float(h["CRVAL1"]) + (np.arange(nw) + 1.0 - float(h.get("CRPIX1", 1.0))) * float(h["CDELT1"])

        wl_raw, how_wl = grid(ref_header), "CRVAL1 + (i + 1 - CRPIX1) * CDELT1"
        for f, _, h in infos[1:]:
            if "CRVAL1" in h and "CDELT1" in h and np.max(np.abs(grid(h) - wl_raw)) > 1e-4:
                raise ObservationError(
                    f"{f}: its wavelength keywords (CRVAL1={h['CRVAL1']}, CDELT1={h['CDELT1']}) disagree with "
                    f"{os.path.basename(ref_file)} (CRVAL1={ref_header['CRVAL1']}, CDELT1={ref_header['CDELT1']}) "
                    f"by more than 0.1 mA; one scan has one wavelength grid"
                )
    wl, flipped = check_wavelength(wl_raw, nw, where=path, what="the SP wavelength grid")

    # continuum
    if continuum is not None and not isinstance(continuum, str):
        cont, how = float(continuum), "given"
        if not math.isfinite(cont) or cont <= 0:
            raise ObservationError(f"{path}: continuum must be a positive number of DN, got {continuum!r}")
    elif continuum is None or str(continuum).strip().lower() == "local":
        present = [x for x in range(nx) if by_x[x] is not None]
        pick = [present[int(i)] for i in np.unique(np.linspace(0, len(present) - 1, min(_SP_CONT_SLITS, len(present))).round())]
        wl_file = wl[::-1] if flipped else wl
        icont = []
        for x in pick:
            with _open_fits(by_x[x]) as hdul:
                raw = np.asarray(hdul[0].section[0:1, :, :])
            icont.append(_sp_continuum_map(hinode_sp_unscale(raw, shifts[x])[0], wl_file, continuum_window))
        cont = quiet_sun_level(np.concatenate(icont))
        how = (
            "quiet-Sun level of the mean I over "
            + (f"{continuum_window} A" if continuum_window is not None else "the 4 brightest points")
            + f" ({len(pick)} slits)"
        )
    else:
        raise ObservationError(f"{path}: continuum={continuum!r}: use a number (DN) or 'local' (default)")

    file_meta = {"instrument": "hinode", "lines": HINODE_SP_LINES, **_keywords(ref_header, _SP_KEYWORDS)}
    meta = _finish_meta(path, file_meta, lines, instrument, noise, default_instrument="hinode")
    meta.update(
        continuum=cont, continuum_method=how, wavelength_method=how_wl, nfiles=len(infos),
        first_file=os.path.basename(infos[0][0]),
    )
    layout = {
        "files": tuple(by_x),
        "spbshft": tuple(shifts),
        "continuum": cont,
        "flip_wave": flipped,
    }
    return Observation(path, "hinode_sp", int(ny), int(nx), int(nw), wl, meta, layout)


def _read_rows_hinode_sp(obs: Observation, y0: int, y1: int) -> np.ndarray:
    lay = obs._layout
    out = np.full((y1 - y0, obs.nx, 4, obs.nw), np.nan, dtype=np.float32)
    for x, f in enumerate(lay["files"]):
        if f is None:
            continue
        with _open_fits(f) as hdul:
            raw = np.asarray(hdul[0].section[:, y0:y1, :])
        out[:, x] = hinode_sp_unscale(raw, lay["spbshft"][x]).transpose(1, 0, 2)
    out /= np.float32(lay["continuum"])
    if lay.get("flip_wave"):
        out = np.ascontiguousarray(out[..., ::-1])
    return out


#: format -> function(observation, y0, y1) -> (y1 - y0, nx, 4, nw) float32
ROW_READERS: dict[str, Callable[[Observation, int, int], np.ndarray]] = {
    "hmi": _read_rows_hmi,
    "hinode_sp": _read_rows_hinode_sp,
}
