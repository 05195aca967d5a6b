"""RH 1.5D (github.com/ITA-Solar/rh, not bundled): NLTE/LTE full-Stokes synthesis of model-atmosphere columns."""

from stokesflow.backends.rh.errors import RHError

__all__ = ["RHError"]
