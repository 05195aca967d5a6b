"""stokesflow orchestrator: plan chunks, dispatch them to an executor, write the results.

The public entry points (imported lazily, so ``import orchestrator`` stays cheap
and never imports dask or MPI - Nanny workers re-import the main module)::

    from orchestrator import load_config, run_inversion, synthesize_observation

    cfg = load_config("run.toml", {"cluster": {"kind": "local", "workers": 8}})
    summary = run_inversion(cfg)          # RunSummary; summary.partial if chunks failed
    print(summary.report())

Modules: :mod:`orchestrator.config` (layered TOML configuration),
:mod:`orchestrator.plan` (chunking), :mod:`orchestrator.store` (the HDF5
result file), :mod:`orchestrator.run` (the driver loop and the task),
:mod:`orchestrator.progress`, :mod:`orchestrator.synth`,
:mod:`orchestrator.io` / :mod:`orchestrator.readers` / :mod:`orchestrator.scenes`
(observations and synthetic scenes), :mod:`orchestrator.cli` (``stokesflow``).
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
    "Config": "orchestrator.config",
    "ConfigurationError": "orchestrator.config",
    "load_config": "orchestrator.config",
    "ObservationError": "orchestrator.errors",
    "OrchestratorError": "orchestrator.errors",
    "open_observation": "orchestrator.io",
    "ResultFile": "orchestrator.store",
    "read_result": "orchestrator.store",
    "RunSummary": "orchestrator.run",
    "run_inversion": "orchestrator.run",
    "synthesize_observation": "orchestrator.synth",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
