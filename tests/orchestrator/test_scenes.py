"""Synthetic scenes: names, units, determinism, row blocks, and the physical regimes.

The ranges checked per region are those the scenes are specified to span (task
brief and DESIGN.md parameter table): umbra 2500-3500 G nearly vertical, penumbra
1000-2000 G inclined about 60-80 deg with radial azimuth and an Evershed-like flow,
plage 1000-1500 G near vertical, quiet Sun with granular flows of 1-2 km/s and
fields of tens of gauss.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from stokesflow.orchestrator.scenes import (
    PARAMETERS,
    PENUMBRA,
    PLAGE,
    QUIET,
    SCENES,
    UMBRA,
    make_scene,
    scene_layout,
    scene_regions,
)

N = 128


@pytest.fixture(scope="module")
def scenes():
    return {k: (make_scene(k, N, N, seed=7), scene_regions(k, N, N, seed=7)) for k in SCENES}


def _folded(inclination: np.ndarray) -> np.ndarray:
    """Angle from the vertical regardless of polarity, deg."""
    return np.minimum(inclination, 180.0 - inclination)


def test_names_shapes_dtypes_and_global_ranges(scenes):
    for kind, (p, lab) in scenes.items():
        assert tuple(p) == PARAMETERS
        assert lab.shape == (N, N) and lab.dtype == np.int8
        for name, v in p.items():
            assert v.shape == (N, N) and v.dtype == np.float64 and np.all(np.isfinite(v)), (kind, name)
        # DESIGN.md parameter table ranges
        assert p["B"].min() >= 0 and p["B"].max() <= 5000
        assert p["inclination"].min() >= 0 and p["inclination"].max() <= 180
        assert p["azimuth"].min() >= 0 and p["azimuth"].max() < 180
        assert np.abs(p["vlos"]).max() <= 7
        assert 10 <= p["doppler_width"].min() and p["doppler_width"].max() <= 60
        assert 1 <= p["eta0"].min() and p["eta0"].max() <= 60
        assert 0 <= p["damping"].min() and p["damping"].max() <= 1
        for s in ("S0", "S1"):
            assert 0 < p[s].min() and p[s].max() <= 1.5


def test_deterministic_with_seed():
    a = make_scene("mixed", 40, 50, seed=3)
    b = make_scene("mixed", 40, 50, seed=3)
    c = make_scene("mixed", 40, 50, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in PARAMETERS)
    assert not np.array_equal(a["vlos"], c["vlos"])
    assert scene_layout("mixed", 40, 50, seed=3) == scene_layout("mixed", 40, 50, seed=3)


@pytest.mark.parametrize("kind", SCENES)
def test_row_blocks_equal_the_full_map(kind):
    full = make_scene(kind, 70, 45, seed=11)
    labels = scene_regions(kind, 70, 45, seed=11)
    for rows in (slice(0, 1), slice(1, 33), slice(33, 70), slice(5, 60, 7), slice(60, 200)):
        block = make_scene(kind, 70, 45, seed=11, rows=rows)
        for k in PARAMETERS:
            np.testing.assert_array_equal(block[k], full[k][rows])
        np.testing.assert_array_equal(scene_regions(kind, 70, 45, seed=11, rows=rows), labels[rows])


def test_a_block_of_a_4096_scene_needs_the_memory_of_the_block():
    # (its time is measured by benchmarks/orchestrator_scaling.py, not asserted here)
    tracemalloc.start()
    try:
        block = make_scene("mixed", 4096, 4096, seed=1, rows=slice(2048, 2056))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert block["B"].shape == (8, 4096)
    assert peak < 150e6  # bytes: the block and its temporaries, never the 4096 x 4096 map (1.2 GB)


def test_large_blocks_are_computed_in_pieces(monkeypatch):
    # A block is computed in pieces of about 2**18 pixels, so its temporaries stay bounded
    # whatever the caller asks for; the pieces together equal the whole.
    import stokesflow.orchestrator.scenes as scenes

    seen = []
    real = scenes._piece

    def spy(lay, yv, xv):
        seen.append(yv.size * xv.size)
        return real(lay, yv, xv)

    monkeypatch.setattr(scenes, "_BLOCK_PIXELS", 64 * 10)
    monkeypatch.setattr(scenes, "_piece", spy)
    pieces = make_scene("mixed", 70, 64, seed=2)
    assert len(seen) == 7 and max(seen) <= 64 * 10
    monkeypatch.setattr(scenes, "_piece", real)
    monkeypatch.setattr(scenes, "_BLOCK_PIXELS", 1 << 18)
    whole = make_scene("mixed", 70, 64, seed=2)
    for k in PARAMETERS:
        np.testing.assert_array_equal(pieces[k], whole[k])


def test_sunspot_umbra_and_penumbra(scenes):
    p, lab = scenes["sunspot"]
    umbra, pen, quiet = lab == UMBRA, lab == PENUMBRA, lab == QUIET
    assert umbra.sum() > 200 and pen.sum() > 1000 and quiet.sum() > 0.5 * N * N
    ic = p["S0"] + p["S1"]
    # Umbra: dark, 2500-3500 G, nearly vertical.
    assert p["B"][umbra].min() >= 2500 and p["B"][umbra].max() <= 3500
    assert _folded(p["inclination"][umbra]).max() <= 25
    assert ic[umbra].max() < 0.45 and ic[pen].mean() < 0.9 * ic[quiet].mean()
    # Penumbra: 1000-2000 G, inclined 60-80 deg on average (55-88 throughout).
    assert p["B"][pen].min() >= 1000 and p["B"][pen].max() <= 2000
    fp = _folded(p["inclination"][pen])
    assert fp.min() >= 55 and fp.max() <= 88 and 60 <= np.median(fp) <= 80
    # Same polarity in umbra and penumbra.
    assert np.all(np.sign(90 - p["inclination"][umbra]) == np.sign(90 - p["inclination"][pen][0]))


def test_penumbra_azimuth_is_radial_and_flow_is_evershed_like(scenes):
    p, lab = scenes["sunspot"]
    spot = scene_layout("sunspot", N, N, seed=7).spot
    yy, xx = np.mgrid[0:N, 0:N]
    radial = np.degrees(np.arctan2(yy - spot.cy, xx - spot.cx)) % 180.0
    pen = lab == PENUMBRA
    diff = np.abs(p["azimuth"] - radial) % 180.0
    diff = np.minimum(diff, 180.0 - diff)
    assert np.percentile(diff[pen], 95) < 15.0
    # Flow along the field: rising (blueshift) in the inner penumbra, diving (redshift) at its edge.
    r = np.hypot(yy - spot.cy, xx - spot.cx) / spot.r_penumbra
    inner = pen & (r < np.percentile(r[pen], 25))
    outer = pen & (r > np.percentile(r[pen], 85))
    assert p["vlos"][inner].mean() < -0.2 and p["vlos"][outer].mean() > 0.3
    assert np.abs(p["vlos"][lab == UMBRA]).max() < 0.7


def test_quiet_sun_granulation_and_weak_fields(scenes):
    p, lab = scenes["quiet"]
    assert np.all(lab == QUIET)
    ic = p["S0"] + p["S1"]
    assert 0.03 < ic.std() < 0.09 and abs(ic.mean() - 1.0) < 0.02  # granular contrast of a few per cent
    # Upflows (blueshift) in bright granules, downflows in dark lanes, 1-2 km/s.
    assert np.corrcoef(ic.ravel(), p["vlos"].ravel())[0, 1] < -0.6
    assert -2.5 <= np.percentile(p["vlos"], 1) < -0.8 and 0.8 < np.percentile(p["vlos"], 99) <= 3.0
    # Fields of tens of gauss in random directions.
    assert 10 <= np.median(p["B"]) <= 100 and p["B"].max() <= 200
    assert 75 < np.median(p["inclination"]) < 105 and p["inclination"].std() > 30
    quarters = np.histogram(p["azimuth"], bins=4, range=(0, 180))[0] / p["azimuth"].size
    assert quarters.min() > 0.15


def test_plage_patches_on_a_network(scenes):
    p, lab = scenes["plage"]
    patch = lab == PLAGE
    assert 0.05 < patch.mean() < 0.6
    assert p["B"][patch].min() >= 1000 and p["B"][patch].max() <= 1500
    assert _folded(p["inclination"][patch]).max() <= 20
    assert p["B"][~patch].max() <= 200
    assert len(np.unique(np.sign(90 - p["inclination"][patch]))) == 1  # one polarity


def test_mixed_has_spot_plage_and_quiet_of_opposite_polarities(scenes):
    p, lab = scenes["mixed"]
    for region in (QUIET, PLAGE, PENUMBRA, UMBRA):
        assert (lab == region).sum() > 50, region
    spot_sign = np.sign(90 - p["inclination"][lab == UMBRA]).mean()
    plage_sign = np.sign(90 - p["inclination"][lab == PLAGE]).mean()
    assert spot_sign * plage_sign == -1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown scene kind 'moon'.*sunspot, quiet, plage, mixed"):
        make_scene("moon", 8, 8)
    with pytest.raises(ValueError, match="at least 1 x 1"):
        make_scene("quiet", 0, 8)
    with pytest.raises(TypeError, match="rows must be a slice"):
        make_scene("quiet", 8, 8, rows=[1, 2])
