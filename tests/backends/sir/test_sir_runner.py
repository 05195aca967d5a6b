"""The SIR runner and backend against a TEST DOUBLE of sir.x (doubles/sir_test_double.py).

The double reproduces SIR's real failure modes (exit 0 with STOP, missing outputs,
zero chi2 for NaN input, hanging, crashing, non-zero exit): each failed pixel must
get status 2 with its reason, and its neighbours must be unaffected.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from stokesflow.backends import STATUS_BAD_INPUT, STATUS_FAILED, STATUS_OK, get_backend, list_backends
from stokesflow.backends.base import ConfigError
from stokesflow.backends.sir import io
from stokesflow.backends.sir.backend import ENV_VAR, SIRBackend
from stokesflow.backends.sir.errors import SIRError
from stokesflow.backends.sir.runner import ScratchFolder, resolve_executable, run_code

from conftest import assert_unavailable_until_configured  # noqa: E402

DOUBLE = Path(__file__).parent / "doubles" / "sir_test_double.py"
WL = 6300.89 + 0.021549 * np.arange(112)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the test double is a POSIX executable script")

MODES = {"stop": 0.9001, "missing": 0.9002, "nan": 0.9003, "hang": 0.9004, "crash": 0.9005, "exit3": 0.9006}


def _pixels(modes: list[str]) -> np.ndarray:
    """One Hinode-like pixel per mode; the first I value tells the double how to behave."""
    rng = np.random.default_rng(11)
    st = np.zeros((len(modes), 4, WL.size))
    st[:, 0] = 1.0 - 0.5 * np.exp(-(((WL - 6302.4931) / 0.05) ** 2))
    st[:, 1:] = rng.normal(0, 1e-3, (len(modes), 3, WL.size))
    for i, m in enumerate(modes):
        if m in MODES:
            st[i, 0, 0] = MODES[m]
        elif m == "nan_input":
            st[i, 2, 5] = np.nan
    return st


def _backend(tmp_path: Path, **kw) -> SIRBackend:
    opts = {"executable": str(DOUBLE), "lines": ["FeI_6301", "FeI_6302"], "scratch": str(tmp_path / "scratch"),
            "timeout": 20.0}
    opts.update(kw)
    return SIRBackend(opts)


def test_failed_pixels_get_status_2_with_reason_and_neighbours_are_unaffected(tmp_path):
    modes = ["ok", "stop", "ok", "missing", "nan", "crash", "exit3", "nan_input", "ok"]
    b = _backend(tmp_path)
    r = b.invert(_pixels(modes), WL)
    expected = [STATUS_OK, STATUS_FAILED, STATUS_OK, STATUS_FAILED, STATUS_FAILED, STATUS_FAILED, STATUS_FAILED,
                STATUS_BAD_INPUT, STATUS_OK]
    assert r.status.tolist() == expected
    assert "STOP: The  magnetic field" in r.errors[1] and "exit code 0" in r.errors[1]
    assert "without writing guess_3.mod" in r.errors[3]
    assert "zero chi2" in r.errors[4]
    assert "crashed (killed by signal SIGSEGV)" in r.errors[5]
    assert "exited with code 3" in r.errors[6]
    assert "NaN" in r.errors[7]
    assert set(r.errors) == {1, 3, 4, 5, 6, 7}
    bad = r.status != STATUS_OK
    assert np.all(np.isnan(r.params[bad])) and np.all(np.isnan(r.chi2[bad]))
    for name, arr in r.stratified.items():
        assert np.all(np.isnan(arr[bad])), name
    # the neighbours: exactly what the same pixels give when inverted alone
    alone = b.invert(_pixels(["ok"]), WL)
    for i in (0, 2, 8):
        np.testing.assert_array_equal(r.params[i], alone.params[0])
        np.testing.assert_array_equal(r.stratified["B"][i], alone.stratified["B"][0])
        assert r.chi2[i] == 1.5 and r.n_iter[i] == 3 * 4  # 3 cycles of 4 iterations in the double's log
    # nothing left behind
    assert list((tmp_path / "scratch").iterdir()) == []


def test_result_units_and_depth_grid(tmp_path):
    b = _backend(tmp_path)
    r = b.invert(_pixels(["ok"]), WL)
    guess = b.guess_model
    np.testing.assert_array_equal(r.log_tau, guess.log_tau)
    assert r.stratified["T"].shape == (1, guess.ndepth)
    # the double doubles B; stokesflow keeps SIR's G, converts cm/s to km/s, % to a fraction
    np.testing.assert_allclose(r.stratified["B"][0], 2 * guess.B)
    np.testing.assert_allclose(r.stratified["vmic"][0], guess.vmic * 1e-5)
    np.testing.assert_allclose(r.stratified_sigma["T"][0], 0.01 * guess.T, rtol=1e-5)
    k = int(np.argmin(np.abs(guess.log_tau + 1.0)))
    assert r.param("B")[0] == pytest.approx(2 * guess.B[k])
    assert r.param("T")[0] == pytest.approx(guess.T[k], rel=1e-5)
    assert r.param("stray_light")[0] == pytest.approx(guess.stray_light / 100)
    np.testing.assert_allclose(r.synthetic[0], _pixels(["ok"])[0], atol=1e-6)


def test_time_out_fails_only_that_pixel(tmp_path):
    b = _backend(tmp_path, timeout=1.0)
    r = b.invert(_pixels(["hang", "ok"]), WL)
    assert r.status.tolist() == [STATUS_FAILED, STATUS_OK]
    assert "timed out after 1 s" in r.errors[0]


def test_keep_failed_keeps_the_folder_of_a_failed_pixel(tmp_path):
    b = _backend(tmp_path, keep_failed=True)
    r = b.invert(_pixels(["ok", "stop"]), WL)
    kept = Path(r.errors[1].split("its folder is kept in ")[1])
    assert kept.is_dir() and kept.name.endswith("-pixel1")
    assert {"sir.trol", "observed.per", "guess.mod", "LINES", "ABUNDANCES", "grid.grid"} <= {p.name for p in kept.iterdir()}
    _, _, kept_obs = io.parse_profiles((kept / "observed.per").read_text())
    assert kept_obs[0, 0] == pytest.approx(MODES["stop"])
    assert list((tmp_path / "scratch").iterdir()) == [kept]


def test_initial_guess_seeds_field_and_velocity(tmp_path):
    b = _backend(tmp_path, strategy="assisted")
    init = np.full((1, len(b.parameter_names)), np.nan)
    names = b.parameter_names
    init[0, names.index("B")] = 800.0
    init[0, names.index("inclination")] = 30.0
    init[0, names.index("vlos")] = -1.5
    init[0, names.index("T")] = 5000.0
    m = b._model_for(init[0])
    np.testing.assert_allclose(m.B, 800.0)
    np.testing.assert_allclose(m.gamma, 30.0)
    np.testing.assert_allclose(m.vlos, -1.5e5)
    k = int(np.argmin(np.abs(m.log_tau + 1.0)))
    assert m.T[k] == pytest.approx(5000.0)
    r = b.invert(_pixels(["ok"]), WL, init)
    assert r.param("B")[0] == pytest.approx(1600.0)  # the double doubles the guess field


def test_runner_outcomes_directly(tmp_path):
    folder = ScratchFolder("t-", str(tmp_path))
    out = run_code([sys.executable, "-c", "print('hello')"], folder.path, stdin=None, timeout=10, expected=["x"])
    assert not out.ok and out.reason == "exited 0 without writing x"
    out = run_code([sys.executable, "-c", "open('x','w')"], folder.path, stdin=None, timeout=10, expected=["x"])
    assert out.ok and out.reason == ""
    folder.cleanup()
    assert not folder.path.exists()


def test_executable_resolution_and_availability(tmp_path, monkeypatch):
    assert_unavailable_until_configured("sir", SIRBackend, ENV_VAR, "sir.x", tmp_path, monkeypatch)
    monkeypatch.setenv(ENV_VAR, str(DOUBLE))
    assert SIRBackend.is_available() == (True, "")
    assert list_backends()["sir"] == (True, "")
    # an executable given by option counts too
    monkeypatch.delenv(ENV_VAR)
    assert list_backends({"sir": {"executable": str(DOUBLE)}})["sir"] == (True, "")
    assert isinstance(get_backend("sir", {"executable": str(DOUBLE)}), SIRBackend)
    with pytest.raises(SIRError, match="option executable"):
        resolve_executable(str(tmp_path / "missing"), ENV_VAR, "SIR")


def test_a_code_that_fails_the_one_pixel_trial_is_unavailable(tmp_path, monkeypatch):
    wrapper = tmp_path / "garbage_sir.sh"
    wrapper.write_text(f"#!/bin/sh\nSIR_DOUBLE_GARBAGE=1 exec {sys.executable} {DOUBLE}\n")
    wrapper.chmod(0o755)
    ok, why = SIRBackend.is_available({"executable": str(wrapper)})
    assert not ok and "fails a one-pixel trial" in why


def test_options_and_for_observation(tmp_path):
    with pytest.raises(ConfigError, match="strategy"):
        SIRBackend({"strategy": "fast"})
    with pytest.raises(ConfigError, match="unknown parameter 'Bfield'"):
        SIRBackend({"nodes": {"Bfield": "2"}}).options.resolved_strategy()
    st = SIRBackend({"strategy": "assisted", "nodes": {"inclination": "1", "vmac": "1"}, "cycles": 2})
    s = st.options.resolved_strategy()
    assert s.cycles == 2 and s.nodes["gamma"] == "1" and s.nodes["T"] == "5" and s.vmac == "1"
    b = SIRBackend({}).for_observation({"lines": "FeI_6301,FeI_6302", "noise": [1e-3, 2e-3, 2e-3, 2e-3]})
    assert b.options.lines == ("FeI_6301", "FeI_6302") and b.options.noise == (1e-3, 2e-3, 2e-3, 2e-3)
    kept = SIRBackend({"lines": ["FeI_6302"]}).for_observation({"lines": "FeI_6173"})
    assert kept.options.lines == ("FeI_6302",)
    b = _backend(tmp_path)
    b.guess_model  # noqa: B018 - cached, must not travel
    clone = pickle.loads(pickle.dumps(b))
    assert "guess_model" not in clone.__dict__ and clone.options == b.options
    assert b.depth_stratified and [p.name for p in b.stratified_parameters] == [
        "T", "Pe", "vmic", "B", "vlos", "inclination", "azimuth"]


def test_synthesis_through_the_double(tmp_path):
    b = _backend(tmp_path)
    prof = b.synthesize({"B": np.array([100.0, 200.0])}, WL)
    assert prof.shape == (2, 4, WL.size) and np.all(np.isfinite(prof))


def test_env_is_not_needed_when_the_option_gives_the_executable(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    b = _backend(tmp_path)
    b.setup()
    assert os.access(b._executable(), os.X_OK)


def test_chunk_plan_splits_a_small_field_into_many_short_tasks():
    """SIR's chunk plan (keywords of the orchestrator's auto_chunk_pixels): a field under the plan's 1024-pixel
    floor is still split over the workers, with enough tasks per worker that the last ones are short, and a
    large field is capped at 64 pixels per task (about a minute of SIR lost with a worker)."""
    from stokesflow.backends.desire.backend import DesireBackend
    from stokesflow.orchestrator.plan import auto_chunk_pixels

    plan = dict(SIRBackend.chunk_plan)
    assert auto_chunk_pixels(48, 2) == 48  # the default: one task, the second worker idle
    assert auto_chunk_pixels(48, 2, **plan) == 1
    assert auto_chunk_pixels(576, 2, **plan) == 9  # 64 tasks, 32 per worker
    assert auto_chunk_pixels(512 * 512, 2, **plan) == 64
    assert auto_chunk_pixels(1, 8, **plan) == 1
    assert DesireBackend.chunk_plan == SIRBackend.chunk_plan  # DeSIRe's pixels cost more still
