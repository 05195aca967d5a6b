"""``DIR/report/`` of ``stokesflow assist``: the results report plus a page of the loop itself.

The results report is :func:`stokesflow.orchestrator.report.write_report` of
the assisted result against the baseline (or, without one, against the
truth when the observation has it). The loop page ``loop.html`` shows the
time per phase (wall and driver CPU), the LM iterations per pixel of each run
(``iterations.png``, histograms), the training and validation loss per epoch
(``loss.png``), for the U-Net the calibration curve of its intervals on held-out
pixels (``calibration.png``: covered share against the nominal level) and the
figures of ``summary.json``. The PNGs need matplotlib
(the ``plot`` extra); without it the page has the tables only.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any, Mapping

__all__ = ["write_loop_report"]

log = logging.getLogger("stokesflow.assist")


def _figures(rep: Path, data: Mapping[str, Any]) -> list[str]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return []
    out = []
    its = data.get("iterations", {})
    if its:
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        for name, st in its.items():
            if name == "reference":
                continue
            h = st["histogram"]
            ax.stairs(h["counts"], h["edges"], label=f"{name} (mean {st['mean']:.1f})")
        ax.set_xlabel("LM iterations per pixel")
        ax.set_ylabel("pixels")
        ax.legend()
        fig.savefig(rep / "iterations.png", dpi=90)
        out.append("iterations.png")
    hist = data.get("training", {}).get("history", [])
    if hist:
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        ax.plot([h["epoch"] for h in hist], [h["train_loss"] for h in hist], label="train")
        ax.plot([h["epoch"] for h in hist], [h["val_loss"] for h in hist], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (MSE of normalised targets)")
        ax.set_yscale("log")
        ax.legend()
        fig.savefig(rep / "loss.png", dpi=90)
        out.append("loss.png")
    curve = data.get("training", {}).get("calibration_curve")
    if curve:
        fig = Figure(figsize=(5, 5))
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], "k:", label="ideal")
        for name, cov in curve["coverage"].items():
            ax.plot(curve["levels"], cov, marker="o", ms=3, label=name)
        ax.set_xlabel("nominal level of the interval")
        ax.set_ylabel("held-out pixels covered")
        ax.set_title("U-Net intervals, calibrated at 90 %")
        ax.legend(fontsize=7)
        fig.savefig(rep / "calibration.png", dpi=90)
        out.append("calibration.png")
    return out


def write_loop_report(d: Path, paths: Mapping[str, Path], data: Mapping[str, Any]) -> Path:
    """Write ``DIR/report/`` and return the path of ``loop.html``."""
    rep = d / "report"
    rep.mkdir(exist_ok=True)
    has_baseline = "baseline" in data["done"]
    try:
        from stokesflow.orchestrator.report import write_report

        # the results report compares with one thing: the baseline when there is one, else the truth
        write_report(paths["assisted"], rep, reference=paths["baseline"] if has_baseline else None,
                     truth=("truth" in data) and not has_baseline)
    except Exception as exc:  # noqa: BLE001 - the loop's results stand without the report
        log.warning("report of %s not written: %s: %s", paths["assisted"], type(exc).__name__, exc)
    cpu = data.get("phases_cpu", {})
    rows = "".join(f"<tr><td>{p}</td><td>{sec:.1f}</td><td>{cpu.get(p, float('nan')):.1f}</td></tr>"
                   for p, sec in data["phases"].items())
    its = "".join(f"<tr><td>{k}</td><td>{v['total']}</td><td>{v['mean']:.2f}</td></tr>"
                  for k, v in data.get("iterations", {}).items())
    imgs = "".join(f'<img src="{f}" width="480">' for f in _figures(rep, data))
    figures = {k: data[k] for k in ("speedup", "chi2", "agreement_with_baseline", "truth", "training") if k in data}
    if "training" in figures:
        figures["training"] = {k: v for k, v in figures["training"].items() if k != "history"}
    page = ("<html><head><meta charset='utf-8'><title>stokesflow assist</title></head><body>"
            f"<h1>stokesflow assist: {html.escape(str(data.get('input', '')))}</h1>"
            "<p>Results report (assisted against the baseline or the truth): <a href='index.html'>index.html</a></p>"
            "<h2>Time per phase</h2><table border=1><tr><th>phase</th><th>wall s</th><th>driver CPU s</th></tr>"
            + rows + "</table><h2>LM iterations</h2><table border=1><tr><th>run</th><th>total</th>"
            "<th>per pixel</th></tr>" + its + "</table>" + imgs
            + "<h2>Figures (summary.json)</h2><pre>" + html.escape(json.dumps(figures, indent=1, default=float))
            + "</pre></body></html>")
    path = rep / "loop.html"
    path.write_text(page, encoding="utf-8")
    return path
