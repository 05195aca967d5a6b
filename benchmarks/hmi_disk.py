"""A whole HMI-like filtergram disk through ``stokesflow invert`` (issue 9's end-to-end goal).

Synthesises a ``size`` x ``size`` HMI-like observation through the built-in
HMI filter profiles (``synth --scene mixed -B instrument=hmi_filters``: six
filtergrams per Stokes parameter, noise 1e-3), blanks every pixel off a solar
disk of HMI's radius (NaN, as off-limb pixels of a real HMI image are not
inverted), and inverts it with ``stokesflow invert --cluster local --workers
W``, the user's command. It prints the wall time of the synthesis and of the
inversion (process start to exit, so start-up and the numba cache load are
included), pixels per second, the peak memory (RSS) of the driver and of each
worker, the status counts, and the accuracy against the synthesised truth on
the disk.

The scene is seen at disc centre everywhere (no limb darkening or
foreshortening); only the geometry and the pixel count of the disk are HMI's:
a radius of 1,905 px at 4096 x 4096 (959.6 arcsec over 0.504 arcsec/px), i.e.
11.4 million pixels on the disk out of 16.8 million.

Usage::

    python benchmarks/hmi_disk.py [--size 4096] [--workers 2] [--workdir DIR]
        [--radius-fraction 0.465] [--stop-after S] [--chunk-pixels K]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from orchestrator_scaling import TreeSampler, _fmt_mem, cli_run  # noqa: E402

from stokesflow.backends.base import STATUS_NAMES  # noqa: E402
from stokesflow.orchestrator.run import package_versions  # noqa: E402

__all__ = ["main", "blank_off_disk"]

GiB = 1024.0**3
#: HMI's solar radius over the image width: 959.6 arcsec / 0.504 arcsec/px / 4096 px.
HMI_RADIUS_FRACTION = 959.6 / 0.504 / 4096


def blank_off_disk(path: Path, radius_fraction: float, rows_per_block: int = 256) -> int:
    """Set every pixel farther than ``radius_fraction * nx`` from the centre to NaN.

    Parameters
    ----------
    path : Path
        Observation file (``/stokes`` (ny, nx, 4, nw)); changed in place.
    radius_fraction : float
        Disk radius over the image width.
    rows_per_block : int
        Rows read and written at a time (bounds the memory).

    Returns
    -------
    int
        Pixels left on the disk.
    """
    with h5py.File(path, "r+") as h5:
        ds = h5["stokes"]
        ny, nx = ds.shape[:2]
        radius = radius_fraction * nx
        xx = np.arange(nx) - (nx - 1) / 2.0
        on_disk = 0
        for r0 in range(0, ny, rows_per_block):
            r1 = min(ny, r0 + rows_per_block)
            yy = np.arange(r0, r1)[:, None] - (ny - 1) / 2.0
            off = np.hypot(yy, xx[None, :]) > radius
            on_disk += int((~off).sum())
            if off.any():
                block = ds[r0:r1]
                block[off] = np.nan
                ds[r0:r1] = block
        h5.attrs["disk_radius_px"] = radius
    return on_disk


def _accuracy(obs: Path, res: Path, n_sample: int = 200_000, seed: int = 0) -> str:
    """Median abs(dB), inclination, vlos and the share off by > 100 G on a sample of disk pixels."""
    with h5py.File(obs, "r") as o, h5py.File(res, "r") as r:
        status = r["status"][:]
        ny, nx = status.shape
        rng = np.random.default_rng(seed)
        flat = np.flatnonzero(status.ravel() != 3)
        pick = np.sort(rng.choice(flat, size=min(n_sample, flat.size), replace=False))
        iy, ix = np.unravel_index(pick, (ny, nx))
        rows = np.unique(iy)
        out = {}
        for name in ("B", "inclination", "vlos"):
            fit = np.empty(pick.size)
            true = np.empty(pick.size)
            fmap = r["params"][name]
            tmap = o["truth"][name]
            for row in rows:  # row by row: the maps are large
                sel = iy == row
                fit[sel] = fmap[row][ix[sel]]
                true[sel] = tmap[row][ix[sel]]
            out[name] = fit - true
    ok = np.isfinite(out["B"])
    return (f"accuracy on {pick.size:,} disk pixels against the truth: median |dB| {np.median(np.abs(out['B'][ok])):.2f} G, "
            f"off by > 100 G {100 * np.mean(np.abs(out['B'][ok]) > 100):.2f} %, median |dincl| "
            f"{np.median(np.abs(out['inclination'][ok])):.2f} deg, median |dvlos| {1e3 * np.median(np.abs(out['vlos'][ok])):.1f} m/s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="image size (pixels per side)")
    ap.add_argument("--workers", type=int, default=2, help="local Dask workers")
    ap.add_argument("--workdir", type=Path, default=None, help="where the files go (default: a temporary folder)")
    ap.add_argument("--radius-fraction", type=float, default=HMI_RADIUS_FRACTION,
                    help="disk radius over the image width (default HMI's, 0.465); 1 keeps every pixel")
    ap.add_argument("--chunk-pixels", type=int, default=0, help="pixels per task (0: automatic)")
    ap.add_argument("--stop-after", type=float, default=0.0, help="interrupt the inversion after S seconds (0: to the end)")
    args = ap.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="stokesflow-disk-"))
    work.mkdir(parents=True, exist_ok=True)
    n = args.size
    print("== stokesflow: an HMI-like filtergram disk through stokesflow invert ==")
    print(f"cores: {os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable; "
          f"memory {psutil.virtual_memory().total / GiB:.1f} GiB; load average {os.getloadavg()[0]:.2f}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()))

    obs = work / f"hmi_filters_{n}.h5"
    if not obs.exists():
        partial = work / f"hmi_filters_{n}.tmp.h5"
        cmd = [sys.executable, "-m", "stokesflow.orchestrator.cli", "synth", "--instrument", "hmi", "--scene", "mixed",
               "--size", str(n), str(n), "--noise", "1e-3", "--seed", "9", "-B", "instrument=hmi_filters",
               "--out", str(partial), "-q"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
        sampler = TreeSampler(proc.pid)
        proc.wait()
        mem = sampler.stop()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode})")
        t_synth = time.perf_counter() - t0
        t0 = time.perf_counter()
        on_disk = blank_off_disk(partial, args.radius_fraction) if args.radius_fraction < 1 else n * n
        partial.rename(obs)
        print(f"synth {n} x {n} mixed scene through hmi_filters: {t_synth:.0f} s, peak RSS "
              f"{max(mem.get('driver', [0])):.2f} GiB, file {obs.stat().st_size / GiB:.2f} GiB; "
              f"off-disk pixels blanked in {time.perf_counter() - t0:.0f} s")
    with h5py.File(obs, "r") as h5:
        radius = float(h5.attrs.get("disk_radius_px", n))
        on_disk = int(np.isfinite(h5["stokes"][n // 2, :, 0, 0]).sum())  # a cheap check of the centre row
    n_disk = int(round(np.pi * radius**2)) if radius < n / 2 else n * n
    print(f"field: {n * n:,} pixels, disk radius {radius:.0f} px, about {n_disk:,} on the disk "
          f"({on_disk} on the centre row)")

    out = work / f"result_{n}.h5"
    stop = args.stop_after or None
    r = cli_run(["--input", str(obs), "--cluster", "local", "--workers", str(args.workers), "--overwrite",
                 "--chunk-pixels", str(args.chunk_pixels)], out, timeout=24 * 3600, stop_after_s=stop)
    print(f"stokesflow invert --cluster local --workers {args.workers}: wall {r['wall_s']:.0f} s "
          f"({r['wall_s'] / 60:.1f} min; start-up: plan {r['plan_s']:.1f} s, cluster+setup {r['setup_s']:.1f} s; "
          f"invert phase {r['invert_s']:.0f} s), {r['n_chunks']} chunks, "
          f"{'stopped after ' + str(stop) + ' s' if r['returncode'] == 130 else 'complete'}")
    with h5py.File(out, "r") as h5:
        status = h5["status"][:]
        iters = h5["n_iter"][:] if "n_iter" in h5 else None
    counts = np.bincount(status.ravel(), minlength=256)
    print("status: " + ", ".join(f"{STATUS_NAMES.get(k, k)} {counts[k]:,}" for k in np.flatnonzero(counts)))
    fitted = int(counts.sum() - counts[3] - counts[255])
    print(f"pixels fitted: {fitted:,}; {fitted / r['wall_s']:.0f} px/s wall, "
          f"{fitted / r['wall_s'] / args.workers:.0f} px/s per worker (whole command), "
          f"{fitted / max(r['worker_chunk_s'], 1e-9):.0f} px/s per worker-second of chunk work")
    if iters is not None:
        good = status != 3
        print(f"LM iterations per fitted pixel: mean {iters[good].mean():.1f}, median {np.median(iters[good]):.0f}")
    print(f"peak RSS: {_fmt_mem(r['memory'])}  (target: driver < 2 GB)")
    print(_accuracy(obs, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
