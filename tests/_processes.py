"""Test helper shared by the test folders: kill a command line once its training has started."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["kill_during_training"]


def kill_during_training(cmd: list[str], checkpoint: Path, log: Path, cwd: Path | None = None,
                         timeout: float = 240.0) -> None:
    """Run ``cmd`` in a process group of its own, its output into ``log``; once ``checkpoint`` exists
    (the training's first epoch is on disk), SIGKILL the whole group (every rank of an mpiexec job)."""
    with open(log, "wb") as stream:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not checkpoint.exists():
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, f"the training did not start in {timeout:g} s"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
