"""Field vectors (image and heliographic frames), disc geometry and the azimuth disambiguation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _report_helpers import hmi_like_keywords, me_maps, write_observation, write_result  # noqa: E402

from stokesflow.orchestrator.disambiguation import (  # noqa: E402
    DisambiguationError, acute_angle, disambiguate, potential_field, register_method, METHODS,
)
from stokesflow.orchestrator.geometry import image_rotation, observation_info, pixel_heliographic  # noqa: E402
from stokesflow.orchestrator.vectors import (  # noqa: E402
    field_angles, heliographic_components, heliographic_matrix, image_components,
)

RNG = np.random.default_rng(7)


def _random_field(n: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return RNG.normal(0, 800, n), RNG.normal(0, 800, n), RNG.normal(0, 800, n)


# -- image frame ------------------------------------------------------------------
def test_image_components_follow_the_stated_convention():
    # inclination 90, azimuth 0: along +x; azimuth 90: along +y; inclination 0: towards the observer
    bx, by, bz = image_components(np.array([1000.0, 1000.0, 1000.0]), np.array([90.0, 90.0, 0.0]),
                                  np.array([0.0, 90.0, 33.0]))
    np.testing.assert_allclose(bx, [1000.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(by, [0.0, 1000.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(bz, [0.0, 0.0, 1000.0], atol=1e-9)
    # the HMI convention (azimuth 0 along +y, counter-clockwise): azimuth 90 points along -x
    bx, by, _ = image_components(np.array([1000.0]), np.array([90.0]), np.array([90.0]), azimuth_zero="y")
    np.testing.assert_allclose([bx[0], by[0]], [-1000.0, 0.0], atol=1e-9)
    with pytest.raises(ValueError, match="azimuth_zero"):
        image_components(1.0, 1.0, 1.0, azimuth_zero="z")


def test_field_angles_invert_image_components():
    bx, by, bz = _random_field()
    for zero in ("x", "y"):
        b, inc, az = field_angles(bx, by, bz, azimuth_zero=zero)
        assert ((0 <= az) & (az < 360)).all() and ((0 <= inc) & (inc <= 180)).all()
        np.testing.assert_allclose(image_components(b, inc, az, azimuth_zero=zero), (bx, by, bz), atol=1e-9)


# -- heliographic frame ---------------------------------------------------------
def test_disc_centre_is_the_identity_up_to_the_axis_convention():
    bx, by, bz = _random_field()
    bp, bt, br = heliographic_components(bx, by, bz, np.zeros(50), np.zeros(50), 0.0)
    # x west, y north: Bp = Bx (west), Bt = -By (south positive), Br = Bz
    np.testing.assert_allclose((bp, bt, br), (bx, -by, bz), atol=1e-9)


def test_image_rotated_by_180_degrees_at_disc_centre():
    # CROTA2 = 180 (HMI before 2010-05 flips): image +x points east, +y south
    bx, by, bz = _random_field()
    rot = np.array([[-1.0, 0.0], [0.0, -1.0]])
    bp, bt, br = heliographic_components(bx, by, bz, np.zeros(50), np.zeros(50), 0.0, rot)
    np.testing.assert_allclose((bp, bt, br), (-bx, by, bz), atol=1e-9)


def test_limb_positions():
    bx, by, bz = _random_field(3)
    # west limb on the equator, B0 = 0: the radial direction is image +x, west (+phi) is away from the observer
    bp, bt, br = heliographic_components(bx, by, bz, np.full(3, np.pi / 2), np.zeros(3), 0.0)
    np.testing.assert_allclose((bp, bt, br), (-bz, -by, bx), atol=1e-9)
    # north pole on the limb, B0 = 0: radial is image +y, south (+theta) is towards the observer
    bp, bt, br = heliographic_components(bx, by, bz, np.zeros(3), np.full(3, np.pi / 2), 0.0)
    np.testing.assert_allclose((bp, bt, br), (bx, bz, by), atol=1e-9)


def test_matrix_agrees_with_unit_vectors_built_from_the_rotation_axis():
    # independent construction: heliocentric x (west), y (north), z (observer); the Sun's axis tilted
    # towards the observer by B0; r = position, phi_hat = axis x r / |.|, theta_hat = phi_hat x r
    lon, lat = RNG.uniform(-1.4, 1.4, 200), RNG.uniform(-1.3, 1.3, 200)
    b0 = np.radians(-6.8)
    k = heliographic_matrix(lon, lat, b0)
    axis = np.array([0.0, np.cos(b0), np.sin(b0)])
    # a point at (lon, lat) in the Sun's frame (y' the axis, z' the observer's meridian at the equator),
    # turned about x so that the observer's direction (0, sin b0, cos b0) becomes z
    p = np.stack([np.sin(lon) * np.cos(lat), np.sin(lat), np.cos(lon) * np.cos(lat)])
    c, s = np.cos(b0), np.sin(b0)
    r = np.stack([p[0], c * p[1] - s * p[2], s * p[1] + c * p[2]])
    phi_hat = np.cross(axis, r.T).T
    phi_hat /= np.linalg.norm(phi_hat, axis=0)
    theta_hat = np.cross(phi_hat.T, r.T).T
    for row, unit in zip(k, (phi_hat, theta_hat, r)):
        np.testing.assert_allclose(row, unit, atol=1e-12)
    # each pixel's matrix is orthogonal; (Bp, Bt, Br) is (r, theta, phi) reordered, so left-handed
    m = np.moveaxis(k, -1, 0)
    np.testing.assert_allclose(m @ np.transpose(m, (0, 2, 1)), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(m), -1.0, atol=1e-12)


def test_pixel_positions_from_the_wcs(tmp_path):
    ny, nx = 9, 11
    kw = hmi_like_keywords(ny, nx, xc=0.0, yc=0.0, scale=2.0)
    res = write_result(tmp_path / "res.h5", me_maps(ny, nx),
                       observation=write_observation(tmp_path / "obs.h5", ny, nx, attrs=kw))
    info = observation_info(res)
    lon, lat, b0 = pixel_heliographic(info)
    assert b0 == 0.0 and lon[4, 5] == pytest.approx(0.0, abs=1e-12) and lat[4, 5] == pytest.approx(0.0, abs=1e-12)
    assert (np.diff(lon, axis=1) > 0).all() and (np.diff(lat, axis=0) > 0).all()  # x west, y north
    np.testing.assert_allclose(image_rotation(info), np.eye(2), atol=1e-12)


def test_pixel_positions_agree_with_sunpy(tmp_path):
    pytest.importorskip("sunpy.map")
    import astropy.units as u
    import sunpy.map
    from sunpy.coordinates import frames

    ny, nx = 30, 40
    kw = hmi_like_keywords(ny, nx, xc=700.0, yc=-400.0, b0=-6.5, scale=20.0, crota2=30.0)
    res = write_result(tmp_path / "res.h5", me_maps(ny, nx),
                       observation=write_observation(tmp_path / "obs.h5", ny, nx, attrs=kw))
    info = observation_info(res)
    lon, lat, b0 = pixel_heliographic(info)
    m = sunpy.map.Map(np.zeros((ny, nx)), dict(info.wcs_header, **info.observing))
    y, x = np.mgrid[0:ny, 0:nx]
    c = m.pixel_to_world(x * u.pix, y * u.pix).transform_to(frames.HeliographicStonyhurst(obstime=m.date))
    on = np.isfinite(lon)
    assert 0 < on.sum() < ny * nx  # the map crosses the limb
    np.testing.assert_array_equal(on, np.isfinite(c.lon.value))
    # sunpy's Thompson (2006) transforms are the reference; agreement to float64 rounding
    np.testing.assert_allclose(np.degrees(lon[on]), c.lon.to_value(u.deg)[on], atol=1e-8)
    np.testing.assert_allclose(np.degrees(lat[on]), c.lat.to_value(u.deg)[on], atol=1e-8)
    assert np.degrees(b0) == pytest.approx(-6.5)
    # the image axes are turned by CROTA2 = 30 deg: +x points 30 deg north of west
    np.testing.assert_allclose(image_rotation(info)[:, 0], [np.cos(np.radians(30)), np.sin(np.radians(30))], atol=1e-9)


# -- disambiguation ---------------------------------------------------------------------
def _dipole(ny: int = 128, nx: int = 160, depth: float = 10.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A potential bipole: two opposite monopoles ``depth`` pixels below the surface (field in the image frame)."""
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    field = np.zeros((3, ny, nx))
    for q, (cx, cy) in ((1.0, (60.0, 64.0)), (-1.0, (100.0, 70.0))):
        rx, ry = x - cx, y - cy
        r3 = (rx**2 + ry**2 + depth**2) ** 1.5
        field += q * np.stack([rx, ry, np.full_like(rx, depth)]) / r3
    return tuple(field * (3000.0 / np.abs(field[2]).max()))  # type: ignore[return-value]


