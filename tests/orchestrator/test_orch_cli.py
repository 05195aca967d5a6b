"""The stokesflow command line: help, layering of flags, exit codes, backends listing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _orchestrator_helpers import write_hmi_observation  # noqa: E402

from stokesflow.backends import registry  # noqa: E402
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
    for fragment in ("Exit codes", "3 partial", "[backend.<name>]", "--resume", "y,x,stokes,wave",
                     "[default: 'me']", "local Dask (default)"):
        assert fragment in text, fragment


def test_flags_override_the_toml_file(tmp_path, capsys):
    user = tmp_path / "run.toml"
    user.write_text('[run]\nchunk_pixels = 5\n[cluster]\nkind = "serial"\n[backend.me]\nmax_iter = 20\n')
    code = main(["invert", str(user), "--chunk-pixels", "9", "-B", "n_starts=3", "--workers", "2",
                 "-C", "memory_limit='1GiB'", "--lines", "FeI_6301,FeI_6302", "--print-config"])
    assert code == EXIT_OK
    cfg = tomllib.loads(capsys.readouterr().out)
    assert cfg["run"]["chunk_pixels"] == 9
    assert cfg["backend"]["me"] == {"max_iter": 20, "n_starts": 3}
    assert cfg["cluster"] == {"kind": "serial", "workers": 2, "memory_limit": "1GiB"}
    assert cfg["input"]["lines"] == ["FeI_6301", "FeI_6302"]


def test_backend_option_follows_the_selected_backend(tmp_path, capsys):
    user = tmp_path / "run.toml"
    user.write_text('[run]\nbackend = "other"\ninit = "constant"\n')
    assert main(["invert", str(user), "-B", "x=1", "-I", "B=500", "--print-config"]) == EXIT_OK
    cfg = tomllib.loads(capsys.readouterr().out)
    assert cfg["backend"] == {"other": {"x": 1}}
    assert cfg["init"] == {"constant": {"B": 500}}


def test_usage_and_config_errors_exit_2(tmp_path, capsys):
    assert main(["invert", "--chunk-pixels", "-3"]) == EXIT_BAD_INPUT
    assert main(["invert", "--cluster", "moon"]) == EXIT_BAD_INPUT
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
