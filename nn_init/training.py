"""Training a network on (spectra, inverted parameters) pairs, with early stopping and a checkpoint.

:func:`train_network` is a plain function of arrays (torch imported inside):
the orchestrator reads the pairs from its result store and runs it as a task
on the executor (:mod:`stokesflow.orchestrator.train`).

- A held-out fraction of the pixels (``val_fraction``, seeded shuffle) is
  kept for validation; training stops when the validation loss has not
  improved for ``patience`` epochs, and the weights of the best epoch are kept.
- After every epoch the state (weights, optimiser, best weights, history,
  random state) is written atomically to ``checkpoint``; a run killed at any
  moment and started again with the same data and settings continues from
  the last finished epoch (a checkpoint of other data is refused, not mixed).
- ``on_epoch`` is called after every epoch with the history entry
  (``epoch``, ``train_loss``, ``val_loss``, ``seconds``), and each epoch is
  logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from stokesflow.nn_init.checkpoint import load_checkpoint, save_checkpoint
from stokesflow.nn_init.features import InputScaling, TargetEncoding
from stokesflow.nn_init.model_file import NetworkModel
from stokesflow.nn_init.network import build_network, cnn_architecture, torch_or_error
from stokesflow.nn_init.providers import InitError

__all__ = ["TrainSettings", "train_network", "data_digest"]

log = logging.getLogger("stokesflow.train")


class TrainSettings(dict):
    """Training settings with their defaults (a dict, so it goes into the model file as is).

    Keys: ``epochs`` (200), ``batch`` (256), ``lr`` (1e-3, Adam), ``val_fraction`` (0.15),
    ``patience`` (10 epochs), ``seed`` (0), ``min_delta`` (relative improvement that counts, 1e-3).
    """

    DEFAULTS: Mapping[str, Any] = {"epochs": 200, "batch": 256, "lr": 1e-3, "val_fraction": 0.15,
                                   "patience": 10, "seed": 0, "min_delta": 1e-3}

    def __init__(self, **kw: Any) -> None:
        unknown = sorted(set(kw) - set(self.DEFAULTS))
        if unknown:
            raise InitError(f"unknown training setting(s) {unknown}; valid: {sorted(self.DEFAULTS)}")
        super().__init__({**self.DEFAULTS, **{k: v for k, v in kw.items() if v is not None}})
        if int(self["epochs"]) < 1 or int(self["batch"]) < 1 or not 0 < float(self["val_fraction"]) < 0.9:
            raise InitError(f"training settings out of range: epochs >= 1, batch >= 1, 0 < val_fraction < 0.9; "
                            f"got {dict(self)}")


def data_digest(stokes: np.ndarray, params: np.ndarray, settings: Mapping[str, Any]) -> str:
    """Digest of the training data and settings: what a checkpoint must match to be resumed."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(stokes, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(params, dtype=np.float64).tobytes())
    h.update(repr(sorted((k, v) for k, v in settings.items() if k != "epochs")).encode())
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
        ``torch.set_num_threads`` (the worker's share of the cores).
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
    scaling = InputScaling.fit(x_all[tr_idx])
    encoding = TargetEncoding.fit(specs, p_all[tr_idx])
    arch = cnn_architecture(wavelength, encoding.n_outputs)
    digest = data_digest(x_all, p_all, st)

    torch.manual_seed(int(st["seed"]))
    net = build_network(arch).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=float(st["lr"]))
    x_tr = torch.from_numpy(scaling.apply(x_all[tr_idx])).to(device)
    y_tr = torch.from_numpy(encoding.encode(p_all[tr_idx])).to(device)
    x_va = torch.from_numpy(scaling.apply(x_all[val_idx])).to(device)
    y_va = torch.from_numpy(encoding.encode(p_all[val_idx])).to(device)
    progress = load_checkpoint(torch, checkpoint, digest, net, opt)
    net.to(device)
    history: list[dict[str, Any]] = progress["history"]
    best = progress["best"]
    start_epoch = progress.start_epoch

    loss_fn = torch.nn.MSELoss()
    batch = int(st["batch"])
    patience = int(st["patience"])
    for epoch in range(start_epoch, int(st["epochs"])):
        if progress.stopped(patience):
            break
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(x_tr.shape[0]).to(device)
        total = 0.0
        for i in range(0, x_tr.shape[0], batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = loss_fn(net(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.shape[0]
        net.eval()
        with torch.inference_mode():
            val = float(loss_fn(net(x_va), y_va))
        entry = {"epoch": epoch + 1, "train_loss": total / x_tr.shape[0], "val_loss": val,
                 "seconds": time.perf_counter() - t0}
        history.append(entry)
        if val < best["loss"] * (1.0 - float(st["min_delta"])):
            best = {"loss": val, "epoch": epoch,
                    "state": {k: v.detach().to("cpu").clone() for k, v in net.state_dict().items()}}
        progress["best"] = best
        log.info("epoch %d/%d: train loss %.4g, validation loss %.4g (best %.4g at epoch %d)%s", epoch + 1,
                 int(st["epochs"]), entry["train_loss"], val, best["loss"], best["epoch"] + 1,
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
