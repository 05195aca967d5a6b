"""The report's figures: PNG files drawn with matplotlib's Agg renderer.

Figures are built as :class:`matplotlib.figure.Figure` objects without
:mod:`matplotlib.pyplot`, so no GUI backend is selected, no global state is
touched, and the functions are safe in threads and on machines without a
display. Each function takes display-size arrays and writes one PNG.

Colour maps by quantity: field strength sequential (``magma``), inclination
diverging about 90 deg (``RdBu_r``, 0-180), azimuth cyclic (``twilight``,
0-180 or 0-360 once disambiguated), line-of-sight velocity diverging about zero
(``RdBu_r``, symmetric, red = redshift), other parameters sequential
(``viridis``, 1st-99th percentile); differences diverging about zero.
Masked pixels (NaN) are drawn grey.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["MapStyle", "map_style", "draw_map", "draw_status", "draw_chi2_histogram", "draw_histogram2d",
           "MASK_COLOUR"]

#: Colour of masked (NaN) pixels.
MASK_COLOUR = "0.55"

_STATUS_COLOURS = {0: "#2ca02c", 1: "#ffd92f", 2: "#d62728", 3: "#7f3b08", 4: "#ff7f0e", 255: "#dddddd"}


@dataclass(frozen=True)
class MapStyle:
    """How to draw one quantity: colour map, limits and the colour-bar label."""

    cmap: str
    vmin: float
    vmax: float
    label: str


def _finite_percentiles(data: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    v = data[np.isfinite(data)]
    if v.size == 0:
        return 0.0, 1.0
    a, b = (float(x) for x in np.percentile(v, [lo, hi]))
    return (a, b) if b > a else (a - 0.5, a + 0.5)


def map_style(name: str, unit: str, data: np.ndarray, *, difference: bool = False) -> MapStyle:
    """The :class:`MapStyle` of a parameter (or of a difference map) from its name and data."""
    label = f"{name} [{unit}]" if unit else name
    if difference:
        v = np.abs(data[np.isfinite(data)])
        m = float(np.percentile(v, 99.0)) if v.size else 1.0
        return MapStyle("RdBu_r", -(m or 1.0), m or 1.0, f"{name} result - reference" + (f" [{unit}]" if unit else ""))
    if name == "B":
        return MapStyle("magma", 0.0, max(_finite_percentiles(data, 0.0, 99.5)[1], 1.0), label)
    if name == "inclination":
        return MapStyle("RdBu_r", 0.0, 180.0, label)
    if name == "azimuth":
        top = 360.0 if np.nanmax(data, initial=0.0) > 180.0 else 180.0
        return MapStyle("twilight", 0.0, top, label)
    if name == "vlos":
        m = max(abs(x) for x in _finite_percentiles(data, 1.0, 99.0))
        return MapStyle("RdBu_r", -(m or 1.0), m or 1.0, label + " (red: away)")
    lo, hi = _finite_percentiles(data, 1.0, 99.0)
    return MapStyle("viridis", lo, hi, label)


def _new_figure(width: float = 6.4, height: float = 5.2) -> Any:
    from matplotlib.figure import Figure

    # fixed axes positions, no layout engine: constrained layout costs ~0.3 s per figure
    return Figure(figsize=(width, height), dpi=100)


def _axes_with_colorbar(fig: Any, right: float = 0.80) -> tuple[Any, Any]:
    """An image axes and a colour-bar axes beside it (figure fractions)."""
    ax = fig.add_axes((0.12, 0.11, right - 0.17, 0.80))
    cax = fig.add_axes((right - 0.03, 0.11, 0.025, 0.80))
    return ax, cax


def _cmap(name: str, bad: str = MASK_COLOUR) -> Any:
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad=bad)


def draw_map(
    path: str | Path, data: np.ndarray, style: MapStyle, *, title: str,
    extent: Sequence[float] | None = None, axis_labels: tuple[str, str] = ("x [pixel]", "y [pixel]"),
    note: str = "",
) -> Path:
    """Draw one map (origin at the bottom left, row 0 at the bottom) into a PNG."""
    fig = _new_figure()
    ax, cax = _axes_with_colorbar(fig)
    im = ax.imshow(np.ma.masked_invalid(data), origin="lower", cmap=_cmap(style.cmap), vmin=style.vmin,
                   vmax=style.vmax, extent=extent, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    fig.colorbar(im, cax=cax, label=style.label)
    if note:
        fig.text(0.01, 0.005, note, fontsize=7, color="0.3", va="bottom")
    fig.savefig(path)
    return Path(path)


def draw_status(
    path: str | Path, status: np.ndarray, names: Mapping[int, str], counts: Mapping[int, int], *,
    extent: Sequence[float] | None = None, axis_labels: tuple[str, str] = ("x [pixel]", "y [pixel]"),
) -> Path:
    """Draw the status map with one colour per code present."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    codes = sorted(set(int(c) for c in counts))
    index = np.zeros(status.shape, dtype=np.int16)
    for i, c in enumerate(codes):
        index[status == c] = i
    cmap = ListedColormap([_STATUS_COLOURS.get(c, "#000000") for c in codes])
    norm = BoundaryNorm(np.arange(len(codes) + 1) - 0.5, len(codes))
    fig = _new_figure(7.4, 5.2)
    ax, cax = _axes_with_colorbar(fig, right=0.68)
    im = ax.imshow(index, origin="lower", cmap=cmap, norm=norm, extent=extent, interpolation="nearest")
    total = max(1, sum(counts.values()))
    cb = fig.colorbar(im, cax=cax, ticks=range(len(codes)))
    cb.ax.set_yticklabels([f"{c} {names.get(c, '?')} ({100 * counts.get(c, 0) / total:.1f}%)" for c in codes],
                          fontsize=8)
    ax.set_title("fit status", fontsize=10)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    fig.savefig(path)
    return Path(path)


