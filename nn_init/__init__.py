"""stokesflow: nn_init."""
