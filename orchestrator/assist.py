"""``stokesflow assist``: the assisted-inversion loop on one scheduler.

Phases (each one resumable; a rerun with the same arguments skips the
finished phases and, inside a phase, the finished chunks or epochs):

1. ``subset``: k-means (scipy's ``kmeans2``) of the normalised spectra of the
   whole field into ``clusters`` groups (the field read by blocks of rows, each
   block a task on the executor, twice: :func:`stokesflow.nn_init.kmeans.cluster_subset`;
   the driver fits the centroids on a sample), then a subset of ``subset`` x npix
   pixels drawn from every cluster (in proportion, with a floor per cluster),
   written as a 1 x n observation ``DIR/subset_obs.h5`` (with the flat indices
   in ``/assist/index`` and the cluster map in ``/assist/labels``).
   ``subset_method="box"`` takes a same-size corner box instead (for comparison).
2. ``reference``: the subset inverted with the reference strategy
   (:func:`default_reference_options`: ME ``n_starts=4, max_iter=100``; SIR and
   DeSIRe ``strategy=reference``) -> ``DIR/subset.h5``.
3. ``train``: the network trained on those results, as a task on the
   executor (:func:`loop_training_settings`: the budget grows with the field;
   ``train_options`` over it) -> ``DIR/model.pt``. With ``model="kmeans"`` the subset is
   inverted with ``--synthetic`` and its well-fitted pixels become a look-up
   database of representative profiles -> ``DIR/kmeans.h5``.
4. ``me_seed`` (``me_seed`` ``"merge"`` or ``"alone"``; a backend with
   ``seed_parameters``: SIR, DeSIRe): the
   whole field inverted with the ME backend (its defaults; about 1000x cheaper
   per pixel than SIR) -> ``DIR/me_seed.h5``.
5. ``predict``: the network's parameters (or the best-matching
   representative's, with its chi2 as a quality map) for every pixel, as
   chunk tasks -> ``DIR/guess.h5``. With ``me_seed="merge"``: the network's guesses
   go to ``DIR/network_guess.h5`` and ``DIR/guess.h5`` is that file with the
   backend's ``seed_parameters`` (B, inclination, azimuth, vlos) taken from
   the ME result, constant over the nodes, where its fit is usable
   (:func:`stokesflow.orchestrator.predict.seed_guess`, which reads the ME
   result as ``--init previous`` does): the short phase starts from the ME
   field and velocity and the network's T, vmic and vmac. With
   ``me_seed="alone"`` the short phase starts from ``DIR/me_seed.h5`` itself
   (the ME field and velocity, the guess model's T, vmic and vmac).
6. ``assisted``: the whole field inverted from those guesses (``--init
   previous -I file=guess.h5``, or ``me_seed.h5``) with the short strategy
   (:func:`default_short_options`: ME one start and the statistical step rule
   ``sigma_tol``; SIR and DeSIRe ``strategy=assisted_me``, one cycle) -> ``DIR/assisted.h5``.
   SIR's and DeSIRe's default is ``me_seed="alone"`` (:data:`ME_SEED_DEFAULT`, measured).
7. ``baseline`` (with ``baseline=True``): the whole field inverted the
   classical way (:func:`default_baseline_options`: ME its defaults; SIR and
   DeSIRe ``strategy=reference`` from the built-in guess model) -> ``DIR/baseline.h5``.

With a depth-stratified backend (SIR) the network learns the backend's init
columns (its log-tau nodes, :func:`stokesflow.orchestrator.train.training_columns`),
``DIR/guess.h5`` holds its guesses at those nodes, and the figures of
``summary.json`` (agreement, truth) compare the stratified maps at
``log tau = -1`` (:data:`SUMMARY_LOG_TAU`, the depth of the truth maps of the
shared SIR sample).

Then ``DIR/summary.json`` (seconds per phase under ``phases``, the driver
process's CPU seconds per phase under ``phases_cpu``, total LM
iterations under ``lm_iterations``, chi2, Pearson correlations against the
baseline and the truth, speed-ups: ``speedup.wall_assisted`` is the
baseline's seconds over those of ``assisted`` plus ``me_seed``) and ``DIR/report/``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from stokesflow.orchestrator.errors import OrchestratorError

__all__ = ["PHASES", "SHORT_SIGMA_TOL", "ASSIST_STRATEGIES", "ME_SEED_MODES", "ME_SEED_DEFAULT", "SUMMARY_LOG_TAU",
           "LARGE_FIELD_PIXELS", "LARGE_FIELD_SAMPLES", "AssistSettings", "loop_training_settings",
           "default_reference_options", "default_short_options", "default_baseline_options", "make_subset",
           "run_assist", "default_subset_bounds", "default_me_seed"]

log = logging.getLogger("stokesflow.assist")

PHASES = ("subset", "reference", "train", "me_seed", "predict", "assisted", "baseline")


#: Statistical step tolerance of the short strategy [sigma]: the assisted
#: inversion stops once the next, nearly undamped LM step would move every parameter by
#: less than this share of its own 1-sigma uncertainty (``stokesflow.lm_solver.LMOptions.sigma_tol``).
#: A start from a network trained on the reference inversions lies in the right
#: valley already; what the relative chi2 rule adds from there is a slow crawl
#: along the flat directions (eta0, source function, damping of six HMI
#: filtergrams) that moves no parameter by a meaningful amount. Measured on the
#: HMI-like 256 x 256 mixed scene from the CNN's guesses, against the baseline, with the
#: rule testing the next step (the ME backend alone on the loop's ``guess.h5`` and on the
#: classical estimates, CPU, min of 2-3 runs on a quiet machine): 0.03 / 0.04 / 0.05 /
#: 0.06 / 0.08 sigma give 2.29 / 2.80 / 3.27 / 3.66 / 4.21x fewer LM iterations and
#: 2.09 / 2.59 / 2.98 / 3.47 / 3.97x less CPU,
#: median chi2 +0.48 / +1.07 / +1.61 / +2.00 / +2.58 % (the issue allows 2 %), pixels off
#: the truth by > 100 G 780 / 688 / 625 / 586 / 554 (baseline 927). 0.05 costs the chi2 that
#: 0.04 cost under the earlier rule (last accepted step: +1.68 %). On the other data at
#: 0.04 / 0.05: Hinode-like 256 x 256 2.22 / 2.24x less CPU, chi2 0.00 / 0.00 %; the pyMilne
#: samples (another ME code) HMI 2.54 / 2.69x, +0.14 / +0.26 %, Hinode 2.29 / 2.33x, -0.01 %.
SHORT_SIGMA_TOL = 0.05


#: Backend options of the loop's inversions per backend: ``reference`` (the subset, phase 2),
#: ``short`` (the assisted inversion, phase 5) and ``baseline`` (phase 6). A backend not listed gets
#: its defaults in every phase (give ``--reference-option`` / ``--short-option`` then). The ME
#: short strategy also gets ``sigma_tol`` (:func:`default_short_options`). SIR and DeSIRe: one
#: cycle from the network's guess (``assisted_me``: the reference's last cycle alone, which also
#: fits inclination, azimuth, vmic and vmac with one node) against the three-cycle ``reference``
#: strategy from the built-in guess model. Measured with SIR2017 on a 16 x 16 crop of the shared
#: SIR sample (subset 128 pixels): ``assisted`` 3.35x less wall time at median chi2 +137 %,
#: ``assisted_me`` 2.63x at +7.3 %: a network trained on a small subset misplaces the angles, and
#: ``assisted`` keeps them fixed.
ASSIST_STRATEGIES: dict[str, dict[str, dict[str, Any]]] = {
    "me": {"reference": {"n_starts": 4, "max_iter": 100}, "short": {"n_starts": 1}, "baseline": {}},
    "sir": {"reference": {"strategy": "reference"}, "short": {"strategy": "assisted_me"},
            "baseline": {"strategy": "reference"}},
    "desire": {"reference": {"strategy": "reference"}, "short": {"strategy": "assisted_me"},
               "baseline": {"strategy": "reference"}},
}

#: How the short phase may be seeded from an ME inversion of the whole field (phase ``me_seed``):
#: ``"off"`` (the network's guesses alone), ``"merge"`` (the ME field and velocity, the backend's
#: ``seed_parameters``, with the network's other columns) or ``"alone"`` (the ME result alone: the
#: guess model's T, vmic and vmac; the network's guesses are not used by the short phase).
ME_SEED_MODES = ("off", "merge", "alone")

#: The loop's ME seed per backend (:data:`ME_SEED_MODES`); a backend not listed: ``"off"``. Only a
#: backend with ``seed_parameters`` takes a seed (SIR, DeSIRe). SIR: ``"alone"``, measured with
#: SIR2017 (``benchmarks/classical_scaling.py --parts e``, 2 local workers, load 1-6) against the
#: ``reference`` baseline, ME inversion counted: on a 16 x 16 crop of the shared SIR sample
#: (256 px) ``off`` 2.68x less wall time at median chi2 +33.7 % with 13 failed pixels, ``merge``
#: 2.42x at +29.9 % (11 failed), ``alone`` 2.91x (2.25x at load 6) at +0.0 % (none failed; the
#: whole ``stokesflow assist --backend sir --baseline`` loop: 3.21x, 1.65x counting every phase);
#: on the whole 24 x 24 sample (576 px) 3.19x at +0.8 % (20 failed), 3.12x at +0.5 % (20 failed), 2.87x at -1.2 %
#: (none failed). The failures start from the network's vmic of exactly 0 (SIR stops: "the
#: microturbulence is zero somewhere"; now raised to ``VMIC_FLOOR``: with it ``off`` 2.44x at +8.5 %,
#: ``merge`` 2.41x at +0.5 %, ``alone`` 2.61x at +0.0 % on the 16 x 16 crop). DeSIRe 5.06 (Fe I,
#: LTE; ``stokesflow assist --backend desire --baseline --me-seed alone --cluster local -w 2`` on
#: the same 16 x 16 crop, load ~2): ``alone`` 2.25x less wall time (assisted + ME against the
#: baseline), median chi2 38.8 against the baseline's 44.0, no failed pixel.
ME_SEED_DEFAULT: dict[str, str] = {"sir": "alone", "desire": "alone"}

#: Depth [log tau_500] at which the summary compares depth-stratified results (agreement, truth).
SUMMARY_LOG_TAU = -1.0


def _backend_has_option(backend: str, name: str) -> bool:
    """Whether ``[backend.<backend>]`` accepts ``name`` (asked of the ME backend's options only)."""
    if backend != "me":
        return False
    import dataclasses

    from stokesflow.backends.me.backend import MEOptions

    return name in {f.name for f in dataclasses.fields(MEOptions)}


def _strategy(backend: str, phase: str) -> dict[str, Any]:
    return dict(ASSIST_STRATEGIES.get(backend, {}).get(phase, {}))


def default_reference_options(backend: str = "me") -> dict[str, Any]:
    """Options of the reference inversion of the subset (phase ``reference``) for ``backend``."""
    return _strategy(backend, "reference")


def default_baseline_options(backend: str = "me") -> dict[str, Any]:
    """Options of the classical inversion of the whole field (phase ``baseline``) for ``backend``."""
    return _strategy(backend, "baseline")


def default_short_options(backend: str = "me") -> dict[str, Any]:
    """Options of the short strategy (phase ``assisted``) for ``backend``.

    ME: one start (``n_starts = 1``; the backend's retries of misfit pixels stay
    on, they guard against a guess in a wrong minimum) and the statistical step
    rule ``sigma_tol = SHORT_SIGMA_TOL``. SIR, DeSIRe: ``strategy=assisted_me``
    (one cycle). See :data:`ASSIST_STRATEGIES`.
    """
    opts = _strategy(backend, "short")
    if _backend_has_option(backend, "sigma_tol"):
        opts["sigma_tol"] = SHORT_SIGMA_TOL
    return opts


def default_me_seed(backend: str = "me") -> str:
    """The loop's ME seed for ``backend`` (:data:`ME_SEED_DEFAULT`, one of :data:`ME_SEED_MODES`)."""
    return ME_SEED_DEFAULT.get(backend, "off")


def default_subset_bounds(backend: str = "me", model: str = "cnn") -> tuple[int, int]:
    """Bounds [pixels] on the training subset of ``backend`` and ``model``: ``(subset_min, subset_max)``.

    The ME backend's CNN: :data:`~stokesflow.nn_init.training.SUBSET_MIN_PIXELS` to
    :data:`~stokesflow.nn_init.training.SUBSET_MAX_PIXELS` (the guesses depend on the number of
    training pixels, not on the share of the field; measured in ``benchmarks/assist_loop.py``).
    Otherwise (a classical code's seconds per pixel, the k-means look-up's cost per database
    profile, the U-Net's patches) the share alone: ``(64, 2**62)``.
    """
    if backend == "me" and model == "cnn":
        from stokesflow.nn_init.training import SUBSET_MAX_PIXELS, SUBSET_MIN_PIXELS

        return SUBSET_MIN_PIXELS, SUBSET_MAX_PIXELS
    return 64, 2 ** 62


@dataclass(frozen=True)
class AssistSettings:
    """Settings of the loop (what a rerun must repeat to resume).

    Attributes
    ----------
    subset : float
        Share of the field's pixels inverted as the training set (0 < subset <= 1), clamped to
        [``subset_min``, ``subset_max``] pixels (:func:`stokesflow.nn_init.training.subset_pixels`).
    subset_min, subset_max : int, optional
        Bounds on the subset's pixel count. Default (None): :func:`default_subset_bounds`.
    subset_method : str
        ``"clusters"`` (default) or ``"box"`` (a same-size corner box, for comparison).
    clusters : int
        k of the k-means.
    model : str
        ``"cnn"`` (a network per pixel), ``"unet"`` (an image network trained on patches of the
        field that sample every cluster) or ``"kmeans"`` (look-up in the inverted subset).
    baseline : bool
        Also invert the whole field the classical way.
    epochs : int
        Most training epochs (early stopping ends sooner).
    threads : int
        torch threads of the training and prediction tasks; 0: the training every core of its
        worker (it runs alone, :func:`stokesflow.orchestrator.train.task_threads`), each prediction
        task the worker's share of the cores.
    seed : int
    backend : str
    backend_options : dict
        Options of every run (``-B``).
    reference_options : dict, optional
        Added for the reference inversion of the subset. Default (None):
        :func:`default_reference_options` of ``backend``.
    short_options : dict, optional
        Added for the assisted inversion. Default (None):
        :func:`default_short_options` of ``backend``: one start and, with the
        ME backend, the statistical step rule ``sigma_tol``; SIR ``strategy=assisted_me``.
    baseline_options : dict, optional
        Added for the baseline. Default (None): :func:`default_baseline_options`
        of ``backend``. Not part of :meth:`identity` (like ``baseline``).
    me_seed : str, optional
        One of :data:`ME_SEED_MODES`: ``"merge"`` or ``"alone"`` invert the whole field with the
        ME backend (phase ``me_seed``) and start the short phase from the ME result's field and
        velocity (the backend's ``seed_parameters``), with the network's other columns
        (``"merge"``) or the guess model's (``"alone"``); ``"off"``: the network's guesses alone.
        Not ``"off"`` only for a backend with ``seed_parameters`` (SIR, DeSIRe). Default (None):
        :func:`default_me_seed` of ``backend``.
    cluster : dict
        The ``[cluster]`` table.
    input_options : dict
        How to read the observation: keys of ``invert``'s ``[input]`` table (``format``, ``axes``,
        ``wavelength``, ``lines``, ``instrument``, ``noise``, ``continuum``, ``reader_options``),
        used by every phase that reads it (subset, predict, the whole-field inversions).
    train_options : dict
        Training settings for phase 3, over the loop's own (:func:`loop_training_settings`): keys of
        :class:`stokesflow.nn_init.training.TrainSettings` (cnn) or
        :class:`stokesflow.nn_init.unet.UNetSettings` (unet), e.g. ``max_samples``, ``lr``, ``batch``.
    chunk_pixels : int
        0: automatic (the run's, with the backend's ``chunk_plan``: SIR a few pixels per chunk).
    progress : str
    report : bool
        Write ``DIR/report/``.
    """

    subset: float = 0.05
    subset_min: int | None = None
    subset_max: int | None = None
    subset_method: str = "clusters"
    clusters: int = 16
    model: str = "cnn"
    baseline: bool = False
    epochs: int = 200
    threads: int = 0
    seed: int = 0
    backend: str = "me"
    backend_options: dict[str, Any] = field(default_factory=dict)
    reference_options: dict[str, Any] | None = None
    short_options: dict[str, Any] | None = None
    baseline_options: dict[str, Any] | None = None
    me_seed: str | None = None
    cluster: dict[str, Any] = field(default_factory=lambda: {"kind": "local"})
    input_options: dict[str, Any] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)
    chunk_pixels: int = 0
    progress: str = "auto"
    report: bool = True

    def __post_init__(self) -> None:
        if self.reference_options is None:
            object.__setattr__(self, "reference_options", default_reference_options(self.backend))
        if self.short_options is None:
            object.__setattr__(self, "short_options", default_short_options(self.backend))
        if self.baseline_options is None:
            object.__setattr__(self, "baseline_options", default_baseline_options(self.backend))
        if self.me_seed is None:
            object.__setattr__(self, "me_seed", default_me_seed(self.backend))
        if self.me_seed not in ME_SEED_MODES:
            raise OrchestratorError(f"me_seed must be one of {', '.join(ME_SEED_MODES)}, got {self.me_seed!r}")
        if not 0 < self.subset <= 1:
            raise OrchestratorError(f"--subset must be a share of the pixels in (0, 1], got {self.subset}")
        lo, hi = default_subset_bounds(self.backend, self.model)
        object.__setattr__(self, "subset_min", lo if self.subset_min is None else int(self.subset_min))
        object.__setattr__(self, "subset_max", hi if self.subset_max is None else int(self.subset_max))
        if not 64 <= self.subset_min <= self.subset_max:
            raise OrchestratorError(f"subset bounds must satisfy 64 <= subset_min <= subset_max, got "
                                    f"subset_min={self.subset_min}, subset_max={self.subset_max}")
        if self.subset_method not in ("clusters", "box"):
            raise OrchestratorError(f"subset_method must be 'clusters' or 'box', got {self.subset_method!r}")
        if self.model not in ("cnn", "unet", "kmeans"):
            raise OrchestratorError(f"--model {self.model!r} is not available; choose cnn, unet or kmeans")
        if self.clusters < 1 or self.epochs < 1:
            raise OrchestratorError(f"clusters and epochs must be >= 1, got {self.clusters} and {self.epochs}")
        if self.train_options and self.model != "kmeans":  # a wrong key is refused before any phase runs
            from stokesflow.nn_init.providers import InitError

            try:
                _settings_class(self.model)(**{"epochs": self.epochs, **self.train_options})
            except InitError as exc:
                raise OrchestratorError(f"--train-option: {exc}") from None

    def identity(self) -> dict[str, Any]:
        """What must match for a rerun to resume (not the reporting settings)."""
        d = asdict(self)
        for k in ("progress", "report", "baseline", "baseline_options", "cluster", "threads"):
            d.pop(k)
        for k in ("input_options", "train_options"):
            if not d[k]:  # a loop folder of a version without them still resumes
                d.pop(k)
        return d


