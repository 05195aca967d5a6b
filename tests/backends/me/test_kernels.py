"""Faddeeva approximation and the analytic Jacobian of the ME model."""

import numpy as np
import pytest
from scipy.special import wofz

from stokesflow.backends.me._kernels import faddeeva_w4_impl
from stokesflow.backends.me.lines import get_lines
from stokesflow.backends.me.model import MEModel

HMI_WAVE = 6173.334 + np.array([-172.0, -103.2, -34.4, 34.4, 103.2, 172.0]) * 1e-3
HINODE_WAVE = 6300.884 + np.arange(112) * 0.021549


@pytest.mark.parametrize("a", [0.0, 1e-4, 1e-2, 0.05, 0.1, 0.3, 0.5, 1.0, 1.5, 3.0])
def test_w4_accuracy_against_scipy(a):
    # Reference: scipy.special.wofz (Faddeeva package, ~1e-13). Required: 1e-4 relative (issue).
    v = np.linspace(-60.0, 60.0, 6001)
    w = np.array([faddeeva_w4_impl(x, a)[0] for x in v])
    ref = wofz(v + 1j * a)
    assert np.max(np.abs(w - ref) / np.abs(ref)) < 1e-4


@pytest.mark.parametrize("v, a", [(0.3, 0.1), (-2.0, 0.02), (4.0, 0.5), (-7.0, 0.3), (20.0, 0.1), (1.0, 2.0)])
def test_w4_derivative_is_that_of_the_approximation(v, a):
    w, dw = faddeeva_w4_impl(v, a)
    h = 1e-6
    fd = (faddeeva_w4_impl(v + h, a)[0] - faddeeva_w4_impl(v - h, a)[0]) / (2 * h)
    assert abs(dw - fd) <= 1e-7 * max(abs(dw), 1e-3)
    # and within the approximation's accuracy of the exact dw/dz = -2 z w + 2i/sqrt(pi)
    z = v + 1j * a
    exact = -2 * z * wofz(z) + 2j / np.sqrt(np.pi)
    assert abs(dw - exact) <= 2e-3 * max(abs(exact), 1e-2)


def _random_params(rng, n=4):
    return [
        np.array([
            rng.uniform(100, 3000), rng.uniform(10, 170), rng.uniform(0, 180), rng.uniform(-3, 3),
            rng.uniform(20, 40), rng.uniform(3, 30), rng.uniform(0.05, 0.5), rng.uniform(0.1, 0.4),
            rng.uniform(0.5, 1.0),
        ])
        for _ in range(n)
    ]


CASES = [
    ("hinode grid", ["FeI_6301", "FeI_6302"], HINODE_WAVE, "grid", {}),
    ("hmi grid", ["FeI_6173"], HMI_WAVE, "grid", {}),
    ("hinode psf", ["FeI_6301", "FeI_6302"], HINODE_WAVE, "psf", {"psf_fwhm": 25.0}),
    ("hmi filters", ["FeI_6173"], HMI_WAVE, "hmi_filters", {}),
    ("gris", ["FeI_15648"], 15648.515 + np.linspace(-1.5, 1.5, 60), "grid", {}),
    ("5250", ["FeI_5250"], 5250.2084 + np.linspace(-0.4, 0.4, 50), "grid", {}),
]


@pytest.mark.parametrize("label, lines, wave, kind, kw", CASES, ids=[c[0] for c in CASES])
def test_jacobian_matches_central_differences(label, lines, wave, kind, kw):
    # Required (issue): relative 1e-5 where the derivative is not tiny.
    rng = np.random.default_rng(7)
    model = MEModel.for_grid(get_lines(lines), wave, kind, **kw)
    for p in _random_params(rng):
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
            assert np.abs(jac[:, q] - fd).max() <= 1e-5 * scale, (label, q)


def test_jacobian_with_filling_factor():
    rng = np.random.default_rng(3)
    stray = np.zeros((4, HINODE_WAVE.size))
    stray[0] = 1.0 - 0.5 * np.exp(-(((HINODE_WAVE - 6301.5) / 0.05) ** 2))
    model = MEModel.for_grid(get_lines(["FeI_6301", "FeI_6302"]), HINODE_WAVE, stray=stray)
    assert len(model.parameters) == 10
    p = np.append(_random_params(rng, 1)[0], 0.6)
    _, jac = model.jacobian(p)
    for q in range(10):
        h = max(abs(p[q]) * 1e-6, 1e-7)
        pp, pm = p.copy(), p.copy()
        pp[q] += h
        pm[q] -= h
        fd = (model.jacobian(pp)[0] - model.jacobian(pm)[0]) / (2 * h)
        assert np.abs(jac[:, q] - fd).max() <= 1e-5 * max(np.abs(fd).max(), 1e-8)
