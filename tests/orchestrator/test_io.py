"""Observation I/O: the HDF5 contract, .npy and FITS cubes, validation errors, the writer.

Reference values are the arrays the tests write themselves (exact equality: the
readers only move and cast float32 data), and the observation files made by
other codes in ../shared/data.
"""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import h5py
import numpy as np
import pytest
from astropy.io import fits

from stokesflow.orchestrator.errors import ObservationError, OrchestratorError
from stokesflow.orchestrator.io import (
    Observation,
    ObservationWriter,
    open_observation,
    parse_axes,
    parse_wavelength,
    write_observation,
)

WL = 6302.0 + 0.02 * np.arange(7)  # Angstrom, absolute
ATTRS = {"instrument": "hinode", "lines": "FeI_6301,FeI_6302", "noise": 1e-3}


def _cube(ny: int = 5, nx: int = 6, nw: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(ny, nx, 4, nw)).astype(np.float32)


@pytest.fixture
def h5file(tmp_path):
    cube = _cube()
    truth = {"B": np.arange(30.0).reshape(5, 6), "vlos": -np.arange(30.0).reshape(5, 6)}
    path = tmp_path / "obs.h5"
    write_observation(path, cube, WL, ATTRS, truth)
    return path, cube, truth


# --------------------------------------------------------------------------- #
# HDF5 contract
# --------------------------------------------------------------------------- #
def test_hdf5_roundtrip_and_pixel_ranges(h5file):
    path, cube, truth = h5file
    obs = open_observation(path)
    assert obs.format == "hdf5" and (obs.ny, obs.nx, obs.nw, obs.npix) == (5, 6, 7, 30)
    assert obs.shape == (5, 6, 4, 7) and obs.lines == ("FeI_6301", "FeI_6302")
    assert obs.meta["instrument"] == "hinode" and obs.meta["noise"] == 1e-3
    np.testing.assert_array_equal(obs.wavelength, WL)
    assert obs.wavelength.dtype == np.float64 and not obs.wavelength.flags.writeable
    flat = cube.reshape(-1, 4, 7)
    for start, stop in [(0, 30), (0, 1), (4, 17), (6, 12), (29, 30), (13, 13)]:
        got = obs.read_pixels(start, stop)
        assert got.dtype == np.float32 and got.shape == (stop - start, 4, 7)
        np.testing.assert_array_equal(got, flat[start:stop])
    got_truth = obs.read_truth()
    assert sorted(got_truth) == ["B", "vlos"]
    np.testing.assert_array_equal(got_truth["vlos"], truth["vlos"])


def test_truth_maps_are_read_on_access_and_not_kept(h5file, tmp_path):
    path, _, truth = h5file
    got = open_observation(path).read_truth()
    assert len(got) == 2 and "B" in got and "azimuth" not in got
    with pytest.raises(KeyError):
        got["azimuth"]
    with h5py.File(path, "r+") as f:  # a map is read when asked for, from the file as it is then
        f["truth/B"][0, 0] = 123.0
    assert got["B"][0, 0] == 123.0 and got["B"] is not got["B"]
    np.testing.assert_array_equal(got["vlos"], truth["vlos"])
    # stored with x before y: each map comes back (ny, nx)
    with h5py.File(tmp_path / "xy.h5", "w") as f:
        f["stokes"] = np.transpose(_cube(), (1, 0, 2, 3))
        f["wavelength"] = WL
        f.attrs.update(ATTRS)
        f["truth/B"] = truth["B"].T
        f["truth/other"] = np.zeros(4)  # not a map: left out
    got = open_observation(tmp_path / "xy.h5", axes="x,y,stokes,wave").read_truth()
    assert list(got) == ["B"]
    np.testing.assert_array_equal(got["B"], truth["B"])
    got = open_observation(path).read_truth()
    with h5py.File(path, "r+") as f:  # the file changed under a reader: a clear error, not a wrong map
        del f["truth/vlos"]
        f["truth/vlos"] = np.zeros((2, 2))
    with pytest.raises(ObservationError, match=r"/truth/vlos has shape \(2, 2\), expected \(5, 6\)"):
        got["vlos"]
    with h5py.File(path, "r+") as f:
        del f["truth/vlos"]
    with pytest.raises(ObservationError, match="cannot read /truth/vlos"):
        got["vlos"]
    assert sorted(open_observation(path).read_truth()) == ["B"]


