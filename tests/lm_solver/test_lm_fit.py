"""stokesflow.lm_solver.fit: statistics, bounds, regularisation, status codes, multi-start, errors."""

from __future__ import annotations

import numpy as np
import pytest
from _lm_models import (
    TOY_EXPGAUSS,
    TOY_FREQ,
    TOY_INCL,
    TOY_LINE,
    TOY_LINE_SUM,
    TOY_NAN_ABOVE,
    TOY_PHASE,
    TOY_ROSENBROCK,
    toy_ctx,
    toy_model_impl,
)

from stokesflow.lm_solver import (
    STATUS_BAD_INPUT,
    STATUS_FAILED,
    STATUS_MAX_ITER,
    STATUS_MESSAGES,
    STATUS_OK,
    FitResult,
    LMError,
    LMOptions,
    fit,
)
from stokesflow.lm_solver._kernels import apply_bounds_impl, normal_equations_impl, sigma_from_normal_impl


def synth(ctx: tuple[np.ndarray, np.ndarray], params: np.ndarray) -> np.ndarray:
    """Evaluate the toy model for each row of params (noise-free).

    Uses a copy of ctx[1] so that the spy record of ``ctx`` only shows the fit.
    """
    x = ctx[0]
    ctx = (x, ctx[1].copy())
    out = np.empty((params.shape[0], x.size))
    jac = np.empty((x.size, params.shape[1]))
    y = np.empty(x.size)
    for i, p in enumerate(params):
        toy_model_impl(np.ascontiguousarray(p, dtype=np.float64), ctx, y, jac)
        out[i] = y
    return out


# ------------------------------------------------------------------ statistics
def test_random_problems_recover_truth_with_calibrated_sigma() -> None:
    """3000 noisy exponential + Gaussian pixels in one call.

    With Gaussian noise of known sigma and weights 1/sigma^2, the pulls
    (p - truth) / sigma must be standard normal: 68.3 % inside 1 sigma
    (binomial scatter for 3000 pixels: 0.85 %; allowed 3.5 %), and the reduced
    chi2 must average 1 (scatter of the mean sqrt(2/35/3000) = 0.5 %; allowed 3 %).
    """
    rng = np.random.default_rng(20240611)
    npix, noise = 3000, 0.02
    x = np.linspace(0.0, 10.0, 40)
    ctx = toy_ctx(TOY_EXPGAUSS, x)
    truth = np.column_stack([
        rng.uniform(0.8, 1.2, npix),   # exponential amplitude
        rng.uniform(1.5, 3.0, npix),   # decay length
        rng.uniform(0.5, 1.0, npix),   # Gaussian amplitude
        rng.uniform(4.0, 7.0, npix),   # centre
        rng.uniform(0.6, 1.2, npix),   # width
    ])
    obs = synth(ctx, truth) + noise * rng.standard_normal((npix, x.size))
    p0 = truth * rng.uniform(0.85, 1.15, truth.shape)
    res = fit(toy_model_impl, ctx, obs, p0, weights=np.full(x.size, noise ** -2),
              options=LMOptions(chi2_rtol=1e-10))
    assert res.success.mean() > 0.995, res.summary()
    ok = res.success
    pulls = (res.params[ok] - truth[ok]) / res.sigma[ok]
    inside = np.mean(np.abs(pulls) < 1.0, axis=0)
    np.testing.assert_allclose(inside, 0.6827, atol=0.035)
    assert np.mean(res.chi2[ok]) == pytest.approx(1.0, abs=0.03)
    # and the median pixel needs few iterations
    assert np.median(res.n_iter) <= 15


def test_scale_covar_matches_lmfit_convention() -> None:
    """scale_covar multiplies the covariance by the reduced chi2 (sigma by its root).

    With unit weights and noise 0.05 the scaled sigmas are calibrated too.
    """
    rng = np.random.default_rng(7)
    npix, noise = 2000, 0.05
    x = np.linspace(-1.0, 1.0, 30)
    ctx = toy_ctx(TOY_LINE, x)
    truth = np.column_stack([rng.normal(0, 1, npix), rng.normal(2, 1, npix)])
    obs = synth(ctx, truth) + noise * rng.standard_normal((npix, x.size))
    raw = fit(toy_model_impl, ctx, obs, np.zeros(2))
    scaled = fit(toy_model_impl, ctx, obs, np.zeros(2), options=LMOptions(scale_covar=True))
    np.testing.assert_allclose(scaled.sigma, raw.sigma * np.sqrt(raw.chi2)[:, None], rtol=1e-12)
    # linear model: sigma = sqrt(diag(inv(X^T X))) exactly (unit weights)
    xm = np.column_stack([np.ones_like(x), x])
    np.testing.assert_allclose(raw.sigma[0], np.sqrt(np.diag(np.linalg.inv(xm.T @ xm))),
                               rtol=1e-10)
    inside = np.mean(np.abs(scaled.params - truth) < scaled.sigma, axis=0)
    np.testing.assert_allclose(inside, 0.6827, atol=0.035)


