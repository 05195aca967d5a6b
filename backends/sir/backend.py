"""The SIR backend: LTE inversions of depth-stratified atmospheres with the SIR code.

SIR (Ruiz Cobo & del Toro Iniesta 1992; github.com/BasilioRuiz/SIR-code) is not
bundled: the executable comes from the option ``executable`` or the environment
variable ``STOKESFLOW_SIR``. Each call of :meth:`SIRBackend.invert` works in its
own scratch folder, writes the line list, abundances and wavelength grid from the
project's tables and the observation, and runs one SIR process per pixel
(``echo sir.trol | sir.x``) from a built-in model (the HSRA by default, or
FAL-C with its chromosphere: :data:`BUILTIN_MODELS`) or a given guess.

Units and sign conventions (checked by synthesising with SIR itself): SIR's
gamma and phi are stokesflow's ``inclination`` and ``azimuth`` (B > 0, gamma 0
gives V > 0 in the blue wing; gamma 90, phi 0 gives Q < 0 at line centre; phi 45
gives U < 0), SIR's vlos [cm/s] is positive for a redshift like stokesflow's
``vlos`` [km/s]; the azimuth is reported modulo 180 deg, vmic and vlos in km/s,
the stray light as a fraction (SIR: percent), Pe in dyn cm^-2.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Mapping

import numpy as np

from stokesflow.backends.base import (
    STATUS_BAD_INPUT,
    STATUS_FAILED,
    STATUS_OK,
    Backend,
    ChunkResult,
    ConfigError,
    ParameterSpec,
    one_pixel_trial,
)
from stokesflow.backends.sir import io
from stokesflow.backends.sir.atomic import ClassicalLine, get_classical_lines, load_abundances
from stokesflow.backends.sir.errors import SIRError
from stokesflow.backends.sir.runner import (
    ScratchFolder,
    chi2_failure,
    resolve_executable,
    run_code,
)

__all__ = ["B_FLOOR", "VMIC_FLOOR", "INVERSION_FLOORS", "BUILTIN_MODELS", "ENV_VAR", "GUESS_FIELD", "NODE_SEEDED",
           "SIROptions", "SIRBackend", "builtin_model", "check_seed_nodes", "from_nodes", "is_builtin_model",
           "node_column", "node_values", "observation_changes", "option_lines", "SPECS", "STRATIFIED", "SCALARS"]

ENV_VAR = "STOKESFLOW_SIR"

#: Depth-stratified quantities: (stokesflow name, SIR model column, factor SIR -> stokesflow, unit).
STRATIFIED: tuple[tuple[str, str, float, str], ...] = (
    ("T", "T", 1.0, "K"),
    ("Pe", "Pe", 1.0, "dyn/cm2"),
    ("vmic", "vmic", 1e-5, "km/s"),
    ("B", "B", 1.0, "G"),
    ("vlos", "vlos", 1e-5, "km/s"),
    ("inclination", "gamma", 1.0, "deg"),
    ("azimuth", "phi", 1.0, "deg"),
)
#: Height-independent quantities: (name, SIR model attribute, factor, unit).
SCALARS: tuple[tuple[str, str, float, str], ...] = (
    ("vmac", "vmac", 1.0, "km/s"),
    ("filling_factor", "filling_factor", 1.0, ""),
    ("stray_light", "stray_light", 0.01, ""),
)

#: Name, unit and bounds of each parameter (shared by the backends of depth-stratified codes).
SPECS: Mapping[str, ParameterSpec] = MappingProxyType({
    "T": ParameterSpec("T", "K", 2000.0, 20000.0, 1000.0),
    "Pe": ParameterSpec("Pe", "dyn/cm2", 0.0, 1e6, 10.0),
    "vmic": ParameterSpec("vmic", "km/s", 0.0, 10.0, 1.0),
    "B": ParameterSpec("B", "G", 0.0, 6000.0, 500.0),
    "vlos": ParameterSpec("vlos", "km/s", -20.0, 20.0, 1.0),
    "inclination": ParameterSpec("inclination", "deg", 0.0, 180.0, 30.0),
    "azimuth": ParameterSpec("azimuth", "deg", 0.0, 180.0, 30.0, circular=True),
    "vmac": ParameterSpec("vmac", "km/s", 0.0, 10.0, 1.0),
    "filling_factor": ParameterSpec("filling_factor", "", 0.0, 1.0, 0.1),
    "stray_light": ParameterSpec("stray_light", "", 0.0, 1.0, 0.1),
})

_CONTROL = "sir.trol"
_OBSERVED = "observed.per"
_GUESS = "guess.mod"
_GRID = "grid.grid"
_LINES = "LINES"
_ABUND = "ABUNDANCES"


#: Field, angles and macroturbulence given to the built-in guess model (SIR stops
#: when the field it should invert is zero somewhere): B [G], inclination and
#: azimuth [deg], vmac [km/s].
GUESS_FIELD = {"B": 400.0, "gamma": 60.0, "phi": 30.0, "vmac": 1.0}

#: Stratified quantities an initial guess may give at nodes (Pe is not among them:
#: SIR puts the guess model in hydrostatic equilibrium itself).
NODE_SEEDED: tuple[str, ...] = ("T", "vmic", "B", "vlos", "inclination", "azimuth")


def node_column(name: str, log_tau: float) -> str:
    """The init column of quantity ``name`` at ``log_tau`` (``"T@-2"``)."""
    return f"{name}@{float(log_tau):g}"


def from_nodes(name: str, nodes: np.ndarray, values: np.ndarray, log_tau: np.ndarray,
               guess: np.ndarray) -> np.ndarray:
    """A stratification on ``log_tau`` through node values.

    Parameters
    ----------
    name : str
        The quantity (``T`` keeps the guess model's gradient beyond the outer
        nodes; the others stay constant there; ``azimuth`` [deg] is
        interpolated modulo 180).
    nodes : ndarray (nn,)
        log tau_500 of the nodes, increasing.
    values : ndarray (nn,)
        Values at the nodes (NaN: that node is not given).
    log_tau : ndarray (nd,)
        The model's grid (any order).
    guess : ndarray (nd,)
        The guess model's values on ``log_tau``.

    Returns
    -------
    ndarray (nd,)
        Linear in log tau between the given nodes; the guess where no node is given.
    """
    ok = np.isfinite(values)
    if not ok.any():
        return guess.copy()
    x, v = nodes[ok], np.asarray(values, dtype=float)[ok]
    if name == "azimuth":  # unwrap so that 170 -> 10 deg goes through 180
        v = np.rad2deg(np.unwrap(np.deg2rad(2.0 * v)) / 2.0)
    out = np.interp(log_tau, x, v)
    if name == "T":
        order = np.argsort(log_tau)
        g_at = np.interp(x, log_tau[order], guess[order])
        lo, hi = log_tau < x[0], log_tau > x[-1]
        out[lo] = guess[lo] + (v[0] - g_at[0])
        out[hi] = guess[hi] + (v[-1] - g_at[-1])
    if name == "azimuth":
        out = np.mod(out, 180.0)
    return out


def observation_changes(options: Any, meta: Mapping[str, Any], *, lines: bool = True,
                        noise: bool = True) -> dict[str, Any]:
    """Option changes that take the lines and the noise from an observation's metadata.

    Shared by the backends of the classical codes (SIR, DeSIRe, STiC, RH).

    Parameters
    ----------
    options : dataclass
        The backend's options (``lines``, and ``noise`` when ``noise``).
    meta : mapping
        The observation's attributes: ``lines`` (a comma list or a list of
        names), ``noise`` (one sigma or four, in units of the continuum).
    lines, noise : bool
        Whether the backend takes that from the observation at all.

    Returns
    -------
    dict
        ``lines`` (tuple of names) and ``noise`` (a float or 4 floats) where
        the options give none and the observation does.
    """
    changes: dict[str, Any] = {}
    if lines and not options.lines and meta.get("lines"):
        given = meta["lines"]
        changes["lines"] = tuple(n.strip() for n in given.split(",")) if isinstance(given, str) else tuple(given)
    if noise and options.noise is None and meta.get("noise") is not None:
        sigma = np.atleast_1d(np.asarray(meta["noise"], dtype=float))
        changes["noise"] = float(sigma[0]) if sigma.size == 1 else tuple(float(x) for x in sigma[:4])
    return changes


def option_lines(options: Any, where: str, error: type[Exception] = SIRError,
                 hint: str = "the observation names none, ") -> tuple[ClassicalLine, ...]:
    """The spectral lines of the options (``lines``, ``line_table``, ``atomic_table``).

    Shared by the backends of the classical codes (SIR, STiC, RH).

    Parameters
    ----------
    options : dataclass
        The backend's options.
    where : str
        The options' table in messages (``"[backend.sir]"``).
    error : exception class
        Raised (a :class:`SIRError` from the tables is re-raised as this class
        with ``where`` in front, unless it is SIRError itself).
    hint : str
        Words before the fix in the no-lines message.

    Raises
    ------
    error
        No lines given, or a line or table is wrong.
    """
    if not options.lines:
        raise error(f"{where} lines: no spectral lines; {hint}give -B lines=[FeI_6301,FeI_6302]")
    try:
        return get_classical_lines(options.lines, options.line_table, options.atomic_table)
    except SIRError as exc:
        if error is SIRError:
            raise
        raise error(f"{where} lines: {exc}") from None


def check_seed_nodes(seed_nodes: Any, where: str) -> None:
    """Raise ConfigError unless ``seed_nodes`` are at least two finite, increasing log tau values.

    ``where`` is the options' table in the message (``"[backend.sir]"``).
    """
    nodes = np.asarray(seed_nodes, dtype=float)
    if nodes.ndim != 1 or nodes.size < 2 or not np.all(np.diff(nodes) > 0) or not np.all(np.isfinite(nodes)):
        raise ConfigError(f"{where} seed_nodes: expected at least two increasing log tau values, "
                          f"got {seed_nodes!r} (-B seed_nodes=[-3,-2,-1,0])")


def node_values(row: np.ndarray, nparams: int, seed_nodes: Any, code: str,
                error: type[Exception] = SIRError) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The node columns of an initial-guess row (after its ``nparams`` parameter columns).

    Parameters
    ----------
    row : ndarray
        ``nparams`` parameter columns, then ``len(seed_nodes)`` node columns
        per quantity of :data:`NODE_SEEDED` (:attr:`SIRBackend.init_columns`).
    nparams : int
        The backend's number of parameters.
    seed_nodes : sequence of float
        log tau_500 of the nodes.
    code : str
        The code's name in the message.
    error : exception class
        Raised for a row of the wrong length.

    Returns
    -------
    nodes : ndarray (nn,)
        ``seed_nodes``.
    values : dict
        quantity -> values at the nodes (nn,), for the quantities with at
        least one finite value.
    """
    nodes = np.asarray(seed_nodes, dtype=float)
    nn = nodes.size
    if row.shape[0] != nparams + nn * len(NODE_SEEDED):
        raise error(f"{code} initial guess: {row.shape[0]} columns, expected {nparams} or "
                    f"{nparams + nn * len(NODE_SEEDED)} (init_columns)")
    values = {}
    for k, name in enumerate(NODE_SEEDED):
        vals = row[nparams + k * nn: nparams + (k + 1) * nn]
        if np.isfinite(vals).any():
            values[name] = vals
    return nodes, values


