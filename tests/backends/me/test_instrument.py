"""Instrument models: PSF matrices, filter integration, user-supplied profiles."""

import numpy as np
import pytest

from stokesflow.backends import ConfigError, get_backend
from stokesflow.backends.me.instrument import (
    HMI_FWHM_MA,
    filter_matrix,
    gaussian_psf_matrix,
    hmi_filter_profiles,
    kernel_psf_matrix,
    make_instrument,
)

HMI_WAVE = 6173.334 + np.array([-172.0, -103.2, -34.4, 34.4, 103.2, 172.0]) * 1e-3
HINODE_WAVE = 6300.884 + np.arange(112) * 0.021549
P = np.array([[1500.0, 50.0, 30.0, 0.8, 30.0, 10.0, 0.2, 0.3, 0.7]])


def test_matrices_preserve_a_flat_spectrum():
    for m in (gaussian_psf_matrix(HINODE_WAVE, 30.0), kernel_psf_matrix(112, [0.25, 0.5, 0.25]),
              filter_matrix(*hmi_filter_profiles())):
        np.testing.assert_allclose(m @ np.ones(m.shape[1]), 1.0, atol=1e-12)


def test_gaussian_psf_has_the_requested_width():
    wl = 6300.0 + np.arange(401) * 0.002
    m = gaussian_psf_matrix(wl, 50.0)
    row = m[200] / m[200].max()
    half = wl[row >= 0.5]
    assert (half[-1] - half[0]) * 1e3 == pytest.approx(50.0, abs=4.0)  # sampled every 2 mA


def test_hmi_profiles_fwhm_and_positions():
    lam, T = hmi_filter_profiles(centre=6173.0, step_mA=1.0)
    for k, off in enumerate((-172.0, -103.2, -34.4, 34.4, 103.2, 172.0)):
        peak = lam[np.argmax(T[k])]
        assert (peak - 6173.0) * 1e3 == pytest.approx(off, abs=0.6)
        above = lam[T[k] >= 0.5 * T[k].max()]
        assert (above[-1] - above[0]) * 1e3 == pytest.approx(HMI_FWHM_MA, abs=2.0)


def test_user_filters_equal_builtin_when_given_the_same_profiles(tmp_path):
    lam, T = hmi_filter_profiles(centre=float(HMI_WAVE.mean()))
    np.savez(tmp_path / "filters.npz", wavelength=lam, transmission=T)
    user = get_backend("me", {"lines": ["FeI_6173"], "instrument": "filters", "filters_file": str(tmp_path / "filters.npz"),
                              "filter_step": 0})
    builtin = get_backend("me", {"lines": ["FeI_6173"], "instrument": "hmi_filters", "filter_step": 0})
    np.testing.assert_allclose(user.synthesize(P, HMI_WAVE), builtin.synthesize(P, HMI_WAVE), atol=1e-12)
    # filtergrams are smoother than the spectrum at the same points
    grid = get_backend("me", {"lines": ["FeI_6173"]}).synthesize(P, HMI_WAVE)
    assert np.abs(builtin.synthesize(P, HMI_WAVE) - grid).max() > 1e-3


def test_psf_file_kernel(tmp_path):
    np.save(tmp_path / "psf.npy", np.array([0.2, 0.6, 0.2]))
    be = get_backend("me", {"lines": ["FeI_6301", "FeI_6302"], "instrument": "psf", "psf_file": str(tmp_path / "psf.npy")})
    grid = get_backend("me", {"lines": ["FeI_6301", "FeI_6302"]}).synthesize(P, HINODE_WAVE)[0]
    conv = be.synthesize(P, HINODE_WAVE)[0]
    np.testing.assert_allclose(conv[:, 50], 0.2 * grid[:, 49] + 0.6 * grid[:, 50] + 0.2 * grid[:, 51], atol=1e-12)


def test_instrument_errors(tmp_path):
    with pytest.raises(ConfigError, match="psf_fwhm"):
        make_instrument("psf", HINODE_WAVE)
    with pytest.raises(ConfigError, match="6 filtergrams"):
        make_instrument("hmi_filters", HINODE_WAVE)
    with pytest.raises(ConfigError, match="needs filters_file"):
        make_instrument("filters", HMI_WAVE)
    with pytest.raises(ConfigError, match="does not exist"):
        make_instrument("filters", HMI_WAVE, filters_file=str(tmp_path / "none.npz"))
    np.savez(tmp_path / "bad.npz", wavelength=np.arange(5.0), transmission=np.ones((4, 5)))
    with pytest.raises(ConfigError, match="4 profiles but the observation has 6"):
        make_instrument("filters", HMI_WAVE, filters_file=str(tmp_path / "bad.npz"))
    with pytest.raises(ConfigError, match="odd number"):
        kernel_psf_matrix(10, [0.5, 0.5])
