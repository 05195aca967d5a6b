"""Instrument layouts: SDO/HMI hmi.S_720s records and Hinode SOT/SP level-1 scans.

The files are test doubles written by _io_instruments with the keywords of the
real archives; their values are integers chosen so every number read back is
predicted exactly (tolerance 0, or float32 rounding where a division happens).
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _io_instruments import (  # noqa: E402
    HMI_PREFIX,
    hmi_header,
    hmi_values,
    sp_wavelength,
    write_hmi_record,
    write_sp_scan,
)

from stokesflow.orchestrator.errors import ObservationError  # noqa: E402
from stokesflow.backends.me.instrument import HMI_LINE_CENTRE as HMI_CENTER_A  # noqa: E402
from stokesflow.orchestrator.io import (  # noqa: E402
    hinode_sp_unscale,
    hmi_disc_geometry,
    open_observation,
    quiet_sun_level,
)

NY = NX = 64

# DESIGN.md: tuning offsets +-34.4, +-103.2, +-172.0 mA; VFISV LAMBDA_0 = 6173.3433 A.
ASCENDING_OFFSETS_MA = np.array([-172.0, -103.2, -34.4, 34.4, 103.2, 172.0])


# --------------------------------------------------------------------------- #
# HMI
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("compressed", [True, False], ids=["rice", "plain"])
def test_hmi_values_order_and_wavelengths(tmp_path, compressed):
    values = hmi_values(NY, NX)
    write_hmi_record(tmp_path, values, compressed=compressed, header=hmi_header(NY, NX))
    obs = open_observation(tmp_path / f"{HMI_PREFIX}.Q3.fits", continuum=2.0)
    assert obs.format == "hmi" and (obs.ny, obs.nx, obs.nw) == (NY, NX, 6)
    assert obs.meta["instrument"] == "hmi" and obs.meta["lines"] == "FeI_6173"
    assert obs.meta["T_REC"] == "2011.02.15_00:00:00_TAI" and obs.meta["continuum"] == 2.0
    np.testing.assert_allclose(obs.wavelength, HMI_CENTER_A + ASCENDING_OFFSETS_MA / 1000.0, rtol=0, atol=1e-9)

    px = obs.read_pixels(100, 300)  # rows 1..4, partial first and last rows
    assert px.shape == (200, 4, 6) and px.dtype == np.float32
    flat = np.arange(100, 300)
    for s, stokes in enumerate("IQUV"):
        for w in range(6):
            k = 5 - w  # segment 0 is the reddest: increasing wavelength runs I5 .. I0
            expected = values[f"{stokes}{k}"].ravel()[flat] / 2.0
            np.testing.assert_array_equal(px[:, s, w], expected.astype(np.float32))


def test_hmi_directory_detection_and_blue_to_red_order(tmp_path):
    values = hmi_values(NY, NX)
    write_hmi_record(tmp_path, values, compressed=True, header=hmi_header(NY, NX))
    obs = open_observation(tmp_path, continuum=1.0, reader_options={"order": "blue_to_red"})
    assert obs.format == "hmi"
    np.testing.assert_allclose(obs.wavelength, HMI_CENTER_A + ASCENDING_OFFSETS_MA / 1000.0, atol=1e-9)
    px = obs.read_pixels(0, NX)
    for w in range(6):  # segment k is now at increasing wavelength: wave index w holds I_w
        np.testing.assert_array_equal(px[:, 0, w], values[f"I{w}"][0].astype(np.float32))


def test_hmi_explicit_wavelength_in_segment_order(tmp_path):
    write_hmi_record(tmp_path, hmi_values(8, 8), compressed=False, header=hmi_header(8, 8))
    seg_wl = [6173.5, 6173.4, 6173.3, 6173.2, 6173.1, 6173.0]
    obs = open_observation(tmp_path, format="hmi", wavelength=seg_wl, continuum=1.0)
    np.testing.assert_array_equal(obs.wavelength, sorted(seg_wl))


def test_hmi_disc_centre_continuum_and_offdisc_nan(tmp_path):
    values = hmi_values(NY, NX)
    yy, xx = np.mgrid[0:NY, 0:NX]
    r = np.hypot(yy - 31.5, xx - 31.5)
    # Within 0.1 Rsun (rsun 30 px -> 3 px) of disc centre I0 = 30000, I5 = 50000; elsewhere different.
    values["I0"] = np.where(r < 5.0, 30000.0, 7000.0)
    values["I5"] = np.where(r < 5.0, 50000.0, 9000.0)
    values["V2"][10, 20] = np.nan  # a BLANK pixel stays NaN
    write_hmi_record(tmp_path, values, compressed=True, header=hmi_header(NY, NX, rsun_px=30.0))
    obs = open_observation(tmp_path)
    assert obs.meta["continuum"] == 40000.0  # (30000 + 50000) / 2, exact
    cube = obs.read_rows(0, NY)
    off = r > 30.0
    assert np.all(np.isnan(cube[off])) and np.all(np.isfinite(cube[~off & (r < 29)][:, :3]))
    np.testing.assert_allclose(cube[31, 31, 0, 5], 30000.0 / 40000.0, rtol=1e-7)  # I0 at the reddest point
    assert np.isnan(cube[10, 20, 3, 3]) and np.isfinite(cube[10, 20, 3, 2])  # V2 is wave index 3


def test_hmi_geometry_follows_crval_and_crota2():
    # FITS: world = CRVAL + R(CROTA2) CDELT (p - CRPIX); with CROTA2 = 180 and CRVAL1 = 2 arcsec,
    # disc centre sits 2 / 0.5 = 4 pixels to the +x side of CRPIX.
    h = {"CRPIX1": 10.0, "CRPIX2": 20.0, "CDELT1": 0.5, "CDELT2": 0.5, "CRVAL1": 2.0, "CRVAL2": 0.0,
         "CROTA2": 180.0, "RSUN_OBS": 960.0}
    yc, xc, rsun = hmi_disc_geometry(h)
    assert (round(yc, 9), round(xc, 9), rsun) == (19.0, 13.0, 1920.0)
    assert hmi_disc_geometry({"CRPIX1": 1.0}) is None


def test_hmi_local_continuum_for_a_cutout_without_disc_centre(tmp_path):
    values = hmi_values(16, 16)
    values["I0"] = np.full((16, 16), 20000.0)
    values["I5"] = np.full((16, 16), 22000.0)
    write_hmi_record(tmp_path, values, compressed=False,
                     header=hmi_header(16, 16, rsun_px=2000.0, crval=(500.0, 0.0)))
    with pytest.raises(ObservationError, match="not inside this 16 x 16 image.*continuum='local'"):
        open_observation(tmp_path)
    obs = open_observation(tmp_path, continuum="local")
    assert obs.meta["continuum"] == 21000.0


def test_hmi_missing_segments_are_listed(tmp_path):
    write_hmi_record(tmp_path, hmi_values(8, 8), compressed=False, header=hmi_header(8, 8), skip=("V3", "Q0"))
    with pytest.raises(ObservationError) as err:
        open_observation(tmp_path / f"{HMI_PREFIX}.I0.fits")
    msg = str(err.value)
    assert "2 of 24 segment files are missing: Q0, V3" in msg and HMI_PREFIX in msg


def test_hmi_two_records_in_one_directory(tmp_path):
    write_hmi_record(tmp_path, hmi_values(8, 8), compressed=False, header=hmi_header(8, 8))
    write_hmi_record(tmp_path, hmi_values(8, 8), compressed=False, header=hmi_header(8, 8),
                     prefix="hmi.S_720s.20110215_001200_TAI.3")
    with pytest.raises(ObservationError, match="holds 2 records"):
        open_observation(tmp_path)
    obs = open_observation(tmp_path / "hmi.S_720s.20110215_001200_TAI.3.U4.fits", continuum=1.0)
    assert obs.meta["record"] == "hmi.S_720s.20110215_001200_TAI.3"


def test_hmi_observation_pickles_and_reads_the_same(tmp_path):
    write_hmi_record(tmp_path, hmi_values(8, 8), compressed=True, header=hmi_header(8, 8))
    obs = open_observation(tmp_path)
    clone = pickle.loads(pickle.dumps(obs))
    assert clone.fingerprint() == obs.fingerprint()
    np.testing.assert_array_equal(clone.read_pixels(3, 40), obs.read_pixels(3, 40))


# --------------------------------------------------------------------------- #
# Hinode SP
# --------------------------------------------------------------------------- #
def _sp_counts(nx: int = 5, ny: int = 32, nw: int = 112, seed: int = 3) -> np.ndarray:
    """(nx, 4, ny, nw) even integer counts; I spans 20000-64000 so it wraps in int16."""
    rng = np.random.default_rng(seed)
    c = np.empty((nx, 4, ny, nw))
    c[:, 0] = 2 * rng.integers(10000, 32000, size=(nx, ny, nw))
    c[:, 1:] = 2 * rng.integers(-8000, 8000, size=(nx, 3, ny, nw))
    return c


def test_sp_unscale_follows_spbshft():
    raw = np.array([[[-30000, 100]], [[-5, 7]], [[9, -11]], [[13, -15]]], dtype=np.int16)
    np.testing.assert_array_equal(hinode_sp_unscale(raw, 0)[:, 0], [[35536, 100], [-5, 7], [9, -11], [13, -15]])
    np.testing.assert_array_equal(hinode_sp_unscale(raw, 2)[:, 0], [[71072, 200], [-5, 7], [9, -11], [26, -30]])
    np.testing.assert_array_equal(hinode_sp_unscale(raw, 3)[:, 0], [[71072, 200], [-10, 14], [18, -22], [26, -30]])


def test_sp_scan_values_order_and_wavelength(tmp_path):
    counts = _sp_counts()
    shifts = [0, 1, 2, 3, 1]
    write_sp_scan(tmp_path, counts, spbshft=shifts, file_order=[3, 0, 4, 1, 2])
    obs = open_observation(tmp_path, continuum=4.0)
    assert obs.format == "hinode_sp" and (obs.ny, obs.nx, obs.nw) == (32, 5, 112)
    assert obs.meta["instrument"] == "hinode" and obs.meta["lines"] == "FeI_6301,FeI_6302"
    np.testing.assert_allclose(obs.wavelength, sp_wavelength(), rtol=0, atol=1e-9)
    assert obs.wavelength[0] == pytest.approx(6300.8840305, abs=1e-7)  # level-1 grid of the SP

    cube = obs.read_rows(0, 32)  # (y, x, stokes, wave)
    expected = counts.transpose(2, 0, 1, 3) / 4.0
    np.testing.assert_array_equal(cube, expected.astype(np.float32))
    px = obs.read_pixels(7, 23)  # flat row-major over (y along the slit, x = SLITINDX)
    np.testing.assert_array_equal(px, expected.reshape(-1, 4, 112)[7:23].astype(np.float32))


def test_sp_one_file_opens_its_scan_and_auto_continuum(tmp_path):
    nx, ny, nw = 4, 32, 112
    profile = 1.0 - 0.6 * np.exp(-(((np.arange(nw) - 30) / 4.0) ** 2))  # continuum 1 away from the line
    counts = np.zeros((nx, 4, ny, nw))
    counts[:, 0] = 2 * np.round(20000.0 * profile)  # even counts, so SPBSHFT = 1 halves them exactly
    paths = write_sp_scan(tmp_path, counts, spbshft=[1] * nx)
    obs = open_observation(paths[2])
    assert obs.meta["continuum"] == 40000.0
    np.testing.assert_allclose(obs.read_pixels(0, 5)[:, 0], counts[0, 0, :5] / 40000.0, rtol=1e-6)  # float32


def test_sp_auto_continuum_with_every_spbshft(tmp_path):
    # Regression: the continuum estimate reads Stokes I alone, which SPBSHFT >= 2 must not
    # treat as a 4-Stokes image (it raised IndexError on the V doubling).
    counts = np.zeros((4, 4, 8, 112))
    counts[:, 0] = 40000.0  # above 32767: wrapped where SPBSHFT = 0
    write_sp_scan(tmp_path, counts, spbshft=[0, 1, 2, 3])
    obs = open_observation(tmp_path)
    assert obs.meta["continuum"] == 40000.0
    np.testing.assert_array_equal(obs.read_rows(0, 8)[..., 0, :], 1.0)
    np.testing.assert_array_equal(hinode_sp_unscale(np.array([[[-5536]]], np.int16), 3, "I"), [[[120000.0]]])
    with pytest.raises(ObservationError, match="raw has 1 Stokes images but stokes='IQUV'"):
        hinode_sp_unscale(np.zeros((1, 2, 3), np.int16), 0)


def test_sp_missing_and_duplicate_slits(tmp_path):
    counts = _sp_counts(nx=6)
    write_sp_scan(tmp_path / "gap", counts, spbshft=[0] * 6, skip=(2, 4))
    with pytest.raises(ObservationError, match=r"2 of 6 slit positions are missing \(SLITINDX 2, 4\)"):
        open_observation(tmp_path / "gap", continuum=1.0)
    obs = open_observation(tmp_path / "gap", continuum=1.0, reader_options={"allow_partial": True})
    cube = obs.read_rows(0, 2)
    assert obs.nx == 6 and np.all(np.isnan(cube[:, [2, 4]])) and np.all(np.isfinite(cube[:, [0, 1, 3, 5]]))

    write_sp_scan(tmp_path / "dup", counts[:2], spbshft=[0, 0])
    write_sp_scan(tmp_path / "dup2", counts[:1], spbshft=[0])
    os.rename(tmp_path / "dup2" / "SP3D20070101_000000.0C.fits", tmp_path / "dup" / "SP3D20070101_009900.0C.fits")
    with pytest.raises(ObservationError, match="two files have SLITINDX 0"):
        open_observation(tmp_path / "dup", format="hinode_sp", continuum=1.0)


def test_sp_inconsistent_wavelength_keywords(tmp_path):
    write_sp_scan(tmp_path, _sp_counts(nx=3), spbshft=[0, 0, 0], extra={2: {"CRVAL1": 6302.10}})
    with pytest.raises(ObservationError, match="disagree with"):
        open_observation(tmp_path, continuum=1.0)


def test_quiet_sun_level_ignores_a_dark_spot():
    rng = np.random.default_rng(0)
    granulation = 30000.0 * rng.normal(1.0, 0.07, 7000)  # rms contrast 7 % (Hinode SP quiet Sun)
    spot = np.concatenate([30000.0 * rng.uniform(0.1, 0.3, 1000), 30000.0 * rng.uniform(0.6, 0.85, 2000)])
    level = quiet_sun_level(np.concatenate([granulation, spot, [np.nan, -1.0]]))
    # The 0.7-1.2 x p95 window clips the far low tail of the granulation (a 3-sigma cut): < 1 % bias.
    assert level == pytest.approx(30000.0, rel=0.01)
    with pytest.raises(ObservationError, match="no finite positive"):
        quiet_sun_level([np.nan, 0.0])
