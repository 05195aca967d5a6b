"""Filter instruments on a model grid chosen from the profiles (issue 9).

The profiles are resampled onto a coarse model grid (cubic-spline integration,
``stokesflow.backends.me.instrument.resample_filter_matrix``); these tests
check that the filtergrams, the fit and the Jacobian stay those of the
profiles on their own fine grid, and that the instrument-aware starting
estimates pay.
"""

import numpy as np
import pytest

from stokesflow.backends import ConfigError, get_backend
from stokesflow.backends.me.estimates import classical_estimates, depth_table, depth_table_estimates
from stokesflow.backends.me.instrument import (
    filter_matrix,
    filter_model_grid,
    hmi_filter_profiles,
    make_instrument,
    read_filters_file,
    resample_filter_matrix,
)
from stokesflow.backends.me.lines import get_lines
from stokesflow.backends.me.model import MEModel

HMI_WAVE = 6173.334 + np.array([-172.0, -103.2, -34.4, 34.4, 103.2, 172.0]) * 1e-3
CENTRE = 6173.334


def _profiles(shared_data, which):
    if which == "measured":  # pyMilne's measured-style profiles, 701 points at 2 mA
        with np.load(shared_data / "pymilne_hmi_filters.npz") as z:
            return z["wavelength"], z["transmission"]
    return hmi_filter_profiles(centre=CENTRE, step_mA=1.0, half_range_mA=500.0)


def _line(width_A):
    """A smooth test spectrum: an absorption line 0.6 deep, 1/e half-width ``width_A``, 20 mA red of centre."""
    return lambda lam: 1.0 - 0.6 * np.exp(-(((lam - CENTRE - 0.02) / width_A) ** 2))


def _random_params(rng, n):
    return np.column_stack([
        rng.uniform(0, 3000, n), rng.uniform(0, 180, n), rng.uniform(0, 180, n), rng.uniform(-3, 3, n),
        rng.uniform(20, 40, n), rng.uniform(3, 20, n), rng.uniform(0, 0.5, n), rng.uniform(0.1, 0.4, n),
        rng.uniform(0.5, 1.0, n),
    ])


@pytest.mark.parametrize("which", ["measured", "builtin"])
def test_resampled_profiles_integrate_a_smooth_spectrum_like_the_originals(shared_data, which):
    lam, T = _profiles(shared_data, which)
    fine = filter_matrix(lam, T)
    grid = filter_model_grid(lam, T)
    m = resample_filter_matrix(lam, T, grid)
    assert grid.size <= 40 < lam.size  # the point of it: 32 (measured) / 26 (built-in) model points
    # every profile keeps its weight: a flat spectrum gives the same filtergrams
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
    for width in (0.02, 0.03, 0.04):
        line = _line(width)
        err = np.abs(m @ line(grid) - fine @ line(lam)).max()
        # tolerance 2e-4 = 0.2 of the 1e-3 noise of HMI-like data; measured max 1.1e-4 (20 mA wide, built-in)
        assert err < 2e-4, (which, width, err)
    # and the resampling converges: halving the core step cuts the error by > 4x (cubic: ~16x)
    line = _line(0.02)
    g10 = filter_model_grid(lam, T, step_mA=10.0)
    err10 = np.abs(resample_filter_matrix(lam, T, g10) @ line(g10) - fine @ line(lam)).max()
    err20 = np.abs(m @ line(grid) - fine @ line(lam)).max()
    assert err10 < err20 / 4


def test_model_grid_spans_the_profiles_and_the_line(shared_data):
    lam, T = _profiles(shared_data, "measured")
    grid = filter_model_grid(lam, T, step_mA=20.0, core_mA=50.0, wing_tol=1e-2)
    peaks = lam[np.argmax(T, axis=1)]
    core = grid[(grid >= peaks.min() - 0.05) & (grid <= peaks.max() + 0.05)]
    assert core[0] <= peaks.min() - 0.0499 and core[-1] >= peaks.max() + 0.0499
    assert np.diff(core).max() <= 0.020 + 1e-9
    # beyond the grid's ends, no profile keeps more than wing_tol of its weight
    w = filter_matrix(lam, T)
    outside = w[:, (lam < grid[0]) | (lam > grid[-1])].sum(axis=1)
    assert outside.max() <= 1e-2
    assert np.all(np.diff(grid) > 0)


def test_filter_step_zero_is_the_profiles_own_grid_and_coarse_profiles_are_kept(shared_data):
    lam, T = _profiles(shared_data, "measured")
    exact = make_instrument("filters", HMI_WAVE, filters=(lam, T), filter_step=0)
    np.testing.assert_array_equal(exact.model_wavelength, lam)
    # profiles already coarser than the model grid are used as they are
    coarse = (lam[::25], T[:, ::25])
    inst = make_instrument("filters", HMI_WAVE, filters=coarse)
    np.testing.assert_array_equal(inst.model_wavelength, coarse[0])


@pytest.mark.parametrize("key, value", [("filter_step", -1.0), ("filter_core", "wide")])
def test_filter_options_are_checked(key, value):
    with pytest.raises(ConfigError, match=key):
        get_backend("me", {"lines": ["FeI_6173"], key: value})


