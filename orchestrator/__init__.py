"""stokesflow: orchestrator."""