def test_read_pixels_rejects_out_of_range(h5file):
    obs = open_observation(h5file[0])
    for start, stop in [(-1, 3), (3, 2), (0, 31)]:
        with pytest.raises(ObservationError, match="outside the map of 30 pixels"):
            obs.read_pixels(start, stop)


def test_handle_pickles_small_and_fingerprint_is_stable(h5file, tmp_path):
    path, cube, _ = h5file
    obs = open_observation(path)
    blob = pickle.dumps(obs)
    assert len(blob) < 2000  # no cube data inside the handle
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.read_pixels(3, 9), cube.reshape(-1, 4, 7)[3:9])
    assert clone.fingerprint() == obs.fingerprint() == open_observation(path).fingerprint()
    assert obs.fingerprint().startswith("hdf5:")
    other = tmp_path / "other.h5"
    write_observation(other, cube, WL + 0.001, ATTRS)
    assert open_observation(other).fingerprint() != obs.fingerprint()


def _read(obs: Observation, start: int, stop: int) -> np.ndarray:
    return obs.read_pixels(start, stop)


def test_worker_processes_read_their_own_ranges(h5file):
    path, cube, _ = h5file
    obs = open_observation(path)
    # spawn: a fresh interpreter, like a Dask or MPI worker, that gets the handle by pickle
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_read, [obs] * 3, [0, 11, 23], [11, 23, 30]))
    np.testing.assert_array_equal(np.concatenate(parts), cube.reshape(-1, 4, 7))


def test_noise_placeholder_in_file_means_unknown(tmp_path):
    write_observation(tmp_path / "n.h5", _cube(), WL, {"lines": "FeI_6302"})
    with h5py.File(tmp_path / "n.h5", "r+") as f:
        f.attrs["noise"] = 0.0
    obs = open_observation(tmp_path / "n.h5")
    assert obs.meta["noise"] is None and obs.meta["noise_attribute"] == 0.0
    with pytest.raises(ObservationError, match="noise must be one positive sigma or four"):
        open_observation(tmp_path / "n.h5", noise=-1.0)


def test_nan_and_inf_pixels_are_passed_through(tmp_path):
    cube = _cube()
    cube[1, 2] = np.nan
    cube[3, 4, 0, 2] = np.inf
    write_observation(tmp_path / "nan.h5", cube, WL, ATTRS)
    px = open_observation(tmp_path / "nan.h5").read_pixels(0, 30)
    assert np.all(np.isnan(px[8])) and px[22, 0, 2] == np.inf


def test_overrides_and_decreasing_wavelength_is_flipped(tmp_path):
    cube = _cube()
    write_observation(tmp_path / "a.h5", cube, WL, ATTRS)
    with h5py.File(tmp_path / "a.h5", "r+") as f:  # store the grid red to blue, as some codes do
        f["stokes"][...] = cube[..., ::-1]
        del f["wavelength"]
        f["wavelength"] = WL[::-1]
    obs = open_observation(tmp_path / "a.h5", lines=["FeI_5250"], instrument="gris", noise=[1e-3, 2e-3, 2e-3, 1e-3])
    assert obs.meta["lines"] == "FeI_5250" and obs.meta["instrument"] == "gris"
    assert obs.meta["noise"] == (1e-3, 2e-3, 2e-3, 1e-3)
    np.testing.assert_array_equal(obs.wavelength, WL)
    np.testing.assert_array_equal(obs.read_pixels(0, 30), cube.reshape(-1, 4, 7))