def test_a_filters_file_that_is_no_npz_of_the_two_arrays_is_one_line(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    np.save(tmp_path / "array.npy", np.ones(3))
    np.savez(tmp_path / "keys.npz", wave=np.arange(3.0), transmission=np.ones((1, 3)))
    expected = {"text.npz": "not an npz archive of arrays", "array.npy": "not an npz archive of arrays",
                "keys.npz": r"lacks array\(s\) \['wavelength'\]", "none.npz": "does not exist"}
    for name, said in expected.items():
        with pytest.raises(ConfigError, match=said):
            read_filters_file(tmp_path / name)
    backend = get_backend("me", {"lines": ["FeI_6173"], "instrument": "filters",
                                 "filters_file": str(tmp_path / "text.npz")})
    with pytest.raises(ConfigError, match="text.npz .not an npz archive of arrays.; it must be an npz"):
        backend.setup()
    np.savez(tmp_path / "good.npz", wavelength=np.arange(3.0), transmission=np.ones(3))
    lam, T = read_filters_file(tmp_path / "good.npz")
    assert lam.shape == (3,) and T.shape == (1, 3) and T.dtype == np.float64


def test_jacobian_through_measured_filters_matches_central_differences(shared_data):
    # Required (issue 9): the analytic Jacobian through the resampled filters, relative 1e-5
    lam, T = _profiles(shared_data, "measured")
    model = MEModel(tuple(get_lines(["FeI_6173"])), make_instrument("filters", HMI_WAVE, filters=(lam, T)))
    rng = np.random.default_rng(11)
    for p in _random_params(rng, 4):
        p[0] = max(p[0], 100.0)
        _, jac = model.jacobian(p)
        for q in range(p.size):
            h = max(abs(p[q]) * 1e-6, 1e-7)
            pp, pm = p.copy(), p.copy()
            pp[q] += h
            pm[q] -= h
            fd = (model.jacobian(pp)[0] - model.jacobian(pm)[0]) / (2 * h)
            scale = np.abs(fd).max()
            if scale < 1e-8:
                continue
            assert np.abs(jac[:, q] - fd).max() <= 1e-5 * scale, q


def test_filtergrams_fitted_with_the_profiles_they_were_made_with_recover_the_truth(shared_data):
    # Synthesised with the measured profiles on their own 2 mA grid (exact), fitted on the default
    # model grid: the fit must be noise-limited (reduced chi2 ~ 1) and agree with the truth
    # within its own sigma, as a fit on the 2 mA grid does.
    lam, T = _profiles(shared_data, "measured")
    rng = np.random.default_rng(5)
    truth = _random_params(rng, 200)
    meta = {"lines": "FeI_6173", "noise": 1e-3, "spectral_instrument": "filters", "filters": (lam, T)}
    exact = get_backend("me", {"filter_step": 0}).for_observation(meta)
    obs = exact.synthesize(truth, HMI_WAVE) + rng.normal(0.0, 1e-3, (200, 4, 6))
    res = get_backend("me", {}).for_observation(meta).invert(obs, HMI_WAVE)
    assert 0.8 < np.median(res.chi2) < 1.25
    for k, name in enumerate(("B", "vlos")):
        z = np.abs(res.param(name) - truth[:, [0, 3][k]]) / res.sigma[:, res.names.index(name)]
        # 1-sigma errors: median |z| of a normal is 0.67; measured 0.73 (B), 0.66 (vlos), the same as
        # the fit on the 2 mA grid (0.73, 0.65); 1.0 leaves room for the ME degeneracies of 6 points
        assert np.median(z) < 1.0, (name, np.median(z))
    dB = np.abs(res.param("B") - truth[:, 0])
    # measured: 5.3 G and 2 pixels off by > 100 G (the fit on the 2 mA grid: 5.3 G, 3 pixels)
    assert np.median(dB) < 10.0 and np.sum(dB > 100) <= 4


def test_depth_table_estimates_eta0_better_than_the_monochromatic_formula(shared_data):
    lam, T = _profiles(shared_data, "measured")
    lines = get_lines(["FeI_6173"])
    model = MEModel(tuple(lines), make_instrument("filters", HMI_WAVE, filters=(lam, T)))
    rng = np.random.default_rng(3)
    truth = _random_params(rng, 300)
    obs = model.synthesize(truth) + rng.normal(0.0, 1e-3, (300, 4, 6))
    est = classical_estimates(obs, HMI_WAVE, lines)
    eta, cont = depth_table_estimates(depth_table(model.synthesize, lines[0].wavelength), obs[:, 0], est[:, 3])
    err_table = np.median(np.abs(eta - truth[:, 5]))
    err_classical = np.median(np.abs(est[:, 5] - truth[:, 5]))
    # measured: 7 (table) vs 10 (classical: eta0 at its lower bound 1 for 75 % of the pixels)
    assert err_table < 0.85 * err_classical
    np.testing.assert_allclose(np.median(cont / (truth[:, 7] + truth[:, 8])), 1.0, atol=0.1)


def test_profiles_given_as_options_imply_their_instrument():
    me = get_backend("me", {"lines": ["FeI_6173"], "filters_file": "f.npz"})
    assert me.instrument == "filters"  # it was "grid": the file was ignored
    assert get_backend("me", {"lines": ["FeI_6173"], "psf_fwhm": 25.0}).instrument == "psf"
    with pytest.raises(ConfigError, match="filters_file is used with instrument = 'filters' only, but instrument = "
                                          "'hmi_filters'"):
        get_backend("me", {"lines": ["FeI_6173"], "filters_file": "f.npz", "instrument": "hmi_filters"})
    with pytest.raises(ConfigError, match="psf_fwhm is used with instrument = 'psf' only"):
        get_backend("me", {"lines": ["FeI_6173"], "psf_fwhm": 25.0, "instrument": "grid"})
