"""Running STiC on a chunk: ``mpiexec -n k STiC.x`` in a private folder.

The process steps STiC shares with the other codes are reused, not copied:
the scratch folder, the subprocess with its time-out that kills the whole
process group, and judging a crash, a non-zero exit or a missing output come
from :mod:`stokesflow.backends.sir.runner`; the MPI launcher, the
``mpiexec -n k`` command of a master/worker code and the time limit per
worker from :mod:`stokesflow.backends.rh.runner`. What is STiC's own:

- it reads the fixed file ``input.cfg`` (and ``lines.cfg``, or RH's
  ``keyword.input`` for NLTE) in its working folder, so each run gets its own folder;
- it needs at least 2 ranks: rank 0 only hands out pixels, and a synthesis
  run on 1 rank ends normally having written zeros;
- its fatal input errors print a line with ``ERROR`` and call ``exit(0)``
  (``master_sparse.cc``), so exit code 0 does not mean success: the output
  is judged, and a line with ``ERROR`` fails the run;
- a pixel whose inversion diverges leaves NaN in its profiles or model while
  its neighbours are fine; :func:`pixel_failures` turns that into a reason per pixel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from stokesflow.backends.rh.runner import mpi_command, resolve_launcher, run_timeout
from stokesflow.backends.sir.runner import RunOutcome, ScratchFolder, find_stop_line, resolve_executable, run_code
from stokesflow.backends.stic.errors import STiCError

__all__ = [
    "ENV_VAR",
    "DATA_ENV_VAR",
    "MPIEXEC_ENV_VAR",
    "MIN_RANKS",
    "FATAL_MARKERS",
    "RunOutcome",
    "ScratchFolder",
    "resolve_stic",
    "resolve_stic_mpiexec",
    "stic_command",
    "run_timeout",
    "run_stic",
    "pixel_failures",
]

ENV_VAR = "STOKESFLOW_STIC"
DATA_ENV_VAR = "STOKESFLOW_STIC_DATA"
MPIEXEC_ENV_VAR = "STOKESFLOW_STIC_MPIEXEC"
#: STiC's master (rank 0) only distributes pixels; with 1 rank a synthesis writes zeros.
MIN_RANKS = 2
#: Words of STiC's output that report a fatal error although it exits with code 0
#: (``cerr << "... ERROR, ..."; exit(0);`` in master_sparse.cc, input.cc, slave.cc),
#: and RH's (used by STiC's NLTE mode) terminating errors.
FATAL_MARKERS: tuple[str, ...] = ("ERROR", "TERMINATING_ERROR")


def resolve_stic(path: str | None) -> Path:
    """``STiC.x`` from the option ``executable`` or ``STOKESFLOW_STIC``.

    Raises
    ------
    STiCError
        Neither given, not found, or not executable (the message names the option and the variable).
    """
    return resolve_executable(path, ENV_VAR, "STiC (STiC.x)", STiCError)


def resolve_stic_mpiexec(name: str | None) -> Path:
    """The MPI launcher: the option ``mpiexec``, else ``STOKESFLOW_STIC_MPIEXEC``, else ``mpiexec`` on PATH.

    Raises
    ------
    STiCError
        Not found or not executable.
    """
    return resolve_launcher(name, MPIEXEC_ENV_VAR, "STiC", STiCError)


def stic_command(mpiexec: Path | str, executable: Path | str, ranks: int) -> list[str]:
    """``[mpiexec, -n, ranks, STiC.x]``.

    Raises
    ------
    STiCError
        ``ranks`` below :data:`MIN_RANKS`.
    """
    return mpi_command(mpiexec, executable, ranks, min_ranks=MIN_RANKS, code="STiC", where="[backend.stic]",
                       error=STiCError)


def run_stic(
    folder: Path,
    argv: Sequence[str],
    *,
    timeout: float,
    expected: Sequence[str],
    env: dict[str, str] | None = None,
) -> RunOutcome:
    """Run STiC in ``folder`` (which holds its inputs) and judge the outcome.

    The ``expected`` outputs of a previous run are removed first. Not ok for:
    a time-out (the process group of mpiexec and its ranks is killed), a
    crash, a non-zero exit, a line reporting a fatal error
    (:data:`FATAL_MARKERS`: STiC exits 0 after one), or a missing output.
    Pixels that failed inside a run that ended well are judged afterwards
    (:func:`pixel_failures`).
    """
    folder = Path(folder)
    for name in expected:
        (folder / name).unlink(missing_ok=True)
    outcome = run_code(argv, folder, stdin=None, timeout=timeout, expected=(), env=env)
    fatal = find_stop_line(outcome.output, FATAL_MARKERS)
    if outcome.ok and fatal is not None:
        return RunOutcome(False, f"stopped with exit code 0: {fatal[:200]}", outcome.seconds, outcome.output)
    if not outcome.ok:
        if fatal is not None:
            outcome.reason = f"{outcome.reason}: {fatal[:200]}"
        return outcome
    missing = [n for n in expected if not (folder / n).is_file()]
    if missing:
        return RunOutcome(False, f"exited 0 without writing {', '.join(missing)}", outcome.seconds, outcome.output)
    return outcome


def pixel_failures(profiles: np.ndarray, npix: int, model_columns: Sequence[np.ndarray] = ()) -> dict[int, str]:
    """Reason per failed pixel of a STiC run that ended well.

    Parameters
    ----------
    profiles : ndarray (n, 4, nw)
        The output profiles (STiC's ``output_profiles``).
    npix : int
        Pixels sent to STiC.
    model_columns : sequence of ndarray (n, ndep)
        Output model quantities (inversion), checked for NaN or inf.

    Returns
    -------
    dict
        pixel index -> reason, for a pixel missing from the output, all of
        whose profiles are zero (STiC's output for a pixel never computed, as
        on 1 rank, or whose fit it aborted), or whose profiles or model hold NaN or inf.
    """
    failed: dict[int, str] = {}
    p = np.asarray(profiles, dtype=float)
    for i in range(npix):
        if i >= p.shape[0]:
            failed[i] = f"pixel {i} is not in STiC's output ({p.shape[0]} pixels written)"
        elif not np.all(np.isfinite(p[i])):
            failed[i] = "STiC's profiles for the pixel hold NaN or inf (the fit or the synthesis diverged)"
        elif not np.any(p[i]):
            failed[i] = ("STiC wrote all-zero profiles for the pixel (not computed: as STiC does on 1 MPI rank, "
                         "or for a fit it aborted, e.g. on 'ERROR in the evaluation of FX' when the NLTE "
                         "populations of a trial model do not converge)")
        else:
            for col in model_columns:
                c = np.asarray(col, dtype=float)
                if i < c.shape[0] and not np.all(np.isfinite(c[i])):
                    failed[i] = "STiC's fitted model for the pixel holds NaN or inf (the fit diverged)"
                    break
    return failed