#: Smallest field [G] given to SIR from an initial guess: SIR perturbs B relatively
#: and stops ("is zero somewhere") on a zero field, which an ME fit may return.
B_FLOOR = 10.0

#: Smallest microturbulence [km/s] given to SIR from an initial guess: SIR stops
#: ("microturbulence is zero somewhere") on a zero vmic, which SIR's own reference
#: fits return (about 1e-8 km/s for more than 10 % of a subset of the shared SIR
#: sample) and a network trained on them predicts. Measured on that sample with the
#: real SIR: 11-20 failed pixels of 256-576 started from such guesses, 1-3 with the floor.
VMIC_FLOOR = 0.05

#: Floors [their units] applied to an initial guess for an inversion, per quantity.
INVERSION_FLOORS: Mapping[str, float] = MappingProxyType({"B": B_FLOOR, "vmic": VMIC_FLOOR})


#: The built-in model atmospheres: name -> (packaged file, what it is).
BUILTIN_MODELS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "hsra": ("data/hsra.mod", "HSRA (Gingerich et al. 1971), log tau 1.4 to -4.0, 55 points"),
    "falc": ("data/falc.mod", "FAL-C (Fontenla, Avrett & Loeser 1993), log tau 1.2 to -7.5, 88 points, "
                              "with the chromosphere"),
})


