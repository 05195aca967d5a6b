"""Closed-form starting values for filtergrams (issue 9, second round).

The HMI pipeline's Doppler and magnetogram algorithm (Fourier phase of I +- V
with a look-up table made through the instrument), depth tables of magnetic
lines for eta0, and the azimuth from a synthesis of each pixel's own
estimate: checked against the truth of synthetic filtergrams (measured-style
profiles and the built-in ones) and of pyMilne's filtergrams.
"""

import h5py
import numpy as np
import pytest

from stokesflow.backends import ConfigError, get_backend
from stokesflow.backends.me.estimates import (
    classical_estimates,
    depth_table,
    depth_table_estimates,
    doppler_calibration,
    doppler_magnetogram,
    field_depth_table,
    field_depth_table_estimates,
    fourier_line_shift,
    template_azimuth,
)
from stokesflow.backends.me.instrument import hmi_filter_profiles, make_instrument
from stokesflow.backends.me.lines import get_lines
from stokesflow.backends.me.model import MEModel

HMI_WAVE = 6173.334 + np.array([-172.0, -103.2, -34.4, 34.4, 103.2, 172.0]) * 1e-3
LINES = tuple(get_lines(["FeI_6173"]))


def _model(shared_data, which):
    if which == "measured":  # pyMilne's measured-style profiles, 701 points at 2 mA
        with np.load(shared_data / "pymilne_hmi_filters.npz") as z:
            lam, T = z["wavelength"], z["transmission"]
    else:
        lam, T = hmi_filter_profiles(centre=6173.334, step_mA=1.0, half_range_mA=500.0)
    return MEModel(LINES, make_instrument("filters", HMI_WAVE, filters=(lam, T)))


def _random_params(rng, n):
    return np.column_stack([
        rng.uniform(0, 3000, n), rng.uniform(0, 180, n), rng.uniform(0, 180, n), rng.uniform(-3, 3, n),
        rng.uniform(20, 40, n), rng.uniform(3, 20, n), rng.uniform(0, 0.5, n), rng.uniform(0.1, 0.4, n),
        rng.uniform(0.5, 1.0, n),
    ])


def _blos(p):
    return p[:, 0] * np.cos(np.radians(p[:, 1]))


def test_fourier_shift_follows_a_shifted_line_and_is_zero_for_a_centred_one():
    # a line symmetric about the middle of the sampled range has phase 0; shifting it moves the raw shift the
    # same way (monotonic), which is all the look-up table needs
    lam = HMI_WAVE
    shifts = np.linspace(-0.1, 0.1, 21)
    prof = 1.0 - 0.6 * np.exp(-(((lam[None, :] - lam.mean() - shifts[:, None]) / 0.06) ** 2))
    raw = fourier_line_shift(prof, lam)
    assert abs(raw[10]) < 1e-12
    assert np.all(np.diff(raw) > 0)


@pytest.mark.parametrize("which", ["measured", "builtin"])
def test_doppler_magnetogram_recovers_vlos_and_blos_of_synthetic_filtergrams(shared_data, which):
    model = _model(shared_data, which)
    cal = doppler_calibration(model.synthesize, HMI_WAVE, LINES)
    rng = np.random.default_rng(21)  # not the calibration's seed
    truth = _random_params(rng, 1000)
    obs = model.synthesize(truth) + rng.normal(0.0, 1e-3, (1000, 4, 6))
    vlos, blos = doppler_magnetogram(cal, obs, HMI_WAVE, LINES)
    dv = np.abs(vlos - truth[:, 3])
    # measured (measured / built-in profiles): median 21 / 19 m/s, 90th percentile 0.24 / 0.23 km/s
    # (the centre-of-gravity estimate: median 64 / 54 m/s)
    assert np.median(dv) < 0.04 and np.percentile(dv, 90) < 0.35, (np.median(dv), np.percentile(dv, 90))
    db = np.abs(blos - _blos(truth))
    # measured: median 34 / 34 G; a closed form of six points is a start, not a fit (its 90th percentile is
    # 220 G: strong inclined fields, where the I +- V centroids are not the sigma components')
    assert np.median(db) < 50.0, np.median(db)
    strong = np.abs(_blos(truth)) > 500
    ratio = blos[strong] / _blos(truth)[strong]
    # the field scale is calibrated through the instrument: median ratio 1 within 5 % (measured 0.99 / 0.99)
    assert abs(np.median(ratio) - 1.0) < 0.05, np.median(ratio)


