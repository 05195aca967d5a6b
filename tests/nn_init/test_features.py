"""Target encoding (azimuth through cos 2phi / sin 2phi) and input normalisation."""

from __future__ import annotations

import numpy as np

from stokesflow.backends import get_backend
from stokesflow.nn_init.features import InputScaling, TargetEncoding, normalise_spectra


def test_target_round_trip_and_azimuth_wrap():
    me = get_backend("me", {"lines": ["FeI_6173"]})
    rng = np.random.default_rng(3)
    specs = me.parameters
    lo = np.array([p.lower for p in specs])
    hi = np.array([p.upper for p in specs])
    params = lo + (hi - lo) * rng.uniform(0.05, 0.95, (200, len(specs)))
    enc = TargetEncoding.fit(specs, params)
    assert enc.n_outputs == len(specs) + 1  # the azimuth takes two outputs
    back = enc.decode(enc.encode(params))
    np.testing.assert_allclose(back, params, rtol=1e-5, atol=1e-4)  # float32 targets: ~1e-7 relative
    # 179 deg and 1 deg are 2 deg apart on the 180-deg circle: their encodings are close
    j = [p.name for p in specs].index("azimuth")
    a, b = params[:2].copy(), params[:2].copy()
    a[:, j], b[:, j] = 179.0, 1.0
    k = sum(1 for p in specs[:j])  # outputs before the azimuth's pair
    d = np.abs(enc.encode(a)[:, k:k + 2] - enc.encode(b)[:, k:k + 2]).max()
    assert d < 2 * np.sin(np.deg2rad(2.0))  # chord of 4 deg of the doubled angle
    again = TargetEncoding.from_dict(enc.to_dict())
    np.testing.assert_array_equal(again.encode(params), enc.encode(params))


def test_long_tailed_parameters_are_learned_through_their_log():
    """A positive parameter whose values have a long tail (B, eta0) is encoded as log(p + c), a
    symmetric one or one with negative values linearly; the encoding round-trips and old model
    files (no ``log_offset``) decode as they were trained."""
    import json

    from stokesflow.nn_init.features import LOG_OFFSET_FLOOR

    me = get_backend("me", {"lines": ["FeI_6173"]})
    specs = me.parameters
    names = [p.name for p in specs]
    rng = np.random.default_rng(4)
    n = 2000
    cols = {"B": np.minimum(20.0 * rng.lognormal(0.0, 1.5, n), 5900.0),  # most weak, a tail of kG
            "inclination": rng.uniform(10, 170, n), "azimuth": rng.uniform(0, 180, n),
            "vlos": rng.normal(0, 1, n),  # negative values: never a log
            "doppler_width": rng.normal(30, 3, n),  # symmetric: linear
            "eta0": rng.lognormal(2.0, 0.8, n), "damping": np.full(n, 0.2),  # one value: nothing to learn
            "S0": rng.normal(0.3, 0.03, n), "S1": rng.normal(0.7, 0.05, n)}
    cols["B"][:5] = 0.0  # exact zeros: the offset keeps the log finite
    params = np.column_stack([cols[k] for k in names])
    enc = TargetEncoding.fit(specs, params)
    logged = {k for k, c in zip(names, enc.log_offset) if np.isfinite(c)}
    assert logged == {"B", "eta0"}
    jb = names.index("B")
    assert enc.log_offset[jb] == max(np.percentile(cols["B"], 1), LOG_OFFSET_FLOOR * np.median(cols["B"]))
    t = enc.encode(params)
    assert np.isfinite(t).all()
    k_b = names.index("B")  # outputs before the azimuth's pair: one per parameter
    np.testing.assert_allclose([t[:, k_b].mean(), t[:, k_b].std()], [0.0, 1.0], atol=1e-4)
    np.testing.assert_allclose(enc.decode(t), params, rtol=2e-5, atol=2e-4)
    # a wild output decodes to the upper bound, not to inf
    wild = t[:3].copy()
    wild[:, k_b] = 1e4
    np.testing.assert_allclose(enc.decode(wild)[:, jb], specs[jb].upper, rtol=1e-12)
    # the model file's record is plain JSON; a record without log_offset (older files) is linear
    d = json.loads(json.dumps(enc.to_dict()))
    np.testing.assert_array_equal(TargetEncoding.from_dict(d).encode(params), t)
    linear = TargetEncoding.fit(specs, params, log=False)
    assert not np.isfinite(linear.log_offset).any()
    old = {k: v for k, v in linear.to_dict().items() if k != "log_offset"}
    np.testing.assert_array_equal(TargetEncoding.from_dict(old).encode(params), linear.encode(params))
    assert not np.allclose(linear.encode(params)[:, k_b], t[:, k_b])


