"""The ``unet`` network: a small U-Net on images of Stokes spectra, each parameter as an 80-bin distribution.

Architecture (``kind = "unet"``): the input image has ``4 * nw`` channels
(I, Q, U, V at every wavelength, normalised per pixel by the same
:class:`~stokesflow.nn_init.features.InputScaling` the CNN uses; NaN pixels
become zeros); a per-pixel stem of two 1x1 convolutions (``4 * channels``,
``2 * channels``) that also feeds the head directly; two 3x3 convolutions with ReLU at full resolution
(``channels``), two after a 2x2 max-pool (``2 * channels``), two more at a
quarter of the resolution (``4 * channels``), then transposed convolutions
back up with skip connections, and a 1x1 head (on the decoder and the stem) giving ``n_bins`` (80)
logits for every parameter. No batch-norm: absolute levels matter. The
receptive field is about 44 pixels across.

Targets are the two-bin soft distributions of :class:`~stokesflow.nn_init.bins.Bins`
(bins over the training values' 0.5-99.5 % range widened by 5 %, clipped to the
parameter bounds; the azimuth over its full circle), and the loss is the
Kullback-Leibler divergence of the predicted softmax from them, averaged
over the pixels of the mask (good-status pixels only).

Inference runs over overlapping tiles (:func:`tiled_logits`): each tile's
logits are weighted by a window that ramps linearly over the overlap on the
sides that face another tile, and the weighted sum is divided by the summed
weights, so a field of any size gives no seams. Decoding (expectation over
the peak bin and its neighbours) and 90 % intervals use the calibrated
temperature and interval scale stored in the model file
(``metadata["calibration"]``, fitted on held-out pixels by
:func:`~stokesflow.nn_init.bins.calibrate`).

Importing this module does not import torch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from stokesflow.backends.base import valid_pixels
from stokesflow.nn_init.bins import Bins, calibrate, coverage, softmax
from stokesflow.nn_init.features import InputScaling, TargetEncoding, polarity_mirror
from stokesflow.nn_init.network import torch_or_error
from stokesflow.nn_init.network_init import NetworkInit, loaded_model
from stokesflow.nn_init.providers import InitError

__all__ = [
    "N_BINS", "RECEPTIVE_HALF", "CURVE_LEVELS", "unet_architecture", "build_unet", "image_inputs", "model_bins",
    "tiled_logits", "decode_logits", "predict_field", "UNetSettings", "train_unet", "UNetInit",
]

log = logging.getLogger("stokesflow.train")

#: Bins per parameter (as in the published HMI emulator).
N_BINS = 80
#: Half the receptive field [pixels]: tiles overlap by at least this much by default.
RECEPTIVE_HALF = 22


#: Nominal levels of the calibration curve stored in a U-Net model file (``calibration_curve``).
CURVE_LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)

def unet_architecture(nw: int, n_params: int, *, channels: int = 16, n_bins: int = N_BINS) -> dict[str, Any]:
    """The architecture description (plain numbers) of the U-Net for ``nw`` wavelengths and ``n_params``."""
    return {"kind": "unet", "nw": int(nw), "in_channels": 4 * int(nw), "channels": int(channels),
            "n_params": int(n_params), "n_bins": int(n_bins)}


def build_unet(arch: Mapping[str, Any]) -> Any:
    """A ``torch.nn.Module`` for ``arch``: input (b, 4 nw, h, w) with h, w multiples of 4; output (b, npar, nbins, h, w)."""
    torch = torch_or_error("the unet network")
    nn = torch.nn

    def block(cin: int, cout: int) -> Any:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())

    c, npar, nb = int(arch["channels"]), int(arch["n_params"]), int(arch["n_bins"])

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # per-pixel spectral features first (1x1 convolutions, as a dense layer on each pixel's spectra)
            self.stem = nn.Sequential(nn.Conv2d(int(arch["in_channels"]), 4 * c, 1), nn.ReLU(),
                                      nn.Conv2d(4 * c, 2 * c, 1), nn.ReLU())
            self.enc1 = block(2 * c, c)
            self.enc2 = block(c, 2 * c)
            self.mid = block(2 * c, 4 * c)
            self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
            self.dec2 = block(4 * c, 2 * c)
            self.up1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
            self.dec1 = block(2 * c, c)
            self.head = nn.Sequential(nn.Conv2d(3 * c, 2 * c, 1), nn.ReLU(), nn.Conv2d(2 * c, npar * nb, 1))
            self.pool = nn.MaxPool2d(2)

        def forward(self, x: Any) -> Any:
            s = self.stem(x)
            e1 = self.enc1(s)
            e2 = self.enc2(self.pool(e1))
            m = self.mid(self.pool(e2))
            d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
            d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
            out = self.head(torch.cat([d1, s], dim=1))
            return out.reshape(out.shape[0], npar, nb, out.shape[2], out.shape[3])

    return UNet()


def image_inputs(cube: np.ndarray, scaling: InputScaling) -> np.ndarray:
    """Network input (4 nw, ny, nx) float32 of a cube (ny, nx, 4, nw) [continuum units]; NaN/inf pixels are 0."""
    c = np.asarray(cube)
    ny, nx = c.shape[:2]
    x = scaling.apply(c.reshape(ny * nx, 4, c.shape[-1]))
    x[~np.isfinite(x)] = 0.0
    return np.ascontiguousarray(x.reshape(ny, nx, -1).transpose(2, 0, 1))


def model_bins(metadata: Mapping[str, Any]) -> list[Bins]:
    """The :class:`Bins` of each parameter stored in a unet model's metadata."""
    return [Bins(float(b["lower"]), float(b["upper"]), int(b["n"]), bool(b["circular"])) for b in metadata["bins"]]


