"""stokesflow synth: the observation-file contract, block independence, noise, and an
end-to-end synth -> invert that recovers the true maps."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from stokesflow.backends import get_backend
from stokesflow.orchestrator.cli import EXIT_OK, main
from stokesflow.orchestrator.errors import OrchestratorError
from stokesflow.orchestrator.io import open_observation
from stokesflow.orchestrator.scenes import make_scene
from stokesflow.orchestrator.store import read_result
from stokesflow.orchestrator.synth import synthesize_observation

HMI_OFFSETS_MA = np.array([-172.0, -103.2, -34.4, 34.4, 103.2, 172.0])  # DESIGN.md, HMI tuning


def test_hmi_file_follows_the_contract(tmp_path):
    path = synthesize_observation(tmp_path / "hmi.h5", instrument="hmi", scene="sunspot", size=(10, 14),
                                  noise=0.0, seed=4)
    with h5py.File(path, "r") as h5:
        assert h5["stokes"].shape == (10, 14, 4, 6) and h5["stokes"].dtype == np.float32
        assert h5["wavelength"].dtype == np.float64
        # offsets about the HMI line centre (stokesflow.backends.me.instrument.HMI_LINE_CENTRE, 6173.3433 A)
        np.testing.assert_allclose((h5["wavelength"][:] - 6173.3433) * 1e3, HMI_OFFSETS_MA, atol=1e-6)
        assert h5.attrs["instrument"] == "hmi" and h5.attrs["lines"] == "FeI_6173"
        assert "noise" not in h5.attrs  # noise-free file
        truth = {n: h5["truth"][n][:] for n in h5["truth"]}
        stokes = h5["stokes"][:]
    maps = make_scene("sunspot", 10, 14, seed=4)
    me = get_backend("me", {"lines": ["FeI_6173"]})
    assert sorted(truth) == sorted(me.parameter_names)
    for name in me.parameter_names:
        np.testing.assert_array_equal(truth[name], maps[name].astype(np.float32))
    # without noise the profiles are the ME synthesis of the truth (float32 rounding only)
    params = np.stack([maps[n].ravel() for n in me.parameter_names], axis=1)
    expected = me.synthesize(params, 6173.3433 + 1e-3 * HMI_OFFSETS_MA).reshape(10, 14, 4, 6)
    np.testing.assert_allclose(stokes, expected, rtol=0, atol=1e-6)
    obs = open_observation(path)  # the reader of the other half of the contract accepts it
    assert (obs.ny, obs.nx, obs.nw) == (10, 14, 6) and obs.lines == ("FeI_6173",)


def test_hinode_grid_and_lines(tmp_path):
    path = synthesize_observation(tmp_path / "sp.h5", instrument="hinode", scene="quiet", size=(3, 5), seed=1)
    obs = open_observation(path)
    assert obs.nw == 112 and obs.lines == ("FeI_6301", "FeI_6302")
    # Hinode/SP sampling: 112 points of 21.549 mA from 6300.884 A
    np.testing.assert_allclose(obs.wavelength, 6300.884 + 0.021549 * np.arange(112), rtol=0, atol=1e-9)
    assert obs.meta["instrument"] == "hinode"


def test_blocks_and_noise_are_reproducible(tmp_path):
    kw = dict(instrument="hmi", scene="mixed", size=(16, 20), seed=9)
    a = synthesize_observation(tmp_path / "a.h5", noise=1e-2, rows_per_block=3, **kw)
    b = synthesize_observation(tmp_path / "b.h5", noise=1e-2, **kw)
    c = synthesize_observation(tmp_path / "c.h5", noise=0.0, **kw)
    with h5py.File(a) as fa, h5py.File(b) as fb, h5py.File(c) as fc:
        np.testing.assert_array_equal(fa["stokes"][:], fb["stokes"][:])  # block size does not matter
        diff = fa["stokes"][:].astype(np.float64) - fc["stokes"][:]
    # 7680 Gaussian deviates of sigma 1e-2: the sample std is within 3 % (about 4 standard errors)
    assert abs(diff.std() / 1e-2 - 1.0) < 0.03 and abs(diff.mean()) < 1e-3


def test_errors(tmp_path):
    with pytest.raises(OrchestratorError, match="unknown synthetic instrument 'dkist'"):
        synthesize_observation(tmp_path / "x.h5", instrument="dkist")
    with pytest.raises(OrchestratorError, match="unknown scene 'flare'"):
        synthesize_observation(tmp_path / "x.h5", scene="flare")
    (tmp_path / "x.h5").write_text("taken")
    with pytest.raises(OrchestratorError, match="already exists"):
        synthesize_observation(tmp_path / "x.h5")
    assert not list(tmp_path.glob("*.partial"))


def test_synth_then_invert_recovers_the_truth(tmp_path, capsys):
    obs = tmp_path / "obs.h5"
    assert main(["synth", "--instrument", "hmi", "--scene", "sunspot", "--size", "24", "32", "--noise", "1e-3",
                 "--seed", "5", "--out", str(obs)]) == EXIT_OK
    out = tmp_path / "r.h5"
    assert main(["invert", "--input", str(obs), "--backend", "me", "--init", "default", "--cluster", "serial",
                 "--chunk-pixels", "256", "--out", str(out), "--progress", "none"]) == EXIT_OK
    r = read_result(out)
    truth = open_observation(obs).read_truth()
    strong = (r.status == 0) & (truth["B"] > 500.0)
    assert strong.sum() > 50
    # Measured on this scene (seed 5, noise 1e-3): median |dB| about 5 G, |dinc| 0.2 deg, |dvlos| 0.01 km/s;
    # the bounds leave a wide margin so they test the wiring, not the solver's last digit.
    assert np.median(np.abs(r.params["B"] - truth["B"])[strong]) < 30.0
    assert np.median(np.abs(r.params["inclination"] - truth["inclination"])[strong]) < 2.0
    assert np.median(np.abs(r.params["vlos"] - truth["vlos"])[strong]) < 0.1