#: Fields of at least this many pixels (about 1448^2) train the loop's CNN on twice the samples
#: (:data:`LARGE_FIELD_SAMPLES`): there the extra training costs less than it saves (see
#: :func:`loop_training_settings`).
LARGE_FIELD_PIXELS = 1 << 21

#: ``max_samples`` of the loop's CNN on a field of :data:`LARGE_FIELD_PIXELS` or more (twice
#: :class:`~stokesflow.nn_init.training.TrainSettings`' 245,760).
LARGE_FIELD_SAMPLES = 491_520


def _settings_class(model: str) -> Any:
    if model == "unet":
        from stokesflow.nn_init.unet import UNetSettings

        return UNetSettings
    from stokesflow.nn_init.training import TrainSettings

    return TrainSettings


def loop_training_settings(s: AssistSettings, npix: int) -> dict[str, Any]:
    """The training settings of phase 3 for a field of ``npix`` pixels.

    ``epochs`` and ``seed`` from ``s``; no polarity mirror images (the subset samples every
    cluster of the very field the network predicts, so it already holds the field's polarities,
    and mirrored samples would only dilute the fixed training budget: Hinode-like 256^2 2.16x ->
    2.00x fewer iterations with them; HMI-like unchanged; a network meant for other fields,
    ``stokesflow train``, keeps them); for the CNN on a field of :data:`LARGE_FIELD_PIXELS` or
    more, ``max_samples`` = :data:`LARGE_FIELD_SAMPLES`; then ``s.train_options``.

    The budget by field size: twice the samples gave guesses that need 8.5 % fewer LM iterations
    (HMI-like 256^2: 5.51 -> 5.04 per pixel, median chi2 against the baseline +1.65 % -> +0.97 %)
    and 10 % fewer Hinode-like (3.91 -> 3.50), for 4-5 s more training on one core HMI-like and
    42 s Hinode-like (the cost per sample grows with the wavelength points, like the
    inversion's cost per pixel): the assisted inversion saves about 2 and 18 us per pixel, so
    the doubling pays off beyond about 2 and 2.4 million pixels. Four times the samples: 4.99
    per pixel, little more.
    """
    out: dict[str, Any] = {"epochs": s.epochs, "seed": s.seed, "mirror": False}
    if s.model == "cnn" and npix >= LARGE_FIELD_PIXELS:
        out["max_samples"] = LARGE_FIELD_SAMPLES
    return {**out, **s.train_options}


