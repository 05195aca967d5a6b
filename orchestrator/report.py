"""``stokesflow report``: maps, fit quality and comparisons of a result, on one HTML page.

:func:`make_report` (Python) and ``stokesflow report RESULT.h5 [--reference
OTHER.h5 | --truth] [--out DIR]`` write into ``DIR`` (default
``<result>_report/`` beside the result):

- ``maps/<param>.png`` for every parameter, ``maps/chi2.png``,
  ``maps/n_iter.png``, ``maps/status.png``, ``chi2_hist.png``;
- with a reference: ``diff/<param>.png``, ``hist2d/<param>.png``,
  ``comparison.txt`` and ``comparison.json``;
- ``status.json`` (pixels per status) and ``index.html``, which links the
  images relatively (or embeds them, ``--embed``) and needs no network.

Pixels whose status is in :data:`~stokesflow.orchestrator.resultview.MASKED_STATUS`
(failed, bad input, poor fit, not run) are grey in the parameter maps and left
out of the statistics; the page says how many. Axes are in arcsec when the
observation gives a plate scale (:mod:`stokesflow.orchestrator.geometry`), else
in pixels. The result is read by row blocks and reduced for display (at most
``max_side`` pixels a side), so memory stays at a few full maps.

Exit codes of the command: 0 written, 2 bad input (missing or foreign file,
reference of another size, no truth, no matplotlib).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from stokesflow.backends import STATUS_NAMES
from stokesflow.orchestrator.cli import _positive_int
from stokesflow.orchestrator.errors import OrchestratorError
from stokesflow.orchestrator.geometry import ObservationInfo, observation_info
from stokesflow.orchestrator.paths import output_folder
from stokesflow.orchestrator.resultview import MASKED_STATUS, ResultView, display_factor

__all__ = ["ReportError", "Report", "make_report", "write_report", "add_report_parser", "display_axes"]

log = logging.getLogger("stokesflow.report")

_FITTED = (0, 1, 4)  # statuses with a chi2 from a finished fit


class ReportError(OrchestratorError):
    """The report cannot be made (no matplotlib, bad result or reference)."""


@dataclass
class Report:
    """What :func:`make_report` wrote and computed.

    Attributes
    ----------
    index : Path
        The HTML page.
    images : dict of str to Path
        Every PNG, keyed ``maps/B``, ``diff/B``, ``hist2d/B``, ``chi2_hist``...
    status_counts : dict of int to int
        Pixels per status code.
    comparison : dict or None
        The comparison table (``comparison.json``), with a reference.
    maps : dict of str to ndarray
        The display-size maps drawn (masked pixels NaN).
    seconds : float
        Wall time [s].
    """

    index: Path
    images: dict[str, Path] = field(default_factory=dict)
    status_counts: dict[int, int] = field(default_factory=dict)
    comparison: dict[str, Any] | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0


def display_axes(info: ObservationInfo) -> tuple[tuple[float, float, float, float] | None, tuple[str, str]]:
    """imshow extent (pixel edges) and axis labels: arcsec with a plate scale, else pixels."""
    w = info.wcs()
    if w is None:
        return None, ("x [pixel]", "y [pixel]")
    m = np.asarray(w.pixel_scale_matrix)
    if abs(m[0, 1]) + abs(m[1, 0]) < 1e-3 * (abs(m[0, 0]) + abs(m[1, 1])):  # axes along solar x, y
        cx, cy = (info.nx - 1) / 2.0, (info.ny - 1) / 2.0
        (x0, x1), _ = w.pixel_to_world_values(np.array([-0.5, info.nx - 0.5]), np.array([cy, cy]))
        _, (y0, y1) = w.pixel_to_world_values(np.array([cx, cx]), np.array([-0.5, info.ny - 0.5]))
        return tuple(float(v) * 3600.0 for v in (x0, x1, y0, y1)), ("solar x [arcsec]", "solar y [arcsec]")
    sx, sy = info.plate_scale or (1.0, 1.0)
    return (0.0, info.nx * sx, 0.0, info.ny * sy), ("x along the image [arcsec]", "y along the image [arcsec]")


def _chi2_histogram(view: ResultView) -> tuple[np.ndarray, np.ndarray, int]:
    """Streaming histogram of the reduced chi2 of fitted pixels: counts, edges, pixels above."""
    sample = []
    for y0, y1 in view.row_blocks():
        c = view.read("chi2", slice(y0, y1))[::7, ::7]
        s = view.read("status", slice(y0, y1))[::7, ::7]
        sample.append(c[np.isin(s, _FITTED) & np.isfinite(c)])
    sample = np.concatenate(sample) if sample else np.zeros(0)
    hi = max(3.0, float(np.percentile(sample, 99.0)) * 1.05) if sample.size else 3.0
    edges = np.linspace(0.0, hi, 121)
    counts, above = np.zeros(120, dtype=np.int64), 0
    for y0, y1 in view.row_blocks():
        rows = slice(y0, y1)
        c = view.read("chi2", rows)
        c = c[np.isin(view.read("status", rows), _FITTED) & np.isfinite(c)]
        counts += np.histogram(c, edges)[0]
        above += int(np.count_nonzero(c > hi))
    return counts, edges, above


def _masked_note(counts: Mapping[int, int]) -> str:
    parts = [f"{counts[c]} {STATUS_NAMES.get(c, c)}" for c in MASKED_STATUS if counts.get(c)]
    return ("grey: masked pixels (" + ", ".join(parts) + ")") if parts else ""


def make_report(
    result: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    reference: str | os.PathLike[str] | None = None,
    truth: bool = False,
    tolerances: Mapping[str, float] | None = None,
    max_side: int = 1024,
    embed: bool = False,
) -> Report:
    """Write the report of a result file and return what it holds.

    Parameters
    ----------
    result : str or os.PathLike
        Result file of ``stokesflow invert``.
    out_dir : str or os.PathLike, optional
        Folder to write (created); default ``<result stem>_report`` beside it.
    reference : str or os.PathLike, optional
        Another result file of the same field to compare with.
    truth : bool
        Compare with the observation's ``/truth/<param>`` maps instead.
    tolerances : mapping, optional
        Per-parameter tolerance of "agrees" in its unit (defaults: B 100 G,
        inclination and azimuth 5 deg, vlos 0.1 km/s).
    max_side : int
        Largest side of the display maps [pixels].
    embed : bool
        Embed the images in ``index.html`` (one file) instead of linking them.

    Returns
    -------
    Report

    Raises
    ------
    ReportError, ResultViewError, ComparisonError
        No matplotlib; a missing or foreign result or reference; a reference
        of another size; ``truth`` without ``/truth`` maps.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ReportError("the report draws with matplotlib, which is not installed: "
                          "pip install 'stokesflow[plot]'") from exc
    from stokesflow.orchestrator import figures
    from stokesflow.orchestrator.comparison import ResultReference, TruthReference, comparable, compare
    from stokesflow.orchestrator.stats import degrees_of_freedom, format_table, reduced_chi2_density

    if reference is not None and truth:
        raise ReportError("give either --reference OTHER.h5 or --truth, not both")
    t0 = time.perf_counter()
    result = Path(result)
    out = Path(out_dir) if out_dir is not None else result.with_name(result.stem + "_report")
    with ResultView(result) as view:
        info = observation_info(result)
        ref = (ResultReference(reference) if reference is not None else TruthReference(result) if truth else None)
        try:  # before anything is written: a wrong reference leaves an earlier report as it was
            if ref is not None:
                comparable(view, ref)
            _check_tolerances(tolerances, view.names, ref is not None)
            output_folder(out, what=f"report folder {str(out)!r}", error=ReportError)
        except BaseException:
            if ref is not None:
                ref.close()
            raise
        for sub in ("maps",) + (("diff", "hist2d") if ref is not None else ()):
            (out / sub).mkdir(parents=True, exist_ok=True)
        rep = Report(out / "index.html")
        factor = display_factor(view.ny, view.nx, max_side)
        extent, labels = display_axes(info)
        counts = view.status_counts()
        rep.status_counts = counts
        note = _masked_note(counts)
        for name in view.names:
            data = view.read_display(name, factor, "axial" if name == "azimuth" else "mean")
            rep.maps[name] = data
            unit = view.units.get(name, "")
            rep.images[f"maps/{name}"] = figures.draw_map(
                out / "maps" / f"{name}.png", data, figures.map_style(name, unit, data),
                title=name, extent=extent, axis_labels=labels, note=note)
        chi2 = view.read_display("chi2", factor, "mean")
        with np.errstate(divide="ignore", invalid="ignore"):
            logc = np.log10(np.where(chi2 > 0, chi2, np.nan))
        rep.maps["chi2"] = chi2
        rep.images["maps/chi2"] = figures.draw_map(
            out / "maps" / "chi2.png", logc, figures.map_style("log10 chi2", "", logc),
            title="reduced chi2 (log10)", extent=extent, axis_labels=labels)
        n_iter = view.read_display("n_iter", factor, "mean")
        rep.maps["n_iter"] = n_iter
        rep.images["maps/n_iter"] = figures.draw_map(
            out / "maps" / "n_iter.png", n_iter, figures.map_style("iterations", "", n_iter),
            title="iterations", extent=extent, axis_labels=labels)
        status = view.read_display("status", factor, "stride")
        rep.maps["status"] = status
        rep.images["maps/status"] = figures.draw_status(
            out / "maps" / "status.png", status, STATUS_NAMES, counts, extent=extent, axis_labels=labels)
        hist, edges, above = _chi2_histogram(view)
        dof = degrees_of_freedom(info.nw, len(view.names)) if info.nw else None
        expected = reduced_chi2_density(0.5 * (edges[1:] + edges[:-1]), dof) if dof and dof > 0 else None
        rep.images["chi2_hist"] = figures.draw_chi2_histogram(
            out / "chi2_hist.png", hist, edges, dof=dof, expected=expected, n_above=above,
            note="" if dof else "expected curve left out: the observation's wavelength count is unknown")
        (out / "status.json").write_text(json.dumps(
            {str(k): {"name": STATUS_NAMES.get(k, "?"), "pixels": v} for k, v in counts.items()}, indent=1))
        if ref is not None:
            try:
                cmp = compare(view, ref, tolerances=tolerances, pixel_area_cm2=info.pixel_area_cm2,
                              display_factor=factor)
            finally:
                ref.close()
            rep.comparison = cmp.table
            (out / "comparison.json").write_text(json.dumps(cmp.table, indent=1))
            (out / "comparison.txt").write_text(format_table(cmp.table))
            ref_label = "truth" if ref.kind == "truth" else "reference"
            for name, diff in cmp.differences.items():
                unit = view.units.get(name, "")
                rep.images[f"diff/{name}"] = figures.draw_map(
                    out / "diff" / f"{name}.png", diff, figures.map_style(name, unit, diff, difference=True),
                    title=f"{name}: result - {ref_label}", extent=extent, axis_labels=labels, note=note)
                counts2d, xr, yr = cmp.histograms[name]
                rep.images[f"hist2d/{name}"] = figures.draw_histogram2d(
                    out / "hist2d" / f"{name}.png", counts2d, xr, yr, name=name, unit=unit, reference_label=ref_label)
        rep.seconds = time.perf_counter() - t0
        rep.index.write_text(_html(view, info, rep, factor, dof, embed), encoding="utf-8")
    return rep