def test_threads_give_identical_results() -> None:
    rng = np.random.default_rng(3)
    x = np.linspace(0.0, 10.0, 25)
    ctx = toy_ctx(TOY_LINE, x)
    truth = rng.normal(size=(501, 2))
    obs = synth(ctx, truth) + 0.1 * rng.standard_normal((501, x.size))
    one = fit(toy_model_impl, ctx, obs, np.zeros(2), threads=1)
    three = fit(toy_model_impl, ctx, obs, np.zeros(2), threads=3)
    for name in ("params", "sigma", "chi2", "n_iter", "status"):
        np.testing.assert_array_equal(getattr(one, name), getattr(three, name))


# ---------------------------------------------------------------------- bounds
@pytest.mark.parametrize(("mode", "value", "expected"), [
    (0, -5.0, 0.0), (0, 200.0, 180.0), (0, 42.0, 42.0),
    (1, 190.0, 10.0), (1, -10.0, 170.0), (1, 180.0, 0.0), (1, 360.0, 0.0), (1, -540.0, 0.0),
    (1, 179.5, 179.5),
    (2, -10.0, 10.0), (2, 190.0, 170.0), (2, 370.0, 10.0), (2, -190.0, 170.0),
    (2, 540.0, 180.0), (2, 180.0, 180.0), (2, 0.0, 0.0),
])
def test_apply_bounds_modes(mode: int, value: float, expected: float) -> None:
    """Clip, wrap into [lo, up), reflect repeatedly (x<lo -> 2lo-x, x>up -> 2up-x)."""
    q = np.array([value])
    apply_bounds_impl(q, np.array([0.0]), np.array([180.0]), np.array([mode], dtype=np.int64))
    assert q[0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("mode", "start", "expected"), [
    ("clip", -30.0, 0.0), ("periodic", -30.0, 150.0), ("reflect", -30.0, 30.0),
    ("clip", 200.0, 180.0), ("periodic", 200.0, 20.0), ("reflect", 200.0, 160.0),
])
def test_bounds_applied_to_p0(mode: str, start: float, expected: float) -> None:
    """max_iter=0 reports the bounded starting point itself (status 1)."""
    x = np.linspace(-1.0, 1.0, 9)
    ctx = toy_ctx(TOY_INCL, x)
    obs = synth(ctx, np.array([[40.0, 1.0]]))
    res = fit(toy_model_impl, ctx, obs, np.array([start, 1.0]), lower=[0.0, -10.0],
              upper=[180.0, 10.0], bound_mode=[mode, "clip"], options=LMOptions(max_iter=0))
    assert res.status[0] == STATUS_MAX_ITER
    assert res.n_iter[0] == 0
    assert res.params[0, 0] == pytest.approx(expected, abs=1e-12)
    assert ctx[1][1] == pytest.approx(expected, abs=1e-12)  # the model saw the bounded point


def test_clip_bound_gives_constrained_optimum() -> None:
    """A line with true slope 2 and upper bound 1.5 on the slope.

    The constrained least-squares optimum has slope 1.5 and intercept
    mean(y - 1.5 x) (exact algebra); the projected step reaches it.
    """
    x = np.linspace(0.0, 4.0, 21)
    ctx = toy_ctx(TOY_LINE, x)
    obs = synth(ctx, np.array([[1.0, 2.0]])) + 0.01 * np.sin(7 * x)
    res = fit(toy_model_impl, ctx, obs, np.array([0.0, 0.5]), lower=[-10.0, -10.0],
              upper=[10.0, 1.5], options=LMOptions(chi2_rtol=1e-14))
    assert res.status[0] == STATUS_OK
    assert res.params[0, 1] == 1.5
    assert res.params[0, 0] == pytest.approx(np.mean(obs[0] - 1.5 * x), rel=1e-9)
    assert ctx[1][2] <= 10.0  # never evaluated outside the bounds


