"""Initial-guess providers: where each pixel's fit starts.

A provider is built from its name and an options mapping (the
``[init.<name>]`` table of the run configuration), then bound to a backend in
the driver with :meth:`InitProvider.bind`, which checks the options against
the backend's parameters. The bound provider is small and picklable: it
travels with every task, and the worker asks it for the starting points of
its chunk with :meth:`InitProvider.initial_guess`.

Built in:

- ``"default"``: no starting point (``init=None``); the backend uses its own
  per-pixel classical estimates (for ME: centre of gravity and weak-field
  approximation).
- ``"constant"``: one fixed vector for every pixel, from the options (one key
  per parameter name, in the backend's units) with the midpoint of each
  parameter's bounds for the ones not given.

- ``"previous"``: start from a finished result file or an init cube
  (:mod:`stokesflow.nn_init.previous`).
- ``"kmeans"``: the model of the best-matching inverted representative
  profile (:mod:`stokesflow.nn_init.kmeans`).
- ``"cnn"``: a trained network's guess (:mod:`stokesflow.nn_init.network_init`;
  needs torch, imported only when used).
- ``"unet"``: a trained U-Net's guess on the rows of each chunk
  (:mod:`stokesflow.nn_init.unet`; for seamless guesses and intervals use
  ``stokesflow predict`` then ``previous``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import numpy as np

__all__ = [
    "InitError",
    "InitProvider",
    "DefaultInit",
    "ConstantInit",
    "PROVIDERS",
    "PLANNED_PROVIDERS",
    "get_provider",
    "list_providers",
]


class InitError(ValueError):
    """Base class of errors raised by :mod:`nn_init` (unknown provider, bad options)."""


class InitProvider:
    """Base class of initial-guess providers.

    Parameters
    ----------
    options : mapping, optional
        The provider's ``[init.<name>]`` table.
    """

    name: ClassVar[str] = "base"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = dict(options or {})

    def bind(self, backend: Any) -> "InitProvider":
        """Check the options against ``backend`` and return a provider ready for tasks.

        Raises
        ------
        InitError
            Options that do not fit the backend's parameters.
        """
        return self

    def initial_guess(
        self, stokes: np.ndarray, wavelength: np.ndarray, *, start: int, stop: int
    ) -> np.ndarray | None:
        """Starting points (npix, npar) for the pixels ``start..stop`` (flat row-major indices).

        ``stokes`` (npix, 4, nw) holds *every* pixel of the range in order
        (row ``i`` is flat pixel ``start + i``), including pixels with NaN or
        inf that the backend will skip, so a provider may look pixels up by
        position; the caller keeps the rows of the pixels it inverts.
        ``wavelength`` is in A. ``None`` lets the backend choose its own
        starting points.
        """
        raise NotImplementedError

    def check_observation(self, shape: tuple[int, int], wavelength: np.ndarray | None = None) -> None:
        """Raise :class:`InitError` if the bound provider cannot serve an observation of ``shape`` (ny, nx).

        Called by the driver after :meth:`bind` (providers that read maps of a
        field, such as ``previous``, check their shape here). The base class
        accepts every observation.
        """

    @staticmethod
    def is_available() -> tuple[bool, str]:
        """(True, "") when the provider can run here, else (False, what to install)."""
        return True, ""

    def describe(self) -> dict[str, Any]:
        """Name and options, for the result file's fingerprint."""
        return {"name": self.name, "options": dict(self.options)}

    def effective_options(self) -> dict[str, Any]:
        """Every option with its value, defaults filled in (``stokesflow invert --print-config``)."""
        return dict(self.options)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} options={self.options!r}>"


class DefaultInit(InitProvider):
    """The backend's own per-pixel classical estimates (``init=None``). Takes no options."""

    name = "default"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        if self.options:
            raise InitError(
                f"init provider 'default' takes no options, got {sorted(self.options)} in [init.default]"
            )

    def initial_guess(self, stokes, wavelength, *, start, stop):  # noqa: D102 - see base
        return None


