"""Run configuration: frozen dataclasses loaded from TOML in layers.

The layers, later ones winning key by key:

1. the packaged defaults, ``orchestrator/defaults.toml``;
2. a user TOML file (``stokesflow invert run.toml ...``);
3. command-line flags (or a mapping passed by Python code).

Three sections are owned here and checked key by key (``[input]``,
``[output]``, ``[run]``); an unknown key is rejected with the list of valid
ones. Three tables belong to other parts and are passed through as mappings:

- ``[cluster]`` goes to :meth:`stokesflow.clusters.ClusterSpec.from_mapping`, which checks it;
- ``[backend.<name>]`` goes to :func:`stokesflow.backends.get_backend` as that backend's
  options, so the orchestrator never spells out a backend's fields;
- ``[init.<provider>]`` goes to :func:`stokesflow.nn_init.providers.get_provider`.

A :class:`Config` turns back into TOML text with :meth:`Config.to_toml` (a
small writer is included, since :mod:`tomllib` only reads); the result file
keeps that text as its ``config`` attribute.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from stokesflow.orchestrator.errors import OrchestratorError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "ConfigurationError",
    "InputConfig",
    "OutputConfig",
    "RunConfig",
    "Config",
    "DEFAULTS_PATH",
    "load_config",
    "config_from_mapping",
    "merge_layers",
    "dumps_toml",
    "parse_value",
]

#: The packaged defaults (first configuration layer).
DEFAULTS_PATH = Path(__file__).with_name("defaults.toml")

_PROGRESS_MODES = ("auto", "bar", "log", "none")
#: Named continuum normalisations of the instrument layouts (or a number: the continuum itself).
_CONTINUUM_NAMES = ("local", "disc_centre")


def _input_formats() -> tuple[str, ...]:
    """``""`` (detect from the file) and the formats of :data:`stokesflow.orchestrator.io.FORMATS`."""
    from stokesflow.orchestrator.io import FORMATS

    return ("",) + tuple(FORMATS)


class ConfigurationError(OrchestratorError, ValueError):
    """A configuration file, table, key or value is wrong."""


@dataclass(frozen=True)
class InputConfig:
    """The ``[input]`` table: which observation to invert and how to read it.

    Attributes
    ----------
    path : str
        Observation file (HDF5 contract, FITS or ``.npy``).
    format : str
        ``"hdf5"``, ``"fits"``, ``"npy"``, ``"hmi"`` (24 SDO/HMI segment
        files), ``"hinode_sp"`` (a folder of Hinode SP level-1 files), or
        ``""`` to detect it from the file.
    axes : str
        Axis order of a FITS or ``.npy`` cube, e.g. ``"y,x,stokes,wave"`` or
        ``"stokes,wave,y,x"``; ``""`` for the HDF5 contract.
    wavelength : str
        Wavelength source for FITS or ``.npy`` input: a ``.npy`` or text file
        with one value per point, or ``"start:step"``, in A; ``""`` when the
        file has it (HDF5, FITS WCS, ``<name>.wavelength.npy`` beside a ``.npy``).
    lines : tuple of str
        Spectral line names (e.g. ``("FeI_6173",)``); empty to use the file's
        ``lines`` attribute.
    instrument : str
        Instrument name; ``""`` to use the file's ``instrument`` attribute.
    noise : float or tuple of 4 float
        One-sigma noise in units of the continuum intensity, one value or
        four (I, Q, U, V); 0 to use the file's ``noise`` attribute, and when
        the file states none, the backend's estimate from a sample of pixels.
    continuum : float or str
        Instrument layouts (``hmi``, ``hinode_sp``) only: the quiet-Sun
        continuum in the file's units (DN/s, DN), ``"local"`` or
        ``"disc_centre"``; ``""`` for the reader's default. Command line:
        ``-R continuum=local``.
    reader_options : dict
        Format-specific reader options (``hdu`` for FITS; ``order``,
        ``center``, ``mask_offdisc``, ``disc_fraction`` for ``hmi``;
        ``allow_partial``, ``continuum_window`` for ``hinode_sp``). Command
        line: ``-R key=value``.
    """

    path: str = ""
    format: str = ""
    axes: str = ""
    wavelength: str = ""
    lines: tuple[str, ...] = ()
    instrument: str = ""
    noise: float | tuple[float, ...] = 0.0
    continuum: float | str = ""
    reader_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputConfig:
    """The ``[output]`` table: the result file.

    Attributes
    ----------
    path : str
        Result file (HDF5) written by the driver alone.
    resume : bool
        Finish an interrupted run in ``path`` instead of starting afresh.
    overwrite : bool
        Replace an existing ``path`` (without it, an existing file is an error
        unless ``resume`` is set).
    synthetic : bool
        Also store the best-fit profiles as ``/synthetic`` (ny, nx, 4, nw).
    """

    path: str = "result.h5"
    resume: bool = False
    overwrite: bool = False
    synthetic: bool = False


@dataclass(frozen=True)
class RunConfig:
    """The ``[run]`` table: backend, initial guesses, chunking, progress.

    Attributes
    ----------
    backend : str
        Registered backend name (``stokesflow backends`` lists them).
    init : str
        Initial-guess provider (``"default"``: the backend's own classical
        estimates; ``"constant"``: one vector for every pixel).
    chunk_pixels : int
        Pixels per task; 0 chooses automatically (see
        :func:`stokesflow.orchestrator.plan.auto_chunk_pixels`).
    max_in_flight : int
        Tasks submitted but not yet collected; 0 means 3 per worker.
    progress : str
        ``"auto"`` (bar on a terminal, log lines otherwise), ``"bar"``,
        ``"log"`` or ``"none"``.
    log_interval_s : float
        Seconds between progress log lines, in s.
    """

    backend: str = "me"
    init: str = "default"
    chunk_pixels: int = 0
    max_in_flight: int = 0
    progress: str = "auto"
    log_interval_s: float = 10.0


_SECTIONS: dict[str, type] = {"input": InputConfig, "output": OutputConfig, "run": RunConfig}
_PASSTHROUGH = ("cluster", "backend", "init")


@dataclass(frozen=True)
class Config:
    """The full configuration of one inversion run.

    Attributes
    ----------
    input, output, run : InputConfig, OutputConfig, RunConfig
        The checked sections.
    cluster : dict
        The ``[cluster]`` table (keys of :class:`stokesflow.clusters.ClusterSpec`).
    backend : dict of str to dict
        ``[backend.<name>]`` tables: options per backend name.
    init : dict of str to dict
        ``[init.<provider>]`` tables: options per init provider.
    sources : tuple of str
        Where the layers came from (not part of the TOML text).
    """

    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    run: RunConfig = field(default_factory=RunConfig)
    cluster: dict[str, Any] = field(default_factory=dict)
    backend: dict[str, dict[str, Any]] = field(default_factory=dict)
    init: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: tuple[str, ...] = field(default=(), compare=False)

    # -- views used by the run ------------------------------------------------
    def backend_options(self, name: str | None = None) -> dict[str, Any]:
        """Options of backend ``name`` (default: the selected one) as a new dict."""
        return dict(self.backend.get(name or self.run.backend, {}))

    def init_options(self, name: str | None = None) -> dict[str, Any]:
        """Options of init provider ``name`` (default: the selected one)."""
        return dict(self.init.get(name or self.run.init, {}))

    def cluster_spec(self) -> Any:
        """The ``[cluster]`` table as a :class:`stokesflow.clusters.ClusterSpec`."""
        from stokesflow.clusters import ClusterError, ClusterSpec

        where = " + ".join(self.sources) or "the configuration"
        try:
            return ClusterSpec.from_mapping(dict(self.cluster))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"[cluster] table in {where}: {exc}") from exc
        except ClusterError as exc:  # the same class, the file named: "[cluster] workers ... (in run.toml)"
            text = str(exc).replace("ClusterSpec.", "", 1)
            raise type(exc)(f"[cluster] {text} (in {where})") from None

    # -- serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested plain mapping (tables of scalars and lists), TOML-ready."""
        out: dict[str, Any] = {}
        for name in _SECTIONS:
            out[name] = {k: _plain(v) for k, v in dataclasses.asdict(getattr(self, name)).items()}
        out["cluster"] = {k: _plain(v) for k, v in self.cluster.items()}
        out["backend"] = {n: {k: _plain(v) for k, v in t.items()} for n, t in self.backend.items()}
        out["init"] = {n: {k: _plain(v) for k, v in t.items()} for n, t in self.init.items()}
        return out

    def to_toml(self) -> str:
        """The configuration as TOML text (``load_config`` reads it back)."""
        return dumps_toml(self.to_dict())

    def with_overrides(self, overrides: Mapping[str, Any], *, where: str = "overrides") -> "Config":
        """A new configuration with ``overrides`` (nested mapping) applied on top."""
        merged = merge_layers(self.to_dict(), _check_layer(overrides, where))
        return config_from_mapping(merged, where=where, sources=self.sources + (where,))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------