def test_skewness_matches_scipy():
    """The written-out sample skewness (no scipy.stats import in a training task) is scipy's biased one."""
    from scipy.stats import skew

    from stokesflow.nn_init.features import _skewness

    rng = np.random.default_rng(3)
    for v in (rng.lognormal(5.0, 1.0, 5000), rng.normal(0.0, 2.0, 5000), rng.uniform(0.0, 180.0, 5000),
              np.array([1.0, 2.0, 10.0])):
        assert abs(_skewness(v) - float(skew(v))) <= 1e-10 * max(1.0, abs(float(skew(v))))
    assert np.isnan(_skewness(np.full(10, 7.0)))


def test_input_scaling_and_features():
    rng = np.random.default_rng(0)
    s = rng.normal(0, 1e-2, (300, 4, 6))
    s[:, 0] += 1.0
    sc = InputScaling.fit(s)
    x = sc.apply(s)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose([x[:, k].std() for k in range(4)], 1.0, rtol=1e-3)
    f, scale = normalise_spectra(np.concatenate([s, np.full((1, 4, 6), np.nan)]))
    assert f.shape == (301, 24) and np.isnan(f[-1]).all() and scale.shape == (4,)
    # a pixel without light (zero padding) has no features either: k-means never picks it
    g, scale0 = normalise_spectra(np.concatenate([s, np.zeros((1, 4, 6))]))
    assert np.isnan(g[-1]).all() and np.isfinite(g[:-1]).all()
    np.testing.assert_allclose(scale0, scale, rtol=1e-6)


def test_input_stretch_of_the_polarisation():
    """Q, U, V through asinh(x / s0), s0 = INPUT_STRETCH x their median |x|; I linear; then unit
    variance; monotonic; an all-zero Stokes parameter stays linear; old records are linear."""
    from stokesflow.nn_init.features import INPUT_STRETCH

    rng = np.random.default_rng(1)
    n, nw = 500, 6
    s = rng.normal(0, 1e-3, (n, 4, nw))
    s[:, 0] += 1.0
    s[:50, 3] += np.linspace(0.01, 0.3, 50)[:, None]  # a few strong V signals, a long tail
    s[:, 2] = 0.0  # no U at all
    sc = InputScaling.fit(s, stretch=True)
    assert sc.stretch[0] == 0.0 and sc.stretch[2] == 0.0
    assert sc.stretch[1] == INPUT_STRETCH * np.median(np.abs(s[:, 1])) and sc.stretch[3] > 0
    x = sc.apply(s)
    assert x.dtype == np.float32 and np.isfinite(x).all()
    np.testing.assert_allclose([x[:, k].std() for k in (0, 1, 3)], 1.0, rtol=1e-3)
    v = np.arcsinh(s[:, 3] / sc.stretch[3])
    np.testing.assert_allclose(x[:, 3], (v - v.mean(axis=0)) / v.std(), rtol=1e-4, atol=1e-4)
    order = np.argsort(s[:50, 3, 0])
    assert (np.diff(x[:50, 3, 0][order]) > 0).all()  # the stretch keeps the order of the signals
    # the strong tail no longer sets the scale: the weak V pixels are spread wider than linearly
    lin = InputScaling.fit(s)
    assert not lin.stretch.any()
    assert x[50:, 3].std() > 3 * lin.apply(s)[50:, 3].std()
    again = InputScaling.from_dict(sc.to_dict())
    np.testing.assert_array_equal(again.apply(s), x)
    old = {k: v for k, v in lin.to_dict().items() if k != "stretch"}
    np.testing.assert_array_equal(InputScaling.from_dict(old).apply(s), lin.apply(s))


