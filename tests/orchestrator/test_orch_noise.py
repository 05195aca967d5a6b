"""The run's noise: stated by the configuration or the observation, else estimated by the
backend from a deterministic sample of valid pixels spread over the whole map; logged,
stored in the result file, handed to the backend, and stable across a resume."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _orchestrator_doubles import NoiseDouble  # noqa: E402
from _orchestrator_helpers import HMI_WAVELENGTH, make_config, write_hmi_observation  # noqa: E402

import stokesflow.clusters as clusters  # noqa: E402
from stokesflow.orchestrator.errors import ObservationError  # noqa: E402
from stokesflow.orchestrator.io import open_observation, write_observation  # noqa: E402
from stokesflow.orchestrator.run import (  # noqa: E402
    NOISE_SAMPLE_PIXELS,
    run_inversion,
    sample_valid_pixels,
    validate_run,
)
from stokesflow.orchestrator.store import read_result  # noqa: E402

SIGMA = (1e-3, 2e-3, 3e-3, 4e-3)


@pytest.fixture
def no_cluster(monkeypatch):
    """Fail the test if an executor is opened."""

    def refuse(spec):
        raise AssertionError("the cluster was started")

    monkeypatch.setattr(clusters, "open_executor", refuse)


@pytest.fixture
def recorded():
    NoiseDouble.SAMPLES.clear()
    NoiseDouble.METAS.clear()
    yield NoiseDouble
    NoiseDouble.SAMPLES.clear()
    NoiseDouble.METAS.clear()


def _cube(path: Path, ny: int, nx: int, valid: np.ndarray) -> Path:
    """An observation whose pixel (y, x) holds y * nx + x in Q, U and V and 1 in I where ``valid``, else NaN."""
    flat = np.arange(ny * nx, dtype=np.float32).reshape(ny, nx)
    stokes = np.broadcast_to(flat[:, :, None, None], (ny, nx, 4, 6)).copy()
    stokes[:, :, 0] = 1.0  # continuum units (the index in I would be refused as counts)
    stokes[~valid] = np.nan
    write_observation(path, stokes, HMI_WAVELENGTH, {"instrument": "hmi", "lines": "FeI_6173"})
    return path


def test_sample_is_valid_spread_and_deterministic(tmp_path):
    ny, nx = 60, 50
    valid = np.ones((ny, nx), bool)
    valid[:10] = False  # an off-disc band of rows
    valid[::7, ::3] = False  # scattered bad pixels
    obs = open_observation(_cube(tmp_path / "obs.h5", ny, nx, valid))
    stokes, index = sample_valid_pixels(obs, target=200)
    assert stokes.shape == (index.size, 4, 6) and stokes.dtype == np.float32
    assert np.isfinite(stokes).all()
    # each sampled pixel is the pixel its index names (the cube holds the flat index)
    np.testing.assert_array_equal(stokes[:, 1, 0], index.astype(np.float32))
    assert valid.ravel()[index].all() and np.unique(index).size == index.size
    # up to the target; the rows of the empty band give their share to the rows after them
    assert 190 <= index.size <= 200
    y, x = np.divmod(index, nx)
    assert y.min() <= 12 and y.max() == ny - 1 and np.unique(y).size >= 10
    assert x.min() <= 3 and x.max() >= nx - 4  # spread over the columns, not the first 200 pixels
    again = sample_valid_pixels(obs, target=200)
    np.testing.assert_array_equal(again[0], stokes)
    np.testing.assert_array_equal(again[1], index)


def test_sample_of_a_small_map_takes_every_valid_pixel(tmp_path):
    valid = np.ones((8, 12), bool)
    valid.ravel()[[5, 40]] = False
    obs = open_observation(_cube(tmp_path / "obs.h5", 8, 12, valid))
    _, index = sample_valid_pixels(obs)
    np.testing.assert_array_equal(index, np.flatnonzero(valid.ravel()))


def test_a_valid_pixel_between_the_sampled_rows_is_found(tmp_path):
    valid = np.zeros((200, 10), bool)
    valid[5, 7] = True  # the rows sampled for 20 pixels are 0, 10, 21, ...: row 5 is not one of them
    obs = open_observation(_cube(tmp_path / "obs.h5", 200, 10, valid))
    stokes, index = sample_valid_pixels(obs, target=20)
    assert index.tolist() == [57] and stokes[0, 1, 0] == 57.0


def test_a_map_without_valid_pixels_is_an_error_before_any_work(tmp_path, no_cluster):
    obs = tmp_path / "nan.h5"
    write_observation(obs, None, HMI_WAVELENGTH, {"instrument": "hmi", "lines": "FeI_6173"}, shape=(4, 5))
    out = tmp_path / "r.h5"
    with pytest.raises(ObservationError, match=r"nan\.h5: no valid pixel: every one of the 4 x 5 pixels"):
        run_inversion(make_config(obs, out))
    assert not out.exists()


def test_noise_is_estimated_when_nobody_states_it(tmp_path, recorded, caplog):
    obs = write_hmi_observation(tmp_path / "obs.h5", 8, 12, nan_pixels=(5, 40), state_noise=False)
    out = tmp_path / "r.h5"
    with caplog.at_level(logging.INFO, logger="stokesflow"):
        summary = run_inversion(make_config(obs, out, run={"chunk_pixels": 48}),
                                backend=NoiseDouble({"sigma": list(SIGMA)}))
    # the backend got a sample of valid pixels: here all 94 of them (fewer than NOISE_SAMPLE_PIXELS)
    sample = recorded.SAMPLES[-1]
    assert sample.shape == (94, 4, 6) and np.isfinite(sample).all() and 94 < NOISE_SAMPLE_PIXELS
    # ... and was built for the observation with the estimate as its noise (four floats)
    assert list(recorded.METAS[-1]["noise"]) == list(SIGMA)
    assert "noise estimated from 94 pixels: I=0.001, Q=0.002, U=0.003, V=0.004" in caplog.text
    a = read_result(out).attrs
    assert a["noise_source"] == "estimated"
    np.testing.assert_array_equal(a["noise"], SIGMA)
    assert summary.noise.source == "estimated" and "noise (estimated from 94 pixels)" in summary.report()
    # the estimate is deterministic: a resume's fingerprint matches (a different estimate is refused)
    again = run_inversion(make_config(obs, out, run={"chunk_pixels": 48}, output={"resume": True}),
                          backend=NoiseDouble({"sigma": list(SIGMA)}))
    assert again.already_complete


def test_a_different_estimate_is_refused_on_resume(tmp_path, recorded):
    from stokesflow.orchestrator.store import ResumeError

    obs = write_hmi_observation(tmp_path / "obs.h5", 8, 12, state_noise=False)
    out = tmp_path / "r.h5"
    run_inversion(make_config(obs, out, run={"chunk_pixels": 48}), backend=NoiseDouble({"sigma": list(SIGMA)}))
    with pytest.raises(ResumeError, match="noise"):
        run_inversion(make_config(obs, out, run={"chunk_pixels": 48}, output={"resume": True}),
                      backend=NoiseDouble({"sigma": [5e-3] * 4}))


@pytest.mark.parametrize(
    "state_noise, layer, source, expected",
    [
        (True, {}, "observation", (1e-3,) * 4),
        (True, {"input": {"noise": 2e-3}}, "configuration", (2e-3,) * 4),
        (False, {"input": {"noise": [1e-3, 2e-3, 2e-3, 1.5e-3]}}, "configuration", (1e-3, 2e-3, 2e-3, 1.5e-3)),
        (False, {"backend": {"me": {"noise": 3e-3}}}, "configuration", (3e-3,) * 4),
    ],
    ids=["file", "input-scalar", "input-four", "backend-option"],
)
def test_stated_noise_is_not_estimated(state_noise, layer, source, expected, tmp_path, recorded, no_cluster):
    obs = write_hmi_observation(tmp_path / "obs.h5", 4, 6, state_noise=state_noise)
    prep = validate_run(make_config(obs, tmp_path / "r.h5", **layer))
    assert prep.noise.source == source
    np.testing.assert_allclose(prep.noise.sigma, expected, rtol=0, atol=0)
    assert not recorded.SAMPLES


def test_the_me_backend_estimates_the_noise_of_a_synthetic_map(tmp_path, no_cluster):
    # 400 pixels with Gaussian noise of sigma 1e-3 in every Stokes parameter and no noise attribute
    obs = write_hmi_observation(tmp_path / "obs.h5", 20, 20, noise=1e-3, state_noise=False)
    prep = validate_run(make_config(obs, tmp_path / "r.h5"))
    assert prep.noise.source == "estimated" and prep.noise.n_pixels == 400
    # Q, U, V are noise around a weak signal in most pixels: the estimate is within a factor
    # 1.5 of the true 1e-3 (the ME engineer's tests pin the estimator itself more tightly)
    for s, v in zip("QUV", prep.noise.sigma[1:]):
        assert 0.67e-3 < v < 1.5e-3, (s, v)


def test_a_file_without_noise_inverts_as_well_as_the_same_file_with_it(tmp_path):
    """Issue 6: the same observation, once with its true noise stated and once without (as real
    filtergrams come), inverted through run_inversion: same pixels converged, same accuracy."""
    import h5py

    from stokesflow.orchestrator.synth import synthesize_observation

    stated = synthesize_observation(tmp_path / "stated.h5", instrument="hmi", scene="mixed", size=(24, 24),
                                    noise=1e-3, seed=4)
    unstated = tmp_path / "unstated.h5"
    unstated.write_bytes(stated.read_bytes())
    with h5py.File(unstated, "r+") as h5:
        del h5.attrs["noise"]
        truth = h5["truth/B"][:]
    results = {}
    for name, obs in (("stated", stated), ("unstated", unstated)):
        out = tmp_path / f"r_{name}.h5"
        run_inversion(make_config(obs, out))
        results[name] = read_result(out)
    a, b = results["stated"], results["unstated"]
    assert b.attrs["noise_source"] == "estimated" and a.attrs["noise_source"] == "observation"
    np.testing.assert_allclose(b.attrs["noise"], 1e-3, rtol=0.15)  # the estimate of the true sigma
    ok_a, ok_b = a.status == 0, b.status == 0
    # same pixels converged: at most 1 % of the 576 pixels differ in status
    assert np.mean(ok_a != ok_b) <= 0.01, (ok_a.sum(), ok_b.sum())
    # same accuracy: the median |B - truth| of the converged pixels within 10 % (or 1 G)
    err_a = np.median(np.abs(a.params["B"][ok_a] - truth[ok_a]))
    err_b = np.median(np.abs(b.params["B"][ok_b] - truth[ok_b]))
    assert abs(err_b - err_a) <= max(0.1 * err_a, 1.0), (err_a, err_b)
    # chi2 in statistical units in both: reduced chi2 near 1 for the converged pixels
    print(f"converged {ok_a.sum()} vs {ok_b.sum()}, median |dB| {err_a:.2f} vs {err_b:.2f} G, "
          f"median chi2 {np.median(a.chi2[ok_a]):.3f} vs {np.median(b.chi2[ok_b]):.3f}, noise {b.attrs['noise']}")
    assert 0.6 < np.median(b.chi2[ok_b]) < 1.6 and 0.6 < np.median(a.chi2[ok_a]) < 1.6


def test_a_stated_noise_reads_a_few_rows_for_the_trial_pixel_only(tmp_path, monkeypatch):
    """With the noise stated no estimate is made, so validation reads about four rows for its trial
    pixel instead of the ~45 of a noise sample; the trial is the first valid pixel of the map's first
    sampled row either way. Without the noise the full sample is read."""
    from stokesflow.orchestrator.io.observation import Observation

    rows = []
    real = Observation.read_rows
    monkeypatch.setattr(Observation, "read_rows", lambda self, y0, y1: rows.append((y0, y1)) or real(self, y0, y1))
    valid = np.ones((200, 200), dtype=bool)
    valid[0, :7] = False
    obs = _cube(tmp_path / "obs.h5", 200, 200, valid)
    stated = validate_run(make_config(obs, tmp_path / "r.h5", input={"noise": 1e-3}))
    assert len(rows) <= 4 and stated.trial[0][0, 1, 0] == 7.0  # pixel (0, 7)
    rows.clear()
    estimated = validate_run(make_config(obs, tmp_path / "r.h5"), backend=NoiseDouble({"sigma": list(SIGMA)}))
    assert len(rows) >= 40 and estimated.noise.source == "estimated"
    assert estimated.trial[0][0, 1, 0] == 7.0