def _check_tolerances(tolerances: Mapping[str, float] | None, names: Sequence[str], compared: bool) -> None:
    """``--tolerance`` names parameters of the result, and comes with something to compare with."""
    if not tolerances:
        return
    if not compared:
        raise ReportError("--tolerance sets when a pixel agrees with a reference: give --reference OTHER.h5 or "
                          "--truth with it")
    unknown = [n for n in tolerances if n not in names]
    if unknown:
        raise ReportError(f"--tolerance names {unknown}, which the result does not have; its parameters are "
                          f"{list(names)}")


def write_report(
    result_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    reference: str | os.PathLike[str] | None = None,
    truth: bool = False,
) -> Path:
    """Write the report (see :func:`make_report`) and return the path of ``index.html``.

    The entry point of ``stokesflow invert --report``.
    """
    return make_report(result_path, out_dir, reference=reference, truth=truth).index


# ---------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------
_CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1400px}
figure{display:inline-block;margin:0.4em;vertical-align:top}figure img{width:430px}
table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}
th{background:#eee}pre{background:#f6f6f6;padding:0.6em;overflow-x:auto;font-size:85%}.note{color:#555}"""


def _img(rep: Report, key: str, embed: bool) -> str:
    path = rep.images[key]
    if embed:
        src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    else:
        src = html.escape(path.relative_to(rep.index.parent).as_posix())
    return f'<figure><img src="{src}" alt="{html.escape(key)}"><figcaption>{html.escape(key)}</figcaption></figure>'


def _html(view: ResultView, info: ObservationInfo, rep: Report, factor: int, dof: int | None, embed: bool) -> str:
    e = html.escape
    a = view.attrs
    total = max(1, view.ny * view.nx)
    rows = "".join(
        f"<tr><td>{c}</td><td style='text-align:left'>{e(str(STATUS_NAMES.get(c, '?')))}</td><td>{n}</td>"
        f"<td>{100 * n / total:.2f}%</td><td>{'masked' if c in MASKED_STATUS else ''}</td></tr>"
        for c, n in sorted(rep.status_counts.items()))
    scale = info.plate_scale
    facts = [
        ("result", view.path), ("map", f"{view.ny} x {view.nx} pixels"),
        ("backend / init", f"{a.get('backend', '?')} / {a.get('init', '?')}"),
        ("complete", f"{a.get('complete', '?')} ({a.get('runs', '?')} run(s), total {a.get('time_total_s', float('nan')):.1f} s)"
         if isinstance(a.get("time_total_s"), (int, float)) else str(a.get("complete", "?"))),
        ("observation", info.note or "?"),
        ("plate scale", f"{scale[0]:.4g} x {scale[1]:.4g} arcsec/pixel" if scale else "unknown: axes in pixels"),
        ("display", "full resolution" if factor == 1 else f"{factor} x {factor} pixel blocks averaged "
                                                            "(azimuth: axial mean; status: first pixel)"),
        ("degrees of freedom", f"{dof} (4 x {info.nw} points - {len(view.names)} parameters)" if dof else "unknown"),
    ]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>stokesflow report: {e(Path(view.path).name)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>stokesflow report: {e(Path(view.path).name)}</h1>",
             "<table>" + "".join(f"<tr><th>{e(k)}</th><td style='text-align:left'>{e(str(v))}</td></tr>" for k, v in facts) + "</table>",
             "<h2>Fit status</h2><table><tr><th>code</th><th>status</th><th>pixels</th><th>share</th><th>maps</th></tr>"
             + rows + "</table>",
             f"<p class='note'>{e(_masked_note(rep.status_counts) or 'no pixel masked')}; masked pixels are left "
             "out of every statistic.</p>",
             "<h2>Parameters</h2>" + "".join(_img(rep, f"maps/{n}", embed) for n in view.names),
             "<h2>Fit quality</h2>" + "".join(_img(rep, k, embed) for k in ("maps/chi2", "maps/n_iter", "maps/status", "chi2_hist")),
             "<p class='note'>The curve is the density of chi2/dof for residuals that are pure noise of the "
             "stated sigma with unit Stokes weights; a histogram to its right means misfits or an underestimated noise.</p>"]
    if rep.comparison is not None:
        from stokesflow.orchestrator.stats import format_table

        names = list(rep.comparison["parameters"])
        parts += [f"<h2>Against the {'truth' if rep.comparison['kind'] == 'truth' else 'reference'}</h2>",
                  f"<pre>{e(format_table(rep.comparison))}</pre>",
                  "<p class='note'>Tables also in comparison.txt and comparison.json. Classes by the "
                  "reference's field strength; azimuth differences modulo 180 deg.</p>",
                  "<h3>Differences</h3>" + "".join(_img(rep, f"diff/{n}", embed) for n in names),
                  "<h3>Result against reference</h3>" + "".join(_img(rep, f"hist2d/{n}", embed) for n in names)]
    parts.append(f"<p class='note'>made by stokesflow in {rep.seconds:.1f} s on {time.strftime('%Y-%m-%d %H:%M:%S')}"
                 "</p></body></html>\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------
def _tolerance(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not sep or not name.strip() or not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with VALUE >= 0 (e.g. B=50), got {text!r}")
    return name.strip(), number


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to an argparse ``subparsers`` object.

    The parser's ``func`` default takes the parsed arguments and returns the
    exit code (0 written, 2 bad input).
    """
    p = subparsers.add_parser(
        "report", help="maps, fit quality and comparisons of a result file (PNG + index.html)",
        description="Write PNG maps of every parameter, chi2/iterations/status maps, a chi2 histogram and a "
                    "status table of a result file, and with a reference (another result or the observation's "
                    "/truth) difference maps, 2-D histograms and agreement tables, all on one index.html.",
        epilog="Exit codes: 0 written, 2 bad input (missing or foreign file, reference of another size, no "
               "/truth, matplotlib missing).",
    )
    p.add_argument("result", metavar="RESULT.h5", help="result file of `stokesflow invert`")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--reference", metavar="OTHER.h5", help="another result file of the same field to compare with")
    g.add_argument("--truth", action="store_true", help="compare with the observation's /truth/<param> maps")
    p.add_argument("-o", "--out", metavar="DIR", help="folder to write (default: <result>_report beside the result)")
    p.add_argument("--tolerance", action="append", type=_tolerance, metavar="NAME=VALUE",
                   help="tolerance of 'agrees' in the parameter's unit (repeatable; defaults B=100, "
                        "inclination=5, azimuth=5, vlos=0.1)")
    p.add_argument("--max-side", type=_positive_int, default=1024, metavar="N",
                   help="largest side of the display maps in pixels (default 1024)")
    p.add_argument("--embed", action="store_true", help="embed the images in index.html (one self-contained file)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=_cmd_report, verbose=0)
    return p


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        rep = make_report(args.result, args.out, reference=args.reference, truth=args.truth,
                          tolerances=dict(args.tolerance or []), max_side=args.max_side, embed=args.embed)
    except OrchestratorError as exc:
        log.error("%s", exc)
        return 2
    if not args.quiet:
        sys.stdout.write(f"wrote {rep.index} ({len(rep.images)} images, {rep.seconds:.1f} s)\n")
    return 0
