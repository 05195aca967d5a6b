"""The model file (``model.pt``): a trained network with everything needed to apply it safely.

A model file is a ``torch.save`` of a plain dictionary (loaded with
``weights_only=True``: no pickled code runs when it is opened):

- ``format`` = ``"stokesflow-model"``, ``format_version`` = 1, ``kind`` (``"cnn"``);
- ``metadata``: ``instrument``, ``spectral_instrument``, ``lines``,
  ``wavelength`` [A], ``parameters`` (the columns it predicts: a backend's
  parameter names, or for a depth-stratified backend such as SIR its node
  columns ``NAME@LOGTAU`` and height-independent parameters, a subset of
  ``Backend.init_columns``), ``units``, the input normalisation
  (``inputs``), the target encoding (``targets``: per-parameter mean, sigma,
  bounds, circular flags), the architecture (``arch``), the training history
  (``history``: train and validation loss per epoch), and ``provenance`` (the
  input and result files it was trained on, their configuration digests, the
  pixel counts, the package versions);
- ``state_dict``: the network weights.

:meth:`NetworkModel.check_compatible` compares a model with the data it is
about to be applied to (lines, wavelength grid, parameter names, the run's
backend init columns, spectral instrument) and raises :class:`ModelMismatchError` naming each mismatch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stokesflow.backends.base import valid_pixels
from stokesflow.nn_init.features import InputScaling, TargetEncoding
from stokesflow.nn_init.network import build_network, run_network, torch_or_error
from stokesflow.nn_init.providers import InitError

__all__ = ["MODEL_FORMAT", "ModelMismatchError", "ModelFileError", "NetworkModel", "load_model"]

MODEL_FORMAT = "stokesflow-model"


class ModelFileError(InitError):
    """A model file that cannot be read (missing, not a stokesflow model, newer format)."""


class ModelMismatchError(InitError):
    """A model applied to data it was not trained for (other lines, grid, parameters, instrument)."""


@dataclass
class NetworkModel:
    """A trained network and its metadata.

    Attributes
    ----------
    kind : str
        ``"cnn"`` or ``"unet"`` (:mod:`stokesflow.nn_init.unet`: metadata also holds ``bins`` and
        ``calibration``).
    metadata : dict
        See the module docstring.
    state_dict : dict
        Network weights (torch tensors).
    """

    kind: str
    metadata: dict[str, Any]
    state_dict: dict[str, Any]
    _net: Any = field(default=None, repr=False, compare=False)
    _codecs: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def inputs(self) -> InputScaling:
        """The input normalisation (built once from ``metadata["inputs"]``)."""
        if "inputs" not in self._codecs:
            self._codecs["inputs"] = InputScaling.from_dict(self.metadata["inputs"])
        return self._codecs["inputs"]

    @property
    def targets(self) -> TargetEncoding:
        """The target encoding (built once from ``metadata["targets"]``)."""
        if "targets" not in self._codecs:
            self._codecs["targets"] = TargetEncoding.from_dict(self.metadata["targets"])
        return self._codecs["targets"]

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(self.metadata["parameters"])

    @property
    def wavelength(self) -> np.ndarray:
        return np.asarray(self.metadata["wavelength"], dtype=np.float64)

    def network(self) -> Any:
        """The torch network with the weights loaded (built once)."""
        if self._net is None:
            if self.kind == "unet":
                from stokesflow.nn_init.unet import build_unet

                net = build_unet(self.metadata["arch"])
            else:
                net = build_network(self.metadata["arch"])
            net.load_state_dict(self.state_dict)
            net.eval()
            self._net = net
        return self._net

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model file atomically (a temporary file, then a rename)."""
        torch = torch_or_error("saving a model")
        path = Path(path)
        tmp = path.with_name(path.name + ".partial")
        torch.save({"format": MODEL_FORMAT, "format_version": 1, "kind": self.kind,
                    "metadata": self.metadata, "state_dict": self.state_dict}, tmp)
        tmp.replace(path)
        return path

    def predict(self, stokes: np.ndarray, *, batch: int | None = None) -> np.ndarray:
        """Parameters (npix, npar) float64 [units] for spectra (npix, 4, nw); NaN rows for NaN/inf pixels.

        ``batch``: pixels per network call (default: sized to the cache,
        :func:`~stokesflow.nn_init.network.inference_batch`).
        """
        if self.kind == "unet":
            raise InitError(f"model {self.metadata.get('path', '?')} is a unet: it needs images, not pixels; "
                            "use stokesflow.nn_init.unet.predict_field (stokesflow predict)")
        s = np.asarray(stokes)
        out = np.full((s.shape[0], len(self.parameters)), np.nan, dtype=np.float64)
        good = valid_pixels(s)
        if good.any():
            x = self.inputs.apply(s[good] if not good.all() else s)
            out[good] = self.targets.decode(run_network(self.network(), x, batch=batch))
        return out

    def check_compatible(self, *, where: str, lines: Sequence[str] | None = None,
                         wavelength: np.ndarray | None = None, parameters: Sequence[str] | None = None,
                         columns: Sequence[str] | None = None, spectral_instrument: str | None = None) -> None:
        """Raise :class:`ModelMismatchError` if the data differ from what the model was trained on.

        Each argument left None is not checked. ``where`` names the data
        (file or provider) in the message. ``parameters`` must equal the
        model's columns; ``columns`` (a backend's ``init_columns``) must hold
        every column the model predicts, and when they are plain parameter
        names (a backend without node columns, ME) the model must give them all.
        """
        m = self.metadata
        problems = []
        if lines is not None and list(lines) != list(m["lines"]):
            problems.append(f"lines {list(lines)} but the model was trained on {list(m['lines'])}")
        if parameters is not None and list(parameters) != list(m["parameters"]):
            problems.append(f"parameters {list(parameters)} but the model predicts {list(m['parameters'])}")
        if columns is not None:
            cols, mine = list(columns), list(m["parameters"])
            unknown = [c for c in mine if c not in cols]
            nodes = any("@" in c for c in cols)
            missing = [] if nodes else [c for c in cols if c not in mine]
            if unknown or missing:
                what = []
                if unknown:
                    what.append(f"predicts {_few(unknown)}, which the run does not take")
                if missing:
                    what.append(f"lacks {_few(missing)}")
                problems.append(f"initial-guess columns {_few(cols)}, but the model (columns {_few(mine)}) "
                                + " and ".join(what))
        if spectral_instrument is not None and m.get("spectral_instrument") not in (None, "", spectral_instrument):
            problems.append(f"spectral instrument {spectral_instrument!r} but the model was trained on "
                            f"{m['spectral_instrument']!r}")
        if wavelength is not None:
            wl = np.asarray(wavelength, dtype=np.float64)
            mw = self.wavelength
            if wl.size != mw.size:
                problems.append(f"{wl.size} wavelength points but the model was trained on {mw.size} "
                                f"({mw[0]:.4f}..{mw[-1]:.4f} A)")
            else:
                step = float(np.min(np.abs(np.diff(mw)))) if mw.size > 1 else 1e-3
                off = float(np.max(np.abs(wl - mw)))
                if off > 0.1 * step:
                    problems.append(f"a wavelength grid {wl[0]:.4f}..{wl[-1]:.4f} A that differs from the model's "
                                    f"{mw[0]:.4f}..{mw[-1]:.4f} A by up to {off * 1e3:.1f} mA (tolerance "
                                    f"{0.1 * step * 1e3:.1f} mA)")
        if problems:
            raise ModelMismatchError(
                f"model {m.get('path', '?')} ({self.kind}) does not fit {where}: " + "; ".join(problems)
                + ". Train a model on results of this kind of data (stokesflow train) or use another --init"
            )


