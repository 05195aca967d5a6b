"""Shared test fixtures: paths to the observations made by other codes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the checkout (or $STOKESFLOW_SHARED_DATA)."""
    env = os.environ.get("STOKESFLOW_SHARED_DATA")
    cand = Path(env) if env else REPO.parent / "shared" / "data"
    return cand if cand.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    """Folder of observations made by other codes; required on CI, skipped elsewhere if absent."""
    d = shared_data_dir()
    if d is None:
        if os.environ.get("CI"):
            pytest.fail("../shared/data is missing on CI: the tests against other codes cannot run")
        pytest.skip("../shared/data not found (set STOKESFLOW_SHARED_DATA)")
    return d
