"""Training a network on (spectra, inverted parameters) pairs, with early stopping and a checkpoint.

:func:`train_network` is a plain function of arrays (torch imported inside):
the orchestrator reads the pairs from its result store and runs it as a task
on the executor (:mod:`stokesflow.orchestrator.train`).

- A held-out fraction of the pixels (``val_fraction``, seeded shuffle) is
  kept for validation; training stops when the validation loss has not
  improved for ``patience`` epochs, and the weights of the best epoch are kept.
- The cost is bounded whatever the training set's size: an epoch draws
  ``samples_per_epoch`` random training pixels (8,192; all of them when the
  set is smaller), and ``max_samples`` (245,760: 30 epochs of 8,192) caps the
  pixels drawn over the whole training. The learning rate (3e-3) decays over
  the planned epochs on a cosine (:func:`planned_epochs`).
- After every epoch the state (weights, optimiser, best weights, history,
  random state) is written atomically to ``checkpoint``; a run killed at any
  moment and started again with the same data and settings continues from
  the last finished epoch (a checkpoint of other data is refused, not mixed).
- ``on_epoch`` is called after every epoch with the history entry
  (``epoch``, ``train_loss``, ``val_loss``, ``samples``, ``seconds``), and
  each epoch is logged.

Why these defaults (measured 2026-11-30 with the assisted loop's phases on the
HMI-like ``synth --scene mixed`` 256 x 256 field, serial, one torch thread, 2
shared cores at load 4-8; "iterations" is the baseline's total LM iterations
over the assisted inversion's; the training set is the reference inversion
of a k-means subset, :func:`subset_pixels`):

- The old rule (every pixel once per epoch, constant rate 1e-3, patience 10)
  cost in proportion to the subset: 3,463 / 8,401 / 16,815 / 33,625 pixels
  took 12 / 16 / 34 / 54 CPU s (88 s for 55,910 at 1024 x 1024) for 2.71x /
  2.93x / 3.19x / 3.41x fewer iterations.
- What counts is the number of samples drawn (gradient steps) and the number
  of distinct pixels: 16,815 pixels at rate 1e-3 gave 2.53x after 410k samples,
  3.15x after 730k and 3.19x after 1.17M; at 490k samples with a cosine rate
  from 3e-3, 3,463 / 8,401 / 16,815 / 33,625 pixels gave 2.53x / 3.04x / 3.12x /
  3.20x (the 3,463-pixel network stops improving at 2/3 of its budget: too few
  pixels, not too few steps).
- A cosine decay reaches in 245k-490k samples what a constant rate reaches in
  1.2M: 16,815 pixels, 490k samples: 2.76x (1e-3), 3.12x (3e-3), 3.29x (6e-3),
  3.19x (1e-2); 245k samples: 2.78x (3e-3, 10 CPU s), 3.11x (6e-3).
- The rate must suit every instrument: Hinode-like 256 x 256 (17,069 pixels,
  245k samples) gave 2.17x fewer iterations at 3e-3 but 1.60x at 6e-3 (its
  azimuth guesses fell to Pearson 0.87 with the baseline), against 2.13x for
  the old rule (3,514 pixels, 105 CPU s of training; 74 s now). Hence 3e-3.
- Larger batches do not train faster per sample on a CPU (HMI 29.5 / 28.1 us
  per sample at 256 / 1024; Hinode/SP 340 / 359 us).

Log targets (``log_targets``, measured 2026-12-01 with ``stokesflow assist``,
serial, one torch thread, LM iterations per pixel of the assisted inversion;
:class:`~stokesflow.nn_init.features.TargetEncoding` picks the parameters whose
training values the log makes more symmetric):

- HMI-like 256 x 256 mixed scene (six points 69 mA apart; B, eta0, damping and
  the Doppler width taken through the log): 5.51 / 5.50 / 5.60 linear against
  5.24 / 5.22 / 5.17 (seeds 0 / 1 / 2), median chi2 against the baseline +1.65
  -> +1.44-1.51 %, Pearson with the baseline's inclination and azimuth 0.976-0.980
  / 0.967-0.969 -> 0.983 / 0.970. B alone: 5.34-5.36; eta0 and B: 5.18-5.23.
- Another code's data (pyMilne, ``../shared/data``): the HMI filtergrams
  (eta0, damping, S1 logged) 22.4 -> 17.0, Pearson 0.977 / 0.970 -> 0.986 /
  0.980; the HMI sample (eta0) 6.63 -> 6.48; the Hinode sample: no parameter
  logged, unchanged.
- Hinode-like 256 x 256 (112 points 21.5 mA apart): *worse*, 3.91 -> 5.17
  (B alone 5.08, eta0 alone 4.35; a softer log, offset at the median: 5.26),
  although the weak-field pixels' B and eta0 guesses were nearer the baseline
  in its sigmas: the azimuth guesses of the weak fields lost (0.22 -> 0.71
  sigma). So ``"auto"`` takes the log on coarse grids only
  (:func:`~stokesflow.nn_init.network.coarse_sampling`: a median step above
  twice the 21.5 mA the kernels are sized for). Grids between 21.5 and 69 mA
  were not measured: set ``log_targets`` there by trying both.

The inputs' asinh stretch (``input_stretch``, same day and setup, with the log
targets): see :data:`~stokesflow.nn_init.features.INPUT_STRETCH` for the
measurements on both grids and on pyMilne's samples.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from stokesflow.nn_init.checkpoint import load_checkpoint, save_checkpoint
from stokesflow.nn_init.features import InputScaling, TargetEncoding, polarity_mirror
from stokesflow.nn_init.model_file import NetworkModel
from stokesflow.nn_init.network import build_network, cnn_architecture, coarse_sampling, torch_or_error
from stokesflow.nn_init.providers import InitError

__all__ = ["SUBSET_MIN_PIXELS", "SUBSET_MAX_PIXELS", "TrainSettings", "train_network", "planned_epochs", "log_targets",
           "subset_pixels", "data_digest"]

log = logging.getLogger("stokesflow.train")

#: Fewest pixels in a training subset (``stokesflow assist``), whatever the field's size. The
#: network's guesses depend on the number of distinct training pixels, not on the share of the
#: field: HMI-like 256 x 256 at an equal training budget, 3,463 pixels (5 %) gave 2.53x fewer LM
#: iterations than the baseline, 16,815 gave 3.12x (see the module docstring).
SUBSET_MIN_PIXELS = 16_000

#: Most pixels in a training subset: beyond this the reference inversion of the subset costs more
#: and the network, trained on a fixed budget of samples, gains little (33,625 pixels: 3.20x).
SUBSET_MAX_PIXELS = 32_000


def subset_pixels(npix: int, fraction: float, min_pixels: int = SUBSET_MIN_PIXELS,
                  max_pixels: int = SUBSET_MAX_PIXELS) -> int:
    """Pixels of a training subset: ``fraction`` of ``npix``, clamped to [``min_pixels``, ``max_pixels``].

    Never more than ``npix``: a field smaller than ``min_pixels`` is used whole.

    Parameters
    ----------
    npix : int
        Pixels of the field.
    fraction : float
        Share of the field (``--subset``), 0 < fraction <= 1.
    min_pixels, max_pixels : int
        Bounds on the count [pixels], 64 <= min_pixels <= max_pixels.

    Raises
    ------
    InitError
        A fraction outside (0, 1] or bounds out of order.
    """
    if not 0 < float(fraction) <= 1:
        raise InitError(f"the training subset must be a share of the pixels in (0, 1], got {fraction}")
    if not 64 <= int(min_pixels) <= int(max_pixels):
        raise InitError(f"training subset bounds must satisfy 64 <= min_pixels <= max_pixels, got min_pixels="
                        f"{min_pixels}, max_pixels={max_pixels}")
    n = int(np.clip(round(float(fraction) * int(npix)), int(min_pixels), int(max_pixels)))
    return int(max(1, min(n, int(npix))))


class TrainSettings(dict):
    """Training settings with their defaults (a dict, so it goes into the model file as is).

    Keys: ``epochs`` (200), ``batch`` (256), ``lr`` (3e-3, Adam), ``val_fraction`` (0.15),
    ``patience`` (10 epochs), ``seed`` (0), ``min_delta`` (relative improvement that counts, 1e-3),
    ``samples_per_epoch`` (8,192 random training pixels per epoch; 0: every one once),
    ``max_samples`` (245,760 pixels drawn in all, which ends the training before ``epochs``;
    0: no cap), ``lr_schedule`` (``"cosine"``: the rate decays to 0 over the planned epochs;
    ``"constant"``), ``mirror`` (True: the training pixels and their polarity mirror images,
    :func:`stokesflow.nn_init.features.polarity_mirror`; the validation pixels as they are),
    ``val_pixels`` (2,048: the held-out pixels whose loss each epoch is judged by, a fixed random
    draw of them; 0: all. A pass over 5,000 held-out pixels cost a fifth of the training of a
    1024^2 field's subset, and 2,048 give the mean loss to about 2 %), ``log_targets`` (True: a
    positive, long-tailed parameter is learned as its log, :class:`~stokesflow.nn_init.features.TargetEncoding`;
    False: every parameter linearly, as before 2026-12-01; ``"auto"``: True on a coarse grid,
    :func:`~stokesflow.nn_init.network.coarse_sampling`, such as HMI's filtergrams, False on a
    spectrograph's, see :func:`log_targets`), ``input_stretch`` (True: Q, U and V enter the
    network through an asinh, :data:`~stokesflow.nn_init.features.INPUT_STRETCH`; False: linearly,
    as before 2026-12-01).
    See the module docstring for the measurements behind them.
    """

    DEFAULTS: Mapping[str, Any] = {"epochs": 200, "batch": 256, "lr": 3e-3, "val_fraction": 0.15,
                                   "patience": 10, "seed": 0, "min_delta": 1e-3, "samples_per_epoch": 8192,
                                   "max_samples": 245_760, "lr_schedule": "cosine", "mirror": True,
                                   "val_pixels": 2048, "log_targets": "auto", "input_stretch": True}

    def __init__(self, **kw: Any) -> None:
        unknown = sorted(set(kw) - set(self.DEFAULTS))
        if unknown:
            raise InitError(f"unknown training setting(s) {unknown}; valid: {sorted(self.DEFAULTS)}")
        super().__init__({**self.DEFAULTS, **{k: v for k, v in kw.items() if v is not None}})
        if (int(self["epochs"]) < 1 or int(self["batch"]) < 1 or not 0 < float(self["val_fraction"]) < 0.9
                or int(self["samples_per_epoch"]) < 0 or int(self["max_samples"]) < 0 or int(self["val_pixels"]) < 0
                or self["lr_schedule"] not in ("constant", "cosine") or not isinstance(self["mirror"], bool)
                or not (isinstance(self["log_targets"], bool) or self["log_targets"] == "auto")
                or not isinstance(self["input_stretch"], bool)):
            raise InitError(f"training settings out of range: epochs >= 1, batch >= 1, 0 < val_fraction < 0.9, "
                            f"samples_per_epoch >= 0, max_samples >= 0, val_pixels >= 0, lr_schedule 'cosine' or "
                            f"'constant', "
                            f"mirror and input_stretch true or false, log_targets true, false or 'auto'; "
                            f"got {dict(self)}")


def planned_epochs(settings: Mapping[str, Any], n_train: int) -> int:
    """Epochs a training of ``n_train`` pixels runs at most: ``epochs``, fewer when ``max_samples`` binds.

    An epoch draws ``min(samples_per_epoch, n_train)`` pixels (all of them when ``samples_per_epoch``
    is 0); ``max_samples`` > 0 caps the pixels drawn over the whole training, so its cost does not grow
    with the training set.
    """
    st = TrainSettings(**dict(settings))
    per_epoch = min(int(st["samples_per_epoch"]) or n_train, n_train)
    epochs = int(st["epochs"])
    if int(st["max_samples"]) > 0:
        epochs = min(epochs, max(1, -(-int(st["max_samples"]) // max(1, per_epoch))))
    return epochs


def log_targets(settings: Mapping[str, Any], wavelength: np.ndarray) -> bool:
    """Whether a training with ``settings`` learns long-tailed parameters through their log.

    ``log_targets`` true or false as given; ``"auto"``: on a coarse grid
    (:func:`~stokesflow.nn_init.network.coarse_sampling`), where the log's guesses were the better
    ones, and not on a finely sampled one, where they were worse (module docstring).
    """
    v = TrainSettings(**dict(settings))["log_targets"]
    return coarse_sampling(wavelength) if v == "auto" else bool(v)


def data_digest(stokes: np.ndarray, params: np.ndarray, settings: Mapping[str, Any]) -> str:
    """Digest of the training data and settings: what a checkpoint must match to be resumed."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(stokes, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(params, dtype=np.float64).tobytes())
    # more epochs may continue a constant-rate training; a cosine schedule is planned over all of them
    skip = () if settings.get("lr_schedule") == "cosine" else ("epochs",)
    h.update(repr(sorted((k, v) for k, v in settings.items() if k not in skip)).encode())
    return h.hexdigest()[:32]


