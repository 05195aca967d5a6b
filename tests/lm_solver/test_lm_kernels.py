"""The engine's linear algebra: the one Cholesky helper behind the damped solve and the covariance."""

from __future__ import annotations

import numpy as np
import pytest

from stokesflow.lm_solver._kernels import (
    COV_PIVOT_REL,
    _cholesky_factor_impl,
    cholesky_solve_impl,
    sigma_from_normal_impl,
)


def _spd(n, rng, cond=1e3):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return (q * np.geomspace(1.0, 1.0 / cond, n)) @ q.T


def test_factor_matches_numpy_and_leaves_the_upper_triangle():
    rng = np.random.default_rng(0)
    a = _spd(9, rng)
    m = a.copy()
    assert _cholesky_factor_impl.py_func(m, 9, 0.0)
    np.testing.assert_allclose(np.tril(m), np.linalg.cholesky(a), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.triu(m, 1), np.triu(a, 1))


def test_factor_of_a_leading_block_only():
    rng = np.random.default_rng(1)
    a = _spd(6, rng)
    m = a.copy()
    assert _cholesky_factor_impl.py_func(m, 4, 0.0)
    np.testing.assert_allclose(np.tril(m[:4, :4]), np.linalg.cholesky(a[:4, :4]), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(m[4:], a[4:])


def test_pivot_rules_of_the_solve_and_of_the_covariance():
    # singular to 1e-15 of its diagonal: a positive pivot, so the damped solve proceeds, but the
    # covariance refuses it (pivot below COV_PIVOT_REL = 1e-13 of the diagonal)
    v = np.array([1.0, 1.0])
    a = np.outer(v, v) + np.diag([0.0, 1e-15])
    assert _cholesky_factor_impl.py_func(a.copy(), 2, 0.0)
    assert not _cholesky_factor_impl.py_func(a.copy(), 2, COV_PIVOT_REL)
    assert not _cholesky_factor_impl.py_func(-np.eye(2), 2, 0.0)
    with np.errstate(invalid="ignore"):  # 0 * inf in the pure-Python run (compiled code is silent)
        assert not _cholesky_factor_impl.py_func(np.array([[np.nan, 0.0], [0.0, 1.0]]), 2, 0.0)
        assert not _cholesky_factor_impl.py_func(np.array([[np.inf, 0.0], [0.0, 1.0]]), 2, 0.0)


def test_solve_and_sigma_agree_with_numpy():
    rng = np.random.default_rng(2)
    a = _spd(7, rng)
    b = rng.normal(size=7)
    x = np.empty(7)
    assert cholesky_solve_impl(a.copy(), b, x)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-9)
    scale = rng.uniform(0.5, 2.0, 7)
    sig = np.empty(7)
    sigma_from_normal_impl(a, scale, 2.0, np.empty((7, 7)), np.empty(7, np.int64), np.empty(7), sig)
    np.testing.assert_allclose(sig, scale * np.sqrt(2.0 * np.diag(np.linalg.inv(a))), rtol=1e-9)
    # a parameter with no sensitivity gets NaN, the others are the inverse of the rest
    a0 = a.copy()
    a0[3, :] = 0.0
    a0[:, 3] = 0.0
    sigma_from_normal_impl(a0, scale, 1.0, np.empty((7, 7)), np.empty(7, np.int64), np.empty(7), sig)
    keep = [0, 1, 2, 4, 5, 6]
    assert np.isnan(sig[3])
    np.testing.assert_allclose(sig[keep], scale[keep] * np.sqrt(np.diag(np.linalg.inv(a[np.ix_(keep, keep)]))),
                               rtol=1e-9)


@pytest.mark.parametrize("n", [1, 3])
def test_compiled_helper_equals_python(n):
    # the helper is inlined in the engine; check the compiled form too (through the solve)
    rng = np.random.default_rng(3)
    a = _spd(n, rng)
    x = np.empty(n)
    assert cholesky_solve_impl(a.copy(), np.ones(n), x)
    np.testing.assert_allclose(a @ x, np.ones(n), rtol=1e-10)