def test_hdf5_with_declared_axes(tmp_path):
    cube = _cube()
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f["stokes"] = np.transpose(cube, (2, 3, 0, 1))  # (stokes, wave, y, x)
        f["wavelength"] = WL
        f.attrs["lines"] = b"FeI_6302"  # bytes attributes from other writers
        f["truth/B"] = np.arange(30.0).reshape(5, 6)
    with pytest.raises(ObservationError, match="Stokes axis has 5 entries, expected 4"):
        open_observation(tmp_path / "t.h5")
    obs = open_observation(tmp_path / "t.h5", axes="stokes,wave,y,x")
    assert (obs.ny, obs.nx, obs.meta["lines"], obs.meta["instrument"]) == (5, 6, "FeI_6302", "generic")
    np.testing.assert_array_equal(obs.read_pixels(5, 19), cube.reshape(-1, 4, 7)[5:19])
    assert obs.read_truth()["B"].shape == (5, 6)


def test_shared_files_from_other_codes(shared_data):
    for name, shape, lines in [
        ("pymilne_hmi_sample.h5", (40, 50, 6), "FeI_6173"),
        ("pymilne_hinode_sample.h5", (20, 25, 112), "FeI_6301,FeI_6302"),
        ("sir_hinode_sample.h5", (24, 24, 112), "FeI_6301,FeI_6302"),
    ]:
        obs = open_observation(shared_data / name)
        assert (obs.ny, obs.nx, obs.nw) == shape and obs.meta["lines"] == lines
        assert obs.meta["noise"] == pytest.approx(1e-3)
        with h5py.File(shared_data / name) as f:
            ref = f["stokes"][...].reshape(-1, 4, shape[2])
        np.testing.assert_array_equal(obs.read_pixels(37, 131), ref[37:131])
        truth = obs.read_truth()
        assert {"B", "inclination", "azimuth", "vlos"} <= set(truth)
        assert all(v.shape == shape[:2] for v in truth.values())


# --------------------------------------------------------------------------- #
# Validation errors: every one names the file and what was expected
# --------------------------------------------------------------------------- #
def _h5(path, **datasets):
    attrs = datasets.pop("attrs", {"lines": "FeI_6173"})
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f[k] = v
        f.attrs.update(attrs)
    return path


@pytest.mark.parametrize(
    ("datasets", "pattern"),
    [
        ({"wavelength": WL}, r"no /stokes dataset .*wants\s+/stokes float32 \(ny, nx, 4, nw\)"),
        ({"stokes": np.zeros((5, 6, 4, 7), np.float32)}, "no /wavelength dataset"),
        ({"stokes": np.zeros((5, 4, 7), np.float32), "wavelength": WL}, r"has 3 axes, shape \(5, 4, 7\); expected 4"),
        ({"stokes": np.zeros((5, 6, 3, 7), np.float32), "wavelength": WL}, "Stokes axis has 3 entries, expected 4"),
        ({"stokes": np.zeros((5, 6, 4, 8), np.float32), "wavelength": WL}, "has 7 values but the Stokes cube has 8"),
        ({"stokes": np.zeros((5, 6, 4, 7), np.float32), "wavelength": WL[[0, 1, 3, 2, 4, 5, 6]]},
         "not strictly monotonic"),
        ({"stokes": np.zeros((5, 6, 4, 7), np.float32), "wavelength": WL / 10}, "looks like nm: multiply by 10"),
        ({"stokes": np.zeros((5, 6, 4, 7), np.float32), "wavelength": WL - 6302.0}, "relative to the line centre"),
        ({"stokes": np.zeros((5, 6, 4, 7), np.float32), "wavelength": WL, "attrs": {"instrument": "x"}},
         "no spectral lines declared.*pass lines="),
    ],
)
def test_hdf5_validation_errors(tmp_path, datasets, pattern):
    path = _h5(tmp_path / "bad.h5", **datasets)
    with pytest.raises(ObservationError, match=pattern) as err:
        open_observation(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, OrchestratorError) and isinstance(err.value, ValueError)


