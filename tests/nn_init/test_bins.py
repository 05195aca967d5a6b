"""80-bin encoding / decoding round trip, and interval calibration on synthetic distributions."""

from __future__ import annotations

import numpy as np
import pytest

from stokesflow.nn_init.bins import Bins, calibrate, coverage, softmax


@pytest.mark.parametrize("circular", [False, True])
def test_encode_decode_round_trip(circular):
    b = Bins(0.0, 180.0, 80, circular=circular)
    rng = np.random.default_rng(0)
    hi = 180.0 if circular else 180.0 - b.width / 2  # beyond the last centre a linear value is clipped
    v = rng.uniform(0.0 if circular else b.width / 2, hi, 500)
    t = b.encode(v)
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    assert ((t > 0).sum(axis=1) <= 2).all()
    back = b.decode(t)
    err = np.abs(back - v)
    if circular:
        err = np.minimum(err, 180.0 - err)
    assert err.max() < 1e-9  # the two-bin target decodes exactly (linear interpolation between centres)
    if circular:  # 179.9 deg wraps onto the first bin
        t = b.encode(np.array([179.9]))
        assert t[0, 0] > 0 and t[0, -1] > 0


def _overconfident(rng, b, m, sigma_true, sigma_claimed):
    """Logits of Gaussian distributions of width sigma_claimed about noisy estimates of the truth."""
    truth = rng.uniform(b.lower + 20, b.upper - 20, m)
    est = truth + sigma_true * rng.standard_normal(m)
    logits = -0.5 * ((b.centres[None, :] - est[:, None]) / sigma_claimed) ** 2
    return logits, truth


def test_calibration_reaches_90_percent_on_fresh_pixels():
    b = Bins(0.0, 3000.0, 80)
    rng = np.random.default_rng(1)
    # the network claims 40 G but errs by 120 G: raw 90 % intervals cover far less than 90 %
    logits, truth = _overconfident(rng, b, 4000, 120.0, 40.0)
    raw = coverage(b.interval(softmax(logits), 0.9), truth)
    assert raw < 0.75
    temp, scale = calibrate(b, logits, truth)
    logits2, truth2 = _overconfident(rng, b, 4000, 120.0, 40.0)  # held-out pixels never seen
    cov = coverage(b.interval(softmax(logits2, temp), 0.9, scale), truth2)
    assert 0.87 <= cov <= 0.93  # binomial 1-sigma for 4000 pixels at 0.9 is 0.5 %
    assert temp > 1.0  # an overconfident distribution is widened


def test_circular_interval_coverage():
    b = Bins(0.0, 180.0, 80, circular=True)
    rng = np.random.default_rng(2)
    truth = rng.uniform(0, 180, 3000)
    est = np.mod(truth + 8.0 * rng.standard_normal(3000), 180.0)
    d = np.mod(b.centres[None, :] - est[:, None] + 90.0, 180.0) - 90.0
    logits = -0.5 * (d / 4.0) ** 2
    temp, scale = calibrate(b, logits, truth)
    est2 = np.mod(truth + 8.0 * rng.standard_normal(3000), 180.0)
    d2 = np.mod(b.centres[None, :] - est2[:, None] + 90.0, 180.0) - 90.0
    cov = coverage(b.interval(softmax(-0.5 * (d2 / 4.0) ** 2, temp), 0.9, scale), truth, period=180.0)
    assert 0.87 <= cov <= 0.93