def test_periodic_parameter_wraps_through_the_bound() -> None:
    """Phase modulo 180: truth 175, start 10; the short way is through 0."""
    x = np.linspace(0.0, 180.0, 12, endpoint=False)
    ctx = toy_ctx(TOY_PHASE, x)
    obs = synth(ctx, np.array([[175.0, 1.0]]))
    res = fit(toy_model_impl, ctx, obs, np.array([10.0, 0.8]), lower=[0.0, 0.0],
              upper=[180.0, 5.0], bound_mode=["periodic", "clip"], scale=[10.0, 1.0],
              options=LMOptions(chi2_rtol=1e-14))
    assert res.status[0] == STATUS_OK
    assert res.params[0, 0] == pytest.approx(175.0, abs=1e-6)
    assert res.params[0, 1] == pytest.approx(1.0, abs=1e-8)
    assert 0.0 <= ctx[1][1] and ctx[1][2] < 180.0  # every trial point wrapped


def test_reflect_parameter_stays_inside_and_finds_mirror_solution() -> None:
    """Inclination-like parameter, even about 0: truth 8 deg, start 60 deg.

    Every evaluated point lies in [0, 180] and the fit lands on 8 deg (its
    mirror image -8 deg is the same model).
    """
    x = np.linspace(-1.0, 1.0, 15)
    ctx = toy_ctx(TOY_INCL, x)
    obs = synth(ctx, np.array([[8.0, 1.0]]))
    res = fit(toy_model_impl, ctx, obs, np.array([[[60.0, 1.0], [3.0, 1.0]]]),
              lower=[0.0, -10.0], upper=[180.0, 10.0], bound_mode=["reflect", "clip"],
              scale=[30.0, 1.0], options=LMOptions(chi2_rtol=1e-14))
    assert res.status[0] == STATUS_OK
    assert res.params[0, 0] == pytest.approx(8.0, abs=1e-6)
    assert ctx[1][1] >= 0.0 and ctx[1][2] <= 180.0


# ---------------------------------------------------------------- regularisation
@pytest.mark.parametrize("reg_weight", [0.0, 3.0, 1e8])
def test_regularisation_matches_penalised_least_squares(reg_weight: float) -> None:
    """Linear model: the fit equals the closed-form penalised solution.

    chi2 = sum w r^2 + rw ((p1 - t) / s)^2 is minimised by
    (X^T W X + R) p = X^T W y + R t  with R = diag(0, rw / s^2).
    A huge weight pulls the slope to the target.
    """
    x = np.linspace(0.0, 1.0, 11)
    ctx = toy_ctx(TOY_LINE, x)
    obs = synth(ctx, np.array([[0.5, 2.0]]))
    w = np.full(x.size, 100.0)
    target, scale = -1.0, 0.5
    res = fit(toy_model_impl, ctx, obs, np.zeros(2), weights=w, scale=[1.0, scale],
              reg_target=[0.0, target], reg_weight=[0.0, reg_weight],
              options=LMOptions(chi2_rtol=1e-15, step_tol=1e-14))
    xm = np.column_stack([np.ones_like(x), x])
    r = np.diag([0.0, reg_weight / scale ** 2])
    normal = xm.T @ (w[:, None] * xm) + r
    expected = np.linalg.solve(normal, xm.T @ (w * obs[0]) + r @ np.array([0.0, target]))
    assert res.status[0] == STATUS_OK
    np.testing.assert_allclose(res.params[0], expected, rtol=1e-9, atol=1e-12)
    # sigma includes the regularisation in the normal matrix
    np.testing.assert_allclose(res.sigma[0], np.sqrt(np.diag(np.linalg.inv(normal))), rtol=1e-9)
    if reg_weight > 1e6:
        assert res.params[0, 1] == pytest.approx(target, abs=1e-6)
    # reduced chi2 is the data term only: sum w r^2 / (n - npar)
    resid = obs[0] - (res.params[0, 0] + res.params[0, 1] * x)
    assert res.chi2[0] == pytest.approx(np.sum(w * resid ** 2) / (x.size - 2), rel=1e-9,
                                        abs=1e-20)