@pytest.mark.parametrize("nf, span_mA", [(5, 160.0), (8, 200.0)])
def test_doppler_magnetogram_works_for_other_filter_sets(nf, span_mA):
    # nothing of the algorithm is tuned to six HMI tunings: the table and the field scale come from the instrument
    off = np.linspace(-span_mA, span_mA, nf) * 1e-3
    lam = 6173.334 + np.arange(-600, 601) * 1e-3
    T = np.exp(-0.5 * ((lam[None, :] - 6173.334 - off[:, None]) / 0.035) ** 2)
    wl = 6173.334 + off
    model = MEModel(LINES, make_instrument("filters", wl, filters=(lam, T)))
    cal = doppler_calibration(model.synthesize, wl, LINES)
    rng = np.random.default_rng(25)
    truth = _random_params(rng, 600)
    obs = model.synthesize(truth) + rng.normal(0.0, 1e-3, (600, 4, nf))
    vlos, blos = doppler_magnetogram(cal, obs, wl, LINES)
    strong = np.abs(_blos(truth)) > 500
    # measured: vlos median error 33 m/s (5 filters, 80 mA apart) and 15 m/s (8), B_los / truth 0.98 in
    # median for |B_los| > 500 G; 50 m/s is what the HMI-like case allows with room for the coarser sampling
    assert np.median(np.abs(vlos - truth[:, 3])) < 0.05
    assert abs(np.median(blos[strong] / _blos(truth)[strong]) - 1.0) < 0.05


def test_doppler_magnetogram_on_pymilne_filtergrams_against_their_truth(shared_data):
    # pyMilne (an independent ME code) through the measured-style profiles, noise 1e-3 not stated in the file
    with h5py.File(shared_data / "pymilne_hmi_filtergrams.h5") as f:
        wl = f["wavelength"][:]
        obs = f["stokes"][:].reshape(-1, 4, wl.size).astype(np.float64)
        truth = np.column_stack([f["truth"][k][:].ravel() for k in ("B", "inclination", "vlos")])
    model = _model(shared_data, "measured")
    cal = doppler_calibration(model.synthesize, wl, LINES)
    vlos, blos = doppler_magnetogram(cal, obs, wl, LINES)
    dv = np.abs(vlos - truth[:, 2])
    db = np.abs(blos - truth[:, 0] * np.cos(np.radians(truth[:, 1])))
    # measured: median 18 m/s (pyMilne's line centre 6173.3340 A, ours the same), B_los median 30 G
    assert np.median(dv) < 0.04, np.median(dv)
    assert np.median(db) < 50.0, np.median(db)


def test_template_azimuth_puts_the_pixels_in_the_right_quadrant(shared_data):
    model = _model(shared_data, "measured")
    rng = np.random.default_rng(22)
    truth = _random_params(rng, 600)
    obs = model.synthesize(truth) + rng.normal(0.0, 1e-3, (600, 4, 6))
    est = classical_estimates(obs, HMI_WAVE, LINES)
    p = truth.copy()
    p[:, 2] = 0.0
    p[:, 0] = np.clip(est[:, 0], 50.0, None)  # the template from an estimate of B, not the truth
    azi = template_azimuth(obs[:, 1], obs[:, 2], model.synthesize(p)[:, 1])
    bt = truth[:, 0] * np.sin(np.radians(truth[:, 1]))
    sel = bt > 150.0

    def wrong(a):
        return np.mean(np.abs(np.mod(a - truth[:, 2] + 90.0, 180.0) - 90.0)[sel] > 45.0)

    # measured: 0.2 % of the pixels in the wrong 90-deg quadrant (the line-centre rule: 32 %)
    assert wrong(azi) < 0.02 and wrong(est[:, 2]) > 0.2, (wrong(azi), wrong(est[:, 2]))