def test_missing_file_and_unknown_content(tmp_path):
    with pytest.raises(ObservationError, match="not found.*no such file"):
        open_observation(tmp_path / "nope.h5")
    junk = tmp_path / "junk.dat"
    junk.write_text("hello, not a cube")
    with pytest.raises(ObservationError, match="cannot tell the format"):
        open_observation(junk)
    with pytest.raises(ObservationError, match="not a readable HDF5 file"):
        open_observation(junk, format="hdf5")
    with pytest.raises(ObservationError, match="not a readable FITS file"):
        open_observation(junk, format="fits")
    with pytest.raises(ObservationError, match="unknown observation format 'zarr'"):
        open_observation(junk, format="zarr")


def test_parse_axes_and_wavelength(tmp_path):
    assert parse_axes("S, w ,Y,x") == ("stokes", "wave", "y", "x")
    assert parse_axes(["y", "x", "stokes", "wavelength"]) == ("y", "x", "stokes", "wave")
    with pytest.raises(ObservationError, match="unknown axis name 't'"):
        parse_axes("t,x,stokes,wave")
    with pytest.raises(ObservationError, match="exactly once"):
        parse_axes("y,y,stokes,wave")
    np.testing.assert_allclose(parse_wavelength("6300.5:0.25", 3), [6300.5, 6300.75, 6301.0])
    (tmp_path / "wl.txt").write_text("6301.0, 6301.5\n6302.0")
    np.testing.assert_array_equal(parse_wavelength(tmp_path / "wl.txt", 3), [6301.0, 6301.5, 6302.0])
    with pytest.raises(ObservationError, match="neither 'start:step'"):
        parse_wavelength("missing.txt", 3)


# --------------------------------------------------------------------------- #
# .npy and FITS cubes
# --------------------------------------------------------------------------- #
def test_npy_with_axes_and_wavelength_sources(tmp_path):
    cube = _cube(ny=4, nx=3, nw=5)
    np.save(tmp_path / "c.npy", np.transpose(cube, (2, 3, 0, 1)))  # (stokes, wave, y, x)
    kwargs = {"axes": "stokes,wave,y,x", "lines": "FeI_6173"}
    obs = open_observation(tmp_path / "c.npy", wavelength="6173.0:0.05", **kwargs)
    assert obs.format == "npy" and (obs.ny, obs.nx, obs.nw) == (4, 3, 5)
    np.testing.assert_allclose(obs.wavelength, 6173.0 + 0.05 * np.arange(5))
    np.testing.assert_array_equal(obs.read_pixels(2, 11), cube.reshape(-1, 4, 5)[2:11])
    assert obs.read_truth() is None

    with pytest.raises(ObservationError, match="carries no wavelengths"):
        open_observation(tmp_path / "c.npy", **kwargs)
    np.save(tmp_path / "c.wavelength.npy", 6173.0 + 0.05 * np.arange(5))  # side file
    assert open_observation(tmp_path / "c.npy", **kwargs).wavelength[-1] == pytest.approx(6173.2)
    with pytest.raises(ObservationError, match="no spectral lines declared"):
        open_observation(tmp_path / "c.npy", axes="stokes,wave,y,x")
    # Without axes= the (4, 5, 4, 3) array reads as y, x, stokes, wave: the grid no longer fits.
    with pytest.raises(ObservationError, match="has 5 values but the Stokes cube has 3"):
        open_observation(tmp_path / "c.npy", lines="FeI_6173", wavelength=np.arange(5.0) + 6000)


def test_fits_cube_with_wcs_wavelength(tmp_path):
    cube = _cube(ny=4, nx=3, nw=5)
    data = np.transpose(cube, (0, 1, 3, 2))  # numpy (y, x, wave, stokes): FITS NAXIS1 = stokes, NAXIS2 = wave
    hdu = fits.PrimaryHDU(data)
    hdu.header["CRVAL2"], hdu.header["CDELT2"], hdu.header["CRPIX2"] = 630.2, 0.002, 3.0
    hdu.header["CUNIT2"] = "nm"
    hdu.header["INSTRUME"], hdu.header["LINES"] = "test", "FeI_6302"
    hdu.writeto(tmp_path / "c.fits")
    obs = open_observation(tmp_path / "c.fits", axes="y,x,wave,stokes")
    assert obs.format == "fits" and obs.meta["instrument"] == "test" and obs.meta["lines"] == "FeI_6302"
    np.testing.assert_allclose(obs.wavelength, 6302.0 + 0.02 * (np.arange(5) - 2), atol=1e-9)
    np.testing.assert_array_equal(obs.read_pixels(1, 12), cube.reshape(-1, 4, 5)[1:12])


