"""The stokesflow command line: help, layering of flags, exit codes, backends listing."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _orchestrator_helpers import write_hmi_observation  # noqa: E402

import stokesflow  # noqa: E402
import stokesflow.orchestrator.io as io_module  # noqa: E402
from stokesflow.backends import get_backend, registry  # noqa: E402
from stokesflow.clusters import ClusterSpec  # noqa: E402
from stokesflow.orchestrator.errors import ObservationError  # noqa: E402
from stokesflow.orchestrator.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARTIAL, build_parser, main  # noqa: E402
from stokesflow.orchestrator.config import tomllib  # noqa: E402
from stokesflow.orchestrator.store import read_result  # noqa: E402


def _subparser(name):
    parser = build_parser()
    for action in parser._actions:
        if getattr(action, "choices", None) and name in action.choices:
            return action.choices[name]
    raise KeyError(name)


@pytest.mark.parametrize("command", ["invert", "synth", "backends"])
def test_help_documents_every_option(command, capsys):
    assert main([command, "--help"]) == EXIT_OK
    text = capsys.readouterr().out
    for action in _subparser(command)._actions:
        for opt in action.option_strings:
            assert opt in text, opt
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help text"


def test_invert_help_mentions_the_contract(capsys):
    main(["invert", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("Exit codes", "[backend.<name>]", "--resume", "y,x,stokes,wave",
                     "[default: 'me']", "local Dask (default)", "-R continuum=local"):
        assert fragment in text, fragment
    # every exit code the README lists
    for fragment in ("0 complete", "3 partial", "2 bad input or configuration", "1 unexpected error",
                     "130 interrupted (Ctrl-C)", "143 terminated (SIGTERM"):
        assert fragment in text, fragment


def test_flags_override_the_toml_file(tmp_path, capsys):
    user = tmp_path / "run.toml"
    user.write_text('[run]\nchunk_pixels = 5\n[cluster]\nkind = "serial"\n[backend.me]\nmax_iter = 20\n')
    code = main(["invert", str(user), "--chunk-pixels", "9", "-B", "n_starts=3", "--workers", "2",
                 "-C", "memory_limit='1GiB'", "--lines", "FeI_6301,FeI_6302", "--print-config"])
    assert code == EXIT_OK
    text = capsys.readouterr().out
    cfg = tomllib.loads(text)
    assert cfg["run"]["chunk_pixels"] == 9
    # every [cluster] key is shown, defaults filled in
    assert {k: cfg["cluster"][k] for k in ("kind", "workers", "memory_limit")} == {
        "kind": "serial", "workers": 2, "memory_limit": "1GiB"}
    assert cfg["cluster"]["retries"] == ClusterSpec().retries
    assert cfg["input"]["lines"] == ["FeI_6301", "FeI_6302"]
    # the selected backend's table shows every option: what was set, and the defaults of the rest
    me = cfg["backend"]["me"]
    assert me["max_iter"] == 20 and me["n_starts"] == 3
    defaults = get_backend("me").options
    unset = set(re.findall(r"^# (\w+) = \(not set\)$", text, flags=re.M))
    assert set(me) | unset >= {f.name for f in dataclasses.fields(defaults)}
    for name, value in me.items():
        if name not in ("max_iter", "n_starts", "lines"):
            assert value == _toml_plain(getattr(defaults, name)), name
    assert cfg["init"]["default"] == {}


def _toml_plain(value):
    return [_toml_plain(v) for v in value] if isinstance(value, tuple) else value


def test_backend_option_follows_the_selected_backend(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(registry.BUILTIN_BACKENDS, "other", "stokesflow.backends.me.backend:MEBackend")
    user = tmp_path / "run.toml"
    user.write_text('[run]\nbackend = "other"\ninit = "constant"\n')
    assert main(["invert", str(user), "-B", "max_iter=7", "-I", "B=500", "--print-config"]) == EXIT_OK
    cfg = tomllib.loads(capsys.readouterr().out)
    assert set(cfg["backend"]) == {"other"} and cfg["backend"]["other"]["max_iter"] == 7
    # the init table shows every parameter's start: the one given, the midpoints of the bounds for the rest
    init = cfg["init"]["constant"]
    assert init["B"] == 500 and init["inclination"] == 90.0 and init["azimuth"] == 90.0
    assert set(init) == set(get_backend("me").parameter_names)


def test_version(capsys):
    assert main(["--version"]) == EXIT_OK
    assert capsys.readouterr().out == f"stokesflow {stokesflow.__version__}\n"


def test_reader_options_reach_open_observation(tmp_path, capsys, monkeypatch):
    args = ["invert", "--input", str(tmp_path / "hmi"), "-R", "continuum=local", "-R", "order=blue_to_red",
            "-R", "mask_offdisc=true", "--cluster", "serial", "--out", str(tmp_path / "r.h5")]
    assert main([*args, "--print-config"]) == EXIT_OK
    cfg = tomllib.loads(capsys.readouterr().out)
    assert cfg["input"]["continuum"] == "local"
    assert cfg["input"]["reader_options"] == {"order": "blue_to_red", "mask_offdisc": True}
    seen = {}

    def fake_open(path, **kw):
        seen.update(kw)
        raise ObservationError(f"{path}: stop here (test)")

    monkeypatch.setattr(io_module, "open_observation", fake_open)
    assert main(args) == EXIT_BAD_INPUT
    assert seen["continuum"] == "local" and seen["reader_options"] == {"order": "blue_to_red", "mask_offdisc": True}


def test_noise_flag_takes_one_or_four_sigmas(tmp_path, capsys):
    assert main(["invert", "--noise", "1e-3,2e-3,2e-3,1.5e-3", "--print-config"]) == EXIT_OK
    assert tomllib.loads(capsys.readouterr().out)["input"]["noise"] == [1e-3, 2e-3, 2e-3, 1.5e-3]
    assert main(["invert", "--noise", "2e-3", "--print-config"]) == EXIT_OK
    assert tomllib.loads(capsys.readouterr().out)["input"]["noise"] == 2e-3
    assert main(["invert", "--noise", "1e-3,2e-3", "--print-config"]) == EXIT_BAD_INPUT
    assert "--noise" in capsys.readouterr().err


def test_usage_and_config_errors_exit_2(tmp_path, capsys):
    assert main(["invert", "--chunk-pixels", "-3"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == ("stokesflow invert: error: argument --chunk-pixels: expected an integer "
                                       ">= 0, got -3 (see stokesflow invert --help)\n")  # one line, no usage block
    assert main(["invert", "--cluster", "moon"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--cluster" in err and "moon" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nchunk_pixel = 3\n")
    assert main(["invert", str(bad), "--print-config"]) == EXIT_BAD_INPUT
    assert "chunk_pixels" in capsys.readouterr().err


def test_missing_input_exits_2_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "absent.h5"
    code = main(["invert", "--input", str(missing), "--cluster", "serial", "--out", str(tmp_path / "r.h5")])
    assert code == EXIT_BAD_INPUT
    assert "absent.h5" in capsys.readouterr().err
    assert not (tmp_path / "r.h5").exists()


def test_complete_and_partial_exit_codes(tmp_path, capsys, monkeypatch):
    # a test-only registry entry for the fault-injecting double
    monkeypatch.setitem(registry.BUILTIN_BACKENDS, "poison-double", "_orchestrator_doubles:PoisonDouble")
    obs = write_hmi_observation(tmp_path / "obs.h5", 6, 10, poison_pixels=(25,))
    common = ["--input", str(obs), "--cluster", "serial", "--chunk-pixels", "20", "--progress", "log"]
    assert main(["invert", *common, "--out", str(tmp_path / "ok.h5")]) == EXIT_OK
    assert "complete: 3/3 chunks" in capsys.readouterr().out
    code = main(["invert", *common, "--backend", "poison-double", "--out", str(tmp_path / "bad.h5")])
    assert code == EXIT_PARTIAL
    captured = capsys.readouterr()
    assert "chunk 1 FAILED: RuntimeError: poisoned pixel" in captured.out
    assert "1 chunk(s) failed" in captured.err
    r = read_result(tmp_path / "bad.h5")
    assert list(r.errors) == [1] and r.done.tolist() == [True, False, True]


def test_backends_command(capsys):
    assert main(["backends"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "me           available" in out
    assert "sir" in out and "unavailable" in out
    assert "constant" in out and "unet" in out


def _records_of_a_command(monkeypatch, logger: str, during, after=None) -> list:
    """The records of ``logger`` that pass while ``stokesflow`` runs a command whose body is ``during()``
    (then ``after()`` once ``main`` returned); checks that the command line's filters are gone afterwards."""
    import argparse
    import logging

    from stokesflow.orchestrator import cli

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    log = logging.getLogger(logger)
    keep = Keep()
    log.addHandler(keep)

    def func(args):
        during()
        return EXIT_OK

    parser = argparse.ArgumentParser()
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.set_defaults(func=func)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    try:
        assert cli.main([]) == EXIT_OK
        if after is not None:
            after()
    finally:
        log.removeHandler(keep)
    assert not any(isinstance(f, cli._DaskCloseRaces) for f in log.filters)
    return seen