# ------------------------------------------------------------------ status codes
def test_bad_pixels_get_status_3_and_do_not_affect_neighbours() -> None:
    rng = np.random.default_rng(11)
    x = np.linspace(0.0, 1.0, 8)
    ctx = toy_ctx(TOY_LINE, x)
    obs = synth(ctx, rng.normal(size=(7, 2))) + 0.01 * rng.standard_normal((7, 8))
    w = np.ones((7, 8))
    p0 = np.zeros((7, 2))
    obs[1, 3] = np.nan          # NaN observation
    obs[2, 0] = np.inf          # inf observation
    w[3, 5] = np.nan            # NaN weight
    w[4, :] = 0.0               # no usable point
    p0[5, 1] = np.nan           # NaN start
    obs[6, 2] = np.nan          # NaN observation masked by a zero weight: fitted
    w[6, 2] = 0.0
    res = fit(toy_model_impl, ctx, obs, p0, weights=w)
    assert res.status.tolist() == [STATUS_OK] + [STATUS_BAD_INPUT] * 5 + [STATUS_OK]
    assert np.all(np.isnan(res.params[1:6])) and np.all(np.isnan(res.sigma[1:6]))
    assert np.all(np.isnan(res.chi2[1:6])) and np.all(res.n_iter[1:6] == 0)
    for i in (0, 6):  # same answer as fitting the good pixel alone
        alone = fit(toy_model_impl, ctx, obs[i:i + 1], p0[i:i + 1], weights=w[i:i + 1])
        np.testing.assert_array_equal(res.params[i], alone.params[0])
        np.testing.assert_array_equal(res.sigma[i], alone.sigma[0])
    # the masked point does not count: dof = 7 used points - 2
    fit6 = res.params[6, 0] + res.params[6, 1] * x
    keep = w[6] > 0
    assert res.chi2[6] == pytest.approx(np.sum((obs[6, keep] - fit6[keep]) ** 2) / 5, rel=1e-9)
    assert "bad input" in res.message(1)


def test_negative_weight_is_bad_input() -> None:
    x = np.linspace(0.0, 1.0, 5)
    w = np.ones(5)
    w[2] = -1.0
    res = fit(toy_model_impl, toy_ctx(TOY_LINE, x), np.zeros((1, 5)), np.zeros(2), weights=w)
    assert res.status[0] == STATUS_BAD_INPUT


def test_model_returning_nan_gives_status_2_for_that_pixel_only() -> None:
    """NaN model at the start: status 2, NaN params; NaN at a trial point: step rejected."""
    x = np.linspace(0.0, 1.0, 10)
    ctx = toy_ctx(TOY_NAN_ABOVE, x, nan_above=5.0)
    obs = synth(toy_ctx(TOY_LINE, x), np.array([[1.0, 1.0], [1.0, 1.0], [4.0, -1.0]]))
    p0 = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 0.0]])
    res = fit(toy_model_impl, ctx, obs, p0, scale=[1.0, 1.0])
    assert res.status.tolist() == [STATUS_OK, STATUS_FAILED, STATUS_OK]
    assert np.all(np.isnan(res.params[1])) and np.isnan(res.chi2[1])
    np.testing.assert_allclose(res.params[[0, 2]], [[1.0, 1.0], [4.0, -1.0]], atol=1e-6)
    assert "failed" in res.message(1)
    # every start NaN: failed, with the iterations of no start counted
    res = fit(toy_model_impl, ctx, obs[:1], np.array([[[7.0, 0.0], [8.0, 0.0]]]))
    assert res.status[0] == STATUS_FAILED and res.n_iter[0] == 0


def test_nan_region_rejects_steps_without_failing() -> None:
    """Truth intercept 6 lies in the NaN region (> 5): the fit stops below it, finite."""
    x = np.linspace(0.0, 1.0, 10)
    ctx = toy_ctx(TOY_NAN_ABOVE, x, nan_above=5.0)
    obs = synth(toy_ctx(TOY_LINE, x), np.array([[6.0, 0.0]]))
    res = fit(toy_model_impl, ctx, obs, np.zeros(2), scale=[1.0, 1.0],
              options=LMOptions(max_iter=200))
    assert res.status[0] in (STATUS_OK, STATUS_MAX_ITER)
    assert np.all(np.isfinite(res.params[0])) and res.params[0, 0] <= 5.0
    assert res.params[0, 0] > 4.0


def test_max_iter_gives_status_1_with_best_params_so_far() -> None:
    """Rosenbrock from (-1.2, 1): 3 iterations are not enough, the full run converges."""
    ctx = toy_ctx(TOY_ROSENBROCK, np.zeros(2))
    obs = np.zeros((1, 2))
    p0 = np.array([-1.2, 1.0])
    short = fit(toy_model_impl, ctx, obs, p0, scale=[1.0, 1.0], options=LMOptions(max_iter=3))
    assert short.status[0] == STATUS_MAX_ITER and short.n_iter[0] == 3
    assert "max_iter" in short.message(0)
    start_chi2 = (10 * (1.0 - 1.44)) ** 2 + 2.2 ** 2  # dof = max(2 - 2, 1) = 1
    assert short.chi2[0] < start_chi2  # better than the start: best params so far
    full = fit(toy_model_impl, ctx, obs, p0, scale=[1.0, 1.0],
               options=LMOptions(max_iter=200, chi2_rtol=1e-14, step_tol=1e-12))
    assert full.status[0] == STATUS_OK and full.n_iter[0] < 200
    np.testing.assert_allclose(full.params[0], [1.0, 1.0], atol=1e-7)


