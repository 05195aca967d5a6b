"""Ctrl-C in a terminal during ``stokesflow invert --cluster local``.

A terminal sends SIGINT to the whole foreground process group: the driver
and the worker processes its Nannies spawned.  The driver must stop, close
the cluster and say so in one line; the workers must not print
``KeyboardInterrupt`` / ``CancelledError`` tracebacks or Dask warnings of
their own.  The run is a real subprocess in its own session, so the signal
goes to its group exactly as a terminal sends it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "stokesflow.orchestrator.cli"]
# A log line of the stokesflow command line ("09:02:58 ERROR stokesflow.cli: ...").
OWN_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) stokesflow[.\w]*: ")


@pytest.fixture(scope="module")
def sunspot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hinode sunspot 48 x 48 (112 wavelengths): a few seconds of work on two workers."""
    path = tmp_path_factory.mktemp("interrupt") / "sunspot.h5"
    proc = subprocess.run(
        [*CLI, "synth", "--instrument", "hinode", "--scene", "sunspot", "--size", "48", "48", "-o", str(path), "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.timeout(300)
def test_ctrl_c_under_local_cluster_prints_one_line(sunspot: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.h5"
    cmd = [*CLI, "invert", "--input", str(sunspot), "--out", str(out), "--cluster", "local", "--workers", "2",
           "--chunk-pixels", "64", "-vv", "--progress", "log"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    before: list[str] = []
    worker_pids: set[int] = set()
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            before.append(line)
            m = re.search(r"chunk \d+ done by \S*:(\d+)", line)
            if m:
                worker_pids.add(int(m.group(1)))
                os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
                break
        after = proc.stderr.read()  # until the driver exits (pytest-timeout guards a hang)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()
    assert worker_pids, "no chunk was logged before the run ended:\n" + "".join(before[-30:])
    assert proc.returncode == 130, "".join(before[-10:]) + after
    lines = [ln for ln in after.splitlines() if ln.strip()]
    # Only the driver's own log lines: no worker traceback, no Dask warning.
    assert "Traceback" not in after and "KeyboardInterrupt" not in after and "CancelledError" not in after, after
    assert all(OWN_LINE.match(ln) for ln in lines), after
    # ... and one of them says what happened.
    problems = [ln for ln in lines if re.match(r"^\S+ (WARNING|ERROR|CRITICAL) ", ln)]
    assert len(problems) == 1 and "interrupted" in problems[0], after
    # The cluster was closed: the worker that logged the chunk is gone.
    deadline = time.monotonic() + 30  # guard only: its Nanny may need a moment to reap it
    while any(_alive(p) for p in worker_pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in worker_pids)


def test_after_the_signal_unawaited_coroutine_warnings_are_not_shown() -> None:
    """A Ctrl-C tears Dask's event loop down; Python's "coroutine ... was never awaited" for what it
    never ran (seen once from tornado, between the progress line and the one-line report) is not
    printed after the signal; other warnings still are."""
    import warnings

    from stokesflow.orchestrator.cli import _on_signal
    from stokesflow.orchestrator.run import request_stop

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.warn("coroutine 'Future._exception' was never awaited", RuntimeWarning)
        assert len(seen) == 1  # before the signal: shown
        try:
            with pytest.raises(KeyboardInterrupt):
                _on_signal(signal.SIGINT, None)
        finally:
            request_stop(None)
        warnings.warn("coroutine 'Future._exception' was never awaited", RuntimeWarning)
        warnings.warn("something else", RuntimeWarning)
        assert [str(w.message) for w in seen[1:]] == ["something else"]
