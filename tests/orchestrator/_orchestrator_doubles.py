"""Test doubles of backends (and of an observation handle) for fault injection in orchestrator tests.

Each double wraps the real ME backend and behaves exactly like it, except for
one injected fault. They are test doubles, not backends: never registered
outside a test (tests put them in the registry with ``monkeypatch``).
"""

from __future__ import annotations

import inspect
import os
import time
import types
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from stokesflow.backends.base import STATUS_OK, STATUS_POOR_FIT, Backend, ChunkResult
from stokesflow.backends.me.backend import MEBackend
from stokesflow.nn_init.providers import InitProvider
from stokesflow.orchestrator.io.observation import Observation

__all__ = [
    "ExitOnceObservation",
    "WrappingDouble",
    "NoiseDouble",
    "EchoInitDouble",
    "PoorFitDouble",
    "PositionInit",
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

    @property
    def setup_note(self) -> str:
        return self.inner.setup_note

    def for_observation(self, meta):
        return type(self)(dict(self.own), inner=self.inner.for_observation(meta))

    def setup(self, trial=None) -> None:
        if inspect.signature(self.inner.setup).parameters:
            self.inner.setup(trial)
        else:  # an ME backend from before setup(trial)
            self.inner.setup()

    def estimate_noise(self, stokes, wavelength):
        return self.inner.estimate_noise(stokes, wavelength)

    def synthesize(self, params, wavelength):
        return self.inner.synthesize(params, wavelength)

    def invert(self, stokes, wavelength, init=None):
        return self.inner.invert(stokes, wavelength, init)


class SmallChunkDouble(WrappingDouble):
    """Plans automatic chunks as a code taking seconds per pixel does (SIR): down to one pixel."""

    name = "small-chunk-double"
    chunk_plan = types.MappingProxyType({"minimum": 1, "maximum": 64, "tasks_per_worker": 4})


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
    """Records each ``setup(trial)`` call as a file ``<pid>-<n>`` in ``setup_dir`` and each chunk as ``chunk-<pid>-<n>``.

    A set-up file holds the shape of the trial pixels and of the trial
    wavelengths it was handed (``"1x4x6 6"``), or ``"none"``.
    """

    name = "setup-counting-double"
    own_keys = ("setup_dir",)

    def _mark(self, prefix: str, text: str = "") -> None:
        folder = Path(self.own["setup_dir"])
        n = len(list(folder.glob(f"{prefix}{os.getpid()}-*")))
        Path(folder, f"{prefix}{os.getpid()}-{n}").write_text(text)

    def setup(self, trial=None) -> None:
        what = "none" if trial is None else "x".join(map(str, trial[0].shape)) + f" {len(trial[1])}"
        self._mark("", what)
        super().setup(trial)

    def invert(self, stokes, wavelength, init=None):
        if stokes.shape[0] > 1:
            self._mark("chunk-")
        return super().invert(stokes, wavelength, init)


class NoiseDouble(WrappingDouble):
    """A fixed noise estimate (``sigma``, four floats); records what the driver hands it.

    ``SAMPLES`` (class attribute, this process) receives every sample passed
    to ``estimate_noise``; ``METAS`` every ``meta`` passed to ``for_observation``.
    """

    name = "noise-double"
    own_keys = ("sigma",)
    SAMPLES: list = []
    METAS: list = []

    def for_observation(self, meta):
        NoiseDouble.METAS.append(dict(meta))
        return super().for_observation(meta)

    def estimate_noise(self, stokes, wavelength):
        NoiseDouble.SAMPLES.append(np.array(stokes))
        return np.asarray(self.own.get("sigma", (1e-3, 2e-3, 3e-3, 4e-3)), dtype=np.float64)


class EchoInitDouble(WrappingDouble):
    """Returns, as each pixel's fit, the starting point it was given (status 0): the result maps show the init."""

    name = "echo-init-double"

    def invert(self, stokes, wavelength, init=None):
        n = stokes.shape[0]
        if init is None:
            raise AssertionError("EchoInitDouble needs starting points (use an init provider that gives them)")
        init = np.asarray(init, dtype=np.float64)
        assert init.shape == (n, len(self.parameter_names)), init.shape
        return ChunkResult(
            names=self.parameter_names, params=init.copy(), sigma=np.zeros_like(init),
            chi2=np.ones(n), n_iter=np.ones(n, dtype=np.int32), status=np.full(n, STATUS_OK, dtype=np.uint8),
        )


class PoorFitDouble(WrappingDouble):
    """Marks every pixel whose flat index within its chunk is even as status 4 (poor fit), keeping its parameters."""

    name = "poor-fit-double"

    def invert(self, stokes, wavelength, init=None):
        res = super().invert(stokes, wavelength, init)
        if stokes.shape[0] > 1:
            res.status[::2] = STATUS_POOR_FIT
        return res


class PositionInit(InitProvider):
    """Looks each pixel's starting point up by flat position in an (npix, npar) ``.npy`` table (option ``table``)."""

    name = "position-double"

    def initial_guess(self, stokes, wavelength, *, start, stop):
        table = np.load(self.options["table"])
        assert stokes.shape[0] == stop - start, "the provider must see every pixel of the range"
        return table[start:stop]


@dataclass(frozen=True, eq=False, repr=False)
class ExitOnceObservation(Observation):
    """An observation handle whose first read outside the driver ends its worker process.

    ``os._exit(1)`` in the first read by a process other than ``driver_pid``; the marker file
    ``marker`` (holding that process's pid) is written just before, so the retry (on a restarted
    worker) reads normally. Build it from an open observation with :meth:`of`.
    """

    marker: str = ""
    driver_pid: int = 0

    @classmethod
    def of(cls, obs: Observation, marker: str | os.PathLike[str]) -> "ExitOnceObservation":
        return cls(**{f.name: getattr(obs, f.name) for f in fields(obs)}, marker=str(marker),
                   driver_pid=os.getpid())

    def read_pixels(self, start: int, stop: int) -> np.ndarray:
        marker = Path(self.marker)
        if os.getpid() != self.driver_pid and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return super().read_pixels(start, stop)
