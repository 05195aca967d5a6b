"""Run an inversion: validate, plan, dispatch chunks, collect, write.

:func:`run_inversion` is what ``stokesflow invert`` calls. Its steps:

1. *Validate everything before any work*: the cluster table, the observation
   (opened, shape and wavelengths read), the backend (built for the
   observation's lines and instrument, set up and tried on one pixel in the
   driver), the init provider, the chunking and, with ``resume``, that the
   result file was written with the same configuration.
2. Open the executor and set every worker up once
   (:func:`_setup_worker` through ``run_on_workers``; the task repeats it
   lazily, so a restarted worker also sets up once).
3. Keep a bounded number of chunk tasks in flight, collect them with
   ``as_completed`` and write each finished chunk (the driver is the only
   writer of the result file). A chunk whose task still raises after the
   executor's retries is recorded with its error and the run goes on.
4. Write the closing attributes and return a :class:`RunSummary`.

A task carries only the chunk's bounds and a small :class:`TaskContext`
(backend, observation handle, init provider); the worker reads its own slice
of the observation with ``Observation.read_pixels``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
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
from typing import Any, Mapping, TextIO

import numpy as np

from stokesflow.backends import STATUS_BAD_INPUT, STATUS_NAMES, Backend, BackendError, ChunkResult, get_backend
from stokesflow.nn_init.providers import InitProvider, get_provider
from stokesflow.orchestrator.config import Config, ConfigurationError
from stokesflow.orchestrator.errors import OrchestratorError
from stokesflow.orchestrator.plan import Chunk, auto_chunk_pixels, default_in_flight, plan_chunks
from stokesflow.orchestrator.progress import Progress
from stokesflow.orchestrator.store import ChunkOutput, ResultStore, ResumeError, StoreError, inspect_result

__all__ = [
    "RunSummary",
    "TaskContext",
    "ChunkTaskError",
    "run_inversion",
    "package_versions",
    "invert_chunk",
]

log = logging.getLogger("stokesflow.run")

#: Longest error text kept per failed chunk, in characters.
_MAX_ERROR_CHARS = 4000

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


class ChunkTaskError(OrchestratorError):
    """A backend broke the contract for one chunk (wrong shapes or names)."""


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
        One pixel for the worker's warm-up (see :func:`_setup_worker`).
    """

    backend: Backend
    backend_token: str
    observation: Any
    init: InitProvider
    synthetic: bool = False
    trial: tuple[np.ndarray, np.ndarray] | None = None


#: Per worker process: backend token -> the backend instance that was set up.
_WORKER_BACKENDS: dict[str, Backend] = {}


