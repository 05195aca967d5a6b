"""Running a classical code in a private folder: scratch folders, the subprocess,
time-out and failure detection.

SIR keeps its state in static memory and writes fixed file names in its working
folder, so every concurrent task gets its own folder and every pixel its own
process. SIR exits with code 0 on every fatal error: a failure shows only as a
``STOP`` line in its output, as missing output files, or (for a profile with
NaN) as a zero chi2 with the guess model copied unchanged. :func:`run_code`
turns each of these, a time-out and a crash into a :class:`RunOutcome` with a
reason, so that only that pixel is flagged.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from stokesflow.backends.sir.errors import SIRError

__all__ = [
    "STOP_MARKERS",
    "RunOutcome",
    "ScratchFolder",
    "run_code",
    "find_stop_line",
    "resolve_executable",
    "chi2_failure",
]

#: Words of a code's output that report a fatal error although it exits with code 0:
#: SIR's Fortran ``STOP``; DeSIRe's ``-TERMINATING ERROR`` (its SIR part, error.f)
#: and ``-TERMINATING_ERROR`` (its RH part, rh/error.c).
STOP_MARKERS: tuple[str, ...] = ("STOP", "TERMINATING ERROR", "TERMINATING_ERROR")


@dataclass
class RunOutcome:
    """What one run of the code gave.

    Attributes
    ----------
    ok : bool
        True when the run ended normally and wrote every expected output.
    reason : str
        Why not, in one line ("" when ok).
    seconds : float
        Wall time of the subprocess [s].
    output : str
        Its standard output and error (the last 4000 characters).
    """

    ok: bool
    reason: str
    seconds: float
    output: str = ""


def resolve_executable(path: str | None, env_var: str, code: str, error: type[Exception] = SIRError) -> Path:
    """The code's executable from an explicit path or an environment variable.

    Shared by the backends of every external code; ``error`` is the
    backend's exception class.

    Raises
    ------
    error
        Neither given, the file is missing, or it is not executable; the
        message names the option and the variable.
    """
    given = path or os.environ.get(env_var, "")
    where = "the option executable" if path else f"{env_var}"
    if not given:
        raise error(
            f"no {code} executable: set {env_var}=/path/to/the/executable or the option executable=... "
            f"({code} is not bundled with stokesflow)"
        )
    found = shutil.which(given) if os.sep not in given else given
    p = Path(found or given).expanduser()
    if not p.is_file():
        raise error(f"{code} executable {given!r} (from {where}) not found; fix the path")
    if not os.access(p, os.X_OK):
        raise error(f"{code} executable {p} (from {where}) is not executable; chmod +x it or fix the path")
    return p.resolve()


class ScratchFolder:
    """A private working folder for one task, removed on exit.

    Parameters
    ----------
    prefix : str
        Folder-name prefix (``"stokesflow-sir-"``).
    base : str, optional
        Parent folder (a node-local disk on clusters); the system temporary
        folder if None.
    """

    def __init__(self, prefix: str, base: str | None = None) -> None:
        if base:
            Path(base).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=base or None))

    def write(self, name: str, text: str) -> Path:
        """Write ``text`` to ``name`` in the folder."""
        p = self.path / name
        p.write_text(text)
        return p

    def read(self, name: str) -> str:
        """Text of ``name`` in the folder."""
        return (self.path / name).read_text()

    def remove(self, names: Sequence[str]) -> None:
        """Delete the named files if present (outputs of a previous pixel)."""
        for n in names:
            try:
                (self.path / n).unlink()
            except FileNotFoundError:
                pass

    def keep_copy(self, label: str) -> Path:
        """Copy the folder as it is now to a sibling ``<folder>-<label>`` and return it."""
        dest = self.path.parent / f"{self.path.name}-{label}"
        shutil.copytree(self.path, dest, dirs_exist_ok=True)
        return dest

    def cleanup(self) -> None:
        """Remove the folder."""
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "ScratchFolder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def find_stop_line(output: str, markers: Sequence[str] = STOP_MARKERS) -> str | None:
    """The first line of a code's output that reports a fatal error (one of ``markers``), or None.

    The line after a marker is appended when the marker line itself says no
    more (DeSIRe prints the routine on the marker line and the reason below it).
    """
    rows = output.splitlines()
    for i, line in enumerate(rows):
        if any(m in line for m in markers):
            text = line.strip()
            if i + 1 < len(rows) and rows[i + 1].strip() and "TERMINATING" in line:
                text += " " + rows[i + 1].strip()
            return text
    return None


def run_code(
    argv: Sequence[str],
    folder: Path,
    *,
    stdin: str | None,
    timeout: float,
    expected: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> RunOutcome:
    """Run one process in ``folder`` and judge its outcome.

    Parameters
    ----------
    argv : sequence of str
        Executable and arguments.
    folder : Path
        Working folder.
    stdin : str, optional
        Text fed to the standard input (SIR: the control-file name and a newline).
    timeout : float
        Seconds before the process group is killed.
    expected : sequence of str
        Files the run must leave in ``folder``.

    Returns
    -------
    RunOutcome
        Not ok for: time-out, killed by a signal (crash), non-zero exit, a
        ``STOP`` line in the output, or a missing expected file.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(argv), cwd=folder, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True, env=env,
    )
    try:
        out, _ = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # pragma: no cover - ended in between
            pass
        out, _ = proc.communicate()
        return RunOutcome(False, f"timed out after {timeout:g} s (killed)", time.perf_counter() - t0, (out or "")[-4000:])
    dt = time.perf_counter() - t0
    out = out or ""
    tail = out[-4000:]
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:  # pragma: no cover
            sig = str(-proc.returncode)
        return RunOutcome(False, f"crashed (killed by signal {sig})", dt, tail)
    if proc.returncode != 0:
        return RunOutcome(False, f"exited with code {proc.returncode}", dt, tail)
    stop = find_stop_line(out)
    if stop is not None:
        return RunOutcome(False, f"stopped with exit code 0: {stop[:200]}", dt, tail)
    missing = [n for n in expected if not (folder / n).is_file()]
    if missing:
        return RunOutcome(False, f"exited 0 without writing {', '.join(missing)}", dt, tail)
    return RunOutcome(True, "", dt, tail)


def chi2_failure(chi: np.ndarray, cycles: int) -> str | None:
    """Why the chi2 rows of an inversion mean failure (None when they do not).

    SIR writes one row per cycle; a missing row, a non-finite chi2, or a zero
    chi2 (SIR's answer to a profile with NaN: the guess copied unchanged) is a
    failure.
    """
    if cycles == 0:
        return None
    if chi.shape[0] < cycles:
        return f"sir.chi has {chi.shape[0]} rows for {cycles} cycles"
    last = chi[-1, 1]
    if not np.isfinite(last):
        return f"non-finite chi2 ({last}) in the last cycle"
    if last == 0.0:
        return "zero chi2 in the last cycle (SIR's sign of a profile with NaN: the guess was copied unchanged)"
    return None

