"""Statistics of a result against a reference, and of the fit quality (pure numpy).

Everything here takes arrays and returns numbers or plain dicts (JSON-ready);
reading files is :mod:`stokesflow.orchestrator.comparison`'s job.

Field-strength classes (:data:`FIELD_CLASSES`) follow how emulated and
re-inverted magnetograms are judged: a whole-field average is dominated by the
weak, noisy quiet Sun and hides the strong-field pixels that matter most, so
every statistic is also given for ``|B_ref| < 100 G``, ``100-1000 G`` and
``> 1000 G`` (by the *reference's* field strength).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

__all__ = [
    "FIELD_CLASSES",
    "DEFAULT_TOLERANCES",
    "AXIAL_PARAMETERS",
    "class_masks",
    "difference",
    "difference_stats",
    "vector_stats",
    "flux_sums",
    "flux_sums_los",
    "line_of_sight",
    "degrees_of_freedom",
    "reduced_chi2_density",
    "histogram2d",
    "format_table",
]

#: (label, lower, upper) in G of the reference's |B|; lower inclusive, upper exclusive
#: except the last. ``all`` is the whole field.
FIELD_CLASSES: tuple[tuple[str, float, float], ...] = (
    ("all", -math.inf, math.inf),
    ("B<100G", 0.0, 100.0),
    ("100-1000G", 100.0, 1000.0),
    ("B>1000G", 1000.0, math.inf),
)

#: Share-within-tolerance defaults, in the parameters' units (G, deg, deg, km/s).
DEFAULT_TOLERANCES: dict[str, float] = {"B": 100.0, "inclination": 5.0, "azimuth": 5.0, "vlos": 0.1}

#: Parameters defined modulo 180 deg: differences are taken on the circle.
AXIAL_PARAMETERS = frozenset({"azimuth"})


def class_masks(b_ref: np.ndarray | None, valid: np.ndarray) -> dict[str, np.ndarray]:
    """Pixel selections per field-strength class.

    Parameters
    ----------
    b_ref : ndarray or None
        Reference field strength [G]; None gives only ``all``.
    valid : ndarray of bool
        Pixels usable at all.

    Returns
    -------
    dict of str to ndarray of bool
    """
    out = {"all": valid}
    if b_ref is None:
        return out
    b = np.abs(b_ref)
    for label, lo, hi in FIELD_CLASSES[1:]:
        sel = (b >= lo) & ((b < hi) if math.isfinite(hi) else np.isfinite(b))
        out[label] = valid & sel
    return out


def difference(name: str, result: np.ndarray, reference: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
    """``result - reference`` in ``dtype``; modulo 180 deg in [-90, 90) for the azimuth."""
    d = np.asarray(result, dtype=dtype) - np.asarray(reference, dtype=dtype)
    if name in AXIAL_PARAMETERS:
        d = (d + 90.0) % 180.0 - 90.0
    return d


_CHUNK = 1 << 16  # elements per chunk of the float64 sums: temporaries stay in cache, memory stays flat


def vector_stats(name: str, d: np.ndarray, reference: np.ndarray, tolerance: float | None) -> dict[str, Any]:
    """:func:`difference_stats` of 1-D arrays already selected: differences ``d`` and the reference values."""
    n = int(d.size)
    out: dict[str, Any] = {"n": n, "pearson_r": None, "median_diff": None, "median_abs_diff": None,
                           "p90_abs_diff": None, "within_tolerance": None, "tolerance": tolerance}
    if n == 0:
        return out
    ad = np.abs(d)
    med_abs, p90 = (float(v) for v in np.percentile(ad, [50.0, 90.0]))
    out.update(
        pearson_r=_pearson_pair(d, reference),  # r of (reference + d, reference): for the azimuth, the
        # result moved to the branch nearest the reference
        median_diff=float(np.median(d)), median_abs_diff=med_abs, p90_abs_diff=p90,
    )
    if tolerance is not None:
        out["within_tolerance"] = float(np.count_nonzero(ad <= tolerance) / n)
    return out


def _pearson_pair(d: np.ndarray, reference: np.ndarray) -> float | None:
    """Pearson r of (reference + d, reference), in one pass of float64 sums by chunks.

    The sums are of values shifted by the first chunk's means, which keeps the
    one-pass moments accurate when the spread is small against the mean.
    """
    n = d.size
    if n < 2:
        return None
    head = slice(0, min(n, _CHUNK))
    sx = float(reference[head].mean(dtype=np.float64))
    sd = float(d[head].mean(dtype=np.float64))
    tx = ty = txx = tyy = txy = 0.0
    for i in range(0, n, _CHUNK):
        x = reference[i:i + _CHUNK].astype(np.float64)
        x -= sx
        y = d[i:i + _CHUNK].astype(np.float64)
        y -= sd
        y += x
        tx += float(x.sum())
        ty += float(y.sum())
        # einsum, not np.dot: BLAS threads on a busy machine cost more than these small sums
        txx += float(np.einsum("i,i->", x, x))
        tyy += float(np.einsum("i,i->", y, y))
        txy += float(np.einsum("i,i->", x, y))
    vxx, vyy, vxy = txx - tx * tx / n, tyy - ty * ty / n, txy - tx * ty / n
    den = math.sqrt(max(vxx, 0.0) * max(vyy, 0.0))
    return min(1.0, max(-1.0, vxy / den)) if den > 0 else None


def difference_stats(
    name: str, result: np.ndarray, reference: np.ndarray, select: np.ndarray, tolerance: float | None
) -> dict[str, Any]:
    """Agreement of ``result`` with ``reference`` over the pixels ``select``.

    Parameters
    ----------
    name : str
        Parameter name (the azimuth is compared modulo 180 deg).
    result, reference : ndarray, (ny, nx)
        Maps in the parameter's unit.
    select : ndarray of bool, (ny, nx)
        Pixels to use (finite in both, good status, field class).
    tolerance : float or None
        Half-width of "agrees" in the parameter's unit.

    Returns
    -------
    dict
        ``n``; ``pearson_r`` (None for fewer than 2 pixels or no spread; for
        the azimuth, of the result moved to the branch nearest the
        reference); ``median_diff`` (signed, result minus reference),
        ``median_abs_diff`` and ``p90_abs_diff`` (unit of the parameter);
        ``within_tolerance`` (share 0-1, None without a tolerance);
        ``tolerance``.
    """
    ref = np.asarray(reference, dtype=np.float64)[select]
    d = difference(name, np.asarray(result)[select], ref)
    return vector_stats(name, d, ref, tolerance)


def line_of_sight(b: np.ndarray, inclination: np.ndarray) -> np.ndarray:
    """``B cos(inclination)`` [G] in float64 (inclination in deg)."""
    return np.asarray(b, dtype=np.float64) * np.cos(np.radians(np.asarray(inclination, dtype=np.float64)))


def flux_sums_los(blos: np.ndarray, pixel_area_cm2: float | None = None) -> dict[str, Any]:
    """:func:`flux_sums` of line-of-sight field values already selected [G]."""
    area = pixel_area_cm2 if pixel_area_cm2 else 1.0
    return {
        "signed": float(blos.sum() * area),
        "unsigned": float(np.abs(blos).sum() * area),
        "unit": "Mx" if pixel_area_cm2 else "G px",
        "n": int(blos.size),
    }


def flux_sums(
    b: np.ndarray, inclination: np.ndarray, select: np.ndarray, pixel_area_cm2: float | None = None
) -> dict[str, Any]:
    """Signed and unsigned line-of-sight flux over the pixels ``select``.

    ``signed = A sum(B cos(inclination))``, ``unsigned = A sum(|B cos(inclination)|)``,
    with ``A`` the pixel area when known (then in Mx), else 1 (then in G px).

    Parameters
    ----------
    b : ndarray
        Field strength [G].
    inclination : ndarray
        Inclination to the line of sight [deg].
    select : ndarray of bool
    pixel_area_cm2 : float, optional
        Area of one pixel on the Sun [cm^2].

    Returns
    -------
    dict
        ``signed``, ``unsigned``, ``unit`` ("Mx" or "G px"), ``n``.
    """
    return flux_sums_los(line_of_sight(np.asarray(b)[select], np.asarray(inclination)[select]), pixel_area_cm2)


def degrees_of_freedom(nw: int, n_parameters: int) -> int:
    """Degrees of freedom of one pixel's fit: 4 Stokes x ``nw`` points minus the parameters."""
    return int(4 * nw - n_parameters)


