"""Shared test fixtures: paths to the observations made by other codes; what MPI tests need."""

from __future__ import annotations

import importlib.util
import os
import shutil
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


def skip_or_fail_on_ci(reason: str) -> None:
    """Skip the test on a developer machine; fail it on CI (``CI`` set), where it must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this test")
    pytest.skip(reason)


def require_external_code(env_var: str, backend_cls, label: str) -> None:
    """For tests marked ``external``: skip when ``env_var`` names no executable (the code is not bundled),
    fail when it names one that ``backend_cls.is_available()`` rejects (a broken configuration must show)."""
    if not os.environ.get(env_var):
        pytest.skip(f"{env_var} is not set: no {label} executable to run ({label} is not bundled)")
    ok, why = backend_cls.is_available()
    if not ok:
        pytest.fail(f"{env_var} is set but {label} is unavailable: {why}")


def assert_unavailable_until_configured(name: str, backend_cls, env_var: str, exe_name: str, tmp_path,
                                        monkeypatch) -> None:
    """A wrapper of an external code names why it cannot run: ``env_var`` unset (also through the
    registry and ``get_backend``), set to a path that is not there, or to a file that is not executable."""
    from stokesflow.backends import get_backend, list_backends
    from stokesflow.backends.base import BackendUnavailable

    monkeypatch.delenv(env_var, raising=False)
    ok, why = backend_cls.is_available()
    assert not ok and env_var in why
    assert list_backends()[name][0] is False
    with pytest.raises(BackendUnavailable, match=env_var):
        get_backend(name)
    monkeypatch.setenv(env_var, str(tmp_path / "nowhere" / exe_name))
    ok, why = backend_cls.is_available()
    assert not ok and "not found" in why
    plain = tmp_path / exe_name
    plain.write_text("#!/bin/sh\n")
    monkeypatch.setenv(env_var, str(plain))
    ok, why = backend_cls.is_available()
    assert not ok and "not executable" in why


def missing_for_mpi() -> list[str]:
    """What a test marked ``mpi`` needs and this environment lacks: ``mpiexec``, mpi4py, dask-mpi."""
    missing = [] if shutil.which("mpiexec") else ["the program mpiexec"]
    missing += [f"the module {m}" for m in ("mpi4py", "dask_mpi") if importlib.util.find_spec(m) is None]
    return missing


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Tests marked ``mpi`` need ``mpiexec``, mpi4py and dask-mpi.

    Skipped on a developer machine without them; on CI (which installs them
    with ``pip install ".[mpi,mpich]"``) a missing one fails the test.
    """
    if item.get_closest_marker("mpi") is not None:
        missing = missing_for_mpi()
        if missing:
            skip_or_fail_on_ci(
                f"{', '.join(missing)} not found (pip install \"stokesflow[mpi,mpich]\", or load your MPI module)"
            )