def _exc_info(exc: BaseException):
    try:
        raise exc
    except BaseException:
        return sys.exc_info()


def test_ctrl_c_race_inside_dask_sync_is_not_logged(monkeypatch):
    """The NameError of distributed's ``sync().cancel`` after an early Ctrl-C is dropped, nothing else.

    ``distributed.utils.sync`` assigns its ``future`` only once its
    coroutine runs; a Ctrl-C before that makes the ``cancel`` callback raise
    NameError, which tornado logs with a traceback (seen on CI in the Ctrl-C
    test of the local cluster). The command line must drop exactly that
    record while a command runs: the same error from another callback is
    kept, and the filter is gone after ``main`` returns.
    """
    import functools
    import logging

    def sync():  # the shape of distributed.utils.sync: a free variable assigned later
        future: object

        def cancel():
            return future

        return cancel

    cancel = sync()
    try:
        cancel()
    except NameError:
        exc_info = sys.exc_info()
    log = logging.getLogger("tornado.application")

    def during():
        log.error("Exception in callback %r", functools.partial(cancel), exc_info=exc_info)
        log.error("Exception in callback %r", functools.partial(print), exc_info=exc_info)

    seen = _records_of_a_command(monkeypatch, "tornado.application", during)
    assert [r.getMessage().count("print") for r in seen] == [1], [r.getMessage() for r in seen]


