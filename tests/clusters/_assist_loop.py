"""Helpers of the tests that run ``stokesflow assist`` on a cluster (mpiexec, SLURM) against the serial loop.

With one torch thread the loop is deterministic: the same subset, the same
network, the same guesses and fits whichever executor ran its phases (and
whether or not its training was killed and resumed from the checkpoint), so
the cluster runs are compared with the serial one exactly.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from _slurm import CLI, assert_same_parameters

__all__ = ["LOOP_ARGS", "LOOP_FILES", "PHASES", "assert_same_loop", "serial_loop"]

#: The loop's arguments in every run that is compared: one torch thread (the same network on any worker);
#: epochs enough that the training outlasts its first checkpoint (early stopping ends it in a few seconds).
LOOP_ARGS = ["--epochs", "400", "--threads", "1", "--baseline", "--no-report"]
#: The result files of the loop that are compared with the serial run's.
LOOP_FILES = ("subset.h5", "guess.h5", "assisted.h5", "baseline.h5")
#: The loop's phases, in the order they run.
PHASES = ["subset", "reference", "train", "predict", "assisted", "baseline"]


def serial_loop(obs: Path, folder: Path, *args: str) -> Path:
    """Run the loop on ``obs`` with the serial executor into ``folder / "serial"``; the folder.

    ``args``: more arguments, which the compared run must also get (``--chunk-pixels``: the ME
    backend seeds a pixel's random extra starts per chunk).
    """
    out = folder / "serial"
    subprocess.run([*CLI, "assist", "-i", str(obs), "-o", str(out), *LOOP_ARGS, *args, "--cluster", "serial", "-q"],
                   check=True, capture_output=True, timeout=300)
    return out


def assert_same_loop(loop: Path, serial: Path, ran: list[str] = PHASES) -> None:
    """``loop`` ran the phases ``ran`` and holds every result of the serial loop ``serial``, equal to it."""
    state = json.loads((loop / "summary.json").read_text())
    assert state["ran"] == ran, state["ran"]
    assert state["done"] == PHASES
    assert (loop / "model.pt").exists() and not (loop / "model.pt.ckpt").exists()
    for name in LOOP_FILES:
        assert_same_parameters(loop / name, serial / name)
    assert state["lm_iterations"] == json.loads((serial / "summary.json").read_text())["lm_iterations"]
