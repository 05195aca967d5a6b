"""The ``cnn`` provider: a trained network's guess for every pixel of the chunk.

``stokesflow invert --init cnn -I model=model.pt`` (``[init.cnn] model = "model.pt"``,
optional ``threads``, default 1: the torch threads of a worker task). The
model file (:mod:`stokesflow.nn_init.model_file`) is checked against the
backend when the provider is bound (parameter names, lines, spectral
instrument) and against the observed wavelength grid on the first chunk; a
mismatch is an :class:`~stokesflow.nn_init.model_file.ModelMismatchError`
naming it. The provider itself is small (the path); each worker process loads
the model once and keeps it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from stokesflow.nn_init.providers import InitError, InitProvider

__all__ = ["NetworkInit", "loaded_model"]

#: Per process: (path, mtime) -> loaded model.
_MODELS: dict[tuple[str, float], Any] = {}


def loaded_model(path: str) -> Any:
    """The model in ``path``, loaded once per process (reloaded when the file changes)."""
    from stokesflow.nn_init.model_file import load_model

    try:
        key = (path, os.path.getmtime(path))
    except OSError:
        key = (path, -1.0)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(path)
    return _MODELS[key]


class NetworkInit(InitProvider):
    """Starting points predicted by a trained network (option ``model``)."""

    name = "cnn"

    @staticmethod
    def is_available() -> tuple[bool, str]:
        from stokesflow.nn_init.network import torch_installed

        if not torch_installed():
            return False, 'needs PyTorch: pip install "stokesflow[nn]" (CPU build: pip install torch==2.13.0)'
        return True, ""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        unknown = sorted(set(self.options) - {"model", "threads"})
        if unknown:
            raise InitError(f"[init.{self.name}] takes 'model' and 'threads', got {unknown}")
        m = self.options.get("model")
        if not isinstance(m, (str, os.PathLike)) or not str(m):
            raise InitError(f"init provider {self.name!r} needs a trained model: -I model=model.pt "
                            f"([init.{self.name}] model = \"model.pt\"), written by stokesflow train or assist")
        threads = self.options.get("threads", 1)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InitError(f"[init.{self.name}] threads must be an integer >= 1, got {threads!r}")
        self.path = str(Path(m).resolve())
        self.threads = int(threads)
        self._checked_grid = False
        self._index: list[int] | None = None  # the backend's init column of each model column
        self._ncol = 0

    def bind(self, backend: Any) -> "NetworkInit":
        model = loaded_model(self.path)
        if model.kind != self.name:
            raise InitError(f"[init.{self.name}] {self.path} holds a {model.kind!r} model; use --init {model.kind}")
        opts = getattr(backend, "options", None)
        lines = getattr(opts, "lines", None)
        columns = list(getattr(backend, "init_columns", backend.parameter_names))
        model.check_compatible(
            where=f"backend {backend.name!r}", columns=columns,
            lines=list(lines) if lines else None, spectral_instrument=getattr(opts, "instrument", None),
        )
        bound = type(self)(self.options)
        bound._index, bound._ncol = [columns.index(c) for c in model.parameters], len(columns)
        return bound

    def _to_init_columns(self, pred: np.ndarray) -> np.ndarray:
        """The model's columns placed at the bound backend's init columns; NaN (not given) elsewhere."""
        if self._index is None or self._index == list(range(self._ncol)):
            return pred
        out = np.full((pred.shape[0], self._ncol), np.nan)
        out[:, self._index] = pred
        return out

    def initial_guess(self, stokes, wavelength, *, start, stop):  # noqa: D102 - see base
        import torch

        model = loaded_model(self.path)
        if not self._checked_grid:
            model.check_compatible(where="the observed wavelength grid", wavelength=np.asarray(wavelength))
            self._checked_grid = True
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return self._to_init_columns(model.predict(np.asarray(stokes)))

    def describe(self) -> dict[str, Any]:  # noqa: D102 - see base
        model = loaded_model(self.path)
        return {"name": self.name, "options": {"model": self.path, "threads": self.threads},
                "model_digest": model.metadata.get("data_digest")}

    def __getstate__(self) -> dict[str, Any]:
        return {"options": self.options, "path": self.path, "threads": self.threads, "index": self._index,
                "ncol": self._ncol}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.options, self.path, self.threads = state["options"], state["path"], state["threads"]
        self._index, self._ncol = state.get("index"), state.get("ncol", 0)
        self._checked_grid = False
