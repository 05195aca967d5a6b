"""The assisted loop from Python: the calls behind ``stokesflow assist``, then its summary read.

Synthesises an HMI-like field with sunspots, plage and quiet Sun, and runs the
loop on it: a subset chosen by k-means of the spectra, inverted with the
reference strategy; a 1D CNN trained on those results; its guesses for every
pixel; the field inverted from them with the short strategy; and, for
comparison, the field inverted the classical way. Prints what
``DIR/summary.json`` holds: seconds per phase, LM iterations, chi2, the
speed-up, and the agreement with the baseline and with the truth. Rerun with
the same arguments after a kill and the finished phases and chunks are kept.

The loop pays for itself on large fields only (subset, reference inversion and
training are a fixed cost of about 10 s here): the assisted inversion is about
3x faster than the baseline HMI-like, the whole loop breaks even near 550^2
pixels (``benchmarks/assist_loop.py`` measures both).

Usage::

    python examples/assisted_loop.py --size 128 --out loop_out
    python examples/assisted_loop.py --size 128 --cluster local --workers 2
    python examples/assisted_loop.py --input ../shared/data/pymilne_hmi_sample.h5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stokesflow.orchestrator import synthesize_observation
from stokesflow.orchestrator.assist import AssistSettings, run_assist

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=None, help="an observation to use instead of the synthetic field")
    p.add_argument("--size", type=int, default=128, help="side of the synthetic field [pixels]")
    p.add_argument("--out", default="loop_out", help="the loop's folder")
    p.add_argument("--cluster", default="serial", choices=["serial", "local"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=200, help="most training epochs (early stopping ends sooner)")
    args = p.parse_args(argv)

    if args.input:
        obs = Path(args.input)
    else:
        obs = Path(f"{args.out}_obs.h5")
        if not obs.exists():
            synthesize_observation(obs, instrument="hmi", scene="mixed", size=(args.size, args.size), seed=1)
    cluster = {"kind": args.cluster, **({"workers": args.workers} if args.cluster == "local" else {})}
    settings = AssistSettings(model="cnn", baseline=True, epochs=args.epochs, cluster=cluster, progress="log")
    d = run_assist(obs, args.out, settings)  # resumes a folder of the same arguments

    print("seconds per phase: " + ", ".join(f"{k} {v:.1f}" for k, v in d["phases"].items()))
    it = d["iterations"]
    print(f"LM iterations per pixel: assisted {it['assisted']['mean']:.2f}, baseline {it['baseline']['mean']:.2f}")
    sp = d["speedup"]
    print(f"speed-up: {sp['iterations']:.2f}x fewer iterations, {sp['wall_assisted']:.2f}x less wall time "
          f"(assisted vs baseline), whole loop {sp['wall_loop']:.2f}x")
    print(f"median chi2: assisted {d['chi2']['assisted']['median']:.3f}, baseline {d['chi2']['baseline']['median']:.3f}")
    agree = d["agreement_with_baseline"]["assisted"]
    print("Pearson with the baseline: " + ", ".join(f"{n} {agree[n]:.4f}" for n in ("B", "inclination", "azimuth", "vlos")))
    for run, t in d.get("truth", {}).items():
        print(f"vs truth ({run}): {t['B_off_100G']} pixels off by > 100 G in B")
    print(f"files: {sorted(q.name for q in Path(args.out).iterdir())}")
    print(f"summary: {Path(args.out) / 'summary.json'} ({len(json.dumps(d))} bytes)")


if __name__ == "__main__":
    main()
