"""The ``stokesflow`` command line: a thin layer over the library functions.

Subcommands: ``invert`` (:func:`stokesflow.orchestrator.run.run_inversion`), ``synth``
(:func:`stokesflow.orchestrator.synth.synthesize_observation`), ``backends``
(:func:`stokesflow.backends.list_backends`), ``report``
(:func:`stokesflow.orchestrator.report.write_report`) and ``export``
(:func:`stokesflow.orchestrator.export.export_fits`). Each one builds its arguments and calls the
library, so everything the command line does is callable from Python.

Exit codes: 0 complete (also ``--resume`` of a file that is already complete,
which is left untouched), 3 partial (some chunks failed after their retries;
the result file says which and why), 2 bad input or configuration (a one-line
message, nothing computed; also a file that cannot be read or written during
the run), 1 unexpected error (with a traceback to report),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import signal
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

__all__ = [
    "main", "run", "build_parser", "invert_overrides", "add_input_flags", "input_table", "effective_config_toml",
    "Terminated", "KeyValue", "checked_number", "seed_number",
    "EXIT_OK", "EXIT_UNEXPECTED", "EXIT_BAD_INPUT", "EXIT_PARTIAL", "EXIT_INTERRUPTED", "EXIT_TERMINATED",
]

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_BAD_INPUT = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130
#: Exit code after SIGTERM (128 + 15), as batch systems send it before the walltime kill.
EXIT_TERMINATED = 143

log = logging.getLogger("stokesflow.cli")


class KeyValue(NamedTuple):
    """One ``KEY=VALUE`` flag (``-B``, ``-I``, ``-C``, ``-R``): the key, the parsed value, the text."""

    key: str
    value: Any
    text: str


def _key_value(text: str) -> KeyValue:
    from stokesflow.orchestrator.config import parse_value

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return KeyValue(key.strip(), parse_value(value.strip()), text)


def _noise(text: str) -> float | list[float]:
    """``--noise``: one sigma or four comma-separated (I, Q, U, V)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected one sigma or four comma-separated sigmas (I,Q,U,V), got {text!r}") from None
    if len(values) not in (1, 4):
        raise argparse.ArgumentTypeError(
            f"expected one sigma or four comma-separated sigmas (I,Q,U,V), got {len(values)} values in {text!r}")
    return values[0] if len(values) == 1 else values