def _fit_bins(specs: Sequence[Any], values: np.ndarray, n_bins: int) -> list[Bins]:
    out = []
    for j, s in enumerate(specs):
        if getattr(s, "circular", False):
            out.append(Bins(float(s.lower), float(s.upper), n_bins, True))
            continue
        v = values[:, j]
        lo, hi = np.quantile(v, [0.005, 0.995]) if v.size else (s.lower, s.upper)
        pad = 0.05 * max(hi - lo, 1e-6 * max(abs(hi), 1.0))
        lo, hi = max(float(s.lower), lo - pad), min(float(s.upper), hi + pad)
        if hi <= lo:
            lo, hi = float(s.lower), float(s.upper)
        out.append(Bins(float(lo), float(hi), n_bins, False))
    return out


def _pad4(n: int) -> int:
    return (n + 3) // 4 * 4


def _run(net: Any, x: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Logits (npar, nbins, h, w) of one image (C, h, w); padded at the far edges to multiples of 4 (replicate)."""
    import torch

    _, h, w = x.shape
    ph, pw = _pad4(h) - h, _pad4(w) - w
    xt = torch.from_numpy(np.ascontiguousarray(x))[None].to(device)
    if ph or pw:
        xt = torch.nn.functional.pad(xt, (0, pw, 0, ph), mode="replicate")
    out = net(xt)[0, :, :, :h, :w]
    return out.to("cpu").numpy()


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    step = tile - overlap
    s = list(range(0, n - tile, step))
    s.append(n - tile)
    return sorted(set(s))


def _ramp(length: int, overlap: int, ramp_lo: bool, ramp_hi: bool) -> np.ndarray:
    w = np.ones(length, dtype=np.float32)
    r = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
    k = min(overlap, length)
    if ramp_lo:
        w[:k] = np.minimum(w[:k], r[:k])
    if ramp_hi:
        w[length - k:] = np.minimum(w[length - k:], r[:k][::-1])
    return w


def tiled_logits(net: Any, x: np.ndarray, *, tile: int = 256, overlap: int = 48, device: str = "cpu") -> np.ndarray:
    """Logits (npar, nbins, ny, nx) float32 of a whole image (C, ny, nx), over overlapping tiles.

    Parameters
    ----------
    net : torch module
        From :func:`build_unet`, in evaluation mode.
    x : ndarray (C, ny, nx)
        From :func:`image_inputs`.
    tile : int
        Tile side [pixels] (rounded up to a multiple of 4); a field no larger runs in one pass.
    overlap : int
        Overlap of neighbouring tiles [pixels]; the window ramps over it. Keep it at least
        :data:`RECEPTIVE_HALF` for tiles that match one pass closely.
    """
    import torch

    tile = _pad4(int(tile))
    overlap = int(min(max(1, overlap), tile // 2))
    _, ny, nx = x.shape
    ys, xs = _starts(ny, tile, overlap), _starts(nx, tile, overlap)
    acc = wsum = None
    with torch.inference_mode():
        if len(ys) == 1 and len(xs) == 1:
            return _run(net, x, device)
        for y0 in ys:
            y1 = min(ny, y0 + tile)
            wy = _ramp(y1 - y0, overlap, y0 > 0, y1 < ny)
            for x0 in xs:
                x1 = min(nx, x0 + tile)
                wx = _ramp(x1 - x0, overlap, x0 > 0, x1 < nx)
                out = _run(net, x[:, y0:y1, x0:x1], device)
                if acc is None:
                    acc = np.zeros(out.shape[:2] + (ny, nx), dtype=np.float32)
                    wsum = np.zeros((ny, nx), dtype=np.float32)
                w = wy[:, None] * wx[None, :]
                acc[:, :, y0:y1, x0:x1] += out * w
                wsum[y0:y1, x0:x1] += w
    return acc / wsum


def _interp_rows(q: float, c: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Row-wise ``np.interp(q, c[r], edges[r])`` for non-decreasing rows ``c`` (m, n + 1) from 0 to 1."""
    k = np.clip((c < q).sum(axis=1), 1, c.shape[1] - 1)  # first edge with c >= q
    r = np.arange(c.shape[0])
    c0, c1 = c[r, k - 1], c[r, k]
    f = np.where(c1 > c0, (q - c0) / np.where(c1 > c0, c1 - c0, 1.0), 0.0)
    return edges[r, k - 1] + f * (edges[r, k] - edges[r, k - 1])


def decode_logits(b: Bins, logits: np.ndarray, temperature: float = 1.0, scale: float = 1.0,
                  level: float | None = 0.9) -> tuple[np.ndarray, np.ndarray | None]:
    """Vectorised :meth:`Bins.decode` and :meth:`Bins.interval` of ``softmax(logits / temperature)``.

    Parameters
    ----------
    b : Bins
    logits : ndarray (m, n)
    temperature, scale : float
        The calibration of this parameter.
    level : float or None
        Interval probability; None: no interval.

    Returns
    -------
    values : ndarray (m,) [units]
    intervals : ndarray (m, 2) [units] or None
    """
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    m, n = z.shape
    r = np.arange(m)
    k = np.argmax(z, axis=1)
    zmax = z[r, k]
    idx = k[:, None] + np.array([-1, 0, 1])[None, :]
    if b.circular:
        w = np.exp(z[r[:, None], idx % n] - zmax[:, None])
    else:
        w = np.where((idx >= 0) & (idx < n), np.exp(z[r[:, None], np.clip(idx, 0, n - 1)] - zmax[:, None]), 0.0)
    x = (w * idx).sum(axis=1) / w.sum(axis=1)
    v = b.lower + (x + 0.5) * b.width
    if b.circular:
        v = b.lower + np.mod(v - b.lower, b.upper - b.lower)
    v = v.astype(np.float64)
    if level is None:
        return v, None
    e = np.exp(z - zmax[:, None]).astype(np.float64)
    if b.circular:  # rotate so the most likely bin sits in the middle
        shift = n // 2 - k
        e = e[r[:, None], (np.arange(n)[None, :] - shift[:, None]) % n]
        centres = b.centres[None, :] - shift[:, None] * b.width
    else:
        centres = np.broadcast_to(b.centres, (m, n))
    cdf = np.cumsum(e, axis=1)
    cdf /= cdf[:, -1:]
    edges = np.concatenate([centres[:, :1] - 0.5 * b.width, centres + 0.5 * b.width], axis=1)
    c = np.concatenate([np.zeros((m, 1)), cdf], axis=1)
    lo = _interp_rows(0.5 * (1 - level), c, edges)
    hi = _interp_rows(0.5 * (1 + level), c, edges)
    if b.circular:
        period = b.upper - b.lower
        delta = np.mod(v - 0.5 * (lo + hi) + 0.5 * period, period) - 0.5 * period
        lo, hi = lo + delta, hi + delta
    lo = v - scale * (v - np.minimum(lo, v))
    hi = v + scale * (np.maximum(hi, v) - v)
    return v, np.column_stack([lo, hi])


def _decode(bins: Sequence[Bins], logits: np.ndarray, calib: Sequence[Mapping[str, float]] | None,
            level: float, intervals: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Values (m, npar) and intervals (m, npar, 2) from logits (m, npar, nbins)."""
    m, npar = logits.shape[:2]
    vals = np.empty((m, npar))
    ivs = np.empty((m, npar, 2)) if intervals else None
    for j, b in enumerate(bins):
        t = float(calib[j]["temperature"]) if calib else 1.0
        s = float(calib[j]["scale"]) if calib else 1.0
        vals[:, j], iv = decode_logits(b, logits[:, j, :], t, s, level if intervals else None)
        if intervals:
            ivs[:, j] = iv
    return vals, ivs


def predict_field(model: Any, cube: np.ndarray, *, tile: int = 256, overlap: int = 48, intervals: bool = True,
                  level: float = 0.9) -> tuple[np.ndarray, np.ndarray | None]:
    """Parameters (ny, nx, npar) [units] and 90 % intervals (ny, nx, npar, 2) of a unet model on a cube.

    Parameters
    ----------
    model : NetworkModel
        ``kind == "unet"`` (see :mod:`stokesflow.nn_init.model_file`).
    cube : ndarray (ny, nx, 4, nw)
        Stokes spectra in continuum units; NaN/inf pixels get NaN parameters.
    tile, overlap : int
        See :func:`tiled_logits`.
    intervals : bool
        Also return the calibrated intervals (they cost about as much as the decoding).
    level : float
        Interval probability; the calibration is fitted for 0.9.
    """
    if model.kind != "unet":
        raise InitError(f"model {model.metadata.get('path', '?')} is a {model.kind!r} model, not a unet")
    c = np.asarray(cube)
    ny, nx = c.shape[:2]
    logits = tiled_logits(model.network(), image_inputs(c, model.inputs), tile=tile, overlap=overlap)
    npar, nb = logits.shape[:2]
    flat = logits.reshape(npar, nb, ny * nx).transpose(2, 0, 1)
    good = valid_pixels(c).reshape(-1)
    vals, ivs = _decode(model_bins(model.metadata), flat, model.metadata.get("calibration"), level, intervals)
    vals[~good] = np.nan
    if ivs is not None:
        ivs[~good] = np.nan
        ivs = ivs.reshape(ny, nx, npar, 2)
    return vals.reshape(ny, nx, npar), ivs


class UNetSettings(dict):
    """U-Net training settings with their defaults (a dict, stored in the model file).

    Keys: ``epochs`` (60), ``crop`` (64 pixels, tile side of the training crops), ``batch``
    (8 crops), ``lr`` (2e-3, Adam), ``val_fraction`` (0.15 of the pixels, held out in 8 x 8
    blocks), ``patience`` (10 epochs), ``seed`` (0), ``channels`` (16), ``min_delta`` (1e-3),
    ``min_steps`` (10 optimiser steps per epoch at least: a small field still gets trained),
    ``mirror`` (True: each map's polarity mirror image is trained on as well,
    :func:`stokesflow.nn_init.features.polarity_mirror`; its held-out blocks stay out).
    An epoch is one pass over the training maps: with the mirror images it
    takes twice the optimiser steps (``min_steps`` included), so each
    polarity gets the steps one polarity gets without them.
    """

    DEFAULTS: Mapping[str, Any] = {"epochs": 60, "crop": 64, "batch": 8, "lr": 2e-3, "val_fraction": 0.15,
                                   "patience": 10, "seed": 0, "channels": 16, "min_delta": 1e-3, "min_steps": 10,
                                   "mirror": True}

    def __init__(self, **kw: Any) -> None:
        unknown = sorted(set(kw) - set(self.DEFAULTS))
        if unknown:
            raise InitError(f"unknown unet training setting(s) {unknown}; valid: {sorted(self.DEFAULTS)}")
        super().__init__({**self.DEFAULTS, **{k: v for k, v in kw.items() if v is not None}})
        if (int(self["epochs"]) < 1 or int(self["crop"]) < 8 or not 0 < float(self["val_fraction"]) < 0.9
                or not isinstance(self["mirror"], bool)):
            raise InitError(f"unet training settings out of range: epochs >= 1, crop >= 8, 0 < val_fraction < 0.9, "
                            f"mirror true or false; got {dict(self)}")


def _digest(params: Sequence[np.ndarray], masks: Sequence[np.ndarray], st: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    for p, m in zip(params, masks):
        h.update(np.ascontiguousarray(p, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(m).tobytes())
    h.update(repr(sorted((k, v) for k, v in st.items() if k != "epochs")).encode())  # more epochs may resume
    return h.hexdigest()[:32]


def _kl(torch: Any, logits: Any, target: Any, mask: Any) -> Any:
    """Mean over masked pixels of the summed-over-parameters KL(target || softmax(logits)).

    logits, target: (b, npar, nbins, h, w); mask (b, h, w) float.
    """
    logp = torch.log_softmax(logits, dim=2)
    tlogt = torch.where(target > 0, target * torch.log(target.clamp_min(1e-12)), torch.zeros_like(target))
    kl = (tlogt - target * logp).sum(dim=(1, 2))
    return (kl * mask).sum() / mask.sum().clamp_min(1.0)


def train_unet(
    cubes: Sequence[np.ndarray],
    params: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    specs: Sequence[Any],
    wavelength: np.ndarray,
    *,
    metadata: Mapping[str, Any],
    settings: Mapping[str, Any] | None = None,
    threads: int | None = None,
    device: str = "cpu",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> Any:
    """Train a U-Net on maps; calibrate its intervals on held-out pixels; return the model (best epoch).

    Parameters
    ----------
    cubes : sequence of ndarray (ny, nx, 4, nw)
        Observed spectra in continuum units (maps may differ in size).
    params : sequence of ndarray (ny, nx, npar)
        Inverted parameters [units], columns in the order of ``specs``.
    masks : sequence of ndarray (ny, nx) bool
        Pixels that count in the loss (good status, finite parameters and spectra).
    specs : sequence of ParameterSpec
        The backend's parameters.
    wavelength : ndarray (nw,)
        [A].
    metadata : mapping
        ``instrument``, ``spectral_instrument``, ``lines``, ``provenance``.
    settings : mapping, optional
        See :class:`UNetSettings`.
    threads : int, optional
        ``torch.set_num_threads``.
    device : str
        ``"cpu"`` or ``"cuda"``.
    on_epoch : callable, optional
        Called with each epoch's history entry (``epoch``, ``train_loss``, ``val_loss``, ``seconds``).
    checkpoint : path, optional
        Written after every epoch (:mod:`stokesflow.nn_init.checkpoint`); a run killed at any
        moment and started again on the same data and settings continues after the last
        finished epoch, drawing the same training crops as an uninterrupted run.

    Returns
    -------
    NetworkModel
        ``kind="unet"``; ``metadata["calibration"]`` holds per parameter the softmax
        ``temperature``, the interval ``scale`` and the held-out ``coverage`` of the 90 % interval.

    Raises
    ------
    InitError
        Too few good pixels (fewer than 50 in the training part or 20 held out), or a
        checkpoint written for other data or settings.
    """
    from stokesflow.nn_init.checkpoint import load_checkpoint, save_checkpoint
    from stokesflow.nn_init.model_file import NetworkModel

    torch = torch_or_error("training a unet")
    st = UNetSettings(**dict(settings or {}))
    if threads:
        torch.set_num_threads(int(threads))
    rng = np.random.default_rng(int(st["seed"]))
    cubes = [np.asarray(c, dtype=np.float32) for c in cubes]
    params = [np.asarray(p, dtype=np.float64) for p in params]
    masks = [np.asarray(m, dtype=bool) & np.isfinite(p).all(axis=2) & valid_pixels(c)
             for c, p, m in zip(cubes, params, masks)]
    # held-out pixels: random 8 x 8 blocks (neighbours of a training pixel share its input context)
    tr_masks, va_masks = [], []
    for m in masks:
        by, bx = -(-m.shape[0] // 8), -(-m.shape[1] // 8)
        held = rng.random((by, bx)) < float(st["val_fraction"])
        held = np.kron(held, np.ones((8, 8), dtype=bool))[:m.shape[0], :m.shape[1]]
        tr_masks.append(m & ~held)
        va_masks.append(m & held)
    n_tr, n_va = int(sum(m.sum() for m in tr_masks)), int(sum(m.sum() for m in va_masks))
    if n_tr < 50 or n_va < 20:
        raise InitError(f"unet training needs at least 50 good pixels to train on and 20 held out, got {n_tr} and "
                        f"{n_va}; invert a larger field")
    n_own = len(cubes)
    if st["mirror"]:
        # both polarities in training: each map's mirror image, trained on its training pixels only
        # (the mirror of a held-out block is neither trained on nor validated)
        for c, p, m in list(zip(cubes, params, tr_masks)):
            ny, nx = p.shape[:2]
            mir = polarity_mirror(c.reshape(ny * nx, 4, -1), p.reshape(ny * nx, -1), specs)
            if mir is None:
                break
            cubes.append(mir[0].reshape(c.shape).astype(np.float32))
            params.append(mir[1].reshape(p.shape))
            tr_masks.append(m)
            va_masks.append(np.zeros_like(m))
    good_x = np.concatenate([c[m] for c, m in zip(cubes, tr_masks)])
    good_p = np.concatenate([p[m] for p, m in zip(params, tr_masks)])
    scaling = InputScaling.fit(good_x)
    encoding = TargetEncoding.fit(specs, good_p, log=False)  # the metadata's record: the bins are what it learns
    bins = _fit_bins(specs, good_p, N_BINS)
    arch = unet_architecture(cubes[0].shape[-1], len(specs), channels=int(st["channels"]))
    xs = [image_inputs(c, scaling) for c in cubes]
    # soft targets (npar, nbins, ny, nx) per map; NaN parameters get zeros (masked out anyway)
    ts = []
    for p in params:
        ny, nx = p.shape[:2]
        flat = np.nan_to_num(p.reshape(-1, p.shape[2]))
        t = np.stack([b.encode(flat[:, j]) for j, b in enumerate(bins)], axis=1)
        ts.append(np.ascontiguousarray(t.reshape(ny, nx, len(bins), -1).transpose(2, 3, 0, 1)).astype(np.float32))

    torch.manual_seed(int(st["seed"]))
    net = build_unet(arch).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=float(st["lr"]))
    crop = _pad4(int(st["crop"]))
    batch = int(st["batch"])
    # one epoch: a pass over every training map, the mirror images included (the same steps per
    # polarity as without them; with half the steps a 40-epoch U-Net fell from 0.913 to 0.866 in
    # inclination on its own field, GPU, 2026-11-30)
    steps = max(int(st["min_steps"]), int(np.ceil(n_tr / float(batch * crop * crop)))) * len(cubes) // n_own
    digest = _digest(params, masks, st)
    progress = load_checkpoint(torch, checkpoint, digest, net, opt)
    if "numpy_rng" in progress["extra"]:
        rng.bit_generator.state = progress["extra"]["numpy_rng"]
    history: list[dict[str, Any]] = progress["history"]
    best: dict[str, Any] = progress["best"]
    va_t = [torch.from_numpy(m.astype(np.float32))[None] for m in va_masks]

    def crops() -> tuple[Any, Any, Any]:
        xb, tb, mb = [], [], []
        for _ in range(batch):
            k = int(rng.integers(len(xs)))
            ny, nx = xs[k].shape[1:]
            h, w = min(crop, ny // 4 * 4 or ny), min(crop, nx // 4 * 4 or nx)
            y0, x0 = int(rng.integers(ny - h + 1)), int(rng.integers(nx - w + 1))
            xb.append(xs[k][:, y0:y0 + h, x0:x0 + w])
            tb.append(ts[k][:, :, y0:y0 + h, x0:x0 + w])
            mb.append(tr_masks[k][y0:y0 + h, x0:x0 + w])
        h = min(a.shape[1] for a in xb)
        w = min(a.shape[2] for a in xb)
        cut = [(a[..., :h, :w]) for a in xb]
        return (torch.from_numpy(np.stack(cut)).to(device),
                torch.from_numpy(np.stack([a[..., :h, :w] for a in tb])).to(device),
                torch.from_numpy(np.stack([a[:h, :w] for a in mb]).astype(np.float32)).to(device))

    def val_loss() -> float:
        net.eval()
        tot = cnt = 0.0
        with torch.inference_mode():
            for x, t, m in zip(xs, ts, va_t):
                if float(m.sum()) == 0:
                    continue
                lg = torch.from_numpy(tiled_logits(net, x, device=device))[None]
                tot += float(_kl(torch, lg, torch.from_numpy(t)[None], m)) * float(m.sum())
                cnt += float(m.sum())
        return tot / max(cnt, 1.0)

    patience = int(st["patience"])
    for epoch in range(progress.start_epoch, int(st["epochs"])):
        if progress.stopped(patience):
            break
        t0 = time.perf_counter()
        net.train()
        total = 0.0
        for _ in range(steps):
            xb, tb, mb = crops()
            opt.zero_grad()
            loss = _kl(torch, net(xb), tb, mb)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        val = val_loss()
        entry = {"epoch": epoch + 1, "train_loss": total / steps, "val_loss": val, "steps": steps,
                 "seconds": time.perf_counter() - t0}
        history.append(entry)
        if val < best["loss"] * (1.0 - float(st["min_delta"])):
            best = {"loss": val, "epoch": epoch,
                    "state": {k: v.detach().to("cpu").clone() for k, v in net.state_dict().items()}}
        progress["best"] = best
        progress["extra"] = {"numpy_rng": rng.bit_generator.state}
        stop = progress.stopped(patience)
        log.info("unet epoch %d/%d: train KL %.4g, validation KL %.4g (best %.4g at epoch %d)%s", epoch + 1,
                 int(st["epochs"]), entry["train_loss"], val, best["loss"], best["epoch"] + 1,
                 "; stopping early" if stop else "")
        save_checkpoint(torch, checkpoint, digest, net, opt, progress)
        if on_epoch is not None:
            on_epoch(entry)
    state = best["state"] if best["state"] is not None else {k: v.to("cpu") for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    net.eval()
    # calibration on the held-out pixels
    lg = [tiled_logits(net, x, device=device) for x in xs]
    va_logits = np.concatenate([l.reshape(l.shape[0], l.shape[1], -1)[:, :, m.reshape(-1)].transpose(2, 0, 1)
                                for l, m in zip(lg, va_masks)])
    va_true = np.concatenate([p[m] for p, m in zip(params, va_masks)])
    calib = []
    curve: dict[str, list[float]] = {}
    for j, b in enumerate(bins):
        temp, scale = calibrate(b, va_logits[:, j, :], va_true[:, j], level=0.9)
        p = softmax(va_logits[:, j, :], temp)
        period = (b.upper - b.lower) if b.circular else None
        cov = coverage(b.interval(p, 0.9, scale), va_true[:, j], period)
        calib.append({"name": specs[j].name, "temperature": temp, "scale": scale, "coverage": cov})
        # the calibration curve: held-out coverage of the calibrated intervals at every nominal level
        curve[specs[j].name] = [coverage(b.interval(p, lv, scale), va_true[:, j], period) for lv in CURVE_LEVELS]
    meta = dict(metadata)
    meta.update({
        "wavelength": np.asarray(wavelength, dtype=np.float64).tolist(),
        "parameters": list(encoding.names), "units": list(encoding.units),
        "inputs": scaling.to_dict(), "targets": encoding.to_dict(), "arch": arch,
        "bins": [{"lower": b.lower, "upper": b.upper, "n": b.n, "circular": b.circular} for b in bins],
        "calibration": calib, "interval_level": 0.9,
        "calibration_curve": {"levels": list(CURVE_LEVELS), "coverage": curve},
        "history": history, "best_epoch": best["epoch"] + 1, "settings": dict(st),
        "n_train": n_tr, "n_val": n_va, "data_digest": digest,
    })
    return NetworkModel(kind="unet", metadata=meta, state_dict=dict(state))


class UNetInit(NetworkInit):
    """The ``unet`` provider: a trained U-Net's guess for the pixels of a chunk (options ``model``, ``threads``).

    ``stokesflow invert --init unet -I model=unet.pt``. A chunk is a flat range
    of pixels; the provider lays it out as the rows it touches (pixels of
    those rows outside the chunk count as missing) and runs the network on
    that band only: a chunk sees no rows of its neighbours, so guesses near a
    chunk's first and last rows are slightly worse. For seamless guesses over
    the whole field (and the 90 % intervals) use the prediction pass instead:
    ``stokesflow predict -m unet.pt -o guess.h5`` (bands with a halo of rows),
    then ``--init previous -I file=guess.h5``.
    """

    name = "unet"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.shape: tuple[int, int] | None = None

    def check_observation(self, shape: tuple[int, int], wavelength: np.ndarray | None = None) -> None:
        """Remember the field's shape (needed to lay a chunk out as rows); check the wavelength grid."""
        self.shape = (int(shape[0]), int(shape[1]))
        if wavelength is not None:
            loaded_model(self.path).check_compatible(where="the observed wavelength grid",
                                                     wavelength=np.asarray(wavelength))

    def bind(self, backend: Any) -> "UNetInit":  # noqa: D102 - see NetworkInit
        bound = super().bind(backend)
        bound.shape = self.shape
        return bound

    def initial_guess(self, stokes, wavelength, *, start, stop):  # noqa: D102 - see base
        import torch

        if self.shape is None:
            raise InitError("init provider 'unet' needs the field's shape: check_observation((ny, nx)) before tasks")
        model = loaded_model(self.path)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        s = np.asarray(stokes)
        nx = self.shape[1]
        y0, y1 = start // nx, -(-stop // nx)
        band = np.full(((y1 - y0) * nx,) + s.shape[1:], np.nan, dtype=np.float32)
        off = start - y0 * nx
        band[off:off + s.shape[0]] = s
        vals, _ = predict_field(model, band.reshape(y1 - y0, nx, *s.shape[1:]), intervals=False)
        return self._to_init_columns(vals.reshape(-1, vals.shape[2])[off:off + s.shape[0]])

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "shape": self.shape}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.shape = state.get("shape")
