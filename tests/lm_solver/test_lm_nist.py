"""lm_solver on NIST StRD nonlinear regression problems, from both certified starts.

Reference values: NIST/ITL StRD certified parameters, standard deviations and
residual sums of squares (https://www.itl.nist.gov/div898/strd/nls/nls_main.shtml),
stored in tests/lm_solver/data/*.dat. NIST's standard deviations are
sqrt(RSS / dof * diag(inv(J^T J))), i.e. lmfit's ``scale_covar=True``.
"""

from __future__ import annotations

import numpy as np
import pytest
from _lm_models import NIST_IDS, load_nist, nist_model_impl

from stokesflow.lm_solver import STATUS_OK, LMOptions, fit

# Tight stopping rules: NIST certifies 11 significant digits.
NIST_OPTIONS = LMOptions(max_iter=1000, chi2_rtol=1e-15, step_tol=1e-12, scale_covar=True)

# Relative tolerance on the certified parameters / standard deviations, per problem.
# Misra1a (lower difficulty), Lanczos3 (lower; ill-conditioned, RSS 1.6e-8),
# Thurber, MGH09, Eckerle4 (higher difficulty). Observed errors are <= 4e-7.
PARAM_RTOL = {"Misra1a": 1e-6, "Lanczos3": 1e-6, "Thurber": 1e-6, "MGH09": 1e-6, "Eckerle4": 1e-6}
SD_RTOL = {"Misra1a": 1e-5, "Lanczos3": 1e-5, "Thurber": 1e-5, "MGH09": 1e-5, "Eckerle4": 1e-5}

CASES = [(name, start) for name in NIST_IDS for start in (1, 2)]


@pytest.mark.parametrize("name", list(NIST_IDS))
def test_nist_data_reproduce_certified_rss(name: str) -> None:
    """The stored data and model give NIST's certified RSS at the certified parameters."""
    prob = load_nist(name)
    y = np.empty(prob.x.size)
    jac = np.empty((prob.x.size, prob.certified.size))
    nist_model_impl(prob.certified, prob.ctx, y, jac)
    rss = float(np.sum((y - prob.y) ** 2))
    # certified RSS has 11 significant digits
    assert rss == pytest.approx(prob.rss, rel=1e-9)


@pytest.mark.parametrize("name", list(NIST_IDS))
def test_nist_jacobian_matches_finite_differences(name: str) -> None:
    """The analytic Jacobians of the test models are right (else the fits prove nothing)."""
    prob = load_nist(name)
    b = prob.certified.copy()
    n, k = prob.x.size, b.size
    y0, jac = np.empty(n), np.empty((n, k))
    nist_model_impl(b, prob.ctx, y0, jac)
    yp, ym, dummy = np.empty(n), np.empty(n), np.empty((n, k))
    for j in range(k):
        h = 1e-6 * max(abs(b[j]), 1e-3)
        bp, bm = b.copy(), b.copy()
        bp[j] += h
        bm[j] -= h
        nist_model_impl(bp, prob.ctx, yp, dummy)
        nist_model_impl(bm, prob.ctx, ym, dummy)
        num = (yp - ym) / (2 * h)
        # central differences: truncation ~h^2, rounding ~1e-16/h
        np.testing.assert_allclose(jac[:, j], num, rtol=1e-5, atol=1e-8 * np.max(np.abs(num)))


@pytest.mark.parametrize(("name", "start"), CASES)
def test_nist_certified_values(name: str, start: int) -> None:
    """Certified parameters and standard deviations from NIST's start 1 and start 2.

    No scale is passed: the default (|p0|) is what makes the hard starts
    (MGH09 and Eckerle4 start 1) converge with plain LM.
    """
    prob = load_nist(name)
    p0 = prob.starts[start - 1]
    res = fit(nist_model_impl, prob.ctx, prob.y[None, :], p0, options=NIST_OPTIONS)
    assert res.status[0] == STATUS_OK, res.message(0)
    np.testing.assert_allclose(res.params[0], prob.certified, rtol=PARAM_RTOL[name])
    np.testing.assert_allclose(res.sigma[0], prob.certified_sd, rtol=SD_RTOL[name])
    dof = prob.x.size - prob.certified.size
    assert res.chi2[0] * dof == pytest.approx(prob.rss, rel=1e-8)


def test_nist_many_pixels_in_one_call() -> None:
    """Both starts of Thurber as two pixels, and as a two-start multi-start of one pixel."""
    prob = load_nist("Thurber")
    obs = np.stack([prob.y, prob.y])
    p0 = np.stack(prob.starts)
    scale = np.abs(prob.starts[0])
    res = fit(nist_model_impl, prob.ctx, obs, p0, scale=scale, options=NIST_OPTIONS)
    assert np.all(res.success)
    np.testing.assert_allclose(res.params, np.stack([prob.certified] * 2), rtol=1e-6)
    multi = fit(nist_model_impl, prob.ctx, prob.y[None, :], p0[None], scale=scale,
                options=NIST_OPTIONS)
    assert multi.success[0]
    np.testing.assert_allclose(multi.params[0], prob.certified, rtol=1e-6)
    # iterations add up over the starts tried
    assert multi.n_iter[0] == res.n_iter.sum()