def train_network(
    stokes: np.ndarray,
    params: np.ndarray,
    specs: Sequence[Any],
    wavelength: np.ndarray,
    *,
    metadata: Mapping[str, Any],
    settings: Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    device: str = "cpu",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> NetworkModel:
    """Train a CNN that maps spectra to parameters; return the model (best validation epoch).

    Parameters
    ----------
    stokes : ndarray (n, 4, nw)
        Training spectra in continuum units (finite).
    params : ndarray (n, npar)
        Their inverted parameters, in the backend's units, columns in the order of ``specs``.
    specs : sequence of ParameterSpec
        The backend's parameters (names, units, bounds, circular flags).
    wavelength : ndarray (nw,)
        [A].
    metadata : mapping
        ``instrument``, ``spectral_instrument``, ``lines``, ``provenance``: stored in the model file.
    settings : mapping, optional
        See :class:`TrainSettings`.
    checkpoint : path, optional
        Where the state is saved after every epoch, and resumed from.
    threads : int, optional
        ``torch.set_num_threads`` (``stokesflow train`` gives every core of the worker that trains).
    device : str
        ``"cpu"`` or ``"cuda"`` (a worker that offers a GPU).
    on_epoch : callable, optional
        Called with each epoch's history entry.

    Raises
    ------
    InitError
        Too few pixels, or a checkpoint written for other data.
    """
    torch = torch_or_error("training a network")
    st = TrainSettings(**dict(settings or {}))
    if threads:
        torch.set_num_threads(int(threads))
    x_all = np.asarray(stokes, dtype=np.float32)
    p_all = np.asarray(params, dtype=np.float64)
    n = x_all.shape[0]
    if n < 20:
        raise InitError(f"training needs at least 20 pixels with a good fit, got {n}; invert a larger subset")
    rng = np.random.default_rng(int(st["seed"]))
    order = rng.permutation(n)
    n_val = max(1, int(round(float(st["val_fraction"]) * n)))
    val_idx, tr_idx = order[:n_val], order[n_val:]
    n_judge = int(st["val_pixels"])
    judged = val_idx[:n_judge] if n_judge and n_judge < val_idx.size else val_idx  # random: order is a permutation
    x_fit, p_fit = x_all[tr_idx], p_all[tr_idx]
    mirrored = polarity_mirror(x_fit, p_fit, specs) if st["mirror"] else None
    if mirrored is not None:  # both polarities in training; validation stays the field's own pixels
        x_fit, p_fit = np.concatenate([x_fit, mirrored[0]]), np.concatenate([p_fit, mirrored[1]])
    scaling = InputScaling.fit(x_fit, stretch=bool(st["input_stretch"]))
    encoding = TargetEncoding.fit(specs, p_fit, log=log_targets(st, wavelength))
    arch = cnn_architecture(wavelength, encoding.n_outputs)
    digest = data_digest(x_all, p_all, st)

    torch.manual_seed(int(st["seed"]))
    net = build_network(arch).to(device)
    # the fused kernel: one update of every tensor per step (0.64 -> 0.25 ms a step on one CPU core)
    opt = torch.optim.Adam(net.parameters(), lr=float(st["lr"]), fused=torch.device(device).type in ("cpu", "cuda"))
    x_tr = torch.from_numpy(scaling.apply(x_fit)).to(device)
    y_tr = torch.from_numpy(encoding.encode(p_fit)).to(device)
    x_va = torch.from_numpy(scaling.apply(x_all[judged])).to(device)
    y_va = torch.from_numpy(encoding.encode(p_all[judged])).to(device)
    progress = load_checkpoint(torch, checkpoint, digest, net, opt)
    net.to(device)
    history: list[dict[str, Any]] = progress["history"]
    best = progress["best"]
    start_epoch = progress.start_epoch

    loss_fn = torch.nn.MSELoss()
    batch = int(st["batch"])
    patience = int(st["patience"])
    per_epoch = min(int(st["samples_per_epoch"]) or x_tr.shape[0], x_tr.shape[0])
    n_epochs = planned_epochs(st, x_tr.shape[0])
    for epoch in range(start_epoch, n_epochs):
        if progress.stopped(patience):
            break
        t0 = time.perf_counter()
        if st["lr_schedule"] == "cosine":  # a function of the epoch alone, so a resumed run repeats it
            for g in opt.param_groups:
                g["lr"] = float(st["lr"]) * 0.5 * (1.0 + math.cos(math.pi * epoch / n_epochs))
        net.train()
        perm = torch.randperm(x_tr.shape[0])[:per_epoch].to(device)
        total = 0.0
        for i in range(0, perm.shape[0], batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = loss_fn(net(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.shape[0]
        net.eval()
        with torch.inference_mode():
            val = float(loss_fn(net(x_va), y_va))
        entry = {"epoch": epoch + 1, "train_loss": total / perm.shape[0], "val_loss": val,
                 "samples": int(perm.shape[0]), "planned": n_epochs, "seconds": time.perf_counter() - t0}
        history.append(entry)
        if val < best["loss"] * (1.0 - float(st["min_delta"])):
            best = {"loss": val, "epoch": epoch,
                    "state": {k: v.detach().to("cpu").clone() for k, v in net.state_dict().items()}}
        progress["best"] = best
        log.info("epoch %d/%d: train loss %.4g, validation loss %.4g (best %.4g at epoch %d)%s", epoch + 1,
                 n_epochs, entry["train_loss"], val, best["loss"], best["epoch"] + 1,
                 "; stopping early" if progress.stopped(patience) else "")
        save_checkpoint(torch, checkpoint, digest, net, opt, progress)
        if on_epoch is not None:
            on_epoch(entry)
    meta = dict(metadata)
    meta.update({
        "wavelength": np.asarray(wavelength, dtype=np.float64).tolist(),
        "parameters": list(encoding.names), "units": list(encoding.units),
        "inputs": scaling.to_dict(), "targets": encoding.to_dict(), "arch": arch,
        "history": history, "best_epoch": best["epoch"] + 1, "settings": dict(st),
        "n_train": int(tr_idx.size), "n_val": int(val_idx.size), "data_digest": digest,
    })
    state = best["state"] if best["state"] is not None else {k: v.to("cpu") for k, v in net.state_dict().items()}
    return NetworkModel(kind="cnn", metadata=meta, state_dict=dict(state))