def _few(names: Sequence[str], n: int = 6) -> str:
    """A list of names for a message, cut after ``n`` (with the count)."""
    names = list(names)
    if len(names) <= n:
        return str(names)
    return "[" + ", ".join(repr(x) for x in names[:n]) + f", ... ({len(names)} in all)]"


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _unreadable(p: Path, exc: Exception) -> str:
    """Why a file torch cannot load is no model file, in words (torch's own text is for torch's users)."""
    with open(p, "rb") as f:
        head = f.read(len(_HDF5_SIGNATURE))
    if head == _HDF5_SIGNATURE:
        return (f"{p} is an HDF5 file, not a model file of `stokesflow train` (nor a k-means database of "
                "`stokesflow assist --model kmeans`); give the model.pt that train or assist wrote")
    first = (str(exc).strip().splitlines() or [""])[0][:160]
    return (f"{p}: not a stokesflow model file: torch cannot read it ({type(exc).__name__}"
            f"{': ' + first if first else ''}); give the model.pt that train or assist wrote")


def load_model(path: str | os.PathLike[str]) -> NetworkModel:
    """Read a model file written by :meth:`NetworkModel.save`.

    Raises
    ------
    ModelFileError
        Missing file, not a stokesflow model, or a newer format.
    """
    torch = torch_or_error(f"reading the model file {os.fspath(path)!r}")
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"model file {os.fspath(path)!r} not found (looked for {p.resolve()}); "
                             "train one with `stokesflow train` or `stokesflow assist`")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ModelFileError(_unreadable(p, exc)) from None
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{p}: not a stokesflow model file (no format={MODEL_FORMAT!r} entry)")
    if int(data.get("format_version", 0)) > 1:
        raise ModelFileError(f"{p}: model format version {data['format_version']} is newer than this "
                             "stokesflow reads (1); upgrade stokesflow")
    meta = dict(data["metadata"])
    meta["path"] = str(p)
    return NetworkModel(kind=str(data["kind"]), metadata=meta, state_dict=data["state_dict"])
