"""Helpers of the real-SLURM tests: start the one-node cluster, run the command line, watch ``squeue``.

The cluster is started by ``.ci/start_slurm.sh`` (idempotent; it prints the
path of its ``slurm.conf``).  Every command the tests run gets ``SLURM_CONF``
in its environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

__all__ = [
    "CLI",
    "ROOT",
    "assert_same_parameters",
    "cancel_jobs",
    "jobs_in_queue",
    "run_cli",
    "slurm_conf",
    "slurm_env",
    "start_cli",
    "start_slurm",
    "wait_for",
    "wait_job_ended",
]

ROOT = Path(__file__).resolve().parents[2]
START_SCRIPT = ROOT / ".ci" / "start_slurm.sh"
#: The command line under test, as a user runs it.
CLI = [sys.executable, "-m", "stokesflow.orchestrator.cli"]


def start_slurm() -> tuple[str | None, str]:
    """Start (or find running) the one-node SLURM; ``(path of slurm.conf, "")`` or ``(None, why not)``.

    apt-get runs only on CI (``CI`` set) or with ``STOKESFLOW_SLURM_INSTALL=1``:
    a developer's machine is never changed behind their back.
    """
    env = dict(os.environ)
    if "STOKESFLOW_SLURM_INSTALL" not in env:
        env["STOKESFLOW_SLURM_INSTALL"] = "1" if env.get("CI") else "0"
    try:
        proc = subprocess.run(["bash", str(START_SCRIPT)], capture_output=True, text=True, timeout=900, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{START_SCRIPT.name} did not finish: {exc}"
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        why = " ".join(proc.stderr.strip().splitlines()[-2:]) or f"exit code {proc.returncode}"
        return None, f"no SLURM could be started here ({why})"
    return lines[-1], ""


def slurm_env(conf: str, **extra: str) -> dict[str, str]:
    """The environment of the commands under test: this one plus ``SLURM_CONF`` and ``extra``."""
    env = dict(os.environ)
    env["SLURM_CONF"] = conf
    # Replace a lost worker after 3 s instead of distributed's 15 s (test time only).
    env.setdefault("DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT", "3s")
    # one node: scheduler and workers talk over the loopback interface, not the machine's network
    env.setdefault("DASK_JOBQUEUE__SLURM__INTERFACE", "lo")
    env.setdefault("DASK_JOBQUEUE__PBS__INTERFACE", "lo")
    env.pop("PYTEST_CURRENT_TEST", None)
    env.update(extra)
    return env


def jobs_in_queue(conf: str, folder: Path, states: str = "PD,R,CF,S") -> dict[str, str]:
    """``{job id: state}`` of the jobs submitted from ``folder`` (a test's own) that ``squeue`` lists in
    the given states (not the ending ones).

    Only a test's own jobs: other test sessions may share the cluster.
    """
    out = subprocess.run(
        ["squeue", "-h", "-t", states, "-o", "%i %T %Z"], capture_output=True, text=True, timeout=30,
        env=slurm_env(conf), check=True,
    ).stdout
    jobs = {}
    for line in out.splitlines():
        job_id, state, workdir = line.split(maxsplit=2)
        if Path(workdir).resolve() == Path(folder).resolve():
            jobs[job_id] = state
    return jobs


def cancel_jobs(conf: str, folder: Path) -> None:
    """Cancel every job submitted from ``folder`` that is still queued or running."""
    ids = list(jobs_in_queue(conf, folder))
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30, env=slurm_env(conf))


def wait_for(condition, timeout: float, what: str, interval: float = 0.3):  # noqa: ANN001, ANN201
    """Poll ``condition()`` until it returns something true; fail after ``timeout`` seconds saying ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def assert_same_parameters(path: Path, reference: Path, rtol: float = 0.0) -> None:
    """``path`` is complete and its status map equals that of ``reference``; so do its parameter maps
    (NaN == NaN), exactly for ``rtol=0``."""
    with h5py.File(path, "r") as got, h5py.File(reference, "r") as ref:
        assert bool(got.attrs["complete"]), f"{path} is not complete"
        assert sorted(got["params"]) == sorted(ref["params"])
        np.testing.assert_array_equal(got["status"][()], ref["status"][()])
        for name in ref["params"]:
            a, b = got["params"][name][()], ref["params"][name][()]
            if rtol:
                np.testing.assert_allclose(a, b, rtol=rtol, atol=0, err_msg=name)
            else:
                np.testing.assert_array_equal(a, b, err_msg=name)


# --- fixtures (imported by the test modules that use them) ------------------------------------------

def _skip_or_fail_on_ci(reason: str) -> None:
    """Skip on a developer machine; fail on CI (``CI`` set), where SLURM must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the slurm tests (.ci/run starts SLURM before them)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_conf() -> str:
    """Path of the running one-node SLURM's ``slurm.conf`` (started by ``.ci/start_slurm.sh``)."""
    conf, why = start_slurm()
    if conf is None:
        _skip_or_fail_on_ci(why + " - run .ci/start_slurm.sh as root (Debian: installs slurm-wlm with "
                            "STOKESFLOW_SLURM_INSTALL=1)")
    return str(conf)


def run_cli(args: list[str], cwd: Path, conf: str, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m stokesflow.orchestrator.cli ARGS`` in ``cwd``; stdout and stderr together in ``.stdout``."""
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=slurm_env(conf, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=timeout, check=False,
    )


def start_cli(args: list[str], cwd: Path, conf: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """Start the command line in the background, its output going to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen([*CLI, *args], cwd=cwd, env=slurm_env(conf, **env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_job_ended(conf: str, folder: Path, job_id: str, timeout: float) -> None:
    """Wait until ``job_id`` (submitted from ``folder``) has left ``squeue`` (or is ending)."""
    wait_for(lambda: job_id not in jobs_in_queue(conf, folder), timeout, f"job {job_id} to end")
