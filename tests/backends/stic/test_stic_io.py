"""STiC's formats: input.cfg, lines.cfg and the netCDF model and profiles files round-trip."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from stokesflow.backends.sir.atomic import get_classical_lines
from stokesflow.backends.stic import io
from stokesflow.backends.stic.errors import STiCError


def _model(npix: int = 3, ndep: int = 7, seed: int = 1) -> io.STiCModel:
    rng = np.random.default_rng(seed)
    lt = np.repeat(np.linspace(-4.0, 1.0, ndep)[None], npix, axis=0)
    r = lambda lo, hi: rng.uniform(lo, hi, (npix, ndep))  # noqa: E731
    return io.STiCModel(ltau500=lt, temp=r(4000, 9000), pgas=r(1, 1e5), vlos=r(-1e5, 1e5), vturb=r(0, 2e5),
                        blong=r(-1000, 1000), bhor=r(0, 1000), azi=r(0, np.pi))


def test_input_cfg_round_trip_and_layout():
    regions = [io.Region(6301.0012, 0.02, 25, 3.9e-5), io.Region(6299.5, 0.01, 1, 3.9e-5, "fpi", "6302.nc")]
    values = {"input_model": "guess.nc", "mode": 1, "lines": "FeI_6301, FeI_6302", "mu": 0.8, "verbose": False}
    text = io.format_input_cfg(values, regions)
    assert "mode = 1\n" in text and "verbose = 0\n" in text
    assert "region = 6301.0012, 0.02, 25, 3.9e-05, none, none" in text  # STiC's 6-field form
    parsed, back = io.parse_input_cfg(text)
    assert back == regions
    assert parsed == {"input_model": "guess.nc", "mode": "1", "lines": "FeI_6301, FeI_6302", "mu": "0.8", "verbose": "0"}
    with pytest.raises(STiCError, match="no '=', '#'"):
        io.format_input_cfg({"lines": "a#b"}, regions)
    with pytest.raises(STiCError, match="at least one region"):
        io.format_input_cfg({}, [])
    with pytest.raises(STiCError, match="expected 'w0, dw, nw"):
        io.parse_region("6301, 0.02")


def test_regions_reproduce_an_observed_grid():
    # a Hinode-like equidistant grid, a second line with another step, and a lone continuum point
    wl = np.concatenate([6300.89 + 0.021549 * np.arange(40), 6302.2 + 0.01 * np.arange(30), [6305.0]])
    regions = io.regions_for_grid(wl, 2.0)
    assert [r.nw for r in regions] == [40, 30, 1]
    np.testing.assert_allclose(io.region_wavelengths(regions), wl, rtol=0, atol=1e-9)  # float rounding only
    assert all(r.cscal == 2.0 for r in regions)
    with pytest.raises(STiCError, match="increasing"):
        io.regions_for_grid(wl[::-1])


def test_lines_cfg_from_the_project_tables_round_trips():
    lines = get_classical_lines(["FeI_6301", "FeI_6302"])
    rows = [io.stic_line(ln, width=1.5) for ln in lines]
    back = io.parse_lines_cfg(io.format_lines_cfg(rows))
    assert [b.label for b in back] == ["FeI_6301", "FeI_6302"]
    fe6302 = back[1]
    # Fe I 6302.49: 5P1 - 5D0, g_low 2.5, g_up 0 in LS coupling; ABO 850.239 (atomic.toml) packed as sigma.alpha
    assert (fe6302.j_low, fe6302.j_up, fe6302.g_low, fe6302.g_up) == (1.0, 0.0, 2.5, 0.0)
    assert fe6302.vdw == pytest.approx(850.239, abs=1e-6) and fe6302.width == 1.5 and fe6302.Z == 26
    assert fe6302.wavelength == pytest.approx(6302.4931, abs=1e-6) and fe6302.loggf == pytest.approx(lines[1].loggf)
    with pytest.raises(STiCError, match="15 fields"):
        io.parse_lines_cfg("FeI_6302 Fe 1 26 6302.49\n")


def test_model_round_trip_netcdf3_in_stic_layout(tmp_path):
    m = _model()
    path = io.write_model(tmp_path / "m.nc", m)
    assert path.read_bytes()[:3] == b"CDF"  # netCDF classic: what STiC's netCDF library reads
    from scipy.io import netcdf_file

    with netcdf_file(path, "r", mmap=False) as f:
        assert f.variables["temp"].dimensions == ("time", "y", "x", "ndep")
        assert f.variables["temp"].shape == (1, 1, 3, 7)
    back = io.read_model(path)
    for n in io.STiCModel.REQUIRED:
        np.testing.assert_array_equal(getattr(back, n), getattr(m, n))
    assert back.select([2]).npix == 1


def test_model_checks(tmp_path):
    m = _model()
    m.temp[1, 2] = np.nan
    with pytest.raises(STiCError, match="temp holds NaN"):
        io.write_model(tmp_path / "m.nc", m)
    m = _model()
    m.ltau500 = m.ltau500[:, ::-1].copy()
    with pytest.raises(STiCError, match="top first"):
        io.write_model(tmp_path / "m.nc", m)
    with pytest.raises(STiCError, match=r"expected \(3, 7\)"):
        io.STiCModel(**{**{n: getattr(_model(), n) for n in io.STiCModel.REQUIRED}, "azi": np.zeros((3, 6))})


def test_profiles_round_trip_and_stic_netcdf4_output_is_read(tmp_path):
    rng = np.random.default_rng(7)
    wl = 6302.0 + 0.02 * np.arange(11)
    prof = rng.normal(size=(2, 4, 11))
    sigma = np.full((11, 4), 2e-3)
    path = io.write_profiles(tmp_path / "o.nc", wl, prof, sigma)
    w, p, s = io.read_profiles(path)
    np.testing.assert_array_equal(w, wl)
    np.testing.assert_array_equal(p, prof)
    np.testing.assert_array_equal(s, sigma)
    # STiC writes netCDF-4 (HDF5): profiles (time, y, x, wav, stokes) and wav as a coordinate variable
    out = tmp_path / "synthetic.nc"
    with h5py.File(out, "w") as f:
        f.create_dataset("profiles", data=np.transpose(prof, (0, 2, 1)).reshape(1, 1, 2, 11, 4))
        f.create_dataset("wav", data=wl)
    w, p, s = io.read_profiles(out)
    np.testing.assert_array_equal(p, prof)
    np.testing.assert_array_equal(w, wl)
    assert s is None
    with pytest.raises(STiCError, match=r"expected \(npix, 4, 11\)"):
        io.write_profiles(tmp_path / "x.nc", wl, prof[:, :3])
    (tmp_path / "junk.nc").write_text("not netcdf")
    with pytest.raises(STiCError, match="not a netCDF file"):
        io.read_profiles(tmp_path / "junk.nc")