_ORPHAN_AT_EXIT = """
import asyncio
import sys

from distributed.client import AllExit

from stokesflow.orchestrator import cli

KEEP = []


def command(argv=None):
    # what a closing Dask client leaves: a failed waiting task nobody retrieves, destroyed only
    # when the interpreter exits (after main has returned)
    async def wait():
        raise AllExit()

    loop = asyncio.new_event_loop()
    KEEP.append(loop.create_task(wait()))
    loop.run_until_complete(asyncio.sleep(0))
    KEEP.append(loop)
    return 0


cli.main = command
"""


@pytest.mark.parametrize("call, printed", [("cli.run()", False), ("sys.exit(cli.main())", True)])
def test_orphaned_gather_task_destroyed_at_exit_is_not_printed_by_the_command(call, printed):
    """The ``stokesflow`` command (:func:`cli.run`) keeps the filter of Dask's closing races until the
    process exits: an orphaned ``AllExit`` task collected at exit prints nothing. Calling ``main`` alone
    (the control) leaves asyncio's traceback on stderr, so the test can fail."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _ORPHAN_AT_EXIT + call], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert ("Task exception was never retrieved" in out.stderr) == printed, out.stderr[-3000:]
    assert ("AllExit" in out.stderr) == printed, out.stderr[-3000:]


_SIGNAL_AT_EXIT = """
import atexit, os, signal, sys, time
from stokesflow.orchestrator import cli

def ctrl_c_while_shutting_down():  # what a Ctrl-C during the interpreter's shutdown does
    os.kill(os.getpid(), signal.SIG{name})
    time.sleep(2)

