"""Configuration layers, unknown keys, types, and the TOML writer."""

from __future__ import annotations

import sys

import pytest

from stokesflow.orchestrator.config import (
    Config,
    ConfigurationError,
    config_from_mapping,
    dumps_toml,
    load_config,
    merge_layers,
    parse_value,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_packaged_defaults():
    cfg = load_config()
    assert cfg.run.backend == "me"
    assert cfg.run.init == "default"
    assert cfg.run.chunk_pixels == 0
    assert cfg.cluster == {"kind": "local"}
    assert cfg.output.resume is False
    assert cfg.cluster_spec().kind == "local"


def test_layers_file_then_flags(tmp_path):
    user = tmp_path / "run.toml"
    user.write_text(
        '[input]\npath = "a.h5"\nlines = ["FeI_6301", "FeI_6302"]\n'
        "[run]\nchunk_pixels = 4096\nlog_interval_s = 5\n"
        '[cluster]\nkind = "serial"\n'
        "[backend.me]\nmax_iter = 30\n"
    )
    cfg = load_config(user)
    assert cfg.input.path == "a.h5"
    assert cfg.input.lines == ("FeI_6301", "FeI_6302")
    assert cfg.run.chunk_pixels == 4096
    assert cfg.run.log_interval_s == 5.0 and isinstance(cfg.run.log_interval_s, float)
    assert cfg.backend_options() == {"max_iter": 30}
    assert cfg.run.progress == "auto"  # untouched default survives
    flags = {"run": {"chunk_pixels": 100}, "backend": {"me": {"n_starts": 3}}, "cluster": {"workers": 2}}
    cfg2 = load_config(user, flags)
    assert cfg2.run.chunk_pixels == 100
    assert cfg2.backend_options() == {"max_iter": 30, "n_starts": 3}  # merged key by key
    assert cfg2.cluster == {"kind": "serial", "workers": 2}
    assert cfg2.input.path == "a.h5"
    assert cfg2.sources[-1] == "command-line flags"


def test_unknown_table_lists_valid(tmp_path):
    user = tmp_path / "bad.toml"
    user.write_text("[runn]\nchunk_pixels = 3\n")
    with pytest.raises(ConfigurationError) as err:
        load_config(user)
    msg = str(err.value)
    assert "[runn]" in msg and str(user) in msg
    for valid in ("input", "output", "run", "cluster", "backend", "init"):
        assert valid in msg


def test_unknown_key_lists_valid(tmp_path):
    user = tmp_path / "bad.toml"
    user.write_text("[run]\nchunk_pixel = 3\n")
    with pytest.raises(ConfigurationError) as err:
        load_config(user)
    msg = str(err.value)
    assert "chunk_pixel" in msg and "chunk_pixels" in msg and "max_in_flight" in msg and str(user) in msg


def test_unknown_cluster_key_rejected():
    from stokesflow.clusters import ClusterError

    with pytest.raises(ClusterError, match="workerz"):
        load_config(None, {"cluster": {"workerz": 3}})


@pytest.mark.parametrize(
    "layer, fragment",
    [
        ({"run": {"chunk_pixels": "big"}}, "must be an integer"),
        ({"run": {"chunk_pixels": True}}, "must be an integer"),
        ({"run": {"chunk_pixels": -1}}, ">= 0"),
        ({"run": {"progress": "fancy"}}, "progress"),
        ({"output": {"resume": "yes"}}, "true or false"),
        ({"output": {"resume": True, "overwrite": True}}, "exclude each other"),
        ({"input": {"lines": [1, 2]}}, "list of strings"),
        ({"input": {"format": "tiff"}}, "format"),
        ({"backend": {"me": 3}}, "table of options"),
        ({"run": 5}, "must be a table"),
    ],
)
def test_bad_values(layer, fragment):
    with pytest.raises(ConfigurationError, match=fragment):
        load_config(None, layer)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[run\n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_config(broken)


def test_lines_from_comma_string():
    cfg = load_config(None, {"input": {"lines": "FeI_6301, FeI_6302"}})
    assert cfg.input.lines == ("FeI_6301", "FeI_6302")


def test_toml_writer_round_trip():
    data = {
        "top": 1,
        "a": {"s": 'quote " and \\ and \n newline', "i": -3, "f": 1e-5, "b": False, "l": [1, 2.5, "x"],
              "inf": float("inf"), "none": None},
        "b": {"inner": {"x": 1}, "empty": {}},
        "weird key": {"k": "v"},
    }
    text = dumps_toml(data)
    back = tomllib.loads(text)
    expected = {k: v for k, v in data.items()}
    expected["a"] = {k: v for k, v in data["a"].items() if k != "none"}  # None is left out
    assert back == expected


def test_config_round_trip_through_toml(tmp_path):
    cfg = load_config(None, {
        "input": {"path": "x.h5", "lines": ["FeI_6173"], "noise": 2e-3},
        "run": {"chunk_pixels": 512, "init": "constant"},
        "cluster": {"kind": "local", "workers": 3, "memory_limit": "1GiB"},
        "backend": {"me": {"max_iter": 20, "stokes_weights": [1.0, 4.0, 4.0, 2.0]}},
        "init": {"constant": {"B": 500.0}},
    })
    path = tmp_path / "again.toml"
    path.write_text(cfg.to_toml())
    again = load_config(path)
    assert again == cfg  # sources are not compared
    assert isinstance(again, Config)


def test_with_overrides_and_merge():
    cfg = config_from_mapping({"run": {"chunk_pixels": 7}})
    cfg2 = cfg.with_overrides({"run": {"max_in_flight": 4}})
    assert (cfg2.run.chunk_pixels, cfg2.run.max_in_flight) == (7, 4)
    assert merge_layers({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


@pytest.mark.parametrize("text, value", [("3", 3), ("2.5", 2.5), ("true", True), ("[1, 2]", [1, 2]),
                                         ("FeI_6173", "FeI_6173"), ('"quoted"', "quoted")])
def test_parse_value(text, value):
    assert parse_value(text) == value
