"""``stokesflow export``: FITS round trips of values, units, WCS and keywords; SunPy maps; the command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

sys.path.insert(0, str(Path(__file__).parent))
from _report_helpers import hmi_like_keywords, me_maps, write_observation, write_result  # noqa: E402

from stokesflow.orchestrator.export import (  # noqa: E402
    ExportError, add_export_parser, export_fits, export_products,
)
from stokesflow.orchestrator.vectors import image_components  # noqa: E402

NY, NX = 12, 16
UNITS = {"B": "G", "inclination": "deg", "azimuth": "deg", "vlos": "km/s", "doppler_width": "10**(-3) Angstrom",
         "eta0": "", "chi2": "", "status": ""}


@pytest.fixture
def result(tmp_path: Path) -> dict:
    kw = hmi_like_keywords(NY, NX, xc=-300.0, yc=250.0, b0=5.0, scale=0.504, crota2=0.0)
    obs = write_observation(tmp_path / "obs.h5", NY, NX, attrs=kw)
    maps = me_maps(NY, NX, seed=5)
    status = np.zeros((NY, NX), "u1")
    status[0, 0] = 3
    maps["B"][0, 0] = np.nan
    res = write_result(tmp_path / "res.h5", maps, status=status, observation=obs)
    return {"res": res, "maps": maps, "kw": kw, "dir": tmp_path, "status": status}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stokesflow")
    add_export_parser(parser.add_subparsers(dest="command"))
    return parser


def test_one_file_per_quantity_round_trips_values_units_and_wcs(result):
    files = export_fits(result["res"], result["dir"] / "fits")
    names = [f.stem for f in files]
    assert names == list(result["maps"]) + ["chi2", "n_iter", "status", "Bx", "By", "Bz"]
    wcs_keys = {k: v for k, v in result["kw"].items() if k[:5] in ("CTYPE", "CUNIT", "CRPIX", "CRVAL", "CDELT", "CROTA")}
    ref = WCS(dict(wcs_keys, NAXIS=2, NAXIS1=NX, NAXIS2=NY), naxis=2)
    y, x = np.mgrid[0:NY, 0:NX]
    for name in ("B", "inclination", "vlos", "doppler_width", "eta0", "status"):
        with fits.open(result["dir"] / "fits" / f"{name}.fits") as hdul:
            h, data = hdul[0].header, hdul[0].data
            expected = result["status"] if name == "status" else result["maps"][name].astype("f4")
            np.testing.assert_array_equal(data, expected)  # float32 stored, float32 read: exact, NaN included
            assert h["BUNIT"] == UNITS[name] and h["BTYPE"] == name
            for key in ("DATE-OBS", "DSUN_OBS", "HGLN_OBS", "HGLT_OBS", "RSUN_OBS", "CRLN_OBS", "TELESCOP"):
                assert h[key] == result["kw"][key], key
            w = WCS(h)
            np.testing.assert_allclose(w.pixel_to_world_values(x, y), ref.pixel_to_world_values(x, y), atol=1e-12)
            history = "\n".join(str(v) for v in h["HISTORY"])
            assert 'backend = "me"' in history and "vector=image" in history


def test_multi_extension_file(result):
    (path,) = export_fits(result["res"], result["dir"] / "one", single=True, vector="none")
    assert path.name == "res.fits"
    with fits.open(path) as hdul:
        assert hdul[0].data is None and "DATE-OBS" in hdul[0].header
        names = [h.name for h in hdul[1:]]
        assert names == [n.upper() for n in result["maps"]] + ["CHI2", "N_ITER", "STATUS"]
        np.testing.assert_array_equal(hdul["VLOS"].data, result["maps"]["vlos"].astype("f4"))
        assert hdul["VLOS"].header["BUNIT"] == "km/s" and hdul["VLOS"].header["CRVAL1"] == -300.0


def test_image_vectors_are_the_components_of_the_fitted_field(result):
    prod = export_products(result["res"], vector="image")
    m = result["maps"]
    bx, by, bz = image_components(m["B"], m["inclination"], m["azimuth"])
    for name, expected in (("Bx", bx), ("By", by), ("Bz", bz)):
        np.testing.assert_allclose(prod.data[name], expected, rtol=1e-6, atol=1e-3)  # float32 products
        assert prod.units[name] == "G"
    assert np.isnan(prod.data["Bz"][0, 0])  # NaN input stays NaN


def test_heliographic_vectors_and_the_disambiguation_mask(result):
    prod = export_products(result["res"], vector="heliographic", disambiguate="acute")
    assert {"Bp", "Bt", "Br", "disambig_unreliable"} <= set(prod.data)
    bt_sq = sum(prod.data[n].astype(np.float64) ** 2 for n in ("Bp", "Bt", "Br"))
    b = result["maps"]["B"]
    ok = np.isfinite(b)
    np.testing.assert_allclose(np.sqrt(bt_sq[ok]), b[ok], rtol=1e-5)  # a rotation keeps |B|
    az = prod.data["azimuth"]
    weak = prod.data["disambig_unreliable"].astype(bool)
    assert ((az[~weak] >= 0) & (az[~weak] < 360)).all()
    np.testing.assert_allclose(az[weak], result["maps"]["azimuth"][weak].astype("f4"))


def test_heliographic_needs_a_wcs(tmp_path):
    res = write_result(tmp_path / "res.h5", me_maps(4, 4), observation=write_observation(tmp_path / "o.h5", 4, 4))
    with pytest.raises(ExportError, match="--vector heliographic needs the observation's WCS"):
        export_products(res, vector="heliographic")
    files = export_fits(res, tmp_path / "plain")  # without WCS the files are still written, in pixels
    assert "CTYPE1" not in fits.getheader(files[0])


def test_sunpy_map_of_an_export_has_the_observations_coordinates(result):
    sunpy_map = pytest.importorskip("sunpy.map")
    import astropy.units as u

    files = export_fits(result["res"], result["dir"] / "fits", vector="none")
    m = sunpy_map.Map(files[0])
    kw = result["kw"]
    assert m.unit == u.G and m.date.isot.startswith("2011-02-15T00:00:00")
    obs = m.observer_coordinate
    assert obs.lon.to_value(u.deg) == pytest.approx(kw["HGLN_OBS"], abs=1e-9)
    assert obs.lat.to_value(u.deg) == pytest.approx(kw["HGLT_OBS"], abs=1e-9)
    assert obs.radius.to_value(u.m) == pytest.approx(kw["DSUN_OBS"], rel=1e-12)
    # the reference pixel (FITS CRPIX, 1-based) is at CRVAL
    centre = m.pixel_to_world((kw["CRPIX1"] - 1) * u.pix, (kw["CRPIX2"] - 1) * u.pix)
    assert centre.Tx.to_value(u.arcsec) == pytest.approx(-300.0, abs=1e-9)
    assert centre.Ty.to_value(u.arcsec) == pytest.approx(250.0, abs=1e-9)
    assert m.scale.axis1.to_value(u.arcsec / u.pix) == pytest.approx(0.504)
    # the Python API gives the same maps without files
    maps = export_products(result["res"], vector="none").maps()
    np.testing.assert_array_equal(maps["B"].data, m.data)
    assert maps["B"].reference_coordinate.Tx == m.reference_coordinate.Tx


def test_existing_files_are_kept_unless_overwrite(result):
    out = result["dir"] / "fits"
    export_fits(result["res"], out, vector="none")
    with pytest.raises(ExportError, match="already exist.*--overwrite"):
        export_fits(result["res"], out, vector="none")
    export_fits(result["res"], out, vector="none", overwrite=True)


def test_a_partial_result_is_exported_with_a_warning_and_complete_false(result, caplog):
    import h5py

    export_fits(result["res"], result["dir"] / "full", vector="none")
    assert fits.getheader(result["dir"] / "full" / "B.fits")["COMPLETE"] is True
    with h5py.File(result["res"], "r+") as h5:  # as a run stopped before its last rows leaves it
        h5["status"][-2:] = 255
        h5.attrs["complete"] = False
    with caplog.at_level("WARNING", logger="stokesflow.export"):
        export_fits(result["res"], result["dir"] / "part", vector="none")
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1 and f"is not complete: its {2 * NX} pixel(s) not yet run are NaN" in said[0]
    assert fits.getheader(result["dir"] / "part" / "B.fits")["COMPLETE"] is False


def test_an_out_that_is_a_file_or_cannot_be_created_is_refused(result):
    afile = result["dir"] / "afile"
    afile.write_text("keep me")
    with pytest.raises(ExportError, match="export folder .*afile' is a file, not a folder; choose another --out"):
        export_fits(result["res"], afile, vector="none")
    with pytest.raises(ExportError, match=r"cannot create export folder .*afile/sub' \(Not a directory\)"):
        export_fits(result["res"], afile / "sub", vector="none")
    assert afile.read_text() == "keep me"


def test_command_line(result, capsys):
    parser = _parser()
    out = result["dir"] / "cli"
    args = parser.parse_args(["export", str(result["res"]), "--format", "fits", "--vector", "heliographic",
                              "--disambiguate", "acute", "--out", str(out)])
    assert args.func(args) == 0
    assert "wrote 16 FITS file(s)" in capsys.readouterr().out
    assert (out / "Br.fits").exists() and (out / "disambig_unreliable.fits").exists()
    assert args.func(args) == 2  # files exist now
    args = parser.parse_args(["export", str(result["dir"] / "missing.h5"), "--out", str(out)])
    assert args.func(args) == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["export", str(result["res"]), "--out", str(out), "--vector", "spherical"])