def test_zero_sensitivity_parameter_gets_nan_sigma_only() -> None:
    """A parameter the model ignores keeps its start value and sigma NaN; others are fine."""
    x = np.linspace(0.0, 1.0, 10)
    ctx = toy_ctx(TOY_LINE, x)
    obs = synth(ctx, np.array([[1.0, 2.0]]))
    res = fit(toy_model_impl, ctx, obs, np.array([0.0, 0.0, 3.0]))
    assert res.status[0] == STATUS_OK
    np.testing.assert_allclose(res.params[0], [1.0, 2.0, 3.0], atol=1e-7)
    assert np.all(np.isfinite(res.sigma[0, :2])) and np.isnan(res.sigma[0, 2])


def test_singular_normal_matrix_gives_nan_sigma() -> None:
    """y = (p0 + p1) + p2 x: J^T J is singular; the damped fit still converges."""
    x = np.linspace(0.0, 1.0, 10)
    ctx = toy_ctx(TOY_LINE_SUM, x)
    obs = synth(ctx, np.array([[0.5, 0.5, 2.0]]))
    res = fit(toy_model_impl, ctx, obs, np.array([0.0, 0.0, 0.0]), scale=[1.0, 1.0, 1.0])
    assert res.status[0] == STATUS_OK
    assert res.params[0, 0] + res.params[0, 1] == pytest.approx(1.0, abs=1e-7)
    assert res.params[0, 2] == pytest.approx(2.0, abs=1e-7)
    assert np.all(np.isnan(res.sigma[0]))


# ------------------------------------------------------------------ multi-start
def test_multistart_keeps_lowest_chi2_and_counts_iterations() -> None:
    """cos(f x) has many local minima in f; each start alone lands in its own."""
    x = np.linspace(0.0, 6.0, 40)
    ctx = toy_ctx(TOY_FREQ, x)
    obs = synth(ctx, np.array([[2.0]]))
    starts = np.array([[0.6], [3.3], [2.2], [4.5]])
    opts = LMOptions(chi2_rtol=1e-12)
    single = fit(toy_model_impl, ctx, np.repeat(obs, 4, axis=0), starts, scale=[1.0],
                 options=opts)
    assert np.unique(np.round(single.chi2, 6)).size >= 3  # really different minima
    multi = fit(toy_model_impl, ctx, obs, starts[None], scale=[1.0], options=opts)
    best = int(np.argmin(single.chi2))
    assert multi.params[0, 0] == single.params[best, 0]
    assert multi.params[0, 0] == pytest.approx(2.0, abs=1e-6)
    assert multi.chi2[0] == single.chi2.min()
    assert multi.n_iter[0] == single.n_iter.sum()
    # good_chi2: stop after the first start that is good enough (the third one)
    early = fit(toy_model_impl, ctx, obs, starts[None], scale=[1.0],
                options=LMOptions(chi2_rtol=1e-12, good_chi2=1e-6))
    assert early.params[0, 0] == pytest.approx(2.0, abs=1e-6)
    assert early.n_iter[0] == single.n_iter[:3].sum()


# --------------------------------------------------------------------- API
def test_result_helpers() -> None:
    res = FitResult(params=np.zeros((3, 1)), sigma=np.zeros((3, 1)), chi2=np.zeros(3),
                    n_iter=np.array([1, 2, 3], dtype=np.int32),
                    status=np.array([0, 1, 3], dtype=np.uint8))
    assert res.success.tolist() == [True, False, False]
    assert res.status_counts() == {0: 1, 1: 1, 2: 0, 3: 1}
    assert res.npix == 3 and "1 converged" in res.summary()
    assert set(STATUS_MESSAGES) == {0, 1, 2, 3}


