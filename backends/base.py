"""The backend contract: parameter specs, chunk results and the base class.

Every inversion code (the numba ME solver, SIR, STiC, ...) is a subclass of
:class:`Backend`. The orchestrator only talks to this interface, so it never
spells out a backend's own options: each backend owns an options dataclass
(``options_class``) that is built from a plain mapping (a TOML table).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "ConfigError",
    "ParameterSpec",
    "ChunkResult",
    "Backend",
    "STATUS_OK",
    "STATUS_MAX_ITER",
    "STATUS_FAILED",
    "STATUS_BAD_INPUT",
    "STATUS_POOR_FIT",
    "STATUS_NOT_RUN",
    "STATUS_NAMES",
    "options_from_mapping",
]

#: Pixel status codes shared by every backend and the result file.
STATUS_OK = 0
STATUS_MAX_ITER = 1
STATUS_FAILED = 2
STATUS_BAD_INPUT = 3
#: The fit ended, but its reduced chi2 stays far above what the noise allows
#: (after the adaptive extra starts): never stored as ok.
STATUS_POOR_FIT = 4
STATUS_NOT_RUN = 255
STATUS_NAMES = {
    STATUS_OK: "ok",
    STATUS_MAX_ITER: "max-iterations",
    STATUS_FAILED: "failed",
    STATUS_BAD_INPUT: "skipped (bad input)",
    STATUS_POOR_FIT: "poor fit",
    STATUS_NOT_RUN: "not yet run",
}


class BackendError(Exception):
    """Base class of every error raised by :mod:`backends`."""


class BackendUnavailable(BackendError):
    """A known backend cannot run here (missing dependency or executable)."""


class ConfigError(BackendError, ValueError):
    """Options for a backend are wrong (unknown key, bad value)."""


@dataclass(frozen=True)
class ParameterSpec:
    """One fitted parameter of a backend.

    Attributes
    ----------
    name : str
        Name used in result files (``/params/<name>``).
    unit : str
        Physical unit (``"G"``, ``"deg"``, ``"km/s"``, ``"mA"``, ``""``).
    lower, upper : float
        Bounds of the physical range, in ``unit``.
    scale : float
        Typical magnitude, in ``unit``; used to scale solver steps.
    circular : bool
        True for an angle defined modulo ``upper - lower`` (the azimuth).
    """

    name: str
    unit: str
    lower: float
    upper: float
    scale: float
    circular: bool = False


@dataclass
class ChunkResult:
    """Result of inverting one chunk of ``npix`` pixels.

    Attributes
    ----------
    names : tuple of str
        Parameter names, in column order of ``params`` and ``sigma``.
    params : ndarray, shape (npix, npar), float64
        Best-fit parameters in the units of the backend's ParameterSpec;
        NaN for pixels with status 2 or 3.
    sigma : ndarray, shape (npix, npar), float64
        1-sigma uncertainties from the covariance at the solution.
    chi2 : ndarray, shape (npix,), float64
        Reduced weighted chi-square at the solution.
    n_iter : ndarray, shape (npix,), int32
        Solver iterations (summed over starts).
    status : ndarray, shape (npix,), uint8
        See ``STATUS_*``.
    synthetic : ndarray, shape (npix, 4, nw), float32, optional
        Best-fit profiles on the observed grid.
    errors : dict of int to str
        Diagnostic message per failed pixel (index within the chunk).
    """

    names: tuple[str, ...]
    params: np.ndarray
    sigma: np.ndarray
    chi2: np.ndarray
    n_iter: np.ndarray
    status: np.ndarray
    synthetic: np.ndarray | None = None
    errors: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        npix = self.status.shape[0]
        for attr in ("params", "sigma"):
            arr = getattr(self, attr)
            if arr.shape != (npix, len(self.names)):
                raise BackendError(
                    f"ChunkResult.{attr} has shape {arr.shape}, expected {(npix, len(self.names))}"
                )

    @property
    def npix(self) -> int:
        """Number of pixels in the chunk."""
        return int(self.status.shape[0])

    def param(self, name: str) -> np.ndarray:
        """Column of ``params`` for parameter ``name`` (shape (npix,))."""
        try:
            return self.params[:, self.names.index(name)]
        except ValueError:
            raise KeyError(f"no parameter {name!r}; this result has {list(self.names)}") from None

    def as_dict(self) -> dict[str, np.ndarray]:
        """Parameters as a name -> (npix,) mapping."""
        return {n: self.params[:, i] for i, n in enumerate(self.names)}


def options_from_mapping(cls: type, data: Mapping[str, Any] | None, *, where: str) -> Any:
    """Build the frozen options dataclass ``cls`` from a mapping.

    Unknown keys are rejected with the list of valid ones. Lists become tuples
    so the result stays hashable.

    Parameters
    ----------
    cls : type
        A dataclass type.
    data : mapping or None
        Values, e.g. one TOML table.
    where : str
        Where the mapping came from, for the error message.
    """
    data = dict(data or {})
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {unknown} in {where}; valid options are {sorted(valid)}"
        )
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**clean)


class Backend:
    """Base class of inversion backends, with no-op hooks.

    Subclasses set ``name``, ``options_class`` and implement ``parameters``,
    ``invert`` and ``synthesize``. A backend instance must be picklable: it is
    shipped to workers, which call :meth:`setup` once (compilation, scratch
    folders) before the first chunk.

    Parameters
    ----------
    options : options_class instance or mapping, optional
        Backend options; a mapping is validated by :func:`options_from_mapping`.
    """

    name: ClassVar[str] = "base"
    options_class: ClassVar[type | None] = None

    def __init__(self, options: Any = None) -> None:
        if self.options_class is not None and not isinstance(options, self.options_class):
            options = options_from_mapping(
                self.options_class, options, where=f"[backend.{self.name}] options"
            )
        self.options = options

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        """Whether the backend can run here, and why not if it cannot."""
        return True, ""

    @property
    def parameters(self) -> tuple[ParameterSpec, ...]:
        """The fitted parameters, in result-column order."""
        raise NotImplementedError

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Names of :attr:`parameters`."""
        return tuple(p.name for p in self.parameters)

    def for_observation(self, meta: Mapping[str, Any]) -> "Backend":
        """This backend with defaults filled from an observation's attributes.

        ``meta`` holds the observation file's attributes (``lines``,
        ``instrument``, ``noise``, ...). Options the user set explicitly win.
        The base class needs nothing from the observation and returns ``self``.
        """
        return self

    def setup(self) -> None:
        """Prepare a worker process (compile kernels, make scratch folders)."""

    def teardown(self) -> None:
        """Release what :meth:`setup` took."""

    def invert(
        self,
        stokes: np.ndarray,
        wavelength: np.ndarray,
        init: np.ndarray | None = None,
    ) -> ChunkResult:
        """Invert ``stokes`` of shape (npix, 4, nw) observed at ``wavelength`` [A]."""
        raise NotImplementedError

    def synthesize(self, params: np.ndarray | Mapping[str, np.ndarray], wavelength: np.ndarray) -> np.ndarray:
        """Stokes profiles (npix, 4, nw) for parameters (npix, npar) or a name mapping."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} options={self.options!r}>"
