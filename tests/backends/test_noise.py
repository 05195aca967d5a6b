"""Noise tools shared by the backends (stokesflow.backends.noise)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2

from stokesflow.backends.noise import continuum_noise, continuum_points, noise_from_residuals


def test_continuum_points_exclude_the_line_and_any_order_works():
    wl = 6300.0 + 0.02 * np.arange(100)
    I = 1.0 - 0.5 * np.exp(-0.5 * ((wl - wl[50]) / 0.05) ** 2)
    st = np.zeros((3, 4, wl.size))
    st[:, 0] = I
    cont = continuum_points(st, wl)
    assert not cont[45:56].any() and cont[:30].all() and cont[-30:].all()
    rng = np.random.default_rng(0)
    st = st[:1] + rng.normal(0, 1e-3, (500, 4, wl.size))
    rev = continuum_noise(st[:, :, ::-1], wl[::-1])
    np.testing.assert_allclose(rev, continuum_noise(st, wl), rtol=1e-12)
    np.testing.assert_allclose(rev, 1e-3, rtol=0.05)


def test_without_continuum_it_is_an_upper_bound():
    # six points across a line: the curvature adds to the scatter (documented limit)
    wl = 6173.34 + np.array([-0.172, -0.103, -0.034, 0.034, 0.103, 0.172])
    I = 1.0 - 0.5 * np.exp(-0.5 * (wl - 6173.34) ** 2 / 0.06 ** 2)
    rng = np.random.default_rng(1)
    st = np.zeros((2000, 4, 6))
    st[:, 0] = I * rng.uniform(0.7, 1.0, (2000, 1))
    st += rng.normal(0, 1e-3, st.shape)
    est = continuum_noise(st, wl)
    assert est[0] > 3e-3  # I: line curvature dominates
    np.testing.assert_allclose(est[1:], 1e-3, rtol=0.1)


def test_noise_from_residuals_recovers_sigma_and_ignores_outliers():
    rng = np.random.default_rng(2)
    sig = np.array([1e-3, 2e-3, 2e-3, 1e-3])
    nw, dof = 6, np.array([2.0, 5.0, 5.0, 4.0])
    # residuals of a fit: chi2(dof) sums; emulate by dof-dimensional normal vectors padded with zeros
    npix = 4000
    r = np.zeros((npix, 4, nw))
    for s in range(4):
        k = int(dof[s])
        r[:, s, :k] = rng.normal(0, sig[s], (npix, k))
    r[:200] *= 50.0  # 5 % failed fits
    est = noise_from_residuals(r, dof)
    # 4000 pixels: the median's relative scatter is ~2 %; 8 % tolerance
    np.testing.assert_allclose(est, sig, rtol=0.08)
    # a mean-based estimate would be ruined by the outliers (guard that the test can fail)
    assert np.sqrt(np.mean(np.sum(r[:, 0] ** 2, axis=1)) / chi2.mean(dof[0])) > 5 * sig[0]


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"\(npix, 4, nw\)"):
        continuum_noise(np.zeros((3, 6)), np.arange(6.0))
    with pytest.raises(ValueError, match="no pixel with finite"):
        continuum_noise(np.full((2, 4, 6), np.nan), np.arange(6.0))
