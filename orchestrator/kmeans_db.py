"""The k-means look-up database: inverted representative profiles, for ``--init kmeans`` and ``predict``.

:func:`build_kmeans_database` turns the reference inversion of the subset
(``assist --model kmeans``: the subset's pixels drawn from every k-means
cluster, inverted with the full strategy and ``--synthetic``) into the file
:class:`stokesflow.nn_init.kmeans.KMeansInit` reads: ``/wavelength``,
``/profiles`` (k, 4, nw) (the best-fit profiles of the representatives that
fitted well, status 0), ``/params/<name>`` (k,) with the result file's
``unit``, ``lower``, ``upper``, ``circular`` attributes, and the attributes
``parameters``, ``noise`` (4) and ``lines``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stokesflow.orchestrator.errors import OrchestratorError

__all__ = ["build_kmeans_database", "is_kmeans_database", "database_specs"]


def is_kmeans_database(path: str | os.PathLike[str]) -> bool:
    """True for an HDF5 file with ``/profiles`` and ``/params`` (a k-means database)."""
    try:
        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as h5:
            return "profiles" in h5 and "params" in h5
    except OSError:
        return False


def database_specs(path: str | os.PathLike[str]) -> tuple[Any, ...]:
    """The ParameterSpecs stored with a database's ``/params`` maps."""
    from stokesflow.backends.base import ParameterSpec

    with h5py.File(path, "r") as h5:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in h5.attrs["parameters"]]
        out = []
        for n in names:
            a = h5["params"][n].attrs
            unit = a.get("unit", "")
            out.append(ParameterSpec(n, unit.decode() if isinstance(unit, bytes) else str(unit),
                                     float(a.get("lower", -np.inf)), float(a.get("upper", np.inf)), 1.0,
                                     bool(a.get("circular", False))))
    return tuple(out)


def build_kmeans_database(subset_obs: str | os.PathLike[str], subset_result: str | os.PathLike[str],
                          out: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the database of the representatives in ``subset_result`` (which must hold ``/synthetic``).

    Raises
    ------
    OrchestratorError
        No ``/synthetic`` (invert the subset with ``--synthetic``) or no good fit.
    """
    from stokesflow.orchestrator.io import open_observation

    obs = open_observation(subset_obs)
    with h5py.File(subset_result, "r") as h5:
        if "synthetic" not in h5:
            raise OrchestratorError(f"{subset_result} has no /synthetic: the representatives must be inverted "
                                    "with --synthetic to serve as a look-up database")
        names = json.loads(h5.attrs["parameters"])
        status = h5["status"][:].reshape(-1)
        keep = np.flatnonzero(status == 0)
        if keep.size == 0:
            raise OrchestratorError(f"{subset_result}: no representative fitted well (status 0)")
        profiles = h5["synthetic"][:].reshape(-1, 4, obs.nw)[keep]
        params = {n: h5["params"][n][:].reshape(-1)[keep] for n in names}
        attrs = {n: dict(h5["params"][n].attrs) for n in names}
        noise = np.asarray(h5.attrs.get("noise", obs.meta.get("noise") or 1e-3), dtype=np.float64)
    tmp = Path(str(out) + ".partial")
    with h5py.File(tmp, "w") as db:
        db["wavelength"] = np.asarray(obs.wavelength, dtype=np.float64)
        db["profiles"] = profiles.astype(np.float32)
        for n in names:
            d = db.create_dataset(f"params/{n}", data=params[n])
            d.attrs.update(attrs[n])
        db.attrs["parameters"] = names
        db.attrs["noise"] = np.broadcast_to(noise, (4,)).astype(np.float64)
        db.attrs["lines"] = ",".join(obs.lines)
        db.attrs["source"] = str(Path(subset_result).resolve())
    tmp.replace(out)
    return {"representatives": int(keep.size), "of": int(status.size)}
