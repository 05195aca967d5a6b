"""CNN (and U-Net) initial-guess inference speed on ONE core, HMI-like and Hinode-like (issue 7).

For each instrument the script builds a ``cnn`` model through the code path
``stokesflow train`` uses (:func:`stokesflow.nn_init.training.train_network`,
one epoch on a few hundred pixels: untrained for practical purposes, which
does not change the speed), writes it to a temporary model file and times,
with ``torch.set_num_threads(1)`` and CPU time of this process
(``time.process_time``, best of ``--repeat``, so other processes on a shared
machine inflate it less than wall time):

- ``network``: the torch network alone on normalised inputs
  (:func:`~stokesflow.nn_init.network.run_network`, default batch), and the
  same at ``--old-batch`` (16384, the batch before issue 7's fix);
- ``features`` (input normalisation) and ``decode`` (outputs to parameters) alone;
- ``provider``: the whole ``--init cnn`` path, ``NetworkInit.initial_guess``
  on chunks of ``--chunk`` pixels (features + network + decoding, NaN checks).

Spectra are ME syntheses of uniform random parameters with noise 1e-3
(``--unique`` distinct pixels, tiled to ``--hmi-pixels`` / ``--hinode-pixels``).
With ``--train-epochs N`` (default 30; 0 skips it) it also trains a CNN on
the ME backend's own inversions (the reference) of ``--train-pixels`` random
pixels and prints the Pearson r of B, inclination, azimuth (180-deg aligned)
and vlos of its guesses against the reference on ``--held-out`` other pixels.
``--predict N`` also times ``stokesflow predict`` (serial executor, one
thread, HDF5 reading and writing included) on an N x N ``synth --scene
mixed`` field per instrument, with a model trained one epoch on its truth.
``--unet`` also times the U-Net network alone (random weights, tiled over a
256 x 256 HMI-like image; the decoding to parameters and intervals is not
included).

Run: ``python benchmarks/nn_inference.py [--hmi-pixels 200000] [--hinode-pixels 20000]
[--repeat 3] [--train-epochs 30] [--predict 256] [--unet]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["main"]

HMI_WAVE = 6173.3433 + 1e-3 * np.array([-172.0, -103.2, -34.4, 34.4, 103.2, 172.0])
HINODE_WAVE = 6300.884 + 0.021549 * np.arange(112)
CASES = {"hmi": (["FeI_6173"], HMI_WAVE, (3.0, 15.0)), "hinode": (["FeI_6301", "FeI_6302"], HINODE_WAVE, (5.0, 40.0))}
META = {"instrument": "benchmark", "spectral_instrument": "", "provenance": {"benchmark": "nn_inference"}}


def _random_params(n: int, rng: np.random.Generator, eta: tuple[float, float]) -> np.ndarray:
    """Uniform random ME parameters (n, 9), the ranges of benchmarks/me_throughput.py."""
    return np.column_stack([rng.uniform(0, 3000, n), rng.uniform(0, 180, n), rng.uniform(0, 180, n),
                            rng.uniform(-3, 3, n), rng.uniform(20, 40, n), rng.uniform(*eta, n),
                            rng.uniform(0, 0.5, n), rng.uniform(0.1, 0.4, n), rng.uniform(0.5, 1.0, n)])


def _spectra(be: Any, wave: np.ndarray, params: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    s = be.synthesize(params, wave)
    return (s + 1e-3 * rng.standard_normal(s.shape)).astype(np.float32)


def _cpu(f: Callable[[], Any], repeat: int) -> float:
    """Best CPU seconds of this process over ``repeat`` calls (after one warm-up call)."""
    f()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        f()
        best = min(best, time.process_time() - t0)
    return best


def _model(be: Any, wave: np.ndarray, stokes: np.ndarray, params: np.ndarray, epochs: int, tmp: Path,
           name: str) -> Path:
    from stokesflow.nn_init.training import train_network

    meta = dict(META, lines=list(be.options.lines))
    model = train_network(stokes, params, be.parameters, wave, metadata=meta,
                          settings={"epochs": epochs, "patience": max(10, epochs)}, threads=1)
    return model.save(tmp / f"{name}.pt")


def speed(inst: str, npix: int, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """px/s on one core of each stage for ``inst``; prints them."""
    from stokesflow.backends import get_backend
    from stokesflow.nn_init.network import inference_batch, run_network
    from stokesflow.nn_init.network_init import loaded_model
    from stokesflow.nn_init.providers import get_provider

    lines, wave, eta = CASES[inst]
    be = get_backend("me", {"lines": lines})
    rng = np.random.default_rng(args.seed)
    params = _random_params(min(args.unique, npix), rng, eta)
    uniq = _spectra(be, wave, params, rng)
    stokes = np.concatenate([uniq] * -(-npix // uniq.shape[0]))[:npix]
    path = _model(be, wave, uniq[:500], params[:500], 1, tmp, inst)
    prov = get_provider("cnn", {"model": str(path), "threads": 1}).bind(be)
    model = loaded_model(str(path))
    net = model.network()
    x = model.inputs.apply(stokes)
    out = run_network(net, x)
    arch = model.metadata["arch"]
    batch = inference_batch(arch["channels"], arch["nw"])

    def provider() -> None:
        for i in range(0, npix, args.chunk):
            prov.initial_guess(stokes[i:i + args.chunk], wave, start=i, stop=min(npix, i + args.chunk))

    t = {"network": _cpu(lambda: run_network(net, x), args.repeat),
         f"network at batch {args.old_batch}": _cpu(lambda: run_network(net, x, batch=args.old_batch), args.repeat),
         "features": _cpu(lambda: model.inputs.apply(stokes), args.repeat),
         "decode": _cpu(lambda: model.targets.decode(out), args.repeat),
         "provider": _cpu(provider, args.repeat)}
    print(f"{inst}: {wave.size} wavelengths, kernels {arch['kernels']}, pooling {arch['pool']}, "
          f"{arch['channels']} channels, dense {arch['hidden']}, batch {batch}; {npix} pixels, chunks of {args.chunk}")
    for k, v in t.items():
        print(f"  {k:28s} {npix / v:12,.0f} px/s per core  ({v:.3f} s CPU)")
    return {k: npix / v for k, v in t.items()}


def accuracy(inst: str, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Pearson r of a briefly trained CNN's guesses against the ME reference inversion on held-out pixels."""
    from stokesflow.backends import get_backend
    from stokesflow.nn_init.model_file import load_model
    from stokesflow.orchestrator.assist_metrics import pearson

    lines, wave, eta = CASES[inst]
    be = get_backend("me", {"lines": lines, "noise": 1e-3})
    rng = np.random.default_rng(args.seed + 1)
    n = args.train_pixels + args.held_out
    stokes = _spectra(be, wave, _random_params(n, rng, eta), rng)
    be.setup()
    t0 = time.process_time()
    res = be.invert(stokes.astype(np.float64), wave)
    t_ref = time.process_time() - t0
    ok = res.status == 0
    ref = np.column_stack([res.param(p.name) for p in be.parameters])
    tr = np.flatnonzero(ok[:args.train_pixels])
    ho = args.train_pixels + np.flatnonzero(ok[args.train_pixels:])
    t0 = time.process_time()
    path = _model(be, wave, stokes[tr], ref[tr], args.train_epochs, tmp, f"{inst}_trained")
    t_train = time.process_time() - t0
    model = load_model(path)
    guess = model.predict(stokes[ho])
    names = list(model.parameters)
    r = {}
    for p in ("B", "inclination", "azimuth", "vlos"):
        j = names.index(p)
        r[p] = pearson(ref[ho, j], guess[:, j], period=180.0 if p == "azimuth" else None)
    hist = model.metadata["history"]
    print(f"{inst}: trained {len(hist)} epochs on {tr.size} reference pixels ({t_train:.1f} s CPU; reference "
          f"inversion {t_ref:.1f} s CPU), validation loss {hist[0]['val_loss']:.3f} -> "
          f"{min(h['val_loss'] for h in hist):.3f}; Pearson r vs the reference on {ho.size} held-out pixels: "
          + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    return r


def predict_speed(inst: str, size: int, args: argparse.Namespace, tmp: Path) -> float:
    """px/s of ``stokesflow predict`` (serial, one thread) on a ``size`` x ``size`` mixed field; prints it."""
    import h5py

    from stokesflow.backends import get_backend
    from stokesflow.orchestrator.predict import predict_observation
    from stokesflow.orchestrator.synth import synthesize_observation

    obs = synthesize_observation(tmp / f"{inst}_obs.h5", instrument=inst, scene="mixed", size=(size, size),
                                 seed=args.seed)
    be = get_backend("me", {"lines": CASES[inst][0]})
    with h5py.File(obs) as f:
        wave = f["wavelength"][:]
        stokes = f["stokes"][:].reshape(-1, 4, wave.size)[:2000]
        truth = np.column_stack([f[f"truth/{p.name}"][:].reshape(-1)[:2000] for p in be.parameters])
    model = _model(be, wave, stokes, truth, 1, tmp, f"{inst}_field")
    best = (float("inf"), float("inf"))
    for _ in range(args.repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        predict_observation(obs, model, tmp / f"{inst}_guess.h5", cluster={"kind": "serial"}, overwrite=True,
                            threads=1)
        best = min(best, (time.process_time() - c0, time.perf_counter() - w0))
    print(f"{inst}: stokesflow predict, {size} x {size} field, serial, one thread: {size * size / best[0]:,.0f} px/s "
          f"per core of CPU time ({best[0]:.2f} s CPU, {best[1]:.2f} s wall)")
    return size * size / best[0]


def unet_speed(args: argparse.Namespace) -> float:
    """px/s on one core of the U-Net network alone (random weights) on a 256 x 256 HMI-like image."""
    import torch

    from stokesflow.nn_init.unet import build_unet, tiled_logits, unet_architecture

    torch.manual_seed(0)
    net = build_unet(unet_architecture(HMI_WAVE.size, 9)).eval()
    x = np.random.default_rng(0).standard_normal((4 * HMI_WAVE.size, 256, 256)).astype(np.float32)
    t = _cpu(lambda: tiled_logits(net, x), args.repeat)
    print(f"unet (network alone, HMI-like 256 x 256, random weights): {256 * 256 / t:,.0f} px/s per core")
    return 256 * 256 / t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hmi-pixels", type=int, default=200_000)
    ap.add_argument("--hinode-pixels", type=int, default=20_000)
    ap.add_argument("--unique", type=int, default=20_000, help="distinct synthesised pixels, tiled")
    ap.add_argument("--chunk", type=int, default=65536, help="pixels per provider call (a chunk task)")
    ap.add_argument("--old-batch", type=int, default=16384, help="batch of the comparison run (before issue 7)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--train-epochs", type=int, default=30, help="0: skip the accuracy check")
    ap.add_argument("--train-pixels", type=int, default=3000)
    ap.add_argument("--held-out", type=int, default=1000)
    ap.add_argument("--instruments", default="hmi,hinode")
    ap.add_argument("--predict", type=int, default=0, metavar="N", help="also time stokesflow predict on N x N")
    ap.add_argument("--unet", action="store_true", help="also time the U-Net network")
    args = ap.parse_args(argv)

    import numba
    import torch

    torch.set_num_threads(1)
    print(f"cores: {os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable; torch threads "
          f"{torch.get_num_threads()}; load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"numba {numba.__version__}; {platform.machine()} {platform.processor() or ''}")
    with tempfile.TemporaryDirectory(prefix="stokesflow-nnbench-") as d:
        tmp = Path(d)
        for inst in args.instruments.split(","):
            speed(inst, args.hmi_pixels if inst == "hmi" else args.hinode_pixels, args, tmp)
        if args.predict > 0:
            for inst in args.instruments.split(","):
                predict_speed(inst, args.predict, args, tmp)
        if args.unet:
            unet_speed(args)
        if args.train_epochs > 0:
            for inst in args.instruments.split(","):
                accuracy(inst, args, tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
