"""Observation files: open and validate, read pixel ranges, write.

An observation is a map of ``ny x nx`` pixels, each holding the four Stokes
parameters I, Q, U, V at ``nw`` wavelengths. :func:`open_observation` checks a
file once, up front, and returns a light :class:`Observation` handle (shape,
wavelength grid, metadata, where the data live) that holds no cube data, so it
pickles in microseconds and travels to workers; each worker then reads only its
own range of pixels with :meth:`Observation.read_pixels`.

Modules, one job each (imports run one way: formats -> checks/observation ->
registry):

- :mod:`~stokesflow.orchestrator.io.registry`: the format table (name ->
  module with ``open``, ``detect``, ``read_rows``), :func:`detect_format`;
- :mod:`~stokesflow.orchestrator.io.observation`: the :class:`Observation`
  handle and the :class:`OpenRequest`;
- :mod:`~stokesflow.orchestrator.io.checks`: axes, wavelength grids, metadata,
  reader options;
- one module per format: :mod:`.hdf5` (the contract; writer in
  :mod:`.hdf5_writer`), :mod:`.npy`, :mod:`.fits`, :mod:`.hmi` (with
  :mod:`.hmi_files`), :mod:`.hinode_sp`; shared helpers in :mod:`._cube` and
  :mod:`._fits_common`;
- :mod:`~stokesflow.orchestrator.io.api`: :func:`open_observation`.

Wavelength grids must be strictly monotonic; a decreasing grid is accepted and
flipped on reading, so every :class:`Observation` has increasing wavelengths.
NaN or inf inside the data is allowed (the backend flags those pixels).

Examples
--------
>>> obs = open_observation("scene.h5")                       # doctest: +SKIP
>>> block = obs.read_pixels(0, 4096)    # (4096, 4, nw) float32 # doctest: +SKIP
"""

from __future__ import annotations

from stokesflow.orchestrator.io._fits_common import quiet_sun_level
from stokesflow.orchestrator.io.api import open_observation
from stokesflow.orchestrator.io.checks import (
    CANONICAL_AXES,
    SPECTRAL_INSTRUMENTS,
    check_wavelength,
    parse_axes,
    parse_wavelength,
)
from stokesflow.orchestrator.io.hdf5_writer import ObservationWriter, write_observation
from stokesflow.orchestrator.io.hinode_sp import HINODE_SP_LINES, hinode_sp_unscale, open_hinode_sp
from stokesflow.orchestrator.io.hmi import HMI_LINES, SEGMENT_OFFSETS_MA, open_hmi, segment_wavelengths
from stokesflow.orchestrator.io.hmi_files import HMI_SEGMENTS, hmi_disc_geometry
from stokesflow.orchestrator.io.observation import Observation, OpenRequest
from stokesflow.orchestrator.io.registry import FORMATS, detect_format

__all__ = [
    "CANONICAL_AXES",
    "FORMATS",
    "HINODE_SP_LINES",
    "HMI_LINES",
    "HMI_SEGMENTS",
    "Observation",
    "ObservationWriter",
    "OpenRequest",
    "SEGMENT_OFFSETS_MA",
    "SPECTRAL_INSTRUMENTS",
    "check_wavelength",
    "detect_format",
    "hinode_sp_unscale",
    "hmi_disc_geometry",
    "open_hinode_sp",
    "open_hmi",
    "open_observation",
    "parse_axes",
    "parse_wavelength",
    "quiet_sun_level",
    "segment_wavelengths",
    "write_observation",
]
