"""Fixtures of the STiC tests: the TEST DOUBLE of STiC.x, run under the mpiexec TEST DOUBLE of the RH tests.

Not a ``conftest.py`` (it would shadow the top-level one); the STiC tests import the fixture from here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if str(Path(__file__).parents[1] / "rh") not in sys.path:  # the RH tests' helpers (tests folders are no packages)
    sys.path.insert(0, str(Path(__file__).parents[1] / "rh"))
from _rh_doubles import mpi_code_doubles  # noqa: E402

DOUBLES = Path(__file__).parent / "doubles"


@pytest.fixture
def stic_double(tmp_path: Path) -> dict[str, object]:
    """Options that point the STiC backend at the test doubles (continuum fixed: no extra run)."""
    exe, mpiexec = mpi_code_doubles(tmp_path, "STiC.x", DOUBLES / "stic_test_double.py")
    return {
        "executable": str(exe), "mpiexec": str(mpiexec), "lines": ["FeI_6302"], "continuum": 4.0e-5,
        "scratch": str(tmp_path / "scratch"), "timeout": 20.0,
    }
