"""Figures of the assisted loop: LM iterations, chi2, agreement with the baseline and the truth.

Plain functions over result files (read with
:func:`stokesflow.orchestrator.store.read_result`), used for
``DIR/summary.json`` by :mod:`stokesflow.orchestrator.assist` and by
``benchmarks/assist_loop.py``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

__all__ = ["iteration_stats", "chi2_stats", "pearson", "agreement", "agreement_within_sigma", "disagreement",
           "truth_metrics", "summary_lines", "B_OFF_G", "DETERMINED_SIGMA", "DISAGREE"]

#: Threshold [G] of "pixels off by more than 100 G" (the issue's accuracy figure).
B_OFF_G = 100.0

#: 1-sigma uncertainty [deg] below which an angle counts as determined by the data, for the
#: Pearson correlation over determined pixels of :func:`agreement_within_sigma`. Weak-field
#: pixels have sigma(inclination) of 100-300 deg (measured on the HMI-like mixed scene: 9.5 %
#: of the pixels above 30 deg): their angle is whatever start an inversion came from, and a
#: Pearson correlation over all pixels measures those starts, not the fits.
DETERMINED_SIGMA = {"inclination": 10.0, "azimuth": 10.0}

#: Difference between two runs' values of a parameter above which :func:`disagreement` counts a
#: pixel as a disagreement (the angles in deg, the azimuth modulo 180 deg; B in G; vlos in km/s).
DISAGREE = {"B": 100.0, "inclination": 20.0, "azimuth": 20.0, "vlos": 0.5}

_FITTED = (0, 1, 4)  # statuses with parameters (ok, max-iterations, poor fit)


def iteration_stats(r: Any) -> dict[str, Any]:
    """Total and mean LM iterations over the inverted pixels, and a histogram (bins of 5)."""
    fitted = np.isin(r.status, _FITTED)
    it = r.n_iter[fitted].astype(np.int64)
    hist, edges = np.histogram(it, bins=np.arange(0, max(10, int(it.max(initial=0)) + 6), 5))
    return {"total": int(it.sum()), "mean": float(it.mean()) if it.size else 0.0, "pixels": int(it.size),
            "histogram": {"edges": edges.tolist(), "counts": hist.tolist()},
            "status": {str(k): int(v) for k, v in zip(*np.unique(r.status, return_counts=True))}}


def chi2_stats(r: Any) -> dict[str, float]:
    """Median, 90th and 99th percentile of the reduced chi2 of the inverted pixels."""
    c = r.chi2[np.isin(r.status, _FITTED) & np.isfinite(r.chi2)]
    if not c.size:
        return {"median": float("nan"), "p90": float("nan"), "p99": float("nan")}
    return {"median": float(np.median(c)), "p90": float(np.percentile(c, 90)), "p99": float(np.percentile(c, 99))}


def _align_circular(a: np.ndarray, b: np.ndarray, period: float) -> np.ndarray:
    """``b`` shifted by multiples of ``period`` to lie within half a period of ``a``."""
    return a + (np.mod(b - a + 0.5 * period, period) - 0.5 * period)


def pearson(a: np.ndarray, b: np.ndarray, *, period: float | None = None) -> float:
    """Pearson correlation over the pixels finite in both; a circular quantity is aligned first."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    a, b = a[ok], b[ok]
    if period is not None:
        b = _align_circular(a, b, period)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _period(r: Any, name: str) -> float | None:
    return 180.0 if name == "azimuth" else None


def agreement(a: Any, b: Any, names: tuple[str, ...] | None = None) -> dict[str, float]:
    """Pearson correlation per parameter between two result files' maps (pixels fitted in both)."""
    both = np.isin(a.status, _FITTED) & np.isin(b.status, _FITTED)
    out = {}
    for n in names or tuple(a.params):
        out[n] = pearson(np.where(both, a.params[n], np.nan), b.params[n], period=_period(a, n))
    return out