def checked_number(kind: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``kind(text)`` where ``ok`` accepts it, else an error saying what was expected.

    ``checked_number(int, lambda v: v > 0, "a positive integer")("0")`` raises
    ``ArgumentTypeError("expected a positive integer, got 0")``, which argparse prints after the flag.
    """

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
        return value

    return parse


_positive_int = checked_number(int, lambda v: v > 0, "a positive integer")
_nonneg_int = checked_number(int, lambda v: v >= 0, "an integer >= 0")
#: A random seed: numpy's generators take any integer >= 0, the files store it as a 64-bit integer.
seed_number = checked_number(int, lambda v: 0 <= v < 2**63, "an integer from 0 to 2^63 - 1")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (the flag, what is wrong, where the help is)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_INVERT_EPILOG = textwrap.dedent(
    """\
    Configuration layers (later wins): packaged defaults (orchestrator/defaults.toml),
    then CONFIG.toml, then these flags. Backend options go in a [backend.<name>]
    table (or --backend-option KEY=VALUE), cluster options in [cluster] (or the
    cluster flags / --cluster-option KEY=VALUE), init options in [init.<name>].

    Example TOML:
      [input]
      path = "obs.h5"
      [output]
      path = "result.h5"
      [run]
      backend = "me"
      chunk_pixels = 4096
      [cluster]
      kind = "local"
      workers = 8
      [backend.me]
      max_iter = 50

    Inputs: the HDF5 contract of DESIGN.md (/stokes, /wavelength, attrs
    instrument/lines/noise/spectral_instrument), FITS or .npy cubes with --axes
    (numpy order, e.g. y,x,stokes,wave or stokes,wave,y,x), --wavelength and
    --lines; instrument layouts take reader options with -R (-R continuum=local,
    -R order=blue_to_red). When neither --noise nor the file states the noise,
    the backend estimates it from up to 2000 valid pixels spread over the map
    (logged, and stored in the result file as attributes noise, noise_source).

    Exit codes:
      0    complete (also --resume of a complete file: nothing done, file unchanged)
      3    partial: some chunks failed after their retries (see /chunks/error);
           --resume computes them
      2    bad input or configuration: one line says what and where, nothing computed;
           also a file that cannot be read or written during the run (permissions,
           a full disk, a broken file): one line, -v adds where
      1    unexpected error (the traceback is printed: please report it)
      130  interrupted (Ctrl-C): finished chunks are on disk, --resume finishes the run
      143  terminated (SIGTERM, e.g. the batch walltime): likewise
    """
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``stokesflow`` (all subcommands)."""
    parser = _Parser(
        prog="stokesflow",
        description="Parallel inversions of solar Stokes profiles, from a laptop to HPC and cloud clusters.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"stokesflow {_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # -- invert ---------------------------------------------------------------
    p = sub.add_parser(
        "invert", help="invert an observation into a result file",
        description="Invert every pixel of an observation and write an HDF5 result file.",
        epilog=_INVERT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("config", nargs="?", default=None, metavar="CONFIG.toml",
                   help="TOML configuration file (tables [input], [output], [run], [cluster], "
                        "[backend.<name>], [init.<name>])")
    g = p.add_argument_group("input")
    g.add_argument("-i", "--input", dest="input.path", metavar="PATH",
                   help="observation: HDF5 (DESIGN.md contract), FITS or .npy")
    add_input_flags(g)
    g = p.add_argument_group("inversion")
    g.add_argument("--backend", dest="run.backend", metavar="NAME",
                   help="backend name; `stokesflow backends` lists them")
    g.add_argument("-B", "--backend-option", dest="backend_option", action="append", type=_key_value,
                   metavar="KEY=VALUE", help="backend option (repeatable), e.g. max_iter=50")
    g.add_argument("--init", dest="run.init", metavar="NAME",
                   help="initial-guess provider: default (backend's classical estimates), constant, previous (a "
                        "result or guess file), kmeans, cnn or unet (a trained model); options with -I")
    g.add_argument("-I", "--init-option", dest="init_option", action="append", type=_key_value,
                   metavar="KEY=VALUE", help="init provider option (repeatable), e.g. B=500 for 'constant'")
    g.add_argument("--chunk-pixels", dest="run.chunk_pixels", type=_nonneg_int, metavar="K",
                   help="pixels per task; 0 = automatic clamp(npix/(8*workers), 1024, 65536)")
    g.add_argument("--max-in-flight", dest="run.max_in_flight", type=_nonneg_int, metavar="N",
                   help="tasks in flight at once; 0 = 3 per worker")
    g = p.add_argument_group("cluster")
    g.add_argument("--cluster", dest="cluster.kind",
                   choices=["local", "serial", "mpi", "slurm", "pbs", "address"],
                   help="where tasks run: local Dask (default), serial (in-process), mpi (under "
                        "mpiexec), slurm/pbs (batch jobs), address (existing Dask scheduler)")
    g.add_argument("-w", "--workers", dest="cluster.workers", type=_positive_int, metavar="N",
                   help="worker processes (local: default the usable CPUs; slurm/pbs: total workers)")
    g.add_argument("--threads-per-worker", dest="cluster.threads_per_worker", type=_positive_int, metavar="N",
                   help="threads per worker process")
    g.add_argument("--memory-limit", dest="cluster.memory_limit", metavar="SIZE",
                   help="memory per worker, e.g. 2GiB (local, mpi)")
    g.add_argument("--address", dest="cluster.address", metavar="URL",
                   help="scheduler address for --cluster address, e.g. tcp://host:8786")
    g.add_argument("--queue", dest="cluster.queue", metavar="NAME", help="batch queue/partition (slurm, pbs)")
    g.add_argument("--account", dest="cluster.account", metavar="NAME", help="batch account (slurm, pbs)")
    g.add_argument("--walltime", dest="cluster.walltime", metavar="HH:MM:SS", help="batch walltime per worker job")
    g.add_argument("--retries", dest="cluster.retries", type=_nonneg_int, metavar="N",
                   help="re-runs of a chunk task that raised, before it is marked failed")
    g.add_argument("-C", "--cluster-option", dest="cluster_option", action="append", type=_key_value,
                   metavar="KEY=VALUE", help="any other [cluster] key (repeatable), e.g. cores_per_job=32")
    g = p.add_argument_group("output")
    g.add_argument("-o", "--out", dest="output.path", metavar="PATH", help="result file (HDF5)")
    g.add_argument("--resume", dest="output.resume", action="store_const", const=True,
                   help="finish an interrupted run in --out: done chunks are kept, the rest computed; "
                        "refused if the file was written with a different configuration")
    g.add_argument("--overwrite", dest="output.overwrite", action="store_const", const=True,
                   help="replace an existing --out file")
    g.add_argument("--synthetic", dest="output.synthetic", action="store_const", const=True,
                   help="also store the best-fit profiles as /synthetic")
    g = p.add_argument_group("reporting")
    g.add_argument("--progress", dest="run.progress", choices=["auto", "bar", "log", "none"],
                   help="progress bar on a terminal (auto), bar, log lines, or none")
    g.add_argument("--log-interval", dest="run.log_interval_s", type=float, metavar="S",
                   help="seconds between progress log lines")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: per chunk)")
    g.add_argument("-q", "--quiet", action="store_true", default=False, help="warnings and errors only")
    g.add_argument("--print-config", action="store_true", default=False,
                   help="print the merged configuration as TOML and exit without inverting")
    g.add_argument("--report", action="store_true", default=False,
                   help="at the end, write the report (stokesflow report) to <result>_report/ beside the result")
    _add_config_defaults(p)
    p.set_defaults(func=_cmd_invert, on_interrupt=_invert_interrupted,
                   flag_names={a.dest: max(a.option_strings, key=len) for a in p._actions if a.option_strings})

    # -- synth ----------------------------------------------------------------
    p = sub.add_parser(
        "synth", help="write a synthetic observation with /truth maps",
        description="Synthesise an observation (DESIGN.md contract) of a Milne-Eddington scene, "
                    "with the true parameter maps under /truth.",
        formatter_class=_Formatter,
    )
    p.add_argument("--instrument", choices=list(_synth_instruments()), default="hmi",
                   help="hmi: FeI 6173 at the six HMI tuning offsets; hinode: FeI 6301/6302 at "
                        "112 points of 21.549 mA")
    p.add_argument("--scene", choices=list(_scenes()), default="sunspot",
                   help="kind of solar scene")
    p.add_argument("--size", nargs=2, type=_positive_int, metavar=("NY", "NX"), default=[64, 64],
                   help="field of view in pixels")
    p.add_argument("--backend", choices=["me", "lightweaver", "sir", "rh"], default="me",
                   help="who synthesises: the ME model (default), Lightweaver (LTE, FAL-C; pip install "
                        "\"stokesflow[lightweaver]\"), SIR (HSRA; needs STOKESFLOW_SIR) or RH 1.5D (HSRA; "
                        "needs STOKESFLOW_RH and MPI): profiles no ME model produced")
    p.add_argument("--noise", type=float, default=1e-3, help="Gaussian noise sigma in continuum units")
    p.add_argument("--seed", type=seed_number, default=0, help="seed of the scene and the noise")
    p.add_argument("-o", "--out", required=True, metavar="PATH", help="observation file to write (HDF5)")
    p.add_argument("--rows-per-block", type=_nonneg_int, default=0, metavar="N",
                   help="rows synthesised and written at a time; 0 = about 65536 pixels per block")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("-B", "--backend-option", dest="backend_option", action="append", type=_key_value,
                   metavar="KEY=VALUE",
                   help="option of the ME backend used to synthesise (repeatable), e.g. instrument=hmi_filters; "
                        "the spectral instrument is written to the file, and invert uses it")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    p.set_defaults(func=_cmd_synth, verbose=0, on_interrupt=_synth_interrupted,
                   flag_names={"backend_option": "-B"})

    # -- backends -------------------------------------------------------------
    p = sub.add_parser("backends", help="list registered backends and whether they can run here",
                       description="List the registered backends and init providers, and why a "
                                   "known one cannot run here.")
    p.set_defaults(func=_cmd_backends, verbose=0, quiet=False)

    # -- report, export (local imports: they load the backends, ~0.5 s) -------
    from stokesflow.orchestrator.export import add_export_parser
    from stokesflow.orchestrator.report import add_report_parser

    add_report_parser(sub)
    add_export_parser(sub)

    # -- train, predict, assist (the assisted loop; torch is imported only when they run) --
    from stokesflow.orchestrator.nn_cli import add_nn_parsers

    add_nn_parsers(sub)
    return parser


def _version() -> str:
    from stokesflow import __version__

    return __version__


def add_input_flags(g: Any) -> None:
    """How to read the observation (``invert``, ``predict``, ``assist``): ``--format``, ``--axes``,
    ``--wavelength``, ``--lines``, ``--instrument``, ``--noise``, ``-R``; only given flags reach the
    namespace (``input.<key>``, ``reader_option``), collected by :func:`input_table`."""
    g.add_argument("--format", dest="input.format", choices=list(_formats()), default=argparse.SUPPRESS,
                   help="input format: hdf5 (DESIGN.md contract), fits, npy, hmi (24 SDO/HMI segment "
                        "files), hinode_sp (folder of Hinode SP level-1 files); default: detected")
    g.add_argument("--axes", dest="input.axes", metavar="AXES", default=argparse.SUPPRESS,
                   help="axis order of a FITS/.npy cube, e.g. 'y,x,stokes,wave' or 'stokes,wave,y,x'")
    g.add_argument("--wavelength", dest="input.wavelength", metavar="SOURCE", default=argparse.SUPPRESS,
                   help="wavelengths for FITS/.npy input: a .npy or text file with one value per point, "
                        "or 'start:step', in A (default: the file's own: FITS WCS or a WAVELENGTH HDU, "
                        "<name>.wavelength.npy beside a .npy)")
    g.add_argument("--lines", dest="input.lines", metavar="NAMES", default=argparse.SUPPRESS,
                   help="comma-separated line names, e.g. FeI_6301,FeI_6302 (default: the file's 'lines')")
    g.add_argument("--instrument", dest="input.instrument", metavar="NAME", default=argparse.SUPPRESS,
                   help="instrument name (default: the file's 'instrument')")
    g.add_argument("--noise", dest="input.noise", type=_noise, metavar="SIGMA", default=argparse.SUPPRESS,
                   help="noise sigma in continuum units, one value or four comma-separated (I,Q,U,V) "
                        "(default: the file's 'noise', else estimated from a sample of pixels)")
    g.add_argument("-R", "--reader-option", dest="reader_option", action="append", type=_key_value,
                   metavar="KEY=VALUE", default=argparse.SUPPRESS,
                   help="reader option (repeatable): continuum=local|disc_centre|NUMBER for the hmi and "
                        "hinode_sp layouts, order=blue_to_red (hmi), hdu=NAME (fits), ...")


def input_table(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[input]`` keys of the flags of :func:`add_input_flags` that were given (not the path)."""
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest.startswith("input.") and dest != "input.path" and value is not None:
            out[dest.split(".", 1)[1]] = value
    for key, value, _ in getattr(args, "reader_option", None) or []:
        if key == "continuum":  # a key of [input] itself
            out["continuum"] = value
        else:
            out.setdefault("reader_options", {})[key] = value
    return out


def _formats() -> tuple[str, ...]:
    from stokesflow.orchestrator.io import FORMATS

    return tuple(FORMATS)


def _synth_instruments() -> tuple[str, ...]:
    from stokesflow.orchestrator.synth import INSTRUMENTS

    return tuple(INSTRUMENTS)


def _scenes() -> tuple[str, ...]:
    from stokesflow.orchestrator.scenes import SCENES

    return tuple(SCENES)


def _add_config_defaults(parser: argparse.ArgumentParser) -> None:
    """Append each flag's packaged default (from defaults.toml) to its help text."""
    from stokesflow.orchestrator.config import DEFAULTS_PATH, tomllib

    try:
        defaults = tomllib.loads(DEFAULTS_PATH.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):  # the run itself reports this
        return
    for action in parser._actions:
        table, _, key = action.dest.partition(".")
        if key and key in defaults.get(table, {}) and action.help and "default" not in action.help:
            value = defaults[table][key]
            if value not in ("", []):  # empty means "from the file", which the help text says
                action.help += f" [default: {value!r}]"


# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------
def invert_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration layer of the ``invert`` flags (only those given)."""
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if value is None or "." not in dest:
            continue
        table, key = dest.split(".", 1)
        out.setdefault(table, {})[key] = value
    backend = out.get("run", {}).get("backend")
    for key, value, _ in getattr(args, "backend_option", None) or []:
        # the options belong to the backend chosen by the flags, or else by the files
        out.setdefault("backend", {}).setdefault(backend or "__selected__", {})[key] = value
    for key, value, _ in getattr(args, "init_option", None) or []:
        out.setdefault("init", {}).setdefault(out.get("run", {}).get("init") or "__selected__", {})[key] = value
    for key, value, _ in getattr(args, "cluster_option", None) or []:
        out.setdefault("cluster", {})[key] = value
    given = input_table(args)
    if given:
        out.setdefault("input", {}).update(given)
    return out


def _resolve_selected(overrides: dict[str, Any], cfg_backend: str, cfg_init: str) -> dict[str, Any]:
    for table, name in (("backend", cfg_backend), ("init", cfg_init)):
        t = overrides.get(table, {})
        if "__selected__" in t:
            t.setdefault(name, {}).update(t.pop("__selected__"))
    return overrides


def _cmd_invert(args: argparse.Namespace) -> int:
    from stokesflow.orchestrator.config import load_config
    from stokesflow.orchestrator.run import run_inversion

    overrides = invert_overrides(args)
    base = load_config(args.config, {k: v for k, v in overrides.items() if k not in ("backend", "init")},
                       check_cluster=False)
    overrides = _resolve_selected(overrides, base.run.backend, base.run.init)
    cfg = load_config(args.config, overrides)
    if args.print_config:
        sys.stdout.write(effective_config_toml(cfg))
        return EXIT_OK
    args.result_path = cfg.output.path  # for the message after an interruption
    args.started = time.time()
    summary = run_inversion(cfg)
    sys.stdout.write(summary.report() + "\n")
    if args.report:
        from stokesflow.orchestrator.report import write_report

        sys.stdout.write(f"report: {write_report(cfg.output.path)}\n")
    sys.stdout.flush()
    return EXIT_OK if summary.complete else EXIT_PARTIAL


def effective_config_toml(cfg: Any) -> str:
    """The merged configuration as TOML, with every option of the cluster, backend and init provider.

    ``[cluster]`` lists each field of :class:`stokesflow.clusters.ClusterSpec`,
    ``[backend.<selected>]`` each field of the backend's options class
    (what was set, and the default of the rest), ``[init.<selected>]`` each
    option of the provider bound to that backend (for ``constant``: every
    parameter's starting value). Options without a value (None) appear as
    comments. Building them checks the options, so a wrong ``-B`` or ``-I``
    value fails here as it would in a run.
    """
    from stokesflow.nn_init.providers import get_provider
    from stokesflow.orchestrator.config import dumps_toml
    from stokesflow.orchestrator.run import _build_backend

    data = cfg.to_dict()
    backend = _build_backend(cfg)
    opts = backend.options
    if dataclasses.is_dataclass(opts) and not isinstance(opts, type):
        full = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    elif isinstance(opts, Mapping):
        full = dict(opts)
    else:
        full = dict(cfg.backend_options())
    data["backend"] = {**data["backend"], cfg.run.backend: full}
    provider = get_provider(cfg.run.init, cfg.init_options()).bind(backend)
    data["init"] = {**data["init"], cfg.run.init: provider.effective_options()}
    spec = cfg.cluster_spec()
    data["cluster"] = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    head = (
        "# stokesflow invert: merged configuration (packaged defaults < CONFIG.toml < flags).\n"
        f"# [cluster], [backend.{cfg.run.backend}] and [init.{cfg.run.init}] list every option with its "
        "default filled in;\n# commented keys have no value (None).\n"
    )
    return head + dumps_toml(data, none_as_comment=True)


def _cmd_synth(args: argparse.Namespace) -> int:
    from stokesflow.orchestrator.synth import synthesize_observation

    args.out_existed = Path(args.out).exists()
    path = synthesize_observation(
        args.out, instrument=args.instrument, scene=args.scene, size=tuple(args.size),
        noise=args.noise, seed=args.seed, rows_per_block=args.rows_per_block or None,
        overwrite=args.overwrite, backend_options={kv.key: kv.value for kv in args.backend_option or []},
        backend=args.backend,
    )
    sys.stdout.write(f"wrote {path}\n")
    return EXIT_OK


# ---------------------------------------------------------------------------
# what an interruption left behind (one line each)
# ---------------------------------------------------------------------------
def _invert_interrupted(args: argparse.Namespace) -> str:
    from stokesflow.orchestrator.store import inspect_result

    path = getattr(args, "result_path", None)
    if path is None or not Path(path).exists():
        return "nothing written (the result file was not created yet)"
    if Path(path).stat().st_mtime < getattr(args, "started", 0.0):
        return f"nothing written; {path} was left as it was"
    try:
        info = inspect_result(path)
    except Exception:  # noqa: BLE001 - this message must not fail in turn
        return f"{path} may hold finished chunks; finish the run with --resume"
    return (f"{info['n_done']} of {info['n_chunks']} chunks are on disk in {path}; "
            "finish the run with --resume")


def _synth_interrupted(args: argparse.Namespace) -> str:
    out = getattr(args, "out", "?")
    if getattr(args, "out_existed", False):
        return f"nothing written: the existing {out} is unchanged (the partial file was removed)"
    return f"nothing written: {out} was not created (the partial file was removed)"


def _cmd_backends(args: argparse.Namespace) -> int:
    from stokesflow.backends import list_backends
    from stokesflow.nn_init.providers import list_providers

    lines = ["backends:"]
    for name, (ok, why) in sorted(list_backends().items()):
        lines.append(f"  {name:12s} {'available' if ok else 'unavailable'}" + ("" if ok else f": {why}"))
    lines.append("init providers:")
    for name, (ok, why) in sorted(list_providers().items()):
        lines.append(f"  {name:12s} {'available' if ok else 'unavailable'}" + ("" if ok else f": {why}"))
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------
def _bad_input_types() -> tuple[type[BaseException], ...]:
    from stokesflow.backends.base import BackendError
    from stokesflow.clusters import ClusterError
    from stokesflow.nn_init.providers import InitError
    from stokesflow.orchestrator.errors import OrchestratorError

    return (OrchestratorError, BackendError, ClusterError, InitError)


class Terminated(KeyboardInterrupt):
    """SIGTERM received (a batch system's walltime warning, ``scancel``, ``kill``)."""


#: What Python warns of a coroutine that an interrupted event loop (Dask's, tornado's) never ran:
#: ``RuntimeWarning: coroutine 'Future._exception' was never awaited``, printed with the line of
#: tornado it was found on. After a Ctrl-C or SIGTERM it is noise around the run's one line.
_UNAWAITED = r"coroutine '.*' was never awaited"


def _on_signal(signum: int, frame: object) -> None:
    """Ctrl-C (SIGINT) and SIGTERM: record the stop for the driver loop, then raise it here.

    From here on the warnings of coroutines that the torn-down event loop never ran are not shown.
    """
    from stokesflow.orchestrator.run import request_stop

    warnings.filterwarnings("ignore", message=_UNAWAITED, category=RuntimeWarning)
    exc: KeyboardInterrupt = Terminated(f"signal {signum}") if signum == signal.SIGTERM else KeyboardInterrupt()
    request_stop(exc)
    raise exc


def _quiet_unraisable(default: Callable[[Any], None]) -> Callable[[Any], None]:
    """A ``sys.unraisablehook`` that drops our own interruption raised inside a finalizer.

    Python prints such an exception with a traceback and goes on; the driver
    loop raises it again at the next chunk (:func:`stokesflow.orchestrator.run.request_stop`),
    so the traceback is noise.
    """

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            return
        default(unraisable)

    return hook


class _DaskCloseRaces(logging.Filter):
    """Drops two known upstream errors of Dask's client while a run stops; any other record passes.

    - On ``tornado.application``: ``distributed.utils.sync`` (checked in distributed 2026.8.0)
      declares its ``future`` without assigning it until the coroutine it runs has started; a
      Ctrl-C that arrives before then schedules ``cancel()``, which raises ``NameError: cannot
      access free variable 'future'`` on the event loop, and tornado logs it with a traceback
      ("Exception in callback ... sync.<locals>.cancel"). Nothing was started, so nothing is lost.
    - On ``asyncio``: "Task exception was never retrieved" for ``distributed.client.AllExit``, the
      sentinel with which the client ends the waiting task of a gather it gives up (its workers
      all lost, the client closing). The run's own error says what happened, in one line; the
      orphaned task's traceback only repeated it (a CI run printed it between the progress lines
      and the error line when every SLURM worker job had been cancelled).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, NameError) and "sync.<locals>.cancel" in record.getMessage():
            return False
        return not (type(exc).__name__ == "AllExit" and type(exc).__module__ == "distributed.client"
                    and "never retrieved" in record.getMessage())


#: The loggers :class:`_DaskCloseRaces` filters.
_RACE_LOGGERS = ("tornado.application", "asyncio")


#: Flags whose configuration key is a common word ("kind of data", "[cluster]" in a list of tables):
#: an error's words cannot tell that it is about them, so they are not appended (None).
_FLAG_KEYWORDS: dict[str, str | None] = {"cluster.kind": None}


def given_flags(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The command-line flags the user gave, as (keyword, flag text) pairs.

    ``--chunk-pixels 0`` gives ``("chunk_pixels", "--chunk-pixels 0")``,
    ``-B max_iter=abc`` gives ``("max_iter", "-B max_iter=abc")``: the keyword
    is what an error message names, the text what the user typed.
    """
    names: Mapping[str, str] = getattr(args, "flag_names", {}) or {}
    out: list[tuple[str, str]] = []
    for dest, value in vars(args).items():
        if "." in dest and value is not None and dest in names:
            key = _FLAG_KEYWORDS.get(dest, dest.split(".", 1)[1])
            if key is None:
                continue
            shown = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value
            out.append((key, f"{names[dest]} {shown}"))
    for dest, flag in (("backend_option", "-B"), ("init_option", "-I"), ("cluster_option", "-C"),
                       ("reader_option", "-R")):
        for key, _, text in getattr(args, dest, None) or []:
            out.append((key, f"{flag} {text}"))
    return out


def with_flags(message: str, flags: Sequence[tuple[str, str]]) -> str:
    """``message`` plus the command-line flags whose keyword it names (and does not already show)."""
    hits = []
    for key, text in flags:
        if key in ("path",) or text.split(" ", 1)[0] in message:
            continue
        if re.search(rf"(?<![A-Za-z0-9_]){re.escape(key)}(?![A-Za-z0-9_])", message):
            hits.append(text)
    return f"{message} (given on the command line as {', '.join(hits)})" if hits else message


def _one_line(exc: BaseException) -> str:
    """The exception's text on one line (an error of the command line is one line)."""
    return " ".join(str(exc).split("\n"))


def _raised_by_h5py(exc: BaseException) -> bool:
    """The exception came out of h5py itself (its innermost frame is h5py's): HDF5 could not read a file."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).startswith("h5py")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stokesflow`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Bad input or configuration ends with one line that names the file, flag
    or value, and exit code 2. SIGTERM is turned into an interruption like
    Ctrl-C: the driver stops submitting, the result file gets its closing
    attributes (``complete`` false) and the exit code is 143 (130 for
    Ctrl-C); the last line says what was left (``--resume`` finishes an
    inversion).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose >= 2 else logging.INFO)
    logger = logging.getLogger("stokesflow")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    func: Callable[[argparse.Namespace], int] = args.func
    from stokesflow.orchestrator.run import request_stop

    request_stop(None)
    old_handlers: dict[int, Any] = {}
    old_hook = sys.unraisablehook
    race = _DaskCloseRaces()
    race_logs = [logging.getLogger(name) for name in _RACE_LOGGERS]
    for race_log in race_logs:
        race_log.addFilter(race)
    try:  # the handlers are installed inside: a signal between two of them is reported as any other
        if threading.current_thread() is threading.main_thread():
            sys.unraisablehook = _quiet_unraisable(old_hook)
            for signum in (signal.SIGINT, signal.SIGTERM):
                old_handlers[signum] = signal.signal(signum, _on_signal)
        return func(args)
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        from stokesflow.clusters import is_service_rank

        if is_service_rank():  # a dask-mpi scheduler or worker rank: the client rank reports, once
            return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
        what = getattr(args, "on_interrupt", None)
        left = what(args) if what is not None else "stopped"
        log.error("%s: %s", "terminated (SIGTERM)" if terminated else "interrupted", left)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except _bad_input_types() as exc:
        log.error("%s", with_flags(_one_line(exc), given_flags(args)))
        return EXIT_BAD_INPUT
    except Exception as exc:
        # a file the checks before the work could not foresee: permissions, a full disk, a damaged
        # HDF5 file (h5py raises KeyError or RuntimeError from its own code); -v shows where
        if isinstance(exc, OSError):
            log.error("cannot read or write a file: %s", _one_line(exc), exc_info=bool(getattr(args, "verbose", 0)))
            return EXIT_BAD_INPUT
        if _raised_by_h5py(exc):
            log.error("an HDF5 file cannot be read or written (damaged, or not a file of this kind): %s: %s",
                      type(exc).__name__, _one_line(exc), exc_info=bool(getattr(args, "verbose", 0)))
            return EXIT_BAD_INPUT
        log.exception("unexpected error (please report it with the traceback above)")
        return EXIT_UNEXPECTED
    finally:
        for signum, old in old_handlers.items():
            signal.signal(signum, old)
        sys.unraisablehook = old_hook
        for race_log in race_logs:
            race_log.removeFilter(race)
        request_stop(None)
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def run() -> None:
    """The ``stokesflow`` command (and ``python -m stokesflow.orchestrator.cli``): :func:`main`, then
    exit with its code.

    The process ends here, so the filter of Dask's known closing races (:class:`_DaskCloseRaces`),
    which :func:`main` removes again for callers in Python, stays on until the interpreter exits:
    the orphaned waiting task of a gather a closing client gave up (every SLURM worker job gone)
    is garbage-collected after :func:`main` has returned, often only at exit, and asyncio's
    "Task exception was never retrieved" with its traceback then came after the run's own
    one-line error (seen on CI, in one run of the SLURM test that cancels every worker job).

    Once :func:`main` has returned, its files are closed and its last line is printed: a Ctrl-C or
    SIGTERM that comes while the interpreter shuts down (Dask's and torch's exit handlers, the
    joins of their threads) ends the process at once with :func:`main`'s exit code
    (:func:`_exit_with`), instead of a ``KeyboardInterrupt`` traceback from an exit handler and
    an exit code that says the finished command was interrupted.
    """
    race = _DaskCloseRaces()
    for name in _RACE_LOGGERS:
        logging.getLogger(name).addFilter(race)
    code = main()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _exit_with(code))
    sys.exit(code)


def _exit_with(code: int) -> Callable[[int, object], None]:
    """A signal handler that flushes the standard streams and ends the process with ``code``."""

    def handler(signum: int, frame: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):  # closed or replaced at shutdown
                pass
        os._exit(code)

    return handler


if __name__ == "__main__":  # python -m stokesflow.orchestrator.cli
    run()