class ConstantInit(InitProvider):
    """One fixed starting vector for every pixel.

    Options are parameter names of the backend with values in its units
    (``[init.constant] B = 500.0``); a parameter not given starts at the
    midpoint of its bounds.
    """

    name = "constant"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        for key, value in self.options.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InitError(
                    f"[init.constant] {key} must be a finite number, got {type(value).__name__} {value!r}"
                )
        self.vector: np.ndarray | None = None
        self._names: tuple[str, ...] | None = None

    def bind(self, backend: Any) -> "ConstantInit":
        specs = tuple(backend.parameters)
        names = [p.name for p in specs]
        unknown = sorted(set(self.options) - set(names))
        if unknown:
            raise InitError(
                f"[init.constant] names unknown parameter(s) {unknown}; backend "
                f"{backend.name!r} fits {names}"
            )
        vec = np.empty(len(specs), dtype=np.float64)
        for j, p in enumerate(specs):
            if p.name in self.options:
                v = float(self.options[p.name])
                if not p.lower <= v <= p.upper:
                    raise InitError(
                        f"[init.constant] {p.name} = {v} {p.unit} is outside the bounds "
                        f"[{p.lower}, {p.upper}] of backend {backend.name!r}"
                    )
                vec[j] = v
            else:
                vec[j] = 0.5 * (p.lower + p.upper)
        bound = ConstantInit(self.options)
        bound.vector = vec
        bound._names = tuple(names)
        return bound

    def initial_guess(self, stokes, wavelength, *, start, stop):  # noqa: D102 - see base
        if self.vector is None:
            raise InitError("ConstantInit.initial_guess called before bind(backend)")
        return np.broadcast_to(self.vector, (stokes.shape[0], self.vector.size)).copy()

    def describe(self) -> dict[str, Any]:  # noqa: D102 - see base
        out = super().describe()
        if self.vector is not None:
            out["vector"] = [float(v) for v in self.vector]
        return out

    def effective_options(self) -> dict[str, Any]:
        """Each parameter's starting value once bound (the midpoint of its bounds when not given)."""
        if self.vector is None or self._names is None:
            return dict(self.options)
        return {n: float(v) for n, v in zip(self._names, self.vector)}


#: name -> provider class of the built-in providers (filled at the end of this module).
PROVIDERS: dict[str, type[InitProvider]] = {"default": DefaultInit, "constant": ConstantInit}

#: Providers named in the design but not built yet, with what they need.
PLANNED_PROVIDERS: dict[str, str] = {}


def list_providers() -> dict[str, tuple[bool, str]]:
    """Every known provider name with (available, reason-if-not)."""
    out = {name: cls.is_available() for name, cls in PROVIDERS.items()}
    out.update({name: (False, why) for name, why in PLANNED_PROVIDERS.items()})
    return out


def get_provider(name: str, options: Mapping[str, Any] | None = None) -> InitProvider:
    """The provider called ``name``, built with ``options``.

    Raises
    ------
    InitError
        Unknown or not yet available name (the message lists the available
        ones), or bad options.
    """
    if name in PROVIDERS:
        ok, why = PROVIDERS[name].is_available()
        if not ok:
            raise InitError(f"init provider {name!r} cannot run here: it {why}")
        return PROVIDERS[name](options)
    if name in PLANNED_PROVIDERS:
        raise InitError(f"init provider {name!r} is {PLANNED_PROVIDERS[name]}; available: {sorted(PROVIDERS)}")
    raise InitError(f"unknown init provider {name!r}; available: {sorted(PROVIDERS)}")


def _register_builtins() -> None:
    # imported here, after the base class exists (these modules import it)
    from stokesflow.nn_init.kmeans import KMeansInit
    from stokesflow.nn_init.network_init import NetworkInit
    from stokesflow.nn_init.previous import PreviousInit
    from stokesflow.nn_init.unet import UNetInit

    for cls in (PreviousInit, KMeansInit, NetworkInit, UNetInit):
        PROVIDERS[cls.name] = cls


_register_builtins()
