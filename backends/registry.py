"""Registry of backends: built-ins plus the ``stokesflow.backends`` entry points.

A built-in is listed by the module that holds it, so a backend whose module
(or optional dependency) fails to import is *hidden* with a reason instead of
breaking every other backend (the xarray-backends pattern).
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points
from typing import Any

from stokesflow.backends.base import Backend, BackendError, BackendUnavailable

__all__ = ["BUILTIN_BACKENDS", "list_backends", "get_backend_class", "get_backend"]

#: name -> "module:Class" of the backends shipped with stokesflow.
BUILTIN_BACKENDS: dict[str, str] = {
    "me": "stokesflow.backends.me.backend:MEBackend",
    "sir": "stokesflow.backends.sir.backend:SIRBackend",
    "desire": "stokesflow.backends.desire.backend:DesireBackend",
    "lightweaver": "stokesflow.backends.lightweaver.backend:LightweaverBackend",
    "rh": "stokesflow.backends.rh.backend:RHBackend",
    "stic": "stokesflow.backends.stic.backend:STiCBackend",
}

#: Backends named in the design but not built yet, with what they need.
PLANNED_BACKENDS: dict[str, str] = {}


def _targets() -> dict[str, str]:
    targets = dict(BUILTIN_BACKENDS)
    for ep in entry_points(group="stokesflow.backends"):
        targets.setdefault(ep.name, ep.value)
    return targets


def _load(target: str) -> type[Backend]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _availability(cls: type[Backend], options: Any = None) -> tuple[bool, str]:
    """``cls.is_available``, handed ``options`` when it takes them.

    Backends wrapping an external code (SIR) accept the options so that an
    executable configured by option counts, not only one from the environment.
    """
    try:
        takes_options = len(inspect.signature(cls.is_available).parameters) >= 1
    except (TypeError, ValueError):  # pragma: no cover - a C-level callable
        takes_options = False
    return cls.is_available(options) if takes_options else cls.is_available()


def list_backends(options: dict[str, Any] | None = None) -> dict[str, tuple[bool, str]]:
    """Every known backend name with (available, reason-if-not).

    Parameters
    ----------
    options : mapping of backend name to its options, optional
        Configured options (e.g. ``{"sir": {"executable": "/opt/sir.x"}}``),
        for backends whose availability depends on them.
    """
    out: dict[str, tuple[bool, str]] = {}
    for name, target in _targets().items():
        try:
            cls = _load(target)
        except Exception as exc:  # a broken optional dependency hides the backend
            out[name] = (False, f"import of {target} failed: {exc}")
            continue
        out[name] = _availability(cls, (options or {}).get(name))
    for name, why in PLANNED_BACKENDS.items():
        out.setdefault(name, (False, why))
    return out


def get_backend_class(name: str, options: Any = None) -> type[Backend]:
    """The backend class registered as ``name``.

    ``options`` (a mapping or the options object) are handed to the class's
    availability check when it takes them (an executable given by option).

    Raises
    ------
    BackendError
        Unknown name (the message lists the installed ones).
    BackendUnavailable
        Known, but cannot run here (the message says what is missing).
    """
    targets = _targets()
    if name not in targets:
        if name in PLANNED_BACKENDS:
            raise BackendUnavailable(f"backend {name!r} is {PLANNED_BACKENDS[name]}")
        raise BackendError(f"unknown backend {name!r}; installed backends: {sorted(targets)}")
    try:
        cls = _load(targets[name])
    except Exception as exc:
        raise BackendUnavailable(f"backend {name!r} could not be imported: {exc}") from exc
    ok, why = _availability(cls, options)
    if not ok:
        raise BackendUnavailable(f"backend {name!r} is not available: {why}")
    return cls


def get_backend(name: str, options: Any = None) -> Backend:
    """An instance of backend ``name`` built with ``options`` (mapping or options object)."""
    return get_backend_class(name, options)(options)
