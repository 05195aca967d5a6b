"""``stokesflow export``: a result's maps as FITS files (and arrays, and SunPy maps).

``stokesflow export RESULT.h5 --format fits [--vector image|heliographic|none]
[--disambiguate none|acute] [--single] --out DIR`` writes one FITS file per
quantity, named after it (``B.fits``, ``inclination.fits``, ``azimuth.fits``,
..., ``chi2.fits``, ``n_iter.fits``, ``status.fits``, ``Bx.fits``, ``By.fits``,
``Bz.fits`` or ``Bp.fits``, ``Bt.fits``, ``Br.fits``, and
``disambig_unreliable.fits`` with a disambiguation), or with ``--single`` one
file ``<result stem>.fits`` with an image extension per quantity (``EXTNAME``
= the name). Each header has ``BUNIT``, the observation's WCS (``CTYPE``,
``CUNIT``, ``CRPIX``, ``CRVAL``, ``CDELT``, ``CROTA2`` or ``PC``) and
observing keywords (``DATE-OBS``, ``RSUN_OBS``, ``DSUN_OBS``,
``HGLN_OBS``/``HGLT_OBS``, ``CRLN_OBS``/``CRLT_OBS``, ...) when the observation
has them, and the inversion's configuration in ``HISTORY``.

Python: :func:`export_products` returns the same products as arrays
(:class:`Products`), :meth:`Products.maps` as ``sunpy.map.Map`` objects when
SunPy is installed, :func:`export_fits` writes the files.

Parameters are written as stored (status 4, poor fit, keeps its values; the
status map says which pixels to trust). Vector conventions:
:mod:`stokesflow.orchestrator.vectors`; disambiguation:
:mod:`stokesflow.orchestrator.disambiguation`. Exit codes of the command: 0
written, 2 bad input (missing or foreign result, existing files without
``--overwrite``, ``heliographic`` without a WCS).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stokesflow.backends import STATUS_NOT_RUN
from stokesflow.orchestrator.cli import checked_number
from stokesflow.orchestrator.errors import OrchestratorError
from stokesflow.orchestrator.geometry import ObservationInfo, image_rotation, observation_info, pixel_heliographic
from stokesflow.orchestrator.paths import output_folder
from stokesflow.orchestrator.resultview import ResultView

__all__ = ["ExportError", "Products", "export_products", "export_fits", "fits_header", "add_export_parser",
           "VECTOR_FRAMES", "FITS_UNITS"]

log = logging.getLogger("stokesflow.export")

#: ``--vector`` choices and the products each adds.
VECTOR_FRAMES = {"none": (), "image": ("Bx", "By", "Bz"), "heliographic": ("Bp", "Bt", "Br")}
#: Result-file unit -> FITS ``BUNIT`` (FITS standard spellings; mA is milli-Angstrom, not milliampere).
FITS_UNITS = {"G": "G", "deg": "deg", "km/s": "km/s", "mA": "10**(-3) Angstrom", "": ""}
_ROWS = 256  # rows per block of the heliographic transform


class ExportError(OrchestratorError):
    """The export cannot be made (result, options, missing geometry, existing files)."""


@dataclass
class Products:
    """Maps ready for FITS, with their units and the shared header.

    Attributes
    ----------
    data : dict of str to ndarray (ny, nx)
        In export order.
    units : dict of str to str
        FITS ``BUNIT`` per product.
    comments : dict of str to str
        One line per product for the header.
    info : ObservationInfo
        The observation's geometry (WCS, observing keywords).
    history : list of str
        The inversion's configuration and what the export did.
    complete : bool
        The result file is complete (header keyword ``COMPLETE``); a partial one's pixels
        not yet run are NaN.
    """

    data: dict[str, np.ndarray] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)
    info: ObservationInfo | None = None
    history: list[str] = field(default_factory=list)
    complete: bool = True

    def header(self, name: str) -> Any:
        """The :class:`astropy.io.fits.Header` of product ``name``."""
        return fits_header(self, name)

    def maps(self) -> dict[str, Any]:
        """The products as ``sunpy.map.Map`` objects (needs SunPy and a WCS)."""
        try:
            import sunpy.map
        except ImportError as exc:
            raise ExportError("Products.maps() needs SunPy: pip install 'sunpy[map]'") from exc
        if self.info is None or self.info.wcs_header is None:
            raise ExportError("no WCS in the observation, so no SunPy map: "
                              f"{self.info.note if self.info else 'no observation'}")
        return {n: sunpy.map.Map(d, self.header(n)) for n, d in self.data.items()}


def _fits_value(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def fits_header(products: Products, name: str) -> Any:
    """FITS header of one product: WCS, observing keywords, BUNIT, history."""
    from astropy.io import fits

    h = fits.Header()
    info = products.info
    if info is not None:
        for k, v in (info.wcs_header or {}).items():
            h[k] = _fits_value(v)
        for k, v in info.observing.items():
            h[k] = _fits_value(v)
        if "DATE-OBS" in h and "MJD-OBS" not in h:  # spares WCS readers their 'datfix' warning
            try:
                from astropy.time import Time

                h["MJD-OBS"] = float(Time(str(h["DATE-OBS"]).replace("_TAI", ""), scale="utc").mjd)
            except ValueError:
                pass
    h["BTYPE"] = name
    h["BUNIT"] = products.units.get(name, "")
    if products.comments.get(name):
        h["COMMENT"] = products.comments[name]
    h["ORIGIN"] = "stokesflow"
    h["COMPLETE"] = (bool(products.complete), "every pixel inverted (F: some not run, NaN)")
    for line in products.history:
        h.add_history(line)
    return h


def _read(h5: h5py.File, key: str) -> np.ndarray:
    return h5[key][()]


def export_products(
    result: str | os.PathLike[str], *, vector: str = "image", disambiguate: str = "none",
    azimuth_zero: str = "x", weak_threshold: float | None = None, sigma: bool = False,
) -> Products:
    """A result's maps and derived field vectors as arrays.

    Parameters
    ----------
    result : str or os.PathLike
        Result file.
    vector : {"image", "heliographic", "none"}
        ``image``: Bx, By, Bz (image frame); ``heliographic``: Bp, Bt, Br
        (local frame of each pixel; needs the observation's WCS).
    disambiguate : str
        A method of :data:`stokesflow.orchestrator.disambiguation.METHODS`
        (``none``, ``acute``); the azimuth product becomes 0-360 deg and
        ``disambig_unreliable`` marks undecided pixels.
    azimuth_zero : {"x", "y"}
        Image axis of azimuth 0 (:mod:`stokesflow.orchestrator.vectors`).
    weak_threshold : float, optional
        ``acute``: transverse field [G] below which pixels stay undecided.
    sigma : bool
        Also the 1-sigma uncertainties, as ``sigma_<param>``.

    Returns
    -------
    Products

    Raises
    ------
    ExportError
        Unknown ``vector``; ``heliographic`` without WCS or observer; a
        result without B, inclination and azimuth for vectors or disambiguation.
    """
    from stokesflow.orchestrator import disambiguation as dis
    from stokesflow.orchestrator import vectors

    if vector not in VECTOR_FRAMES:
        raise ExportError(f"--vector {vector!r} is not one of {sorted(VECTOR_FRAMES)}")
    if disambiguate not in dis.METHODS:
        raise ExportError(f"--disambiguate {disambiguate!r} is not one of {sorted(dis.METHODS)}")
    with ResultView(result) as view:
        names, units = view.names, dict(view.units)
    info = observation_info(result)
    prod = Products(info=info)
    with h5py.File(result, "r") as h5:
        for n in names:
            prod.data[n] = _read(h5, f"params/{n}")
            prod.units[n] = FITS_UNITS.get(units.get(n, ""), units.get(n, ""))
        if sigma:
            for n in names:
                prod.data[f"sigma_{n}"] = _read(h5, f"sigma/{n}")
                prod.units[f"sigma_{n}"] = prod.units[n]
        prod.data["chi2"], prod.data["n_iter"], prod.data["status"] = (_read(h5, k) for k in ("chi2", "n_iter", "status"))
        config = str(h5.attrs.get("config", ""))
        prod.complete = bool(h5.attrs.get("complete", True))
    if not prod.complete:
        not_run = int(np.count_nonzero(prod.data["status"] == STATUS_NOT_RUN))
        log.warning("%s is not complete: its %d pixel(s) not yet run are NaN in the export (COMPLETE = F in the "
                    "headers); finish it with `stokesflow invert ... --resume` first", os.fspath(result), not_run)
    prod.comments.update(chi2="reduced weighted chi-square", n_iter="solver iterations",
                         status="0 ok, 1 max-iterations, 2 failed, 3 bad input, 4 poor fit, 255 not run")
    need = {"B", "inclination", "azimuth"}
    if (vector != "none" or disambiguate != "none") and not need <= set(names):
        raise ExportError(f"{os.fspath(result)!r}: field vectors and disambiguation need parameters "
                          f"{sorted(need)}, the result has {list(names)}; use --vector none --disambiguate none")
    convention = (f"azimuth 0 along image +{azimuth_zero}, counter-clockwise; inclination 0 towards the observer")
    if "azimuth" in prod.data:
        prod.comments["azimuth"] = convention + ("; ambiguous by 180 deg" if disambiguate == "none" else "")
    if disambiguate != "none":
        opts = {} if weak_threshold is None else {"weak_threshold": weak_threshold}
        res = dis.disambiguate(disambiguate, prod.data["B"], prod.data["inclination"], prod.data["azimuth"],
                               azimuth_zero=azimuth_zero, **opts)
        prod.data["azimuth"] = res.azimuth
        prod.data["disambig_unreliable"] = res.unreliable
        prod.units["disambig_unreliable"] = ""
        prod.comments["azimuth"] = f"{convention}; 0-360 deg by '{res.method}' where decided"
        prod.comments["disambig_unreliable"] = f"1: '{res.method}' did not decide (weak field); azimuth left 0-180"
    if vector != "none":
        bx, by, bz = (v.astype(np.float32) for v in vectors.image_components(
            prod.data["B"], prod.data["inclination"], prod.data["azimuth"], azimuth_zero=azimuth_zero))
        if vector == "image":
            out = {"Bx": bx, "By": by, "Bz": bz}
            what = {"Bx": "along image +x", "By": "along image +y", "Bz": "towards the observer"}
        else:
            out = _heliographic(info, bx, by, bz)
            what = {"Bp": "westward (local heliographic)", "Bt": "southward (local heliographic)",
                    "Br": "radial outward (local heliographic)"}
        amb = "" if disambiguate != "none" else "; sign ambiguous with the azimuth (no disambiguation)"
        for n, arr in out.items():
            prod.data[n] = arr.astype(np.float32)
            prod.units[n] = "G"
            prod.comments[n] = what[n] + (amb if n not in ("Bz", "Br") or vector == "heliographic" else "")
    prod.history = [f"stokesflow export of {os.path.abspath(result)}: vector={vector}, "
                    f"disambiguate={disambiguate}, azimuth_zero={azimuth_zero}",
                    "inversion configuration (TOML):"] + [ln for ln in config.splitlines() if ln.strip()]
    return prod


def _heliographic(info: ObservationInfo, bx: np.ndarray, by: np.ndarray, bz: np.ndarray) -> dict[str, np.ndarray]:
    from stokesflow.orchestrator.geometry import GeometryError
    from stokesflow.orchestrator.vectors import heliographic_components

    try:
        rot = image_rotation(info)
    except GeometryError as exc:
        raise ExportError(f"--vector heliographic needs the observation's WCS: {exc}; use --vector image") from exc
    out = {n: np.full(bx.shape, np.nan, np.float32) for n in ("Bp", "Bt", "Br")}
    for y0 in range(0, info.ny, _ROWS):
        rows = slice(y0, min(info.ny, y0 + _ROWS))
        lon, lat, b0 = pixel_heliographic(info, rows)
        bp, bt, br = heliographic_components(bx[rows], by[rows], bz[rows], lon, lat, b0, rot)
        out["Bp"][rows], out["Bt"][rows], out["Br"][rows] = bp, bt, br
    return out


def export_fits(
    result: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, vector: str = "image",
    disambiguate: str = "none", single: bool = False, overwrite: bool = False, azimuth_zero: str = "x",
    weak_threshold: float | None = None, sigma: bool = False,
) -> list[Path]:
    """Write the products of :func:`export_products` as FITS files into ``out_dir``.

    Returns
    -------
    list of Path
        The files written (one per product, or one with ``single``).

    Raises
    ------
    ExportError
        As :func:`export_products`; or files exist and ``overwrite`` is false; an ``out_dir`` that
        is a file or cannot be created or written.
    """
    from astropy.io import fits

    prod = export_products(result, vector=vector, disambiguate=disambiguate, azimuth_zero=azimuth_zero,
                           weak_threshold=weak_threshold, sigma=sigma)
    out = output_folder(out_dir, what=f"export folder {os.fspath(out_dir)!r}", error=ExportError)
    targets = [out / (Path(result).stem + ".fits")] if single else [out / f"{n}.fits" for n in prod.data]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise ExportError(f"{len(existing)} file(s) already exist ({', '.join(existing[:3])}"
                          f"{', ...' if len(existing) > 3 else ''}); pass --overwrite or choose another --out")
    if single:
        primary = fits.PrimaryHDU(header=prod.header("primary"))
        primary.header.remove("BUNIT", ignore_missing=True)
        primary.header.remove("BTYPE", ignore_missing=True)
        hdus = [primary] + [fits.ImageHDU(d, header=prod.header(n), name=n) for n, d in prod.data.items()]
        fits.HDUList(hdus).writeto(targets[0], overwrite=True)
    else:
        for (n, d), t in zip(prod.data.items(), targets):
            fits.PrimaryHDU(d, header=prod.header(n)).writeto(t, overwrite=True)
    return targets


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------
def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to an argparse ``subparsers`` object (``func`` returns the exit code)."""
    from stokesflow.orchestrator.disambiguation import DEFAULT_WEAK_THRESHOLD, METHODS

    p = subparsers.add_parser(
        "export", help="write a result's maps as FITS files with the observation's WCS",
        description="Write one FITS file per quantity (parameters, chi2, n_iter, status, field vectors) with "
                    "BUNIT, the observation's WCS and observing keywords, and the configuration in HISTORY.",
        epilog="Azimuth convention: 0 along image +x (or +y with --azimuth-zero y, the SDO/HMI convention), "
               "counter-clockwise. Exit codes: 0 written, 2 bad input.",
    )
    p.add_argument("result", metavar="RESULT.h5", help="result file of `stokesflow invert`")
    p.add_argument("--format", choices=["fits"], default="fits", help="output format (default fits)")
    p.add_argument("--vector", choices=sorted(VECTOR_FRAMES), default="image",
                   help="field vector: image (Bx, By, Bz), heliographic (Bp, Bt, Br; needs the WCS), none "
                        "(default image)")
    p.add_argument("--disambiguate", choices=sorted(METHODS), default="none",
                   help="180-degree azimuth ambiguity: none (azimuth 0-180) or acute (potential-field acute "
                        "angle; weak pixels marked in disambig_unreliable) (default none)")
    p.add_argument("--weak-threshold", type=checked_number(float, lambda v: v >= 0, "a field strength >= 0"),
                   default=None, metavar="G",
                   help=f"transverse field below which 'acute' leaves a pixel undecided (default {DEFAULT_WEAK_THRESHOLD:g})")
    p.add_argument("--azimuth-zero", choices=["x", "y"], default="x",
                   help="image axis of azimuth 0 (default x, stokesflow's; y for HMI-convention data)")
    p.add_argument("--single", action="store_true", help="one multi-extension file instead of one file per quantity")
    p.add_argument("--sigma", action="store_true", help="also export the 1-sigma uncertainties (sigma_<param>)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=_cmd_export, verbose=0)
    return p


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        files = export_fits(args.result, args.out, vector=args.vector, disambiguate=args.disambiguate,
                            single=args.single, overwrite=args.overwrite, azimuth_zero=args.azimuth_zero,
                            weak_threshold=args.weak_threshold, sigma=args.sigma)
    except OrchestratorError as exc:
        log.error("%s", exc)
        return 2
    if not args.quiet:
        sys.stdout.write(f"wrote {len(files)} FITS file(s) to {args.out}\n")
    return 0
