"""STiC (github.com/jaimedelacruz/stic, not bundled): LTE and NLTE inversions and synthesis with MPI."""

from stokesflow.backends.stic.errors import STiCError

__all__ = ["STiCError"]
