"""Time and peak memory of ``stokesflow report`` on a 4096 x 4096 result.

Writes, block of rows by block of rows with h5py (no inversion is run):

- an observation file with HMI-like WCS and observing keywords, an
  unallocated ``/stokes`` (no disk used) and ``/truth/<param>`` maps;
- a result file in the layout of README "The result file": nine ME
  parameters and their sigmas, ``chi2``, ``n_iter``, ``status`` (a few per
  cent of each non-ok code), the result being the truth plus noise.

Then makes the report twice, each in a fresh process: (a) the result alone,
(b) against the truth (``--truth``: statistics, difference maps, 2-D
histograms); and prints wall time and peak resident memory of each
(``resource.getrusage(RUSAGE_SELF).ru_maxrss`` in the child), its CPU time,
the load average when it started (on a shared machine the wall time follows
the load; the CPU time does not), the core count and the package versions.

Usage::

    python benchmarks/report_scale.py [--size 4096] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "orchestrator"))

__all__ = ["main"]

NAMES = ("B", "inclination", "azimuth", "vlos", "doppler_width", "eta0", "damping", "S0", "S1")
UNITS = {"B": "G", "inclination": "deg", "azimuth": "deg", "vlos": "km/s", "doppler_width": "mA",
         "eta0": "", "damping": "", "S0": "", "S1": ""}
ROWS = 256


def _truth_rows(y0: int, y1: int, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    y, x = np.mgrid[y0:y1, 0:n].astype(np.float64)
    r = np.hypot(y - 0.5 * n, x - 0.45 * n) / (0.08 * n)
    spot = np.exp(-r**2)
    shape = (y1 - y0, n)
    return {
        "B": 3000.0 * spot + 400.0 * np.exp(-np.hypot(y - 0.3 * n, x - 0.7 * n)**2 / (0.02 * n)**2)
        + rng.uniform(0, 90, shape),
        "inclination": 90.0 - 80.0 * spot + rng.normal(0, 20, shape) * (1 - spot),
        "azimuth": np.degrees(np.arctan2(y - 0.5 * n, x - 0.45 * n)) % 180.0,
        "vlos": rng.normal(0, 1.0, shape), "doppler_width": rng.uniform(25, 40, shape),
        "eta0": rng.uniform(3, 15, shape), "damping": rng.uniform(0.1, 0.5, shape),
        "S0": rng.uniform(0.2, 0.4, shape), "S1": rng.uniform(0.6, 0.8, shape),
    }


def write_files(workdir: Path, n: int) -> tuple[Path, Path]:
    """The observation (with /truth) and the result, n x n, written by blocks of rows."""
    from _report_helpers import hmi_like_keywords  # the tests' HMI-like keywords

    obs, res = workdir / "obs.h5", workdir / "result.h5"
    rng = np.random.default_rng(0)
    noise = {"B": 30.0, "inclination": 3.0, "azimuth": 4.0, "vlos": 0.05, "doppler_width": 1.0, "eta0": 0.5,
             "damping": 0.02, "S0": 0.01, "S1": 0.01}
    with h5py.File(obs, "w") as fo, h5py.File(res, "w") as fr:
        fo.create_dataset("stokes", shape=(n, n, 4, 6), dtype="f4", chunks=(64, 64, 4, 6))  # never written
        fo.create_dataset("wavelength", data=6173.3433 + np.array([-0.172, -0.1032, -0.0344, 0.0344, 0.1032, 0.172]))
        fo.attrs.update(instrument="hmi", lines="FeI_6173", **hmi_like_keywords(n, n, scale=0.504))
        for name in NAMES:
            fo.create_dataset(f"truth/{name}", shape=(n, n), dtype="f4")
            d = fr.create_dataset(f"params/{name}", shape=(n, n), dtype="f4")
            d.attrs["unit"] = UNITS[name]
            fr.create_dataset(f"sigma/{name}", shape=(n, n), dtype="f4")
        for key, dtype in (("chi2", "f4"), ("n_iter", "i4"), ("status", "u1")):
            fr.create_dataset(key, shape=(n, n), dtype=dtype)
        for y0 in range(0, n, ROWS):
            y1 = min(n, y0 + ROWS)
            truth = _truth_rows(y0, y1, n, rng)
            shape = (y1 - y0, n)
            status = rng.choice(np.array([0, 1, 2, 3, 4], "u1"), size=shape, p=[0.93, 0.03, 0.01, 0.01, 0.02])
            for name in NAMES:
                fo[f"truth/{name}"][y0:y1] = truth[name]
                value = truth[name] + rng.normal(0, noise[name], shape)
                if name == "azimuth":
                    value %= 180.0
                value[np.isin(status, (2, 3))] = np.nan
                fr[f"params/{name}"][y0:y1] = value
                fr[f"sigma/{name}"][y0:y1] = noise[name]
            fr["chi2"][y0:y1] = rng.chisquare(15, shape) / 15 * np.where(status == 4, 20.0, 1.0)
            fr["n_iter"][y0:y1] = rng.integers(3, 30, shape)
            fr["status"][y0:y1] = status
        fr.create_dataset("chunks/done", data=np.ones(1, bool))
        fr.create_dataset("chunks/error", data=np.array([""], dtype=object), dtype=h5py.string_dtype())
        fr.attrs.update(parameters=json.dumps(NAMES), units=json.dumps(UNITS), input=str(obs),
                        config=f'[input]\npath = "{obs}"\n', backend="me", init="default", complete=True)
    return obs, res


def _child(result: str, out: str, truth: bool) -> None:
    from stokesflow.orchestrator.report import make_report

    t0 = time.perf_counter()
    rep = make_report(result, out, truth=truth)
    seconds = time.perf_counter() - t0
    use = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "cpu_s": use.ru_utime + use.ru_stime,  # whole process, imports included
                      "peak_gib": use.ru_maxrss / 1024**2,  # ru_maxrss is in KiB on Linux
                      "images": len(rep.images)}))


def _versions() -> str:
    import astropy
    import matplotlib

    return (f"python {platform.python_version()}, numpy {np.__version__}, h5py {h5py.__version__}, "
            f"matplotlib {matplotlib.__version__}, astropy {astropy.__version__}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=4096, help="map side in pixels (default 4096)")
    p.add_argument("--workdir", type=Path, default=None, help="folder for the files (default a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the files")
    p.add_argument("--child", nargs=3, metavar=("RESULT", "OUT", "TRUTH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], args.child[2] == "1")
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="report_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        _, res = write_files(work, args.size)
        print(f"{args.size} x {args.size} result and observation written in {time.perf_counter() - t0:.1f} s "
              f"({res.stat().st_size / 1024**3:.2f} GiB result)")
        print(f"machine: {os.cpu_count()} cores, {platform.machine()}; {_versions()}")
        for label, truth in (("report", False), ("report --truth", True)):
            cmd = [sys.executable, __file__, "--child", str(res), str(work / f"out_{int(truth)}"), str(int(truth))]
            load = os.getloadavg()[0]
            t = time.perf_counter()
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            wall = time.perf_counter() - t
            fig = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{label:16s} {fig['seconds']:6.1f} s wall in the call ({wall:.1f} s with interpreter start and "
                  f"imports; {fig['cpu_s']:.1f} CPU-s), peak RSS {fig['peak_gib']:.2f} GiB, {fig['images']} images "
                  f"(load average {load:.1f} on {os.cpu_count()} cores at the start)")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