def reduced_chi2_density(x: np.ndarray, dof: int) -> np.ndarray:
    """Probability density of ``chi2 / dof`` for ``chi2 ~ chi-square(dof)``.

    What a fit whose residuals are pure noise of the stated sigma gives:
    ``p(x) = dof f(dof x; dof)`` with ``f`` the chi-square density.
    """
    from scipy.stats import chi2

    x = np.asarray(x, dtype=np.float64)
    return dof * chi2.pdf(dof * x, dof)


def histogram2d(
    x: np.ndarray, y: np.ndarray, xrange: tuple[float, float], yrange: tuple[float, float], bins: int = 200
) -> np.ndarray:
    """Counts of ``(x, y)`` pairs on a ``bins`` x ``bins`` grid (finite pairs in range).

    The same as :func:`numpy.histogram2d` with equal bins, through integer
    bin indices and one :func:`numpy.bincount` (several times faster on 10^7
    pairs). Returns counts indexed ``[iy, ix]`` (rows = y), ready for imshow.
    """
    x, y = np.ravel(x), np.ravel(y)
    (x0, x1), (y0, y1) = xrange, yrange
    kx, ky = bins / (x1 - x0), bins / (y1 - y0)
    counts = np.zeros(bins * bins, dtype=np.int64)
    for i in range(0, x.size, _CHUNK):
        fx = (x[i:i + _CHUNK] - x0) * kx   # float32 for float32 input: ample for 200 bins
        fy = (y[i:i + _CHUNK] - y0) * ky
        ok = (fx >= 0) & (fx <= bins) & (fy >= 0) & (fy <= bins)  # the upper edge belongs to the last bin
        ix = np.minimum(fx[ok].astype(np.int64), bins - 1)
        iy = np.minimum(fy[ok].astype(np.int64), bins - 1)
        counts += np.bincount(iy * bins + ix, minlength=bins * bins)
    return counts.reshape(bins, bins)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def format_table(comparison: Mapping[str, Any]) -> str:
    """The comparison of :func:`stokesflow.orchestrator.comparison.compare` as a text table."""
    lines = [f"reference: {comparison.get('reference', '?')} ({comparison.get('kind', '?')})",
             f"pixels compared: {comparison.get('n_compared', 0)} "
             f"(status {', '.join(str(s) for s in comparison.get('masked_status', []))} left out, in the result "
             "and in a reference result)", ""]
    head = f"{'parameter':<14s}{'class':<11s}{'n':>9s}{'r':>9s}{'median d':>11s}{'med |d|':>10s}{'p90 |d|':>10s}{'in tol':>8s}  tol"
    lines += [head, "-" * len(head)]
    for name, entry in comparison.get("parameters", {}).items():
        unit = entry.get("unit", "")
        for label, s in entry["classes"].items():
            share = s["within_tolerance"]
            lines.append(
                f"{name:<14s}{label:<11s}{s['n']:>9d}{_fmt(s['pearson_r'], 4):>9s}{_fmt(s['median_diff']):>11s}"
                f"{_fmt(s['median_abs_diff']):>10s}{_fmt(s['p90_abs_diff']):>10s}"
                f"{('-' if share is None else f'{100 * share:.1f}%'):>8s}  "
                + ("-" if s["tolerance"] is None else f"{s['tolerance']:g} {unit}")
            )
    flux = comparison.get("flux")
    if flux:
        unit = flux["unit"]
        lines += ["", f"line-of-sight flux [{unit}]"
                  + (f" (pixel area {flux['pixel_area_cm2']:.4g} cm^2 at disc centre)" if flux.get("pixel_area_cm2") else
                     " (pixel area unknown: sums over pixels)"),
                  f"{'class':<11s}{'n':>9s}{'signed result':>16s}{'signed ref':>14s}{'unsigned result':>18s}{'unsigned ref':>15s}"]
        for label, f in flux["classes"].items():
            lines.append(f"{label:<11s}{f['result']['n']:>9d}{f['result']['signed']:>16.4g}{f['reference']['signed']:>14.4g}"
                         f"{f['result']['unsigned']:>18.4g}{f['reference']['unsigned']:>15.4g}")
    return "\n".join(lines) + "\n"