def test_p0_forms_and_weight_broadcast_agree() -> None:
    x = np.linspace(0.0, 1.0, 6)
    ctx = toy_ctx(TOY_LINE, x)
    obs = synth(ctx, np.array([[1.0, 2.0], [3.0, -1.0]]))
    w = np.linspace(1.0, 2.0, 6)
    a = fit(toy_model_impl, ctx, obs, np.zeros(2), weights=w)
    b = fit(toy_model_impl, ctx, obs, np.zeros((2, 2)), weights=np.stack([w, w]))
    c = fit(toy_model_impl, ctx, obs, np.zeros((2, 1, 2)), weights=w)
    for r in (b, c):
        np.testing.assert_array_equal(a.params, r.params)
    assert fit(toy_model_impl, ctx, obs[:0], np.zeros(2)).params.shape == (0, 2)


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"obs": np.zeros(6)}, r"obs must have shape \(npix, nobs\), got shape \(6,\)"),
    ({"p0": np.zeros((3, 2))}, r"p0 of shape \(npix, npar\) must have npix = 2"),
    ({"p0": np.zeros((3, 1, 2))}, r"p0 of shape \(npix, nstart, npar\) must have npix = 2"),
    ({"p0": np.zeros((2, 1, 1, 2))}, r"p0 must have shape"),
    ({"weights": np.ones(5)}, r"weights must have shape \(nobs,\) = \(6,\)"),
    ({"lower": np.zeros(3)}, r"lower must have shape \(npar,\) = \(2,\).*got shape \(3,\)"),
    ({"upper": [1.0, -1.0], "lower": [0.0, 0.0]}, r"lower <= upper"),
    ({"scale": [1.0, 0.0]}, r"scale must be finite and > 0"),
    ({"bound_mode": ["clip", "wrap"]}, r"bound_mode entry 'wrap' is unknown"),
    ({"bound_mode": [0, 5]}, r"bound_mode entries must be 0"),
    ({"bound_mode": ["periodic", "clip"]}, r"periodic/reflect parameters \[0\] need finite"),
    ({"reg_weight": [-1.0, 0.0]}, r"reg_weight must be finite and >= 0"),
    ({"threads": 0}, r"threads must be an integer >= 1"),
    ({"model": lambda p, c, y, j: None}, r"model must be a numba @njit function"),
    ({"kernel": toy_model_impl}, r"pass model=None when kernel is given"),
])
def test_shape_and_value_errors_name_the_argument(kwargs: dict, pattern: str) -> None:
    x = np.linspace(0.0, 1.0, 6)
    args = {"model": toy_model_impl, "ctx": toy_ctx(TOY_LINE, x), "obs": np.zeros((2, 6)),
            "p0": np.zeros(2)}
    for key in ("model", "obs", "p0"):
        if key in kwargs:
            args[key] = kwargs.pop(key)
    with pytest.raises(LMError, match=pattern):
        fit(args["model"], args["ctx"], args["obs"], args["p0"], **kwargs)


@pytest.mark.parametrize("kwargs", [{"max_iter": -1}, {"chi2_rtol": float("nan")},
                                    {"step_tol": -1.0}, {"max_iter": 2.5},
                                    {"sigma_tol": -0.1}, {"sigma_tol": float("inf")}])
def test_options_are_validated(kwargs: dict) -> None:
    with pytest.raises(LMError, match="LMOptions"):
        LMOptions(**kwargs)


def test_lmerror_is_a_value_error() -> None:
    assert issubclass(LMError, ValueError)


def test_read_only_inputs_reuse_the_compiled_engine() -> None:
    """Read-only arrays (h5py, broadcast_to) are copied, not compiled for anew.

    Regression: numba specialises on read-only arrays, which recompiled the
    whole engine and made a caller's cached wrapper miss its cache.
    """
    from stokesflow.lm_solver._kernels import fit_pixels_impl

    x = np.linspace(0.0, 1.0, 6)
    ctx = toy_ctx(TOY_LINE, x)
    obs = synth(ctx, np.array([[1.0, 2.0]]))
    ref = fit(toy_model_impl, ctx, obs, np.zeros(2))
    n_sigs = len(fit_pixels_impl.signatures)
    obs_ro = obs.copy()
    obs_ro.flags.writeable = False
    p0_ro = np.broadcast_to(np.zeros(2), (1, 1, 2))
    res = fit(toy_model_impl, ctx, obs_ro, p0_ro, weights=np.broadcast_to(1.0, (6,)))
    np.testing.assert_array_equal(res.params, ref.params)
    assert len(fit_pixels_impl.signatures) == n_sigs