def test_potential_field_of_a_monopole_points_away_from_it():
    bx, by, bz = _dipole()
    px, py = potential_field(bz)
    strong = np.hypot(bx, by) > 300
    cos = (px * bx + py * by)[strong] / (np.hypot(px, py) * np.hypot(bx, by))[strong]
    assert np.median(cos) > 0.99


def test_acute_angle_recovers_the_azimuth_of_a_potential_bipole():
    bx, by, bz = _dipole()
    b, inc, az_true = field_angles(bx, by, bz)
    res = disambiguate("acute", b, inc, az_true % 180.0)
    right = np.abs((res.azimuth - az_true + 180.0) % 360.0 - 180.0) < 1e-3
    strong = b > 500
    assert strong.sum() > 1000
    assert right[strong & (res.unreliable == 0)].mean() >= 0.9
    assert right[strong].mean() >= 0.9


def test_weak_pixels_are_marked_and_not_flipped():
    bx, by, bz = _dipole()
    b, inc, az_true = field_angles(bx, by, bz)
    res = acute_angle(b, inc, az_true % 180.0, weak_threshold=200.0)
    weak = b * np.sin(np.radians(inc)) < 200.0
    np.testing.assert_array_equal(res.unreliable.astype(bool), weak)
    np.testing.assert_allclose(res.azimuth[weak], (az_true % 180.0)[weak], atol=1e-4)  # float32 storage
    assert not res.flipped[weak].any()
    b_nan = b.copy()
    b_nan[0, 0] = np.nan
    assert acute_angle(b_nan, inc, az_true % 180.0).unreliable[0, 0] == 1


def test_methods_by_name_and_a_new_one():
    b, inc, az = (np.ones((4, 4)) * v for v in (1000.0, 90.0, 30.0))
    none = disambiguate("none", b, inc, az)
    np.testing.assert_array_equal(none.azimuth, az) and not none.unreliable.any()
    with pytest.raises(DisambiguationError, match=r"unknown disambiguation method 'magic'; known: \['acute', 'none'"):
        disambiguate("magic", b, inc, az)
    with pytest.raises(DisambiguationError, match="one \\(ny, nx\\) shape"):
        disambiguate("none", b, inc, az[:2])

    def all_flipped(b, inclination, azimuth, *, azimuth_zero="x"):
        from stokesflow.orchestrator.disambiguation import Disambiguation
        return Disambiguation((azimuth + 180.0) % 360.0, np.zeros(b.shape, np.uint8), "flip", np.ones(b.shape, bool))

    register_method("flip-test", all_flipped)
    try:
        assert (disambiguate("flip-test", b, inc, az).azimuth == 210.0).all()
    finally:
        METHODS.pop("flip-test")
