"""Shared by the tests that run the real SIR (``STOKESFLOW_SIR``): the executable check and the
2 x 2 umbral crop of the shared SIR sample (rows and columns 10-11) written as an observation."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from stokesflow.backends.sir.backend import ENV_VAR, SIRBackend
from stokesflow.orchestrator.io import write_observation

from conftest import require_external_code


def require_real_sir() -> None:
    """Skip when ``STOKESFLOW_SIR`` is not set (SIR is not bundled); fail when it is set but unusable."""
    require_external_code(ENV_VAR, SIRBackend, "SIR")


def umbral_crop(shared_data: Path, out: Path) -> np.ndarray:
    """Write the 2 x 2 umbral crop of ``sir_hinode_sample.h5`` to ``out``; return its true B [G] at log tau -1."""
    with h5py.File(shared_data / "sir_hinode_sample.h5") as f:
        stokes = f["stokes"][10:12, 10:12]
        wl = f["wavelength"][:]
        attrs = {k: f.attrs[k] for k in ("lines", "noise", "instrument")}
        truth = f["truth/B"][10:12, 10:12]
    write_observation(out, stokes, wl, attrs)
    return truth
