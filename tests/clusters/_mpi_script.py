"""Run a few tasks through ``open_executor(ClusterSpec(kind="mpi"))``.

Started by tests/clusters/test_cluster_mpi.py as::

    mpiexec -n 4 python tests/clusters/_mpi_script.py dask OUTDIR
    mpiexec -n 3 python tests/clusters/_mpi_script.py futures OUTDIR
    mpiexec -n 3 python -m mpi4py.futures tests/clusters/_mpi_script.py futures OUTDIR
    mpiexec -n 2 python tests/clusters/_mpi_script.py futures-crash OUTDIR

The client rank writes OUTDIR/result.json; every rank that gets past the
``with`` block leaves OUTDIR/after-<rank>.  Nothing here imports mpi4py at
module level: a Nanny re-imports this file in each worker it spawns.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _cluster_helpers as h  # noqa: E402

from stokesflow.clusters import ClusterSpec, client_rank, mpi_rank, open_executor  # noqa: E402


def main(mode: str, outdir: str) -> None:
    out = Path(outdir)
    mpi_mode = "dask" if mode == "dask" else "futures"
    spec = ClusterSpec(kind="mpi", mpi_mode=mpi_mode, retries=2, memory_limit="1GiB")
    t0 = time.perf_counter()
    with open_executor(spec) as ex:
        t_open = time.perf_counter() - t0
        result: dict = {"rank": mpi_rank(), "client_rank": client_rank(spec), "open_s": t_open}
        if mode == "futures-crash":
            ex.submit(h.crash_once, str(out / "marker")).result()
            result["survived_crash"] = True
            (out / "result.json").write_text(json.dumps(result))
            return
        setup_dir = out / "setup"
        setup_dir.mkdir()
        ex.run_on_workers(h.record_pid, str(setup_dir))

        futs = [ex.submit(h.square_with_pid, i) for i in range(40)]
        done = list(ex.as_completed(futs))
        values = sorted(f.result()[0] for f in done)
        result["values"] = values
        result["task_pids"] = sorted({f.result()[1] for f in done})
        result["n_yielded"] = len(done)
        result["n_workers"] = ex.n_workers
        result["kwargs"] = ex.submit(h.add, 1.0, b=2.0, scale=3.0).result()
        result["retried"] = ex.submit(h.fail_until, str(out / "counter"), 2).result()
        err = ex.submit(h.raise_value_error, "bad pixel").exception()
        result["error"] = [type(err).__name__, str(err)]
        result["scatter_len"] = ex.submit(h.total_length, ex.scatter(list(range(7)))).result()

        # Per-task cost: many tiny tasks, collected with as_completed.
        n = 400
        t1 = time.perf_counter()
        list(ex.as_completed([ex.submit(h.add, float(i)) for i in range(n)]))
        result["per_task_ms"] = 1e3 * (time.perf_counter() - t1) / n

        if mode == "dask":
            before = ex.info()["worker_pids"]
            result["crash_pid"] = ex.submit(h.crash_once, str(out / "marker")).result()
            # The Nanny restarts the dead worker; give it time to register.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(ex.info()["worker_pids"]) < len(before):
                time.sleep(0.2)
            result["pids_before_crash"] = sorted(before.values())
            result["pids_after_crash"] = sorted(ex.info()["worker_pids"].values())
            # the worker environment of clusters.environ, in the restarted worker process too
            result["worker_environ"] = sorted({ex.submit(h.environ, "MALLOC_MMAP_THRESHOLD_").result()
                                               for _ in range(8)}, key=str)
        info = ex.info()
        result["info"] = {k: v for k, v in info.items() if k != "worker_pids"}
        (out / "result.json").write_text(json.dumps(result))
    Path(out, f"after-{mpi_rank()}").touch()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
