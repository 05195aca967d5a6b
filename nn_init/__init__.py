"""stokesflow initial-guess providers (``default``, ``constant``; networks later).

Imports ``backends`` only (for parameter specs); never ``orchestrator``.
"""

from stokesflow.nn_init.providers import (
    PLANNED_PROVIDERS,
    PROVIDERS,
    ConstantInit,
    DefaultInit,
    InitError,
    InitProvider,
    get_provider,
    list_providers,
)

__all__ = [
    "InitError",
    "InitProvider",
    "DefaultInit",
    "ConstantInit",
    "PROVIDERS",
    "PLANNED_PROVIDERS",
    "get_provider",
    "list_providers",
]