def test_polarity_mirror_is_an_exact_symmetry_of_the_me_model():
    """Mirrored parameters synthesise the mirrored spectra: (I, Q, -U, -V) to rounding.

    Milne-Eddington with magneto-optical effects (damping > 0 gives Faraday
    terms that couple Q and U), the HMI grid, and a Hinode-like grid through a 25 mA PSF:
    inclination -> 180 - inclination and azimuth -> -azimuth (mod 180) must
    reproduce the mirrored profiles to 1e-12 of the continuum. A wrong
    azimuth rule (keeping it, the plain field reversal) leaves Q and U off by
    the Faraday rotation, about 1e-3 and more; checked below as well.
    """
    from _me_pixels import random_me_params

    from stokesflow.nn_init.features import polarity_mirror

    rng = np.random.default_rng(3)
    n = 200
    params = random_me_params(rng, n, B=(100, 3000), inclination=(0, 180), azimuth=(0, 180), vlos=(-3, 3),
                              eta0=(2, 30), damping=(0.05, 0.6), S0=(0.1, 0.4), S1=(0.5, 0.9))
    grids = {"hmi": (["FeI_6173"], {}, 6173.3433 + 1e-3 * np.array([-172.0, -103.2, -34.4, 34.4, 103.2, 172.0])),
             "hinode": (["FeI_6301", "FeI_6302"], {"instrument": "psf", "psf_fwhm": 25.0},
                        6300.884 + 0.021549 * np.arange(112))}
    for lines, opts, wl in grids.values():
        me = get_backend("me", {"lines": lines, **opts})
        stokes = me.synthesize(params, wl)
        x, p = polarity_mirror(stokes, params, me.parameters)
        np.testing.assert_allclose(me.synthesize(p, wl), x, rtol=0, atol=1e-12)
        assert np.all((p[:, 2] >= 0) & (p[:, 2] < 180)) and np.allclose(p[:, 1], 180 - params[:, 1])
        reversed_only = p.copy()
        reversed_only[:, 2] = params[:, 2]
        assert np.abs(me.synthesize(reversed_only, wl)[:, 1:3] - x[:, 1:3]).max() > 1e-3


def test_polarity_mirror_maps_depth_columns_and_skips_targets_without_an_inclination():
    """Depth columns of the angles are mirrored like the plain ones; a target set without an inclination gets None."""
    from stokesflow.backends.base import ParameterSpec
    from stokesflow.nn_init.features import polarity_mirror

    specs = [ParameterSpec("T@-1", "K", 2000, 20000, 1000), ParameterSpec("inclination@-1", "deg", 0, 180, 30),
             ParameterSpec("azimuth@-1", "deg", 0, 180, 30, circular=True), ParameterSpec("B@-1", "G", 0, 6000, 500)]
    stokes = np.ones((2, 4, 3))
    params = np.array([[5000.0, 30.0, 0.0, 800.0], [6000.0, 150.0, 120.0, 1200.0]])
    x, p = polarity_mirror(stokes, params, specs)
    np.testing.assert_array_equal(x[:, :2], stokes[:, :2])
    np.testing.assert_array_equal(x[:, 2:], -stokes[:, 2:])
    np.testing.assert_array_equal(p, [[5000.0, 150.0, 0.0, 800.0], [6000.0, 30.0, 60.0, 1200.0]])
    assert polarity_mirror(stokes, params[:, [0, 3]], [specs[0], specs[3]]) is None
