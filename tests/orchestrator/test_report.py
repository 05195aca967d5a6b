"""``stokesflow report``: figures, tables and statistics on small result files written with h5py."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _report_helpers import hmi_like_keywords, me_maps, write_observation, write_result  # noqa: E402

from stokesflow.orchestrator import stats  # noqa: E402
from stokesflow.orchestrator.comparison import (  # noqa: E402
    ComparisonError, ResultReference, TruthReference, compare,
)
from stokesflow.orchestrator.geometry import observation_info  # noqa: E402
from stokesflow.orchestrator.report import (  # noqa: E402
    ReportError, add_report_parser, display_axes, make_report, write_report,
)
from stokesflow.orchestrator.resultview import ResultView, ResultViewError, block_reduce  # noqa: E402

pytest.importorskip("matplotlib")

NY, NX = 20, 24
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def scene(tmp_path: Path) -> dict:
    maps = me_maps(NY, NX, seed=3)
    obs = write_observation(tmp_path / "obs.h5", NY, NX, attrs=hmi_like_keywords(NY, NX, xc=100.0, yc=-200.0),
                            truth=maps)
    status = np.zeros((NY, NX), "u1")
    status[0, :4] = 2        # failed
    status[1, :3] = 4        # poor fit
    status[2, :2] = 255      # not run
    status[3, :1] = 1        # max-iterations: kept
    params = {k: v.copy() for k, v in maps.items()}
    params["B"][status == 2] = np.nan
    res = write_result(tmp_path / "res.h5", params, status=status, observation=obs)
    return {"maps": maps, "obs": obs, "res": res, "status": status, "dir": tmp_path}


@pytest.fixture
def plain_report(scene):
    return make_report(scene["res"], scene["dir"] / "rep")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stokesflow")
    add_report_parser(parser.add_subparsers(dest="command"))
    return parser


def test_report_writes_every_png_and_a_page_that_links_them(scene, plain_report):
    rep = plain_report
    expected = {f"maps/{n}" for n in scene["maps"]} | {"maps/chi2", "maps/n_iter", "maps/status", "chi2_hist"}
    assert set(rep.images) == expected
    for path in rep.images.values():
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, path
    page = rep.index.read_text()
    for path in rep.images.values():
        assert f'src="{path.relative_to(rep.index.parent).as_posix()}"' in page
    assert "http://" not in page and "https://" not in page  # opens without network
    assert json.loads((rep.index.parent / "status.json").read_text())["2"]["pixels"] == 4
    assert rep.status_counts == {0: NY * NX - 10, 1: 1, 2: 4, 4: 3, 255: 2}


def test_embedded_page_holds_the_images(scene):
    rep = make_report(scene["res"], scene["dir"] / "rep", embed=True)
    page = rep.index.read_text()
    assert page.count("data:image/png;base64,") == len(rep.images)
    assert 'src="maps/' not in page


def test_bad_status_is_masked_and_said(scene, plain_report):
    rep = plain_report
    b = rep.maps["B"]  # full resolution for a small map
    masked = np.isin(scene["status"], (2, 3, 4, 255))
    assert np.isnan(b[masked]).all()
    assert np.isfinite(b[~masked]).all()  # status 1 (max-iterations) is kept
    page = rep.index.read_text()
    assert "4 failed, 3 poor fit, 2 not yet run" in page


def test_axes_in_arcsec_from_the_observation(scene):
    info = observation_info(scene["res"])
    extent, labels = display_axes(info)
    # CRVAL 100, -200 at the map centre, 0.5 arcsec pixels: edges 6 and 5 arcsec from it (linear);
    # the TAN projection departs from linear by ~3e-6 arcsec here
    assert extent == pytest.approx((94.0, 106.0, -205.0, -195.0), abs=1e-4)
    assert labels == ("solar x [arcsec]", "solar y [arcsec]")
    assert info.plate_scale == pytest.approx((0.5, 0.5))


def test_no_observation_means_pixels(tmp_path):
    res = write_result(tmp_path / "res.h5", me_maps(8, 9), observation=tmp_path / "gone.h5")
    info = observation_info(res)
    assert info.path is None and "not found" in info.note
    assert display_axes(info) == (None, ("x [pixel]", "y [pixel]"))
    rep = make_report(res, tmp_path / "rep")
    assert rep.index.exists() and "unknown: axes in pixels" in rep.index.read_text()


def test_truth_off_by_a_constant(scene, tmp_path):
    maps = scene["maps"]
    params = {k: v.copy() for k, v in maps.items()}
    params["B"] += 20.0                   # inside the 100 G tolerance
    params["vlos"] += 0.25                # outside the 0.1 km/s tolerance
    params["azimuth"] = (maps["azimuth"] + 178.0) % 180.0   # -2 deg modulo 180
    res = write_result(tmp_path / "off.h5", params, observation=scene["obs"])
    rep = make_report(res, tmp_path / "rep", truth=True)
    table = rep.comparison
    assert table["kind"] == "truth" and table["n_compared"] == NY * NX
    b = table["parameters"]["B"]["classes"]["all"]
    assert b["median_diff"] == pytest.approx(20.0, abs=1e-3)      # float32 storage of ~2500 G: 2.4e-4 G
    assert b["p90_abs_diff"] == pytest.approx(20.0, abs=1e-3)
    assert b["within_tolerance"] == 1.0 and b["pearson_r"] == pytest.approx(1.0, abs=1e-9)
    v = table["parameters"]["vlos"]["classes"]["all"]
    assert v["median_abs_diff"] == pytest.approx(0.25, abs=1e-6) and v["within_tolerance"] == 0.0
    a = table["parameters"]["azimuth"]["classes"]["all"]
    assert a["median_diff"] == pytest.approx(-2.0, abs=1e-3) and a["within_tolerance"] == 1.0
    assert a["pearson_r"] == pytest.approx(1.0, abs=1e-6)
    for key in ("diff/B", "hist2d/B", "diff/azimuth"):
        assert rep.images[key].read_bytes().startswith(PNG_SIGNATURE)
    text = (tmp_path / "rep" / "comparison.txt").read_text()
    assert "B>1000G" in text and "100.0%" in text
    assert json.loads((tmp_path / "rep" / "comparison.json").read_text()) == json.loads(json.dumps(table))


def test_reference_equal_to_result_and_field_classes(scene):
    with ResultView(scene["res"]) as view:
        ref = ResultReference(scene["res"])
        table = compare(view, ref).table
        ref.close()
    bad = np.isin(scene["status"], (2, 3, 4, 255))
    assert table["n_compared"] == int((~bad).sum())
    b_ref = np.where(bad, np.nan, scene["maps"]["B"]).astype("f4")
    for name, entry in table["parameters"].items():
        for label, s in entry["classes"].items():
            assert s["median_abs_diff"] == 0.0 and s["p90_abs_diff"] == 0.0, (name, label)
            if s["n"] > 1:
                assert s["pearson_r"] == pytest.approx(1.0, abs=1e-9)
    n = {lab: entry["n"] for lab, entry in table["parameters"]["B"]["classes"].items()}
    assert n["B<100G"] == int(np.sum(b_ref < 100))
    assert n["100-1000G"] == int(np.sum((b_ref >= 100) & (b_ref < 1000)))
    assert n["B>1000G"] == int(np.sum(b_ref >= 1000))
    assert n["B<100G"] + n["100-1000G"] + n["B>1000G"] == n["all"]


def test_flux_sums_match_a_hand_computation(tmp_path):
    b = np.array([[1000.0, 2000.0, 50.0], [500.0, 1500.0, 0.0]])
    inc = np.array([[0.0, 180.0, 60.0], [90.0, 60.0, 0.0]])
    maps = {"B": b, "inclination": inc, "azimuth": np.zeros_like(b)}
    kw = hmi_like_keywords(2, 3, scale=1.0)
    obs = write_observation(tmp_path / "obs.h5", 2, 3, attrs=kw, truth=maps)
    res = write_result(tmp_path / "res.h5", {k: v * (2.0 if k == "B" else 1.0) for k, v in maps.items()},
                       observation=obs)
    info = observation_info(res)
    with ResultView(res) as view:
        ref = TruthReference(res)
        table = compare(view, ref, pixel_area_cm2=info.pixel_area_cm2).table
        ref.close()
    # pixel area: 1 arcsec at DSUN_OBS - RSUN_REF = 1.476e11 - 6.96e8 m, squared, in cm^2
    side_cm = (1.476e11 - 6.96e8) * math.radians(1.0 / 3600.0) * 100.0
    area = side_cm**2
    # B cos(inc): 1000, -2000, 25, 0, 750, 0 (G)
    signed, unsigned = (1000 - 2000 + 25 + 0 + 750 + 0) * area, (1000 + 2000 + 25 + 0 + 750 + 0) * area
    f = table["flux"]
    assert f["unit"] == "Mx" and f["pixel_area_cm2"] == pytest.approx(area, rel=1e-12)
    assert f["classes"]["all"]["reference"]["signed"] == pytest.approx(signed, rel=1e-6)
    assert f["classes"]["all"]["reference"]["unsigned"] == pytest.approx(unsigned, rel=1e-6)
    assert f["classes"]["all"]["result"]["signed"] == pytest.approx(2 * signed, rel=1e-6)
    # strong class (reference B >= 1000 G): pixels 1000/0 deg, 2000/180 deg, 1500/60 deg
    assert f["classes"]["B>1000G"]["reference"]["signed"] == pytest.approx((1000 - 2000 + 750) * area, rel=1e-6)
    assert f["classes"]["B<100G"]["reference"]["unsigned"] == pytest.approx(25 * area, rel=1e-6)


def test_flux_without_pixel_area_is_in_gauss_pixels():
    b, inc = np.array([100.0, 200.0]), np.array([0.0, 120.0])
    out = stats.flux_sums(b, inc, np.array([True, True]))
    assert out == {"signed": pytest.approx(0.0, abs=1e-9), "unsigned": pytest.approx(200.0), "unit": "G px", "n": 2}


def test_difference_stats_of_the_azimuth_wrap_at_180():
    res, ref = np.array([179.0, 1.0, 90.0]), np.array([1.0, 179.0, 90.0])
    s = stats.difference_stats("azimuth", res, ref, np.ones(3, bool), 5.0)
    assert s["median_abs_diff"] == pytest.approx(2.0) and s["within_tolerance"] == 1.0


def test_reduced_chi2_density_is_a_density_with_mean_one():
    x = np.linspace(0, 40, 800001)  # dof = 2 has an exp(-x) tail: 1 - e^-40 below 1e-17
    for dof in (2, 20, 444):
        p = stats.reduced_chi2_density(x, dof)
        assert np.trapezoid(p, x) == pytest.approx(1.0, abs=1e-6)
        assert np.trapezoid(p * x, x) == pytest.approx(1.0, abs=1e-6)


def test_histogram2d_matches_numpy():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=10000), rng.normal(size=10000)
    ours = stats.histogram2d(x, y, (-2.0, 2.0), (-3.0, 3.0), bins=40)
    ref, _, _ = np.histogram2d(y, x, bins=40, range=[(-3.0, 3.0), (-2.0, 2.0)])
    np.testing.assert_array_equal(ours, ref)


def test_block_reduce_means_and_axial_means():
    data = np.array([[1.0, 3.0, 5.0], [np.nan, 2.0, np.nan]])
    np.testing.assert_allclose(block_reduce(data, 2, "mean"), [[2.0, 5.0]])
    az = np.array([[179.0, 1.0], [178.0, 2.0]])
    assert block_reduce(az, 2, "axial")[0, 0] == pytest.approx(0.0, abs=1e-9) or \
        block_reduce(az, 2, "axial")[0, 0] == pytest.approx(180.0, abs=1e-9)
    assert np.isnan(block_reduce(np.full((2, 2), np.nan), 2, "mean")[0, 0])
    np.testing.assert_array_equal(block_reduce(np.arange(9).reshape(3, 3), 2, "stride"), [[0, 2], [6, 8]])


def test_large_map_is_reduced_for_display(tmp_path):
    res = write_result(tmp_path / "res.h5", me_maps(70, 50))
    rep = make_report(res, tmp_path / "rep", max_side=32)
    assert rep.maps["B"].shape == (24, 17)   # factor 3
    with ResultView(res) as view:
        full = view.read("B")
    assert rep.maps["B"][0, 0] == pytest.approx(full[:3, :3].mean(), rel=1e-6)


def test_reference_of_another_size_is_refused(scene, tmp_path):
    other = write_result(tmp_path / "small.h5", me_maps(5, 5))
    with pytest.raises(ComparisonError, match=r"5 x 5 pixels.*20 x 24"):
        make_report(scene["res"], tmp_path / "rep", reference=other)
    assert not (tmp_path / "rep").exists()  # refused before anything was written


def test_refused_reference_leaves_an_earlier_report_as_it_was(scene, plain_report, tmp_path):
    before = {p: p.read_bytes() for p in plain_report.index.parent.rglob("*") if p.is_file()}
    maps = me_maps(NY, NX, seed=8)
    maps["B"] *= 2.0
    other_result = write_result(tmp_path / "other.h5", maps)
    small = write_result(tmp_path / "small.h5", me_maps(5, 5))
    with pytest.raises(ComparisonError, match="same field of view"):
        make_report(other_result, plain_report.index.parent, reference=small)
    after = {p: p.read_bytes() for p in plain_report.index.parent.rglob("*") if p.is_file()}
    assert after == before


def test_tolerances_of_unknown_parameters_or_without_a_reference_are_refused(scene, tmp_path):
    with pytest.raises(ReportError, match=r"--tolerance names \['Bfield'\], which the result does not have"):
        make_report(scene["res"], tmp_path / "rep", truth=True, tolerances={"Bfield": 10.0})
    with pytest.raises(ReportError, match="give --reference OTHER.h5 or --truth with it"):
        make_report(scene["res"], tmp_path / "rep", tolerances={"B": 10.0})
    assert not (tmp_path / "rep").exists()


def test_an_out_that_is_a_file_is_refused(scene, tmp_path):
    (tmp_path / "afile").write_text("keep me")
    with pytest.raises(ReportError, match="is a file, not a folder"):
        make_report(scene["res"], tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "keep me"


def test_truth_without_truth_maps_is_refused(tmp_path):
    obs = write_observation(tmp_path / "obs.h5", 4, 4)
    res = write_result(tmp_path / "res.h5", me_maps(4, 4), observation=obs)
    with pytest.raises(ComparisonError, match="no /truth"):
        make_report(res, tmp_path / "rep", truth=True)


def test_not_a_result_file(tmp_path):
    obs = write_observation(tmp_path / "obs.h5", 4, 4)
    with pytest.raises(ResultViewError, match="not a stokesflow result file"):
        make_report(obs, tmp_path / "rep")


def test_command_line(scene, capsys):
    parser = _parser()
    args = parser.parse_args(["report", str(scene["res"]), "--truth", "--out", str(scene["dir"] / "cli"),
                              "--tolerance", "B=10"])
    assert args.func(args) == 0
    assert "wrote" in capsys.readouterr().out
    table = json.loads((scene["dir"] / "cli" / "comparison.json").read_text())
    assert table["tolerances"]["B"] == 10.0
    args = parser.parse_args(["report", str(scene["dir"] / "missing.h5")])
    assert args.func(args) == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["report", str(scene["res"]), "--truth", "--reference", str(scene["res"])])
    with pytest.raises(SystemExit):
        parser.parse_args(["report", str(scene["res"]), "--tolerance", "B=-1"])


def test_write_report_default_folder_beside_the_result(scene):
    index = write_report(scene["res"])
    assert index == scene["dir"] / "res_report" / "index.html" and index.exists()


def test_hinode_scan_keywords_give_a_map_wcs(tmp_path):
    # SP level-1 keywords: CRVAL1/CDELT1 are the wavelength axis; XCEN/YCEN, XSCALE/YSCALE the map
    attrs = {"CRVAL1": 6302.08, "CDELT1": 0.0215, "CRPIX1": 1.0, "XCEN": -120.0, "YCEN": 35.0,
             "XSCALE": 0.1476, "YSCALE": 0.16, "DATE-OBS": "2007-01-01T00:00:00.000"}
    obs = write_observation(tmp_path / "obs.h5", 10, 6, attrs=attrs)
    info = observation_info(write_result(tmp_path / "res.h5", me_maps(10, 6), observation=obs))
    assert info.wcs_header["CDELT1"] == 0.1476 and info.wcs_header["CDELT2"] == 0.16
    assert info.wcs_header["CRVAL1"] == -120.0 and info.wcs_header["CRPIX1"] == 1.0   # first slit at XCEN
    assert info.wcs_header["CRVAL2"] == 35.0 and info.wcs_header["CRPIX2"] == 5.5     # slit centre at YCEN
    assert info.plate_scale == pytest.approx((0.1476, 0.16))


def test_stokesflow_command_line_runs_report_export_and_invert_report(tmp_path, capsys):
    """The wired ``stokesflow`` entry point: invert --report, report --truth, export."""
    from stokesflow.orchestrator.cli import main
    from stokesflow.orchestrator.synth import synthesize_observation

    obs = tmp_path / "obs.h5"
    synthesize_observation(obs, instrument="hinode", scene="sunspot", size=(6, 6), seed=2)
    res = tmp_path / "r.h5"
    assert main(["invert", "--input", str(obs), "--out", str(res), "--cluster", "serial", "--report", "-q"]) == 0
    out = capsys.readouterr().out
    page = tmp_path / "r_report" / "index.html"
    assert f"report: {page}" in out and page.stat().st_size > 0
    assert main(["report", str(res), "--truth", "--out", str(tmp_path / "rep")]) == 0
    table = json.loads((tmp_path / "rep" / "comparison.json").read_text())
    assert table  # a comparison against /truth was computed
    assert main(["export", str(res), "--format", "fits", "--vector", "image", "--out", str(tmp_path / "fx")]) == 0
    from astropy.io import fits

    with fits.open(tmp_path / "fx" / "Bz.fits") as hdul:
        assert hdul[0].data.shape == (6, 6)
    assert main(["report", str(tmp_path / "missing.h5")]) == 2
