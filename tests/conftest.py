"""Shared test fixtures: paths to the observations made by other codes."""

from __future__ import annotations

import os
from pathlib import Path

import shutil

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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``mpi`` need an ``mpiexec``.

    Elsewhere they are skipped when there is none; on CI (which installs mpich
    from PyPI) they must run, so a missing launcher fails them instead.
    """
    if shutil.which("mpiexec") is not None or os.environ.get("CI"):
        return
    skip = pytest.mark.skip(reason="mpiexec not found (pip install mpich, or load your MPI module)")
    for item in items:
        if "mpi" in item.keywords:
            item.add_marker(skip)
