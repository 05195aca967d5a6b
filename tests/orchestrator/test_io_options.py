"""Reader options (-R), continuum, fingerprints, the spectral instrument an observation states, the registry.

Reference values are the files the tests write themselves; the shared pyMilne
filtergram file (../shared/data) is the real case of an observation whose
noise is not stated.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _io_instruments import HMI_PREFIX, hmi_header, hmi_values, write_hmi_record, write_sp_scan  # noqa: E402

from stokesflow.orchestrator.errors import ObservationError  # noqa: E402
from stokesflow.orchestrator.io import (  # noqa: E402
    FORMATS,
    SPECTRAL_INSTRUMENTS,
    ObservationWriter,
    detect_format,
    open_observation,
    write_observation,
)

WL = 6173.0 + 0.05 * np.arange(6)
ATTRS = {"lines": "FeI_6173", "instrument": "test"}


def _cube(ny: int = 3, nx: int = 4, nw: int = 6) -> np.ndarray:
    return np.random.default_rng(5).normal(1.0, 0.1, size=(ny, nx, 4, nw)).astype(np.float32)


@pytest.fixture
def hmi_dir(tmp_path):
    write_hmi_record(tmp_path, hmi_values(8, 8), compressed=False, header=hmi_header(8, 8))
    return tmp_path


# --------------------------------------------------------------------------- #
# Errors name the command-line flag as well as the keyword
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"reader_options": {"order": "sideways"}}, r"order='sideways' \(-R order=\.\.\.\).*'red_to_blue'"),
        ({"reader_options": {"colour": "red"}}, r"\['colour'\] \(-R colour=\.\.\.\) are not used by 'hmi'.*order"),
        ({"reader_options": {"mask_offdisc": "maybe"}}, r"mask_offdisc='maybe' \(-R mask_offdisc=\.\.\.\)"),
        ({"reader_options": {"disc_fraction": "2"}}, r"disc_fraction=2.0 \(-R disc_fraction=\.\.\.\)"),
        ({"continuum": "x"}, r"continuum='x' \(-R continuum=\.\.\.\): use a number"),
        ({"continuum": -5.0}, r"continuum=-5.0 \(-R continuum=\.\.\.\) must be a positive number"),
        ({"axes": "y,x,stokes,wave"}, r"axes='y,x,stokes,wave' \(--axes\).*fixes its own axes"),
    ],
)
def test_hmi_option_errors_name_the_flag(hmi_dir, kwargs, pattern):
    with pytest.raises(ObservationError, match=pattern) as err:
        open_observation(hmi_dir, **kwargs)
    assert str(hmi_dir) in str(err.value)


def test_cube_option_errors_name_the_flag(tmp_path):
    write_observation(tmp_path / "o.h5", _cube(), WL, ATTRS)
    with pytest.raises(ObservationError, match=r"\['hdu'\] \(-R hdu=\.\.\.\) are not used by 'hdf5'.*takes none"):
        open_observation(tmp_path / "o.h5", reader_options={"hdu": 1})
    with pytest.raises(ObservationError, match=r"continuum=1.0 \(-R continuum=\.\.\.\) applies to the instrument"):
        open_observation(tmp_path / "o.h5", continuum=1.0)
    with pytest.raises(ObservationError, match=r"unknown axis name 't' in axes='t,x,s,w' \(--axes\)"):
        open_observation(tmp_path / "o.h5", axes="t,x,s,w")
    with pytest.raises(ObservationError, match=r"--axes y,x,stokes,wave"):
        open_observation(tmp_path / "o.h5", axes="y,y,stokes,wave")
    with pytest.raises(ObservationError, match=r"unknown observation format 'zarr'.*--format"):
        open_observation(tmp_path / "o.h5", format="zarr")


def test_sp_option_errors_and_text_values(tmp_path):
    counts = np.zeros((3, 4, 8, 112))
    counts[:, 0] = 20000.0
    write_sp_scan(tmp_path, counts, spbshft=[0, 0, 0], skip=(1,))
    with pytest.raises(ObservationError, match=r"allow_partial='perhaps' \(-R allow_partial=\.\.\.\)"):
        open_observation(tmp_path, reader_options={"allow_partial": "perhaps"})
    with pytest.raises(ObservationError, match=r"continuum_window='a,b' \(-R continuum_window=\.\.\.\)"):
        open_observation(tmp_path, reader_options={"allow_partial": True, "continuum_window": "a,b"})
    with pytest.raises(ObservationError, match=r"continuum='disc_centre' \(-R continuum=\.\.\.\).*'local'"):
        open_observation(tmp_path, continuum="disc_centre", reader_options={"allow_partial": True})
    # -R gives text: "true", "[lo,hi]" and a number as a string all work
    obs = open_observation(tmp_path, continuum="20000",
                           reader_options={"allow_partial": "true", "continuum_window": "[6302.9, 6303.1]"})
    assert obs.nx == 3 and obs.meta["continuum"] == 20000.0
    assert np.all(np.isnan(obs.read_rows(0, 2)[:, 1])) and np.all(obs.read_rows(0, 2)[:, 0, 0] == 1.0)
    local = open_observation(tmp_path, reader_options={"allow_partial": "yes", "continuum_window": [6302.9, 6303.1]})
    assert local.meta["continuum"] == 20000.0 and "6302.9, 6303.1" in local.meta["continuum_method"]


def test_hmi_text_option_values_and_continuum_among_reader_options(hmi_dir):
    obs = open_observation(hmi_dir, reader_options={"continuum": "2", "mask_offdisc": "false",
                                                    "disc_fraction": "0.2", "centre": "6173.34"})
    assert obs.meta["continuum"] == 2.0 and obs._layout["disc"] is None
    assert obs.wavelength[0] == pytest.approx(6173.34 - 0.172, abs=1e-9)
    with pytest.raises(ObservationError, match=r"disagree; give it once"):
        open_observation(hmi_dir, continuum=3.0, reader_options={"continuum": 2.0})
    assert open_observation(hmi_dir, continuum=2, reader_options={"continuum": "2.0"}).meta["continuum"] == 2.0


# --------------------------------------------------------------------------- #
# Fingerprint: a resume with other options is refused
# --------------------------------------------------------------------------- #
def test_fingerprint_includes_reader_options_and_continuum(hmi_dir):
    base = open_observation(hmi_dir, continuum=2.0)
    assert base.fingerprint() == open_observation(hmi_dir, continuum=2.0).fingerprint()
    others = [
        open_observation(hmi_dir, continuum=4.0),
        open_observation(hmi_dir, continuum=2.0, reader_options={"order": "blue_to_red"}),
        open_observation(hmi_dir, continuum=2.0, reader_options={"mask_offdisc": False}),
        open_observation(hmi_dir, continuum=2.0, reader_options={"disc_fraction": 0.3}),
    ]
    prints = {o.fingerprint() for o in others}
    assert base.fingerprint() not in prints and len(prints) == len(others)
    assert base.options == {"continuum": 2.0, "reader_options": {}}


# --------------------------------------------------------------------------- #
# Spectral instrument and noise stated by the file
# --------------------------------------------------------------------------- #
def test_spectral_instrument_attributes_pass_through(tmp_path):
    write_observation(tmp_path / "psf.h5", _cube(), WL, ATTRS, spectral_instrument="psf", psf_fwhm=25.0)
    obs = open_observation(tmp_path / "psf.h5")
    assert obs.meta["spectral_instrument"] == "psf" and obs.meta["psf_fwhm"] == 25.0
    assert "filters" not in obs.meta
    write_observation(tmp_path / "hmi.h5", _cube(), WL, {**ATTRS, "spectral_instrument": "hmi_filters"})
    assert open_observation(tmp_path / "hmi.h5").meta["spectral_instrument"] == "hmi_filters"
    # "psf" with a kernel file and "filters" with a filters file: the backend's options supply the profile
    write_observation(tmp_path / "kernel.h5", _cube(), WL, {**ATTRS, "spectral_instrument": "psf"})
    assert "psf_fwhm" not in open_observation(tmp_path / "kernel.h5").meta
    write_observation(tmp_path / "ff.h5", _cube(), WL, ATTRS, spectral_instrument="filters")
    ff = open_observation(tmp_path / "ff.h5")
    assert ff.meta["spectral_instrument"] == "filters" and "filters" not in ff.meta
    write_observation(tmp_path / "psf.h5", _cube(), WL, ATTRS)  # same path and data, no spectral attributes
    plain = open_observation(tmp_path / "psf.h5")
    assert "spectral_instrument" not in plain.meta and plain.fingerprint() != obs.fingerprint()


def test_filters_round_trip_into_meta_and_fingerprint(tmp_path):
    lam = 6172.8 + 0.002 * np.arange(501)
    trans = np.exp(-0.5 * ((lam[None, :] - WL[:, None]) / 0.03) ** 2)
    write_observation(tmp_path / "f.h5", _cube(), WL, ATTRS, filters=(lam, trans))
    obs = open_observation(tmp_path / "f.h5")
    assert obs.meta["spectral_instrument"] == "filters"
    np.testing.assert_array_equal(obs.meta["filters"][0], lam)
    np.testing.assert_array_equal(obs.meta["filters"][1], trans)
    with h5py.File(tmp_path / "f.h5", "r+") as f:  # profiles without the attribute still mean "filters"
        del f.attrs["spectral_instrument"]
    assert open_observation(tmp_path / "f.h5").meta["spectral_instrument"] == "filters"
    # same path, same data, other profiles -> other fingerprint
    before = open_observation(tmp_path / "f.h5").fingerprint()
    with h5py.File(tmp_path / "f.h5", "r+") as f:
        f["filters/transmission"][...] = trans[::-1]
    assert open_observation(tmp_path / "f.h5").fingerprint() != before


@pytest.mark.parametrize(
    ("attrs", "datasets", "pattern"),
    [
        ({"spectral_instrument": "prism"}, {}, r"spectral_instrument = 'prism'; expected one of grid, psf"),
        ({"spectral_instrument": "psf", "psf_fwhm": -3.0}, {}, r"psf_fwhm = -3.0 mA"),
        ({"spectral_instrument": "psf", "psf_fwhm": "wide"}, {}, r"attribute psf_fwhm = 'wide' must be a finite"),
        ({"spectral_instrument": "grid"}, {"filters/wavelength": WL, "filters/transmission": np.eye(6)},
         r"holds /filters profiles but states spectral_instrument = 'grid'"),
        ({}, {"filters/wavelength": WL}, r"/filters must hold two datasets"),
        ({}, {"filters/wavelength": WL, "filters/transmission": np.ones((5, 6))},
         r"/filters/transmission has shape \(5, 6\), expected \(nw, nf\) = \(6, 6\)"),
    ],
)
def test_spectral_instrument_errors(tmp_path, attrs, datasets, pattern):
    path = tmp_path / "s.h5"
    write_observation(path, _cube(), WL, ATTRS)
    with h5py.File(path, "r+") as f:
        f.attrs.update(attrs)
        for name, data in datasets.items():
            f[name] = data
    with pytest.raises(ObservationError, match=pattern) as err:
        open_observation(path)
    assert str(path) in str(err.value)


def test_writer_checks_the_spectral_instrument(tmp_path):
    with pytest.raises(ObservationError, match=r"spectral_instrument='slit'; use one of"):
        ObservationWriter(tmp_path / "a.h5", 2, 2, WL, ATTRS, spectral_instrument="slit")
    with pytest.raises(ObservationError, match=r"profiles of spectral_instrument='filters', got spectral_instrument='psf'"):
        ObservationWriter(tmp_path / "b.h5", 2, 2, WL, ATTRS, spectral_instrument="psf",
                          filters=(WL, np.eye(6)))
    with pytest.raises(ObservationError, match=r"psf_fwhm=-1.0 mA must be positive"):
        ObservationWriter(tmp_path / "c.h5", 2, 2, WL, ATTRS, spectral_instrument="psf", psf_fwhm=-1.0)
    with pytest.raises(ObservationError, match=r"/filters/transmission has shape \(2, 3\)"):
        ObservationWriter(tmp_path / "d.h5", 2, 2, WL, ATTRS, filters=(WL[:3], np.ones((2, 3))))
    assert SPECTRAL_INSTRUMENTS == ("grid", "psf", "hmi_filters", "filters")


def test_noise_attribute_one_or_four_values_and_placeholders(tmp_path):
    write_observation(tmp_path / "n4.h5", _cube(), WL, {**ATTRS, "noise": [1e-3, 2e-3, 2e-3, 1e-3]})
    assert open_observation(tmp_path / "n4.h5").meta["noise"] == (1e-3, 2e-3, 2e-3, 1e-3)
    for placeholder in (np.nan, -1.0, [0.0, 0.0, 0.0, 0.0]):
        with h5py.File(tmp_path / "n4.h5", "r+") as f:
            f.attrs["noise"] = placeholder
        assert open_observation(tmp_path / "n4.h5").meta["noise"] is None
    assert open_observation(tmp_path / "n4.h5", noise=2e-3).meta["noise"] == 2e-3
    with pytest.raises(ObservationError, match="one positive sigma or four"):
        open_observation(tmp_path / "n4.h5", noise=[1e-3, 1e-3])
    # a broken attribute is said, not taken for "unknown"
    for broken in ("abc", [1e-3, 1e-3, 1e-3], [1e-3, -1e-3, 1e-3, 1e-3]):
        with h5py.File(tmp_path / "n4.h5", "r+") as f:
            f.attrs["noise"] = broken
        with pytest.raises(ObservationError, match="is neither a noise .* nor a placeholder for unknown"):
            open_observation(tmp_path / "n4.h5")
        assert open_observation(tmp_path / "n4.h5", noise=2e-3).meta["noise"] == 2e-3  # --noise overrides it


def test_shared_filtergrams_without_noise_and_with_their_profiles(shared_data, tmp_path):
    obs = open_observation(shared_data / "pymilne_hmi_filtergrams.h5")
    assert obs.nw == 6 and obs.meta["noise"] is None  # README: noise added but not stated
    with np.load(shared_data / "pymilne_hmi_filters.npz") as z:
        lam, trans = z["wavelength"], z["transmission"]
    cube = obs.read_rows(0, obs.ny)
    write_observation(tmp_path / "with_filters.h5", cube, obs.wavelength, {"lines": obs.meta["lines"]},
                      filters=(lam, trans))
    again = open_observation(tmp_path / "with_filters.h5")
    assert again.meta["spectral_instrument"] == "filters" and again.meta["filters"][1].shape == (6, 701)
    np.testing.assert_array_equal(again.read_rows(0, obs.ny), cube)


# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #
def test_registry_detects_each_format(tmp_path, hmi_dir):
    assert FORMATS == ("hdf5", "npy", "fits", "hmi", "hinode_sp")
    write_observation(tmp_path / "o.h5", _cube(), WL, ATTRS)
    np.save(tmp_path / "o.npy", _cube())
    assert detect_format(tmp_path / "o.h5") == "hdf5" and detect_format(tmp_path / "o.npy") == "npy"
    assert detect_format(hmi_dir) == "hmi" and detect_format(hmi_dir / f"{HMI_PREFIX}.V5.fits") == "hmi"
    sp = tmp_path / "sp"
    write_sp_scan(sp, np.zeros((2, 4, 4, 112)), spbshft=[0, 0])
    assert detect_format(sp) == "hinode_sp" and detect_format(next(sp.iterdir())) == "hinode_sp"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ObservationError, match="a directory holds an observation only as"):
        detect_format(empty)


def test_reading_hdf5_does_not_import_astropy(tmp_path):
    write_observation(tmp_path / "o.h5", _cube(), WL, ATTRS)
    code = (
        "import sys; from stokesflow.orchestrator.io import open_observation; "
        f"o = open_observation({os.fspath(tmp_path / 'o.h5')!r}); o.read_pixels(0, 3); "
        "print('astropy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
