"""The assisted loop on synthetic mixed scenes: time per phase, LM iterations, accuracy, network speed.

Runs ``stokesflow synth --scene mixed`` (HMI-like and Hinode-like), then the
loop (:func:`stokesflow.orchestrator.assist.run_assist`) with ``--baseline``,
and prints the issue's figures:

- wall time per phase and the speed-ups (assisted vs baseline inversion, whole
  loop vs baseline) with the break-even field size;
- total LM iterations, median chi2, Pearson correlations with the baseline
  and the truth, pixels off by > 100 G from the truth;
- CNN inference pixels/s on one core (one torch thread);
- a subset chosen by clustering against a same-size corner box (the network's
  guesses alone, and the iterations of the assisted inversion);
- with ``--converged``, the floor of the comparison with the baseline: the
  baseline rerun from its own configuration with the ME solver converged
  further (``chi2_tol`` 1e-6 instead of 0.02, 200 iterations), and the Pearson
  correlations of the baseline and of the assisted result with that rerun.

The training subset holds ``--subset`` of the field's pixels clamped to
[``--subset-min``, ``--subset-max``] (:func:`stokesflow.nn_init.training.subset_pixels`,
the rule of ``stokesflow assist``), and the network trains on the default budget of
:class:`stokesflow.nn_init.training.TrainSettings` (a fixed number of samples, whatever
the subset's size).

Usage::

    python benchmarks/assist_loop.py --size 128 --instrument hmi hinode
    python benchmarks/assist_loop.py --size 256 --instrument hmi --cluster local --workers 2
    python benchmarks/assist_loop.py --input ../shared/data/pymilne_hmi_sample.h5 --no-box
    python benchmarks/assist_loop.py --input ../shared/data/pymilne_hmi_filtergrams.h5 --no-box \
        -B instrument=filters -B filters_file=../shared/data/pymilne_hmi_filters.npz

Timings are wall clock on whatever else the machine is doing; the script
prints the load average before and after. The ME kernels are loaded (compiled
on the first run after an install) before any timed phase.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]


def _inference_rate(model_path: Path, obs_path: Path, n: int = 20000) -> float:
    import torch

    from stokesflow.nn_init.model_file import load_model
    from stokesflow.orchestrator.io import open_observation

    torch.set_num_threads(1)
    model = load_model(model_path)
    obs = open_observation(obs_path)
    s = obs.read_pixels(0, min(n, obs.npix))
    reps = max(1, n // s.shape[0])
    s = np.concatenate([s] * reps)
    model.predict(s[:1000])  # warm-up
    t0 = time.perf_counter()
    model.predict(s)
    return s.shape[0] / (time.perf_counter() - t0)


def _warm_kernels() -> None:
    """Load the ME kernels (compile them on the first run after an install) before any timed phase.

    numba compiles them once per installation and loads them from its on-disk
    cache afterwards; without this warm-up the first ME phase of a fresh
    clone (the reference inversion) would carry 5-20 s of compilation.
    """
    from stokesflow.backends import get_backend

    t0 = time.perf_counter()
    get_backend("me", {}).setup()  # one tiny fit: the kernels do not depend on the lines
    print(f"ME kernels ready in {time.perf_counter() - t0:.1f} s (compiled on the first run after an install, "
          f"loaded from numba's cache afterwards; in no phase's time)")


def _loop(obs: Path, out: Path, args: argparse.Namespace, **kw) -> dict:
    from stokesflow.orchestrator.assist import AssistSettings, run_assist

    cluster = {"kind": args.cluster}
    if args.workers:
        cluster["workers"] = args.workers
    s = AssistSettings(subset=args.subset, subset_min=args.subset_min, subset_max=args.subset_max,
                       clusters=args.clusters, epochs=args.epochs, threads=args.threads, cluster=cluster,
                       progress="none", report=False,
                       train_options={k: v for k, v, _ in args.train_option or []},
                       backend_options={k: v for k, v, _ in args.backend_option or []}, **kw)
    return run_assist(obs, out, s, overwrite=True)


#: ME options of the ``--converged`` rerun of the baseline: the same starts, stopped only when
#: an accepted step lowers chi2 by less than 1e-6 (instead of 0.02) or after 200 iterations.
CONVERGED = {"chi2_tol": 1e-6, "max_iter": 200}


def _converged_baseline(base: Path, out: Path) -> None:
    """Rerun the baseline ``base`` from the configuration it records, with :data:`CONVERGED`, into ``out``."""
    import h5py

    from stokesflow.orchestrator.config import load_config, tomllib
    from stokesflow.orchestrator.run import run_inversion

    with h5py.File(base, "r") as h:
        layer = tomllib.loads(str(h.attrs["config"]))
    layer["output"].update(path=str(out), overwrite=True, resume=False)
    name = layer["run"]["backend"]
    if name != "me":
        raise SystemExit(f"--converged reruns an ME baseline; this one ran the {name!r} backend")
    layer.setdefault("backend", {}).setdefault(name, {}).update(CONVERGED)
    run_inversion(load_config(None, layer))


def _agreement_on_subset(loop_dir: Path, truth: dict | None) -> dict:
    """Pearson correlations on the subset's pixels: the baseline and the assisted result with the
    reference inversion the network trained on, and each of the three with the truth when known."""
    from types import SimpleNamespace

    import h5py

    from stokesflow.orchestrator.assist_metrics import agreement, truth_metrics
    from stokesflow.orchestrator.store import read_result

    names = ("inclination", "azimuth")
    with h5py.File(loop_dir / "subset_obs.h5", "r") as h5:
        index = h5["assist/index"][()].ravel()
    own = np.flatnonzero(index >= 0)  # the subset's pixels in its own file (the U-Net's separators are -1)
    field = index[own]  # the same pixels in the field

    def at(r, pixels: np.ndarray) -> SimpleNamespace:
        return SimpleNamespace(params={n: np.asarray(r.params[n]).ravel()[pixels] for n in names},
                               status=np.asarray(r.status).ravel()[pixels])

    ref = at(read_result(loop_dir / "subset.h5"), own)
    runs = {k: at(read_result(loop_dir / f"{k}.h5"), field) for k in ("baseline", "assisted")}
    out: dict = {"pixels": int(own.size)}
    for k, r in runs.items():
        out[f"{k} with the reference"] = agreement(r, ref, names)
    if truth:
        t = {n: np.asarray(truth[n]).ravel()[field] for n in names if n in truth}
        for k, r in {"reference": ref, **runs}.items():
            out[f"{k} with the truth"] = truth_metrics(r, t)["pearson"]
    return out


def _print_case(name: str, d: dict, rate: float) -> None:
    from stokesflow.orchestrator.assist_metrics import summary_lines

    print(f"\n== {name} ==")
    print("\n".join(summary_lines(d)))
    cpu = d.get("phases_cpu", {})
    print("CPU seconds per phase (this process; all the work with --cluster serial): "
          + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    if "baseline" in cpu:
        loop_cpu = sum(cpu.get(k, 0.0) for k in ("subset", "reference", "train", "predict", "assisted"))
        print(f"CPU speed-up: assisted vs baseline {cpu['baseline'] / max(1e-9, cpu['assisted']):.2f}x, "
              f"whole loop vs baseline {cpu['baseline'] / max(1e-9, loop_cpu):.2f}x")
    print(f"CNN inference, one core: {rate:,.0f} pixels/s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--instrument", nargs="+", default=["hmi", "hinode"])
    from stokesflow.nn_init.training import SUBSET_MAX_PIXELS, SUBSET_MIN_PIXELS

    p.add_argument("--input", default=None, help="run on this observation instead of synthetic scenes")
    p.add_argument("--subset", type=float, default=0.05, help="share of the field in the training subset")
    p.add_argument("--subset-min", type=int, default=SUBSET_MIN_PIXELS, help="fewest subset pixels")
    p.add_argument("--subset-max", type=int, default=SUBSET_MAX_PIXELS, help="most subset pixels")
    p.add_argument("--clusters", type=int, default=16)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--cluster", default="serial")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the training and prediction tasks (default 1: one core's figures; "
                        "0: what stokesflow assist does, every core of the training's worker)")
    p.add_argument("--no-box", action="store_true", help="skip the corner-box comparison")
    p.add_argument("--kmeans", action="store_true", help="also run the loop with the k-means look-up")
    p.add_argument("--converged", action="store_true",
                   help="also rerun the baseline converged further and compare both runs with it")
    p.add_argument("--dir", default="bench_assist")
    p.add_argument("--json", default=None, help="write every figure to this file")
    from stokesflow.orchestrator.cli import _key_value

    p.add_argument("-B", "--backend-option", dest="backend_option", action="append", type=_key_value,
                   metavar="KEY=VALUE", help="ME backend option of every inversion of the loop, as for stokesflow "
                   "assist (repeatable), e.g. -B instrument=filters -B filters_file=F.npz for filtergrams "
                   "with measured filter profiles")
    p.add_argument("--train-option", dest="train_option", action="append", type=_key_value, metavar="KEY=VALUE",
                   help="training setting of the loop's network, as for stokesflow assist (repeatable)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from stokesflow.orchestrator.synth import synthesize_observation
    from stokesflow.orchestrator.assist_metrics import (DETERMINED_SIGMA, DISAGREE, agreement, agreement_within_sigma,
                                                         truth_metrics)
    from stokesflow.orchestrator.run import open_input
    from stokesflow.orchestrator.store import read_result

    import torch

    from stokesflow.orchestrator.run import package_versions

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()}; cluster {args.cluster}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in {**package_versions(), "torch": torch.__version__}.items()))
    root = Path(args.dir)
    root.mkdir(exist_ok=True)
    _warm_kernels()
    figures = {}
    cases = [Path(args.input).stem] if args.input else args.instrument
    for inst in cases:
        obs = Path(args.input) if args.input else root / f"{inst}_{args.size}.h5"
        if not obs.exists():
            synthesize_observation(obs, instrument=inst, scene="mixed", size=(args.size, args.size), seed=1)
        tag = inst if args.input else f"{inst}_{args.size}"  # a given observation has its own size
        loop_dir = root / f"{tag}_loop"
        d = _loop(obs, loop_dir, args, baseline=True)
        rate = _inference_rate(loop_dir / "model.pt", obs)
        name = str(obs) if args.input else f"{inst}-like, {args.size} x {args.size}"
        _print_case(f"{name}, subset {args.subset} of the field in [{args.subset_min}, {args.subset_max}] pixels", d,
                    rate)
        figures[inst] = {"clusters": d, "inference_px_s": rate}
        within = agreement_within_sigma(read_result(loop_dir / "assisted.h5"), read_result(loop_dir / "baseline.h5"),
                                        ("B", "inclination", "azimuth", "vlos"))
        print("assisted vs baseline in their own uncertainties: " + "; ".join(
            f"{n} within 1 sigma {100 * w['within_1sigma']:.2f} % (99th pct {w['p99_sigma']:.2f} sigma)"
            + (f", Pearson {w['pearson_determined']:.4f} over the {100 * w['determined']:.1f} % of pixels "
               f"with sigma < {DETERMINED_SIGMA[n]:g} deg in both" if "pearson_determined" in w else "")
            for n, w in within.items()))
        figures[inst]["within_sigma"] = within
        dis = d.get("disagreement_with_baseline", {})
        print("where assisted and baseline disagree: " + "; ".join(
            f"{n} {w['pixels']} pixels ({100 * w['share']:.2f} %) differ by > {DISAGREE[n]:g}, the assisted fit has "
            f"the lower chi2 in {100 * w['a_lower_chi2']:.0f} % of them (median reduced chi2 difference "
            f"{w['median_chi2_diff']:+.3f}); Pearson with the better fit of the two per pixel: assisted "
            f"{w['pearson_a_best']:.4f}, baseline {w['pearson_b_best']:.4f}" for n, w in dis.items() if w["pixels"]))
        on_subset = _agreement_on_subset(loop_dir, open_input(obs, {}).read_truth())
        print(f"on the subset's {on_subset.pop('pixels'):,} pixels (the network's training targets: the reference "
              "inversion): " + "; ".join(f"{k} " + ", ".join(f"{n} {v:.4f}" for n, v in a.items())
                                         for k, a in on_subset.items()))
        figures[inst]["on_subset"] = on_subset
        if args.converged:
            t0 = time.perf_counter()
            _converged_baseline(loop_dir / "baseline.h5", loop_dir / "baseline_converged.h5")
            wall = time.perf_counter() - t0
            conv = read_result(loop_dir / "baseline_converged.h5")
            names = ("B", "inclination", "azimuth", "vlos")
            ref = {k: agreement(read_result(loop_dir / f"{k}.h5"), conv, names) for k in ("baseline", "assisted")}
            truth = open_input(obs, {}).read_truth()
            off = truth_metrics(conv, truth)["B_off_100G"] if truth and "B" in truth else None
            print(f"baseline converged further ({', '.join(f'{k} {v:g}' for k, v in CONVERGED.items())}; {wall:.1f} s, "
                  f"{conv.n_iter.mean():.2f} LM iterations per pixel, median chi2 {np.nanmedian(conv.chi2):.4f}"
                  + (f", B off the truth by > 100 G {off}" if off is not None else "") + "); Pearson with it: "
                  + "; ".join(f"{k} " + ", ".join(f"{n} {v:.4f}" for n, v in a.items()) for k, a in ref.items()))
            figures[inst]["converged"] = {"seconds": wall, "iterations_per_pixel": float(conv.n_iter.mean()),
                                          "median_chi2": float(np.nanmedian(conv.chi2)), "B_off_100G": off,
                                          "pearson": ref}
        if not args.no_box:
            b = _loop(obs, root / f"{tag}_box", args, subset_method="box")
            base = read_result(loop_dir / "baseline.h5")
            guess_box = agreement(read_result(root / f"{tag}_box" / "guess.h5"), base)
            guess_clu = d["agreement_with_baseline"]["guess"]
            print(f"subset by clusters vs corner box (same size): guesses' Pearson with the baseline B "
                  f"{guess_clu['B']:.4f} vs {guess_box['B']:.4f}, azimuth {guess_clu['azimuth']:.4f} vs "
                  f"{guess_box['azimuth']:.4f}; assisted LM iterations {d['lm_iterations']['assisted']} vs "
                  f"{b['lm_iterations']['assisted']}; vs truth B off > 100 G "
                  f"{d['truth']['assisted']['B_off_100G']} vs {b['truth']['assisted']['B_off_100G']}")
            figures[inst]["box"] = {"guess_pearson": guess_box, "lm_iterations": b["lm_iterations"],
                                    "truth": b.get("truth")}
        if args.kmeans:
            k = _loop(obs, root / f"{tag}_kmeans", args, model="kmeans", baseline=False)
            bi = d["lm_iterations"]["baseline"]
            bc = d["phases_cpu"]["baseline"]
            print(f"k-means look-up loop: LM iterations {k['lm_iterations']['assisted']} ({bi / k['lm_iterations']['assisted']:.2f}x "
                  f"fewer than the baseline); CPU s per phase " + ", ".join(f"{n} {v:.1f}" for n, v in k["phases_cpu"].items())
                  + f"; assisted CPU speed-up {bc / max(1e-9, k['phases_cpu']['assisted']):.2f}x; vs truth B off > 100 G "
                  f"{k['truth']['assisted']['B_off_100G']}")
            figures[inst]["kmeans"] = {"lm_iterations": k["lm_iterations"], "phases_cpu": k["phases_cpu"],
                                       "truth": k.get("truth")}
    print(f"\nload average at the end {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=float))


if __name__ == "__main__":
    main()
