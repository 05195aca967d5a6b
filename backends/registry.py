"""Registry of backends: built-ins plus the ``stokesflow.backends`` entry points.

A built-in is listed by the module that holds it, so a backend whose module
(or optional dependency) fails to import is *hidden* with a reason instead of
breaking every other backend (the xarray-backends pattern).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from stokesflow.backends.base import Backend, BackendError, BackendUnavailable

__all__ = ["BUILTIN_BACKENDS", "list_backends", "get_backend_class", "get_backend"]

#: name -> "module:Class" of the backends shipped with stokesflow.
BUILTIN_BACKENDS: dict[str, str] = {
    "me": "stokesflow.backends.me.backend:MEBackend",
}

#: Backends named in the design but not built yet, with what they need.
PLANNED_BACKENDS: dict[str, str] = {
    "sir": "not implemented yet (wrapper for the SIR executable)",
    "desire": "not implemented yet (wrapper for the DeSIRe executable)",
    "stic": "not implemented yet (wrapper for the STiC executable)",
    "rh": "not implemented yet (wrapper for RH)",
}


def _targets() -> dict[str, str]:
    targets = dict(BUILTIN_BACKENDS)
    for ep in entry_points(group="stokesflow.backends"):
        targets.setdefault(ep.name, ep.value)
    return targets


def _load(target: str) -> type[Backend]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def list_backends() -> dict[str, tuple[bool, str]]:
    """Every known backend name with (available, reason-if-not)."""
    out: dict[str, tuple[bool, str]] = {}
    for name, target in _targets().items():
        try:
            cls = _load(target)
        except Exception as exc:  # a broken optional dependency hides the backend
            out[name] = (False, f"import of {target} failed: {exc}")
            continue
        out[name] = cls.is_available()
    for name, why in PLANNED_BACKENDS.items():
        out.setdefault(name, (False, why))
    return out


def get_backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``.

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
    ok, why = cls.is_available()
    if not ok:
        raise BackendUnavailable(f"backend {name!r} is not available: {why}")
    return cls


def get_backend(name: str, options: Any = None) -> Backend:
    """An instance of backend ``name`` built with ``options`` (mapping or options object)."""
    return get_backend_class(name)(options)
