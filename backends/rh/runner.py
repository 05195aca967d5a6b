"""Running RH 1.5D on a chunk of columns: ``mpiexec -n k rh15d_ray_pool`` in a private folder.

The process steps that RH shares with SIR (the scratch folder, the subprocess
with its time-out that kills the whole process group, judging a crash, a
non-zero exit or a missing output) are those of
:mod:`stokesflow.backends.sir.runner`, used as they are. What is RH's own:

- it needs at least 2 MPI ranks (rank 0 only hands out columns) and the
  folders ``output/`` and ``scratch/`` (per-rank logs ``scratch/rh_p<rank>.log``);
- a fatal error (``-FATAL_ERROR in routine ...``) aborts every rank through
  ``MPI_Abort``: mpiexec exits non-zero and the reason is that line;
- a column that does not converge, or that RH gives up on ("crashed"), still
  lets the run end with exit code 0: its Stokes profiles are left at the fill
  value and only the convergence map says so. :func:`column_failures` turns
  that map into a reason per column, so that such a pixel is flagged failed and
  never passed on as numbers.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from stokesflow.backends.rh.errors import RHError
from stokesflow.backends.rh.io import INDATA_FILE, RAY_FILE, RHOutput
from stokesflow.backends.sir.runner import RunOutcome, ScratchFolder, resolve_executable, run_code

__all__ = [
    "ENV_VAR",
    "DATA_ENV_VAR",
    "MPIEXEC_ENV_VAR",
    "MIN_RANKS",
    "RunOutcome",
    "ScratchFolder",
    "resolve_rh",
    "resolve_launcher",
    "resolve_mpiexec",
    "mpi_command",
    "rh_command",
    "run_timeout",
    "run_rh",
    "find_fatal_line",
    "column_failures",
]

ENV_VAR = "STOKESFLOW_RH"
DATA_ENV_VAR = "STOKESFLOW_RH_DATA"
MPIEXEC_ENV_VAR = "STOKESFLOW_RH_MPIEXEC"
#: rh15d_ray_pool refuses to run on fewer ranks (rank 0 only distributes columns).
MIN_RANKS = 2


def resolve_rh(path: str | None) -> Path:
    """``rh15d_ray_pool`` from the option ``executable`` or ``STOKESFLOW_RH``.

    Raises
    ------
    RHError
        Neither given, not found, or not executable (the message names the option and the variable).
    """
    return resolve_executable(path, ENV_VAR, "RH 1.5D (rh15d_ray_pool)", RHError)


def resolve_launcher(name: str | None, env_var: str, code: str, error: type[Exception] = RHError) -> Path:
    """An MPI launcher: ``name``, else the environment variable ``env_var``, else ``mpiexec`` on PATH.

    Shared by the MPI codes (RH 1.5D, STiC): it must belong to the MPI that
    ``code`` was linked against (an MPICH-built code runs under MPICH's ``mpiexec``).

    Raises
    ------
    error
        Not found or not executable (the message names ``code``, the option and ``env_var``).
    """
    given = name or os.environ.get(env_var) or "mpiexec"
    found = shutil.which(given)
    if found is None:
        raise error(
            f"MPI launcher {given!r} not found ({code} runs under MPI); install the MPI {code} was built with, "
            f"or give its launcher with -B mpiexec=/path/to/mpiexec or {env_var}"
        )
    return Path(found)


def resolve_mpiexec(name: str | None) -> Path:
    """The MPI launcher of RH: the option ``mpiexec``, else ``STOKESFLOW_RH_MPIEXEC``, else ``mpiexec`` on PATH.

    Raises
    ------
    RHError
        Not found or not executable.
    """
    return resolve_launcher(name, MPIEXEC_ENV_VAR, "RH 1.5D", RHError)


def mpi_command(mpiexec: Path | str, executable: Path | str, ranks: int, *, min_ranks: int, code: str,
                where: str, error: type[Exception] = RHError) -> list[str]:
    """``[mpiexec, -n, ranks, executable]`` for a master/worker code (RH 1.5D, STiC).

    Raises
    ------
    error
        ``ranks`` below ``min_ranks`` (rank 0 only hands out work).
    """
    if ranks < min_ranks:
        raise error(f"{where} ranks: {code} needs at least {min_ranks} MPI ranks (rank 0 only hands out work), "
                    f"got {ranks}; set -B ranks={min_ranks} or more")
    return [str(mpiexec), "-n", str(int(ranks)), str(executable)]


def rh_command(mpiexec: Path | str, executable: Path | str, ranks: int) -> list[str]:
    """``[mpiexec, -n, ranks, rh15d_ray_pool]``.

    Raises
    ------
    RHError
        ``ranks`` below :data:`MIN_RANKS`.
    """
    return mpi_command(mpiexec, executable, ranks, min_ranks=MIN_RANKS, code="rh15d_ray_pool", where="[backend.rh]")


def run_timeout(per_column: float, ncol: int, ranks: int) -> float:
    """Time limit of one run [s]: ``per_column`` times the columns each worker rank gets (ranks - 1 work).

    Shared by the master/worker codes (RH 1.5D, STiC).
    """
    return float(per_column) * math.ceil(ncol / max(1, ranks - 1))


def find_fatal_line(text: str) -> str | None:
    """The routine and message of RH's first ``-FATAL_ERROR``, or of an HDF5 error ``(EEE)``, or None."""
    rows = text.splitlines()
    for i, row in enumerate(rows):
        if "FATAL_ERROR" in row:
            msg = " ".join(r.strip() for r in rows[i:i + 2] if r.strip())
            return msg.replace("\a", "").strip()
        if "(EEE)" in row:
            return row.strip()
    return None


def run_rh(
    folder: Path,
    argv: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
) -> RunOutcome:
    """Run RH in ``folder`` (which holds its inputs) and judge the outcome.

    The previous run's outputs and logs are removed first. Not ok for: a
    time-out (the process group of mpiexec and its ranks is killed), a crash,
    a non-zero exit (the reason then carries RH's ``FATAL_ERROR`` line when
    one was printed, from the output or the rank logs), or a missing output
    file. Columns that did not converge are judged afterwards, from the
    output (:func:`column_failures`).
    """
    folder = Path(folder)
    for sub in ("output", "scratch"):
        shutil.rmtree(folder / sub, ignore_errors=True)
        (folder / sub).mkdir()
    outcome = run_code(argv, folder, stdin=None, timeout=timeout, expected=(RAY_FILE, INDATA_FILE), env=env)
    if not outcome.ok:
        logs = "\n".join(p.read_text(errors="replace") for p in sorted((folder / "scratch").glob("rh_p*.log")))
        fatal = find_fatal_line(outcome.output) or find_fatal_line(logs)
        if fatal:
            outcome.reason = f"{outcome.reason}: {fatal[:300]}"
    return outcome


def column_failures(out: RHOutput, ncol: int) -> dict[int, str]:
    """Reason per failed column of a run over atmosphere columns 0 .. ncol-1 (x axis, y = 0).

    A column fails when the convergence map says not converged (0), crashed
    (-1) or not run (fill value), when it is missing from the output, or when
    its profiles hold the fill value or a non-finite number.
    """
    where = {int(x): i for i, x in enumerate(out.xnum)}
    failed: dict[int, str] = {}
    for c in range(ncol):
        i = where.get(c)
        if i is None or out.convergence.shape[1] < 1:
            failed[c] = f"column {c} is not in RH's output (xnum {out.xnum.tolist()})"
            continue
        conv, it = int(out.convergence[i, 0]), int(out.iterations[i, 0])
        if conv == 0:
            failed[c] = f"RH did not converge in {it} iterations (convergence map 0; its profiles are fill values)"
        elif conv == -1:
            failed[c] = f"RH gave up on the column after {it} iterations (convergence map -1, 'crashed')"
        elif conv != 1:
            failed[c] = f"RH did not run the column (convergence map {conv})"
        elif not np.all(np.isfinite(out.stokes[i, 0])):
            failed[c] = "RH marked the column converged but its profiles hold fill values or non-finite numbers"
    return failed
