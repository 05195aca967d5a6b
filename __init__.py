"""stokesflow: parallel inversions of solar Stokes profiles.

The repository's top-level folders install as the subpackages
:mod:`stokesflow.orchestrator` (plan, run, store, command line),
:mod:`stokesflow.backends` (inversion codes), :mod:`stokesflow.nn_init`
(initial guesses), :mod:`stokesflow.lm_solver` (the numba Levenberg-Marquardt
engine) and :mod:`stokesflow.clusters` (executors). Importing ``stokesflow``
imports none of them.
"""

from __future__ import annotations

from importlib import metadata as _metadata

__all__ = ["__version__"]

try:
    __version__: str = _metadata.version("stokesflow")
except _metadata.PackageNotFoundError:  # pragma: no cover - source tree without an install
    __version__ = "0+unknown"