# ---------------------------------------------------------------------------
# phase 1: the subset
# ---------------------------------------------------------------------------
#: Bytes of Stokes profiles the subset phase reads at a time: it never holds the whole field (k-means
#: by blocks, :func:`stokesflow.nn_init.kmeans.cluster_field`), so a field larger than memory works.
SUBSET_BLOCK_BYTES = 1 << 24


def _block_pixels(obs: Any) -> int:
    """Pixels per read of the subset phase: whole rows of about :data:`SUBSET_BLOCK_BYTES` (one row at least)."""
    return max(1, SUBSET_BLOCK_BYTES // max(1, obs.nx * 4 * obs.nw * 4)) * obs.nx


#: Most pixels the k-means centroids are fitted on, and the bytes their float32 features may take:
#: the driver holds the sample (and scipy's float64 copy of it, 3x these bytes in all), so a
#: spectrum of thousands of points (DKIST) gets fewer sample pixels, never fewer than
#: :data:`SUBSET_SAMPLE_MIN`. HMI's 6 and Hinode/SP's 112 points keep the 50,000.
SUBSET_SAMPLE_PIXELS, SUBSET_SAMPLE_BYTES, SUBSET_SAMPLE_MIN = 50_000, 1 << 28, 4096


def _sample_pixels(obs: Any) -> int:
    """Pixels of the k-means sample for ``obs``: :data:`SUBSET_SAMPLE_PIXELS` within :data:`SUBSET_SAMPLE_BYTES`."""
    return int(np.clip(SUBSET_SAMPLE_BYTES // (4 * obs.nw * 4), SUBSET_SAMPLE_MIN, SUBSET_SAMPLE_PIXELS))


def _executor_map(ex: Any) -> Callable[[Callable[..., Any], list[tuple[Any, ...]]], Iterator[Any]]:
    """A :data:`stokesflow.nn_init.kmeans.BlockMap` over the open executor ``ex``: every block a task
    (all submitted at once), the results in the order of the tasks."""
    def run(fn: Callable[..., Any], tasks: list[tuple[Any, ...]]) -> Iterator[Any]:
        futures = [ex.submit(fn, *args) for args in tasks]
        for fut in futures:
            yield ex.result(fut)
    return run


#: Side of the patches of a unet's training subset [pixels].
UNET_PATCH = 16


def _patch_subset(labels: np.ndarray, valid: np.ndarray, ny: int, nx: int, n: int, seed: int) -> np.ndarray:
    """Flat indices (npatch, P, P) of patches that sample every cluster, about ``n`` pixels in all.

    The field is cut into P x P blocks (P = :data:`UNET_PATCH`, smaller for a smaller field); blocks
    are taken round-robin over the clusters, rarest first, each a random not-yet-taken block holding
    pixels of that cluster, until the patches hold ``n`` pixels.
    """
    p = int(min(UNET_PATCH, ny, nx))
    rng = np.random.default_rng(seed)
    lab = np.where(valid, labels, -1).reshape(ny, nx)
    blocks = [(y, x) for y in range(0, ny - p + 1, p) for x in range(0, nx - p + 1, p)]
    want = min(len(blocks), max(1, int(np.ceil(n / (p * p)))))
    holds = {}
    for b, (y, x) in enumerate(blocks):
        for c in np.unique(lab[y:y + p, x:x + p]):
            if c >= 0:
                holds.setdefault(int(c), []).append(b)
    order = sorted(holds, key=lambda c: len(holds[c]))
    taken: list[int] = []
    while len(taken) < want:
        before = len(taken)
        for c in order:
            free = [b for b in holds[c] if b not in taken]
            if free and len(taken) < want:
                taken.append(int(rng.choice(free)))
        if len(taken) == before:
            break
    yy, xx = np.mgrid[0:p, 0:p]
    return np.stack([(blocks[b][0] + yy) * nx + blocks[b][1] + xx for b in taken])


def make_subset(obs: Any, out: Path, s: AssistSettings, executor: Any = None) -> dict[str, Any]:
    """Choose the subset of ``obs`` and write it as a 1 x n observation ``out``; return its description.

    The field is read by blocks of rows, each block a task on ``executor`` (default: in this
    process): twice for a subset drawn from the clusters (the k-means's two passes, the second also
    bringing back the candidates' profiles: :func:`stokesflow.nn_init.kmeans.cluster_subset`), three
    times for the U-Net's patches and the corner box (the k-means, then the subset's profiles). The
    driver fits the centroids on the sample, chooses the subset and writes it. Progress as
    ``s.progress`` says (``"subset progress: ..."`` log lines or a bar).

    For ``model="unet"`` (an image network) the subset is patches (:func:`_patch_subset`) stacked
    into one (npatch (P + 1) - 1) x P observation with a row of NaN pixels between patches (skipped
    by the inversion, masked in training); ``/assist/index`` then holds -1 for those rows.
    """
    import h5py

    from stokesflow.nn_init.kmeans import cluster_field, cluster_subset, gather_rows
    from stokesflow.nn_init.training import subset_pixels
    from stokesflow.orchestrator.io import write_observation
    from stokesflow.orchestrator.progress import Progress

    n = subset_pixels(obs.npix, s.subset, s.subset_min, s.subset_max)
    run = _executor_map(executor) if executor is not None else None
    block = _block_pixels(obs)
    two_reads = s.subset_method == "clusters" and s.model != "unet"
    passes = 2 if two_reads else 3
    progress = Progress(passes * obs.npix, n_chunks=passes * -(-obs.npix // block), mode=s.progress, desc="subset")
    with progress:
        if two_reads:
            _, labels, index, picked = cluster_subset(obs.read_pixels, obs.npix, s.clusters, n, seed=s.seed,
                                                      sample=_sample_pixels(obs), block=block, map_blocks=run,
                                                      on_block=progress.update)
            shape2d = None
        else:
            _, labels = cluster_field(obs.read_pixels, obs.npix, s.clusters, seed=s.seed, sample=_sample_pixels(obs),
                                      block=block, map_blocks=run, on_block=progress.update)
            index, shape2d = _subset_index(obs, labels, n, s)
            picked = gather_rows(obs.read_pixels, obs.npix, index, obs.nw, block=block, map_blocks=run,
                                 on_block=progress.update)
    meta = obs.meta
    truth = obs.read_truth()
    filters = meta.get("filters")
    shape = shape2d or (1, index.size)

    def take(v: Any) -> np.ndarray:
        a = np.asarray(v, dtype=np.float64).reshape(-1)
        return np.where(index >= 0, a[np.maximum(index, 0)], np.nan).reshape(shape)

    write_observation(
        out, picked.reshape(shape + picked.shape[1:]), obs.wavelength,
        {"instrument": meta.get("instrument", "generic"), "lines": ",".join(obs.lines), "noise": meta.get("noise"),
         "source": str(obs.path)},
        {k2: take(v) for k2, v in (truth or {}).items()},
        spectral_instrument=meta.get("spectral_instrument"), psf_fwhm=meta.get("psf_fwhm"),
        filters=tuple(filters) if filters is not None else None,
    )
    with h5py.File(out, "a") as h5:
        h5.create_dataset("assist/index", data=index)
        h5.create_dataset("assist/labels", data=labels.reshape(obs.ny, obs.nx).astype(np.int32))
    sizes = np.bincount(labels[labels >= 0])
    return {"pixels": int((index >= 0).sum()), "clusters": int(sizes.size), "cluster_sizes": sizes.tolist(),
            "method": s.subset_method}


def _subset_index(obs: Any, labels: np.ndarray, n: int, s: AssistSettings) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Flat indices of the subset's pixels for the U-Net's patches (-1: a separator pixel) or a corner
    box, and, for an image network, the subset's 2-D shape (None: a 1 x n row)."""
    valid = labels >= 0
    shape2d: tuple[int, int] | None = None
    if s.model == "unet" and s.subset_method == "clusters":
        patches = _patch_subset(labels, valid, obs.ny, obs.nx, n, s.seed)
        p = patches.shape[1]
        sep = np.full((patches.shape[0], 1, p), -1, dtype=np.int64)
        index = np.concatenate([patches, sep], axis=1).reshape(-1, p)[:-1].reshape(-1)
        shape2d = (index.size // p, p)
    else:  # a corner box of about n pixels (the bottom-left corner of the map)
        side_y = min(obs.ny, int(np.ceil(np.sqrt(n * obs.ny / obs.nx))))
        side_x = min(obs.nx, int(np.ceil(n / side_y)))
        yy, xx = np.mgrid[0:side_y, 0:side_x]
        index = (yy * obs.nx + xx).ravel()
        if s.model == "unet":  # the box as an image (its NaN pixels stay, masked in training)
            shape2d = (side_y, side_x)
        else:
            index = index[valid[index]]
    return index, shape2d


# ---------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------
def _phase_outputs(s: AssistSettings) -> dict[str, tuple[str, ...]]:
    """The files (keys of the loop's paths) each phase writes."""
    return {"subset": ("subset_obs",), "reference": ("subset",), "train": ("model",), "me_seed": ("me_seed",),
            "predict": ("guess",) + (("network_guess",) if s.me_seed == "merge" else ()),
            "assisted": ("assisted",), "baseline": ("baseline",)}


def _redo_lost_phases(st: "_State", paths: Mapping[str, Path], s: AssistSettings, d: Path) -> None:
    """A finished phase whose file is gone (deleted to save space, lost in a copy) runs again, with
    every phase after it (they were made from it: their files are removed as stale)."""
    outputs = _phase_outputs(s)
    lost = [(p, paths[k].name) for p in PHASES if st.done(p) for k in outputs[p] if not paths[k].exists()]
    if not lost:
        return
    first = PHASES.index(lost[0][0])
    redo = [p for p in PHASES[first:] if st.done(p)]
    for p in redo:
        for k in outputs[p]:
            paths[k].unlink(missing_ok=True)
    st.forget(redo)
    log.warning("%s: %s of the finished phase %s is missing: running %s again", d, lost[0][1], lost[0][0],
                ", ".join(redo))


class _State:
    """``DIR/summary.json``: finished phases, seconds per phase, arguments; written after every phase."""

    def __init__(self, path: Path, identity: dict[str, Any], input_path: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"input": input_path, "arguments": identity, "done": [], "phases": {}}
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("arguments") != identity or old.get("input") != input_path:
                diff = sorted(k for k in set(identity) | set(old.get("arguments", {}))
                              if identity.get(k) != old.get("arguments", {}).get(k))
                raise OrchestratorError(
                    f"{path.parent} holds an assist run of {old.get('input')} with other arguments "
                    f"(differences: {diff or ['input']}); use another --out folder or --overwrite")
            self.data = old

    def done(self, phase: str) -> bool:
        return phase in self.data["done"]

    def forget(self, phases: Sequence[str]) -> None:
        """Mark ``phases`` as not done (their outputs are gone or stale), and save."""
        self.data["done"] = [p for p in self.data["done"] if p not in phases]
        for p in phases:  # the seconds of the run that is redone no longer describe a file
            self.data["phases"].pop(p, None)
            self.data.get("phases_cpu", {}).pop(p, None)
        self.save()

    def finish(self, phase: str, seconds: float, cpu: float = 0.0, **extra: Any) -> None:
        self.data["phases"][phase] = self.data["phases"].get(phase, 0.0) + seconds
        cpus = self.data.setdefault("phases_cpu", {})
        cpus[phase] = cpus.get(phase, 0.0) + cpu
        self.data["done"].append(phase)
        self.data.update(extra)
        self.save()

    def add_seconds(self, phase: str, seconds: float, cpu: float = 0.0) -> None:
        self.data["phases"][phase] = self.data["phases"].get(phase, 0.0) + seconds
        cpus = self.data.setdefault("phases_cpu", {})
        cpus[phase] = cpus.get(phase, 0.0) + cpu
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".partial")
        tmp.write_text(json.dumps(self.data, indent=1, default=float))
        tmp.replace(self.path)


def _depth_stratified(s: AssistSettings) -> bool:
    """Whether the loop's backend is a depth-stratified classical code (SIR, DeSIRe: seconds per pixel)."""
    from stokesflow.backends import get_backend_class

    return bool(getattr(get_backend_class(s.backend, dict(s.backend_options)), "depth_stratified", False))


def _invert(s: AssistSettings, obs_path: Path, out: Path, *, options: dict[str, Any], init: str = "default",
            init_options: dict[str, Any] | None = None, noise: Any = None, synthetic: bool = False,
            executor: Any = None, backend: str | None = None, whole_field: bool = False) -> Any:
    """Invert ``obs_path`` into ``out`` (resumed when it exists) with the loop's backend and
    ``backend_options`` plus ``options``; with ``backend`` given, that backend with ``options`` alone.
    ``whole_field``: ``obs_path`` is the loop's observation, read with ``input_options`` (the subset
    file is written by the loop in the HDF5 contract and needs none)."""
    from stokesflow.orchestrator.config import load_config
    from stokesflow.orchestrator.run import run_inversion

    resume = out.exists()
    name, opts = (s.backend, {**s.backend_options, **options}) if backend is None else (backend, dict(options))
    layer: dict[str, Any] = {
        "input": {**(dict(s.input_options) if whole_field else {}), "path": str(obs_path)},
        "output": {"path": str(out), "resume": resume, "overwrite": False, "synthetic": synthetic},
        "run": {"backend": name, "init": init, "progress": s.progress, "chunk_pixels": s.chunk_pixels},
        "cluster": dict(s.cluster),
        "backend": {name: opts},
    }
    if noise is not None:
        layer["input"]["noise"] = noise
    if init_options:
        layer["init"] = {init: dict(init_options)}
    return run_inversion(load_config(None, layer), executor=executor)


def run_assist(input_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
               settings: AssistSettings | None = None, *, overwrite: bool = False,
               on_phase: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or finish) the assisted loop; return the summary written to ``DIR/summary.json``.

    Parameters
    ----------
    input_path : path
        The observation.
    out_dir : path
        ``DIR``; created if missing. A folder holding a run with other
        arguments is refused unless ``overwrite`` (which empties it).
    settings : AssistSettings
    on_phase : callable, optional
        Called with each phase's name before it runs (progress, tests).

    Raises
    ------
    OrchestratorError, BackendError, InitError, ClusterError
        Bad input or configuration, before the phase that meets it.
    """
    from stokesflow.orchestrator.run import open_input

    s = settings or AssistSettings()
    d = Path(out_dir)
    obs = open_input(input_path, s.input_options)
    if s.model == "kmeans" and _depth_stratified(s):
        raise OrchestratorError(f"--model kmeans looks up (ny, nx) parameter maps; backend {s.backend!r} gives "
                                "depth-stratified results: use --model cnn (it learns the backend's log-tau nodes)")
    if s.me_seed != "off" and not _seed_parameters(s):
        raise OrchestratorError(f"me_seed={s.me_seed!r}: backend {s.backend!r} takes no seed from an ME result (no "
                                "seed_parameters); the ME seed is for a depth-stratified backend (sir, desire): "
                                "use me_seed='off'")
    if overwrite and d.exists():
        for f in d.iterdir():
            if f.is_file():
                f.unlink()
    d.mkdir(parents=True, exist_ok=True)
    st = _State(d / "summary.json", s.identity(), str(obs.path))
    model_file = "kmeans.h5" if s.model == "kmeans" else "model.pt"
    paths = {"subset_obs": d / "subset_obs.h5", "subset": d / "subset.h5", "model": d / model_file,
             "guess": d / "guess.h5", "assisted": d / "assisted.h5", "baseline": d / "baseline.h5",
             "me_seed": d / "me_seed.h5", "network_guess": d / "network_guess.h5"}
    ran: list[str] = []
    _redo_lost_phases(st, paths, s, d)

    def phase(name: str, fn: Callable[[], Any]) -> Any:
        if st.done(name):
            log.info("phase %s: already done in %s, skipped", name, d)
            return None
        if on_phase is not None:
            on_phase(name)
        log.info("phase %s ...", name)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            out = fn()
        except BaseException:  # the time spent counts, the phase is not done
            st.add_seconds(name, time.perf_counter() - t0, time.process_time() - c0)
            raise
        st.finish(name, time.perf_counter() - t0, time.process_time() - c0)
        ran.append(name)
        log.info("phase %s done in %.1f s", name, time.perf_counter() - t0)
        return out

    def subset(ex: Any) -> None:
        paths["subset_obs"].unlink(missing_ok=True)
        st.data["subset"] = make_subset(obs, paths["subset_obs"], s, executor=ex)

    # Every phase runs on one executor: the workers start once and, under mpiexec, dask-mpi is
    # initialised once and only the driver rank runs the phases (and writes their files).
    from stokesflow.clusters import ClusterSpec, open_executor

    phases = [p for p in PHASES[:-1] if p != "me_seed" or s.me_seed != "off"] + (["baseline"] if s.baseline else [])
    if not all(st.done(p) for p in phases):
        with open_executor(ClusterSpec.from_mapping(dict(s.cluster))) as ex:
            phase("subset", lambda: subset(ex))
            _cluster_phases(s, st, obs, paths, phase, ex)
    summary = _summarise(st, paths, obs, s)
    summary["ran"] = ran
    st.data.update(summary)
    st.save()
    if s.report:
        from stokesflow.orchestrator.assist_report import write_loop_report

        write_loop_report(d, paths, st.data)
    return st.data


def _import_meanwhile(module: str) -> threading.Thread:
    """Import ``module`` on a daemon thread of this (the driver's) process; returns the thread
    (join it before this process may exit: an import cut off at shutdown can crash it).

    The predict phase reads the model on the driver before it plans its tasks, and importing
    torch takes about 1 s; started when the training task goes to a worker, the import overlaps
    the training instead of delaying the prediction (measured on an HMI-like 1024^2 loop on two
    local workers: see the README's assist section). A failed import is left to the phase that
    needs the module, which says how to install it.
    """
    def run() -> None:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - reported by the phase that needs it
            pass

    thread = threading.Thread(target=run, name=f"import {module}", daemon=True)
    thread.start()
    return thread


def _cluster_phases(s: AssistSettings, st: "_State", obs: Any, paths: dict[str, Path],
                    phase: Callable[[str, Callable[[], Any]], Any], ex: Any) -> None:
    """The phases after ``subset``, all on the open executor ``ex``."""
    from stokesflow.orchestrator.predict import predict_observation
    from stokesflow.orchestrator.train import train_model

    phase("reference", lambda: _invert(s, paths["subset_obs"], paths["subset"], options=s.reference_options,
                                       synthetic=s.model == "kmeans", executor=ex))
    noise = _noise_of(paths["subset"]) if obs.meta.get("noise") is None else None

    def train() -> None:
        if s.model == "kmeans":
            from stokesflow.orchestrator.kmeans_db import build_kmeans_database

            st.data["training"] = build_kmeans_database(paths["subset_obs"], paths["subset"], paths["model"])
            return
        # the task trains elsewhere: the driver imports torch meanwhile, for predict
        importing = _import_meanwhile("torch") if ex.kind != "serial" else None
        try:
            summary = train_model([str(paths["subset_obs"])], [str(paths["subset"])], paths["model"],
                                  model=s.model, settings=loop_training_settings(s, obs.npix), cluster=s.cluster,
                                  overwrite=True, threads=s.threads or None, executor=ex)
        finally:
            if importing is not None:
                importing.join()
        st.data["training"] = {k: summary[k] for k in ("pixels", "n_train", "n_val", "epochs", "best_epoch",
                                                        "val_loss", "device", "threads", "history")}
        if summary.get("calibration_curve"):  # the U-Net's intervals, for the loop page
            st.data["training"]["calibration_curve"] = summary["calibration_curve"]

    phase("train", train)
    if s.me_seed != "off":  # the ME inversion of the whole field, with the ME backend's defaults
        phase("me_seed", lambda: _invert(s, Path(obs.path), paths["me_seed"], options={}, noise=noise,
                                         executor=ex, backend="me", whole_field=True))

    def predict() -> None:
        merge = s.me_seed == "merge"
        net = paths["network_guess"] if merge else paths["guess"]
        res = predict_observation(obs.path, paths["model"], net, cluster=s.cluster,
                                  chunk_pixels=s.chunk_pixels, resume=net.exists(),
                                  threads=s.threads or None, executor=ex, input_options=s.input_options,
                                  columns=None if s.model == "kmeans" else _init_columns(s))
        if not res.get("already_complete") or "predict" not in st.data:
            st.data["predict"] = {"pixels_per_s": res["pixels_per_s"], "pixels": res["pixels"]}
        if merge:
            from stokesflow.backends import get_backend
            from stokesflow.orchestrator.predict import seed_guess

            merged = seed_guess(net, paths["me_seed"], paths["guess"], get_backend(s.backend, dict(s.backend_options)))
            st.data["predict"]["me_seed"] = {k: merged[k] for k in ("parameters", "pixels")}

    phase("predict", predict)
    start = paths["me_seed"] if s.me_seed == "alone" else paths["guess"]
    phase("assisted", lambda: _invert(s, Path(obs.path), paths["assisted"], options=s.short_options,
                                      init="previous", init_options={"file": str(start)}, noise=noise,
                                      executor=ex, whole_field=True))
    if s.baseline:
        phase("baseline", lambda: _invert(s, Path(obs.path), paths["baseline"], options=dict(s.baseline_options or {}),
                                          noise=noise, executor=ex,
                                          whole_field=True))


def _seed_parameters(s: AssistSettings) -> tuple[str, ...]:
    """What the loop's backend takes from an ME seed (``seed_parameters``; empty: no seed)."""
    from stokesflow.backends import get_backend_class

    return tuple(getattr(get_backend_class(s.backend, dict(s.backend_options)), "seed_parameters", ()) or ())


def _init_columns(s: AssistSettings) -> tuple[str, ...]:
    """The init columns of the loop's backend (what its guesses must be given in)."""
    from stokesflow.backends import get_backend

    return tuple(get_backend(s.backend, dict(s.backend_options)).init_columns)


class _Maps(Mapping):
    """The ``/params`` or ``/sigma`` maps of a result file, each read when it is asked for (not kept)."""

    def __init__(self, owner: "_SummaryMaps", group: str) -> None:
        self._owner, self._group = owner, group

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._owner.names:
            raise KeyError(name)
        return self._owner.read(self._group, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner.names)

    def __len__(self) -> int:
        return len(self._owner.names)


class _SummaryMaps:
    """A result file as the summary's metrics read it (:mod:`stokesflow.orchestrator.assist_metrics`),
    with what they use of :class:`~stokesflow.orchestrator.store.ResultFile`.

    ``params`` and ``sigma`` read one map per access, a depth-stratified parameter (ny, nx, ndepth)
    taken at :data:`SUMMARY_LOG_TAU` (NaN where the file's depths do not reach it); ``chi2``,
    ``status`` and ``n_iter`` are read once. The metrics hold a few maps at a time, so the summary's
    memory does not grow with the number of parameters and runs (an HMI full disk: 64 MB a map).
    """

    def __init__(self, path: Path) -> None:
        import h5py

        from stokesflow.orchestrator.store import StoreError

        self.path = Path(path)
        try:
            with h5py.File(self.path, "r") as h5:
                self.names = tuple(json.loads(h5.attrs["parameters"]))
                self._log_tau = h5["log_tau"][:] if "log_tau" in h5 else None
                self._circular = {n: float(h5["params"][n].attrs["upper"]) - float(h5["params"][n].attrs["lower"])
                                  for n in self.names if bool(h5["params"][n].attrs.get("circular", False))}
        except (OSError, KeyError) as exc:
            raise StoreError(f"cannot read result file {str(self.path)!r}: {exc}") from exc
        self.params: Mapping[str, np.ndarray] = _Maps(self, "params")
        self.sigma: Mapping[str, np.ndarray] = _Maps(self, "sigma")
        self._small: dict[str, np.ndarray] = {}

    def read(self, group: str, name: str) -> np.ndarray:
        """Map ``/<group>/<name>``; a stratified parameter at :data:`SUMMARY_LOG_TAU`."""
        import h5py

        from stokesflow.nn_init.features import sample_depth

        with h5py.File(self.path, "r") as h5:
            v = h5[group][name][()]
        if group == "params" and v.ndim == 3 and self._log_tau is not None:
            got = sample_depth(v, self._log_tau, SUMMARY_LOG_TAU, period=self._circular.get(name))
            v = np.full(v.shape[:2], np.nan) if got is None else got
        return v

    def _once(self, name: str) -> np.ndarray:
        if name not in self._small:
            import h5py

            with h5py.File(self.path, "r") as h5:
                self._small[name] = h5[name][()]
        return self._small[name]

    @property
    def chi2(self) -> np.ndarray:
        return self._once("chi2")

    @property
    def status(self) -> np.ndarray:
        return self._once("status")

    @property
    def n_iter(self) -> np.ndarray:
        return self._once("n_iter")


def _noise_of(result: Path) -> Any:
    from stokesflow.orchestrator.store import inspect_result

    a = inspect_result(result)
    n = a.get("noise")
    return None if n is None else [float(v) for v in np.atleast_1d(n)]


def _summarise(st: _State, paths: dict[str, Path], obs: Any, s: AssistSettings) -> dict[str, Any]:
    from stokesflow.orchestrator.assist_metrics import (agreement, chi2_stats, disagreement, iteration_stats,
                                                        truth_metrics)

    runs = {"reference": _SummaryMaps(paths["subset"]), "assisted": _SummaryMaps(paths["assisted"])}
    if paths["baseline"].exists() and st.done("baseline"):
        runs["baseline"] = _SummaryMaps(paths["baseline"])
    guess = _SummaryMaps(paths["guess"])
    merged = s.me_seed == "merge" and paths["network_guess"].exists()
    network = _SummaryMaps(paths["network_guess"]) if merged else None
    out: dict[str, Any] = {
        "lm_iterations": {k: iteration_stats(r)["total"] for k, r in runs.items()},
        "iterations": {k: iteration_stats(r) for k, r in runs.items()},
        "chi2": {k: chi2_stats(r) for k, r in runs.items()},
    }
    ph = st.data["phases"]
    out["loop_seconds"] = float(sum(ph.get(p, 0.0) for p in PHASES[:-1]))
    if "baseline" in runs:
        b = runs["baseline"]
        out["agreement_with_baseline"] = {"assisted": agreement(runs["assisted"], b),
                                          "guess": agreement(guess, b)}
        if network is not None:
            out["agreement_with_baseline"]["network_guess"] = agreement(network, b)
        # where the two disagree, which fits better ("a" is the assisted run)
        out["disagreement_with_baseline"] = disagreement(runs["assisted"], b)
        out["speedup"] = {
            "iterations": out["lm_iterations"]["baseline"] / max(1, out["lm_iterations"]["assisted"]),
            # the ME seed is part of what the short phase's start costs
            "wall_assisted": ph.get("baseline", 0.0) / max(1e-9, ph.get("assisted", 0.0) + ph.get("me_seed", 0.0)),
            "wall_loop": ph.get("baseline", 0.0) / max(1e-9, out["loop_seconds"]),
        }
    truth = obs.read_truth()
    if truth:
        out["truth"] = {k: truth_metrics(r, truth) for k, r in runs.items() if k != "reference"}
        out["truth"]["guess"] = truth_metrics(guess, truth)
        if network is not None:
            out["truth"]["network_guess"] = truth_metrics(network, truth)
    return out
