"""Costs and scaling of the classical-code backends (SIR when available, Lightweaver otherwise).

With SIR (``STOKESFLOW_SIR`` or ``--sir PATH``), on pixels of the SIR Hinode sample
(``../shared/data/sir_hinode_sample.h5``: Fe I 6301/6302, 112 points, noise 1e-3):

(a) the wrapper's own cost per pixel: the time of ``SIRBackend.invert`` minus the
    time SIR's process ran, split into the Python side (scratch folder, writing
    the inputs, parsing the outputs) and the cost of starting a process (a
    ``/bin/true`` run through the same runner), against SIR's own run time;
(b) throughput with 1 and 2 worker processes (``concurrent.futures``, started and
    warmed before the clock, one chunk of pixels per task) and the parallel
    efficiency, with where the 2-worker time went: idle at the end (the last
    task), between tasks, SIR's processes running slower (CPU contention; their
    CPU/wall), the workers' and the driver's own CPU; and the machine's ceiling:
    bare SIR processes on prepared folders, one at a time and two at a time;
(c) the ``assisted`` and ``assisted_me`` strategies (1 cycle) started from an ME
    fit of the same pixels (the ME backend's B, inclination, azimuth and vlos
    seed the guess) against the ``reference`` strategy (3 cycles) from the
    built-in HSRA model: wall time (ME included), SIR's CPU time and median chi2;
(d) the same 1 vs 2 workers through the orchestrator (``run_inversion``, local
    Dask cluster): the automatic chunk size with SIR's ``chunk_plan`` against
    the plan's default (1024-pixel floor: one task for a small field).

(e) ``stokesflow assist --backend sir``'s short phase from three starts, on a crop of the
    sample (``--crop``, default rows and columns 4-19): the loop is run once with
    ``me_seed="merge"`` and no baseline (reference of the subset, network, ME seed,
    guesses; resumed when ``--work`` holds it), then each start is inverted with
    ``-B strategy=assisted_me`` as its own ``stokesflow invert`` command on
    ``--workers`` local workers, timed whole (wall, and CPU of the command and
    every process under it: Dask workers, SIR): (a) the network's guesses
    (``network_guess.h5``), (b) the ME seed merged into them (``guess.h5``),
    (c) the ME result alone (``me_seed.h5``: T, vmic, vmac from HSRA); against
    ``stokesflow invert -B strategy=reference`` from HSRA (the baseline), with
    the ME inversion (its own command) counted for (b) and (c).

Without SIR, (a) and (b) are measured for Lightweaver synthesis (per pixel) instead.
The machine is shared: run it on an idle one for figures to quote; every timing is
the best of ``--repeat`` runs.

Usage::

    python benchmarks/classical_scaling.py [--pixels 24] [--sir PATH] [--repeat 2] [--data DIR]
                                           [--chunk K] [--parts abcde]
    python benchmarks/classical_scaling.py --parts e [--crop 4:20,4:20] [--subset 0.5] [--workers 2]
                                           [--work DIR] [--variants me,a,b,c,base] [--prepare-only]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _sample(data: Path, n: int) -> tuple[np.ndarray, np.ndarray, dict]:
    import h5py

    with h5py.File(data / "sir_hinode_sample.h5") as f:
        st = f["stokes"][:].reshape(-1, 4, f["stokes"].shape[-1]).astype(np.float64)
        wl = f["wavelength"][:]
        meta = dict(f.attrs)
    idx = np.linspace(0, st.shape[0] - 1, n).round().astype(int)  # spread over the whole scene
    return st[idx], wl, meta


@contextlib.contextmanager
def _code_seconds() -> Iterator[list[float]]:
    """Record the seconds of every external-code run (``run_code``) made by the SIR backend meanwhile."""
    from stokesflow.backends.sir import backend as sb

    seconds: list[float] = []
    real = sb.run_code

    def timed(*a, **k):
        out = real(*a, **k)
        seconds.append(out.seconds)
        return out

    sb.run_code = timed
    try:
        yield seconds
    finally:
        sb.run_code = real


def _invert_chunk(args: tuple) -> dict:
    """Worker task: invert a chunk with a fresh backend; returns where its time went.

    Keys: ``pid``; ``start``, ``end`` (``time.time()`` around the whole task);
    ``sir_wall`` (seconds SIR's processes ran, summed); ``sir_cpu`` (their CPU
    seconds, from the children's rusage); ``py_cpu`` (this process's own CPU
    seconds in the task); ``npix``.
    """
    import resource

    from stokesflow.backends.sir import backend as sb

    options, stokes, wl, init = args
    start = time.time()
    c0, p0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
    with _code_seconds() as walls:
        sb.SIRBackend(options).invert(stokes, wl, init)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"pid": os.getpid(), "start": start, "end": time.time(), "sir_wall": sum(walls),
            "sir_cpu": (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime),
            "py_cpu": time.process_time() - p0, "npix": stokes.shape[0]}


def _warm(_: int) -> int:
    """Pool warm-up task: import the backend (what a long-lived worker has done already)."""
    import stokesflow.backends.sir.backend  # noqa: F401

    time.sleep(0.2)  # keep this worker busy so that the other one takes the other warm-up task
    return os.getpid()


def _bare_sir(options: dict, st: np.ndarray, wl: np.ndarray) -> dict:
    """The machine's own ceiling for (b): SIR alone, pixel after pixel, then two at a time.

    Each pixel's folder is prepared first (inputs written by the backend);
    then only ``sir.x`` runs, from two threads for the concurrent case, so
    no Python worker, scheduler or file writing is in the timing. Returns
    the wall and the SIR CPU seconds of both runs.
    """
    import resource
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from stokesflow.backends.sir import backend as sb
    from stokesflow.backends.sir.runner import ScratchFolder

    b = sb.SIRBackend(options)
    exe = b._executable()
    strategy = b.options.resolved_strategy()
    with ScratchFolder("bench-bare-") as root:
        folders = []
        for i in range(st.shape[0]):
            with ScratchFolder(f"px{i}-", str(root.path)) as f:
                index, offsets = b._write_static(f, wl, strategy, sb._OBSERVED)
                f.write(sb._OBSERVED, sb.io.format_profiles(index, offsets, st[i]))
                f.write(sb._GUESS, sb.io.format_model(b._model_for(None, inversion=True)))
                dest = root.path / f"p{i}"
                shutil.copytree(f.path, dest)
                folders.append(dest)

        def one(folder: Path) -> float:
            for name in list(os.listdir(folder)):  # the previous run's outputs: SIR appends to some
                if name in ("sir.chi", "sir.log") or name.startswith(sb._GUESS[:-4] + "_"):
                    os.unlink(folder / name)
            return b._run(exe, ScratchFolderAt(folder), []).seconds

        out = {}
        for w in (1, 2):
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(w) as ex:
                list(ex.map(one, folders))
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            out[w] = (time.perf_counter() - t0, (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime))
    return out


class ScratchFolderAt:
    """An existing folder seen as a scratch folder (the ``path`` that ``SIRBackend._run`` uses)."""

    path: Path

    def __init__(self, path: Path) -> None:
        self.path = path


def _throughput(options: dict, st: np.ndarray, wl: np.ndarray, workers: int, chunk: int) -> dict:
    """Pixels per second of ``workers`` processes over chunks of ``chunk`` pixels, and where the time went.

    The pool is started and its workers import the backend before the clock
    starts (long-lived workers, as under Dask); ``start_s`` is that cost.
    Returns the rate (``px_s``), the wall time (``wall``), ``tail_s`` (summed
    over workers: seconds each sat idle between its last task and the end),
    ``gap_s`` (summed seconds between a worker's tasks: dispatch), SIR's wall
    and CPU seconds, the workers' own CPU seconds and the driver's.
    """
    chunks = [(options, st[i:i + chunk], wl, None) for i in range(0, st.shape[0], chunk)]
    t_pool = time.perf_counter()
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_warm, range(workers)))
        start_s = time.perf_counter() - t_pool
        d0 = time.process_time()
        t0, w0 = time.perf_counter(), time.time()
        tasks = list(ex.map(_invert_chunk, chunks))
        wall = time.perf_counter() - t0
        driver_cpu = time.process_time() - d0
    end = w0 + wall
    by_pid: dict[int, list[dict]] = {}
    for t in tasks:
        by_pid.setdefault(t["pid"], []).append(t)
    tail = gap = 0.0
    for ts in by_pid.values():
        ts.sort(key=lambda t: t["start"])
        tail += end - ts[-1]["end"]
        gap += (ts[0]["start"] - w0) + sum(b["start"] - a["end"] for a, b in zip(ts, ts[1:]))
    tail += (workers - len(by_pid)) * wall  # a worker that got no task idled throughout
    return {"px_s": st.shape[0] / wall, "wall": wall, "start_s": start_s, "tail_s": tail, "gap_s": gap,
            "sir_wall": sum(t["sir_wall"] for t in tasks), "sir_cpu": sum(t["sir_cpu"] for t in tasks),
            "py_cpu": sum(t["py_cpu"] for t in tasks), "driver_cpu": driver_cpu, "n_tasks": len(tasks),
            "workers_used": len(by_pid)}


def _orchestrated(options: dict, st: np.ndarray, wl: np.ndarray, meta: dict, workers: int, chunk: int,
                  folder: Path) -> dict:
    """``stokesflow invert --backend sir --cluster local -w workers --chunk-pixels chunk`` in-process.

    The observation is the pixels ``st`` as one row. Returns the run's wall
    times per phase (``setup`` holds the Dask cluster's start), its chunk
    count and the invert phase's pixels per second.
    """
    from stokesflow.orchestrator.config import load_config
    from stokesflow.orchestrator.io import write_observation
    from stokesflow.orchestrator.run import run_inversion

    obs = folder / "obs.h5"
    if not obs.exists():
        write_observation(obs, st[None].astype(np.float32), wl,
                          {k: meta[k] for k in ("lines", "noise", "instrument") if k in meta})
    cfg = load_config(overrides={
        "input": {"path": str(obs)}, "output": {"path": str(folder / f"out{workers}_{chunk}.h5"), "overwrite": True},
        "run": {"backend": "sir", "chunk_pixels": int(chunk), "progress": "none"},
        "backend": {"sir": dict(options)}, "cluster": {"kind": "local", "workers": int(workers)},
    })
    summary = run_inversion(cfg)
    return {"times": dict(summary.times), "n_chunks": summary.n_chunks, "chunk_pixels": summary.chunk_pixels,
            "px_s": summary.pixels_per_s}


def sir_benchmark(exe: str, data: Path, n: int, repeat: int, args_chunk: int = 0, parts: str = "abcd") -> None:
    from stokesflow.backends import get_backend
    from stokesflow.backends.sir import backend as sb
    from stokesflow.backends.sir.runner import ScratchFolder, run_code

    load0 = os.getloadavg()[0]
    st, wl, meta = _sample(data, n)
    options = {"executable": exe, "lines": ["FeI_6301", "FeI_6302"], "noise": 1e-3}
    print(f"SIR {exe}; {n} pixels of {data / 'sir_hinode_sample.h5'}")

    if "a" in parts:
        # (a) wrapper cost
        best = None
        for _ in range(repeat):
            with _code_seconds() as code_s:
                b = sb.SIRBackend(options)
                t0 = time.perf_counter()
                r = b.invert(st, wl)
                total = time.perf_counter() - t0
            cand = (total, sum(code_s), r)
            best = cand if best is None or cand[0] < best[0] else best
        total, code, r = best
        with ScratchFolder("bench-") as f:
            starts = []
            for _ in range(20):
                starts.append(run_code(["/bin/true"], f.path, stdin="x\n", timeout=10).seconds)
        start_s = float(np.median(starts))
        wrapper = (total - code) / n
        sir_run = code / n - start_s
        print(f"(a) per pixel: total {total / n * 1e3:.1f} ms; SIR process {code / n * 1e3:.1f} ms "
              f"(of which process start {start_s * 1e3:.2f} ms); wrapper Python side {wrapper * 1e3:.2f} ms")
        print(f"    wrapper cost (Python side + process start) / SIR's run time = "
              f"{(wrapper + start_s) / sir_run * 100:.2f} %  (target < 5 %)")
        print(f"    status counts {np.bincount(r.status, minlength=5).tolist()}, median chi2 {np.nanmedian(r.chi2):.2f}")

    if "b" in parts:
        # (b) 1 and 2 workers
        chunk = max(1, min(args_chunk, n)) if args_chunk else max(1, n // 8)
        runs: dict[int, dict] = {}
        for w in (1, 2):
            runs[w] = max((_throughput(options, st, wl, w, chunk) for _ in range(repeat)), key=lambda r: r["px_s"])
            r = runs[w]
            print(f"(b) {w} worker(s), {r['n_tasks']} tasks of {chunk} pixels: {r['px_s']:.3f} px/s "
                  f"(wall {r['wall']:.1f} s; pool start and imports {r['start_s']:.2f} s, not counted)")
            print(f"    SIR processes: {r['sir_wall']:.1f} s wall, {r['sir_cpu']:.1f} s CPU ({r['sir_cpu'] / n * 1e3:.0f} ms "
                  f"CPU per pixel); workers' Python {r['py_cpu']:.2f} s CPU; driver {r['driver_cpu']:.2f} s CPU; "
                  f"idle at the end {r['tail_s']:.2f} s, between tasks {r['gap_s']:.2f} s (summed over workers)")
        nb = min(n, 24)
        bare = _bare_sir(options, st[:nb], wl)
        print(f"(b) the machine's ceiling: {nb} pixels of bare SIR (inputs written beforehand, no Python worker): "
              f"one at a time {bare[1][0]:.1f} s wall ({bare[1][1]:.1f} s CPU), two at a time {bare[2][0]:.1f} s wall "
              f"({bare[2][1]:.1f} s CPU): {bare[1][0] / (2 * bare[2][0]) * 100:.0f} % efficiency")
        eff = runs[2]["px_s"] / (2 * runs[1]["px_s"])
        cpu_ratio = (runs[2]["sir_cpu"] / runs[2]["sir_wall"]) / (runs[1]["sir_cpu"] / runs[1]["sir_wall"])
        eff_start = (n / (runs[2]["wall"] + runs[2]["start_s"])) / (2 * n / (runs[1]["wall"] + runs[1]["start_s"]))
        print(f"    parallel efficiency with 2 workers: {eff * 100:.0f} %  (target >= 90 %; {os.cpu_count()} CPUs here, "
              f"shared; load average before {load0:.2f}); {eff_start * 100:.0f} % counting the pool start")
        lost = 2 * runs[2]["wall"] - runs[1]["wall"]
        print(f"    2 x wall(2) - wall(1) = {lost:.1f} s lost: idle at the end {runs[2]['tail_s']:.1f} s, between tasks "
              f"{runs[2]['gap_s']:.1f} s, SIR running slower {runs[2]['sir_wall'] - runs[1]['sir_wall']:+.1f} s "
              f"(its CPU/wall {cpu_ratio * 100:.0f} % of the 1-worker run's: CPU contention), "
              f"SIR CPU {runs[2]['sir_cpu'] - runs[1]['sir_cpu']:+.1f} s")

    if "c" in parts:
        # (c) assisted from ME vs reference from HSRA
        me = get_backend("me", {"lines": ["FeI_6301", "FeI_6302"], "noise": 1e-3})
        me.setup((st[:2], wl))
        t0 = time.perf_counter()
        mr = me.invert(st, wl)
        t_me = time.perf_counter() - t0
        seed = {name: mr.param(name) for name in ("B", "inclination", "azimuth", "vlos")}

        def timed_invert(strategy: str, seeded: bool) -> tuple[float, float, object]:
            import resource

            b = sb.SIRBackend({**options, "strategy": strategy})
            init = None
            if seeded:
                init = np.full((n, len(b.parameter_names)), np.nan)
                for name, v in seed.items():
                    init[:, b.parameter_names.index(name)] = v
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            res = b.invert(st, wl, init)
            wall = time.perf_counter() - t0
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            return wall, (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime), res

        t_ref, cpu_ref, rr = timed_invert("reference", False)
        cr = float(np.median(rr.chi2[rr.status == 0]))
        print(f"(c) reference (3 cycles, HSRA start): {t_ref / n:.2f} s/px wall, SIR CPU {cpu_ref / n:.2f} s/px, "
              f"median chi2 {cr:.2f}, ok {int((rr.status == 0).sum())}/{n}")
        for strategy in ("assisted", "assisted_me"):
            t_ass, cpu_ass, ra = timed_invert(strategy, True)
            ok = (ra.status == 0) & (rr.status == 0)
            ca, cr_ok = np.median(ra.chi2[ok]), np.median(rr.chi2[ok])
            print(f"    {strategy} (1 cycle, ME start): {(t_ass + t_me) / n:.2f} s/px wall with ME "
                  f"({t_me / n * 1e3:.1f} ms/px), SIR CPU {cpu_ass / n:.2f} s/px, median chi2 {ca:.2f}, "
                  f"ok {int((ra.status == 0).sum())}/{n}")
            print(f"      speed-up {t_ref / (t_ass + t_me):.2f}x wall, {cpu_ref / cpu_ass:.2f}x SIR CPU (target >= 2x) "
                  f"at median chi2 {(ca / cr_ok - 1) * 100:+.1f} % (target within 5 %)")

    if "d" in parts:
        # (d) the same through the orchestrator: the automatic chunk size with SIR's chunk plan
        import tempfile

        from stokesflow.orchestrator.plan import auto_chunk_pixels

        print(f"(d) stokesflow invert --backend sir --cluster local ({n} pixels as one row; Dask)")
        rates: dict[tuple[int, int], float] = {}
        with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
            for w in (1, 2):
                plans = [auto_chunk_pixels(n, w, **dict(sb.SIRBackend.chunk_plan)), auto_chunk_pixels(n, w)]
                for chunk in dict.fromkeys(plans):
                    r = _orchestrated(options, st, wl, meta, w, chunk, Path(tmp))
                    rates[w, chunk] = r["px_s"]
                    label = "SIR's chunk plan" if chunk == plans[0] else "the plan's default (1024-pixel floor)"
                    print(f"    {w} worker(s), {r['n_chunks']} chunks of {r['chunk_pixels']} pixels ({label}): "
                          f"invert {r['times']['invert']:.1f} s = {r['px_s']:.3f} px/s; cluster start and setup "
                          f"{r['times']['setup']:.1f} s, write {r['times']['write']:.2f} s")
        for chunk in sorted({c for _, c in rates}):
            if (1, chunk) in rates and (2, chunk) in rates:
                print(f"    2-worker efficiency with {chunk}-pixel chunks: "
                      f"{rates[2, chunk] / (2 * rates[1, chunk]) * 100:.0f} %")
        k1, k2 = (auto_chunk_pixels(n, w, **dict(sb.SIRBackend.chunk_plan)) for w in (1, 2))
        print(f"    with SIR's chunk plan (1 worker {k1}, 2 workers {k2} pixels per chunk): "
              f"{rates[2, k2] / (2 * rates[1, k1]) * 100:.0f} %  (target >= 90 %)")


def _timed_command(argv: list[str]) -> tuple[float, float]:
    """Run ``argv``; return (wall s, CPU s of it and every process under it that was waited for)."""
    import resource
    import subprocess

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def assist_seed_benchmark(exe: str, data: Path, crop: str, subset: float, workers: int, work: Path,
                          variants: str, prepare_only: bool) -> None:
    """Part (e): the short phase from the network's guesses, the ME-seeded guesses and the ME result alone."""
    import json

    import h5py

    from stokesflow.orchestrator.assist import AssistSettings, run_assist
    from stokesflow.orchestrator.io import write_observation
    from stokesflow.orchestrator.store import read_result

    (r0, r1), (c0, c1) = ([int(v) for v in part.split(":")] for part in crop.split(","))
    work.mkdir(parents=True, exist_ok=True)
    obs = work / "obs.h5"
    if not obs.exists():
        with h5py.File(data / "sir_hinode_sample.h5") as f:
            attrs = {k: f.attrs[k] for k in ("lines", "noise", "instrument")}
            truth = {k: f["truth"][k][r0:r1, c0:c1] for k in f["truth"]}
            write_observation(obs, f["stokes"][r0:r1, c0:c1], f["wavelength"][:], attrs, truth)
    loop = work / "loop"
    cluster = {"kind": "local", "workers": workers}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    summ = run_assist(obs, loop, AssistSettings(subset=subset, backend="sir", backend_options={"executable": exe},
                                                me_seed="merge", cluster=cluster, progress="none", report=False))
    print(f"(e) {obs} (rows {r0}:{r1}, columns {c0}:{c1}), {workers} local workers; the loop (me_seed=merge, "
          f"subset {summ['subset']['pixels']} px): {time.perf_counter() - t0:.1f} s now; its phases "
          + ", ".join(f"{k} {v:.1f} s" for k, v in summ["phases"].items()))
    if prepare_only:
        return
    sf = [sys.executable, "-m", "stokesflow.orchestrator.cli"]
    common = ["--cluster", "local", "-w", str(workers), "--progress", "none", "-q", "--overwrite"]
    sir = ["--backend", "sir", "-B", f"executable={exe}"]
    starts = {"a": loop / "network_guess.h5", "b": loop / "guess.h5", "c": loop / "me_seed.h5"}
    runs: dict[str, tuple[float, float, float, Path]] = {}
    for v in variants.split(","):
        out = work / f"{v}.h5"
        if v == "me":
            argv = sf + ["invert", "--input", str(obs), "--out", str(out), "--backend", "me"] + common
        elif v == "base":
            argv = sf + ["invert", "--input", str(obs), "--out", str(out)] + sir + ["-B", "strategy=reference"] + common
        else:
            argv = sf + ["invert", "--input", str(obs), "--out", str(out)] + sir + [
                "-B", "strategy=assisted_me", "--init", "previous", "-I", f"file={starts[v]}"] + common
        load = os.getloadavg()[0]
        wall, cpu = _timed_command(argv)
        runs[v] = (wall, cpu, load, out)
        print(f"    {v}: {wall:.1f} s wall, {cpu:.1f} s CPU (load before {load:.1f}): {' '.join(argv[2:])}")
    if "base" not in runs:
        return
    bw, bc, _, bout = runs["base"]
    bchi = float(np.nanmedian(np.where(read_result(bout).status == 0, read_result(bout).chi2, np.nan)))
    me_w, me_c = runs.get("me", (0.0, 0.0))[:2]
    print(f"    baseline (reference from HSRA): {bw:.1f} s wall, {bc:.1f} s CPU, median chi2 {bchi:.2f}")
    for v, label in (("a", "network alone"), ("b", "ME seed + network"), ("c", "ME seed alone")):
        if v not in runs:
            continue
        w, c, _, out = runs[v]
        if v in "bc":
            w, c = w + me_w, c + me_c
        r = read_result(out)
        chi = float(np.nanmedian(np.where(r.status == 0, r.chi2, np.nan)))
        print(f"    ({v}) {label}: {w:.1f} s wall ({bw / w:.2f}x), {c:.1f} s CPU ({bc / c:.2f}x), median chi2 "
              f"{chi:.2f} ({(chi / bchi - 1) * 100:+.1f} %), failed {int((r.status == 2).sum())}"
              + (" (ME counted)" if v in "bc" else ""))
    print("    " + json.dumps({k: [round(x, 2) for x in t[:3]] for k, t in runs.items()}))


def _lw_chunk(args: tuple) -> float:
    from stokesflow.backends.lightweaver.backend import LightweaverBackend

    params, wl = args
    b = LightweaverBackend({"lines": ["FeI_6301", "FeI_6302"]})
    b.synthesize({"B": params[:1]}, wl)  # context set-up outside the timing
    t0 = time.perf_counter()
    b.synthesize({"B": params}, wl)
    return time.perf_counter() - t0


def lightweaver_benchmark(n: int, repeat: int) -> None:
    from stokesflow.backends.lightweaver.backend import LightweaverBackend

    wl = 6300.884 + 0.021549 * np.arange(112)
    b = LightweaverBackend({"lines": ["FeI_6301", "FeI_6302"]})
    t0 = time.perf_counter()
    b.synthesize({"B": np.array([100.0])}, wl)
    setup = time.perf_counter() - t0
    B = np.linspace(0, 3000, n)
    per = min(_lw_chunk((B, wl)) for _ in range(repeat)) / n
    print(f"Lightweaver: context set-up {setup:.1f} s, synthesis {per * 1e3:.0f} ms per pixel (112 points, 2 lines)")
    rates = {}
    for w in (1, 2):
        half = [(B[i::w], wl) for i in range(w)]
        t0 = time.perf_counter()
        with ProcessPoolExecutor(w) as ex:
            list(ex.map(_lw_chunk, half))
        rates[w] = n / (time.perf_counter() - t0)
        print(f"{w} worker(s): {rates[w]:.2f} px/s (set-up included)")
    print(f"parallel efficiency with 2 workers: {rates[2] / (2 * rates[1]) * 100:.0f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pixels", type=int, default=24)
    ap.add_argument("--sir", default=os.environ.get("STOKESFLOW_SIR", ""))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--chunk", type=int, default=0, help="pixels per task in (b) (default: pixels / 8)")
    ap.add_argument("--parts", default="abcd", help="which parts to run: any of a, b, c, d, e (default: abcd)")
    ap.add_argument("--crop", default="4:20,4:20", help="(e) rows,columns of the SIR sample")
    ap.add_argument("--subset", type=float, default=0.05, help="(e) the loop's --subset")
    ap.add_argument("--workers", type=int, default=2, help="(e) local workers")
    ap.add_argument("--work", type=Path, default=Path("bench-assist-seed"), help="(e) working folder (resumed)")
    ap.add_argument("--variants", default="me,a,b,c,base", help="(e) which commands to time")
    ap.add_argument("--prepare-only", action="store_true", help="(e) run the loop only")
    a = ap.parse_args()
    from stokesflow.orchestrator.run import package_versions

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; load average {os.getloadavg()}; SIR "
          f"{a.sir or 'not given'}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()))
    if a.sir and "e" in a.parts:
        assist_seed_benchmark(a.sir, a.data, a.crop, a.subset, a.workers, a.work, a.variants, a.prepare_only)
    if a.sir and a.parts.replace("e", ""):
        sir_benchmark(a.sir, a.data, a.pixels, a.repeat, a.chunk, a.parts)
    elif not a.sir:
        print("no SIR executable (STOKESFLOW_SIR or --sir): measuring Lightweaver synthesis instead", file=sys.stderr)
        lightweaver_benchmark(a.pixels, a.repeat)


if __name__ == "__main__":
    main()
