"""stokesflow: clusters."""
