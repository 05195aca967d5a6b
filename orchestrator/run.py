"""Run an inversion: validate, prepare the store, drive the executor, summarise.

:func:`run_inversion` is what ``stokesflow invert`` calls. It runs four steps,
each a function that can be called (and tested) on its own:

1. :func:`validate_run` - *everything that can be wrong is found before any
   work*: the cluster table and the programs its kind needs (``sbatch``,
   ``qsub``, ``mpiexec``), the result path (exists, resume, writable), the
   observation (opened, shape and wavelengths read, at least one valid
   pixel), the noise (stated by the configuration or the observation, else
   estimated by the backend from a deterministic sample of valid pixels), the
   backend (built for the observation's lines, instrument and noise, set up and
   tried on one pixel in the driver), the init provider, the chunking and, with
   ``resume``, that the result file was written with the same configuration.
   It returns a :class:`RunPlan` and writes nothing.
2. :func:`open_store` - create the result file (every dataset allocated) or
   reopen it to finish an interrupted run.
3. :func:`drive_chunks` - keep a bounded number of chunk tasks in flight on an
   executor, collect them with ``as_completed`` and write each finished chunk
   (the driver is the only writer of the result file). A chunk whose task still
   raises after the executor's retries is recorded with its error and the run
   goes on.
4. :func:`summarise` - a :class:`RunSummary` from what is on disk and what the
   run measured.

A task carries only the chunk's bounds and a small :class:`TaskContext`
(backend, observation handle, init provider); the worker reads its own slice
of the observation with ``Observation.read_pixels``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import pickle
import platform
import socket
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping, TextIO

import numpy as np

from stokesflow.backends import (
    INVALID_PIXEL,
    STATUS_BAD_INPUT,
    STATUS_FAILED,
    STATUS_NAMES,
    STATUS_NOT_RUN,
    STATUS_POOR_FIT,
    Backend,
    BackendError,
    ChunkResult,
    get_backend,
    valid_pixels,
)
from stokesflow.nn_init.providers import InitProvider, get_provider
from stokesflow.orchestrator.config import Config, ConfigurationError
from stokesflow.orchestrator.errors import ObservationError, OrchestratorError
from stokesflow.orchestrator.paths import check_new_output
from stokesflow.orchestrator.plan import Chunk, Plan, auto_chunk_pixels, default_in_flight, plan_chunks
from stokesflow.orchestrator.progress import Progress
from stokesflow.orchestrator.store import (
    ChunkOutput,
    ResultStore,
    ResumeError,
    StoreError,
    inspect_result,
    read_status_counts,
)

__all__ = [
    "NOISE_SAMPLE_PIXELS",
    "TRIAL_SAMPLE_PIXELS",
    "NoiseInfo",
    "RunPlan",
    "RunSummary",
    "TaskContext",
    "ChunkTaskError",
    "validate_run",
    "open_store",
    "raise_if_stop_requested",
    "request_stop",
    "drive_chunks",
    "summarise",
    "run_inversion",
    "sample_valid_pixels",
    "check_continuum_units",
    "resolve_noise",
    "stated_noise",
    "package_versions",
    "open_input",
    "invert_chunk",
]

log = logging.getLogger("stokesflow.run")

#: Longest error text kept per failed chunk, in characters.
_MAX_ERROR_CHARS = 4000

#: Valid pixels handed to ``Backend.estimate_noise`` when the noise is not stated:
#: 2000 pixels give each sigma to about 2 % (one over the square root of the
#: number of independent values), far below the spread of the noise over a map.
NOISE_SAMPLE_PIXELS = 2000
#: Pixels sampled (over about four rows spread over the map) when the noise is stated: only the
#: first valid one is used, for the trial inversion.
TRIAL_SAMPLE_PIXELS = 16
#: Largest median, over the sampled pixels, of each pixel's highest Stokes I that is taken for
#: continuum units: the quiet Sun is 1, plage and faculae a few per cent more, flare ribbons rarely
#: twice; DN, counts or erg are thousands. (Low values are not checked: an umbra, the limb or
#: off-limb structures are legitimately far below 1.)
CONTINUUM_UNITS_MAX = 3.0

#: Dask settings for the run's processes. The statistical profiler samples every
#: worker thread's Python stack each 10 ms; a chunk task spends its time in one
#: numba call, so the samples say nothing and cost 1-2 % of the throughput
#: (measured with benchmarks/orchestrator_scaling.py, 2 local workers). The
#: periodic callbacks (event-loop tick every 20 ms, memory monitor and system
#: monitor every 0.1-0.5 s, work stealing every 0.1 s) cost an idle 2-worker
#: LocalCluster 8 % of one core here, 1.2 % with the slower intervals below;
#: chunk tasks last seconds, so nothing needs faster bookkeeping.
_DASK_SETTINGS = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.scheduler.work-stealing-interval": "1s",
}

#: Loggers of the executor libraries, silenced while a cluster shuts down after
#: Ctrl-C or SIGTERM (their shutdown chatter would bury the one line that matters).
_EXECUTOR_LOGGERS = ("distributed", "dask", "tornado", "asyncio", "dask_jobqueue", "mpi4py")


#: The exception a signal handler asked to stop with (see :func:`request_stop`).
_STOP: list[BaseException] = []


def request_stop(exc: BaseException | None) -> None:
    """Ask :func:`drive_chunks` to raise ``exc`` at the next chunk boundary (None: forget the request).

    The command line's Ctrl-C and SIGTERM handlers call it before raising
    ``exc`` themselves: a ``KeyboardInterrupt`` raised while Python runs a
    finalizer (e.g. distributed's ``Future.__del__``) is printed and
    *ignored*, and the run would go on; with the request recorded, the driver
    loop raises it when the next chunk comes back.
    """
    _STOP[:] = [] if exc is None else [exc]


def raise_if_stop_requested() -> None:
    """Raise the stop :func:`request_stop` recorded, if any (once): the check of every driver loop."""
    if _STOP:
        raise _STOP.pop()


class ChunkTaskError(OrchestratorError):
    """A backend or init provider broke the contract for one chunk (wrong shapes or names)."""


# ---------------------------------------------------------------------------
# what travels to the workers
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskContext:
    """Everything a chunk task needs besides the chunk bounds (small, picklable).

    Attributes
    ----------
    backend : Backend
        Built for the observation (``for_observation`` applied).
    backend_token : str
        Digest of the pickled backend: the key of the per-worker set-up cache.
    observation : object
        The observation handle (``read_pixels(start, stop)``).
    init : InitProvider
        Bound to ``backend``.
    synthetic : bool
        Also return best-fit profiles.
    trial : (stokes, wavelength), optional
        One valid observed pixel (1, 4, nw) and the wavelengths [A], for the
        worker's warm-up (see :func:`_setup_worker`).
    """

    backend: Backend
    backend_token: str
    observation: Any
    init: InitProvider
    synthetic: bool = False
    trial: tuple[np.ndarray, np.ndarray] | None = None


#: Per worker process: backend token -> the backend instance that was set up.
_WORKER_BACKENDS: dict[str, Backend] = {}


def _setup_takes_trial(backend: Backend) -> bool:
    """Whether ``backend.setup`` accepts the trial pixel (``setup(self, trial=None)``)."""
    try:
        params = inspect.signature(backend.setup).parameters
    except (TypeError, ValueError):  # a builtin or C callable: assume the old form
        return False
    return "trial" in params or any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params.values()
    )


def _call_setup(backend: Backend, trial: tuple[np.ndarray, np.ndarray] | None) -> None:
    """``backend.setup(trial)``; a backend with the older ``setup()`` inverts the trial itself after it.

    Either way the kernels for the observation's own grid and dtypes are compiled
    (or loaded from numba's cache) here, not in the first chunk.
    """
    if _setup_takes_trial(backend):
        backend.setup(trial)
    else:
        backend.setup()
        if trial is not None:
            backend.invert(trial[0], trial[1])


def _setup_worker(backend: Backend, token: str, trial: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """Set ``backend`` up in this process once (numba warm-up, scratch folder).

    Parameters
    ----------
    backend : Backend
        The backend of the run.
    token : str
        Its cache key (:attr:`TaskContext.backend_token`).
    trial : (stokes, wavelength), optional
        One observed pixel (1, 4, nw) and the wavelengths [A], handed to
        ``backend.setup(trial)`` so the warm-up runs on the observation's grid.

    Returns
    -------
    float
        Seconds spent, 0 when it was already done, in s.
    """
    if token in _WORKER_BACKENDS:
        return 0.0
    t0 = time.perf_counter()
    _call_setup(backend, trial)
    _WORKER_BACKENDS[token] = backend
    return time.perf_counter() - t0


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _initial_guess(ctx: TaskContext, index: int, stokes: np.ndarray, wavelength: np.ndarray,
                   start: int, stop: int, good: np.ndarray, npar: int, n_init: int) -> np.ndarray | None:
    """The provider's starting points for the chunk's valid pixels.

    The provider sees every pixel of ``start..stop`` (row ``i`` is flat pixel
    ``start + i``, NaN pixels included), so a provider that looks pixels up by
    position gives each pixel its own guess; the rows of the pixels that are
    inverted are picked afterwards. A provider may give the backend's
    ``n_init`` init columns or only its ``npar`` parameters (then the node
    columns of a depth-stratified backend are NaN, "not given").
    """
    guess = ctx.init.initial_guess(stokes, wavelength, start=start, stop=stop)
    if guess is None:
        return None
    guess = np.asarray(guess, dtype=np.float64)
    npix = stop - start
    if guess.shape == (npix, npar) and n_init > npar:
        guess = np.hstack([guess, np.full((npix, n_init - npar), np.nan)])
    if guess.shape != (npix, n_init):
        raise ChunkTaskError(
            f"chunk {index}: init provider {ctx.init.name!r} returned starting points of shape "
            f"{guess.shape} for pixels {start}..{stop}, expected {(npix, n_init)} (one row per pixel of the range)"
        )
    return guess if good.all() else np.ascontiguousarray(guess[good])


def invert_chunk(ctx: TaskContext, index: int, start: int, stop: int) -> ChunkOutput:
    """The task: invert flat pixels ``start..stop`` of the observation.

    Reads the slice itself, skips pixels with NaN or inf (status 3), asks the
    init provider for the starting points of the whole range and keeps those
    of the valid pixels, calls ``backend.invert`` on the valid pixels and
    returns a compact :class:`~stokesflow.backends.ChunkResult` (float32,
    int32, uint8) inside a :class:`ChunkOutput`.

    Raises
    ------
    Exception
        Whatever reading or the backend raised (infrastructure faults); the
        executor retries the task, then the driver records the error.
    """
    t0 = time.perf_counter()
    setup_s = _setup_worker(ctx.backend, ctx.backend_token, ctx.trial)
    backend = _WORKER_BACKENDS[ctx.backend_token]
    t1 = time.perf_counter()
    stokes = ctx.observation.read_pixels(start, stop)
    wavelength = np.asarray(ctx.observation.wavelength, dtype=np.float64)
    t2 = time.perf_counter()
    npix = stop - start
    names = tuple(backend.parameter_names)
    npar = len(names)
    n_init = len(getattr(backend, "init_columns", names))  # node columns of a depth-stratified backend come after its parameters
    if stokes.shape[0] != npix:
        raise ChunkTaskError(
            f"chunk {index}: read_pixels({start}, {stop}) of {getattr(ctx.observation, 'path', '?')} "
            f"returned {stokes.shape[0]} pixels, expected {npix}"
        )
    good = valid_pixels(stokes)
    out = ChunkResult(
        names=names,
        params=np.full((npix, npar), np.nan, dtype=np.float32),
        sigma=np.full((npix, npar), np.nan, dtype=np.float32),
        chi2=np.full(npix, np.nan, dtype=np.float32),
        n_iter=np.zeros(npix, dtype=np.int32),
        status=np.full(npix, STATUS_BAD_INPUT, dtype=np.uint8),
        synthetic=np.full((npix, 4, stokes.shape[2]), np.nan, dtype=np.float32) if ctx.synthetic else None,
    )
    init_s = 0.0
    if good.any():
        ti = time.perf_counter()
        init = _initial_guess(ctx, index, stokes, wavelength, start, stop, good, npar, n_init)
        init_s = time.perf_counter() - ti
        sub = stokes if good.all() else np.ascontiguousarray(stokes[good])
        res: ChunkResult = backend.invert(sub, wavelength, init)
        ngood = int(good.sum())
        if tuple(res.names) != names or res.npix != ngood:
            raise ChunkTaskError(
                f"chunk {index}: backend {backend.name!r} returned {res.npix} pixels with parameters "
                f"{list(res.names)}, expected {ngood} pixels with {list(names)}"
            )
        # float32 storage: an unconstrained parameter's sigma (or a huge chi2)
        # beyond 3.4e38 is stored as inf, on purpose and without a warning
        with np.errstate(over="ignore"):
            out.params[good] = res.params
            out.sigma[good] = res.sigma
            out.chi2[good] = res.chi2
            out.n_iter[good] = res.n_iter
            out.status[good] = res.status
            if res.errors:  # per-pixel reasons (an external code's failure), indexed within the chunk
                rows = np.flatnonzero(good)
                out.errors = {int(rows[k]): str(v) for k, v in res.errors.items() if 0 <= k < rows.size}
            if res.stratified or res.stratified_sigma:  # depth-stratified backends (SIR)
                out.log_tau = np.asarray(res.log_tau, dtype=np.float64)
                for src, dst in ((res.stratified, out.stratified), (res.stratified_sigma, out.stratified_sigma)):
                    for name, arr in src.items():
                        full = np.full((npix, arr.shape[1]), np.nan, dtype=np.float32)
                        full[good] = arr
                        dst[name] = full
            if out.synthetic is not None:
                syn = res.synthetic
                if syn is None:
                    syn = backend.synthesize(np.asarray(res.params, dtype=np.float64), wavelength)
                out.synthetic[good] = syn
    t3 = time.perf_counter()
    return ChunkOutput(
        index=index, start=start, stop=stop, result=out,
        seconds={"setup": setup_s, "read": t2 - t1, "init": init_s, "invert": t3 - t2 - init_s,
                 "total": t3 - t0},
        worker=_worker_name(),
    )


# ---------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseInfo:
    """The noise a run uses, and where it came from.

    Attributes
    ----------
    sigma : tuple of 4 float, optional
        One-sigma noise of I, Q, U, V in the data's units (continuum units);
        None when neither stated nor estimated (a backend without
        ``estimate_noise``).
    source : str
        ``"configuration"`` (``[input] noise``, ``--noise`` or the backend's
        own ``noise`` option), ``"observation"`` (the file's ``noise``),
        ``"estimated"`` (``Backend.estimate_noise`` on a sample) or
        ``"unknown"``.
    n_pixels : int
        Pixels of the sample the estimate used (0 unless estimated).
    """

    sigma: tuple[float, float, float, float] | None
    source: str
    n_pixels: int = 0

    def text(self) -> str:
        """``"I=1.0e-03, Q=..., U=..., V=..."`` (or ``"unknown"``)."""
        if self.sigma is None:
            return "unknown"
        return ", ".join(f"{s}={v:.3g}" for s, v in zip("IQUV", self.sigma))


def _four(noise: Any) -> tuple[float, float, float, float]:
    """A scalar sigma or four (I, Q, U, V) as four floats."""
    a = np.asarray(noise, dtype=np.float64).ravel()
    if a.size == 1:
        a = np.repeat(a, 4)
    if a.size != 4:
        raise ConfigurationError(f"noise must be one sigma or four (I, Q, U, V), got {noise!r}")
    return (float(a[0]), float(a[1]), float(a[2]), float(a[3]))


def sample_valid_pixels(obs: Any, target: int = NOISE_SAMPLE_PIXELS,
                        what: str = "invert") -> tuple[np.ndarray, np.ndarray]:
    """A deterministic sample of up to ``target`` valid pixels spread over the whole map.

    About ``sqrt(target * ny / nx)`` rows evenly spaced from the first to the
    last row are read one at a time with ``obs.read_rows``; in each, the valid
    pixels (every Stokes value finite) are thinned to evenly spaced columns,
    each row taking its share of what the rows before it left. The same file
    always gives the same sample, so a resumed run estimates the same noise.
    When the sampled rows hold no valid pixel, the whole map is scanned in
    blocks of rows until one is found.

    Parameters
    ----------
    obs : Observation
        The observation handle.
    target : int
        Largest sample size, in pixels.
    what : str
        What the caller would do with the pixels, for the error's words ("invert", "predict").

    Returns
    -------
    stokes : ndarray, (n, 4, nw) float32
        The sampled pixels, ``1 <= n <= target``.
    index : ndarray, (n,) int64
        Their flat row-major indices ``y * nx + x``.

    Raises
    ------
    ObservationError
        No pixel of the map is valid (NaN or inf everywhere).
    """
    ny, nx = int(obs.ny), int(obs.nx)
    n_rows = min(ny, max(1, math.ceil(math.sqrt(target * ny / max(1, nx)))))
    rows = np.unique(np.round(np.linspace(0, ny - 1, n_rows)).astype(np.int64))
    blocks: list[np.ndarray] = []
    index: list[np.ndarray] = []
    taken = 0
    for k, y in enumerate(rows):
        quota = math.ceil((target - taken) / (rows.size - k))
        if quota <= 0:
            break
        row = obs.read_rows(int(y), int(y) + 1)[0]
        good = np.flatnonzero(valid_pixels(row))
        if good.size > quota:
            good = good[np.unique(np.round(np.linspace(0, good.size - 1, quota)).astype(np.int64))]
        if good.size:
            blocks.append(row[good])
            index.append(int(y) * nx + good)
            taken += good.size
    if not taken:  # e.g. a few valid pixels between the sampled rows: scan everything
        step = max(1, (1 << 22) // max(1, nx * 4 * int(obs.nw)))
        for y0 in range(0, ny, step):
            block = obs.read_rows(y0, min(ny, y0 + step)).reshape(-1, 4, int(obs.nw))
            good = np.flatnonzero(valid_pixels(block))[:target]
            if good.size:
                blocks.append(block[good])
                index.append(y0 * nx + good)
                taken = good.size
                break
    if not taken:
        raise ObservationError(
            f"{obs.path}: no valid pixel: every one of the {ny} x {nx} pixels has {INVALID_PIXEL}, so there "
            f"is nothing to {what}; check the file (and, for instrument layouts, "
            f"the continuum and disc mask)"
        )
    return np.concatenate(blocks).astype(np.float32, copy=False), np.concatenate(index).astype(np.int64)


def check_continuum_units(path: Any, sample: np.ndarray) -> None:
    """Refuse Stokes profiles that are not in continuum units (DN, counts), before any work.

    Parameters
    ----------
    path : path-like
        The observation, for the message.
    sample : ndarray, (n, 4, nw)
        Valid pixels spread over the map (:func:`sample_valid_pixels`).

    Raises
    ------
    ObservationError
        The median of the pixels' highest Stokes I is above :data:`CONTINUUM_UNITS_MAX`.
    """
    peak = float(np.median(np.max(sample[:, 0, :], axis=1)))
    if peak > CONTINUUM_UNITS_MAX:
        raise ObservationError(
            f"{path}: Stokes I is not in continuum units: the median of the pixels' highest I is {peak:.4g}, "
            "where the quiet-Sun continuum is 1; divide the Stokes cube by the quiet-Sun continuum intensity "
            "(the hmi and hinode_sp readers do it themselves, see -R continuum=...)"
        )


def _backend_noise_option(backend: Backend) -> Any:
    """The backend's own ``noise`` option when the user set one (None otherwise)."""
    options = getattr(backend, "options", None)
    return getattr(options, "noise", None) if not isinstance(options, Mapping) else None


def stated_noise(config: Config, obs: Any, backend: Backend) -> NoiseInfo | None:
    """The noise the run is told (the backend's ``noise`` option, ``[input] noise``, the
    observation's), in that order, or None when it must be estimated (:func:`resolve_noise`)."""
    own = _backend_noise_option(backend)
    if own is not None:
        return NoiseInfo(_four(own), "configuration")
    if config.input.noise:
        return NoiseInfo(_four(config.input.noise), "configuration")
    if obs.meta.get("noise") is not None:
        return NoiseInfo(_four(obs.meta["noise"]), "observation")
    return None


def resolve_noise(
    config: Config, obs: Any, backend: Backend, sample: np.ndarray, wavelength: np.ndarray, *, log_it: bool = True
) -> NoiseInfo:
    """Where the run's noise comes from: configuration, observation, or an estimate.

    Parameters
    ----------
    config : Config
        ``[input] noise`` (0 = not stated).
    obs : Observation
        ``obs.meta["noise"]`` (already the configured noise when ``[input]
        noise`` was given to :func:`open_observation`).
    backend : Backend
        As configured (before ``for_observation``): its own ``noise`` option,
        when set, wins; adapted to the observation, its ``estimate_noise``
        makes the estimate.
    sample : ndarray, (n, 4, nw)
        Valid pixels from :func:`sample_valid_pixels`.
    wavelength : ndarray, (nw,)
        In A.
    log_it : bool
        Log the estimate (false on the ranks of an mpiexec job that are not the driver).

    Returns
    -------
    NoiseInfo

    Raises
    ------
    BackendError
        ``estimate_noise`` returned something other than four positive finite sigmas.
    """
    stated = stated_noise(config, obs, backend)
    if stated is not None:
        return stated
    probe = backend.for_observation(dict(obs.meta))  # knows the lines and instrument
    estimate = getattr(probe, "estimate_noise", None)
    if estimate is None:
        if log_it:
            log.warning("the noise is not stated and backend %r cannot estimate it; its fits use its own "
                        "weighting", backend.name)
        return NoiseInfo(None, "unknown")
    sigma = np.asarray(estimate(sample, wavelength), dtype=np.float64)
    if sigma.shape != (4,) or not np.all(np.isfinite(sigma)) or not np.all(sigma > 0):
        raise BackendError(
            f"backend {backend.name!r}: estimate_noise returned {sigma!r} for {sample.shape[0]} pixels of "
            f"{obs.path}, expected four positive finite sigmas (I, Q, U, V); state the noise with --noise"
        )
    info = NoiseInfo(_four(sigma), "estimated", int(sample.shape[0]))
    if log_it:
        log.info("noise estimated from %d pixels: %s", info.n_pixels, info.text())
    return info


# ---------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------
@dataclass
class RunSummary:
    """What a run did.

    Attributes
    ----------
    output : str
        Result file.
    n_chunks, chunks_done : int
        Chunks in the plan and chunks on disk at the end.
    chunks_computed : int
        Chunks inverted by this run (a resume skips the ones already done).
    chunks_skipped : int
        Chunks found done when the run started.
    failed : dict of int to str
        Chunks that failed after their retries, with the error text.
    pixels : int
        Pixels in the field of view.
    pixels_by_status : dict of str to int
        Pixels per status name (``"ok"``, ``"max-iterations"``, ``"failed"``,
        ``"skipped (bad input)"``, ``"poor fit"``, and ``"not yet run"``
        when some are).
    times : dict of str to float
        Wall times per phase (``plan``, ``setup``, ``invert``, ``write``,
        ``total``), in s.
    pixels_per_s : float
        Pixels inverted by this run per second of the ``invert`` phase, in px/s.
    workers : int
        Workers of the executor (0 when none was started).
    cluster : str
        Cluster kind.
    chunk_pixels : int
        Pixels per chunk.
    worker_seconds : dict of str to float
        Worker-side time per phase summed over the chunks of this run, in s.
    noise : NoiseInfo, optional
        The noise of the run.
    already_complete : bool
        ``--resume`` found the file complete and left it untouched.
    """

    output: str
    n_chunks: int
    chunks_done: int
    chunks_computed: int
    chunks_skipped: int
    failed: dict[int, str]
    pixels: int
    pixels_by_status: dict[str, int]
    times: dict[str, float]
    pixels_per_s: float
    workers: int
    cluster: str
    chunk_pixels: int
    worker_seconds: dict[str, float] = field(default_factory=dict)
    noise: NoiseInfo | None = None
    already_complete: bool = False

    @property
    def complete(self) -> bool:
        """Every chunk is on disk."""
        return self.chunks_done == self.n_chunks

    @property
    def partial(self) -> bool:
        """Some chunks failed or were not run."""
        return not self.complete

    def report(self) -> str:
        """A few lines of text for the end of a run."""
        t = self.times
        if self.already_complete:
            head = (f"result: {self.output} was already complete ({self.chunks_done}/{self.n_chunks} chunks "
                    f"of {self.chunk_pixels} pixels); nothing computed, file unchanged")
        else:
            head = (f"result: {self.output} ({'complete' if self.complete else 'PARTIAL'}: "
                    f"{self.chunks_done}/{self.n_chunks} chunks of {self.chunk_pixels} pixels; "
                    f"{self.chunks_computed} computed now, {self.chunks_skipped} already done)")
        lines = [head, "pixels: " + ", ".join(f"{k} {v}" for k, v in self.pixels_by_status.items())]
        if self.noise is not None:
            how = (f"estimated from {self.noise.n_pixels} pixels" if self.noise.source == "estimated"
                   else f"from the {self.noise.source}")
            lines.append(f"noise ({how}): {self.noise.text()}")
        if not self.already_complete:
            lines.append(f"cluster: {self.cluster} with {self.workers} worker(s); {self.pixels_per_s:.0f} px/s")
        lines.append("wall time: " + ", ".join(
            f"{k} {t.get(k, 0.0):.2f} s" for k in ("plan", "setup", "invert", "write", "total")))
        for index, err in sorted(self.failed.items()):
            first = err.strip().splitlines()[-1] if err.strip() else err
            lines.append(f"chunk {index} FAILED: {first}")
        return "\n".join(lines)


def status_names(counts: Mapping[int, int]) -> dict[str, int]:
    """Pixels per status name: every code of ``STATUS_NAMES`` (zeros included) in code order.

    ``"not yet run"`` appears only when some pixels are; a code outside
    ``STATUS_NAMES`` appears under its number.
    """
    out: dict[str, int] = {}
    for code, name in sorted(STATUS_NAMES.items()):
        n = int(counts.get(code, 0))
        if code != STATUS_NOT_RUN or n:
            out[name] = n
    for code in sorted(set(counts) - set(STATUS_NAMES)):
        out[str(code)] = int(counts[code])
    return out


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def package_versions() -> dict[str, str]:
    """Versions of stokesflow and the packages that shape its results (a new dict each call)."""
    return dict(_package_versions())


@functools.lru_cache(maxsize=1)
def _package_versions() -> dict[str, str]:
    """:func:`package_versions`, read once per process (the metadata look-ups cost ~10 ms a run)."""
    out = {"python": platform.python_version()}
    for dist in ("stokesflow", "numpy", "numba", "dask", "distributed", "h5py", "scipy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    try:
        import h5py

        out["hdf5"] = h5py.version.hdf5_version
    except ImportError:  # pragma: no cover - h5py is a dependency
        pass
    return out


def _options_as_dict(options: Any) -> Any:
    if options is None:
        return {}
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        return dataclasses.asdict(options)
    if isinstance(options, Mapping):
        return {k: _options_as_dict(v) if dataclasses.is_dataclass(v) else v for k, v in options.items()}
    return repr(options)


def _open_observation(config: Config) -> Any:
    from stokesflow.orchestrator.io import open_observation

    i = config.input
    if not i.path:
        raise ConfigurationError("no input observation: give --input obs.h5 (or [input] path in the TOML file)")
    return open_observation(
        i.path,
        format=i.format or None,
        axes=i.axes or None,
        wavelength=i.wavelength or None,
        lines=list(i.lines) or None,
        instrument=i.instrument or None,
        noise=i.noise or None,
        continuum=i.continuum if i.continuum != "" else None,
        reader_options=dict(i.reader_options) or None,
    )


def open_input(path: str | os.PathLike[str], options: Mapping[str, Any] | None = None) -> Any:
    """The observation at ``path``, read with ``options``: keys of the ``[input]`` table (``format``,
    ``axes``, ``wavelength``, ``lines``, ``instrument``, ``noise``, ``continuum``,
    ``reader_options``), checked as in a configuration file (``predict`` and ``assist`` read their
    observation as ``invert`` does)."""
    from stokesflow.orchestrator.config import load_config

    return _open_observation(load_config(None, {"input": {**dict(options or {}), "path": str(path)}}))


def _build_backend(config: Config) -> Backend:
    """The configured backend; wrong option values become a one-line configuration error."""
    name = config.run.backend
    try:
        return get_backend(name, config.backend_options())
    except BackendError:
        raise
    except (TypeError, ValueError) as exc:  # an options class that checks values with plain Python errors
        raise ConfigurationError(f"[backend.{name}] options {config.backend_options()}: {exc}") from exc


def _error_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    tb = exc.__traceback__
    if tb is not None:
        frames = traceback.extract_tb(tb)
        if frames:
            last = frames[-1]
            text += f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    return text[:_MAX_ERROR_CHARS]


def _check_output(config: Config) -> Path:
    """The result path is usable: absent or ``--overwrite``/``--resume``, in a writable folder."""
    out_path = Path(config.output.path)
    o = config.output
    if o.resume:
        if not out_path.exists():
            raise ResumeError(
                f"--resume was given but result file {str(out_path)!r} does not exist; "
                "drop --resume to start a new run"
            )
        try:
            with open(out_path, "r+b"):  # opens for writing without changing a byte or the mtime
                pass
        except OSError as exc:
            raise StoreError(
                f"cannot resume result file {str(out_path)!r}: it is not writable ({exc.strerror}); "
                "fix its permissions or copy it somewhere writable"
            ) from None
        return out_path
    # what the run reads: the observation, and the file a provider starts from (-I file=, model=, ...)
    reads = [config.input.path] + [v for v in dict(config.init_options() or {}).values() if isinstance(v, str) and v]
    check_new_output(
        out_path, overwrite=o.overwrite, what=f"result file {str(out_path)!r}", error=StoreError,
        exists_remedy="pass --resume to finish that run, --overwrite to replace it, or choose another --out",
        inputs=[p for p in reads if p],
    )
    return out_path


def _fingerprint(obs: Any, backend: Backend, provider: InitProvider, chunk_pixels: int, synthetic: bool,
                 noise: NoiseInfo) -> dict[str, Any]:
    return {
        "observation": obs.fingerprint(),
        "shape": [int(obs.ny), int(obs.nx), int(obs.nw)],
        "backend": backend.name,
        "backend_options": _options_as_dict(backend.options),
        "parameters": list(backend.parameter_names),
        "init": provider.describe(),
        "chunk_pixels": int(chunk_pixels),
        "synthetic": bool(synthetic),
        "noise": list(noise.sigma) if noise.sigma is not None else None,
    }


def _dask_settings(spec: Any) -> Any:
    """Context applying :data:`_DASK_SETTINGS` for the Dask-based cluster kinds."""
    if spec.kind == "serial":
        return contextlib.nullcontext()
    import dask
    import distributed  # noqa: F401 - loads distributed's defaults, which set() must not shadow

    return dask.config.set(_DASK_SETTINGS)


class _QuietShutdown:
    """On Ctrl-C or SIGTERM, silence the executor libraries while the cluster closes.

    The driver then prints one line (the command line's), not the shutdown
    chatter of the scheduler and nannies (cancelled futures, closed comms).
    :meth:`restore` (outside the executor's ``with``) puts the levels back;
    :meth:`on_interrupt` (inside it) silences them as the interruption passes.
    """

    def __init__(self) -> None:
        self._levels = {name: logging.getLogger(name).level for name in _EXECUTOR_LOGGERS}

    @contextlib.contextmanager
    def restore(self) -> Iterator[None]:
        try:
            yield
        finally:
            for name, level in self._levels.items():
                logging.getLogger(name).setLevel(level)

    @contextlib.contextmanager
    def on_interrupt(self) -> Iterator[None]:
        try:
            yield
        except KeyboardInterrupt:
            for name in self._levels:
                logging.getLogger(name).setLevel(logging.CRITICAL + 1)
            raise


def _is_driver(spec: Any) -> bool:
    """Whether this process will run the body of ``open_executor`` (always, except under mpiexec)."""
    from stokesflow.clusters import client_rank, mpi_rank

    return spec.kind != "mpi" or mpi_rank() in (None, client_rank(spec))


# ---------------------------------------------------------------------------
# step 1: validate
# ---------------------------------------------------------------------------
@dataclass
class RunPlan:
    """Everything :func:`validate_run` settled; nothing has been written yet.

    Attributes
    ----------
    config : Config
    spec : ClusterSpec
    observation : Observation
    backend : Backend
        Built for the observation (lines, instrument, noise) and set up in the driver.
    provider : InitProvider
        Bound to ``backend``.
    out_path : Path
    plan : Plan
        The chunks (those of the file when resuming).
    done : ndarray of bool, (n_chunks,)
        Chunks already on disk (resume); all False for a new file.
    fingerprint : dict
        What a resume must match.
    noise : NoiseInfo
    trial : (stokes, wavelength), optional
        One valid pixel (1, 4, nw) and the wavelengths [A] for the workers' warm-up.
    token : str
        Digest of the pickled backend (the workers' set-up cache key).
    seconds : float
        Wall time of the validation, in s.
    """

    config: Config
    spec: Any
    observation: Any
    backend: Backend
    provider: InitProvider
    out_path: Path
    plan: Plan
    done: np.ndarray
    fingerprint: dict[str, Any]
    noise: NoiseInfo
    trial: tuple[np.ndarray, np.ndarray] | None
    token: str
    seconds: float = 0.0

    @property
    def resume(self) -> bool:
        """The run finishes an existing result file."""
        return bool(self.config.output.resume)

    @property
    def already_complete(self) -> bool:
        """``--resume`` of a file whose chunks are all done: nothing to do."""
        return self.resume and bool(self.done.all())

    def context(self) -> TaskContext:
        """The :class:`TaskContext` of every chunk task."""
        return TaskContext(self.backend, self.token, self.observation, self.provider,
                           self.config.output.synthetic, self.trial)


def validate_run(config: Config, *, backend: Backend | None = None) -> RunPlan:
    """Step 1: check everything before any work; write nothing.

    Parameters
    ----------
    config : Config
    backend : Backend, optional
        Use this backend instance instead of building ``config.run.backend``
        (programmatic use, test doubles); it is still adapted with
        ``for_observation``.

    Returns
    -------
    RunPlan

    Raises
    ------
    ObservationError, BackendError, ConfigurationError, ClusterError, StoreError, InitError
        Bad input or configuration, naming the file, flag or value.
    """
    from stokesflow.clusters import preflight

    t_start = time.perf_counter()
    spec = config.cluster_spec()
    preflight(spec)  # programs the cluster kind needs (sbatch, qsub, mpiexec), before reading anything
    driver = _is_driver(spec)  # under mpiexec every rank validates; only the driver rank logs
    out_path = _check_output(config)
    obs = _open_observation(config)
    base = backend if backend is not None else _build_backend(config)
    wavelength = np.asarray(obs.wavelength, dtype=np.float64)
    # the sample is for a noise estimate; with the noise stated only its first pixel is used (the
    # trial inversion), so a few rows do (on a 256^2 HDF5 map 4 row reads instead of 45)
    stated = stated_noise(config, obs, base)
    sample, sample_index = sample_valid_pixels(obs, NOISE_SAMPLE_PIXELS if stated is None else TRIAL_SAMPLE_PIXELS)
    check_continuum_units(obs.path, sample)
    meta = dict(obs.meta)
    noise = stated if stated is not None else resolve_noise(config, obs, base, sample, wavelength, log_it=driver)
    if noise.source == "estimated":
        meta["noise"] = list(noise.sigma)  # four floats (I, Q, U, V), interface of for_observation
    backend = base.for_observation(meta)
    provider = get_provider(config.run.init, config.init_options()).bind(backend)
    provider.check_observation((obs.ny, obs.nx), obs.wavelength)  # e.g. previous: maps of this field
    workers_hint = spec.workers or (1 if spec.kind == "serial" else os.cpu_count() or 1)
    chunk_pixels = config.run.chunk_pixels
    if config.output.resume and chunk_pixels == 0:  # automatic: keep the chunks of the interrupted run
        chunk_pixels = int(inspect_result(out_path)["chunk_pixels"])
    if chunk_pixels == 0:  # automatic, as the backend plans it (a code taking seconds per pixel: small chunks)
        chunk_pixels = auto_chunk_pixels(obs.npix, workers_hint, **dict(getattr(backend, "chunk_plan", {})))
    plan = plan_chunks(obs.ny, obs.nx, chunk_pixels)
    fingerprint = _fingerprint(obs, backend, provider, plan.chunk_pixels, config.output.synthetic, noise)
    done = np.zeros(plan.n_chunks, dtype=bool)
    if config.output.resume:
        plan, done = ResultStore.check_resume(out_path, fingerprint)
    trial = (sample[:1], wavelength)
    if not (config.output.resume and done.all()):
        _check_backend(backend, provider, obs, trial, int(sample_index[0]), log_it=driver)
    token = hashlib.sha256(pickle.dumps(backend)).hexdigest()[:16]
    _WORKER_BACKENDS.setdefault(token, backend)  # the driver is set up already (serial runs here)
    return RunPlan(config=config, spec=spec, observation=obs, backend=backend, provider=provider,
                   out_path=out_path, plan=plan, done=done, fingerprint=fingerprint, noise=noise,
                   trial=trial, token=token, seconds=time.perf_counter() - t_start)


def _check_backend(backend: Backend, provider: InitProvider, obs: Any,
                   trial: tuple[np.ndarray, np.ndarray], trial_index: int, *, log_it: bool = True) -> None:
    """Set the backend up on the trial pixel and invert it once, so bad input fails now, not in every task."""
    if log_it:
        note = getattr(backend, "setup_note", "")
        log.info("setting up backend %r%s", backend.name, f": {note}" if note else "")
    t0 = time.perf_counter()
    try:
        _call_setup(backend, trial)
        guess = provider.initial_guess(trial[0], trial[1], start=trial_index, stop=trial_index + 1)
        backend.invert(trial[0], trial[1], guess)
    except (BackendError, OrchestratorError):
        raise
    except Exception as exc:
        raise BackendError(
            f"backend {backend.name!r} cannot invert {obs.path}: trial inversion of one pixel "
            f"failed with {type(exc).__name__}: {exc}"
        ) from exc
    if log_it:
        log.info("backend %r ready in %.1f s", backend.name, time.perf_counter() - t0)


# ---------------------------------------------------------------------------
# step 2: the store
# ---------------------------------------------------------------------------
def open_store(prep: RunPlan) -> ResultStore:
    """Step 2: create the result file (every dataset allocated) or reopen it to resume."""
    backend, config = prep.backend, prep.config
    if prep.resume:
        return ResultStore.resume(prep.out_path, fingerprint=prep.fingerprint, parameters=backend.parameters)
    attrs: dict[str, Any] = {
        "config": config.to_toml(),
        "versions": json.dumps(package_versions()),
        "backend": backend.name,
        "backend_options": json.dumps(_options_as_dict(backend.options), default=str),
        "init": prep.provider.name,
        "input": str(prep.observation.path),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "noise_source": prep.noise.source,
    }
    if prep.noise.sigma is not None:
        attrs["noise"] = np.asarray(prep.noise.sigma, dtype=np.float64)
    stratified = tuple(getattr(backend, "stratified_parameters", ()))
    return ResultStore.create(
        prep.out_path, plan=prep.plan, parameters=backend.parameters, fingerprint=prep.fingerprint,
        nw=prep.observation.nw if config.output.synthetic else None, overwrite=config.output.overwrite,
        attrs=attrs, stratified=stratified, log_tau=backend.log_tau if stratified else None,
    )


# ---------------------------------------------------------------------------
# step 3: drive the executor
# ---------------------------------------------------------------------------
def drive_chunks(
    ex: Any,
    ctx: TaskContext,
    pending: list[Chunk],
    window: int,
    store: ResultStore,
    progress: Progress,
    worker_seconds: dict[str, float],
) -> None:
    """Step 3: submit ``pending`` with at most ``window`` in flight; write results as they come.

    Parameters
    ----------
    ex : Executor
        ``submit`` and ``as_completed`` (:mod:`stokesflow.clusters`).
    ctx : TaskContext
    pending : list of Chunk
    window : int
        Tasks in flight at most.
    store : ResultStore
        Written chunk by chunk; failed chunks are recorded with their error.
    progress : Progress
    worker_seconds : dict
        Worker-side seconds per phase, summed in place.
    """
    queue = deque(pending)
    inflight: dict[Any, Chunk] = {}

    def top_up() -> None:
        raise_if_stop_requested()
        while queue and len(inflight) < window:
            chunk = queue.popleft()
            inflight[ex.submit(invert_chunk, ctx, chunk.index, chunk.start, chunk.stop)] = chunk

    top_up()
    # ``as_completed`` over a fixed set: each round covers the futures in
    # flight when it starts; replacements submitted meanwhile join the next.
    while inflight:
        for fut in ex.as_completed(list(inflight)):
            chunk = inflight.pop(fut)
            exc, out = ex.outcome(fut)
            if exc is not None:
                text = _error_text(exc)
                store.record_error(chunk.index, text)
                log.warning("chunk %d (pixels %d..%d) failed: %s", chunk.index, chunk.start, chunk.stop, text)
                progress.update(chunk.npix, failed=True)
            else:
                store.write_chunk(out)
                _log_pixel_errors(out)
                for k, v in out.seconds.items():
                    worker_seconds[k] = worker_seconds.get(k, 0.0) + float(v)
                log.debug("chunk %d done by %s in %.3f s", chunk.index, out.worker, out.seconds.get("total", 0.0))
                progress.update(chunk.npix)
            del fut
            top_up()


def _log_pixel_errors(out: ChunkOutput, most: int = 3) -> None:
    """Log why pixels of a chunk failed (the backend's per-pixel reasons), a few per chunk."""
    failed = {k: v for k, v in out.result.errors.items() if out.result.status[k] == STATUS_FAILED}
    for k in sorted(failed)[:most]:
        log.warning("pixel %d failed: %s", out.start + k, failed[k])
    if len(failed) > most:
        log.warning("chunk %d: %d more failed pixels", out.index, len(failed) - most)


# ---------------------------------------------------------------------------
# step 4: summarise
# ---------------------------------------------------------------------------
def summarise(
    prep: RunPlan,
    *,
    counts: Mapping[int, int],
    done: np.ndarray,
    computed: int,
    failed: Mapping[int, str],
    times: Mapping[str, float],
    workers: int,
    worker_seconds: Mapping[str, float] | None = None,
) -> RunSummary:
    """Step 4: the :class:`RunSummary` of a run, and a warning for failed chunks and poor fits.

    Parameters
    ----------
    prep : RunPlan
    counts : mapping of int to int
        Pixels per status code over the whole field (what is on disk).
    done : ndarray of bool
        Chunks on disk at the end.
    computed : int
        Chunks inverted by this run.
    failed : mapping of int to str
        Chunks that failed in this run, with the error text.
    times : mapping of str to float
        Wall time per phase, in s.
    workers : int
        Workers of the executor.
    worker_seconds : mapping, optional
        Worker-side seconds per phase.
    """
    plan = prep.plan
    sizes = plan.stops() - plan.starts()
    new = np.asarray(done, dtype=bool) & ~prep.done
    t_invert = float(times.get("invert", 0.0))
    summary = RunSummary(
        output=str(prep.out_path), n_chunks=plan.n_chunks, chunks_done=int(np.count_nonzero(done)),
        chunks_computed=int(computed), chunks_skipped=int(prep.done.sum()), failed=dict(failed),
        pixels=plan.npix, pixels_by_status=status_names(counts), times=dict(times),
        pixels_per_s=float(sizes[new].sum()) / t_invert if t_invert > 0 else 0.0,
        workers=int(workers), cluster=prep.spec.kind, chunk_pixels=plan.chunk_pixels,
        worker_seconds=dict(worker_seconds or {}), noise=prep.noise,
        already_complete=prep.already_complete,
    )
    poor = int(counts.get(STATUS_POOR_FIT, 0))
    if poor:
        log.warning(
            "%d of %d pixels (%.1f %%) ended with a poor fit (status 4: chi2 far above what the noise %s "
            "allows); they keep their parameters, check them before use", poor, plan.npix,
            100.0 * poor / plan.npix, prep.noise.text(),
        )
    if summary.failed:
        log.warning("%d chunk(s) failed; the result is partial", len(summary.failed))
    return summary


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------
def run_inversion(
    config: Config,
    *,
    backend: Backend | None = None,
    progress_stream: TextIO | None = None,
    executor: Any = None,
) -> RunSummary:
    """Invert the observation of ``config`` and write the result file.

    Parameters
    ----------
    config : Config
        From :func:`stokesflow.orchestrator.config.load_config`.
    backend : Backend, optional
        Use this backend instance instead of building ``config.run.backend``
        from the registry (programmatic use, test doubles). It is still
        adapted with ``for_observation``.
    progress_stream : file, optional
        Where the progress bar goes (default stderr).
    executor : Executor, optional
        An open executor to run on (left open), instead of opening one for
        the ``[cluster]`` table (``stokesflow assist`` shares one between phases).

    Returns
    -------
    RunSummary
        ``partial`` is true when some chunks failed after their retries;
        ``already_complete`` when ``--resume`` found nothing to do (the file
        is then left untouched).

    Raises
    ------
    ObservationError, BackendError, ConfigurationError, ClusterError, StoreError, InitError
        Bad input or configuration, raised before any chunk is inverted.
    """
    t_start = time.perf_counter()
    prep = validate_run(config, backend=backend)
    spec, plan = prep.spec, prep.plan

    def nothing_to_do() -> RunSummary:
        log.info("%s is already complete (%d of %d chunks done): nothing to compute, the file is unchanged",
                 prep.out_path, plan.n_chunks, plan.n_chunks)
        return summarise(prep, counts=read_status_counts(prep.out_path), done=prep.done, computed=0, failed={},
                         times={"plan": prep.seconds, "total": time.perf_counter() - t_start}, workers=0)

    if prep.already_complete and spec.kind != "mpi":  # no cluster needed
        return nothing_to_do()
    if _is_driver(spec) and not prep.already_complete:  # under mpiexec every rank gets here; one line is enough
        obs = prep.observation
        log.info(
            "%s: %d x %d pixels, %d wavelengths; backend %s, init %s; %d chunks of %d pixels",
            obs.path, obs.ny, obs.nx, obs.nw, prep.backend.name, prep.provider.name, plan.n_chunks,
            plan.chunk_pixels,
        )

    from stokesflow.clusters import executor_for

    t0 = time.perf_counter()
    # every rank of an mpiexec job passes here, so the Dask settings reach all workers
    quiet = _QuietShutdown()
    with quiet.restore(), _dask_settings(spec), executor_for(spec, executor) as ex, quiet.on_interrupt():
        # under mpiexec only the driver rank gets here (the other ranks serve the cluster)
        if prep.already_complete:
            return nothing_to_do()
        with open_store(prep) as store:
            pending = store.pending()
            if prep.resume:
                log.info("resuming %s: %d of %d chunks already done, %d to go",
                         prep.out_path, int(prep.done.sum()), plan.n_chunks, len(pending))
            n_workers = max(1, int(ex.n_workers))
            if pending:
                try:
                    ex.run_on_workers(_setup_worker, prep.backend, prep.token, prep.trial)
                except Exception as exc:  # a worker lost during set-up must not end the run
                    log.warning(
                        "worker set-up failed (%s); each worker sets itself up in its first task instead",
                        _error_text(exc),
                    )
            t_setup = time.perf_counter() - t0
            window = config.run.max_in_flight or default_in_flight(n_workers, spec.threads_per_worker)
            worker_seconds: dict[str, float] = {}
            sizes = plan.stops() - plan.starts()
            progress = Progress(
                plan.npix, initial=int(sizes[prep.done].sum()), n_chunks=plan.n_chunks,
                chunks_done=int(prep.done.sum()), mode=config.run.progress,
                interval_s=config.run.log_interval_s, stream=progress_stream,
            )
            t1 = time.perf_counter()
            # while no chunk finishes (batch jobs queued), the progress line says what the workers do
            ex.on_idle(lambda: progress.waiting(ex.worker_summary()))
            try:
                drive_chunks(ex, prep.context(), pending, window, store, progress, worker_seconds)
            finally:
                progress.close()
                t_invert = time.perf_counter() - t1
                times = {"plan": prep.seconds, "setup": t_setup, "invert": t_invert,
                         "write": store.write_seconds, "total": time.perf_counter() - t_start}
                store.finalize({f"time_{k}_s": v for k, v in times.items()})
            summary = summarise(prep, counts=store.status_counts(), done=store.done, computed=store.computed,
                                failed=store.errors, times=times, workers=n_workers,
                                worker_seconds=worker_seconds)
    return summary
