"""The 1D CNN that maps one pixel's four Stokes spectra to its parameters (torch imported lazily).

Architecture (``kind = "cnn"``): three 1D convolutions over wavelength with
64 channels and kernels near 7, 5 and 3 points *scaled to the sampling* (the
kernels are sized for Hinode/SP's 21.5 mA step and shrink in proportion for a
coarser grid: 3, 3, 3 for HMI's ~69 mA), ReLU after each, max-pooling by 2
after the first two when the grid has at least 24 points, then a dense layer
of 128 with dropout and a linear output layer (one output per parameter, two
for the azimuth). No batch-norm: absolute levels matter.

Inference (:func:`run_network`) goes through the pixels in batches sized so
that one layer's activations stay near the core's L2 cache
(:func:`inference_batch`: 128 pixels per torch thread for Hinode/SP's 112
points, 2048 for HMI's 6). Larger batches were 2-3x slower on one core: the first layer's
output of 16384 Hinode pixels is 470 MB, allocated and page-faulted afresh
for every batch and streamed through memory by every layer. The ReLUs work
in place (no parameters, so model files of any version load the same).

Importing this module does not import torch; :func:`build_network` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["REFERENCE_STEP_MA", "COARSE_STEP_FACTOR", "BATCH_BYTES", "cnn_architecture", "sampling_step_ma",
           "coarse_sampling", "build_network", "torch_or_error", "torch_installed", "require_torch",
           "inference_batch", "run_network"]

#: Sampling step [mA] the nominal kernels 7, 5, 3 are meant for (Hinode/SP).
REFERENCE_STEP_MA = 21.5

#: A grid whose median step is more than this many times :data:`REFERENCE_STEP_MA` is *coarse*
#: (filtergrams: HMI's six points are 69 mA apart), and the CNN then learns the positive, long-tailed
#: parameters through their log (``TrainSettings`` ``log_targets = "auto"``; see
#: :mod:`stokesflow.nn_init.training` for the measurements on both kinds of grid).
COARSE_STEP_FACTOR = 2.0

#: Bytes of one layer's float32 activations per inference batch [B]: about the L2 cache of a core
#: (2 MiB per core here; 4 MiB measured best: 128 Hinode/SP pixels, see benchmarks/nn_inference.py).
BATCH_BYTES = 4 << 20


def _no_torch(what: str) -> Exception:
    """The error that says ``what`` needs torch and how to install it."""
    from stokesflow.nn_init.providers import InitError

    return InitError(
        f"{what} needs PyTorch, which is not installed: pip install \"stokesflow[nn]\" "
        "(on a machine without a GPU: pip install torch==2.13.0, the CPU build)"
    )


def torch_installed() -> bool:
    """Whether torch can be imported here, found without importing it (an import takes about 1 s)."""
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a blocked or broken torch
        return False


def require_torch(what: str) -> None:
    """Raise :class:`~stokesflow.nn_init.providers.InitError` saying how to install torch when it is
    missing, without importing it: for a driver whose workers do the torch work."""
    if not torch_installed():
        raise _no_torch(what)


def torch_or_error(what: str) -> Any:
    """Import torch, or raise :class:`~stokesflow.nn_init.providers.InitError` saying how to install it."""
    try:
        import torch
    except ImportError:
        raise _no_torch(what) from None
    return torch


def _odd(x: float) -> int:
    k = max(3, int(round(x)))
    return k if k % 2 else k + 1


def sampling_step_ma(wavelength: np.ndarray) -> float:
    """Median step [mA] of a wavelength grid [A] (:data:`REFERENCE_STEP_MA` for a single point)."""
    wl = np.asarray(wavelength, dtype=np.float64)
    return float(np.median(np.diff(wl))) * 1e3 if wl.size > 1 else REFERENCE_STEP_MA


def coarse_sampling(wavelength: np.ndarray) -> bool:
    """Whether a grid [A] samples the line more coarsely than :data:`COARSE_STEP_FACTOR` x the reference step."""
    return sampling_step_ma(wavelength) > COARSE_STEP_FACTOR * REFERENCE_STEP_MA


def cnn_architecture(wavelength: np.ndarray, n_outputs: int, *, channels: int = 64, hidden: int = 128,
                     dropout: float = 0.1) -> dict[str, Any]:
    """The architecture description (plain numbers) of the CNN for a wavelength grid [A]."""
    wl = np.asarray(wavelength, dtype=np.float64)
    nw = int(wl.size)
    step_ma = sampling_step_ma(wl)
    factor = REFERENCE_STEP_MA / max(step_ma, 1e-6)
    kernels = [min(_odd(k * factor), nw if nw % 2 else max(1, nw - 1)) for k in (7, 5, 3)]
    pool = nw >= 24
    length = nw
    if pool:
        length = length // 2 // 2
    return {"kind": "cnn", "nw": nw, "channels": int(channels), "kernels": kernels, "pool": bool(pool),
            "flat_length": int(length), "hidden": int(hidden), "dropout": float(dropout), "n_outputs": int(n_outputs)}


def build_network(arch: dict[str, Any]) -> Any:
    """A ``torch.nn.Sequential`` for ``arch`` (from :func:`cnn_architecture`)."""
    torch = torch_or_error("the cnn network")
    nn = torch.nn
    c = int(arch["channels"])
    layers: list[Any] = []
    cin = 4
    for i, k in enumerate(arch["kernels"]):
        layers += [nn.Conv1d(cin, c, int(k), padding=int(k) // 2), nn.ReLU(inplace=True)]
        if arch["pool"] and i < 2:
            layers.append(nn.MaxPool1d(2))
        cin = c
    layers += [nn.Flatten(), nn.Linear(c * int(arch["flat_length"]), int(arch["hidden"])), nn.ReLU(inplace=True),
               nn.Dropout(float(arch["dropout"])), nn.Linear(int(arch["hidden"]), int(arch["n_outputs"]))]
    return nn.Sequential(*layers)


def inference_batch(channels: int, nw: int, *, budget: int = BATCH_BYTES, threads: int = 1) -> int:
    """Pixels per inference batch: ``threads`` times a power of two, 16..4096, whose widest activations fit ``budget``.

    Parameters
    ----------
    channels : int
        Convolution channels (the first layer's output is ``channels x nw`` per pixel).
    nw : int
        Wavelength points.
    budget : int
        Bytes [B] one layer's float32 output may take per batch and thread.
    threads : int
        Torch threads sharing a batch (torch splits a batch over them, so each keeps its share in its own cache).
    """
    per_pixel = 4 * max(1, int(channels)) * max(1, int(nw))
    n = max(1, int(budget) // per_pixel)
    return int(min(4096, max(16, 1 << (n.bit_length() - 1)))) * max(1, int(threads))


def run_network(net: Any, x: np.ndarray, *, batch: int | None = None) -> np.ndarray:
    """Outputs (n, n_outputs) float32 of ``net`` in evaluation mode for normalised inputs (n, 4, nw).

    ``batch`` pixels at a time (default :func:`inference_batch` of the first layer's channels, the
    grid and the torch threads: small enough to stay in cache; larger is slower, not faster). Call
    it with as many torch threads as the task may use (``torch.set_num_threads``).
    """
    import torch

    net.eval()
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if batch is None:
        first = next((m for m in net.modules() if isinstance(m, torch.nn.Conv1d)), None)
        batch = inference_batch(first.out_channels if first is not None else 64, xt.shape[-1],
                                threads=torch.get_num_threads())
    out = torch.empty((xt.shape[0], int(net[-1].out_features)), dtype=torch.float32)
    with torch.inference_mode():
        for i in range(0, xt.shape[0], int(batch)):
            out[i:i + batch] = net(xt[i:i + batch])
    return out.numpy()
