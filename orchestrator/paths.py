"""Checks on output paths, made before any work (shared by ``invert`` and ``synth``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

from stokesflow.orchestrator.errors import OrchestratorError

__all__ = ["check_new_output"]


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
    try:  # the only portable test of write permission (ACLs, read-only mounts, root squash)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".write-test"):
            pass
    except OSError as exc:
        raise error(
            f"cannot create {what}: folder {str(folder)!r} is not writable ({exc.strerror}); choose another --out"
        ) from None
