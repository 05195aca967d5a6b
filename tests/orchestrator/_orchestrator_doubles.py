"""Test doubles of backends for fault injection in orchestrator tests.

Each double wraps the real ME backend and behaves exactly like it, except for
one injected fault. They are test doubles, not backends: never registered
outside a test (tests put them in the registry with ``monkeypatch``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from stokesflow.backends.base import Backend
from stokesflow.backends.me.backend import MEBackend

__all__ = [
    "WrappingDouble",
    "PoisonDouble",
    "SlowPidDouble",
    "ExitOnceDouble",
    "HugeSigmaDouble",
    "SetupCountingDouble",
    "POISON_VALUE",
]

#: Stokes I at the first wavelength that makes :class:`PoisonDouble` raise.
POISON_VALUE = 7.0


class WrappingDouble(Backend):
    """Delegates everything to a real :class:`MEBackend`.

    Parameters
    ----------
    options : mapping, optional
        ME options, plus the double's own keys listed in ``own_keys``.
    """

    name = "wrapping-double"
    options_class = None
    own_keys: tuple[str, ...] = ()

    def __init__(self, options: Mapping[str, Any] | None = None, *, inner: MEBackend | None = None) -> None:
        opts = dict(options or {})
        self.own = {k: opts.pop(k) for k in self.own_keys if k in opts}
        self.inner = inner if inner is not None else MEBackend(opts)
        self.options = {**self.own, "inner": self.inner.options}

    @property
    def parameters(self):
        return self.inner.parameters

    def for_observation(self, meta):
        return type(self)(dict(self.own), inner=self.inner.for_observation(meta))

    def setup(self) -> None:
        self.inner.setup()

    def synthesize(self, params, wavelength):
        return self.inner.synthesize(params, wavelength)

    def invert(self, stokes, wavelength, init=None):
        return self.inner.invert(stokes, wavelength, init)


class PoisonDouble(WrappingDouble):
    """Raises for every chunk holding a pixel whose I at the first wavelength is POISON_VALUE.

    A deterministic failure: the same chunk fails on every retry and worker.
    """

    name = "poison-double"

    def invert(self, stokes, wavelength, init=None):
        if np.any(stokes[:, 0, 0] == POISON_VALUE):
            raise RuntimeError("poisoned pixel in this chunk (test double)")
        return super().invert(stokes, wavelength, init)


class SlowPidDouble(WrappingDouble):
    """Sleeps ``sleep_s`` per chunk and leaves a file named after its process id in ``pid_dir``.

    Calls with a single pixel (the warm-up inversions of the driver and of
    each worker's set-up) pass straight through, so the sleep marks chunks only.
    """

    name = "slow-pid-double"
    own_keys = ("sleep_s", "pid_dir")

    def invert(self, stokes, wavelength, init=None):
        if stokes.shape[0] > 1:
            Path(self.own["pid_dir"], str(os.getpid())).touch()
            time.sleep(float(self.own.get("sleep_s", 0.2)))
        return super().invert(stokes, wavelength, init)


class ExitOnceDouble(WrappingDouble):
    """Ends its worker process with ``os._exit(1)`` the first time it inverts outside the driver.

    ``driver_pid`` is the process that must never exit (the test itself, which
    runs the driver's trial inversion). With ``in_setup`` false (default) only
    calls of more than one pixel count, i.e. chunks, not the one-pixel warm-up
    of the worker set-up. The marker file ``marker`` is created just before the
    exit, so the retry (on a restarted worker) goes through.
    """

    name = "exit-once-double"
    own_keys = ("marker", "driver_pid", "in_setup")

    def invert(self, stokes, wavelength, init=None):
        marker = Path(self.own["marker"])
        counts = stokes.shape[0] > 1 or self.own.get("in_setup", False)
        if counts and os.getpid() != int(self.own["driver_pid"]) and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return super().invert(stokes, wavelength, init)


class HugeSigmaDouble(WrappingDouble):
    """Reports a sigma of 1e39 (beyond float32) and a chi2 of 1e40 for the first pixel of each chunk."""

    name = "huge-sigma-double"

    def invert(self, stokes, wavelength, init=None):
        res = super().invert(stokes, wavelength, init)
        res.sigma[0, :] = 1e39
        res.chi2[0] = 1e40
        return res


class SetupCountingDouble(WrappingDouble):
    """Records each ``setup()`` call as a file ``<pid>-<n>`` in ``setup_dir`` and each chunk as ``chunk-<pid>-<n>``."""

    name = "setup-counting-double"
    own_keys = ("setup_dir",)

    def _mark(self, prefix: str) -> None:
        folder = Path(self.own["setup_dir"])
        n = len(list(folder.glob(f"{prefix}{os.getpid()}-*")))
        Path(folder, f"{prefix}{os.getpid()}-{n}").touch()

    def setup(self) -> None:
        self._mark("")
        super().setup()

    def invert(self, stokes, wavelength, init=None):
        if stokes.shape[0] > 1:
            self._mark("chunk-")
        return super().invert(stokes, wavelength, init)
