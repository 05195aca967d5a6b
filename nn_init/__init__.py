"""stokesflow initial-guess providers and the networks behind them.

Providers (``--init NAME``): ``default``, ``constant``, ``previous`` (a
finished result file or init cube), ``kmeans`` (look-up in inverted
representative profiles), ``cnn`` (a trained network). Networks and training
(:mod:`~stokesflow.nn_init.network`, :mod:`~stokesflow.nn_init.training`,
:mod:`~stokesflow.nn_init.model_file`) import torch only when used, so this
package imports, and ME inversions run, without torch.

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
