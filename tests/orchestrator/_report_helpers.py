"""Small result and observation files in the contract layouts, written with h5py directly.

Used by the report and export tests; no inversion is run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

ME_UNITS = {"B": "G", "inclination": "deg", "azimuth": "deg", "vlos": "km/s", "doppler_width": "mA",
            "eta0": "", "damping": "", "S0": "", "S1": ""}

# An HMI-like observer at 1 AU-ish, 0.5 arcsec pixels, the map centred on (xc, yc) arcsec.
def hmi_like_keywords(ny: int, nx: int, *, xc: float = 0.0, yc: float = 0.0, b0: float = 0.0,
                      scale: float = 0.5, crota2: float = 0.0) -> dict[str, Any]:
    return {
        "CTYPE1": "HPLN-TAN", "CTYPE2": "HPLT-TAN", "CUNIT1": "arcsec", "CUNIT2": "arcsec",
        "CRPIX1": (nx + 1) / 2.0, "CRPIX2": (ny + 1) / 2.0, "CRVAL1": xc, "CRVAL2": yc,
        "CDELT1": scale, "CDELT2": scale, "CROTA2": crota2,
        "DATE-OBS": "2011-02-15T00:00:00.000", "TELESCOP": "SDO/HMI", "INSTRUME": "HMI_SIDE1",
        "DSUN_OBS": 1.476e11, "HGLN_OBS": 0.0, "HGLT_OBS": b0, "CRLT_OBS": b0, "CRLN_OBS": 30.0,
        "RSUN_REF": 6.96e8, "RSUN_OBS": float(np.degrees(np.arcsin(6.96e8 / 1.476e11)) * 3600.0),
    }


def write_observation(path: Path, ny: int, nx: int, *, nw: int = 6, attrs: Mapping[str, Any] | None = None,
                      truth: Mapping[str, np.ndarray] | None = None) -> Path:
    """An HDF5 observation (zeros for /stokes) with attributes and optional /truth maps."""
    with h5py.File(path, "w") as f:
        f.create_dataset("stokes", data=np.zeros((ny, nx, 4, nw), dtype="f4"))
        f.create_dataset("wavelength", data=6173.3433 + np.linspace(-0.172, 0.172, nw))
        f.attrs.update({"instrument": "hmi", "lines": "FeI_6173", **dict(attrs or {})})
        for name, data in (truth or {}).items():
            f.create_dataset(f"truth/{name}", data=np.asarray(data, dtype="f4"))
    return path


def write_result(path: Path, params: Mapping[str, np.ndarray], *, status: np.ndarray | None = None,
                 chi2: np.ndarray | None = None, n_iter: np.ndarray | None = None,
                 observation: Path | None = None) -> Path:
    """A result file in the layout of README "The result file" (one chunk, complete)."""
    names = list(params)
    ny, nx = np.asarray(params[names[0]]).shape
    status = np.zeros((ny, nx), "u1") if status is None else status
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for n in names:
            d = f.create_dataset(f"params/{n}", data=np.asarray(params[n], dtype="f4"))
            d.attrs["unit"] = ME_UNITS.get(n, "")
            f.create_dataset(f"sigma/{n}", data=np.ones((ny, nx), "f4"))
        f.create_dataset("chi2", data=np.asarray(rng.chisquare(20, (ny, nx)) / 20 if chi2 is None else chi2, "f4"))
        f.create_dataset("n_iter", data=np.asarray(np.full((ny, nx), 7) if n_iter is None else n_iter, "i4"))
        f.create_dataset("status", data=status.astype("u1"))
        f.create_dataset("chunks/start", data=np.array([0]))
        f.create_dataset("chunks/stop", data=np.array([ny * nx]))
        f.create_dataset("chunks/done", data=np.array([True]))
        f.create_dataset("chunks/error", data=np.array([""], dtype=object), dtype=h5py.string_dtype())
        obs = str(observation) if observation is not None else ""
        f.attrs.update(
            parameters=json.dumps(names), units=json.dumps({n: ME_UNITS.get(n, "") for n in names}),
            config=f'[input]\npath = "{obs}"\n\n[run]\nbackend = "me"\n', input=obs, backend="me",
            init="default", complete=True, runs=1, time_total_s=1.0, ny=ny, nx=nx,
        )
    return path


def me_maps(ny: int, nx: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible ME parameter maps (a spot-like B with quiet surroundings)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:ny, 0:nx]
    r = np.hypot(y - ny / 2, x - nx / 2) / (0.3 * max(ny, nx))
    b = 2500.0 * np.exp(-r**2) + rng.uniform(0, 80, (ny, nx))
    return {
        "B": b, "inclination": 90.0 - 80.0 * np.exp(-r**2) + rng.normal(0, 3, (ny, nx)),
        "azimuth": (np.degrees(np.arctan2(y - ny / 2, x - nx / 2)) % 180.0),
        "vlos": rng.normal(0, 0.8, (ny, nx)), "doppler_width": rng.uniform(25, 40, (ny, nx)),
        "eta0": rng.uniform(3, 15, (ny, nx)), "damping": rng.uniform(0.1, 0.5, (ny, nx)),
        "S0": rng.uniform(0.2, 0.4, (ny, nx)), "S1": rng.uniform(0.6, 0.8, (ny, nx)),
    }