def _read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"configuration file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read configuration file {str(path)!r}: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"configuration file {str(path)!r} is not valid TOML: {exc}") from None


def _check_layer(layer: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Reject unknown tables and keys of one layer before merging it."""
    layer = dict(layer)
    valid_tables = sorted(list(_SECTIONS) + list(_PASSTHROUGH))
    for key, value in layer.items():
        if key not in valid_tables:
            raise ConfigurationError(
                f"unknown table [{key}] in {where}; valid tables are {valid_tables}"
            )
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                f"[{key}] in {where} must be a table, got {type(value).__name__} {value!r}"
            )
        if key in _SECTIONS:
            valid = sorted(f.name for f in dataclasses.fields(_SECTIONS[key]))
            unknown = sorted(set(value) - set(valid))
            if unknown:
                raise ConfigurationError(
                    f"unknown key(s) {unknown} in [{key}] of {where}; valid keys are {valid}"
                )
        elif key in ("backend", "init"):
            for sub, table in value.items():
                if not isinstance(table, Mapping):
                    raise ConfigurationError(
                        f"[{key}.{sub}] in {where} must be a table of options, got "
                        f"{type(table).__name__} {table!r}; write e.g. [{key}.{sub}] then key = value"
                    )
    return layer


def merge_layers(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge of two nested mappings; ``top`` wins key by key."""
    out = {k: (merge_layers(v, {}) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_layers(out[key], value)
        elif isinstance(value, Mapping):
            out[key] = merge_layers(value, {})
        else:
            out[key] = value
    return out


def _coerce(section: str, name: str, hint: Any, value: Any, where: str) -> Any:
    """Check ``value`` against a field's type hint; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    bad = ConfigurationError(
        f"[{section}] {name} in {where} must be {_hint_name(hint)}, got "
        f"{type(value).__name__} {value!r}"
    )
    if origin in (typing.Union, types.UnionType):  # the first arm that accepts the value
        for arm in typing.get_args(hint):
            try:
                return _coerce(section, name, arm, value, where)
            except ConfigurationError:
                continue
        raise bad
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise bad
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if item is float:
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
            ):
                raise bad
            return tuple(float(v) for v in value)
        if isinstance(value, str):  # "FeI_6301,FeI_6302" on the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad
        return tuple(value)
    raise TypeError(f"unsupported field type {hint!r}")  # pragma: no cover - programming error


def _hint_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_hint_name(arm) for arm in typing.get_args(hint))
    if origin is dict or hint is dict:
        return "a table of options"
    if origin is tuple:
        if typing.get_args(hint)[0] is float:
            return "a list of numbers"
        return "a list of strings (or one comma-separated string)"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]


def _build_section(name: str, table: Mapping[str, Any], where: str) -> Any:
    cls = _SECTIONS[name]
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(name, k, hints[k], v, where) for k, v in table.items()}
    return cls(**kwargs)


def _validate(cfg: Config, where: str) -> None:
    r, o, i = cfg.run, cfg.output, cfg.input
    if r.chunk_pixels < 0:
        raise ConfigurationError(f"[run] chunk_pixels in {where} must be >= 0 (0 = automatic), got {r.chunk_pixels}")
    if r.max_in_flight < 0:
        raise ConfigurationError(f"[run] max_in_flight in {where} must be >= 0 (0 = automatic), got {r.max_in_flight}")
    if r.progress not in _PROGRESS_MODES:
        raise ConfigurationError(f"[run] progress in {where} must be one of {list(_PROGRESS_MODES)}, got {r.progress!r}")
    if not (r.log_interval_s > 0 and math.isfinite(r.log_interval_s)):
        raise ConfigurationError(f"[run] log_interval_s in {where} must be a positive number of seconds, got {r.log_interval_s}")
    if not r.backend:
        raise ConfigurationError(f"[run] backend in {where} is empty; `stokesflow backends` lists the names")
    if not r.init:
        raise ConfigurationError(f"[run] init in {where} is empty; use 'default' or 'constant'")
    formats = _input_formats()
    if i.format not in formats:
        raise ConfigurationError(f"[input] format in {where} must be one of {list(formats)}, got {i.format!r}")
    if isinstance(i.noise, tuple):
        if len(i.noise) != 4 or not all(v > 0 and math.isfinite(v) for v in i.noise):
            raise ConfigurationError(
                f"[input] noise in {where} must be one sigma or four positive sigmas (I, Q, U, V) in "
                f"continuum units, got {list(i.noise)}"
            )
    elif i.noise < 0 or not math.isfinite(i.noise):
        raise ConfigurationError(
            f"[input] noise in {where} must be >= 0 (0 = from the file, else estimated), got {i.noise}"
        )
    c = i.continuum
    if isinstance(c, str) and c not in ("",) + _CONTINUUM_NAMES:
        raise ConfigurationError(
            f"[input] continuum in {where} must be a positive number (the quiet-Sun continuum in the "
            f"file's units) or one of {list(_CONTINUUM_NAMES)}, got {c!r}"
        )
    if not isinstance(c, str) and not (c > 0 and math.isfinite(c)):
        raise ConfigurationError(
            f"[input] continuum in {where} must be a positive number or one of {list(_CONTINUUM_NAMES)}, got {c}"
        )
    if not o.path:
        raise ConfigurationError(f"[output] path in {where} is empty; give --out result.h5")
    if o.resume and o.overwrite:
        raise ConfigurationError(f"[output] in {where}: resume and overwrite exclude each other; pick one")


def config_from_mapping(
    data: Mapping[str, Any], *, where: str = "configuration", sources: tuple[str, ...] = ()
) -> Config:
    """Build a :class:`Config` from one nested mapping (all layers merged).

    Raises
    ------
    ConfigurationError
        Unknown table or key (the message lists the valid ones), wrong type or
        out-of-range value.
    """
    data = _check_layer(data, where)
    sections = {name: _build_section(name, data.get(name, {}), where) for name in _SECTIONS}
    cluster = {k: v for k, v in dict(data.get("cluster", {})).items()}
    backend = {n: dict(t) for n, t in dict(data.get("backend", {})).items()}
    init = {n: dict(t) for n, t in dict(data.get("init", {})).items()}
    cfg = Config(cluster=cluster, backend=backend, init=init, sources=sources, **sections)
    _validate(cfg, where)
    return cfg


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    check_cluster: bool = True,
) -> Config:
    """Load the layered configuration.

    Parameters
    ----------
    path : str or Path, optional
        User TOML file (second layer).
    overrides : mapping, optional
        Nested mapping (third layer), e.g. ``{"run": {"chunk_pixels": 4096}}``;
        the command line builds one from its flags.
    check_cluster : bool
        Also check the ``[cluster]`` table with :class:`stokesflow.clusters.ClusterSpec`.

    Returns
    -------
    Config

    Raises
    ------
    ConfigurationError
        A file is missing or not TOML, or a table, key or value is wrong; the
        message names the layer.
    """
    layers = [(str(DEFAULTS_PATH), _read_toml(DEFAULTS_PATH))]
    if path is not None:
        layers.append((str(path), _read_toml(path)))
    if overrides:
        layers.append(("command-line flags", dict(overrides)))
    merged: dict[str, Any] = {}
    for where, layer in layers:
        merged = merge_layers(merged, _check_layer(layer, where))
    sources = tuple(w for w, _ in layers)
    cfg = config_from_mapping(merged, where=" + ".join(sources), sources=sources)
    if check_cluster:
        cfg.cluster_spec()
    return cfg


# ---------------------------------------------------------------------------
# TOML writing (tomllib only reads)
# ---------------------------------------------------------------------------
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    if not isinstance(k, str):
        raise ConfigurationError(f"TOML keys must be strings, got {type(k).__name__} {k!r}")
    return k if _BARE_KEY.match(k) else json.dumps(k)


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v, where) for v in value) + "]"
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return _scalar(value.item(), where)
    raise ConfigurationError(
        f"cannot write {where} = {value!r} ({type(value).__name__}) as TOML; "
        "use str, int, float, bool or a list of them"
    )


def dumps_toml(data: Mapping[str, Any], *, none_as_comment: bool = False) -> str:
    """Write nested mappings of str/int/float/bool/list values as TOML text.

    ``None`` values are left out (TOML has no null; reading the text back gives
    the default), or written as a comment ``# key = (not set)`` with
    ``none_as_comment``. Nested mappings become ``[a.b]`` tables; an empty
    mapping is written as an empty table so it survives a round trip.
    """
    lines: list[str] = []

    def table(prefix: tuple[str, ...], mapping: Mapping[str, Any]) -> None:
        scalars = [(k, v) for k, v in mapping.items() if not isinstance(v, Mapping) and v is not None]
        unset = [k for k, v in mapping.items() if v is None] if none_as_comment else []
        subs = [(k, v) for k, v in mapping.items() if isinstance(v, Mapping)]
        if prefix and (scalars or unset or not subs):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_key(p) for p in prefix) + "]")
        for k, v in scalars:
            lines.append(f"{_key(k)} = {_scalar(v, '.'.join(prefix + (k,)))}")
        for k in unset:
            lines.append(f"# {_key(k)} = (not set)")
        for k, v in subs:
            table(prefix + (k,), v)

    table((), data)
    return "\n".join(lines) + "\n"


def parse_value(text: str) -> Any:
    """A command-line ``KEY=VALUE`` value: a TOML value if it parses, else the string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
