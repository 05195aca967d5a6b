"""Shared helpers of the orchestrator tests: small observations, configurations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stokesflow.orchestrator.config import Config, load_config

__all__ = [
    "HMI_WAVELENGTH",
    "random_me_params",
    "write_hmi_observation",
    "make_config",
    "assert_same_result",
    "assisted_phase_interrupted_and_resumed",
]

#: HMI tuning positions about 6173.3433 A (DESIGN.md: +-34.4, +-103.2, +-172.0 mA).
HMI_WAVELENGTH = 6173.3433 + 1e-3 * np.array([-172.0, -103.2, -34.4, 34.4, 103.2, 172.0])


def random_me_params(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` ME parameter vectors (B, inc, azi, vlos, dw, eta0, damping, S0, S1) in solar ranges."""
    return np.column_stack([
        rng.uniform(100.0, 2500.0, n), rng.uniform(10.0, 170.0, n), rng.uniform(5.0, 175.0, n),
        rng.uniform(-2.0, 2.0, n), rng.uniform(25.0, 40.0, n), rng.uniform(4.0, 15.0, n),
        rng.uniform(0.05, 0.4, n), rng.uniform(0.2, 0.4, n), rng.uniform(0.6, 0.8, n),
    ])


def write_hmi_observation(
    path: Path,
    ny: int = 8,
    nx: int = 12,
    *,
    seed: int = 0,
    noise: float = 1e-3,
    nan_pixels: tuple[int, ...] = (),
    zero_pixels: tuple[int, ...] = (),
    poison_pixels: tuple[int, ...] = (),
    lines: str = "FeI_6173",
    state_noise: bool = True,
) -> Path:
    """A small HMI-like observation of random ME pixels (written with the real ME synthesis).

    ``nan_pixels`` (flat indices) get NaN in Stokes Q; ``zero_pixels`` are 0 in every Stokes
    value (no light: the padding of an aligned or mosaicked map); ``poison_pixels`` get
    Stokes I = POISON_VALUE at the first wavelength (see the doubles). With
    ``state_noise`` false the file has no ``noise`` attribute (the run estimates it).
    """
    from stokesflow.backends import get_backend
    from stokesflow.orchestrator.io import write_observation

    from _orchestrator_doubles import POISON_VALUE

    rng = np.random.default_rng(seed)
    me = get_backend("me", {"lines": ["FeI_6173"]})
    params = random_me_params(ny * nx, rng)
    stokes = me.synthesize(params, HMI_WAVELENGTH)
    stokes += noise * rng.standard_normal(stokes.shape)
    for i in nan_pixels:
        stokes[i, 1, 2] = np.nan
    for i in zero_pixels:
        stokes[i] = 0.0
    for i in poison_pixels:
        stokes[i, 0, 0] = POISON_VALUE
    truth = {n: params[:, j].reshape(ny, nx) for j, n in enumerate(me.parameter_names)}
    write_observation(
        path, stokes.reshape(ny, nx, 4, -1).astype(np.float32), HMI_WAVELENGTH,
        {"instrument": "hmi", "lines": lines, "noise": noise if state_noise else None}, truth,
    )
    return path


def make_config(obs: Path, out: Path, *, kind: str = "serial", **tables: Any) -> Config:
    """Defaults + ``--input obs --out out --cluster kind`` + extra tables (``run={...}``)."""
    layer: dict[str, Any] = {
        "input": {"path": str(obs)},
        "output": {"path": str(out)},
        "run": {"progress": "none"},
        "cluster": {"kind": kind},
    }
    for table, values in tables.items():
        layer.setdefault(table, {}).update(values)
    return load_config(None, layer)


def assert_same_result(a: Any, b: Any) -> None:
    """Two ResultFile objects hold bit-identical maps (NaN equal to NaN)."""
    assert set(a.params) == set(b.params)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=f"params/{name}")
        np.testing.assert_array_equal(a.sigma[name], b.sigma[name], err_msg=f"sigma/{name}")
    np.testing.assert_array_equal(a.chi2, b.chi2, err_msg="chi2")
    np.testing.assert_array_equal(a.n_iter, b.n_iter, err_msg="n_iter")
    np.testing.assert_array_equal(a.status, b.status, err_msg="status")


def assisted_phase_interrupted_and_resumed(obs: Path, out: Path, settings: Any, nchunks: int,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_assist`` interrupted in its assisted phase resumes that phase alone.

    The assisted phase (``--init previous``) dies at its 5th chunk, when
    chunks 0 and 1 are on disk (3 in flight per serial worker); a second run
    with the same ``settings`` must redo only the ``nchunks`` - done chunks of
    that phase and leave the reference (``subset.h5``) untouched.
    """
    import json

    import stokesflow.orchestrator.run as run_module
    from stokesflow.orchestrator.assist import run_assist
    from stokesflow.orchestrator.store import inspect_result, read_result

    calls = {"n": 0}
    real = run_module.invert_chunk

    def dies_in_assisted(ctx: Any, index: Any, start: int, stop: int) -> Any:
        if ctx.init.name == "previous":
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
        return real(ctx, index, start, stop)

    monkeypatch.setattr(run_module, "invert_chunk", dies_in_assisted)
    with pytest.raises(KeyboardInterrupt):
        run_assist(obs, out, settings)
    state = json.loads((out / "summary.json").read_text())
    # every phase before the assisted one is done (me_seed among them when the settings run it)
    assert state["done"] == ["subset", "reference", "train"] + (["me_seed"] if settings.me_seed != "off" else []) \
        + ["predict"]
    # what the command line says after "interrupted:"
    import argparse

    from stokesflow.orchestrator.nn_cli import _assist_interrupted

    assert _assist_interrupted(argparse.Namespace(out=str(out))) == (
        f"finished phases in {out}: {', '.join(state['done'])}; run the same command again to go on (finished "
        "chunks and epochs are kept)")
    info = inspect_result(out / "assisted.h5")
    assert 0 < info["n_done"] < nchunks and not info["complete"]
    ref_mtime = (out / "subset.h5").stat().st_mtime_ns
    monkeypatch.setattr(run_module, "invert_chunk", real)
    data = run_assist(obs, out, settings)
    assert data["ran"] == ["assisted"]
    assert (out / "subset.h5").stat().st_mtime_ns == ref_mtime  # the reference was not redone
    a = read_result(out / "assisted.h5")
    assert a.done.all() and a.attrs["runs"] == 2 and a.attrs["chunks_computed"] == nchunks - info["n_done"]
