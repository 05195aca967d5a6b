"""The files and geometry of an ``hmi.S_720s`` record: finding the 24 segments, disc centre, continuum.

Kept apart from :mod:`stokesflow.orchestrator.io.hmi` (the opener and row
reader), which documents the layout, the segment order and the continuum.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from stokesflow.orchestrator.errors import ObservationError
from stokesflow.orchestrator.io._fits_common import open_fits, quiet_sun_level

__all__ = ["HMI_SEGMENTS", "find_hmi_files", "hmi_continuum", "hmi_disc_geometry", "is_segment_name"]

#: The 24 segments of an ``hmi.S_720s`` record, Stokes-major.
HMI_SEGMENTS: tuple[str, ...] = tuple(f"{s}{k}" for s in "IQUV" for k in range(6))

_NAME = re.compile(r"^(?P<prefix>.+)\.(?P<seg>[IQUV][0-5])\.fits$", re.IGNORECASE)


def is_segment_name(name: str) -> bool:
    """Whether a file name is that of an HMI segment file (``hmi.<...>.<segment>.fits``)."""
    return bool(_NAME.match(name)) and name.lower().startswith("hmi.")


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
        groups: dict[str, dict[str, str]] = {}
        for n in sorted(os.listdir(path)):
            m = _NAME.match(n)
            if m:
                groups.setdefault(m.group("prefix"), {})[m.group("seg").upper()] = os.path.join(path, n)
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
        m = _NAME.match(name)
        if not m:
            raise ObservationError(
                f"{path}: not an hmi.S_720s segment file name; expected <record>.<segment>.fits with segment "
                f"I0..I5, Q0..Q5, U0..U5 or V0..V5 (e.g. hmi.S_720s.20110215_000000_TAI.3.I0.fits)"
            )
        prefix = m.group("prefix")
        found = {}
        for n in os.listdir(directory or "."):
            mm = _NAME.match(n)
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


def _section(path: str, hdu: int, ya: int, yb: int, xa: int, xb: int) -> np.ndarray:
    with open_fits(path, "every segment must be a FITS image") as hdul:
        return np.asarray(hdul[hdu].section[ya:yb, xa:xb], dtype=np.float64)


def _continuum_mode(path: str, continuum: Any) -> float | str:
    """A number (DN/s, also given as text) or the mode ``"disc_centre"`` / ``"local"``."""
    if continuum is None:
        return "disc_centre"
    if not isinstance(continuum, str):
        try:
            value = float(continuum)
        except (TypeError, ValueError):
            value = math.nan
    else:
        mode = continuum.strip().lower().replace("center", "centre").replace("disk", "disc")
        if mode in ("disc_centre", "local"):
            return mode
        try:
            value = float(mode)
        except ValueError:
            raise ObservationError(
                f"{path}: continuum={continuum!r} (-R continuum=...): use a number (DN/s), 'disc_centre' "
                f"(default) or 'local'"
            ) from None
    if not math.isfinite(value) or value <= 0:
        raise ObservationError(
            f"{path}: continuum={continuum!r} (-R continuum=...) must be a positive number of DN/s, "
            f"'disc_centre' or 'local'"
        )
    return value


def hmi_continuum(
    path: str, files: Mapping[str, str], hdu: int, shape: tuple[int, int], geometry, continuum: Any,
    disc_fraction: float,
) -> tuple[float, str]:
    """The quiet-Sun continuum [DN/s] every segment is divided by, and how it was found.

    ``continuum`` is a number (used as given), ``"disc_centre"`` (default:
    median of ``(I0 + I5) / 2`` within ``disc_fraction`` solar radii of disc
    centre) or ``"local"`` (quiet-Sun level of ``(I0 + I5) / 2`` over the field
    of view).
    """
    mode = _continuum_mode(path, continuum)
    if not isinstance(mode, str):
        return mode, "given"
    ny, nx = shape
    if mode == "disc_centre":
        if geometry is None:
            raise ObservationError(
                f"{path}: the disc-centre continuum needs CRPIX1/2, CDELT1/2 and RSUN_OBS in the I0 header; "
                f"pass continuum='local' (-R continuum=local) or a number (DN/s)"
            )
        yc, xc, rsun_px = geometry
        rad = disc_fraction * rsun_px
        ya, yb = max(0, int(math.floor(yc - rad))), min(ny, int(math.ceil(yc + rad)) + 1)
        xa, xb = max(0, int(math.floor(xc - rad))), min(nx, int(math.ceil(xc + rad)) + 1)
        if ya >= yb or xa >= xb:
            raise ObservationError(
                f"{path}: disc centre (row {yc:.1f}, column {xc:.1f}) is not inside this {ny} x {nx} image, so "
                f"the disc-centre continuum cannot be measured; pass continuum='local' (-R continuum=local: "
                f"quiet Sun of the field of view) or a number (DN/s)"
            )
        i0 = _section(files["I0"], hdu, ya, yb, xa, xb)
        i5 = _section(files["I5"], hdu, ya, yb, xa, xb)
        yy, xx = np.mgrid[ya:yb, xa:xb]
        inside = (yy - yc) ** 2 + (xx - xc) ** 2 <= rad**2
        est = 0.5 * (i0 + i5)
        vals = est[inside & np.isfinite(est)]
        if vals.size == 0:
            raise ObservationError(
                f"{path}: no finite (I0 + I5) / 2 value within {disc_fraction:g} Rsun of disc centre; pass "
                f"continuum='local' (-R continuum=local) or a number (DN/s)"
            )
        value, how = float(np.median(vals)), f"median of (I0+I5)/2 within {disc_fraction:g} Rsun of disc centre"
    else:
        step = max(1, int(math.ceil(max(ny, nx) / 1024)))  # at most ~1024 x 1024 samples
        samples = []
        for ya in range(0, ny, 256):
            yb = min(ny, ya + 256)
            i0 = _section(files["I0"], hdu, ya, yb, 0, nx)
            i5 = _section(files["I5"], hdu, ya, yb, 0, nx)
            samples.append((0.5 * (i0 + i5))[::step, ::step])
        est = np.concatenate([s.ravel() for s in samples])
        value, how = quiet_sun_level(est), "quiet-Sun level of (I0+I5)/2 over the field of view"
    if not math.isfinite(value) or value <= 0:
        raise ObservationError(
            f"{path}: the continuum estimate came out {value!r}; pass continuum= a number (-R continuum=<DN/s>)"
        )
    return value, how