def builtin_model(name: str = "hsra", guess: bool = True) -> io.Model:
    """A built-in quiet-Sun model atmosphere.

    Parameters
    ----------
    name : str
        ``"hsra"``: the Harvard-Smithsonian Reference Atmosphere (Gingerich et
        al. 1971) on SIR's 55-point log tau grid from 1.4 to -4.0 (a
        photosphere); ``"falc"``: FAL-C (Fontenla, Avrett & Loeser 1993,
        model C) from its published table (its own tau_500 scale) on an even
        88-point grid from 1.2 to -7.5 (photosphere and chromosphere, up to
        12,350 K at the foot of the transition region), for NLTE lines.
    guess : bool
        Give it the field of :data:`GUESS_FIELD` (a usable inversion start);
        False keeps the published model (no field, no velocity).

    Raises
    ------
    SIRError
        ``name`` is not one of :data:`BUILTIN_MODELS`.
    """
    key = name.lower()
    if key not in BUILTIN_MODELS:
        raise SIRError(f"unknown built-in model {name!r}; the built-in models are {sorted(BUILTIN_MODELS)} "
                       "(or give a .mod file path)")
    path, what = BUILTIN_MODELS[key]
    text = resources.files("stokesflow.backends.sir").joinpath(path).read_text()
    m = io.parse_model(text, f"the packaged {what.split(' (')[0]} model ({path})")
    if guess:
        m.B[:], m.gamma[:], m.phi[:] = GUESS_FIELD["B"], GUESS_FIELD["gamma"], GUESS_FIELD["phi"]
        m.vmac = GUESS_FIELD["vmac"]
    return m


