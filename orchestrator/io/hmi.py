"""SDO/HMI ``hmi.S_720s``: one record as 24 per-segment FITS files.

Files
-----
One record (one ``T_REC``) is 24 FITS files, one per segment, named like
``hmi.S_720s.20110215_000000_TAI.3.I0.fits``: segments ``I0..I5``, ``Q0..Q5``,
``U0..U5``, ``V0..V5``, each a 4096 x 4096 image in DN/s (``BUNIT``), usually
RICE tile-compressed (a ``CompImageHDU`` in HDU 1, integers with
``BSCALE``/``BZERO``, ``BLANK`` off the disc), with the JSOC keywords
``T_REC``, ``WAVELNTH``, ``CRPIX1/2``, ``CDELT1/2``, ``CRVAL1/2``, ``CROTA2``,
``RSUN_OBS``, ``DSUN_OBS``, ``OBS_VR``, ... The reader sets
``meta["spectral_instrument"] = "hmi_filters"``: each point is a filtergram,
the line integrated through one of six tuning profiles.

Segment order (which wavelength is ``I0``)
------------------------------------------
Segment ``k`` is the filtergram of tuning position ``k``, and the positions run
from the red to the blue wing: ``I0`` at +172.0 mA, ``I1`` +103.2, ``I2``
+34.4, ``I3`` -34.4, ``I4`` -103.2, ``I5`` -172.0 mA from the Fe I 6173 line
centre (nominal spacing 68.8 mA). Source: the JSOC module that writes the
Stokes series, ``HMI_IQUV_averaging.c`` (S. Couvidat, J. Schou, R. Wachter;
public copy github.com/ulrichw/NASA-HMI-Observables-Code, file
``HMI_IQUV_averaging.c``, header comment "FILTER/WAVELENGTH NAMES" and the
``wavelength=`` argument, "filter indices ranging from I0 to I5 (for filters
nominally centered at +172 mA to -172 mA ...)"). The filter model of the same
pipeline agrees (``lookup.c`` there: the tunable-element phases of ``I0`` put
its transmission peak at the red end), and VFISV reverses the observed order
"so that they are in increasing wavelength order" before fitting (VFISV
``invert.f90``, change of 23 Apr 2010; public copy
github.com/abgm-github/standalone_VFISV, ``src/invert.f90``). The offsets and the line centre are those
of the ME backend's HMI instrument
(:data:`stokesflow.backends.me.instrument.HMI_OFFSETS_MA`, blue to red, and
``HMI_LINE_CENTRE`` = 6173.3433 A, VFISV's ``LAMBDA_0``); this module derives
the segment order from them. ``reader_options={"order": "blue_to_red"}``
(``-R order=blue_to_red``) reverses it for files relabelled by other tools;
``wavelength=`` gives six explicit values in segment order; ``center=``
(``-R center=6173.34``) moves the reference wavelength. The reader returns the
segments sorted by wavelength (increasing), so with the JSOC order the wave
axis holds ``I5, I4, ..., I0``. The Sun-spacecraft velocity (``OBS_VR``, up to
+-3 km/s) is *not* removed: it stays in the fitted ``vlos``, as in VFISV; it is
recorded in ``meta["OBS_VR"]``.

Continuum
---------
HMI gives DN/s. By default (``continuum="disc_centre"``) the data are divided
by the median, over the pixels within ``disc_fraction`` (0.1, ``-R
disc_fraction=...``) of the solar radius from disc centre, of ``(I0 + I5) / 2``
(the two far-wing positions). Disc centre is the pixel of (0, 0) arcsec from
``CRPIX``, ``CRVAL``, ``CDELT`` and ``CROTA2``; the radius is ``RSUN_OBS /
CDELT1`` pixels. The far wings at +-172 mA are not quite continuum, so
normalised intensities come out a few per cent below 1 in the quiet Sun; ``S0
+ S1`` absorbs it. ``continuum="local"`` (``-R continuum=local``, for
cut-outs without disc centre) takes the quiet-Sun level of the field of view
(:func:`~stokesflow.orchestrator.io._fits_common.quiet_sun_level` of ``(I0 +
I5) / 2``), and a number is used as given (DN/s). Pixels off the disc (``r >
RSUN_OBS``) are set to NaN (``mask_offdisc``, ``-R mask_offdisc=false`` keeps
them); NaN (``BLANK``) pixels stay NaN.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from stokesflow.backends.me.instrument import HMI_LINE_CENTRE, HMI_OFFSETS_MA
from stokesflow.orchestrator.errors import ObservationError
from stokesflow.orchestrator.io._fits_common import image_hdu_index, is_fits, keywords, open_fits
from stokesflow.orchestrator.io.checks import (
    check_wavelength,
    finish_meta,
    option_bool,
    option_float,
    parse_wavelength,
    reject_unknown_options,
)
from stokesflow.orchestrator.io.hmi_files import (
    HMI_SEGMENTS,
    find_hmi_files,
    hmi_continuum,
    hmi_disc_geometry,
    is_segment_name,
)
from stokesflow.orchestrator.io.observation import Observation, OpenRequest

__all__ = [
    "HMI_LINES",
    "OPTIONS",
    "SEGMENT_OFFSETS_MA",
    "detect",
    "open",
    "open_hmi",
    "read_rows",
    "segment_wavelengths",
]

#: Reader options (``-R key=value``); ``centre`` is accepted for ``center``.
OPTIONS: tuple[str, ...] = ("order", "center", "centre", "mask_offdisc", "disc_fraction")

#: Tuning offsets [mA] of segments 0..5 in the JSOC order: I0 the reddest (see the module doc).
SEGMENT_OFFSETS_MA: tuple[float, ...] = tuple(sorted(HMI_OFFSETS_MA, reverse=True))

#: Line list of HMI observations.
HMI_LINES = "FeI_6173"

_KEYWORDS = (
    "T_REC", "T_OBS", "DATE-OBS", "TELESCOP", "INSTRUME", "WAVELNTH", "CAMERA", "BUNIT", "QUALITY",
    "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CDELT1", "CDELT2", "CUNIT1", "CUNIT2", "CROTA2",
    "RSUN_OBS", "DSUN_OBS", "RSUN_REF", "OBS_VR", "OBS_VW", "OBS_VN", "CRLN_OBS", "CRLT_OBS",
)
_ORDERS = ("red_to_blue", "blue_to_red")


def segment_wavelengths(order: str = "red_to_blue", center: float = HMI_LINE_CENTRE) -> np.ndarray:
    """Wavelengths [A] of segments 0..5.

    Parameters
    ----------
    order : {"red_to_blue", "blue_to_red"}
        ``"red_to_blue"`` (JSOC): segment 0 is the reddest tuning.
    center : float
        Reference wavelength of the tuning offsets [A].
    """
    offsets = np.asarray(SEGMENT_OFFSETS_MA if order == "red_to_blue" else SEGMENT_OFFSETS_MA[::-1])
    return float(center) + offsets / 1000.0


def detect(path: str, head: bytes) -> bool:
    """A directory holding ``hmi.*.<segment>.fits`` files, or one such FITS file."""
    if os.path.isdir(path):
        return any(is_segment_name(n) for n in os.listdir(path))
    return is_fits(path, head) and is_segment_name(os.path.basename(path))


def _wavelengths(path: str, request: OpenRequest, opts: Mapping[str, Any]) -> tuple[np.ndarray, str]:
    if request.wavelength is not None:
        seg_wl = parse_wavelength(request.wavelength, 6, where=path)
        if seg_wl.shape != (6,):
            raise ObservationError(
                f"{path}: wavelength= (--wavelength) must hold 6 values (segments 0..5), got shape {seg_wl.shape}"
            )
        return seg_wl, "given"
    order = str(opts.get("order", "red_to_blue")).strip().lower()
    if order not in _ORDERS:
        raise ObservationError(
            f"{path}: order={opts.get('order')!r} (-R order=...): use 'red_to_blue' (default, the JSOC order: "
            f"I0 the reddest tuning) or 'blue_to_red'"
        )
    center = opts.get("center", opts.get("centre", HMI_LINE_CENTRE))
    center = option_float(center, "center", path)
    how = f"{center} A + tuning offsets, segment 0 {'reddest' if order == 'red_to_blue' else 'bluest'}"
    return segment_wavelengths(order, center), how


def open(path: str, request: OpenRequest) -> Observation:
    """Open one ``hmi.S_720s`` record (see the module documentation)."""
    opts = dict(request.reader_options)
    reject_unknown_options(path, "hmi", opts, OPTIONS)
    files = find_hmi_files(path)
    headers, shapes, hdus = {}, {}, {}
    for seg, f in files.items():
        with open_fits(f, "every segment must be a FITS image") as hdul:
            hdus[seg] = image_hdu_index(f, hdul, 2)
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

    seg_wl, how_wl = _wavelengths(path, request, opts)
    wave_order = tuple(int(i) for i in np.argsort(seg_wl, kind="stable"))
    wl, _ = check_wavelength(seg_wl[list(wave_order)], 6, where=path, what="the HMI wavelength grid")

    disc_fraction = option_float(opts.get("disc_fraction", 0.1), "disc_fraction", path)
    if not 0.0 < disc_fraction <= 1.0:
        raise ObservationError(
            f"{path}: disc_fraction={disc_fraction!r} (-R disc_fraction=...) must lie in (0, 1] solar radii"
        )
    geometry = hmi_disc_geometry(header)
    cont, how = hmi_continuum(path, files, hdu, (ny, nx), geometry, request.continuum, disc_fraction)
    mask_offdisc = option_bool(opts.get("mask_offdisc", True), "mask_offdisc", path)

    file_meta = {"instrument": "hmi", "lines": HMI_LINES, **keywords(header, _KEYWORDS)}
    meta = finish_meta(path, file_meta, request.lines, request.instrument, request.noise, default_instrument="hmi")
    meta.update(
        spectral_instrument="hmi_filters",
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
    return Observation(path, "hmi", int(ny), int(nx), 6, wl, meta, layout, request.identity())


def open_hmi(
    path: str | os.PathLike[str],
    *,
    wavelength: Any = None,
    lines: Any = None,
    instrument: str | None = None,
    noise: Any = None,
    continuum: float | str | None = None,
    **reader_options: Any,
) -> Observation:
    """Open one ``hmi.S_720s`` record: one segment file, or the directory of one record.

    Parameters
    ----------
    path : str or os.PathLike
        One segment file, or the directory of one record.
    wavelength : array_like, optional
        Six absolute wavelengths [A] of segments 0..5, in segment order;
        replaces ``center`` and ``order``.
    lines, instrument, noise
        Override the defaults ``"FeI_6173"``, ``"hmi"``, None (unknown).
    continuum : float or str, optional
        Quiet-Sun continuum in DN/s, ``"disc_centre"`` (default) or ``"local"``.
    **reader_options
        ``order`` (``"red_to_blue"``, the JSOC default, or ``"blue_to_red"``),
        ``center`` [A], ``mask_offdisc`` (bool), ``disc_fraction`` (solar radii).

    Returns
    -------
    Observation
        ``format="hmi"``, ``nw = 6`` increasing wavelengths.
    """
    request = OpenRequest(wavelength=wavelength, lines=lines, instrument=instrument, noise=noise,
                          continuum=continuum, reader_options=reader_options)
    return open(os.path.abspath(os.fspath(path)), request)


def read_rows(obs: Observation, y0: int, y1: int) -> np.ndarray:
    """Rows ``[y0, y1)`` of the 24 segments, wave axis increasing, divided by the continuum."""
    lay = obs._layout
    files, hdu, wave_order = lay["files"], lay["hdu"], lay["wave_order"]
    out = np.empty((y1 - y0, obs.nx, 4, obs.nw), dtype=np.float32)
    for s in range(4):
        for w, k in enumerate(wave_order):
            with open_fits(files[6 * s + k], "every segment must be a FITS image") as hdul:
                out[:, :, s, w] = hdul[hdu].section[y0:y1, :]
    out /= np.float32(lay["continuum"])
    if lay.get("disc") is not None:
        yc, xc, rsun = lay["disc"]
        yy = (np.arange(y0, y1, dtype=np.float64) - yc)[:, None]
        xx = (np.arange(obs.nx, dtype=np.float64) - xc)[None, :]
        out[yy**2 + xx**2 > rsun**2] = np.nan
    return out
