"""The backend contract: parameter specs, chunk results and the base class.

Every inversion code (the numba ME solver, SIR, STiC, ...) is a subclass of
:class:`Backend`. The orchestrator only talks to this interface, so it never
spells out a backend's own options: each backend owns an options dataclass
(``options_class``) that is built from a plain mapping (a TOML table).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

# The solver's codes 0-3 are defined once, in lm_solver; re-exported here with
# the two codes only a backend or the result file gives (4 and 255).
from stokesflow.lm_solver import STATUS_BAD_INPUT, STATUS_FAILED, STATUS_MAX_ITER, STATUS_OK

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
    "coerce_option",
    "options_from_mapping",
    "named_params",
    "one_pixel_trial",
    "valid_pixels",
    "INVALID_PIXEL",
]

#: Pixel status codes shared by every backend and the result file: 0 ok,
#: 1 max-iterations, 2 failed, 3 bad input come from ``stokesflow.lm_solver``.
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


#: What makes a pixel "bad input" (status 3, not fitted), in words for messages.
INVALID_PIXEL = "NaN or inf in some Stokes value, or no positive Stokes I"


def valid_pixels(stokes: np.ndarray) -> np.ndarray:
    """Pixels that can be fitted: every Stokes value finite and Stokes I positive somewhere.

    A pixel without light (Stokes I <= 0 at every wavelength: the zeros that pad a rotated, aligned
    or mosaicked map, a missing slit position, an off-disc mask written as 0) is not an
    observation: it is skipped as bad input (status 3), as NaN is.

    Parameters
    ----------
    stokes : ndarray, (..., 4, nw)
        Stokes I, Q, U, V per pixel: (npix, 4, nw), or an image (ny, nx, 4, nw).

    Returns
    -------
    ndarray of bool, (...)
        (npix,) or (ny, nx).
    """
    s = np.asarray(stokes)
    finite = np.isfinite(s).all(axis=(-2, -1))
    with np.errstate(invalid="ignore"):
        lit = (s[..., 0, :] > 0).any(axis=-1)
    return finite & lit


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
    log_tau : ndarray, shape (ndepth,), optional
        Depth grid (log10 of the continuum optical depth at 500 nm) of
        ``stratified``; set by depth-stratified backends (SIR, ...) only.
    stratified : dict of str to ndarray, shape (npix, ndepth)
        Depth-stratified quantities on ``log_tau`` (empty for ME). Names and
        units shared with ME keep ME's (``B`` G, ``inclination``/``azimuth``
        deg, ``vlos`` km/s, positive = redshift); the others are ``T`` K,
        ``Pe`` dyn cm^-2, ``vmic`` km/s. NaN for pixels with status 2 or 3.
        ``params`` then holds the same quantities at one reference depth (the
        backend says which), so consumers of 2-D maps keep working.
    stratified_sigma : dict of str to ndarray, shape (npix, ndepth)
        1-sigma uncertainties of ``stratified`` (from the code's own error
        estimate, e.g. SIR's ``.err`` files); may hold a subset of its names.
    """

    names: tuple[str, ...]
    params: np.ndarray
    sigma: np.ndarray
    chi2: np.ndarray
    n_iter: np.ndarray
    status: np.ndarray
    synthetic: np.ndarray | None = None
    errors: dict[int, str] = field(default_factory=dict)
    log_tau: np.ndarray | None = None
    stratified: dict[str, np.ndarray] = field(default_factory=dict)
    stratified_sigma: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        npix = self.status.shape[0]
        for attr in ("params", "sigma"):
            arr = getattr(self, attr)
            if arr.shape != (npix, len(self.names)):
                raise BackendError(
                    f"ChunkResult.{attr} has shape {arr.shape}, expected {(npix, len(self.names))}"
                )
        if self.stratified or self.stratified_sigma:
            if self.log_tau is None:
                raise BackendError("ChunkResult.stratified is given without log_tau (ndepth,)")
            shape = (npix, int(np.shape(self.log_tau)[0]))
            for attr in ("stratified", "stratified_sigma"):
                for name, arr in getattr(self, attr).items():
                    if np.shape(arr) != shape:
                        raise BackendError(
                            f"ChunkResult.{attr}[{name!r}] has shape {np.shape(arr)}, expected {shape} (npix, ndepth)"
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


def _describe(tp: Any) -> str:
    """Plain-words name of a type annotation, for error messages."""
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "nothing (omit the key)"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is tuple or origin is tuple and not typing.get_args(tp):
        return "a list"
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).replace('an ', '').replace('a ', '')}s"
        return f"a list of {len(args)} values [{', '.join(_describe(a) for a in args)}]"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    """Internal: a value does not fit a type annotation."""


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to annotation ``tp``; raises _Mismatch if it cannot be."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise _Mismatch
    if tp is int:
        if isinstance(value, (bool, np.bool_)):
            raise _Mismatch
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is float:
        if isinstance(value, (bool, np.bool_)):
            raise _Mismatch
        if isinstance(value, (int, float, np.integer, np.floating)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if tp is tuple or (origin is tuple and not typing.get_args(tp)):
        if isinstance(value, (list, tuple)):
            return tuple(tuple(v) if isinstance(v, list) else v for v in value)
        raise _Mismatch
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    return value  # an annotation this function does not know: the class checks it


def coerce_option(cls: type, key: str, value: Any, *, where: str) -> Any:
    """One option value converted to the type its dataclass field declares.

    Parameters
    ----------
    cls : type
        The options dataclass.
    key : str
        Field name.
    value : any
        The value as given (a TOML value, or a string from the command line).
    where : str
        Table the option belongs to (``"[backend.me]"``), for the message.

    Raises
    ------
    ConfigError
        Naming ``<where> <key>``, the expected type and the value given. A
        field's ``metadata["expected"]`` (plain words) replaces the type name.
    """
    fld = {f.name: f for f in dataclasses.fields(cls)}[key]
    hints = typing.get_type_hints(cls)
    tp = hints.get(key, Any)
    try:
        return _coerce(value, tp)
    except _Mismatch:
        expected = fld.metadata.get("expected") or _describe(tp)
        flag = "-B" if where.startswith("[backend") else "--option"
        raise ConfigError(
            f"{where} {key}: expected {expected}, got {value!r} ({type(value).__name__}); "
            f"fix the value in the TOML table or on the command line ({flag} {key}=...)"
        ) from None


def options_from_mapping(cls: type, data: Mapping[str, Any] | None, *, where: str) -> Any:
    """Build the frozen options dataclass ``cls`` from a mapping.

    Unknown keys are rejected with the list of valid ones. Every value is
    converted to the type its field declares (see :func:`coerce_option`), so a
    wrong value is reported as ``[backend.me] max_iter: expected an integer,
    got 'abc'`` instead of failing later; lists become tuples so the result
    stays hashable.

    Parameters
    ----------
    cls : type
        A dataclass type.
    data : mapping or None
        Values, e.g. one TOML table.
    where : str
        Where the mapping came from (``"[backend.me]"``), for the error message.
    """
    data = dict(data or {})
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {unknown} in {where}; valid options are {sorted(valid)}"
        )
    clean = {k: coerce_option(cls, k, v, where=where) for k, v in data.items()}
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
    #: True for backends whose results are depth-stratified (ChunkResult.stratified).
    depth_stratified: ClassVar[bool] = False
    #: What :meth:`setup` does that a user waits for on a first run (logged by the driver).
    setup_note: ClassVar[str] = ""
    #: Keyword overrides of ``stokesflow.orchestrator.plan.auto_chunk_pixels``
    #: (``minimum``, ``maximum``, ``tasks_per_worker``) for an automatic chunk
    #: size. Empty: the plan made for the ME backend (milliseconds per pixel,
    #: chunks of at least 1024 pixels). A code that takes seconds per pixel
    #: (SIR) asks for small chunks, so that a few hundred pixels still spread
    #: over every worker.
    chunk_plan: ClassVar[Mapping[str, int]] = types.MappingProxyType({})

    def __init__(self, options: Any = None) -> None:
        if self.options_class is not None and not isinstance(options, self.options_class):
            options = options_from_mapping(self.options_class, options, where=f"[backend.{self.name}]")
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

    @property
    def init_columns(self) -> tuple[str, ...]:
        """Columns of the ``init`` array :meth:`invert` takes (npix, ncol).

        :attr:`parameter_names` for most backends. A depth-stratified backend
        may add node columns ``"NAME@LOGTAU"`` (e.g. ``"T@-2"``): the value of a
        stratified quantity at that log tau_500, which it interpolates onto
        its own depth grid. NaN in any column means "not given".
        """
        return self.parameter_names

    @property
    def stratified_parameters(self) -> tuple[ParameterSpec, ...]:
        """Depth-stratified quantities of ChunkResult.stratified (none for ME)."""
        return ()

    @property
    def log_tau(self) -> np.ndarray | None:
        """Depth grid (ndepth,) of the stratified results, or None (ME)."""
        return None

    def for_observation(self, meta: Mapping[str, Any]) -> "Backend":
        """This backend with defaults filled from an observation's attributes.

        ``meta`` holds the observation file's attributes (``lines``,
        ``instrument``, ``noise``, ...). Options the user set explicitly win.
        The base class needs nothing from the observation and returns ``self``.
        """
        return self

    def setup(self, trial: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Prepare a worker process (compile kernels, make scratch folders).

        Parameters
        ----------
        trial : (stokes, wavelength), optional
            A few real pixels, ``stokes`` (n, 4, nw) and ``wavelength`` (nw,)
            [A], from the observation about to be inverted; a backend may warm
            up on them (the observation's own grid, which its instrument
            accepts). The base class ignores it.
        """

    def estimate_noise(self, stokes: np.ndarray, wavelength: np.ndarray) -> np.ndarray:
        """One-sigma noise per Stokes parameter (I, Q, U, V) from a sample of pixels.

        Model-free default (:func:`stokesflow.backends.noise.continuum_noise`):
        robust scatter of second differences at the continuum points (where
        the median I profile is flattest). Backends with a forward model
        override it with a model-based estimate that needs no continuum.

        Parameters
        ----------
        stokes : ndarray (npix, 4, nw)
            Valid pixels (finite), in the data's units.
        wavelength : ndarray (nw,)
            Observed wavelengths [A].

        Returns
        -------
        ndarray (4,)
            Noise sigma of I, Q, U, V in the data's units.
        """
        from stokesflow.backends.noise import continuum_noise

        return continuum_noise(stokes, wavelength)

    def teardown(self) -> None:
        """Release what :meth:`setup` took."""

    def invert(
        self,
        stokes: np.ndarray,
        wavelength: np.ndarray,
        init: np.ndarray | None = None,
    ) -> ChunkResult:
        """Invert ``stokes`` of shape (npix, 4, nw) observed at ``wavelength`` [A].

        ``init`` (npix, len(:attr:`init_columns`)) holds starting points, NaN where not given.
        """
        raise NotImplementedError

    def synthesize(self, params: np.ndarray | Mapping[str, np.ndarray], wavelength: np.ndarray) -> np.ndarray:
        """Stokes profiles (npix, 4, nw) for parameters (npix, npar) or a name mapping."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} options={self.options!r}>"


def named_params(params: np.ndarray | Mapping[str, np.ndarray], names: Sequence[str], who: str,
                 error: type[Exception] = BackendError) -> tuple[dict[str, np.ndarray], int]:
    """Synthesis parameters as a name mapping, checked, and the pixel count.

    Parameters
    ----------
    params : ndarray (npix, len(names)) or mapping
        Columns in ``names`` order, or name -> scalar, (npix,) or (npix, ndepth) values.
    names : sequence of str
        The backend's parameter names.
    who : str
        The backend, for messages (``"the RH backend"``).
    error : exception class
        Raised on a wrong column count or an unknown name.

    Returns
    -------
    dict, int
        name -> float ndarray, and npix (the first axis of the longest given value; 1 for scalars).
    """
    if not isinstance(params, Mapping):
        arr = np.atleast_2d(np.asarray(params, dtype=float))
        if arr.shape[1] != len(names):
            raise error(f"params has {arr.shape[1]} columns, expected {len(names)} ({list(names)})")
        params = {n: arr[:, i] for i, n in enumerate(names)}
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise error(f"unknown parameter(s) {unknown}; {who} takes {list(names)}")
    p = {k: np.asarray(v, dtype=float) for k, v in params.items()}
    return p, max((v.shape[0] for v in p.values() if v.ndim >= 1), default=1)


def one_pixel_trial(backend: "Backend", label: str, errors: tuple[type[Exception], ...] = (BackendError,)
                    ) -> tuple[bool, str]:
    """Whether an external code, through ``backend``, synthesises one pixel of Fe I 6302 (B = 1000 G).

    For ``is_available`` of the wrappers of external codes: (True, "") or
    (False, why), where why names ``label`` (the executable) and the failure.
    """
    wl = 6302.4931 + 0.02 * np.arange(-5, 6)
    try:
        prof = backend.synthesize({"B": np.array([1000.0])}, wl)
    except errors as exc:
        return False, f"{label} fails a one-pixel trial: {exc}"
    if not (np.all(np.isfinite(prof)) and 0.1 < prof[0, 0].min() < 0.99 and abs(prof[0, 3]).max() > 1e-3):
        return False, f"{label} fails a one-pixel trial: its synthesis of FeI_6302 is not a line profile"
    return True, ""
