"""Fixtures of the RH 1.5D tests: the TEST DOUBLES of rh15d_ray_pool and mpiexec, and a stand-in data folder.

Not a ``conftest.py``: the test modules import ``skip_or_fail_on_ci`` from the top-level ``conftest``, which a
second ``conftest`` module would shadow; the RH tests import the fixture from here instead."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stokesflow.backends.rh.backend import DEFAULT_MOLECULES

DOUBLES = Path(__file__).parent / "doubles"


def _wrapper(path: Path, script: Path) -> Path:
    """An executable file that runs ``script`` with this interpreter (which has numpy, h5py and stokesflow)."""
    path.write_text(f"#!{sys.executable}\nimport runpy\nrunpy.run_path({str(script)!r}, run_name='__main__')\n")
    path.chmod(0o755)
    return path


def mpi_code_doubles(tmp_path: Path, name: str, script: Path) -> tuple[Path, Path]:
    """(executable ``name`` running the double ``script``, the mpiexec double) in ``tmp_path/bin``.

    One mpiexec stand-in serves both MPI codes' tests (RH 1.5D, STiC): it runs
    the program once with RH_DOUBLE_RANKS=K. Skips on Windows.
    """
    if sys.platform == "win32":  # pragma: no cover
        pytest.skip("the test doubles are POSIX executable scripts")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    return _wrapper(bin_dir / name, script), _wrapper(bin_dir / "mpiexec", DOUBLES / "mpiexec_test_double.py")


@pytest.fixture
def rh_double(tmp_path: Path) -> dict[str, str]:
    """Options that point the RH backend at the test doubles and a minimal data folder."""
    exe, mpiexec = mpi_code_doubles(tmp_path, "rh15d_ray_pool", DOUBLES / "rh15d_ray_pool_test_double.py")
    data = tmp_path / "rh_data"
    atoms = data / "Atoms_example"
    atoms.mkdir(parents=True)
    (atoms / "H_6.atom").write_text("# stand-in, never read by the test double\n")
    (atoms / "CaII.atom").write_text("# stand-in, never read by the test double\n")
    (atoms / "pf_Kurucz.input").write_text("")
    (atoms / "abundance.input").write_text("# stand-in abundances\n  H   12.00\n  HE  10.93\n  FE   7.50\n")
    (data / "Molecules_example").mkdir()
    for m in DEFAULT_MOLECULES:
        (data / "Molecules_example" / f"{m}.molecule").write_text("# stand-in\n")
    return {
        "executable": str(exe), "mpiexec": str(mpiexec), "rh_data": str(data), "molecules": ["H2"],
        "lines": ["FeI_6301", "FeI_6302"], "scratch": str(tmp_path / "scratch"), "timeout": 30.0,
    }
