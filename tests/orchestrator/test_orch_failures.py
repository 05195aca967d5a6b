"""Clean failures of the command line: every wrong value is one line and exit code 2 before any
work (naming the flag the user gave); --resume of a complete file changes nothing; an
interruption (Ctrl-C, SIGTERM) says what it left, in one line, with exit code 130 or 143."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _orchestrator_helpers import HMI_WAVELENGTH, write_hmi_observation  # noqa: E402

import stokesflow.clusters as clusters  # noqa: E402
import stokesflow.orchestrator.run as run_module  # noqa: E402
import stokesflow.orchestrator.synth as synth_module  # noqa: E402
from stokesflow.orchestrator.cli import (  # noqa: E402
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    Terminated,
    main,
)
from stokesflow.orchestrator.io import write_observation  # noqa: E402
from stokesflow.orchestrator.store import inspect_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def obs(tmp_path_factory) -> Path:
    return write_hmi_observation(tmp_path_factory.mktemp("obs") / "obs.h5", 6, 10, nan_pixels=(3,))


@pytest.fixture
def no_cluster(monkeypatch):
    def refuse(spec):
        raise AssertionError("the cluster was started before the bad input was detected")

    monkeypatch.setattr(clusters, "open_executor", refuse)


def _one_error(capsys) -> str:
    """The run's stderr holds exactly one log line, at ERROR, and no traceback; return its message."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    errors = [ln for ln in lines if " ERROR " in ln]
    assert len(errors) == 1, err
    return errors[0].split(": ", 1)[1]


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root ignores permission bits: use /sys)."""
    if os.geteuid() == 0:
        if not Path("/sys").is_dir():
            pytest.skip("running as root without /sys: no unwritable folder to test with")
        return Path("/sys")
    d = tmp_path / "readonly"
    d.mkdir()
    d.chmod(0o500)
    return d


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["-B", "max_iter=abc"], ["max_iter", "abc", "-B max_iter"]),
        (["-B", "maxiter=3"], ["unknown option", "maxiter", "-B maxiter=3"]),
        (["-B", "instrument=prism"], ["instrument", "prism", "-B instrument=prism"]),
        (["-I", "B=9000", "--init", "constant"], ["outside the bounds", "-I B=9000"]),
        (["-R", "order=blue_to_red"], ["reader_options", "order", "-R order="]),
        (["-R", "continuum=bright"], ["continuum", "bright"]),
        (["--axes", "y,x,w"], ["y,x,w", "--axes"]),
        (["--format", "fits"], ["obs.h5", "FITS", "--format"]),
        (["--backend", "stic"], ["stic", "STOKESFLOW_STIC"]),
        (["--backend", "sir", "-B", "executable=/nonexistent/sir.x"], ["sir", "/nonexistent/sir.x"]),
        (["--cluster", "serial", "-C", "workers=0"], ["workers", "-C workers=0"]),
    ],
    ids=["B-type", "B-unknown", "B-value", "I-bounds", "R-unused", "R-continuum", "axes", "format",
         "backend", "backend-executable", "C-value"],
)
def test_wrong_values_are_one_line_and_exit_2_before_any_work(flags, fragments, obs, tmp_path, capsys,
                                                              no_cluster):
    out = tmp_path / "r.h5"
    code = main(["invert", "--input", str(obs), "--out", str(out), "--cluster", "serial", *flags])
    message = _one_error(capsys)
    assert code == EXIT_BAD_INPUT, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert not out.exists()


def test_print_config_checks_backend_options_too(capsys):
    assert main(["invert", "-B", "max_iter=abc", "--print-config"]) == EXIT_BAD_INPUT
    assert "max_iter" in _one_error(capsys)


def test_unwritable_output_is_refused_before_any_work(obs, tmp_path, capsys, no_cluster):
    folder = _unwritable_folder(tmp_path)
    code = main(["invert", "--input", str(obs), "--out", str(folder / "r.h5"), "--cluster", "serial"])
    message = _one_error(capsys)
    assert code == EXIT_BAD_INPUT and "is not writable" in message and str(folder) in message
    missing = tmp_path / "nowhere" / "r.h5"
    code = main(["invert", "--input", str(obs), "--out", str(missing), "--cluster", "serial"])
    assert code == EXIT_BAD_INPUT and "does not exist" in _one_error(capsys)


def test_all_nan_input_is_an_error(tmp_path, capsys, no_cluster):
    nan = tmp_path / "nan.h5"
    write_observation(nan, None, HMI_WAVELENGTH, {"instrument": "hmi", "lines": "FeI_6173"}, shape=(3, 4))
    code = main(["invert", "--input", str(nan), "--out", str(tmp_path / "r.h5"), "--cluster", "serial"])
    assert code == EXIT_BAD_INPUT and "no valid pixel" in _one_error(capsys)
    assert not (tmp_path / "r.h5").exists()


def test_resume_of_a_complete_file_says_so_and_changes_nothing(obs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r.h5"
    args = ["invert", "--input", str(obs), "--out", str(out), "--cluster", "serial", "--progress", "none"]
    assert main(args) == EXIT_OK
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    capsys.readouterr()
    monkeypatch.setattr(clusters, "open_executor", lambda spec: (_ for _ in ()).throw(AssertionError("started")))
    assert main([*args, "--resume"]) == EXIT_OK
    captured = capsys.readouterr()
    assert "was already complete" in captured.out and "file unchanged" in captured.out
    assert "already complete" in captured.err
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before


def test_synth_into_a_missing_folder(tmp_path, capsys):
    code = main(["synth", "--size", "4", "4", "--out", str(tmp_path / "nodir" / "obs.h5")])
    message = _one_error(capsys)
    assert code == EXIT_BAD_INPUT and "folder" in message and "does not exist" in message
    assert not (tmp_path / "nodir").exists()


@pytest.mark.parametrize("exc, code, word", [(KeyboardInterrupt, EXIT_INTERRUPTED, "interrupted"),
                                             (Terminated, EXIT_TERMINATED, "terminated (SIGTERM)")])
def test_synth_interrupted_leaves_nothing_and_says_so(exc, code, word, tmp_path, capsys, monkeypatch):
    real = synth_module._write_blocks

    def stop_in_the_middle(tmp, *a, **kw):
        real(tmp, *a, **{**kw, "ny": 2})  # rows written to the partial file ...
        assert tmp.exists()
        raise exc()  # ... then Ctrl-C / SIGTERM

    monkeypatch.setattr(synth_module, "_write_blocks", stop_in_the_middle)
    out = tmp_path / "obs.h5"
    assert main(["synth", "--size", "6", "5", "--rows-per-block", "1", "--out", str(out)]) == code
    message = _one_error(capsys)
    assert message == f"{word}: nothing written: {out} was not created (the partial file was removed)"
    assert list(tmp_path.iterdir()) == []
    # with --overwrite the existing file is kept as it was
    out.write_text("old")
    assert main(["synth", "--size", "6", "5", "--out", str(out), "--overwrite"]) == code
    assert "the existing" in _one_error(capsys) and out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obs.h5"]


def test_invert_interrupted_says_what_is_on_disk(obs, tmp_path, capsys, monkeypatch):
    real = run_module.drive_chunks

    def stop_after_two(ex, ctx, pending, window, store, progress, seconds):
        real(ex, ctx, pending[:2], window, store, progress, seconds)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "drive_chunks", stop_after_two)
    out = tmp_path / "r.h5"
    args = ["invert", "--input", str(obs), "--out", str(out), "--cluster", "serial", "--chunk-pixels", "12",
            "--progress", "none"]
    assert main(args) == EXIT_INTERRUPTED
    assert _one_error(capsys) == f"interrupted: 2 of 5 chunks are on disk in {out}; finish the run with --resume"
    assert inspect_result(out)["n_done"] == 2


def test_a_stop_swallowed_by_a_finalizer_is_raised_at_the_next_chunk(obs, tmp_path, capsys, monkeypatch):
    # Python ignores a KeyboardInterrupt raised inside __del__ (distributed's Future.__del__ is a
    # common place for Ctrl-C to land); the recorded request stops the driver loop anyway.
    calls = []
    real = run_module.invert_chunk

    def chunk_then_signal(ctx, index, start, stop):
        calls.append(index)
        if index == 1:
            run_module.request_stop(KeyboardInterrupt())  # what the handler records before raising
        return real(ctx, index, start, stop)

    monkeypatch.setattr(run_module, "invert_chunk", chunk_then_signal)
    out = tmp_path / "r.h5"
    code = main(["invert", "--input", str(obs), "--out", str(out), "--cluster", "serial", "--chunk-pixels", "12",
                 "--progress", "none", "--max-in-flight", "1"])
    assert code == EXIT_INTERRUPTED and calls == [0, 1]
    assert "2 of 5 chunks are on disk" in _one_error(capsys)


@pytest.mark.parametrize("kind, program", [("slurm", "sbatch"), ("pbs", "qsub")])
def test_missing_batch_program_is_one_line_and_exit_2(kind, program, obs, tmp_path, capsys, monkeypatch,
                                                      no_cluster):
    pytest.importorskip("dask_jobqueue")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which(program) is None
    opened = []
    monkeypatch.setattr(run_module, "_open_observation", lambda cfg: opened.append(cfg) or 1 / 0)
    code = main(["invert", "--input", str(obs), "--out", str(tmp_path / "r.h5"), "--cluster", kind,
                 "-C", "connect_timeout=5"])
    message = _one_error(capsys)
    assert code == EXIT_BAD_INPUT and program in message and f"--cluster {kind}" in message
    assert not opened  # found before the input is even opened
    assert not (tmp_path / "r.h5").exists()


@pytest.mark.slow
@pytest.mark.parametrize("group", [False, True], ids=["driver", "process-group"])
def test_ctrl_c_under_a_local_cluster_prints_one_line(group, tmp_path):
    obs = tmp_path / "sp.h5"
    assert main(["synth", "--instrument", "hinode", "--size", "64", "64", "--out", str(obs), "-q"]) == EXIT_OK
    out = tmp_path / "r.h5"
    cmd = [sys.executable, "-m", "stokesflow.orchestrator.cli", "invert", "--input", str(obs), "--out", str(out),
           "--cluster", "local", "--workers", "2", "--chunk-pixels", "128", "--progress", "log",
           "--log-interval", "0.001"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            m = re.search(r"chunks (\d+)/", line)
            if m and int(m.group(1)) >= 2:
                if group:  # what a terminal's Ctrl-C does: SIGINT to every process of the job
                    os.killpg(proc.pid, signal.SIGINT)
                else:
                    proc.send_signal(signal.SIGINT)
                break
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED, err
    driver = [ln for ln in err.splitlines() if re.match(r"\d\d:\d\d:\d\d (ERROR|WARNING|CRITICAL) stokesflow", ln)]
    assert len(driver) == 1 and re.search(r"interrupted: \d+ of 32 chunks are on disk", driver[0]), err
    # nothing from the driver process beyond that line: no ignored-exception or KeyboardInterrupt trace
    assert "Exception ignored" not in err and "KeyboardInterrupt" not in err, err
    # log records of the driver's own distributed client (the workers' side is the clusters folder's)
    driver_side = [ln for ln in err.splitlines() if re.search(r" - distributed\.(client|deploy|scheduler)", ln)]
    assert not driver_side, err
    done = inspect_result(out)["n_done"]
    assert 2 <= done < 32