def draw_chi2_histogram(
    path: str | Path, counts: np.ndarray, edges: np.ndarray, *, dof: int | None, expected: np.ndarray | None,
    n_above: int = 0, note: str = "",
) -> Path:
    """Histogram of the reduced chi2 (as a density) with the expected density drawn over it."""
    fig = _new_figure(6.4, 4.4)
    ax = fig.add_axes((0.11, 0.12, 0.85, 0.78))
    width = np.diff(edges)
    total = counts.sum() + n_above
    dens = counts / (max(1, total) * width)
    ax.stairs(dens, edges, fill=True, alpha=0.6, label=f"fits ({int(total)} pixels)")
    if expected is not None and dof:
        centres = 0.5 * (edges[1:] + edges[:-1])
        ax.plot(centres, expected, "k-", lw=1.5, label=f"chi2({dof}) / {dof}: pure noise")
    ax.set_xlabel("reduced chi2")
    ax.set_ylabel("density")
    title = "reduced chi2"
    if n_above:
        title += f" ({n_above} pixels above {edges[-1]:.3g} not shown)"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    if note:
        fig.text(0.01, 0.005, note, fontsize=7, color="0.3", va="bottom")
    fig.savefig(path)
    return Path(path)


def draw_histogram2d(
    path: str | Path, counts: np.ndarray, xrange: tuple[float, float], yrange: tuple[float, float], *,
    name: str, unit: str, reference_label: str,
) -> Path:
    """Log-density 2-D histogram of result against reference, with the diagonal."""
    from matplotlib.colors import LogNorm

    fig = _new_figure(6.0, 5.0)
    ax, cax = _axes_with_colorbar(fig, right=0.84)
    data = np.ma.masked_less_equal(counts.astype(np.float64), 0.0)
    vmax = float(data.max()) if data.count() else 1.0
    im = ax.imshow(data, origin="lower", extent=(*xrange, *yrange), aspect="auto", cmap=_cmap("viridis", "white"),
                   norm=LogNorm(vmin=1.0, vmax=max(vmax, 1.0)), interpolation="nearest")
    lo, hi = min(xrange[0], yrange[0]), max(xrange[1], yrange[1])
    ax.plot([lo, hi], [lo, hi], "w--", lw=0.8)
    ax.set_xlim(*xrange)
    ax.set_ylim(*yrange)
    u = f" [{unit}]" if unit else ""
    ax.set_xlabel(f"{name} {reference_label}{u}")
    ax.set_ylabel(f"{name} result{u}")
    ax.set_title(f"{name}: result against {reference_label}", fontsize=10)
    fig.colorbar(im, cax=cax, label="pixels per bin")
    fig.savefig(path)
    return Path(path)
