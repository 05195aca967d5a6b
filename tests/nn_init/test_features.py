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
