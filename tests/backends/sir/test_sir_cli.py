"""``stokesflow invert --backend sir`` end to end through the orchestrator, with the sir.x TEST DOUBLE:
depth-stratified result datasets, a failed pixel contained, and ``--resume`` of an interrupted file."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from stokesflow.backends.sir.backend import builtin_model
from stokesflow.orchestrator.cli import main
from stokesflow.orchestrator.io import write_observation

DOUBLE = Path(__file__).parent / "doubles" / "sir_test_double.py"
WL = 6300.89 + 0.021549 * np.arange(112)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the test double is a POSIX executable script")


@pytest.fixture
def obs(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    st = np.zeros((3, 4, 4, WL.size))
    st[:, :, 0] = 1.0 - 0.5 * np.exp(-(((WL - 6302.4931) / 0.05) ** 2))
    st[:, :, 1:] = rng.normal(0, 1e-3, (3, 4, 3, WL.size))
    st[1, 2, 0, 0] = 0.9001  # the double answers this pixel with SIR's "STOP" and exit code 0
    st[2, 3, 3, 7] = np.nan  # bad input
    path = tmp_path / "obs.h5"
    write_observation(path, st, WL, {"lines": "FeI_6301,FeI_6302", "noise": 1e-3, "instrument": "hinode"})
    return path


def _invert(obs: Path, out: Path, *extra: str) -> int:
    return main(["invert", "--input", str(obs), "--out", str(out), "--backend", "sir", "-B",
                 f"executable={DOUBLE}", "--cluster", "serial", "--chunk-pixels", "4", *extra])


def test_invert_with_sir_writes_depth_stratified_results(obs, tmp_path, capsys):
    out = tmp_path / "r.h5"
    assert _invert(obs, out) == 0
    hsra = builtin_model("hsra")
    with h5py.File(out) as f:
        strat = json.loads(f.attrs["stratified"])
        assert strat == ["T", "Pe", "vmic", "B", "vlos", "inclination", "azimuth"]
        np.testing.assert_array_equal(f["log_tau"][:], hsra.log_tau)
        assert f["params/B"].shape == (3, 4, hsra.ndepth) and f["sigma/T"].shape == (3, 4, hsra.ndepth)
        assert f["params/vmac"].shape == (3, 4) and f["params/B"].attrs["unit"] == "G"
        status = f["status"][:]
        B = f["params/B"][:]
        assert status[1, 2] == 2 and status[2, 3] == 3
        ok = status == 0
        assert ok.sum() == 10
        # the double doubles the guess field: every good pixel has the same result, the bad ones NaN
        np.testing.assert_allclose(B[ok], np.broadcast_to(2 * hsra.B, (10, hsra.ndepth)), rtol=1e-6)
        assert np.all(np.isnan(B[~ok]))
        assert np.all(f["chunks/done"][:])
    captured = capsys.readouterr()
    assert "failed 1" in captured.out


def test_the_reason_of_a_failed_pixel_is_logged(obs, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="stokesflow.run"):
        assert _invert(obs, tmp_path / "r.h5") == 0
    # pixel (1, 2) of a 3 x 4 field is flat pixel 6
    assert any("pixel 6 failed: SIR stopped with exit code 0: STOP: The  magnetic field" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_resume_finishes_an_interrupted_sir_file(obs, tmp_path):
    out = tmp_path / "r.h5"
    assert _invert(obs, out) == 0
    with h5py.File(out, "r+") as f:  # a driver killed before chunk 1 was marked done
        first = f["params/T"][:]
        f["chunks/done"][1] = False
        f["params/T"][1] = np.nan
        f.attrs["complete"] = False
    assert _invert(obs, out, "--resume") == 0
    with h5py.File(out) as f:
        assert np.all(f["chunks/done"][:])
        np.testing.assert_array_equal(f["params/T"][:], first)


@pytest.mark.slow
def test_a_killed_worker_running_sir_is_replaced_and_its_chunk_retried(obs, tmp_path, monkeypatch):
    with h5py.File(obs, "r+") as f:  # pixel (0, 1): the double kills the worker running it, once
        st = f["stokes"][0, 1]
        st[0, 0] = 0.9007
        f["stokes"][0, 1] = st
    marker = tmp_path / "killed"
    monkeypatch.setenv("SIR_DOUBLE_KILL_MARKER", str(marker))
    out = tmp_path / "r.h5"
    code = main(["invert", "--input", str(obs), "--out", str(out), "--backend", "sir", "-B", f"executable={DOUBLE}",
                 "--cluster", "local", "-C", "workers=2", "--chunk-pixels", "4"])
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a worker died, not the driver
    assert code == 0
    with h5py.File(out) as f:
        assert np.all(f["chunks/done"][:])
        status = f["status"][:]
        assert status[0, 1] == 0 and status[1, 2] == 2 and status[2, 3] == 3 and (status == 0).sum() == 10