# ------------------------------------------------------------------ sigma_tol
def _sloppy_problem(npix: int = 1500) -> tuple:
    """Exponential + broad, weak Gaussian with noise 0.05: a sloppy fit.

    The Gaussian's amplitude, centre and width trade off against each other
    and against the exponential (marginal sigmas of tens of percent), so LM
    crawls along a curved valley where each step still lowers chi2 by more
    than a tight chi2_rtol.
    """
    rng = np.random.default_rng(31)
    noise = 0.05
    x = np.linspace(0.0, 10.0, 25)
    ctx = toy_ctx(TOY_EXPGAUSS, x)
    truth = np.column_stack([
        rng.uniform(0.8, 1.2, npix), rng.uniform(1.5, 3.0, npix), rng.uniform(0.15, 0.3, npix),
        rng.uniform(4.0, 7.0, npix), rng.uniform(1.5, 2.5, npix),
    ])
    obs = synth(ctx, truth) + noise * rng.standard_normal((npix, x.size))
    p0 = truth * rng.uniform(0.8, 1.2, truth.shape)
    lower = [0.0, 0.1, 0.0, 0.0, 0.3]
    upper = [10.0, 20.0, 10.0, 10.0, 10.0]
    return ctx, obs, p0, dict(weights=np.full(x.size, noise ** -2), lower=lower, upper=upper)


def test_sigma_tol_stops_the_crawl_with_the_fit_statistically_unchanged() -> None:
    """sigma_tol = 0.1 against a tight chi2_rtol (1e-10) on a sloppy problem.

    Expected: fewer iterations (measured 2.6x; asserted >= 1.25x), the same
    pixels converged, every parameter of 98 % of the pixels within 0.5 of its
    sigma of the tight solution (measured 99.3 %; the largest 99th-percentile
    pull 0.27: a step below 0.1 sigma with LM's linear convergence leaves the
    point within a few tenths of a sigma), and a small chi2 excess over the
    tight fit in statistical units (measured median 0.0002 and 99th
    percentile 0.09 chi2 units; asserted 0.05 and 1).
    """
    ctx, obs, p0, kw = _sloppy_problem()
    tight = fit(toy_model_impl, ctx, obs, p0, options=LMOptions(chi2_rtol=1e-10, max_iter=400), **kw)
    quick = fit(toy_model_impl, ctx, obs, p0, options=LMOptions(chi2_rtol=1e-10, max_iter=400, sigma_tol=0.1),
                **kw)
    ok = tight.success & quick.success
    assert ok.mean() > 0.97, (tight.summary(), quick.summary())
    assert tight.n_iter.sum() >= 1.25 * quick.n_iter.sum(), (tight.n_iter.sum(), quick.n_iter.sum())
    pull = np.abs(quick.params[ok] - tight.params[ok]) / tight.sigma[ok]
    assert np.mean(np.all(pull < 0.5, axis=1)) > 0.98, np.percentile(pull, [50, 99], axis=0)
    dof = obs.shape[1] - p0.shape[1]
    excess = (quick.chi2[ok] - tight.chi2[ok]) * dof
    assert np.median(excess) < 0.05 and np.percentile(excess, 99) < 1.0, np.percentile(excess, [50, 99])
    assert np.all(excess > -1e-6)  # the tight fit is the lower one (same basin)


def test_sigma_tol_stops_at_a_converged_start_without_evaluating_a_step() -> None:
    """Started at its own tight solution, a fit under the sigma rule stops before any step.

    The rule tests the step solved at the current point: at a minimum that
    step moves no parameter by 0.1 sigma, so the fit ends after one solve
    (n_iter 1) with the starting parameters returned unchanged (to the
    rounding of the solver's scaled coordinates, p / scale * scale: 1e-15
    relative; a step, even one of 0.1 sigma, moves them by 1e-4 or more),
    and its sigma is the covariance there. A rule that looked at the last accepted step instead
    would take one more step and move the parameters.
    """
    ctx, obs, p0, kw = _sloppy_problem(200)
    tight = fit(toy_model_impl, ctx, obs, p0, options=LMOptions(chi2_rtol=1e-12, max_iter=400), **kw)
    ok = tight.success
    again = fit(toy_model_impl, ctx, obs[ok], tight.params[ok],
                options=LMOptions(chi2_rtol=1e-12, max_iter=400, sigma_tol=0.1), **kw)
    assert again.success.all()
    # a few pixels start on a clipped bound, where the damped system differs: >= 95 % stop at once
    first = again.n_iter == 1
    assert first.mean() > 0.95, np.bincount(again.n_iter)
    np.testing.assert_allclose(again.params[first], tight.params[ok][first], rtol=1e-14, atol=0)
    np.testing.assert_allclose(again.sigma[first], tight.sigma[ok][first], rtol=1e-9)


