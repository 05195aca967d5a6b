"""Invert an observation from Python: the calls behind ``stokesflow invert``, then the result read back.

Synthesises an HMI-like sunspot with its true parameter maps (stand in your own
observation: an HDF5 file in the layout of ``../shared/DESIGN.md``, FITS, .npy,
JSOC HMI segments or Hinode SP level-1 files), inverts it on a cluster, reads
the result file and compares it with the truth. Last, the ME backend alone on a
few pixels held in memory, without a cluster or a file.

Usage::

    python examples/invert_from_python.py --size 64 --out example_out
    python examples/invert_from_python.py --size 64 --cluster serial
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from stokesflow.backends.me import MEBackend
from stokesflow.orchestrator import load_config, open_observation, read_result, run_inversion, synthesize_observation

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64, help="side of the synthetic field [pixels]")
    p.add_argument("--out", default="example_out", help="folder for the observation and the result")
    p.add_argument("--cluster", default="local", choices=["local", "serial"])
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(exist_ok=True)

    # 1. an observation (continuum units, wavelengths in A, a noise attribute, /truth)
    obs_path = synthesize_observation(out / "obs.h5", instrument="hmi", scene="sunspot",
                                      size=(args.size, args.size), seed=1, overwrite=True)

    # 2. the same layers as a TOML file and the command line: packaged defaults < this dict
    cluster = {"kind": args.cluster, **({"workers": args.workers} if args.cluster == "local" else {})}
    config = load_config(None, {
        "input": {"path": str(obs_path)},
        "output": {"path": str(out / "result.h5"), "overwrite": True},
        "run": {"progress": "none"},
        "cluster": cluster,
        "backend": {"me": {"n_starts": 2, "max_iter": 50}},
    })
    summary = run_inversion(config)
    print(f"inverted {summary.pixels} pixels in {summary.times['total']:.1f} s; status: {summary.pixels_by_status}")

    # 3. the result file: one (ny, nx) map per parameter, its 1-sigma map, chi2, status, iterations
    r = read_result(out / "result.h5")
    ok = r.status == 0
    print(f"median reduced chi2 {np.median(r.chi2[ok]):.3f}, mean LM iterations {r.n_iter[ok].mean():.1f}")
    truth = open_observation(str(obs_path)).read_truth()  # maps read one at a time
    for name in ("B", "inclination", "vlos"):
        err = np.abs(r.params[name] - truth[name])[ok]
        print(f"{name:12s} median |fit - truth| {np.median(err):8.3f}, median sigma {np.nanmedian(r.sigma[name][ok]):8.3f}")

    # 4. the backend alone: profiles (npix, 4, nw) in memory, the instrument from the file's attributes
    o = open_observation(str(obs_path))
    backend = MEBackend({"n_starts": 1}).for_observation(o.meta)
    chunk = backend.invert(o.read_pixels(0, 16), o.wavelength)
    print(f"backend alone: {len(chunk.params)} pixels, parameters {list(chunk.names)}, "
          f"B of the first {chunk.params[0, list(chunk.names).index('B')]:.1f} G")


if __name__ == "__main__":
    main()
