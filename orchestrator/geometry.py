"""Where a result's pixels lie on the Sun: the observation's keywords and WCS.

A result file names the observation it was inverted from (attribute
``input``, else ``[input] path`` in its ``config`` TOML). This module finds
that observation, reads the keywords it carries (HDF5 attributes, the
instrument readers' header keywords, a FITS cube's celestial WCS) and turns
them into

- a two-dimensional FITS WCS for the ``(ny, nx)`` maps
  (:attr:`ObservationInfo.wcs_header`, helioprojective ``HPLN-TAN`` /
  ``HPLT-TAN``), with the observing keywords to carry over
  (:attr:`ObservationInfo.observing`: ``DATE-OBS``, ``RSUN_OBS``, the
  observer's position, ...);
- the plate scale and the area of a pixel on the Sun;
- each pixel's heliographic position (:func:`pixel_heliographic`) and the
  orientation of the image axes relative to solar west and north
  (:func:`image_rotation`), which the vector transforms need.

Map axes: numpy ``[row, column]`` is ``[y, x]``; FITS pixel ``(x + 1, y + 1)``.
A Hinode/SP scan gives no map WCS, only ``XCEN``/``YCEN`` (the first slit's
pointing, arcsec), ``XSCALE`` (slit step) and ``YSCALE`` (pixel along the
slit); the map WCS is then ``CRPIX1 = 1`` at ``XCEN``, ``CRPIX2`` the middle of
the slit at ``YCEN``, no rotation.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from stokesflow.orchestrator.errors import OrchestratorError

__all__ = [
    "GeometryError",
    "ObservationInfo",
    "OBSERVING_KEYWORDS",
    "observation_info",
    "find_observation",
    "pixel_heliographic",
    "image_rotation",
    "SOLAR_RADIUS_M",
    "AU_M",
]

log = logging.getLogger(__name__)

#: Nominal solar radius [m] (IAU 2015 B3), used when the file states no RSUN_REF.
SOLAR_RADIUS_M = 6.957e8
#: Astronomical unit [m], the observer distance when the file states no DSUN_OBS.
AU_M = 1.495978707e11

#: Observing keywords carried into exported FITS headers when the observation has them.
OBSERVING_KEYWORDS = (
    "DATE-OBS", "T_OBS", "T_REC", "TELESCOP", "INSTRUME", "WAVELNTH", "OBJECT",
    "RSUN_OBS", "RSUN_REF", "DSUN_OBS", "HGLN_OBS", "HGLT_OBS", "CRLN_OBS", "CRLT_OBS",
    "OBS_VR", "OBS_VW", "OBS_VN",
)
_WCS_KEYWORDS = (
    "CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2",
    "CDELT1", "CDELT2", "CROTA2", "PC1_1", "PC1_2", "PC2_1", "PC2_2",
)
# lower-case spellings written by stokesflow's FITS reader (DATE-OBS -> date_obs)
_ALIASES = {"DATE_OBS": "DATE-OBS", "TSTART": "DATE-OBS"}


class GeometryError(OrchestratorError):
    """The observation lacks what a geometric product needs (WCS, observer)."""


@dataclass(frozen=True)
class ObservationInfo:
    """What a result's observation says about where its pixels are.

    Attributes
    ----------
    path : str or None
        The observation found, absolute; None when it could not be found.
    ny, nx : int
        Map size of the result [pixels].
    nw : int or None
        Wavelength points of the observation (None when unknown).
    keywords : dict
        Keywords found in the observation, upper-case FITS spelling.
    wcs_header : dict or None
        Two-dimensional FITS WCS of the map (``CTYPE``, ``CUNIT`` arcsec,
        ``CRPIX``, ``CRVAL``, ``CDELT``, ``PC`` or ``CROTA2``); None without
        a plate scale.
    has_truth : bool
        The observation holds ``/truth/<param>`` maps.
    note : str
        How the observation was found, or why not (for the report).
    """

    path: str | None
    ny: int
    nx: int
    nw: int | None = None
    keywords: dict[str, Any] = field(default_factory=dict)
    wcs_header: dict[str, Any] | None = None
    has_truth: bool = False
    note: str = ""

    @property
    def observing(self) -> dict[str, Any]:
        """The observing keywords of :data:`OBSERVING_KEYWORDS` that are present."""
        return {k: self.keywords[k] for k in OBSERVING_KEYWORDS if k in self.keywords}

    def wcs(self) -> Any:
        """An :class:`astropy.wcs.WCS` of the map, or None without a plate scale."""
        if self.wcs_header is None:
            return None
        from astropy.wcs import WCS

        return WCS(dict(self.wcs_header, NAXIS=2, NAXIS1=self.nx, NAXIS2=self.ny))

    @property
    def plate_scale(self) -> tuple[float, float] | None:
        """Pixel size (along x, along y) [arcsec], or None when unknown."""
        w = self.wcs()
        if w is None:
            return None
        cd = np.abs(w.pixel_scale_matrix) * 3600.0  # deg -> arcsec
        return float(np.hypot(*cd[:, 0])), float(np.hypot(*cd[:, 1]))

    @property
    def observer_distance_m(self) -> float:
        """Sun-observer distance [m]: ``DSUN_OBS``, else one AU."""
        d = _float(self.keywords.get("DSUN_OBS"))
        return d if d and d > 0 else AU_M

    @property
    def solar_radius_m(self) -> float:
        """Solar radius [m]: ``RSUN_REF``, else from ``RSUN_OBS`` and the distance, else nominal."""
        r = _float(self.keywords.get("RSUN_REF"))
        if r and r > 0:
            return r
        rsun_obs, d = _float(self.keywords.get("RSUN_OBS")), _float(self.keywords.get("DSUN_OBS"))
        if rsun_obs and d:
            return d * math.sin(math.radians(rsun_obs / 3600.0))
        return SOLAR_RADIUS_M

    @property
    def pixel_area_cm2(self) -> float | None:
        """Area of one pixel on the Sun at disc centre [cm^2] (no foreshortening), or None."""
        scale = self.plate_scale
        if scale is None:
            return None
        d_cm = (self.observer_distance_m - self.solar_radius_m) * 100.0
        ax, ay = (math.radians(s / 3600.0) for s in scale)
        return float(d_cm * ax * d_cm * ay)


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _normalise_keywords(raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        k = str(key).upper()
        k = _ALIASES.get(k, k)
        if k not in out:
            out[k] = _plain(value)
    return out


def find_observation(result_path: str | os.PathLike[str]) -> tuple[str | None, dict[str, Any], str]:
    """The observation a result file was inverted from.

    Parameters
    ----------
    result_path : str or os.PathLike
        Result file (HDF5).

    Returns
    -------
    path : str or None
        The observation, absolute, or None when it is not where the result
        says (the attribute ``input``, ``[input] path`` of ``config``, tried as
        given and relative to the result's folder).
    input_table : dict
        The ``[input]`` table of the result's configuration (empty if none).
    note : str
        What was tried, for the report.
    """
    from stokesflow.orchestrator.config import tomllib

    with h5py.File(result_path, "r") as h5:
        attrs = {k: _plain(v) for k, v in h5.attrs.items()}
    table: dict[str, Any] = {}
    try:
        table = dict(tomllib.loads(str(attrs.get("config", ""))).get("input", {}))
    except tomllib.TOMLDecodeError:
        pass
    candidates = [str(c) for c in (attrs.get("input"), table.get("path")) if c]
    folder = Path(result_path).resolve().parent
    tried = []
    for c in candidates:
        for p in (Path(c), folder / c, folder / Path(c).name):
            tried.append(str(p))
            if p.exists():
                return str(p.resolve()), table, f"observation {p.resolve()}"
    if not candidates:
        return None, table, "the result names no observation (no 'input' attribute, no [input] path)"
    return None, table, "observation not found (tried " + ", ".join(dict.fromkeys(tried)) + ")"


def _hinode_wcs(kw: Mapping[str, Any], ny: int) -> dict[str, Any] | None:
    xs, ys = _float(kw.get("XSCALE")), _float(kw.get("YSCALE"))
    if not xs or not ys:
        return None
    return {
        "CTYPE1": "HPLN-TAN", "CTYPE2": "HPLT-TAN", "CUNIT1": "arcsec", "CUNIT2": "arcsec",
        "CRPIX1": 1.0, "CRPIX2": (ny + 1) / 2.0,
        "CRVAL1": _float(kw.get("XCEN")) or 0.0, "CRVAL2": _float(kw.get("YCEN")) or 0.0,
        "CDELT1": xs, "CDELT2": ys,
    }


def _map_wcs(kw: Mapping[str, Any], ny: int) -> dict[str, Any] | None:
    """A 2-D helioprojective WCS from the keywords, or None without a plate scale."""
    if "XSCALE" in kw and "YSCALE" in kw:  # Hinode/SP: CDELT1 is the wavelength step there
        return _hinode_wcs(kw, ny)
    c1, c2 = _float(kw.get("CDELT1")), _float(kw.get("CDELT2"))
    if not c1 or not c2:
        return None
    out: dict[str, Any] = {
        "CTYPE1": str(kw.get("CTYPE1") or "HPLN-TAN"), "CTYPE2": str(kw.get("CTYPE2") or "HPLT-TAN"),
        "CUNIT1": str(kw.get("CUNIT1") or "arcsec"), "CUNIT2": str(kw.get("CUNIT2") or "arcsec"),
        "CRPIX1": _float(kw.get("CRPIX1")) or 1.0, "CRPIX2": _float(kw.get("CRPIX2")) or 1.0,
        "CRVAL1": _float(kw.get("CRVAL1")) or 0.0, "CRVAL2": _float(kw.get("CRVAL2")) or 0.0,
        "CDELT1": c1, "CDELT2": c2,
    }
    if not (out["CTYPE1"].startswith("HPLN") and out["CTYPE2"].startswith("HPLT")):
        return None
    pc = [_float(kw.get(k)) for k in ("PC1_1", "PC1_2", "PC2_1", "PC2_2")]
    if all(v is not None for v in pc):
        out.update(zip(("PC1_1", "PC1_2", "PC2_1", "PC2_2"), pc))
    elif _float(kw.get("CROTA2")):
        out["CROTA2"] = _float(kw.get("CROTA2"))
    return out


def _fits_keywords(path: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """Keywords of a FITS cube's HDU; its celestial WCS axes renumbered as 1 (x), 2 (y)."""
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    with fits.open(path, memmap=True) as hdul:
        hdu = next((h for h in hdul if h.header.get("NAXIS", 0) >= 3), hdul[0])
        header = hdu.header.copy()
    kw = {k: header[k] for k in OBSERVING_KEYWORDS if k in header}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        cel = WCS(header).celestial
    if cel.naxis == 2:
        kw.update({k: v for k, v in cel.to_header().items() if k in _WCS_KEYWORDS})
    return kw


def observation_info(result_path: str | os.PathLike[str]) -> ObservationInfo:
    """Find a result's observation and read what it says about the map geometry.

    Never raises for a missing or unreadable observation: the returned
    :class:`ObservationInfo` then has ``path`` None (or no WCS) and a
    ``note`` saying why, and callers fall back to pixels.

    Parameters
    ----------
    result_path : str or os.PathLike
        Result file.

    Returns
    -------
    ObservationInfo
    """
    with h5py.File(result_path, "r") as h5:
        ny, nx = (int(v) for v in h5["status"].shape)
        nw_synth = int(h5["synthetic"].shape[-1]) if "synthetic" in h5 else None
    path, table, note = find_observation(result_path)
    if path is None:
        return ObservationInfo(None, ny, nx, nw_synth, note=note)
    raw: dict[str, Any] = {}
    nw, has_truth = nw_synth, False
    try:
        if os.path.isfile(path) and h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                raw = dict(f.attrs.items())
                if "wavelength" in f:
                    nw = int(f["wavelength"].shape[0])
                has_truth = isinstance(f.get("truth"), h5py.Group) and len(f["truth"]) > 0
        else:
            from stokesflow.orchestrator.io import open_observation

            obs = open_observation(
                path, format=table.get("format") or None, axes=table.get("axes") or None,
                wavelength=table.get("wavelength") or None, lines=table.get("lines") or None,
                continuum=table.get("continuum") or None, reader_options=table.get("reader_options") or None,
            )
            raw, nw = dict(obs.meta), obs.nw
            if obs.format == "fits":
                raw.update(_fits_keywords(path, table))
    except Exception as exc:  # the report still works in pixels
        log.warning("could not read the observation %s for its keywords: %s", path, exc)
        return ObservationInfo(path, ny, nx, nw, note=f"{note}, unreadable ({exc})")
    kw = _normalise_keywords(raw)
    wcs = _map_wcs(kw, ny)
    return ObservationInfo(path, ny, nx, nw, kw, wcs, has_truth, note)


# ---------------------------------------------------------------------------
# per-pixel geometry
# ---------------------------------------------------------------------------
def image_rotation(info: ObservationInfo) -> np.ndarray:
    """Unit directions of the image axes in (solar west, solar north).

    Returns
    -------
    ndarray, (2, 2)
        Column 0: the direction of +x (increasing column), column 1: of +y
        (increasing row), as (west, north) components; so
        ``(B_west, B_north) = M @ (B_x, B_y)``. A mirrored image gives a
        matrix of determinant -1.

    Raises
    ------
    GeometryError
        Without a WCS.
    """
    w = info.wcs()
    if w is None:
        raise GeometryError(f"{info.path or 'the observation'}: no plate scale or WCS ({info.note}); "
                            "the image orientation on the Sun is unknown")
    m = np.array(w.pixel_scale_matrix, dtype=np.float64)  # d(lon, lat)/d(x, y), deg/pixel
    return m / np.hypot(m[0], m[1])[None, :]


def pixel_heliographic(
    info: ObservationInfo, rows: slice | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Heliographic position of each pixel relative to the observer's central meridian.

    Helioprojective (Tx, Ty) from the WCS, then the line of sight meets the
    sphere of radius ``solar_radius_m`` seen from ``observer_distance_m``
    (Thompson 2006, A&A 449, 791, eqs. 15-16 and 12), then Stonyhurst
    latitude and longitude relative to the observer (``B0`` = the observer's
    latitude ``HGLT_OBS``, else ``CRLT_OBS``, else 0).

    Parameters
    ----------
    info : ObservationInfo
    rows : slice, optional
        Rows of the map (default all).

    Returns
    -------
    lon, lat : ndarray, (nrows, nx) float64
        Longitude from the observer's central meridian (positive west) and
        latitude [rad]; NaN off the disc.
    b0 : float
        Observer's heliographic latitude [rad].
    """
    w = info.wcs()
    if w is None:
        raise GeometryError(f"{info.path or 'the observation'}: no plate scale or WCS ({info.note}); "
                            "heliographic positions need CDELT1/2 and CRPIX1/2 (or XSCALE/YSCALE)")
    rows = rows or slice(0, info.ny)
    y, x = np.mgrid[rows, 0:info.nx]
    tx_deg, ty_deg = w.pixel_to_world_values(x.astype(np.float64), y.astype(np.float64))
    tx, ty = np.radians(tx_deg), np.radians(ty_deg)
    d, r = info.observer_distance_m, info.solar_radius_m
    b0 = math.radians(_float(info.keywords.get("HGLT_OBS")) or _float(info.keywords.get("CRLT_OBS")) or 0.0)
    cos_a = np.cos(tx) * np.cos(ty)
    disc = (d * cos_a) ** 2 - (d * d - r * r)
    with np.errstate(invalid="ignore"):
        dist = d * cos_a - np.sqrt(disc)  # nearer intersection with the sphere
    dist = np.where(disc >= 0, dist, np.nan)
    hx = dist * np.cos(ty) * np.sin(tx)            # heliocentric, towards west
    hy = dist * np.sin(ty)                         # towards north
    hz = d - dist * np.cos(ty) * np.cos(tx)        # towards the observer
    lat = np.arcsin(np.clip((hy * math.cos(b0) + hz * math.sin(b0)) / r, -1.0, 1.0))
    lon = np.arctan2(hx, hz * math.cos(b0) - hy * math.sin(b0))
    return lon, lat, b0