def is_builtin_model(name: str | None) -> bool:
    """Whether ``name`` names a built-in model (case-insensitive), not a file."""
    return name is not None and name.lower() in BUILTIN_MODELS


@dataclass(frozen=True)
class SIROptions:
    """Options of the SIR backend (TOML table ``[backend.sir]``, or ``-B key=value``).

    Attributes
    ----------
    executable : str, optional
        Path of ``sir.x``; the environment variable ``STOKESFLOW_SIR`` if unset.
    strategy : str
        ``"reference"`` (3 cycles: T 1,3,5; vlos, B 1,3; inclination, azimuth,
        vmic, vmac 1), ``"assisted"`` (1 cycle: T 5; vlos, B 3) for a close
        initial guess that also gives vmic, vmac and the angles (a SIR result,
        a network trained on SIR results), or ``"assisted_me"`` (1 cycle: T 5;
        vlos, B 3; inclination, azimuth, vmic, vmac 1: the reference's last
        cycle alone) for an ME seed (``--init previous`` with an ME result).
    cycles : int, optional
        Overrides the strategy's number of cycles.
    nodes : table, optional
        Overrides the strategy's nodes per parameter, by stokesflow name or
        SIR name, e.g. ``{T = "2,3", B = "1"}``.
    lines : list of str
        Line names (default: the observation's ``lines`` attribute).
    line_table, atomic_table, abundances : str, optional
        A user's line table (ME format), atomic table (``atomic.toml`` form)
        and SIR abundance file replacing the packaged ones.
    model : str, optional
        Guess model: a SIR ``.mod`` file, ``"hsra"`` (default) or ``"falc"``
        (FAL-C, up to log tau -7.5: for chromospheric lines), see
        :data:`BUILTIN_MODELS`.
    weights : 4 numbers
        SIR's weights of I, Q, U, V.
    noise : number or 4 numbers, optional
        Noise sigma in units of the continuum; SIR's S/N for I is 1/noise(I).
        Default: the observation's noise.
    mu : float
        Cosine of the heliocentric angle.
    timeout : float
        Seconds per pixel before SIR is killed and the pixel failed.
    keep_failed : bool
        Keep a copy of the scratch folder of each failed pixel (its path is in
        the pixel's error message).
    scratch : str, optional
        Parent folder of the scratch folders (default: the system temporary folder).
    reference_log_tau : float
        Depth of the 2-D maps (``/params/<name>``) of the stratified quantities.
    seed_nodes : tuple of float
        log tau_500 of the node columns an initial guess may give
        (:attr:`SIRBackend.init_columns`, ``"T@-2"``, ...): a provider's values
        there are interpolated onto the guess model's grid. Default every
        unit from -4 to 1, the span of the HSRA model.
    """

    executable: str | None = None
    strategy: str = "reference"
    cycles: int | None = None
    nodes: Any = field(default=None, metadata={"expected": "a table like {T = '1,3,5', B = '1,3'}"})
    lines: tuple[str, ...] = ()
    line_table: str | None = None
    atomic_table: str | None = None
    abundances: str | None = None
    model: str | None = None
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    noise: float | tuple[float, float, float, float] | None = None
    mu: float = 1.0
    timeout: float = 300.0
    keep_failed: bool = False
    scratch: str | None = None
    reference_log_tau: float = -1.0
    seed_nodes: tuple[float, ...] = (-4.0, -3.0, -2.0, -1.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        if self.strategy not in io.STRATEGIES:
            raise ConfigError(
                f"[backend.sir] strategy: expected one of {sorted(io.STRATEGIES)}, got {self.strategy!r} "
                "(-B strategy=reference)"
            )
        if self.nodes is not None and not isinstance(self.nodes, Mapping):
            raise ConfigError(f"[backend.sir] nodes: expected a table like {{T = '1,3,5'}}, got {self.nodes!r}")
        if not self.timeout > 0:
            raise ConfigError(f"[backend.sir] timeout: expected seconds > 0, got {self.timeout!r}")
        if not 0 < self.mu <= 1:
            raise ConfigError(f"[backend.sir] mu: expected 0 < mu <= 1, got {self.mu!r}")
        check_seed_nodes(self.seed_nodes, "[backend.sir]")

    def resolved_strategy(self) -> io.Strategy:
        """The strategy with ``cycles`` and ``nodes`` overrides applied."""
        st = io.STRATEGIES[self.strategy]
        nodes = dict(st.nodes)
        sir_name = {n: c for n, c, _, _ in STRATIFIED}
        vmac = st.vmac
        for k, v in dict(self.nodes or {}).items():
            if k == "vmac":
                vmac = str(v)
                continue
            key = sir_name.get(k, k)
            if key not in io.NODE_PARAMETERS:
                raise ConfigError(
                    f"[backend.sir] nodes: unknown parameter {k!r}; valid are {[n for n, *_ in STRATIFIED] + ['vmac']}"
                )
            if str(v).strip():
                nodes[key] = str(v).replace(" ", "")
            else:
                nodes.pop(key, None)
        cycles = st.cycles if self.cycles is None else int(self.cycles)
        try:
            return io.Strategy(f"{st.name}*" if (self.nodes or self.cycles is not None) else st.name, cycles, nodes, vmac)
        except SIRError as exc:
            raise ConfigError(f"[backend.sir] nodes/cycles: {exc}") from None


@functools.lru_cache(maxsize=8)
def _trial(path: str, mtime_ns: int) -> tuple[bool, str]:
    """Whether the SIR at ``path`` synthesises one pixel (cached per file version)."""
    return one_pixel_trial(SIRBackend({"executable": path, "lines": ["FeI_6302"], "timeout": 30.0}), path,
                           (SIRError,))


class SIRBackend(Backend):
    """Inversions with the SIR code, one process per pixel in a private folder.

    Results: ``ChunkResult.stratified`` holds T, Pe, vmic, B, vlos,
    inclination, azimuth on the guess model's log tau grid (``log_tau``),
    ``stratified_sigma`` their uncertainties from SIR's ``.err`` file, and
    ``params`` the same quantities at ``reference_log_tau`` plus vmac,
    filling_factor and stray_light. A pixel whose SIR run fails (time-out,
    crash, ``STOP``, missing output, zero chi2) gets status 2 and its reason
    in ``errors``; a pixel with NaN or inf gets status 3 without running SIR.
    """

    name: ClassVar[str] = "sir"
    options_class: ClassVar[type] = SIROptions
    depth_stratified: ClassVar[bool] = True
    #: What a seed must give (``--init previous`` with an ME result file): the field
    #: and the velocity, applied constant with height; T, Pe, vmic, vmac, filling
    #: factor and stray light missing from the seed come from the guess model.
    seed_parameters: ClassVar[tuple[str, ...]] = ("B", "inclination", "azimuth", "vlos")
    #: Keywords of the orchestrator's automatic chunk size
    #: (``stokesflow.orchestrator.plan.auto_chunk_pixels``) for pixels that cost
    #: seconds each: no 1024-pixel floor (a smaller field would be one task and
    #: leave every other worker idle), many tasks per worker (the last tasks
    #: are short, so the workers finish together), and at most 64 pixels
    #: (about a minute of SIR) lost when a worker is.
    chunk_plan: ClassVar[Mapping[str, int]] = MappingProxyType({"minimum": 1, "maximum": 64, "tasks_per_worker": 32})

    @classmethod
    def is_available(cls, options: Any = None) -> tuple[bool, str]:
        """Found, executable and passing a one-pixel synthesis (from the option or ``STOKESFLOW_SIR``)."""
        path = None
        if isinstance(options, SIROptions):
            path = options.executable
        elif isinstance(options, Mapping):
            path = options.get("executable")
        try:
            exe = resolve_executable(path, ENV_VAR, "SIR")
        except SIRError as exc:
            return False, str(exc)
        return _trial(str(exe), exe.stat().st_mtime_ns)

    # ----------------------------------------------------------------- specs
    @property
    def parameters(self) -> tuple[ParameterSpec, ...]:
        return tuple(SPECS[n] for n, *_ in STRATIFIED) + tuple(SPECS[n] for n, *_ in SCALARS)

    @property
    def stratified_parameters(self) -> tuple[ParameterSpec, ...]:
        return tuple(SPECS[n] for n, *_ in STRATIFIED)

    @property
    def init_columns(self) -> tuple[str, ...]:
        """The parameters (constant with height, T at ``reference_log_tau``), then the node
        columns ``NAME@LOGTAU`` of :data:`NODE_SEEDED` at ``seed_nodes``, quantity by quantity."""
        return self.parameter_names + tuple(
            node_column(n, lt) for n in NODE_SEEDED for lt in self.options.seed_nodes)

    @functools.cached_property
    def guess_model(self) -> io.Model:
        """The guess model (the option ``model``, else :meth:`default_model`)."""
        m = self.options.model
        if m is None or is_builtin_model(m):
            return builtin_model(m or self.default_model())
        p = Path(m)
        if not p.is_file():
            raise self.error_class(f"[backend.{self.name}] model: guess model {m} does not exist; give a SIR .mod "
                                   f"file or one of the built-in models {sorted(BUILTIN_MODELS)}")
        return io.parse_model(p.read_text(), str(p))

    def default_model(self) -> str:
        """The built-in model used when the option ``model`` is not given (``"hsra"`` for SIR)."""
        return "hsra"

    @property
    def log_tau(self) -> np.ndarray:
        return self.guess_model.log_tau.copy()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("guess_model", None)
        return state

    # ----------------------------------------------------------- observation
    def for_observation(self, meta: Mapping[str, Any]) -> "SIRBackend":
        """Lines and noise from the observation unless the options give them."""
        changes = observation_changes(self.options, meta)
        return type(self)(replace(self.options, **changes)) if changes else self

    def _lines(self) -> tuple[ClassicalLine, ...]:
        return option_lines(self.options, "[backend.sir]")

    def _executable(self) -> Path:
        return resolve_executable(self.options.executable, ENV_VAR, "SIR")

    def setup(self, trial: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Check the executable and the line data once per worker."""
        self._executable()
        if self.options.lines:
            self._lines()

    # ------------------------------------------------------------ the models
    def _model_for(self, init_row: np.ndarray | None, inversion: bool = False) -> io.Model:
        """The guess model with an initial guess applied (columns of :attr:`init_columns` or just
        :attr:`parameter_names`; NaN = not given).

        A parameter column sets the quantity constant with height (T: shifts
        the stratification to it at ``reference_log_tau``); node columns, where
        given, win and are interpolated onto the guess model's grid
        (:func:`from_nodes`). Pe stays the guess model's: SIR puts it in
        hydrostatic equilibrium. For an ``inversion`` B and vmic are at least
        their :data:`INVERSION_FLOORS`.
        """
        m = self.guess_model.copy()
        if init_row is None:
            return m
        names = self.parameter_names
        ref = self.options.reference_log_tau
        order = np.argsort(m.log_tau)
        for name, col, fac, _ in STRATIFIED:
            v = init_row[names.index(name)]
            if not np.isfinite(v) or name == "Pe":
                continue  # SIR puts Pe in hydrostatic equilibrium itself
            arr = getattr(m, col)
            if name == "T":  # shift the stratification so that T(ref) is the guess
                arr += v - np.interp(ref, m.log_tau[order], arr[order])
            elif name in INVERSION_FLOORS and inversion:  # SIR stops when B or vmic is zero somewhere
                arr[:] = max(float(v), INVERSION_FLOORS[name]) / fac
            elif name == "azimuth":
                arr[:] = float(np.mod(v, 180.0))
            else:
                arr[:] = v / fac
        for name, attr, fac, _ in SCALARS:
            v = init_row[names.index(name)]
            if np.isfinite(v):
                setattr(m, attr, float(v / fac))
        if init_row.shape[0] > len(names):  # node columns
            nodes, node_vals = node_values(init_row, len(names), self.options.seed_nodes, "SIR")
            fac_of = {n: (c, f) for n, c, f, _ in STRATIFIED}
            for name, vals in node_vals.items():
                col, fac = fac_of[name]
                guess = np.asarray(getattr(m, col), dtype=float) * fac
                strat = from_nodes(name, nodes, vals, m.log_tau, guess)
                if name in INVERSION_FLOORS and inversion:
                    strat = np.maximum(strat, INVERSION_FLOORS[name])
                setattr(m, col, strat / fac)
        return m

    def _models_from_params(self, params: np.ndarray | Mapping[str, np.ndarray], npix: int | None = None) -> list[io.Model]:
        """Models from parameters: a (npix, npar) array or a name mapping of (npix,) or (npix, ndepth) values."""
        if not isinstance(params, Mapping):
            arr = np.atleast_2d(np.asarray(params, dtype=float))
            return [self._model_for(row) for row in arr]
        params = {k: np.asarray(v, dtype=float) for k, v in params.items()}
        known = {n for n, *_ in STRATIFIED} | {n for n, *_ in SCALARS}
        unknown = sorted(set(params) - known)
        if unknown:
            raise SIRError(f"SIR synthesis: unknown parameter(s) {unknown}; known are {sorted(known)}")
        n = max(v.shape[0] for v in params.values()) if params else (npix or 1)
        nd = self.guess_model.ndepth
        models = []
        for i in range(n):
            row = np.full(len(self.parameter_names), np.nan)
            depth: dict[str, np.ndarray] = {}
            for k, v in params.items():
                vi = v[i] if v.ndim >= 1 and v.shape[0] == n else v
                if np.ndim(vi) == 1:
                    if vi.shape[0] != nd:
                        raise SIRError(f"SIR synthesis: {k} has {vi.shape[0]} depths, the model has {nd}")
                    depth[k] = vi
                else:
                    row[self.parameter_names.index(k)] = float(vi)
            m = self._model_for(row)
            for k, vi in depth.items():
                col, fac = next((c, f) for nm, c, f, _ in STRATIFIED if nm == k)
                setattr(m, col, np.asarray(vi, dtype=float) / fac)
            models.append(m)
        return models

    # -------------------------------------------------------------- running
    def _write_static(self, folder: ScratchFolder, wavelength: np.ndarray, cycles_strategy: io.Strategy,
                      observed: str) -> tuple[np.ndarray, np.ndarray]:
        lines = self._lines()
        blocks, index, offsets = io.grid_for_observation(wavelength, lines)
        folder.write(_GRID, io.format_grid(blocks))
        folder.write(_LINES, io.format_lines(lines))
        folder.write(_ABUND, io.format_abundances(load_abundances(self.options.abundances)))
        sn = self._signal_to_noise()
        values = io.control_values(
            cycles_strategy, observed=observed, model=_GUESS, grid=_GRID, lines=_LINES, abundances=_ABUND,
            weights=self.options.weights, sn=sn, mu=self.options.mu,
        )
        folder.write(_CONTROL, io.format_control(values))
        return index, offsets

    def _signal_to_noise(self) -> float | None:
        """The control file's S/N: 1 / noise(I), None when the noise is not known (or zero)."""
        if self.options.noise is None:
            return None
        n0 = float(np.atleast_1d(self.options.noise)[0])
        return 1.0 / n0 if n0 > 0 else None

    def _outputs(self, cycles: int) -> list[str]:
        stem = _GUESS[:-4]
        if cycles == 0:
            return [_OBSERVED]
        return [f"{stem}_{cycles}.mod", f"{stem}_{cycles}.per", f"{stem}_{cycles}.err"]

    def _clear(self, folder: ScratchFolder, cycles: int) -> None:
        stem = _GUESS[:-4]
        names = ["sir.chi", "sir.log"] + [f"{stem}_{c}.{e}" for c in range(1, cycles + 1) for e in ("mod", "per", "err")]
        if cycles == 0:
            names.append(_OBSERVED)
        folder.remove(names)

    # Hooks where a code that shares SIR's formats (DeSIRe) differs: its name in messages, how it is
    # started, and what its outputs say about the fit.
    code_name: ClassVar[str] = "SIR"
    error_class: ClassVar[type[SIRError]] = SIRError

    def _run(self, exe: Path, folder: ScratchFolder, expected: list[str]) -> Any:
        """Run the code once in ``folder`` (SIR reads the control file's name from stdin)."""
        return run_code([str(exe)], folder.path, stdin=_CONTROL + "\n", timeout=self.options.timeout,
                        expected=expected)

    def _judged_outputs(self) -> list[str]:
        """Files besides the last cycle's model, profiles and errors that a finished run must leave."""
        return ["sir.chi"]

    def _judge(self, folder: ScratchFolder, cycles: int) -> tuple[str, float, str]:
        """(why the run failed or "", its final chi2, its log text or "") from the code's outputs."""
        chi = io.parse_chi(folder.read("sir.chi"))
        reason = chi2_failure(chi, cycles) or ""
        log = folder.read("sir.log") if (folder.path / "sir.log").is_file() else ""
        return reason, (float(chi[-1, 1]) if not reason else float("nan")), log

    def invert(self, stokes: np.ndarray, wavelength: np.ndarray, init: np.ndarray | None = None) -> ChunkResult:
        """Invert ``stokes`` (npix, 4, nw) [units of the quiet-Sun continuum] observed at ``wavelength`` [A]."""
        stokes = np.asarray(stokes, dtype=float)
        wavelength = np.asarray(wavelength, dtype=float)
        npix, _, nw = stokes.shape
        names = self.parameter_names
        strategy = self.options.resolved_strategy()
        if strategy.cycles == 0:
            raise self.error_class(f"[backend.{self.name}] cycles: an inversion needs at least one cycle "
                                   "(0 is synthesis)")
        exe = self._executable()
        nd = self.guess_model.ndepth
        params = np.full((npix, len(names)), np.nan)
        sigma = np.full((npix, len(names)), np.nan)
        chi2 = np.full(npix, np.nan)
        n_iter = np.zeros(npix, dtype=np.int32)
        status = np.full(npix, STATUS_FAILED, dtype=np.uint8)
        synthetic = np.full((npix, 4, nw), np.nan, dtype=np.float32)
        strat = {n: np.full((npix, nd), np.nan) for n, *_ in STRATIFIED}
        strat_sig = {n: np.full((npix, nd), np.nan) for n, *_ in STRATIFIED}
        errors: dict[int, str] = {}
        outputs = self._outputs(strategy.cycles)
        with ScratchFolder(f"stokesflow-{self.name}-", self.options.scratch) as folder:
            index, offsets = self._write_static(folder, wavelength, strategy, _OBSERVED)
            for i in range(npix):
                if not np.all(np.isfinite(stokes[i])):
                    status[i] = STATUS_BAD_INPUT
                    errors[i] = f"profile holds NaN or inf ({self.code_name} not run)"
                    continue
                self._clear(folder, strategy.cycles)
                folder.write(_OBSERVED, io.format_profiles(index, offsets, stokes[i]))
                folder.write(_GUESS, io.format_model(self._model_for(None if init is None else init[i], inversion=True)))
                outcome = self._run(exe, folder, outputs + self._judged_outputs())
                reason = outcome.reason
                if outcome.ok:
                    try:
                        reason, final_chi2, log = self._judge(folder, strategy.cycles)
                        if not reason:
                            model = io.parse_model(folder.read(outputs[0]), outputs[0])
                            err = io.parse_model(folder.read(outputs[2]), outputs[2])
                            _, _, fit = io.parse_profiles(folder.read(outputs[1]), outputs[1])
                    except SIRError as exc:
                        reason = f"unreadable output: {exc}"
                if reason:
                    if self.options.keep_failed:
                        kept = folder.keep_copy(f"pixel{i}")
                        reason += f"; its folder is kept in {kept}"
                    errors[i] = f"{self.code_name} {reason}"
                    continue
                self._fill(i, model, err, strat, strat_sig, params, sigma)
                chi2[i] = final_chi2
                n_iter[i] = io.count_iterations(log) if log else 0
                if fit.shape == (4, nw):
                    synthetic[i] = fit
                status[i] = STATUS_OK
        return ChunkResult(
            names, params, sigma, chi2, n_iter, status, synthetic, errors,
            log_tau=self.guess_model.log_tau.copy(), stratified=strat, stratified_sigma=strat_sig,
        )

    def _fill(self, i: int, model: io.Model, err: io.Model, strat: dict, strat_sig: dict,
              params: np.ndarray, sigma: np.ndarray) -> None:
        names = self.parameter_names
        ref = self.options.reference_log_tau
        order = np.argsort(model.log_tau)
        for name, col, fac, _ in STRATIFIED:
            v = np.asarray(getattr(model, col), dtype=float) * fac
            e = np.abs(np.asarray(getattr(err, col), dtype=float)) * fac
            if name == "azimuth":
                v = np.mod(v, 180.0)
            if v.shape[0] != strat[name].shape[1]:  # SIR kept the guess grid; guard anyway
                v = np.interp(self.guess_model.log_tau, model.log_tau[order], v[order])
                e = np.interp(self.guess_model.log_tau, model.log_tau[order], e[order])
            strat[name][i] = v
            strat_sig[name][i] = e
            o = np.argsort(self.guess_model.log_tau)
            params[i, names.index(name)] = np.interp(ref, self.guess_model.log_tau[o], v[o])
            sigma[i, names.index(name)] = np.interp(ref, self.guess_model.log_tau[o], e[o])
        for name, attr, fac, _ in SCALARS:
            params[i, names.index(name)] = getattr(model, attr) * fac
            sigma[i, names.index(name)] = abs(getattr(err, attr)) * fac

    def synthesize(self, params: np.ndarray | Mapping[str, np.ndarray], wavelength: np.ndarray) -> np.ndarray:
        """Stokes profiles (npix, 4, nw) synthesised by the code from the guess model.

        ``params``: (npix, npar) in :attr:`parameter_names` order (NaN = keep
        the model's value), or a name mapping of (npix,) values (constant with
        height; T shifts the stratification to T at ``reference_log_tau``) or
        (npix, ndepth) stratifications on :attr:`log_tau`.
        """
        wavelength = np.asarray(wavelength, dtype=float)
        models = self._models_from_params(params)
        exe = self._executable()
        out = np.full((len(models), 4, wavelength.size), np.nan)
        syn = io.Strategy("synthesis", 0)
        with ScratchFolder(f"stokesflow-{self.name}-syn-", self.options.scratch) as folder:
            self._write_static(folder, wavelength, syn, _OBSERVED)
            for i, m in enumerate(models):
                self._clear(folder, 0)
                folder.write(_GUESS, io.format_model(m))
                outcome = self._run(exe, folder, [_OBSERVED])
                if not outcome.ok:
                    raise self.error_class(f"{self.code_name} synthesis of pixel {i} failed: {outcome.reason}")
                _, _, prof = io.parse_profiles(folder.read(_OBSERVED), _OBSERVED)
                if prof.shape != (4, wavelength.size):
                    raise self.error_class(f"{self.code_name} synthesis of pixel {i} gave {prof.shape[1]} points "
                                           f"for {wavelength.size}")
                out[i] = prof
        return out
