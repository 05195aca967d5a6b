"""``stokesflow invert --backend stic`` end to end through the orchestrator, with the STiC.x TEST DOUBLE:
depth-stratified result datasets on STiC's grid, a bad pixel skipped, the others inverted."""

from __future__ import annotations

import json

import h5py
import numpy as np

from stokesflow.backends.stic.backend import STiCBackend
from stokesflow.orchestrator.cli import main
from stokesflow.orchestrator.io import write_observation

from _stic_doubles import stic_double  # noqa: F401 - the fixture

WL = 6302.4931 + 0.02 * np.arange(-10, 11)


def test_invert_with_stic_writes_depth_stratified_results(stic_double, tmp_path, capsys):
    rng = np.random.default_rng(3)
    st = np.zeros((2, 3, 4, WL.size))
    st[:, :, 0] = 1.0 - 0.5 * np.exp(-(((WL - 6302.4931) / 0.05) ** 2))
    st[:, :, 1:] = rng.normal(0, 1e-3, (2, 3, 3, WL.size))
    st[1, 2, 3, 4] = np.nan  # bad input
    obs = tmp_path / "obs.h5"
    write_observation(obs, st, WL, {"lines": "FeI_6302", "noise": 1e-3, "instrument": "crisp"})
    out = tmp_path / "r.h5"
    flags = [f"-B{k}={stic_double[k]}" for k in ("executable", "mpiexec", "continuum", "scratch")]
    code = main(["invert", "--input", str(obs), "--out", str(out), "--backend", "stic", *flags,
                 "-B", "strategy=assisted", "--cluster", "serial", "--chunk-pixels", "3"])
    assert code == 0, capsys.readouterr()
    guess = STiCBackend(stic_double).guess_model
    with h5py.File(out) as f:
        assert json.loads(f.attrs["stratified"]) == ["T", "Pe", "vmic", "B", "vlos", "inclination", "azimuth"]
        np.testing.assert_array_equal(f["log_tau"][:], guess.ltau500[0])
        assert f["params/B"].shape == (2, 3, guess.ndep) and f["params/B"].attrs["unit"] == "G"
        status = f["status"][:]
        assert status[1, 2] == 3 and (status == 0).sum() == 5
        # the double adds 100 G to the guess's Blong in its one cycle; the guess is SIR's (400 G, 60 deg)
        blong = f["params/B"][:][status == 0] * np.cos(np.deg2rad(f["params/inclination"][:][status == 0]))
        np.testing.assert_allclose(blong, 400.0 * np.cos(np.deg2rad(60.0)) + 100.0, rtol=1e-6)
        assert np.all(f["chunks/done"][:])