def agreement_within_sigma(a: Any, b: Any, names: tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
    """How far two result files agree in units of their own uncertainties, per parameter.

    For the pixels fitted in both with finite sigma: ``within_1sigma``, the
    share whose difference (circular for the azimuth) is at most the
    combined 1-sigma, ``hypot(sigma_a, sigma_b)``; ``p99_sigma``, the 99th
    percentile of ``|a - b| / hypot(sigma_a, sigma_b)``; and for the angles of
    :data:`DETERMINED_SIGMA`, ``pearson_determined`` over the pixels where both
    sigmas are below that limit, with their share ``determined``.
    """
    both = np.isin(a.status, _FITTED) & np.isin(b.status, _FITTED)
    out: dict[str, dict[str, float]] = {}
    for n in names or tuple(a.params):
        if n not in b.params or n not in a.sigma or n not in b.sigma:
            continue
        pa = np.asarray(a.params[n], dtype=np.float64)
        pb = np.asarray(b.params[n], dtype=np.float64)
        sa = np.asarray(a.sigma[n], dtype=np.float64)
        sb = np.asarray(b.sigma[n], dtype=np.float64)
        if pa.shape != both.shape:  # depth-stratified: compared by agreement() at one depth only
            continue
        ok = both & np.isfinite(pa) & np.isfinite(pb) & np.isfinite(sa) & np.isfinite(sb)
        period = _period(a, n)
        diff = pa[ok] - (pb[ok] if period is None else _align_circular(pa[ok], pb[ok], period))
        comb = np.hypot(sa[ok], sb[ok])
        z = np.abs(diff) / np.where(comb > 0, comb, np.nan)
        d = {"within_1sigma": float(np.mean(np.abs(diff) <= comb)) if ok.any() else float("nan"),
             "p99_sigma": float(np.nanpercentile(z, 99)) if np.isfinite(z).any() else float("nan")}
        if n in DETERMINED_SIGMA:
            det = ok & (sa < DETERMINED_SIGMA[n]) & (sb < DETERMINED_SIGMA[n])
            d["determined"] = float(det.sum() / max(ok.sum(), 1))
            d["pearson_determined"] = pearson(np.where(det, pa, np.nan), pb, period=period)
        out[n] = d
    return out


def disagreement(a: Any, b: Any, names: tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
    """Where two runs disagree, which one fits the data better.

    Two inversions of the same pixels that land in different minima of a
    flat chi2 landscape (a weak-field pixel's angles) lower a Pearson
    correlation between their maps whichever of them found the better
    minimum; this tells the two cases apart. For each parameter of
    :data:`DISAGREE` and the pixels fitted in both: ``pixels`` and ``share``
    whose values differ by more than the threshold (circular for the
    azimuth), ``a_lower_chi2`` the share of those where ``a`` has the lower
    reduced chi2 (the same degrees of freedom in both), ``median_chi2_diff``
    the median of ``chi2_a - chi2_b`` there (reduced), and the Pearson
    correlation of each run with the better fit of the two per pixel
    (``pearson_a_best``, ``pearson_b_best``: the map of the lower chi2 at
    every pixel, a reference that does not favour either run's starts).
    """
    both = np.isin(a.status, _FITTED) & np.isin(b.status, _FITTED) & np.isfinite(a.chi2) & np.isfinite(b.chi2)
    a_better = a.chi2 < b.chi2
    out: dict[str, dict[str, float]] = {}
    for n in names or tuple(DISAGREE):
        if n not in DISAGREE or n not in a.params or n not in b.params:
            continue
        pa = np.asarray(a.params[n], dtype=np.float64)
        pb = np.asarray(b.params[n], dtype=np.float64)
        if pa.shape != both.shape:  # depth-stratified
            continue
        period = _period(a, n)
        ok = both & np.isfinite(pa) & np.isfinite(pb)
        pb_al = pb if period is None else np.where(ok, _align_circular(pa, pb, period), np.nan)
        far = ok & (np.abs(pa - pb_al) > DISAGREE[n])
        best = np.where(ok, np.where(a_better, pa, pb_al), np.nan)
        d = np.asarray(a.chi2, dtype=np.float64)[far] - np.asarray(b.chi2, dtype=np.float64)[far]
        out[n] = {"pixels": int(far.sum()), "share": float(far.sum() / max(ok.sum(), 1)),
                  "a_lower_chi2": float(np.mean(d < 0)) if d.size else float("nan"),
                  "median_chi2_diff": float(np.median(d)) if d.size else float("nan"),
                  "pearson_a_best": pearson(np.where(ok, pa, np.nan), best, period=period),
                  "pearson_b_best": pearson(np.where(ok, pb_al, np.nan), best, period=period)}
    return out


def truth_metrics(r: Any, truth: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Pearson per parameter against the true maps, and the share of pixels off by > 100 G in B."""
    fitted = np.isin(r.status, _FITTED)
    out: dict[str, Any] = {"pearson": {}}
    for n in truth:  # one map of each at a time (both may read from files on access)
        if n not in r.params:
            continue
        t, v = truth[n], np.where(fitted, r.params[n], np.nan)
        out["pearson"][n] = pearson(v, t, period=_period(r, n))
        if n == "B":
            d = np.abs(v - t)
            ok = np.isfinite(d)
            out["B_off_100G"] = int((d[ok] > B_OFF_G).sum())
            out["B_off_100G_fraction"] = float((d[ok] > B_OFF_G).mean()) if ok.any() else float("nan")
    return out


def summary_lines(d: Mapping[str, Any]) -> list[str]:
    """The loop's figures from ``DIR/summary.json`` as lines for a person (``stokesflow assist``
    prints them; ``benchmarks/assist_loop.py`` adds its own).

    Wall seconds per phase; LM iterations; with a baseline the speed-ups (iterations, the assisted
    inversion's wall time, the whole loop's) and the break-even field size (subset, reference and
    training as a fixed cost, the assisted inversion and prediction against the baseline per
    pixel), the median chi2 change and the Pearson correlations with the baseline; with a truth,
    pixels off by > 100 G and the Pearson correlations; the subset and the training.
    """
    nan = float("nan")
    ph = d.get("phases", {})
    it = d.get("lm_iterations", {})
    per_px = {k: v.get("mean", nan) for k, v in d.get("iterations", {}).items()}
    out = ["wall seconds per phase: " + ", ".join(f"{k} {v:.1f}" for k, v in ph.items())]
    base = ph.get("baseline")
    out.append(f"loop (subset+reference+train+predict+assisted) {d.get('loop_seconds', nan):.1f} s"
               + (f", baseline {base:.1f} s" if base is not None else ""))
    out.append("LM iterations: " + ", ".join(f"{k} {v}" for k, v in it.items()) + "; per pixel "
               + ", ".join(f"{k} {v:.2f}" for k, v in per_px.items()))
    sp = d.get("speedup")
    if sp:
        out.append(f"speed-up: iterations {sp['iterations']:.2f}x, wall (assisted vs baseline) "
                   f"{sp['wall_assisted']:.2f}x, wall (whole loop vs baseline) {sp['wall_loop']:.2f}x")
        fixed = sum(ph.get(k, 0.0) for k in ("subset", "reference", "train"))
        npix = d.get("iterations", {}).get("assisted", {}).get("pixels", 0)
        gain = (base - ph.get("assisted", 0.0) - ph.get("me_seed", 0.0) - ph.get("predict", 0.0)) / max(1, npix)
        out.append(f"break-even field size (subset, reference and training as a fixed cost): {fixed / gain:,.0f} "
                   f"pixels (~{np.sqrt(fixed / gain):.0f}^2)" if gain > 0 else
                   "break-even: none (the assisted inversion and prediction are not faster per pixel than the "
                   "baseline)")
    c = d.get("chi2", {})
    if "baseline" in c and "assisted" in c:
        a, b = c["assisted"]["median"], c["baseline"]["median"]
        out.append(f"median chi2: assisted {a:.4f}, baseline {b:.4f} ({100 * (a / b - 1):+.2f} %)")
    for k, ag in d.get("agreement_with_baseline", {}).items():
        out.append(f"Pearson with the baseline ({k}): " + ", ".join(
            f"{n} {v:.4f}" for n, v in ag.items() if n in ("B", "inclination", "azimuth", "vlos")))
    for k, t in d.get("truth", {}).items():
        out.append(f"vs truth ({k}): B off > 100 G {t.get('B_off_100G')} "
                   f"({100 * t.get('B_off_100G_fraction', nan):.2f} %); Pearson " + ", ".join(
                       f"{n} {t['pearson'][n]:.4f}" for n in ("B", "inclination", "azimuth", "vlos")
                       if n in t["pearson"]))
    sub, tr = d.get("subset", {}), d.get("training", {})
    line = f"subset: {sub.get('pixels')} pixels in {sub.get('clusters')} clusters"
    if "val_loss" in tr:
        samples = sum(h.get("samples", 0) for h in tr.get("history", []))
        line += (f"; training: {tr.get('pixels')} good pixels, {tr.get('epochs')} epochs (best "
                 f"{tr.get('best_epoch')}), {samples:,} samples drawn, validation loss {tr['val_loss']:.4f}, "
                 f"on {tr.get('device')} ({tr.get('threads')} thread(s))")
    out.append(line)
    return out