def test_field_depth_tables_estimate_eta0_better_than_the_field_free_one(shared_data):
    model = _model(shared_data, "measured")
    rng = np.random.default_rng(23)
    truth = _random_params(rng, 600)
    obs = model.synthesize(truth) + rng.normal(0.0, 1e-3, (600, 4, 6))
    lam0 = LINES[0].wavelength
    eta_free, _ = depth_table_estimates(depth_table(model.synthesize, lam0), obs[:, 0], truth[:, 3])
    eta_field, cont = field_depth_table_estimates(field_depth_table(model.synthesize, lam0), obs[:, 0],
                                                  truth[:, 3], truth[:, 0])
    err_free = np.median(np.abs(np.log(eta_free / truth[:, 5])))
    err_field = np.median(np.abs(np.log(eta_field / truth[:, 5])))
    # measured (true field and vlos): median |log(eta0 / truth)| 1.19 (field-free) against 0.45,
    # eta0 / truth 0.35 against 0.92 in median; continuum / truth 0.99
    assert err_field < 0.7 * err_free, (err_field, err_free)
    np.testing.assert_allclose(np.median(cont / (truth[:, 7] + truth[:, 8])), 1.0, atol=0.05)


def test_hmi_starting_values_need_fewer_iterations_with_the_same_result(shared_data):
    with np.load(shared_data / "pymilne_hmi_filters.npz") as z:
        meta = {"lines": "FeI_6173", "noise": 1e-3, "spectral_instrument": "filters",
                "filters": (z["wavelength"], z["transmission"])}
    rng = np.random.default_rng(24)
    truth = _random_params(rng, 300)
    obs = get_backend("me", {"filter_step": 0}).for_observation(meta).synthesize(truth, HMI_WAVE)
    obs += rng.normal(0.0, 1e-3, obs.shape)
    res = {fe: get_backend("me", {"filter_estimates": fe}).for_observation(meta).invert(obs, HMI_WAVE)
           for fe in ("cog", "hmi")}
    # measured on 1000 pixels: median 14 (cog) -> 7 (hmi) iterations, mean 16.7 -> 10.6
    assert np.median(res["hmi"].n_iter) <= 0.7 * np.median(res["cog"].n_iter)
    assert res["hmi"].n_iter.mean() < 0.8 * res["cog"].n_iter.mean()
    dB = {fe: np.abs(r.param("B") - truth[:, 0]) for fe, r in res.items()}
    # the same minimum: medians within 1 G (measured 4.54 / 4.56 G on 1000 pixels), no more pixels off by 100 G
    assert abs(np.median(dB["hmi"]) - np.median(dB["cog"])) < 1.0
    assert np.sum(dB["hmi"] > 100) <= np.sum(dB["cog"] > 100)


def test_filter_estimates_option_is_checked():
    with pytest.raises(ConfigError, match="filter_estimates"):
        get_backend("me", {"lines": ["FeI_6173"], "filter_estimates": "mdi"})


def test_filter_tables_are_computed_once_per_process(monkeypatch):
    """Backend instances of one instrument and grid share the filter tables (each run of a process
    builds its own instance, e.g. the phases of stokesflow assist); another mu, filter sampling or
    grid gets its own, and the shared tables are those a fresh computation gives."""
    from stokesflow.backends.me import backend as mb

    calls = []
    real = mb.depth_table
    monkeypatch.setattr(mb, "depth_table", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(mb, "_FILTER_TABLES", {})
    opts = {"lines": ["FeI_6173"], "instrument": "hmi_filters"}
    first = get_backend("me", opts)._filter_tables(HMI_WAVE)
    again = get_backend("me", {**opts, "n_starts": 1, "sigma_tol": 0.05})._filter_tables(HMI_WAVE)
    assert len(calls) == 1 and again is first
    get_backend("me", {**opts, "mu": 0.8})._filter_tables(HMI_WAVE)
    get_backend("me", {**opts, "filter_step": 5.0})._filter_tables(HMI_WAVE)
    get_backend("me", opts)._filter_tables(HMI_WAVE + 0.01)
    assert len(calls) == 4
    monkeypatch.setattr(mb, "_FILTER_TABLES", {})
    fresh = get_backend("me", opts)._filter_tables(HMI_WAVE)
    assert fresh is not first and len(calls) == 5
    for name in ("f_los", "f_t"):
        np.testing.assert_array_equal(fresh[name], first[name])
    np.testing.assert_array_equal(fresh["doppler"].raw, first["doppler"].raw)
