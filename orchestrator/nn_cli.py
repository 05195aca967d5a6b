"""The ``train``, ``predict`` and ``assist`` subcommands of ``stokesflow`` (parsers and commands).

:func:`add_nn_parsers` adds them to the command line's subparsers; each
command builds its arguments and calls the library
(:func:`stokesflow.orchestrator.train.train_model`,
:func:`stokesflow.orchestrator.predict.predict_observation`,
:func:`stokesflow.orchestrator.assist.run_assist`). Exit codes are those of
``invert``: 0 done, 2 bad input (a model that does not fit the data, missing
files, ...), 1 unexpected error, 130/143 interrupted (a rerun resumes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from stokesflow.orchestrator.cli import _key_value, _nonneg_int, _positive_int, checked_number, seed_number

__all__ = ["add_nn_parsers"]


_positive_float = checked_number(float, lambda v: v > 0, "a positive number")
_held_out_share = checked_number(float, lambda v: 0 < v < 0.9, "a share in (0, 0.9)")


def _cluster_flags(p: argparse.ArgumentParser, default: str) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--cluster", default=default, choices=["local", "serial", "mpi", "slurm", "pbs", "address"],
                   help="where the tasks run")
    g.add_argument("-w", "--workers", type=_positive_int, default=None, metavar="N", help="worker processes")
    g.add_argument("--address", default=None, metavar="URL", help="scheduler address for --cluster address")
    g.add_argument("-C", "--cluster-option", dest="cluster_option", action="append", type=_key_value,
                   metavar="KEY=VALUE", help="any other [cluster] key (repeatable)")


def _cluster_table(args: argparse.Namespace) -> dict[str, Any]:
    t: dict[str, Any] = {"kind": args.cluster}
    if args.workers:
        t["workers"] = args.workers
    if args.address:
        t["address"] = args.address
    for key, value, _ in args.cluster_option or []:
        t[key] = value
    return t


def _input_flags(p: argparse.ArgumentParser) -> None:
    """``invert``'s flags for reading the observation (``--format``, ``--axes``, ``--wavelength``,
    ``--lines``, ``--instrument``, ``--noise``, ``-R``)."""
    from stokesflow.orchestrator.cli import add_input_flags

    add_input_flags(p.add_argument_group("input (as for invert)"))


def _input_options(args: argparse.Namespace) -> dict[str, Any]:
    from stokesflow.orchestrator.cli import input_table

    return input_table(args)


def _log_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", default=False, help="warnings and errors only")


def add_nn_parsers(sub: Any) -> None:
    """Add ``train``, ``predict`` and ``assist`` to the ``stokesflow`` subparsers."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("train", help="train a network on observations and their result files",
                       description="Train a network (cnn: per pixel; unet: on images, 80-bin distributions with "
                                   "calibrated 90 % intervals) on (observation, result file) pairs: pixels with "
                                   "status 0 only, a held-out part for validation and early stopping (and for "
                                   "the unet's interval calibration), a checkpoint beside --out that a rerun "
                                   "resumes. Runs as one task on --cluster.",
                       formatter_class=fmt)
    p.add_argument("-i", "--input", action="append", required=True, metavar="OBS",
                   help="observation (repeat, in the order of --results; all read with the input flags)")
    p.add_argument("-r", "--results", action="append", required=True, metavar="RESULT.h5",
                   help="result file of that observation (repeat)")
    p.add_argument("--model", default="cnn", choices=["cnn", "unet"], help="network kind")
    p.add_argument("-o", "--out", required=True, metavar="MODEL.pt", help="model file to write")
    p.add_argument("--epochs", type=_positive_int, default=200, help="most epochs (early stopping ends sooner)")
    p.add_argument("--batch", type=_positive_int, default=None,
                   help="pixels per batch (cnn, default 256) or image crops per batch (unet, default 8)")
    p.add_argument("--crop", type=_positive_int, default=None, help="unet: side of the training crops [pixels] (default 64)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="Adam learning rate (cnn 3e-3, decaying on a cosine over at most 245,760 samples; unet 2e-3)")
    p.add_argument("--patience", type=_positive_int, default=10, help="epochs without improvement before stopping")
    p.add_argument("--val-fraction", type=_held_out_share, default=0.15, help="held-out share of the pixels")
    p.add_argument("--seed", type=seed_number, default=0)
    p.add_argument("--max-chi2", type=_positive_float, default=None, help="leave out pixels with a reduced chi2 above it")
    p.add_argument("--no-mirror", dest="mirror", action="store_false",
                   help="train on the pixels alone, without their polarity mirror images ((I, Q, -U, -V) with "
                        "inclination -> 180 - inclination, azimuth -> -azimuth: an exact symmetry of the "
                        "transfer equation, so a network learns both polarities from a field that shows one; "
                        "turn it off for data whose instrument breaks it, e.g. uncorrected I -> V crosstalk)")
    p.add_argument("--no-input-stretch", dest="input_stretch", action="store_const", const=False, default=None,
                   help="cnn: Q, U, V enter the network linearly instead of through an asinh softened at 10 times "
                        "their median (which lets the network see weak and strong polarisation alike)")
    p.add_argument("--log-targets", dest="log_targets", default=None, choices=["auto", "yes", "no"],
                   help="cnn: learn positive, long-tailed parameters (B, eta0) through their log: yes, no, or auto "
                        "(default: yes on a coarse grid such as HMI's filtergrams, no on a spectrograph's)")
    p.add_argument("--threads", type=_nonneg_int, default=0, help="torch threads; 0 = every core of the worker that trains (the training runs alone)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _input_flags(p)
    _cluster_flags(p, "serial")
    _log_flags(p)
    p.set_defaults(func=_cmd_train, on_interrupt=_train_interrupted)

    p = sub.add_parser("predict", help="a trained network's parameters for every pixel (result-file layout)",
                       description="Apply a model file to every pixel of an observation, as chunk tasks, and "
                                   "write /params/<name> in the result-file layout (usable as --init previous "
                                   "-I file=OUT).", formatter_class=fmt)
    p.add_argument("-i", "--input", required=True, metavar="OBS",
                   help="observation: HDF5, FITS, .npy, or an hmi / hinode_sp folder (see the input flags)")
    p.add_argument("-m", "--model", required=True, metavar="MODEL.pt",
                   help="model file of stokesflow train, or a k-means database (DIR/kmeans.h5 of assist --model kmeans)")
    p.add_argument("-o", "--out", required=True, metavar="GUESS.h5")
    p.add_argument("--chunk-pixels", type=_nonneg_int, default=0, help="pixels per task; 0 = 65536")
    p.add_argument("--threads", type=_nonneg_int, default=0, help="torch threads per task; 0 = the worker's share")
    p.add_argument("--resume", action="store_true", help="finish an interrupted prediction")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _input_flags(p)
    _cluster_flags(p, "serial")
    _log_flags(p)
    p.set_defaults(func=_cmd_predict, on_interrupt=_predict_interrupted)

    p = sub.add_parser("assist", help="the assisted loop: subset, reference, train, predict, assisted inversion",
                       description="Choose a representative subset (k-means of the spectra), invert it with the "
                                   "reference strategy, train a network on it, predict every pixel, invert the "
                                   "field from those guesses with the short strategy (and with --baseline the "
                                   "classical way). Writes DIR/assisted.h5, subset.h5, model.pt, guess.h5, "
                                   "baseline.h5, summary.json, report/. A rerun with the same arguments skips "
                                   "finished phases and chunks.", formatter_class=fmt)
    p.add_argument("-i", "--input", required=True, metavar="OBS",
                   help="observation: HDF5, FITS, .npy, or an hmi / hinode_sp folder (see the input flags)")
    p.add_argument("-o", "--out", required=True, metavar="DIR")
    p.add_argument("--subset", type=float, default=0.05,
                   help="share of the pixels in the training subset, clamped to [--subset-min, --subset-max]")
    p.add_argument("--subset-min", type=_positive_int, default=None,
                   help="fewest subset pixels (me + cnn: 16000; otherwise 64; a smaller field is used whole)")
    p.add_argument("--subset-max", type=_positive_int, default=None, help="most subset pixels (me + cnn: 32000)")
    p.add_argument("--subset-method", default="clusters", choices=["clusters", "box"],
                   help="clusters: sample every k-means cluster; box: a corner box (for comparison)")
    p.add_argument("--clusters", type=_positive_int, default=16, help="k of the k-means")
    p.add_argument("--model", default="cnn", choices=["cnn", "unet", "kmeans"],
                   help="cnn: a network trained on the subset; unet: an image network trained on patches that "
                        "sample every cluster (guess.h5 also holds /interval/<name>); kmeans: look-up in the "
                        "inverted subset")
    p.add_argument("--baseline", action="store_true", help="also invert the field the classical way")
    p.add_argument("--me-seed", dest="me_seed", default=None, choices=["off", "merge", "alone"],
                   help="sir, desire: start the short phase from an ME inversion of the whole field: alone (their "
                        "default) = the ME field and velocity with the guess model's T, vmic, vmac; merge = with "
                        "the network's; off = the network's guesses")
    p.add_argument("--epochs", type=_positive_int, default=200, help="most training epochs (early stopping ends sooner)")
    p.add_argument("--seed", type=seed_number, default=0)
    p.add_argument("--threads", type=_nonneg_int, default=0,
                   help="torch threads; 0 = every core of the worker for the training (it runs alone), the "
                        "worker's share for each prediction task")
    p.add_argument("--backend", default="me", help="me, or a classical code: sir, desire (the network then learns "
                                                    "the code's log-tau node columns)")
    p.add_argument("-B", "--backend-option", dest="backend_option", action="append", type=_key_value,
                   metavar="KEY=VALUE", help="backend option of every inversion (repeatable)")
    p.add_argument("--reference-option", dest="reference_option", action="append", type=_key_value,
                   metavar="KEY=VALUE", help="backend option of the reference inversion, added to the backend's "
                                             "(me: n_starts=4, max_iter=100; sir, desire: strategy=reference)")
    p.add_argument("--short-option", dest="short_option", action="append", type=_key_value, metavar="KEY=VALUE",
                   help="backend option of the assisted inversion, added to the backend's (me: n_starts=1, "
                        "sigma_tol=0.05; sir, desire: strategy=assisted_me)")
    p.add_argument("--baseline-option", dest="baseline_option", action="append", type=_key_value,
                   metavar="KEY=VALUE", help="backend option of the baseline, added to the backend's (me: none; "
                                             "sir, desire: strategy=reference)")
    p.add_argument("--train-option", dest="train_option", action="append", type=_key_value, metavar="KEY=VALUE",
                   help="training setting of the network, over the loop's own (cnn: max_samples, lr, batch, "
                        "samples_per_epoch, patience, ...; unet: crop, channels, ...) (repeatable)")
    p.add_argument("--chunk-pixels", type=_nonneg_int, default=0, help="pixels per task; 0 = automatic")
    p.add_argument("--progress", default="auto", choices=["auto", "bar", "log", "none"])
    p.add_argument("--no-report", action="store_true", help="do not write DIR/report/")
    p.add_argument("--overwrite", action="store_true", help="empty DIR of a run with other arguments first")
    _input_flags(p)
    _cluster_flags(p, "local")
    _log_flags(p)
    p.set_defaults(func=_cmd_assist, on_interrupt=_assist_interrupted)


def _train_interrupted(args: argparse.Namespace) -> str:
    """What an interrupted ``train`` leaves (the command line's line after "interrupted:")."""
    ckpt = Path(str(args.out) + ".ckpt")
    if ckpt.exists():
        return f"the finished epochs are in {ckpt}: run the same command again to go on from there"
    if Path(args.out).exists() and Path(args.out).stat().st_mtime >= getattr(args, "started", 0.0):
        return f"{args.out} was written before the stop"
    return f"nothing written (no epoch had finished); {args.out} was not changed"


def _predict_interrupted(args: argparse.Namespace) -> str:
    from stokesflow.orchestrator.cli import _invert_interrupted

    args.result_path = args.out
    return _invert_interrupted(args)


def _assist_interrupted(args: argparse.Namespace) -> str:
    import json

    try:
        done = json.loads((Path(args.out) / "summary.json").read_text())["done"]
    except (OSError, ValueError, KeyError, TypeError):
        done = []
    finished = f"finished phases in {args.out}: {', '.join(done)}" if done else f"no phase finished in {args.out}"
    return f"{finished}; run the same command again to go on (finished chunks and epochs are kept)"


def _cmd_train(args: argparse.Namespace) -> int:
    from stokesflow.orchestrator.train import train_model

    args.started = time.time()

    settings = {"epochs": args.epochs, "batch": args.batch, "lr": args.lr, "patience": args.patience,
                "val_fraction": args.val_fraction, "seed": args.seed, "mirror": args.mirror}
    if args.model == "unet":
        settings["crop"] = args.crop
        if args.log_targets is not None or args.input_stretch is not None:
            from stokesflow.orchestrator.errors import OrchestratorError

            raise OrchestratorError("--log-targets and --no-input-stretch are cnn settings; drop them or pass "
                                    "--model cnn")
    elif args.crop is not None:
        from stokesflow.orchestrator.errors import OrchestratorError

        raise OrchestratorError("--crop is a unet setting; drop it or pass --model unet")
    else:
        settings["log_targets"] = {"auto": "auto", "yes": True, "no": False, None: None}[args.log_targets]
        settings["input_stretch"] = args.input_stretch
    summary = train_model(args.input, args.results, args.out, model=args.model, cluster=_cluster_table(args),
                          settings={k: v for k, v in settings.items() if v is not None},
                          max_chi2=args.max_chi2, overwrite=args.overwrite, threads=args.threads or None,
                          input_options=_input_options(args))
    sys.stdout.write(f"model: {summary['model']} ({summary['pixels']} pixels: {summary['n_train']} train, "
                     f"{summary['n_val']} validation; {summary['epochs']} epochs, best {summary['best_epoch']}, "
                     f"validation loss {summary['val_loss']:.4g}; {summary['seconds']:.1f} s on {summary['device']})\n")
    for c in summary.get("calibration", []):
        sys.stdout.write(f"  {c['name']}: 90 % interval covers {100 * c['coverage']:.1f} % of held-out pixels "
                         f"(temperature {c['temperature']:.3g}, scale {c['scale']:.3g})\n")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from stokesflow.orchestrator.predict import predict_observation

    args.started = time.time()

    res = predict_observation(args.input, args.model, args.out, cluster=_cluster_table(args),
                              chunk_pixels=args.chunk_pixels, resume=args.resume, overwrite=args.overwrite,
                              threads=args.threads or None, input_options=_input_options(args))
    if res.get("already_complete"):
        sys.stdout.write(f"{res['out']} was already complete: nothing to predict, the file is unchanged\n")
    else:
        sys.stdout.write(f"wrote {res['out']}: {res['pixels']} pixels in {res['seconds']:.2f} s "
                         f"({res['pixels_per_s']:.0f} px/s)\n")
    return 0


def _cmd_assist(args: argparse.Namespace) -> int:
    from stokesflow.orchestrator.assist import AssistSettings, run_assist

    defaults = AssistSettings(backend=args.backend)
    kw: dict[str, Any] = {}  # given options are added to the strategy's defaults
    for flag, key in (("reference_option", "reference_options"), ("short_option", "short_options"),
                      ("baseline_option", "baseline_options")):
        given = getattr(args, flag)
        if given:
            kw[key] = {**(getattr(defaults, key) or {}), **{k: v for k, v, _ in given}}
    s = AssistSettings(
        subset=args.subset, subset_min=args.subset_min, subset_max=args.subset_max,
        subset_method=args.subset_method, clusters=args.clusters, model=args.model,
        baseline=args.baseline, epochs=args.epochs, seed=args.seed, threads=args.threads, backend=args.backend,
        backend_options={k: v for k, v, _ in args.backend_option or []}, cluster=_cluster_table(args),
        chunk_pixels=args.chunk_pixels, progress=args.progress, report=not args.no_report,
        me_seed=args.me_seed, input_options=_input_options(args),
        train_options={k: v for k, v, _ in args.train_option or []}, **kw,
    )
    data = run_assist(args.input, args.out, s, overwrite=args.overwrite)
    from stokesflow.orchestrator.assist_metrics import summary_lines

    out = Path(args.out)
    report = out / "report" / "loop.html"
    sys.stdout.write(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir() if p.suffix in ('.h5', '.pt')))}, "
                     f"summary.json" + (f", {report.relative_to(out)}" if report.exists() else "") + "\n"
                     + "\n".join(summary_lines(data)) + "\n")
    return 0