def test_sigma_tol_zero_is_the_previous_rule() -> None:
    """sigma_tol = 0 (default) and a tolerance too small to ever fire give identical fits."""
    ctx, obs, p0, kw = _sloppy_problem(200)
    a = fit(toy_model_impl, ctx, obs, p0, **kw)
    b = fit(toy_model_impl, ctx, obs, p0, options=LMOptions(sigma_tol=1e-300), **kw)
    np.testing.assert_array_equal(a.n_iter, b.n_iter)
    np.testing.assert_array_equal(a.params, b.params)


def test_sigma_tol_needs_a_wrapper_that_takes_it() -> None:
    """A cached wrapper written before sigma_tol still works, and refuses sigma_tol > 0 by name."""
    from _lm_cached_wrapper import fit_line_impl

    x = np.linspace(0.0, 1.0, 7)
    obs = (1.0 + 2.0 * x)[None, :]
    res = fit(None, (x,), obs, np.zeros(2), kernel=fit_line_impl)
    np.testing.assert_allclose(res.params[0], [1.0, 2.0], atol=1e-8)
    with pytest.raises(LMError, match="fit_line_impl.*sigma_tol"):
        fit(None, (x,), obs, np.zeros(2), kernel=fit_line_impl, options=LMOptions(sigma_tol=0.1))


@pytest.mark.parametrize("scale_covar", [False, True])
def test_sigma_tol_stop_reports_the_covariance_at_the_solution(scale_covar: bool) -> None:
    """A fit stopped by the sigma rule reuses the rule's covariance for its sigma.

    It must be the covariance of the undamped normal matrix at the returned
    point, times the reduced chi2 when scale_covar: recomputed here from
    scratch (model, normal matrix, inverse) at ``res.params``. Tolerance
    1e-12 relative: the same arithmetic, up to the reassociation the
    normal-matrix kernel allows (fastmath reassoc) where it is inlined; a
    wrong factor, scale or matrix is off by percents.
    """
    ctx, obs, p0, kw = _sloppy_problem(200)
    scale = np.array([1.0, 2.0, 0.2, 5.0, 2.0])
    res = fit(toy_model_impl, ctx, obs, p0, scale=scale,
              options=LMOptions(chi2_rtol=1e-10, max_iter=400, sigma_tol=0.1, scale_covar=scale_covar), **kw)
    assert res.success.mean() > 0.97
    nobs, npar = obs.shape[1], p0.shape[1]
    sw = np.full(nobs, 1.0 / 0.05)
    zero = np.zeros(npar)
    y, jac = np.empty(nobs), np.empty((nobs, npar))
    jw, rs, a, g = np.empty((npar, nobs)), np.empty(nobs), np.empty((npar, npar)), np.empty(npar)
    work, idx, z, sig = np.empty((npar, npar)), np.empty(npar, dtype=np.int64), np.empty(npar), np.empty(npar)
    for i in np.flatnonzero(res.success):
        p = np.ascontiguousarray(res.params[i])
        toy_model_impl(p, ctx, y, jac)
        normal_equations_impl(jac, y, obs[i], sw, scale, p / scale, zero, zero, jw, rs, a, g)
        sigma_from_normal_impl(a, scale, res.chi2[i] if scale_covar else 1.0, work, idx, z, sig)
        np.testing.assert_allclose(res.sigma[i], sig, rtol=1e-12, err_msg=f"pixel {i}")


def test_sigma_tol_on_and_off_share_one_compiled_wrapper() -> None:
    """A caller's wrapper that takes sigma_tol gets it on every call, 0 included.

    An omitted defaulted argument is another numba signature, so a wrapper
    called once with the rule off and once with it on compiled (or loaded)
    the whole inlined engine twice: ~4 s the first time a process switched
    the rule on. Both calls must use one specialisation.
    """
    from _lm_cached_wrapper import fit_line_sigma_impl

    x = np.linspace(0.0, 1.0, 7)
    obs = (1.0 + 2.0 * x)[None, :]
    for tol in (0.0, 0.1, 0.0):
        res = fit(None, (x,), obs, np.zeros(2), weights=np.full(x.size, 1e6), kernel=fit_line_sigma_impl,
                  options=LMOptions(sigma_tol=tol))
        # statistical weights (sigma of the data 1e-3): the rule stops within 0.1 sigma ~ 1e-4
        np.testing.assert_allclose(res.params[0], [1.0, 2.0], atol=1e-3)
    assert len(fit_line_sigma_impl.signatures) == 1, fit_line_sigma_impl.signatures
