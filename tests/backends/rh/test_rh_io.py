"""RH 1.5D's formats round-trip through the writers and parsers of backends/rh/io.py (no RH needed)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from stokesflow.backends.rh import io
from stokesflow.backends.rh.errors import RHError
from stokesflow.backends.rh.runner import column_failures, find_fatal_line
from stokesflow.backends.sir.atomic import get_classical_lines


def _atmos(ncol: int = 3, nz: int = 7, field: bool = True, seed: int = 5) -> io.Atmosphere:
    rng = np.random.default_rng(seed)
    z = np.tile(np.linspace(5e5, -1e5, nz), (ncol, 1))  # top first [m]
    b = [rng.normal(0, 0.1, (ncol, nz)) for _ in range(3)] if field else [None] * 3
    return io.Atmosphere(
        z=z, temperature=rng.uniform(4000, 9000, (ncol, nz)), electron_density=rng.uniform(1e17, 1e21, (ncol, nz)),
        hydrogen=rng.uniform(1e20, 1e23, (ncol, nz)), velocity_z=rng.normal(0, 1e3, (ncol, nz)),
        velocity_turbulent=rng.uniform(0, 2e3, (ncol, nz)), B_x=b[0], B_y=b[1], B_z=b[2], description="test",
    )


@pytest.mark.parametrize("field", [True, False])
def test_atmosphere_round_trip_in_rh_layout(tmp_path: Path, field: bool):
    a = _atmos(field=field)
    path = io.write_atmosphere(tmp_path / "atm.hdf5", a)
    with h5py.File(path) as f:  # the layout rh15d/hdf5atmos.c reads
        assert f["temperature"].shape == (1, 3, 1, 7)  # (nt, nx, ny, nz)
        assert f["hydrogen_populations"].shape == (1, 1, 3, 1, 7)  # (nt, nhydr, nx, ny, nz)
        assert int(f.attrs["has_B"]) == int(field)
        assert f["x"].shape == (3,) and f["y"].shape == (1,) and f["snapshot_number"].shape == (1,)
        assert ("B_z" in f) is field
    b = io.read_atmosphere(path)
    for name in io.Atmosphere.COLUMNS + (io.Atmosphere.FIELD if field else ()):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)  # float64 both ways
    assert b.has_B is field and b.description == "test"


def test_atmosphere_refuses_what_rh_would_misread(tmp_path: Path):
    a = _atmos()
    bottom_first = io.Atmosphere(**{**a.__dict__, "z": a.z[:, ::-1].copy()})
    with pytest.raises(RHError, match="TOP of the atmosphere first"):
        io.write_atmosphere(tmp_path / "a.hdf5", bottom_first)
    nan = io.Atmosphere(**{**a.__dict__, "temperature": np.where(a.z > 0, np.nan, a.temperature)})
    with pytest.raises(RHError, match="temperature holds NaN"):
        io.write_atmosphere(tmp_path / "b.hdf5", nan)
    with pytest.raises(RHError, match="all of B_x, B_y, B_z"):
        io.write_atmosphere(tmp_path / "c.hdf5", io.Atmosphere(**{**a.__dict__, "B_y": None}))
    with pytest.raises(RHError, match="velocity_z has shape"):
        io.write_atmosphere(tmp_path / "d.hdf5", io.Atmosphere(**{**a.__dict__, "velocity_z": a.velocity_z[:, 1:]}))
    assert not any(tmp_path.iterdir())  # nothing written for a refused atmosphere


def test_keywords_atoms_molecules_ray_round_trip():
    kw = {"ATMOS_FILE": "atmos.hdf5", "X_END": 4, "ITER_LIMIT": 1e-4, "HYDROGEN_LTE": True, "VACUUM_TO_AIR": False,
          "VMICRO_CHAR": 2.5}
    back = io.parse_keywords(io.format_keywords(kw))
    assert back == {"ATMOS_FILE": "atmos.hdf5", "X_END": "4", "ITER_LIMIT": "1.000000E-04", "HYDROGEN_LTE": "TRUE",
                    "VACUUM_TO_AIR": "FALSE", "VMICRO_CHAR": "2.5"}
    assert float(back["ITER_LIMIT"]) == 1e-4
    with pytest.raises(RHError, match="cannot write"):
        io.format_keywords({"BAD": "a # b"})
    atoms = [io.AtomEntry("/d/H_6.atom", False, "LTE_POPULATIONS", "pops.H.out"),
             io.AtomEntry("/d/CaII.atom", True, "ZERO_RADIATION", "pops.CA.out")]
    assert io.parse_atoms(io.format_atoms(atoms)) == atoms
    with pytest.raises(RHError, match="spaces"):
        io.format_atoms([io.AtomEntry("/my atoms/H_6.atom")])
    assert io.parse_molecules(io.format_molecules(["/d/H2.molecule", "/d/CO.molecule"])) == ["/d/H2.molecule", "/d/CO.molecule"]
    assert io.parse_ray(io.format_ray(0.5, [3, 10])) == (0.5, [3, 10])
    assert io.parse_ray(io.format_ray(1.0)) == (1.0, [])


def test_wavetable_is_xdr(tmp_path: Path):
    w = np.array([630.0, 630.2, 630.4235])
    p = io.write_wavetable(tmp_path / "w.table", w)
    raw = p.read_bytes()
    assert raw[:4] == b"\x00\x00\x00\x03" and len(raw) == 4 + 8 * 3  # XDR: big-endian int count, then doubles
    np.testing.assert_array_equal(io.read_wavetable(p), w)
    with pytest.raises(RHError):
        io.write_wavetable(tmp_path / "x", np.array([np.nan]))


def test_air_to_vacuum_matches_the_refractive_index_of_air():
    # Refractivity of standard air at 630 nm is 2.77e-4 (Ciddor 1996, Appl. Opt. 35, 1566); RH's formula
    # (vacuumtoair.c) agrees to 1e-6, i.e. to 0.6 mA here.
    vac = io.air_to_vacuum(np.array([630.2493, 150.0]))
    assert vac[0] / 630.2493 - 1 == pytest.approx(2.77e-4, abs=1e-6)
    assert vac[1] == 150.0  # below 200 nm RH leaves wavelengths unchanged


def test_kurucz_records_are_read_at_rhs_offsets():
    lines = get_classical_lines(["FeI_6301", "FeI_6302"])
    recs = [io.kurucz_line(ln) for ln in lines]
    text = io.format_kurucz(recs)
    rows = text.splitlines()
    assert all(len(r) == 153 for r in rows)
    assert io.parse_kurucz(text) == [
        io.KuruczLine(**{**r.__dict__, **{k: round(getattr(r, k), d) for k, d in
                                          (("wavelength", 4), ("loggf", 3), ("E_low", 3), ("E_up", 3), ("g_low", 3),
                                           ("g_up", 3))}})
        for r in recs
    ]
    r = rows[1]  # Fe I 6302.49: 5P1 - 5D0 (the project's line table)
    # The reads of kurucz.c: sscanf at +35 (J lower), +53 (E upper), +63 (J upper), labels at +41/+69
    # (the last word gives 2S+1 and L), gammas in [79:97], effective g factors at +143.
    assert float(r[:10]) == pytest.approx(630.2493, abs=1e-4)
    assert r[17:23].strip() == "26.00"
    assert float(r[35:41]) == 1.0 and float(r[63:69]) == 0.0
    assert r[41:51].split()[-1] == "5P" and r[69:79].split()[-1] == "5D"
    assert [float(x) for x in r[79:97].split()] == [8.0, 0.0, 0.0]
    assert float(r[53:63]) == pytest.approx(recs[1].E_up, abs=1e-3)
    assert [int(x) for x in r[143:153].split()] == [round(1000 * recs[1].g_low), round(1000 * recs[1].g_up)]
    # the upper level sits one vacuum wavenumber above the lower one
    assert recs[1].E_up - recs[1].E_low == pytest.approx(1e7 / io.air_to_vacuum(np.array([630.2493]))[0], rel=1e-6)
    with pytest.raises(RHError, match="153"):
        io.parse_kurucz(r[:120])


def test_abundances_parse():
    ab = io.parse_abundances("# c\n  H   12.00\n  HE  10.99\n#  C 8.6\n  FE   7.50  # Fe\n")
    assert ab == {"H": 12.0, "HE": 10.99, "FE": 7.5}
    with pytest.raises(RHError, match="no row for H"):
        io.parse_abundances("  FE 7.5\n")


def _rh_output(folder: Path, conv: list[int], fill_cols: list[int]) -> None:
    """Output files in RH's layout for ny = 1: ``conv`` per column, fill values in ``fill_cols``."""
    (folder / "output").mkdir()
    nx, nw = len(conv), 5
    inten = np.tile(np.linspace(1.0, 2.0, nw, dtype=np.float32), (nx, 1, 1))
    for c in fill_cols:
        inten[c] = io.FILL_VALUE
    with h5py.File(folder / io.RAY_FILE, "w") as f:
        f["wavelength"] = np.linspace(630.0, 630.4, nw)
        f["intensity"] = inten
        f["stokes_V"] = np.where(inten == np.float32(io.FILL_VALUE), inten, inten * 0.01)
    with h5py.File(folder / io.INDATA_FILE, "w") as f:
        g = f.create_group("mpi")
        g["convergence"] = np.array(conv, dtype=np.int64)[:, None]
        g["iterations"] = np.arange(nx, dtype=np.int64)[:, None] + 10
        g["xnum"] = np.arange(nx, dtype=np.int32)
        g["ynum"] = np.zeros(1, dtype=np.int32)


