"""stokesflow orchestrator: plan chunks, dispatch them to an executor, write the results.

The public entry points (imported lazily, so ``import orchestrator`` stays cheap
and never imports dask or MPI - Nanny workers re-import the main module)::

    from stokesflow.orchestrator import load_config, run_inversion, synthesize_observation

    cfg = load_config("run.toml", {"cluster": {"kind": "local", "workers": 8}})
    summary = run_inversion(cfg)          # RunSummary; summary.partial if chunks failed
    print(summary.report())

Modules: :mod:`stokesflow.orchestrator.config` (layered TOML configuration),
:mod:`stokesflow.orchestrator.plan` (chunking), :mod:`stokesflow.orchestrator.store` (the HDF5
result file), :mod:`stokesflow.orchestrator.run` (the run in four steps - ``validate_run``,
``open_store``, ``drive_chunks``, ``summarise`` - and the chunk task),
:mod:`stokesflow.orchestrator.progress`, :mod:`stokesflow.orchestrator.synth`,
:mod:`stokesflow.orchestrator.io` (observations: one module per format and instrument layout) /
:mod:`stokesflow.orchestrator.scenes` (synthetic scenes), :mod:`stokesflow.orchestrator.cli` (``stokesflow``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Config",
    "ConfigurationError",
    "ObservationError",
    "OrchestratorError",
    "ResultFile",
    "RunSummary",
    "load_config",
    "open_observation",
    "read_result",
    "run_inversion",
    "synthesize_observation",
]

_LAZY = {
    "Config": "stokesflow.orchestrator.config",
    "ConfigurationError": "stokesflow.orchestrator.config",
    "load_config": "stokesflow.orchestrator.config",
    "ObservationError": "stokesflow.orchestrator.errors",
    "OrchestratorError": "stokesflow.orchestrator.errors",
    "open_observation": "stokesflow.orchestrator.io",
    "ResultFile": "stokesflow.orchestrator.store",
    "read_result": "stokesflow.orchestrator.store",
    "RunSummary": "stokesflow.orchestrator.run",
    "run_inversion": "stokesflow.orchestrator.run",
    "synthesize_observation": "stokesflow.orchestrator.synth",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
