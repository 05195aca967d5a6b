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


def _strong_field_errors(obs, out):
    """Median |dB| [G] and |dinc| [deg] of the ok pixels above 500 G, against /truth."""
    r = read_result(out)
    truth = open_observation(obs).read_truth()
    strong = (r.status == 0) & (truth["B"] > 500.0)
    assert strong.sum() > 20
    return (float(np.median(np.abs(r.params["B"] - truth["B"])[strong])),
            float(np.median(np.abs(r.params["inclination"] - truth["inclination"])[strong])))


def test_synth_through_the_hmi_filters_then_invert_uses_them_untold(tmp_path):
    import json

    obs = tmp_path / "obs.h5"
    assert main(["synth", "--instrument", "hmi", "-B", "instrument=hmi_filters", "--scene", "sunspot",
                 "--size", "16", "20", "--noise", "1e-3", "--seed", "3", "--out", str(obs), "-q"]) == EXIT_OK
    with h5py.File(obs) as h5:
        assert h5.attrs["spectral_instrument"] == "hmi_filters"
    common = ["--cluster", "serial", "--progress", "none", "-q", "--input", str(obs)]
    out = tmp_path / "r.h5"
    assert main(["invert", *common, "--out", str(out)]) == EXIT_OK  # no -B instrument
    assert json.loads(read_result(out).attrs["backend_options"])["instrument"] == "hmi_filters"
    d_b, d_inc = _strong_field_errors(obs, out)
    # the filtergrams fitted through the same filters: errors of a few G (measured 4.0 G, 0.16 deg here)
    assert d_b < 30.0 and d_inc < 2.0
    # the same data fitted as if sampled at the six points (explicit -B wins) are far off:
    # the filters smear the line, so the field inferred from the unsmeared model is wrong (measured 74 G)
    grid = tmp_path / "grid.h5"
    assert main(["invert", *common, "--out", str(grid), "-B", "instrument=grid"]) == EXIT_OK
    assert json.loads(read_result(grid).attrs["backend_options"])["instrument"] == "grid"
    assert _strong_field_errors(obs, grid)[0] > 3 * d_b


def test_synth_states_a_psf_and_measured_filters(tmp_path):
    import json

    from stokesflow.backends.me.instrument import hmi_filter_profiles

    psf = synthesize_observation(tmp_path / "psf.h5", instrument="hinode", scene="quiet", size=(2, 3),
                                 backend_options={"instrument": "psf", "psf_fwhm": 25.0})
    with h5py.File(psf) as h5:
        assert h5.attrs["spectral_instrument"] == "psf" and h5.attrs["psf_fwhm"] == 25.0
    lam, trans = hmi_filter_profiles()
    np.savez(tmp_path / "filters.npz", wavelength=lam, transmission=trans)
    obs = synthesize_observation(tmp_path / "f.h5", instrument="hmi", scene="sunspot", size=(12, 12), seed=2,
                                 backend_options={"instrument": "filters",
                                                  "filters_file": str(tmp_path / "filters.npz")})
    with h5py.File(obs) as h5:
        assert h5.attrs["spectral_instrument"] == "filters"
        np.testing.assert_array_equal(h5["filters/wavelength"][:], lam)
        np.testing.assert_array_equal(h5["filters/transmission"][:], trans)
    out = tmp_path / "r.h5"
    assert main(["invert", "--input", str(obs), "--out", str(out), "--cluster", "serial", "--progress", "none",
                 "-q"]) == EXIT_OK
    assert json.loads(read_result(out).attrs["backend_options"])["instrument"] == "filters"
    d_b, _ = _strong_field_errors(obs, out)
    assert d_b < 30.0


def test_synthesis_goes_block_by_block(tmp_path, monkeypatch):
    # the scene, the profiles and the writes all come in blocks of rows_per_block rows:
    # memory is that of a block, whatever the field size (timings: benchmarks/orchestrator_scaling.py)
    import stokesflow.orchestrator.scenes as scenes

    asked = []
    real = scenes.make_scene

    def spy(kind, ny, nx, **kw):
        asked.append(kw["rows"])
        return real(kind, ny, nx, **kw)

    monkeypatch.setattr(scenes, "make_scene", spy)
    synthesize_observation(tmp_path / "b.h5", size=(10, 7), rows_per_block=3, noise=0.0)
    assert asked == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)]
