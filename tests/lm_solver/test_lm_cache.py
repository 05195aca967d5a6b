"""On-disk caching of a model-bound engine across processes (numba 0.68 finding).

What this checks (see the stokesflow.lm_solver._kernels docstring):
* a caller's ``@njit(cache=True)`` wrapper that calls the inlined engine with
  its model as a global is compiled once and loaded from the cache by the
  next process (no "Cannot cache" warning: warnings are errors here);
* the direct path ``fit(model, ...)`` (dispatcher passed as an argument)
  writes nothing to the cache, since such an entry could never be reused
  (with ``cache=True`` every process would add one more dead entry).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
from _lm_models import TOY_LINE, toy_ctx, toy_model_impl

import stokesflow.lm_solver as lm_solver
from stokesflow.lm_solver import fit

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _run(cache_dir: Path, *flags: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir),
               PYTHONPATH=os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-W", "error::numba.core.errors.NumbaWarning",
         str(HERE / "_lm_cached_wrapper.py"), *flags],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cached_wrapper_is_loaded_by_a_second_process(tmp_path: Path) -> None:
    cache = tmp_path / "numba_cache"
    cold = _run(cache)
    warm = _run(cache)
    print(f"cold process: wrapper {cold['wrapper_s']:.2f} s (compile); "
          f"warm process: wrapper {warm['wrapper_s']:.2f} s")
    assert cold["misses"] == 1 and cold["hits"] == 0
    assert warm["hits"] == 1 and warm["misses"] == 0
    assert warm["params"] == cold["params"]
    np.testing.assert_allclose(cold["params"], [1.0, 2.0], atol=0.02)
    # the second process loaded the cached wrapper (a hit, no compile); the timings above are
    # printed for information only (loading ~0.3 s vs compiling ~5 s measured here)
    cached = [p.name for p in cache.rglob("*.nbi")]
    assert any("fit_line_impl" in name for name in cached)
    assert not any("fit_pixels_impl" in name for name in cached), cached


def test_direct_path_writes_no_cache_entry() -> None:
    x = np.linspace(0.0, 1.0, 5)
    res = fit(toy_model_impl, toy_ctx(TOY_LINE, x), (2.0 * x)[None, :], np.zeros(2))
    assert res.success[0]
    dirs = [Path(lm_solver.__file__).parent / "__pycache__"]
    if numba.config.CACHE_DIR:
        dirs.append(Path(numba.config.CACHE_DIR))
    found = [p for d in dirs if d.is_dir() for p in d.rglob("*fit_pixels_impl*")]
    assert found == []
