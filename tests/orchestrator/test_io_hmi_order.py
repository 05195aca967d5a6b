"""The HMI segment order, tested on the physics: a redshifted line must come out redshifted.

The 24 segment files are written as JSOC writes hmi.S_720s: segment I0 is the
filtergram at +172.0 mA, I1 +103.2, I2 +34.4, I3 -34.4, I4 -103.2, I5 -172.0 mA
(HMI_IQUV_averaging.c, the JSOC module that makes the series, header comment
"FILTER/WAVELENGTH NAMES"; public copy github.com/ulrichw/NASA-HMI-Observables-Code).
The spectra are synthesised by the ME backend through its six HMI filter
profiles; the test writes segment k from the profile whose tuning matches the
JSOC offset of segment k, independently of the reader's own table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _io_instruments import HMI_SEGMENTS, hmi_header, write_hmi_record  # noqa: E402

from stokesflow.backends import get_backend  # noqa: E402
from stokesflow.backends.me.instrument import HMI_LINE_CENTRE, HMI_OFFSETS_MA  # noqa: E402
from stokesflow.orchestrator.io import SEGMENT_OFFSETS_MA, open_observation, segment_wavelengths  # noqa: E402

#: JSOC: tuning offset [mA] of segment k (HMI_IQUV_averaging.c, see the module docstring).
JSOC_SEGMENT_OFFSETS_MA = (172.0, 103.2, 34.4, -34.4, -103.2, -172.0)

NY, NX = 6, 9
VLOS = np.array([1.5, 0.0, -1.5])  # km/s, positive = redshift; columns 0-2, 3-5, 6-8
CONTINUUM_DN_S = 40000.0


def _synthesise() -> tuple[np.ndarray, np.ndarray]:
    """(NY, NX, 4, 6) Stokes [continuum units] through the HMI filters, points blue to red."""
    backend = get_backend("me", {"lines": ["FeI_6173"], "instrument": "hmi_filters"})
    tunings = HMI_LINE_CENTRE + np.asarray(HMI_OFFSETS_MA) / 1000.0  # the backend's order: blue to red
    assert np.all(np.diff(tunings) > 0)
    vlos = np.repeat(VLOS, NX // VLOS.size)[None, :].repeat(NY, axis=0).ravel()
    n = vlos.size
    params = {
        "B": np.full(n, 1500.0), "inclination": np.full(n, 30.0), "azimuth": np.full(n, 20.0), "vlos": vlos,
        "doppler_width": np.full(n, 30.0), "eta0": np.full(n, 10.0), "damping": np.full(n, 0.1),
        "S0": np.full(n, 0.3), "S1": np.full(n, 0.7),
    }
    return backend.synthesize(params, tunings).reshape(NY, NX, 4, 6), np.asarray(HMI_OFFSETS_MA)


def _write_jsoc_record(directory: Path) -> None:
    stokes, offsets_blue_to_red = _synthesise()
    values = {}
    for seg in HMI_SEGMENTS:
        k = int(seg[1])
        j = int(np.flatnonzero(np.isclose(offsets_blue_to_red, JSOC_SEGMENT_OFFSETS_MA[k]))[0])
        values[seg] = CONTINUUM_DN_S * stokes[:, :, "IQUV".index(seg[0]), j]
    write_hmi_record(directory, values, compressed=True, header=hmi_header(NY, NX, rsun_px=2000.0))


def _centre_of_gravity(obs) -> np.ndarray:
    """Line-depth weighted mean wavelength [mA from HMI_LINE_CENTRE] per column group, along obs.wavelength."""
    cube = obs.read_rows(0, obs.ny)
    depth = 1.0 - cube[:, :, 0, :].astype(np.float64)  # continuum units: S0 + S1 = 1
    cog = (depth * (obs.wavelength - HMI_LINE_CENTRE)).sum(axis=-1) / depth.sum(axis=-1) * 1000.0
    return cog.reshape(NY, VLOS.size, -1).mean(axis=(0, 2))


def test_segment_order_is_derived_from_the_backend_constants():
    assert SEGMENT_OFFSETS_MA == JSOC_SEGMENT_OFFSETS_MA  # I0 the reddest, as JSOC writes it
    assert sorted(SEGMENT_OFFSETS_MA) == sorted(HMI_OFFSETS_MA)
    np.testing.assert_allclose(segment_wavelengths(), HMI_LINE_CENTRE + np.array(JSOC_SEGMENT_OFFSETS_MA) / 1000)


def test_redshifted_line_reads_back_redshifted(tmp_path):
    _write_jsoc_record(tmp_path)
    obs = open_observation(tmp_path, continuum=CONTINUUM_DN_S)
    assert np.all(np.diff(obs.wavelength) > 0) and obs.meta["spectral_instrument"] == "hmi_filters"
    red, rest, blue = _centre_of_gravity(obs)
    # 1.5 km/s is 31 mA; through 76 mA wide filters at 68.8 mA steps the centre of gravity
    # moves by ~28 mA (measured on the backend's profiles); 10 mA leaves room for the sampling.
    assert red - rest > 10.0 and rest - blue > 10.0
    cube = obs.read_rows(0, NY)
    i_min = obs.wavelength[np.argmin(cube[:, :, 0, :], axis=-1)]
    assert np.all(i_min[:, :3] > i_min[:, 6:])  # the core of I sits redder where vlos > 0

    flipped = open_observation(tmp_path, continuum=CONTINUUM_DN_S, reader_options={"order": "blue_to_red"})
    red_f, rest_f, blue_f = _centre_of_gravity(flipped)
    assert red_f < rest_f < blue_f  # the wrong order turns a redshift into a blueshift


def test_me_fit_of_the_read_record_recovers_the_velocity_sign(tmp_path):
    _write_jsoc_record(tmp_path)
    obs = open_observation(tmp_path, continuum=CONTINUUM_DN_S)
    backend = get_backend("me", {"lines": ["FeI_6173"], "instrument": "hmi_filters", "noise": 1e-3})
    result = backend.invert(obs.read_pixels(0, obs.npix), obs.wavelength)
    vlos = result.params[:, result.names.index("vlos")].reshape(NY, NX)
    truth = np.repeat(VLOS, NX // VLOS.size)[None, :].repeat(NY, axis=0)
    # Noise-free profiles of the model the fit uses: it lands within 1e-4 km/s (measured); a
    # wrong segment order gives -truth, 3 km/s off. 0.05 km/s leaves room for solver changes.
    np.testing.assert_allclose(vlos, truth, atol=0.05)
