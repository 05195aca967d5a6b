"""Checks on output paths, made before any work (shared by ``invert`` and ``synth``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

from stokesflow.orchestrator.errors import OrchestratorError

__all__ = ["check_new_output", "output_folder"]


def check_new_output(
    path: Path,
    *,
    overwrite: bool,
    what: str,
    exists_remedy: str,
    error: type[OrchestratorError] = OrchestratorError,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> None:
    """Make sure ``path`` can be written: absent (or ``overwrite``), not a folder, not one of the
    command's ``inputs``, in an existing, writable folder.

    Parameters
    ----------
    path : pathlib.Path
        The file about to be created.
    overwrite : bool
        An existing file may be replaced.
    what : str
        How messages name the file, e.g. ``"result file 'r.h5'"``.
    exists_remedy : str
        What to do when the file exists and ``overwrite`` is false.
    error : type
        The exception raised (a subclass of :class:`OrchestratorError`).
    inputs : sequence of path
        Files the command reads: ``--overwrite`` onto one of them (under any name) would destroy it.

    Raises
    ------
    OrchestratorError
        One line naming the file or folder, what is wrong and the fix (``--out``).
    """
    if path.is_dir():
        raise error(f"cannot create {what}: it is a folder; give a file name (--out)")
    for source in inputs:
        if path.exists() and Path(source).exists() and os.path.samefile(path, source):
            raise error(f"{what} is the input {os.fspath(source)!r}: writing it would destroy the input; "
                        "choose another --out")
    if path.exists() and not overwrite:
        raise error(f"{what} already exists; {exists_remedy}")
    folder = path.parent
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise error(f"cannot create {what}: folder {str(folder)!r} {state}; create it or choose another --out")
    _require_writable(folder, f"cannot create {what}", error)


def _require_writable(folder: Path, doing: str, error: type[OrchestratorError]) -> None:
    try:  # the only portable test of write permission (ACLs, read-only mounts, root squash)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".stokesflow.", suffix=".write-test"):
            pass
    except OSError as exc:
        raise error(f"{doing}: folder {str(folder)!r} is not writable ({exc.strerror}); choose another --out") from None


def output_folder(path: str | os.PathLike[str], *, what: str,
                  error: type[OrchestratorError] = OrchestratorError) -> Path:
    """The folder ``path``, created with its parents when missing, checked writable (``export``, ``report``).

    Parameters
    ----------
    path : path
        The folder to write into.
    what : str
        How messages name it, e.g. ``"export folder 'exp'"``.
    error : type
        The exception raised (a subclass of :class:`OrchestratorError`).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OrchestratorError
        ``path`` is a file, or cannot be created or written.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise error(f"{what} is a file, not a folder; choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"cannot create {what} ({exc.strerror}); choose another --out") from None
    _require_writable(folder, f"cannot write into {what}", error)
    return folder
