"""End to end per real layout: instrument files -> `stokesflow invert` -> the field the test put in.

Each test writes an observation the way the archive delivers it (SDO/HMI
hmi.S_720s segment files from JSOC; a Hinode SOT/SP level-1 scan folder), with
the real keywords and integer storage and WITHOUT a noise attribute (neither
archive states one), synthesised by the ME backend from known maps plus
seeded Gaussian noise, then inverts it through the command line, in a
subprocess, with the options the README recommends for that layout, and
compares the result with the maps.

Tolerances: on the strong-field pixels (B 1200-2500 G) with noise 1e-3 of the
continuum, an ME fit of the same forward model recovered B with a median
relative error of 0.2 % and a maximum of 1.0 % (HMI, six filtergrams, fitted
with the hmi_filters instrument) and 0.03 % / 0.13 % (SP, 112 points), and
every vlos sign (measured when the tests were written; the HMI figure by the
backend on the reader's output, as the command line needs the other parts of
issue 6). The bounds below are 1 % / 3 % (HMI) and 1 % / 2 % (SP): loose
enough for a different noise estimate or solver tolerance, while fitting the
HMI filtergrams as if sampled on a grid (the observation's
spectral_instrument ignored) gives 2.9 % / 5.0 % and fails, and a wrong
segment order fails the vlos signs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _io_instruments import HMI_SEGMENTS, hmi_header, sp_wavelength, write_hmi_record, write_sp_scan  # noqa: E402

from stokesflow.backends import get_backend  # noqa: E402
from stokesflow.backends.me.instrument import HMI_LINE_CENTRE, HMI_OFFSETS_MA  # noqa: E402
from stokesflow.orchestrator.store import read_result  # noqa: E402

NY = NX = 8
NOISE = 1e-3  # one sigma, continuum units; not written into the files
NAMES = ("B", "inclination", "azimuth", "vlos", "doppler_width", "eta0", "damping", "S0", "S1")
JSOC_SEGMENT_OFFSETS_MA = (172.0, 103.2, 34.4, -34.4, -103.2, -172.0)  # I0..I5, HMI_IQUV_averaging.c


def _maps(seed: int, doppler_width: float) -> dict[str, np.ndarray]:
    """A 'spot' of strong field in the middle, weak field around; redshift on the left, blueshift on the right."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:NY, 0:NX]
    strong = (abs(yy - 3.5) < 2.5) & (abs(xx - 3.5) < 2.5)
    maps = {
        "B": np.where(strong, rng.uniform(1200.0, 2500.0, (NY, NX)), rng.uniform(20.0, 150.0, (NY, NX))),
        "inclination": np.where(strong, rng.uniform(20.0, 60.0, (NY, NX)), rng.uniform(60.0, 120.0, (NY, NX))),
        "azimuth": rng.uniform(10.0, 170.0, (NY, NX)),
        "vlos": np.where(xx < NX // 2, 1.0, -1.0) * rng.uniform(0.6, 1.5, (NY, NX)),
        "doppler_width": np.full((NY, NX), doppler_width),
        "eta0": rng.uniform(4.0, 8.0, (NY, NX)),
        "damping": np.full((NY, NX), 0.2),
        "S0": np.full((NY, NX), 0.3),
        "S1": np.full((NY, NX), 0.7),
    }
    maps["strong"] = strong
    return maps


def _synthesise(options: dict, maps: dict, wavelength: np.ndarray, seed: int) -> np.ndarray:
    backend = get_backend("me", options)
    params = np.stack([maps[n].ravel() for n in NAMES], axis=1)
    stokes = backend.synthesize(params, wavelength).reshape(NY, NX, 4, wavelength.size)
    return stokes + NOISE * np.random.default_rng(seed + 1).standard_normal(stokes.shape)


def _cli(*args: str) -> None:
    """``stokesflow ARGS`` in a subprocess, as a user runs it; fails the test on a non-zero exit."""
    cmd = [sys.executable, "-m", "stokesflow.orchestrator.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _invert(observation: Path, out: Path, *options: str) -> dict:
    _cli("invert", "--input", str(observation), "--out", str(out), "--cluster", "serial", *options)
    return read_result(out)


def _assist(observation: Path, loop: Path, *options: str) -> None:
    """The assisted loop, small and with the baseline, on the serial executor."""
    pytest.importorskip("torch")
    _cli("assist", "-i", str(observation), "-o", str(loop), "--epochs", "3", "--threads", "1", "--cluster",
         "serial", "--progress", "none", "--no-report", "--baseline", "-q", *options)


def _check_field(result, maps: dict, *, b_rel_median: float, b_rel_max: float) -> None:
    """Every pixel fitted, and B of the strong pixels within the relative bounds."""
    assert np.all(np.isin(result.status, (0, 1)))
    b = np.asarray(result.params["B"]).reshape(NY, NX)
    strong = maps["strong"]
    rel = np.abs(b[strong] - maps["B"][strong]) / maps["B"][strong]
    assert np.median(rel) < b_rel_median and rel.max() < b_rel_max, f"B relative errors {np.round(rel, 3)}"


def _check(result, maps: dict, *, b_rel_median: float, b_rel_max: float) -> None:
    _check_field(result, maps, b_rel_median=b_rel_median, b_rel_max=b_rel_max)
    vlos = np.asarray(result.params["vlos"]).reshape(NY, NX)
    assert np.all(np.sign(vlos) == np.sign(maps["vlos"])), f"vlos {np.round(vlos, 2)}"
    assert result.attrs.get("noise_source") == "estimated"
    np.testing.assert_allclose(np.ravel(result.attrs["noise"]), NOISE, rtol=0.5)  # from the data alone


def _hmi_record(tmp_path: Path) -> tuple[Path, dict]:
    """A 8 x 8 cut-out of a JSOC hmi.S_720s record, off disc centre, and its maps."""
    maps = _maps(seed=11, doppler_width=30.0)
    tunings = HMI_LINE_CENTRE + np.asarray(HMI_OFFSETS_MA) / 1000.0  # blue to red
    stokes = _synthesise({"lines": ["FeI_6173"], "instrument": "hmi_filters"}, maps, tunings, seed=11)
    continuum_dn_s = 52000.0
    values = {}
    for seg in HMI_SEGMENTS:
        j = int(np.flatnonzero(np.isclose(HMI_OFFSETS_MA, JSOC_SEGMENT_OFFSETS_MA[int(seg[1])]))[0])
        values[seg] = continuum_dn_s * stokes[:, :, "IQUV".index(seg[0]), j]
    record = tmp_path / "hmi"
    # disc centre 600" away: the cut-out of an active region, as JSOC exports deliver them
    write_hmi_record(record, values, compressed=True, header=hmi_header(NY, NX, rsun_px=1900.0, crval=(450.0, -400.0)),
                     bscale=0.01)
    return record, maps


def _even(x: np.ndarray) -> np.ndarray:
    return 2.0 * np.round(x / 2.0)


def _sp_scan(tmp_path: Path) -> tuple[Path, dict]:
    """A Hinode SP level-1 scan of 8 slit files (16-bit, SPBSHFT 0-3, I above 32767), and its maps."""
    maps = _maps(seed=12, doppler_width=25.0)
    wl = sp_wavelength()
    stokes = _synthesise({"lines": ["FeI_6301", "FeI_6302"], "instrument": "grid"}, maps, wl, seed=12)
    continuum_dn = 40000.0  # above 32767: stored wrapped in signed 16 bit where SPBSHFT = 0
    counts = _even(continuum_dn * stokes).transpose(1, 2, 0, 3)  # (nx = slit, 4, ny along the slit, nw)
    scan = tmp_path / "SP_20070101"
    write_sp_scan(scan, counts, spbshft=[0, 1, 2, 3] * (NX // 4), file_order=list(range(NX))[::-1])
    return scan, maps


def test_hmi_segment_files_cutout(tmp_path):
    """The JSOC cut-out through `stokesflow invert`: -R continuum=local."""
    record, maps = _hmi_record(tmp_path)
    _check(_invert(record, tmp_path / "hmi_result.h5", "-R", "continuum=local"), maps,
           b_rel_median=0.01, b_rel_max=0.03)


def test_hinode_sp_level1_scan_folder(tmp_path):
    """The SP scan folder through `stokesflow invert`: default options."""
    scan, maps = _sp_scan(tmp_path)
    _check(_invert(scan, tmp_path / "sp_result.h5"), maps, b_rel_median=0.01, b_rel_max=0.02)


@pytest.mark.parametrize("layout", ["hmi", "hinode_sp"])
def test_layouts_state_no_noise(tmp_path, layout):
    """The premise of the two tests above: the files made here carry no noise attribute or keyword."""
    from stokesflow.orchestrator.io import open_observation

    if layout == "hmi":
        values = {seg: np.full((NY, NX), 30000.0) for seg in HMI_SEGMENTS}
        write_hmi_record(tmp_path, values, compressed=False, header=hmi_header(NY, NX))
    else:
        write_sp_scan(tmp_path, np.full((2, 4, NY, 112), 20000.0), spbshft=[1, 1])
    assert open_observation(tmp_path).meta["noise"] is None


def test_hmi_segment_files_through_the_assisted_loop(tmp_path):
    """The JSOC cut-out through `stokesflow assist` with the reader's options (-R continuum=local):
    every phase reads the segment files (no noise in them: the reference phase estimates it and the
    whole-field phases take it), and the assisted map recovers the field as the plain inversion does."""
    record, maps = _hmi_record(tmp_path)
    _assist(record, tmp_path / "loop", "--format", "hmi", "-R", "continuum=local")
    for name in ("assisted", "baseline"):
        result = read_result(tmp_path / "loop" / f"{name}.h5")
        assert result.attrs.get("noise_source") == "configuration"  # the reference phase's estimate, passed on
        np.testing.assert_allclose(np.ravel(result.attrs["noise"]), NOISE, rtol=0.5)
        _check_field(result, maps, b_rel_median=0.01, b_rel_max=0.03)


def test_hinode_sp_scan_folder_through_the_assisted_loop(tmp_path):
    """The SP scan folder through `stokesflow assist` (detected, default options): the loop reads the
    16-bit slit files in every phase and its maps recover the field as `invert` does."""
    scan, maps = _sp_scan(tmp_path)
    _assist(scan, tmp_path / "loop")
    for name in ("assisted", "baseline"):
        _check_field(read_result(tmp_path / "loop" / f"{name}.h5"), maps, b_rel_median=0.01, b_rel_max=0.02)