sys.argv = ["stokesflow", "backends"]
atexit.register(ctrl_c_while_shutting_down)
"""


@pytest.mark.parametrize("name", ["INT", "TERM"])
@pytest.mark.parametrize("call, clean", [("cli.run()", True), ("sys.exit(cli.main())", False)])
def test_a_signal_after_the_command_has_finished_ends_it_with_its_exit_code(name, call, clean):
    """Once ``main`` has returned (files closed, last line printed), a Ctrl-C or SIGTERM during the
    shutdown ends the process with ``main``'s code and prints nothing more; ``main`` alone (the
    control) leaves Python's default: a KeyboardInterrupt from the exit handler, or death by SIGTERM."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _SIGNAL_AT_EXIT.format(name=name) + call], capture_output=True,
                         text=True, timeout=120)
    assert "me" in out.stdout  # the command's own output (the list of backends) is all there
    if clean:
        assert out.returncode == 0 and out.stderr == "", out.stderr[-3000:]
    else:
        assert out.returncode != 0 or "KeyboardInterrupt" in out.stderr, (out.returncode, out.stderr[-3000:])


def test_orphaned_gather_task_of_a_closing_client_is_not_printed(monkeypatch):
    """asyncio's "Task exception was never retrieved" for Dask's ``AllExit`` (the sentinel that ends a
    gather the client gives up, e.g. when every SLURM worker job is gone) is dropped while a command
    runs; the same message for another exception, and records after ``main`` returns, are kept."""
    import logging

    from distributed.client import AllExit

    log = logging.getLogger("asyncio")
    head = "Task exception was never retrieved\n"

    def during():
        log.error(head + "future: <Task finished coro=<wait()>>", exc_info=_exc_info(AllExit()))
        log.error(head + "future: <Task finished coro=<other()>>", exc_info=_exc_info(RuntimeError("a real error")))

    seen = _records_of_a_command(monkeypatch, "asyncio", during,
                                 after=lambda: log.error(head + "after the run", exc_info=_exc_info(AllExit())))
    assert [r.getMessage().split("\n")[-1] for r in seen] == ["future: <Task finished coro=<other()>>", "after the run"]


@pytest.mark.parametrize("verbose", [[], ["-v"]])
def test_a_file_system_error_during_the_run_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, verbose):
    """What the checks before the work cannot foresee (a folder made read-only meanwhile, a full disk)
    is said in one line with exit 2, not as an unexpected error; -v adds the traceback."""
    import stokesflow.orchestrator.run as run_module

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "r.h5"))

    monkeypatch.setattr(run_module, "run_inversion", denied)
    obs = write_hmi_observation(tmp_path / "obs.h5", 2, 2)
    code = main(["invert", "--input", str(obs), "--out", str(tmp_path / "r.h5"), "--cluster", "serial"] + verbose)
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert f"cannot read or write a file: [Errno 13] Permission denied: '{tmp_path / 'r.h5'}'" in err
    assert ("Traceback" in err) == bool(verbose) and "unexpected error" not in err


def test_a_damaged_hdf5_file_is_one_line_and_exit_2(tmp_path, capsys):
    """HDF5 metadata overwritten (a bad disk, a copy cut short): h5py raises KeyError or RuntimeError
    from its own code; the commands say so in one line with exit 2 instead of an unexpected error."""
    obs = write_hmi_observation(tmp_path / "obs.h5", 3, 4)
    assert main(["invert", "--input", str(obs), "--out", str(tmp_path / "r.h5"), "--cluster", "serial", "-q"]) == 0
    codes = {}
    for offset in (800, 1200, 1600, 2400):  # inside the object headers and heaps of a small result file
        bad = tmp_path / f"bad{offset}.h5"
        bad.write_bytes((tmp_path / "r.h5").read_bytes())
        with open(bad, "r+b") as f:
            f.seek(offset)
            f.write(bytes(range(256)))
        capsys.readouterr()
        codes[offset] = main(["report", str(bad), "--out", str(tmp_path / f"rep{offset}")])
        err = capsys.readouterr().err
        assert codes[offset] in (0, EXIT_BAD_INPUT) and "Traceback" not in err and "unexpected" not in err, err
        if codes[offset]:
            assert "an HDF5 file cannot be read or written (damaged, or not a file of this kind)" in err
    if EXIT_BAD_INPUT not in codes.values():
        pytest.skip(f"no offset damaged what report reads in this HDF5 version ({codes})")