def _setup_worker(backend: Backend, token: str, trial: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """Set ``backend`` up in this process once (numba warm-up, scratch folder).

    Parameters
    ----------
    backend : Backend
        The backend of the run.
    token : str
        Its cache key (:attr:`TaskContext.backend_token`).
    trial : (stokes, wavelength), optional
        One observed pixel (1, 4, nw) and the wavelengths [A]: inverted once
        after ``setup()`` so that kernels specialised for the data's dtypes
        are compiled (or loaded from numba's cache) here, not in the first chunk.

    Returns
    -------
    float
        Seconds spent, 0 when it was already done, in s.
    """
    if token in _WORKER_BACKENDS:
        return 0.0
    t0 = time.perf_counter()
    backend.setup()
    if trial is not None:
        backend.invert(trial[0], trial[1])
    _WORKER_BACKENDS[token] = backend
    return time.perf_counter() - t0


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def invert_chunk(ctx: TaskContext, index: int, start: int, stop: int) -> ChunkOutput:
    """The task: invert flat pixels ``start..stop`` of the observation.

    Reads the slice itself, skips pixels with NaN or inf (status 3), asks the
    init provider for starting points, calls ``backend.invert`` on the good
    pixels and returns compact arrays (float32, int32, uint8).

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
    names = backend.parameter_names
    npar = len(names)
    if stokes.shape[0] != npix:
        raise ChunkTaskError(
            f"chunk {index}: read_pixels({start}, {stop}) of {getattr(ctx.observation, 'path', '?')} "
            f"returned {stokes.shape[0]} pixels, expected {npix}"
        )
    good = np.isfinite(stokes).all(axis=(1, 2))
    params = np.full((npix, npar), np.nan, dtype=np.float32)
    sigma = np.full((npix, npar), np.nan, dtype=np.float32)
    chi2 = np.full(npix, np.nan, dtype=np.float32)
    n_iter = np.zeros(npix, dtype=np.int32)
    status = np.full(npix, STATUS_BAD_INPUT, dtype=np.uint8)
    synthetic = np.full((npix, 4, stokes.shape[2]), np.nan, dtype=np.float32) if ctx.synthetic else None
    init_s = 0.0
    if good.any():
        sub = np.ascontiguousarray(stokes[good]) if not good.all() else stokes
        ti = time.perf_counter()
        init = ctx.init.initial_guess(sub, wavelength, start=start, stop=stop)
        init_s = time.perf_counter() - ti
        res: ChunkResult = backend.invert(sub, wavelength, init)
        ngood = int(good.sum())
        if tuple(res.names) != tuple(names) or res.npix != ngood:
            raise ChunkTaskError(
                f"chunk {index}: backend {backend.name!r} returned {res.npix} pixels with parameters "
                f"{list(res.names)}, expected {ngood} pixels with {list(names)}"
            )
        # float32 storage: an unconstrained parameter's sigma (or a huge chi2)
        # beyond 3.4e38 is stored as inf, on purpose and without a warning
        with np.errstate(over="ignore"):
            params[good] = res.params
            sigma[good] = res.sigma
            chi2[good] = res.chi2
            n_iter[good] = res.n_iter
            status[good] = res.status
            if synthetic is not None:
                syn = res.synthetic
                if syn is None:
                    syn = backend.synthesize(np.asarray(res.params, dtype=np.float64), wavelength)
                synthetic[good] = syn
    t3 = time.perf_counter()
    return ChunkOutput(
        index=index, start=start, stop=stop, params=params, sigma=sigma, chi2=chi2,
        n_iter=n_iter, status=status, synthetic=synthetic,
        seconds={"setup": setup_s, "read": t2 - t1, "init": init_s, "invert": t3 - t2 - init_s,
                 "total": t3 - t0},
        worker=_worker_name(),
    )


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
        Pixels per status name (``"ok"``, ``"max-iterations"``, ...).
    times : dict of str to float
        Wall times per phase (``plan``, ``setup``, ``invert``, ``write``,
        ``total``), in s.
    pixels_per_s : float
        Pixels inverted by this run per second of the ``invert`` phase, in px/s.
    workers : int
        Workers of the executor.
    cluster : str
        Cluster kind.
    chunk_pixels : int
        Pixels per chunk.
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
        lines = [
            f"result: {self.output} ({'complete' if self.complete else 'PARTIAL'}: "
            f"{self.chunks_done}/{self.n_chunks} chunks of {self.chunk_pixels} pixels; "
            f"{self.chunks_computed} computed now, {self.chunks_skipped} already done)",
            "pixels: " + ", ".join(f"{k} {v}" for k, v in self.pixels_by_status.items()),
            f"cluster: {self.cluster} with {self.workers} worker(s); {self.pixels_per_s:.0f} px/s",
            "wall time: " + ", ".join(f"{k} {t.get(k, 0.0):.2f} s" for k in ("plan", "setup", "invert", "write", "total")),
        ]
        for index, err in sorted(self.failed.items()):
            first = err.strip().splitlines()[-1] if err.strip() else err
            lines.append(f"chunk {index} FAILED: {first}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def package_versions() -> dict[str, str]:
    """Versions of stokesflow and the packages that shape its results."""
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
        return dict(options)
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
    )


def _error_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    tb = exc.__traceback__
    if tb is not None:
        frames = traceback.extract_tb(tb)
        if frames:
            last = frames[-1]
            text += f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    return text[:_MAX_ERROR_CHARS]


def _trial_pixels(obs: Any, n: int = 256) -> np.ndarray | None:
    """Up to one finite pixel from the start of the field (for the driver's trial inversion)."""
    stop = min(obs.npix, n)
    stokes = obs.read_pixels(0, stop)
    good = np.flatnonzero(np.isfinite(stokes).all(axis=(1, 2)))
    return stokes[good[:1]] if good.size else None


def _fingerprint(obs: Any, backend: Backend, provider: InitProvider, chunk_pixels: int, synthetic: bool) -> dict[str, Any]:
    return {
        "observation": obs.fingerprint(),
        "shape": [int(obs.ny), int(obs.nx), int(obs.nw)],
        "backend": backend.name,
        "backend_options": _options_as_dict(backend.options),
        "parameters": list(backend.parameter_names),
        "init": provider.describe(),
        "chunk_pixels": int(chunk_pixels),
        "synthetic": bool(synthetic),
    }


def _dask_settings(spec: Any) -> Any:
    """Context applying :data:`_DASK_SETTINGS` for the Dask-based cluster kinds."""
    if spec.kind == "serial":
        return contextlib.nullcontext()
    import dask
    import distributed  # noqa: F401 - loads distributed's defaults, which set() must not shadow

    return dask.config.set(_DASK_SETTINGS)


def _is_driver(spec: Any) -> bool:
    """Whether this process will run the body of ``open_executor`` (always, except under mpiexec)."""
    from stokesflow.clusters import client_rank, mpi_rank

    return spec.kind != "mpi" or mpi_rank() in (None, client_rank(spec))


def _drive(
    ex: Any,
    ctx: Any,
    pending: list[Chunk],
    window: int,
    store: ResultStore,
    progress: Progress,
    worker_seconds: dict[str, float],
) -> None:
    """Submit ``pending`` with at most ``window`` in flight; write results as they come."""
    queue = deque(pending)
    inflight: dict[Any, Chunk] = {}

    def top_up() -> None:
        while queue and len(inflight) < window:
            chunk = queue.popleft()
            inflight[ex.submit(invert_chunk, ctx, chunk.index, chunk.start, chunk.stop)] = chunk

    top_up()
    # ``as_completed`` over a fixed set: each round covers the futures in
    # flight when it starts; replacements submitted meanwhile join the next.
    while inflight:
        for fut in ex.as_completed(list(inflight)):
            chunk = inflight.pop(fut)
            exc = fut.exception()
            if exc is not None:
                text = _error_text(exc)
                store.record_error(chunk.index, text)
                log.warning("chunk %d (pixels %d..%d) failed: %s", chunk.index, chunk.start, chunk.stop, text)
                progress.update(chunk.npix, failed=True)
            else:
                out: ChunkOutput = fut.result()
                store.write_chunk(out)
                for k, v in out.seconds.items():
                    worker_seconds[k] = worker_seconds.get(k, 0.0) + float(v)
                log.debug("chunk %d done by %s in %.3f s", chunk.index, out.worker, out.seconds.get("total", 0.0))
                progress.update(chunk.npix)
            del fut
            top_up()


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------
def run_inversion(
    config: Config,
    *,
    backend: Backend | None = None,
    progress_stream: TextIO | None = None,
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

    Returns
    -------
    RunSummary
        ``partial`` is true when some chunks failed after their retries.

    Raises
    ------
    ObservationError, BackendError, ConfigurationError, ClusterError, StoreError, InitError
        Bad input or configuration, raised before any chunk is inverted.
    """
    t_start = time.perf_counter()
    # -- 1. validate everything before any work ---------------------------------
    spec = config.cluster_spec()
    obs = _open_observation(config)
    if backend is None:
        backend = get_backend(config.run.backend, config.backend_options())
    backend = backend.for_observation(dict(obs.meta))
    provider = get_provider(config.run.init, config.init_options()).bind(backend)
    out_path = Path(config.output.path)
    workers_hint = spec.workers or (1 if spec.kind == "serial" else os.cpu_count() or 1)
    chunk_pixels = config.run.chunk_pixels
    if config.output.resume:
        if not out_path.exists():
            raise ResumeError(
                f"--resume was given but result file {str(out_path)!r} does not exist; "
                "drop --resume to start a new run"
            )
        if chunk_pixels == 0:  # automatic: keep the chunks of the interrupted run
            chunk_pixels = int(inspect_result(out_path)["chunk_pixels"])
    elif out_path.exists() and not config.output.overwrite:
        raise StoreError(
            f"result file {str(out_path)!r} already exists; pass --resume to finish that run, "
            "--overwrite to replace it, or choose another --out"
        )
    elif not out_path.parent.exists():
        raise StoreError(f"cannot create result file {str(out_path)!r}: folder {str(out_path.parent)!r} does not exist")
    if chunk_pixels == 0:
        chunk_pixels = auto_chunk_pixels(obs.npix, workers_hint)
    plan = plan_chunks(obs.ny, obs.nx, chunk_pixels)
    fingerprint = _fingerprint(obs, backend, provider, plan.chunk_pixels, config.output.synthetic)
    if config.output.resume:
        plan, _ = ResultStore.check_resume(out_path, fingerprint)
    # the backend must accept the lines, instrument and wavelengths: set it up
    # and invert one pixel here, so a bad input fails now and not in every task
    backend.setup()
    trial = _trial_pixels(obs)
    wavelength = np.asarray(obs.wavelength, dtype=np.float64)
    if trial is not None:
        try:
            backend.invert(trial, wavelength, provider.initial_guess(trial, wavelength, start=0, stop=1))
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(
                f"backend {backend.name!r} cannot invert {obs.path}: trial inversion of one pixel "
                f"failed with {type(exc).__name__}: {exc}"
            ) from exc
    token = hashlib.sha256(pickle.dumps(backend)).hexdigest()[:16]
    _WORKER_BACKENDS.setdefault(token, backend)  # the driver is set up already (serial runs here)
    trial_pair = (trial, wavelength) if trial is not None else None
    ctx = TaskContext(backend, token, obs, provider, config.output.synthetic, trial_pair)
    t_plan = time.perf_counter() - t_start
    if _is_driver(spec):  # under mpiexec every rank gets here; one line is enough
        log.info(
            "%s: %d x %d pixels, %d wavelengths; backend %s, init %s; %d chunks of %d pixels",
            obs.path, obs.ny, obs.nx, obs.nw, backend.name, provider.name, plan.n_chunks, plan.chunk_pixels,
        )

    # -- 2. executor and worker set-up --------------------------------------------
    from stokesflow.clusters import open_executor

    t0 = time.perf_counter()
    # every rank of an mpiexec job passes here, so the Dask settings reach all workers
    with _dask_settings(spec), open_executor(spec) as ex:
        # under mpiexec only the driver rank gets here
        if config.output.resume:
            store = ResultStore.resume(out_path, fingerprint=fingerprint, parameters=backend.parameters)
        else:
            store = ResultStore.create(
                out_path, plan=plan, parameters=backend.parameters, fingerprint=fingerprint,
                nw=obs.nw if config.output.synthetic else None, overwrite=config.output.overwrite,
                attrs={
                    "config": config.to_toml(),
                    "versions": json.dumps(package_versions()),
                    "backend": backend.name,
                    "backend_options": json.dumps(_options_as_dict(backend.options), default=str),
                    "init": provider.name,
                    "input": str(obs.path),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
        with store:
            skipped = int(store.done.sum())
            pending = store.pending()
            if config.output.resume:
                log.info("resuming %s: %d of %d chunks already done, %d to go",
                         out_path, skipped, plan.n_chunks, len(pending))
            n_workers = max(1, int(ex.n_workers))
            if pending:
                try:
                    ex.run_on_workers(_setup_worker, backend, token, trial_pair)
                except Exception as exc:  # a worker lost during set-up must not end the run
                    log.warning(
                        "worker set-up failed (%s); each worker sets itself up in its first task instead",
                        _error_text(exc),
                    )
            t_setup = time.perf_counter() - t0
            window = config.run.max_in_flight or default_in_flight(n_workers, spec.threads_per_worker)
            worker_seconds: dict[str, float] = {}
            sizes = plan.stops() - plan.starts()
            done_at_start = store.done
            progress = Progress(
                plan.npix, initial=int(sizes[done_at_start].sum()), n_chunks=plan.n_chunks,
                chunks_done=skipped, mode=config.run.progress,
                interval_s=config.run.log_interval_s, stream=progress_stream,
            )
            t1 = time.perf_counter()
            try:
                _drive(ex, ctx, pending, window, store, progress, worker_seconds)
            finally:
                progress.close()
                t_invert = time.perf_counter() - t1
                times = {"plan": t_plan, "setup": t_setup, "invert": t_invert, "write": store.write_seconds,
                         "total": time.perf_counter() - t_start}
                store.finalize({f"time_{k}_s": v for k, v in times.items()})
            counts = store.status_counts()
            summary = RunSummary(
                output=str(out_path), n_chunks=plan.n_chunks, chunks_done=int(store.done.sum()),
                chunks_computed=store.computed, chunks_skipped=skipped, failed=store.errors,
                pixels=plan.npix,
                pixels_by_status={STATUS_NAMES.get(k, str(k)): v for k, v in sorted(counts.items())},
                times=times,
                pixels_per_s=float(sizes[store.done & ~done_at_start].sum()) / t_invert if t_invert > 0 else 0.0,
                workers=n_workers, cluster=spec.kind, chunk_pixels=plan.chunk_pixels,
                worker_seconds=worker_seconds,
            )
    if summary.failed:
        log.warning("%d chunk(s) failed; the result is partial", len(summary.failed))
    return summary
