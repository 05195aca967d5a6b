"""Fixtures of the STiC tests: the TEST DOUBLE of STiC.x, run under the mpiexec TEST DOUBLE of the RH tests.

Not a ``conftest.py`` (it would shadow the top-level one); the STiC tests import the fixture from here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

DOUBLES = Path(__file__).parent / "doubles"
#: One mpiexec stand-in serves both MPI codes' tests (it runs the program once with RH_DOUBLE_RANKS=K).
MPIEXEC_DOUBLE = Path(__file__).parents[1] / "rh" / "doubles" / "mpiexec_test_double.py"


def _wrapper(path: Path, script: Path) -> Path:
    """An executable file that runs ``script`` with this interpreter (which has numpy, h5py and stokesflow)."""
    path.write_text(f"#!{sys.executable}\nimport runpy\nrunpy.run_path({str(script)!r}, run_name='__main__')\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def stic_double(tmp_path: Path) -> dict[str, object]:
    """Options that point the STiC backend at the test doubles (continuum fixed: no extra run)."""
    if sys.platform == "win32":  # pragma: no cover
        pytest.skip("the test doubles are POSIX executable scripts")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = _wrapper(bin_dir / "STiC.x", DOUBLES / "stic_test_double.py")
    mpiexec = _wrapper(bin_dir / "mpiexec", MPIEXEC_DOUBLE)
    return {
        "executable": str(exe), "mpiexec": str(mpiexec), "lines": ["FeI_6302"], "continuum": 4.0e-5,
        "scratch": str(tmp_path / "scratch"), "timeout": 20.0,
    }