def test_output_reader_and_convergence_map(tmp_path: Path):
    _rh_output(tmp_path, [1, 0, -1, 1], fill_cols=[1, 2, 3])
    out = io.read_output(tmp_path)
    assert out.stokes.shape == (4, 1, 4, 5)
    np.testing.assert_allclose(out.stokes[0, 0, 0], np.linspace(1.0, 2.0, 5), rtol=1e-7)
    assert np.all(out.stokes[0, 0, 1:3] == 0)  # no stokes_Q/U datasets: zero
    assert np.all(np.isnan(out.stokes[1:, 0][:, [0, 3]]))  # fill values are never numbers
    assert out.convergence[:, 0].tolist() == [1, 0, -1, 1]
    failed = column_failures(out, 4)
    assert sorted(failed) == [1, 2, 3]
    assert "did not converge in 11 iterations" in failed[1]
    assert "gave up" in failed[2]
    assert "fill values" in failed[3]  # marked converged but not written: still failed
    assert column_failures(out, 5)[4].startswith("column 4 is not in RH's output")


def test_output_reader_names_what_is_missing(tmp_path: Path):
    with pytest.raises(RHError, match="output_ray.hdf5 is missing"):
        io.read_output(tmp_path)
    _rh_output(tmp_path, [1], [])
    with h5py.File(tmp_path / io.INDATA_FILE, "a") as f:
        del f["mpi/convergence"]
    with pytest.raises(RHError, match="missing"):
        io.read_output(tmp_path)


def test_fatal_line_is_found():
    text = "Process 1: START\n\a\n\n-FATAL_ERROR in routine readAtom\n Unable to open input file H_6.atom \n Exiting....."
    assert find_fatal_line(text) == "-FATAL_ERROR in routine readAtom Unable to open input file H_6.atom"
    assert find_fatal_line("Process    1: (EEE) init_hdf5_atmos: HDF5 error.") == "Process    1: (EEE) init_hdf5_atmos: HDF5 error."
    assert find_fatal_line("all fine") is None
