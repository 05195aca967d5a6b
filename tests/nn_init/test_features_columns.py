"""Node columns (``NAME@LOGTAU``) and constant training targets in :mod:`stokesflow.nn_init.features`."""

from __future__ import annotations

import numpy as np

from stokesflow.backends.base import ParameterSpec
from stokesflow.nn_init.features import TargetEncoding, node_column, split_column


def test_node_columns_name_a_quantity_at_a_depth():
    assert node_column("T", -2.0) == "T@-2" and node_column("B", 0.5) == "B@0.5"
    assert split_column("T@-2") == ("T", -2.0) and split_column("vmac") == ("vmac", None)


def test_a_target_with_one_value_decodes_to_that_value_exactly():
    """SIR's filling factor and stray light are not inverted by its strategies: every training pixel holds the
    guess model's value, and a network's output must not move it."""
    specs = (ParameterSpec("B@-1", "G", 0.0, 6000.0, 1.0), ParameterSpec("filling_factor", "", 0.0, 1.0, 1.0),
             ParameterSpec("azimuth@-1", "deg", 0.0, 180.0, 1.0, circular=True))
    rng = np.random.default_rng(0)
    p = np.column_stack([rng.uniform(100, 2000, 50), np.full(50, 1.0), rng.uniform(0, 180, 50)])
    enc = TargetEncoding.fit(specs, p)
    assert enc.sigma[1] == 0.0 and enc.mean[1] == 1.0
    t = enc.encode(p)
    assert np.all(t[:, 1] == 0) and np.isfinite(t).all()
    out = enc.decode(t + rng.normal(0, 0.3, t.shape).astype(np.float32))  # a network's error on every output
    assert np.all(out[:, 1] == 1.0)
    np.testing.assert_allclose(enc.decode(t)[:, 0], p[:, 0], rtol=1e-6)  # float32 targets
    back = TargetEncoding.from_dict(enc.to_dict())
    assert back.sigma[1] == 0.0 and np.all(back.decode(t)[:, 1] == 1.0)