def test_fits_scaled_integers_and_wavelength_hdu(tmp_path):
    ints = np.arange(3 * 2 * 4 * 6, dtype=np.int16).reshape(3, 2, 4, 6)
    hdu = fits.PrimaryHDU(ints)
    hdu.header["BSCALE"], hdu.header["BZERO"] = 0.5, 10.0
    wl = fits.ImageHDU(6173.0 + 0.07 * np.arange(6), name="WAVELENGTH")
    fits.HDUList([hdu, wl]).writeto(tmp_path / "s.fits")
    obs = open_observation(tmp_path / "s.fits", lines="FeI_6173")
    np.testing.assert_array_equal(obs.read_pixels(0, 6), (0.5 * ints + 10.0).reshape(-1, 4, 6))
    with pytest.raises(ObservationError, match="continuum=.*applies to the instrument layouts"):
        open_observation(tmp_path / "s.fits", lines="FeI_6173", continuum=1.0)


# --------------------------------------------------------------------------- #
# Writer
# --------------------------------------------------------------------------- #
def test_writer_row_blocks_equal_a_whole_write(tmp_path):
    cube = _cube(ny=9, nx=4)
    truth = {"B": np.random.default_rng(1).uniform(0, 3000, (9, 4))}
    with ObservationWriter(tmp_path / "w.h5", 9, 4, WL, ATTRS) as w:
        for y0 in (6, 0, 3):  # any order of whole row blocks
            w.write_rows(y0, cube[y0 : y0 + 3], {"B": truth["B"][y0 : y0 + 3]})
    with h5py.File(tmp_path / "w.h5") as f:
        assert f["stokes"].dtype == np.float32 and f["stokes"].chunks[1:] == (4, 4, 7)
        assert f["wavelength"].dtype == np.float64 and f.attrs["lines"] == "FeI_6301,FeI_6302"
    obs = open_observation(tmp_path / "w.h5")
    np.testing.assert_array_equal(obs.read_rows(0, 9), cube)
    np.testing.assert_allclose(obs.read_truth()["B"], truth["B"], rtol=1e-7)  # stored float32


def test_writer_errors(tmp_path):
    with pytest.raises(ObservationError, match=r"6 of 9 rows never written \(\[3, 9\)\)"):
        with ObservationWriter(tmp_path / "w.h5", 9, 4, WL, ATTRS) as w:
            w.write_rows(0, _cube(ny=3, nx=4))
    with ObservationWriter(tmp_path / "w2.h5", 9, 4, WL, ATTRS) as w:
        with pytest.raises(ObservationError, match=r"expected \(rows, 4, 4, 7\)"):
            w.write_rows(0, _cube(ny=3, nx=5))
        with pytest.raises(ObservationError, match="outside the map of 9 rows"):
            w.write_rows(8, _cube(ny=3, nx=4))
        with pytest.raises(ObservationError, match=r"expected \(9, 4\)"):
            w.write_truth("B", np.zeros((4, 9)))
        w.write_rows(0, _cube(ny=9, nx=4))
    with pytest.raises(ObservationError, match="must name the spectral lines"):
        ObservationWriter(tmp_path / "w3.h5", 2, 2, WL, {"instrument": "hmi"})


def test_write_observation_with_shape_only_gives_nan_pixels(tmp_path):
    write_observation(tmp_path / "e.h5", None, WL, ATTRS, shape=(3, 2))
    obs = open_observation(tmp_path / "e.h5")
    assert isinstance(obs, Observation) and np.all(np.isnan(obs.read_pixels(0, 6)))
