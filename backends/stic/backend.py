"""The STiC backend: LTE and NLTE inversions and synthesis with STiC, one MPI run per chunk.

STiC (de la Cruz Rodriguez et al. 2016, 2019; github.com/jaimedelacruz/stic)
is not bundled: ``STiC.x`` comes from the option ``executable`` or
``STOKESFLOW_STIC``, the MPI launcher from the option ``mpiexec``,
``STOKESFLOW_STIC_MPIEXEC`` or ``mpiexec`` on PATH (the MPI STiC was built
with), and it runs on at least 2 ranks (rank 0 hands out pixels). Every chunk
is one sub-cube (y = 1, x = npix) in a private scratch folder with its own
``input.cfg``; a strategy of several cycles is several runs, each starting
from the model the previous one wrote.

Spectral lines: in LTE (``atmosphere = "lte"``, the default) the project's
lines are written as STiC's ``lines.cfg`` from the project's tables (Fe I
6301/6302, 6173, 5250, 15648 ...). In NLTE (``atmosphere = "nlte"``, STiC's
RH mode) the active model atoms come from STiC's own ``input/`` folder (option
``stic_data``, ``STOKESFLOW_STIC_DATA`` or two folders above the executable),
e.g. Ca II 8542 with ``atoms = ["H_6.atom", "CaII.atom"]``, ``active =
["CaII.atom"]``; RH's ``keyword.input``, ``atoms.input`` and
``molecules.input`` are written by the RH backend's writers (one format, one writer).

Units and sign conventions (checked by synthesising with STiC itself, see
tests/backends/stic/test_stic_external.py): STiC's field is (``blong``,
``bhor``, ``azi``) [G, G, rad]; ``B = hypot(blong, bhor)``, ``inclination =
atan2(|bhor|, blong)`` [deg] (blong > 0 gives V > 0 in the blue wing, as
inclination 0 does here), ``azimuth = azi`` [deg] modulo 180 (azi 0 gives Q <
0 at line centre, as here); STiC's ``vlos`` [cm/s] is positive for a redshift
like ``vlos`` [km/s] here; ``vturb`` [cm/s] is ``vmic`` [km/s]; ``Pe`` [dyn
cm^-2] is ``nne k T``. Profiles are in units of the quiet-Sun continuum: the
continuum intensity that STiC computes for the guess model (by default HSRA
in LTE, FAL-C in NLTE; no field) 1.5 A blue of the grid, or the option ``continuum``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from stokesflow.backends.base import (
    STATUS_BAD_INPUT,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_POOR_FIT,
    Backend,
    ChunkResult,
    ConfigError,
    ParameterSpec,
    named_params,
    one_pixel_trial,
)
from stokesflow.backends.noise import poor_chi2_threshold
from stokesflow.backends.rh import io as rh_io
from stokesflow.backends.rh.backend import DEFAULT_MOLECULES, kept_folder_note, profiles_or_raise
from stokesflow.backends.rh.errors import RHError
from stokesflow.backends.sir.atomic import ClassicalLine
from stokesflow.backends.sir.backend import (
    B_FLOOR,
    BUILTIN_MODELS,
    SPECS,
    SIRBackend,
    builtin_model,
    check_seed_nodes,
    from_nodes,
    is_builtin_model,
    node_values,
    observation_changes,
    option_lines,
)
from stokesflow.backends.sir.backend import STRATIFIED as SIR_STRATIFIED
from stokesflow.backends.stic import io
from stokesflow.backends.stic.errors import STiCError
from stokesflow.backends.stic.runner import (
    DATA_ENV_VAR,
    ENV_VAR,
    MIN_RANKS,
    ScratchFolder,
    pixel_failures,
    resolve_stic,
    resolve_stic_mpiexec,
    run_stic,
    run_timeout,
    stic_command,
)

__all__ = [
    "ENV_VAR",
    "CONTINUUM_OFFSET",
    "STRATIFIED",
    "NODE_KEYS",
    "STRATEGIES",
    "STiCStrategy",
    "STiCOptions",
    "STiCBackend",
    "to_stic_field",
    "from_stic_field",
    "model_from_sir",
]

#: Where the continuum of the normalisation is taken: this far blue of the first grid point [A].
CONTINUUM_OFFSET = 1.5
#: Boltzmann constant [erg/K].
_K_B_CGS = 1.380649e-16

#: Depth-stratified results: (name, unit), on the guess model's log tau grid (SIR's quantities).
STRATIFIED: tuple[tuple[str, str], ...] = tuple((n, unit) for n, _, _, unit in SIR_STRATIFIED)

#: The ``nodes`` keys (stokesflow's names and STiC's) -> STiC's input.cfg key.
NODE_KEYS: dict[str, str] = {
    "T": "nodes_temp", "temp": "nodes_temp",
    "vlos": "nodes_vlos",
    "vmic": "nodes_vturb", "vturb": "nodes_vturb",
    "blong": "nodes_blong",
    "bhor": "nodes_bhor",
    "azimuth": "nodes_azi", "azi": "nodes_azi",
}


@dataclass(frozen=True)
class STiCStrategy:
    """Cycles and the number of equidistant nodes per STiC parameter and cycle.

    Attributes
    ----------
    name : str
    cycles : int
        STiC runs, each starting from the model the previous one wrote.
    nodes : dict
        input.cfg key (``nodes_temp``, ...) -> comma list of node counts, one
        per cycle (the last repeats); a parameter absent is not inverted.
    """

    name: str
    cycles: int
    nodes: dict[str, str]

    def __post_init__(self) -> None:
        if self.cycles < 1:
            raise STiCError(f"strategy {self.name}: cycles must be >= 1, got {self.cycles}")
        for k, v in self.nodes.items():
            try:
                counts = [int(x) for x in str(v).split(",")]
            except ValueError:
                raise STiCError(f"strategy {self.name}: nodes {k} = {v!r}: expected comma-separated node counts "
                                "(one per cycle), e.g. '1,3,5'") from None
            if any(c < 0 for c in counts):
                raise STiCError(f"strategy {self.name}: nodes {k} = {v!r}: counts must be >= 0")
            if k == "nodes_temp" and min(counts) < 2:
                raise STiCError(f"strategy {self.name}: nodes T = {v!r}: STiC's nodes are values, so 1 temperature "
                                "node makes the atmosphere isothermal and 0 makes STiC diverge; give at least 2")
            if min(counts) < 1:
                raise STiCError(f"strategy {self.name}: nodes {k} = {v!r}: every quantity needs at least 1 node "
                                "(STiC writes zero profiles for a quantity left out)")
        missing = sorted(set(NODE_KEYS.values()) - set(self.nodes))
        if missing:
            raise STiCError(f"strategy {self.name}: no nodes for {missing}; every quantity needs at least 1 node "
                            "(STiC writes zero profiles for a quantity left out)")

    def nodes_of_cycle(self, cycle: int) -> dict[str, int]:
        """input.cfg node counts of cycle ``cycle`` (0-based; the last listed value repeats)."""
        out = {}
        for k, v in self.nodes.items():
            counts = [int(x) for x in str(v).split(",")]
            out[k] = counts[min(cycle, len(counts) - 1)]
        return out


#: The two named strategies of issue 8 in STiC's terms. STiC's nodes hold the
#: values of a quantity (``depth_model = 0``), so T needs at least 2 nodes (1
#: node is an isothermal atmosphere); every quantity gets at least one node
#: (the STiC built here, git HEAD of jaimedelacruz/stic, diverges at the first
#: step and writes zero profiles when T has none, and in its SIR-like
#: ``depth_model = 1`` when any quantity has none); the field is (Blong, Bhor,
#: azimuth): "B" nodes are Blong's, the inclination follows from Bhor.
STRATEGIES: dict[str, STiCStrategy] = {
    "reference": STiCStrategy("reference", 3, {
        "nodes_temp": "3,5,7", "nodes_vlos": "1,3", "nodes_blong": "1,3", "nodes_bhor": "1",
        "nodes_azi": "1", "nodes_vturb": "1"}),
    "assisted": STiCStrategy("assisted", 1, {"nodes_temp": "5", "nodes_vlos": "3", "nodes_blong": "3", "nodes_bhor": "1",
                                             "nodes_azi": "1", "nodes_vturb": "1"}),
}

# Files written in the scratch folder (input.cfg and lines.cfg are fixed by STiC).
_GUESS = "guess.nc"
_KEYWORDS = "keyword.input"
_ATOMS = "atoms.input"
_MOLECULES = "molecules.input"
_KURUCZ = "kurucz.input"
_KURUCZ_LINES = "lines.kurucz"
_MOLECULES_DEFAULT = DEFAULT_MOLECULES  # RH's: the set of RH's own example run


def to_stic_field(B: np.ndarray, inclination: np.ndarray, azimuth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """STiC's (blong [G], bhor [G], azi [rad]) from B [G], inclination and azimuth [deg]."""
    g = np.deg2rad(np.asarray(inclination, dtype=float))
    b = np.asarray(B, dtype=float)
    return b * np.cos(g), b * np.sin(g), np.deg2rad(np.asarray(azimuth, dtype=float))


def from_stic_field(blong: np.ndarray, bhor: np.ndarray, azi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B [G], inclination [deg, 0-180], azimuth [deg, 0-180]) from STiC's field.

    A negative ``bhor`` is the same transverse field turned by 180 deg, which
    the azimuth (reported modulo 180) does not tell apart.
    """
    bl, bh = np.asarray(blong, dtype=float), np.abs(np.asarray(bhor, dtype=float))
    return np.hypot(bl, bh), np.rad2deg(np.arctan2(bh, bl)), np.mod(np.rad2deg(np.asarray(azi, dtype=float)), 180.0)


def model_from_sir(model: Any, npix: int = 1) -> io.STiCModel:
    """A STiC model (top first, ``npix`` equal columns) from a SIR model (deep first, cgs).

    The field is the SIR model's (B, gamma, phi) in STiC's (blong, bhor, azi).
    """
    top = np.argsort(model.log_tau)

    def rep(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.asarray(a, dtype=float)[top][None, :], npix, axis=0)

    bl, bh, az = to_stic_field(model.B, model.gamma, model.phi)
    if model.Pg is None:
        raise STiCError("the guess model needs a gas-pressure column (an 11-column SIR .mod): STiC starts from Pg at the top")
    return io.STiCModel(ltau500=rep(model.log_tau), temp=rep(model.T), pgas=rep(model.Pg), vlos=rep(model.vlos),
                        vturb=rep(model.vmic), blong=rep(bl), bhor=rep(bh), azi=rep(az))


@dataclass(frozen=True)
class STiCOptions:
    """Options of the STiC backend (``[backend.stic]`` or ``-B key=value``).

    Attributes
    ----------
    executable : str, optional
        Path of ``STiC.x``; ``STOKESFLOW_STIC`` if unset.
    mpiexec : str, optional
        MPI launcher of the MPI STiC was built with; else ``STOKESFLOW_STIC_MPIEXEC``, else ``mpiexec`` on PATH.
    ranks : int
        MPI ranks per run (>= 2: rank 0 hands out pixels, the others compute).
    atmosphere : str
        ``"lte"`` (STiC's LTE module, lines from the project's tables) or
        ``"nlte"`` (STiC's RH module with model atoms from ``stic_data``;
        the guess model defaults to FAL-C, populations are solved without
        the field (RH's ``FIELD_FREE``, then the full Stokes solution), and
        quantities are interpolated linearly between nodes, cubic Bezier in LTE).
    lines : list of str
        Line names (default: the observation's ``lines``).
    line_table, atomic_table : str, optional
        A user's tables extending or replacing the packaged ones.
    line_width : float
        Half-width [A] around each line centre where STiC computes the line.
    stic_data : str, optional
        STiC's ``input/`` folder (``Atoms/``, ``Molecules/``) for NLTE; else
        ``STOKESFLOW_STIC_DATA``, else ``input/`` two folders above the executable.
    atoms, active : list of str
        NLTE only: model atoms (files in ``stic_data/Atoms`` or paths; hydrogen
        first) and those solved in NLTE.
    abundances : str, optional
        A STiC/RH abundance file; default STiC's built-in table (LTE) or
        ``stic_data/Atoms/abundance.input`` (NLTE).
    strategy : str
        ``"reference"`` (3 cycles: T 3,5,7; vlos, Blong 1,3; Bhor, azimuth,
        vmic 1) or ``"assisted"`` (1 cycle: T 5; vlos, Blong 3; Bhor, azimuth, vmic 1), see :data:`STRATEGIES`.
    cycles : int, optional
        Overrides the strategy's number of cycles.
    nodes : table, optional
        Overrides the strategy's node counts per cycle, e.g. ``{T = "2,4", blong = "1"}``
        (keys: T, vlos, vmic, blong, bhor, azimuth or STiC's names; T >= 2, the others >= 1).
    max_iter : int
        STiC's ``max_inv_iter`` per cycle.
    model : str, optional
        Guess model: a built-in model of the SIR backend with the guess field
        of its inversions, ``"hsra"`` (the default in LTE) or ``"falc"``
        (FAL-C up to log tau -7.5, the default in NLTE: chromospheric lines
        need a chromosphere), or a STiC netCDF model file (its first pixel).
    noise : number or 4 numbers, optional
        Noise sigma of I, Q, U, V in units of the continuum; default the observation's, else 1e-3.
    weights : 4 numbers
        Relative weights of I, Q, U, V (the sigma given to STiC is noise / weight).
    continuum : float, optional
        The intensity unit [erg s^-1 cm^-2 sr^-1 Hz^-1] of the profiles; default
        the guess model's continuum computed by STiC (one extra run per grid and worker).
    mu : float
        Cosine of the heliocentric angle.
    config : table, optional
        Extra input.cfg entries, e.g. ``{regularize = 1}``; they win over the backend's.
    timeout : float
        Seconds per pixel and cycle before a run is killed.
    keep_failed : bool
        Keep a copy of the scratch folder of a failed run (its path is in the pixel's error).
    scratch : str, optional
        Parent folder of the scratch folders (default: the system temporary folder).
    isolate_failures : bool
        When a whole run fails (crash, time-out, fatal error), rerun its pixels
        one by one so that one bad pixel does not fail its neighbours.
    reference_log_tau : float
        Depth of the 2-D maps (``/params/<name>``) of the stratified quantities.
    seed_nodes : tuple of float
        log tau_500 of the node columns an initial guess may give (``"T@-2"``, ...).
    poor_chi2 : float, optional
        Reduced chi2 (statistical units) above which a fit that ended is flagged
        ``poor fit`` (status 4, results kept). Default: the ME backend's rule,
        :func:`stokesflow.backends.noise.poor_chi2_threshold` (100 for every
        grid in use). STiC reports no convergence of its own: on two umbral
        pixels of the shared SIR sample, the one-cycle ``assisted`` strategy
        from HSRA ended at B = 5000 G (the bound) with reduced chi2 5,087 and
        586, which this flags.
    """

    executable: str | None = None
    mpiexec: str | None = None
    ranks: int = 2
    atmosphere: str = "lte"
    lines: tuple[str, ...] = ()
    line_table: str | None = None
    atomic_table: str | None = None
    line_width: float = 2.0
    stic_data: str | None = None
    atoms: tuple[str, ...] = ()
    active: tuple[str, ...] = ()
    abundances: str | None = None
    strategy: str = "reference"
    cycles: int | None = None
    nodes: Any = field(default=None, metadata={"expected": "a table like {T = '1,3,5', blong = '1,3'}"})
    max_iter: int = 20
    model: str | None = None
    noise: float | tuple[float, float, float, float] | None = None
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    continuum: float | None = None
    mu: float = 1.0
    config: Any = field(default=None, metadata={"expected": "a table like {regularize = 1}"})
    timeout: float = 600.0
    keep_failed: bool = False
    scratch: str | None = None
    isolate_failures: bool = True
    reference_log_tau: float = -1.0
    seed_nodes: tuple[float, ...] = (-4.0, -3.0, -2.0, -1.0, 0.0, 1.0)
    poor_chi2: float | None = None

    def __post_init__(self) -> None:
        w = "[backend.stic]"
        if self.poor_chi2 is not None and not self.poor_chi2 > 0:
            raise ConfigError(f"{w} poor_chi2 must be > 0 (reduced chi2), got {self.poor_chi2!r}")
        if self.ranks < MIN_RANKS:
            raise ConfigError(f"{w} ranks: STiC needs at least {MIN_RANKS} MPI ranks (with 1 it writes zeros), "
                              f"got {self.ranks} (-B ranks=2)")
        if self.atmosphere not in ("lte", "nlte"):
            raise ConfigError(f"{w} atmosphere: expected 'lte' or 'nlte', got {self.atmosphere!r}")
        if self.atmosphere == "nlte":
            if not self.atoms:
                raise ConfigError(f"{w} atoms: NLTE needs model atoms, e.g. -B atoms=[H_6.atom,CaII.atom] "
                                  "-B active=[CaII.atom]")
            unknown = sorted(set(self.active) - set(self.atoms))
            if unknown:
                raise ConfigError(f"{w} active: {unknown} are not in atoms {list(self.atoms)}; add them to atoms")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"{w} strategy: expected one of {sorted(STRATEGIES)}, got {self.strategy!r}")
        if self.nodes is not None and not isinstance(self.nodes, Mapping):
            raise ConfigError(f"{w} nodes: expected a table like {{T = '1,3,5'}}, got {self.nodes!r}")
        if self.config is not None and not isinstance(self.config, Mapping):
            raise ConfigError(f"{w} config: expected a table like {{regularize = 1}}, got {self.config!r}")
        if not self.timeout > 0:
            raise ConfigError(f"{w} timeout: expected seconds > 0, got {self.timeout!r}")
        if not 0 < self.mu <= 1:
            raise ConfigError(f"{w} mu: expected 0 < mu <= 1, got {self.mu!r}")
        if self.max_iter < 1:
            raise ConfigError(f"{w} max_iter: expected >= 1, got {self.max_iter!r}")
        if not self.line_width > 0:
            raise ConfigError(f"{w} line_width: expected A > 0, got {self.line_width!r}")
        if self.continuum is not None and not self.continuum > 0:
            raise ConfigError(f"{w} continuum: expected an intensity > 0, got {self.continuum!r}")
        if not all(x > 0 for x in self.weights):
            raise ConfigError(f"{w} weights: expected 4 numbers > 0, got {self.weights!r}")
        check_seed_nodes(self.seed_nodes, w)
        self.resolved_strategy()

    def resolved_strategy(self) -> STiCStrategy:
        """The strategy with the ``cycles`` and ``nodes`` overrides applied."""
        st = STRATEGIES[self.strategy]
        nodes = dict(st.nodes)
        for k, v in dict(self.nodes or {}).items():
            if k not in NODE_KEYS:
                raise ConfigError(f"[backend.stic] nodes: unknown parameter {k!r}; valid are {sorted(NODE_KEYS)}")
            nodes[NODE_KEYS[k]] = str(v).replace(" ", "")
        cycles = st.cycles if self.cycles is None else int(self.cycles)
        try:
            return STiCStrategy(f"{st.name}*" if (self.nodes or self.cycles is not None) else st.name, cycles, nodes)
        except STiCError as exc:
            raise ConfigError(f"[backend.stic] nodes/cycles: {exc}") from None


@functools.lru_cache(maxsize=8)
def _trial(exe: str, mtime_ns: int, mpiexec: str) -> tuple[bool, str]:
    """Whether the STiC at ``exe`` synthesises one LTE pixel of Fe I 6302 (cached per file version)."""
    b = STiCBackend({"executable": exe, "mpiexec": mpiexec, "lines": ["FeI_6302"], "timeout": 60.0})
    return one_pixel_trial(b, exe, (STiCError,))


class STiCBackend(Backend):
    """Inversions and synthesis with STiC, one ``mpiexec -n ranks STiC.x`` run per chunk and cycle.

    Results: ``ChunkResult.stratified`` holds T, Pe, vmic, B, vlos,
    inclination and azimuth on :attr:`log_tau` (the guess model's grid, top
    first), ``params`` the same at ``reference_log_tau``; STiC writes no
    uncertainties (``sigma`` NaN) and no iteration count (``n_iter`` 0);
    ``chi2`` is computed here from STiC's fitted profiles:
    sum(((obs - fit) / sigma)^2) / (points - free parameters of the last cycle).
    A pixel whose fit fails (NaN or zeros in STiC's output, or a run that
    crashed, timed out or stopped on that pixel alone) gets status 2 and its
    reason; a pixel with NaN or inf gets status 3 without running STiC.
    """

    name: ClassVar[str] = "stic"
    options_class: ClassVar[type] = STiCOptions
    depth_stratified: ClassVar[bool] = True
    setup_note: ClassVar[str] = "checking STiC, the MPI launcher and the line data"
    #: Automatic chunks as for SIR (seconds to a minute per pixel): no 1024-pixel floor, so a field
    #: of a few hundred pixels reaches every worker.
    chunk_plan: ClassVar[Mapping[str, int]] = SIRBackend.chunk_plan
    seed_parameters: ClassVar[tuple[str, ...]] = ("B", "inclination", "azimuth", "vlos")

    @classmethod
    def is_available(cls, options: Any = None) -> tuple[bool, str]:
        """Found, ``mpiexec`` found, and passing a one-pixel synthesis."""
        opts: Mapping[str, Any] = {}
        if isinstance(options, STiCOptions):
            opts = {"executable": options.executable, "mpiexec": options.mpiexec}
        elif isinstance(options, Mapping):
            opts = {k: options.get(k) for k in ("executable", "mpiexec")}
        try:
            exe = resolve_stic(opts.get("executable"))
            mpiexec = resolve_stic_mpiexec(opts.get("mpiexec"))
        except STiCError as exc:
            return False, str(exc)
        return _trial(str(exe), exe.stat().st_mtime_ns, str(mpiexec))

    # ----------------------------------------------------------------- specs
    @property
    def parameters(self) -> tuple[ParameterSpec, ...]:
        return tuple(SPECS[n] for n, _ in STRATIFIED)

    @property
    def stratified_parameters(self) -> tuple[ParameterSpec, ...]:
        return self.parameters

    #: The parameters (constant with height, T at ``reference_log_tau``), then node columns
    #: ``NAME@LOGTAU`` of T, vmic, B, vlos, inclination, azimuth at ``seed_nodes``: SIR's.
    init_columns = SIRBackend.init_columns

    @functools.cached_property
    def guess_model(self) -> io.STiCModel:
        """The guess model, one column, top first (the option ``model``, else :meth:`default_model`)."""
        m = self.options.model
        if m is None or is_builtin_model(m):
            return model_from_sir(builtin_model(m or self.default_model(), guess=True))
        p = Path(m)
        if not p.is_file():
            raise STiCError(f"[backend.stic] model: guess model {m} does not exist; give a STiC netCDF model or "
                            f"one of the built-in models {sorted(BUILTIN_MODELS)}")
        return io.read_model(p).select([0])

    def default_model(self) -> str:
        """The built-in model when the option ``model`` is not given: FAL-C (up to log tau -7.5,
        with a chromosphere) for ``atmosphere = "nlte"``, the HSRA (up to -4) for LTE."""
        return "falc" if self.options.atmosphere == "nlte" else "hsra"

    @property
    def log_tau(self) -> np.ndarray:
        """The guess model's log tau_500 grid (top first, increasing)."""
        return np.asarray(self.guess_model.ltau500[0], dtype=float).copy()

    __getstate__ = SIRBackend.__getstate__  # without the cached guess model

    # ----------------------------------------------------------- observation
    def for_observation(self, meta: Mapping[str, Any]) -> "STiCBackend":
        """Lines and noise from the observation unless the options give them."""
        nlte_atoms = self.options.atmosphere == "nlte" and bool(self.options.active)  # the atoms give the lines
        changes = observation_changes(self.options, meta, lines=not nlte_atoms)
        return type(self)(replace(self.options, **changes)) if changes else self

    def _lines(self) -> tuple[ClassicalLine, ...]:
        return option_lines(self.options, "[backend.stic]", STiCError)

    def _argv(self) -> list[str]:
        exe = resolve_stic(self.options.executable)
        return stic_command(resolve_stic_mpiexec(self.options.mpiexec), exe, self.options.ranks)

    def _data_dir(self) -> Path:
        """STiC's ``input/`` folder (NLTE only)."""
        given = self.options.stic_data or os.environ.get(DATA_ENV_VAR)
        where = "the option stic_data" if self.options.stic_data else DATA_ENV_VAR
        if not given:
            exe = resolve_stic(self.options.executable)
            given, where = str(exe.parent.parent / "input"), f"input/ two folders above {exe}"
        p = Path(given).expanduser()
        if not (p / "Atoms").is_dir():
            raise STiCError(f"STiC data folder {p} (from {where}) has no Atoms/; give STiC's input/ folder with "
                            f"-B stic_data=... or {DATA_ENV_VAR}")
        return p.resolve()

    def setup(self, trial: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Check the executable, the launcher and the line data once per worker."""
        self._argv()
        if self.options.lines:
            self._lines()
        if self.options.atmosphere == "nlte":
            self._data_dir()

    # ------------------------------------------------------------ the models
    def _model_for(self, row: np.ndarray | None, inversion: bool) -> io.STiCModel:
        """The guess model with an initial guess applied (columns of :attr:`init_columns`
        or :attr:`parameter_names`; NaN = not given); see the SIR backend's rules."""
        m = self.guess_model.select([0])
        if row is None:
            return m
        names = self.parameter_names
        lt = m.ltau500[0]
        B, inc, azi = from_stic_field(m.blong[0], m.bhor[0], m.azi[0])
        cur = {"T": m.temp[0].copy(), "vmic": m.vturb[0] * 1e-5, "B": B, "vlos": m.vlos[0] * 1e-5,
               "inclination": inc, "azimuth": azi}
        for name in cur:
            v = row[names.index(name)]
            if not np.isfinite(v):
                continue
            if name == "T":
                cur["T"] = cur["T"] + (v - np.interp(self.options.reference_log_tau, lt, cur["T"]))
            else:
                cur[name] = np.full_like(lt, float(np.mod(v, 180.0) if name == "azimuth" else v))
        if row.shape[0] > len(names):
            nodes, node_vals = node_values(row, len(names), self.options.seed_nodes, "STiC", STiCError)
            for name, vals in node_vals.items():
                cur[name] = from_nodes(name, nodes, vals, lt, cur[name])
        if inversion:  # a zero field leaves STiC's derivatives for inclination and azimuth zero
            cur["B"] = np.maximum(cur["B"], B_FLOOR)
        return self._with(m, cur)

    @staticmethod
    def _with(m: io.STiCModel, cur: Mapping[str, np.ndarray]) -> io.STiCModel:
        bl, bh, az = to_stic_field(cur["B"], cur["inclination"], cur["azimuth"])
        return io.STiCModel(ltau500=m.ltau500, temp=np.atleast_2d(cur["T"]), pgas=m.pgas,
                            vlos=np.atleast_2d(cur["vlos"]) * 1e5, vturb=np.atleast_2d(cur["vmic"]) * 1e5,
                            blong=np.atleast_2d(bl), bhor=np.atleast_2d(bh), azi=np.atleast_2d(az))

    def _models_from_params(self, params: np.ndarray | Mapping[str, np.ndarray]) -> tuple[io.STiCModel, np.ndarray, np.ndarray]:
        """(models of every pixel, finite mask, given-constants array) for a synthesis."""
        names = self.parameter_names
        p, npix = named_params(params, names, "the STiC backend", STiCError)
        nd = self.guess_model.ndep
        cols: list[io.STiCModel] = []
        good = np.ones(npix, dtype=bool)
        given = np.full((npix, len(names)), np.nan)
        for i in range(npix):
            row = np.full(len(names), np.nan)
            depth: dict[str, np.ndarray] = {}
            for k, v in p.items():
                vi = v[i] if v.ndim >= 1 and v.shape[0] == npix else v
                if k == "Pe":  # STiC puts the model in hydrostatic equilibrium itself
                    continue
                if not np.all(np.isfinite(vi)):
                    good[i] = False
                elif np.ndim(vi) == 1:
                    if vi.shape[0] != nd:
                        raise STiCError(f"STiC synthesis: {k} has {vi.shape[0]} depths, the model has {nd} (log_tau)")
                    depth[k] = np.asarray(vi, dtype=float)
                else:
                    row[names.index(k)] = given[i, names.index(k)] = float(vi)
            if not good[i]:
                cols.append(self.guess_model.select([0]))
                continue
            m = self._model_for(row, inversion=False)
            if depth:
                B, inc, azi = from_stic_field(m.blong[0], m.bhor[0], m.azi[0])
                cur = {"T": m.temp[0], "vmic": m.vturb[0] * 1e-5, "B": B, "vlos": m.vlos[0] * 1e-5,
                       "inclination": inc, "azimuth": azi}
                cur.update({k: v for k, v in depth.items() if k != "Pe"})
                m = self._with(m, cur)
            cols.append(m)
        model = io.STiCModel(**{n: np.concatenate([getattr(c, n) for c in cols]) for n in io.STiCModel.REQUIRED})
        return model, good, given

    # -------------------------------------------------------------- the inputs
    def _config(self, mode: int, nodes: Mapping[str, int], model_in: str, with_profiles: bool) -> dict[str, object]:
        lte = self.options.atmosphere == "lte"
        cfg: dict[str, object] = {
            "input_model": model_in, "output_profiles": io.PROFILES_OUT, "output_atmos": io.ATMOS_OUT,
            "mu": self.options.mu, "mode": mode, "atmosphere_type": "lte" if lte else "rh",
            "instrument": "none", "verbose": 0, "mpi_pack": 1, "use_eos": 1, "recompute_hydro": 1,
            "max_inv_iter": self.options.max_iter, "depth_model": 0, "depth_t": 0,
            # LTE: cubic Bezier between nodes (STiC's example setting): linear nodes bias the field by
            # ~6 deg in an inversion of STiC's own HSRA profiles (tests/backends/stic/test_stic_external.py).
            # NLTE: linear. From FAL-C, cubic T through 4, 5 or 7 nodes overshot at the top (20,000-37,000 K
            # with 7) and STiC aborted the fit ('ERROR in the evaluation of FX', zero profiles) or ran past
            # 600 s (the assisted strategy, one Ca II 8542 pixel); linear gave results (see the NLTE test)
            "depth_interpolation": 2 if lte else 1,
            "marquardt_damping": 3.162277, "svd_thres": 1.0e-14, "svd_split_singular": 0,
            "chi2_threshold": 1.0, "randomize_inversions": 1, "parameter_perturbation": 0.01,
            "centered_derivatives": 0, "regularize": 0,
        }
        if with_profiles:
            cfg["input_profiles"] = io.PROFILES_IN
        if lte:
            cfg["lines"] = ", ".join(ln.name for ln in self._lines())
            cfg["abundance_file"] = self.options.abundances or "none"
        else:
            cfg["abundance_file"] = self._abundance_path()
        for key in ("nodes_temp", "nodes_vlos", "nodes_vturb", "nodes_blong", "nodes_bhor", "nodes_azi"):
            cfg[key] = int(nodes.get(key, 0))
        cfg.update(dict(self.options.config or {}))
        return cfg

    def _abundance_path(self) -> str:
        p = Path(self.options.abundances) if self.options.abundances else self._data_dir() / "Atoms" / "abundance.input"
        if not p.is_file():
            raise STiCError(f"[backend.stic] abundances: {p} does not exist; give an abundance file")
        return str(p.resolve())

    def _write_static(self, folder: ScratchFolder) -> None:
        """lines.cfg (LTE) or RH's keyword.input, atoms.input, molecules.input (NLTE)."""
        if self.options.atmosphere == "lte":
            lines = [io.stic_line(ln, width=self.options.line_width) for ln in self._lines()]
            folder.write(io.LINES_CFG, io.format_lines_cfg(lines))
            return
        data = self._data_dir()
        atoms_dir, mol_dir = data / "Atoms", data / "Molecules"

        def path_of(d: Path, name: str, suffix: str = "") -> str:
            p = Path(name) if Path(name).is_absolute() else d / name
            if not p.is_file() and suffix:
                p = d / f"{name}{suffix}"
            if not p.is_file():
                raise STiCError(f"[backend.stic] {name!r}: {p} does not exist; give a file name in {d} or a path")
            return str(p.resolve())

        try:
            atoms = [rh_io.AtomEntry(path_of(atoms_dir, a), a in self.options.active,
                                     "ZERO_RADIATION" if a in self.options.active else "LTE_POPULATIONS",
                                     f"pops.{Path(a).stem}.out") for a in self.options.atoms]
            folder.write(_ATOMS, rh_io.format_atoms(atoms))
            folder.write(_MOLECULES, rh_io.format_molecules([path_of(mol_dir, m, ".molecule") for m in _MOLECULES_DEFAULT]))
            kw: dict[str, object] = {
                "ATMOS_FILE": "none", "ABUND_FILE": self._abundance_path(), "NRAYS": 3, "ATOMS_FILE": _ATOMS,
                "MOLECULES_FILE": _MOLECULES, "STARTING_SOLUTION": "LTE_POPULATIONS", "N_MAX_SCATTER": 3,
                "I_SUM": -1, "N_MAX_ITER": 100, "ITER_LIMIT": 1.0e-4, "NG_DELAY": 15, "NG_ORDER": 2, "NG_PERIOD": 7,
                "PRD_N_MAX_ITER": 0, "J_FILE": "J.dat", "STARTING_J": "NEW_J", "BACKGROUND_FILE": "background.dat",
                "KURUCZ_PF_DATA": path_of(atoms_dir, "pf_Kurucz.input"), "HYDROGEN_LTE": True,
                "VACUUM_TO_AIR": False,
                # populations without the field, then the full Stokes formal solution (STiC's
                # example/keyword.input): with FULL_STOKES the Ca II 8542 populations of FAL-C with
                # 1000-2000 G did not converge ("atom populations did not converge"), 500 G did
                "STOKES_MODE": "FIELD_FREE", "MAGNETO_OPTICAL": True,
                "B_STRENGTH_CHAR": 0.0, "VMICRO_CHAR": 4.0, "S_INTERPOLATION": "BEZIER3",
                "S_INTERPOLATION_STOKES": "DELO_BEZIER3", "PRINT_CPU": False, "N_THREADS": 0,
                # keywords STiC's RH requires although RH 1.5D does not (from STiC's example/keyword.input)
                "PRD_ANGLE_DEP": "PRD_ANGLE_APPROX", "PRD_ITER_LIMIT": 1.0e-4, "XRD": False, "RLK_EXPLICIT": False,
                "HYDROSTATIC": False, "VMACRO_TRESH": 1.0e-10, "BACKGROUND_POLARIZATION": False,
                "LIMIT_MEMORY": False, "N_LAMBDA_ITER": 0, "COLLRAD_SWITCH_INIT": 1.0, "COLLRAD_SWITCH": 0.0,
            }
            if self.options.lines:
                folder.write(_KURUCZ_LINES, rh_io.format_kurucz([rh_io.kurucz_line(ln) for ln in self._lines()]))
                folder.write(_KURUCZ, f"{_KURUCZ_LINES}\n")
                kw["KURUCZ_DATA"] = _KURUCZ
            folder.write(_KEYWORDS, rh_io.format_keywords(kw))
        except RHError as exc:
            raise STiCError(f"[backend.stic] NLTE inputs: {exc}") from None

    def _regions(self, wavelength: np.ndarray, cscal: float) -> list[io.Region]:
        return io.regions_for_grid(wavelength, cscal)

    # -------------------------------------------------------------- continuum
    def continuum(self, wavelength: np.ndarray) -> float:
        """The intensity unit of the profiles [erg s^-1 cm^-2 sr^-1 Hz^-1] for a grid.

        The option ``continuum``, else STiC's continuum intensity of the guess
        model (no field, no velocity) :data:`CONTINUUM_OFFSET` A blue of the
        grid, computed once per grid and kept. In NLTE that run has the first
        model atom (hydrogen) alone, passive, and no extra lines: the wings of
        a broad line reach past the offset (with Ca II 8542's atom active, STiC
        gives 0.60 of the continuum 1.5 A blue of its centre in FAL-C).
        """
        if self.options.continuum is not None:
            return float(self.options.continuum)
        wc = round(float(np.min(wavelength)) - CONTINUUM_OFFSET, 3)
        cache = self.__dict__.setdefault("_continuum_cache", {})
        if wc not in cache:
            m = self.guess_model.select([0])
            m.blong[:], m.bhor[:], m.azi[:], m.vlos[:] = 0.0, 0.0, 0.0, 0.0
            runner = self
            if self.options.atmosphere == "nlte":  # the continuum without the atoms' lines
                runner = type(self)(replace(self.options, atoms=self.options.atoms[:1], active=(), lines=()))
            with ScratchFolder("stokesflow-stic-cont-", self.options.scratch) as folder:
                prof, reason = runner._run_once(folder, m, [io.Region(wc, 0.01, 1, 1.0)], self.strategy_nodes(None),
                                                2, None, None, 1)
            if reason or prof is None or not (np.isfinite(prof[0, 0, 0]) and prof[0, 0, 0] > 0):
                launcher = resolve_stic_mpiexec(self.options.mpiexec)
                raise STiCError(f"STiC's continuum of the guess model at {wc} A failed: {reason or 'not positive'}; "
                                f"if {launcher} is not the mpiexec of the MPI STiC was built with, each rank runs "
                                "alone: give -B mpiexec=... or STOKESFLOW_STIC_MPIEXEC; otherwise give the intensity "
                                "unit with -B continuum=...")
            cache[wc] = float(prof[0, 0, 0])
        return cache[wc]

    @staticmethod
    def strategy_nodes(strategy: STiCStrategy | None, cycle: int = 0) -> dict[str, int]:
        """Node counts of one cycle (none for a synthesis)."""
        return {} if strategy is None else strategy.nodes_of_cycle(cycle)

    # --------------------------------------------------------------- running
    def _run_once(self, folder: ScratchFolder, model: io.STiCModel, regions: list[io.Region],
                  nodes: Mapping[str, int], mode: int, observed: np.ndarray | None, sigma: np.ndarray | None,
                  npix: int) -> tuple[np.ndarray | None, str]:
        """One STiC run in ``folder``: (profiles (npix, 4, nw) in cscal units, "") or (None, reason)."""
        self._write_static(folder)
        io.write_model(folder.path / _GUESS, model)
        if observed is not None:
            io.write_profiles(folder.path / io.PROFILES_IN, io.region_wavelengths(regions), observed, sigma)
        folder.write(io.INPUT_CFG, io.format_input_cfg(self._config(mode, nodes, _GUESS, observed is not None), regions))
        expected = [io.PROFILES_OUT] + ([io.ATMOS_OUT] if mode == 1 else [])
        outcome = run_stic(folder.path, self._argv(), timeout=run_timeout(self.options.timeout, npix, self.options.ranks),
                           expected=expected)
        if not outcome.ok:
            return None, f"STiC run of {npix} pixel(s) {outcome.reason}"
        try:
            _, prof, _ = io.read_profiles(folder.path / io.PROFILES_OUT)
        except STiCError as exc:
            return None, f"STiC's output is unreadable: {exc}"
        return prof, ""

    def _kept(self, folder: ScratchFolder, label: str) -> str:
        return kept_folder_note(folder, label, self.options.keep_failed, self)

    def _synth_pixels(self, folder: ScratchFolder, model: io.STiCModel, regions: list[io.Region],
                      cols: list[int]) -> dict[int, Any]:
        """Synthesis of model columns ``cols``: per column, profiles (4, nw) or a reason."""
        prof, reason = self._run_once(folder, model.select(cols), regions, {}, 2, None, None, len(cols))
        if prof is None:
            if len(cols) > 1 and self.options.isolate_failures:
                out: dict[int, Any] = {}
                for c in cols:
                    out.update(self._synth_pixels(folder, model, regions, [c]))
                return out
            reason += self._kept(folder, "run")
            return {c: reason for c in cols}
        failed = pixel_failures(prof, len(cols))
        kept = self._kept(folder, "pixel") if failed else ""
        return {c: (failed[k] + kept if k in failed else prof[k]) for k, c in enumerate(cols)}

    def synthesize_chunk(self, params: np.ndarray | Mapping[str, np.ndarray], wavelength: np.ndarray) -> ChunkResult:
        """Synthesise the pixels of ``params`` in one STiC run; a failed pixel is flagged, not raised.

        Returns
        -------
        ChunkResult
            ``synthetic`` (npix, 4, nw) in units of the quiet-Sun continuum
            (:meth:`continuum`; NaN where failed), ``status`` 0 ok, 2 failed
            (reason in ``errors``), 3 NaN or inf parameters (not run);
            ``params`` the parameters given as constants.
        """
        wavelength = np.asarray(wavelength, dtype=float)
        model, good, given = self._models_from_params(params)
        npix, nw = model.npix, wavelength.size
        status = np.full(npix, STATUS_OK, dtype=np.uint8)
        errors: dict[int, str] = {}
        synthetic = np.full((npix, 4, nw), np.nan, dtype=np.float32)
        for i in np.flatnonzero(~good):
            status[i], errors[int(i)] = STATUS_BAD_INPUT, "parameters hold NaN or inf (STiC not run)"
        idx = np.flatnonzero(good)
        if idx.size:
            cont = self.continuum(wavelength)
            regions = self._regions(wavelength, cont)
            with ScratchFolder("stokesflow-stic-", self.options.scratch) as folder:
                res = self._synth_pixels(folder, model, regions, [int(i) for i in idx])
            for i, r in res.items():
                if isinstance(r, str):
                    status[i], errors[i] = STATUS_FAILED, r
                else:
                    synthetic[i] = r
        return ChunkResult(
            names=self.parameter_names, params=given, sigma=np.full_like(given, np.nan), chi2=np.full(npix, np.nan),
            n_iter=np.zeros(npix, dtype=np.int32), status=status, synthetic=synthetic, errors=errors,
        )

    def synthesize(self, params: np.ndarray | Mapping[str, np.ndarray], wavelength: np.ndarray) -> np.ndarray:
        """Stokes profiles (npix, 4, nw) in units of the quiet-Sun continuum; raises if any pixel failed.

        Parameters
        ----------
        params : (npix, 7) array in :attr:`parameter_names` order (NaN = keep the
            guess model's value), or a mapping name -> (npix,) values (constant
            with height; T shifts the model to T at ``reference_log_tau``) or
            (npix, ndepth) stratifications on :attr:`log_tau`. Pe is not an
            input (STiC puts the model in hydrostatic equilibrium).
        wavelength : ndarray (nw,)
            Air wavelengths [A].

        Raises
        ------
        STiCError
            A pixel failed or had NaN parameters (the message lists them);
            :meth:`synthesize_chunk` flags such pixels instead.
        """
        return profiles_or_raise(self.synthesize_chunk(params, wavelength), "STiC", STiCError)

    # -------------------------------------------------------------- inversion
    def _sigma(self, nw: int) -> np.ndarray:
        """Noise sigma per point and Stokes parameter (nw, 4), in continuum units, divided by the weights."""
        noise = self.options.noise
        n = np.broadcast_to(np.atleast_1d(np.asarray(1e-3 if noise is None else noise, dtype=float)), (4,))
        if not np.all(n > 0):
            raise STiCError(f"[backend.stic] noise: expected values > 0, got {noise!r}")
        return np.repeat((n / np.asarray(self.options.weights, dtype=float))[None, :], nw, axis=0)

    def _invert_pixels(self, folder: ScratchFolder, models: io.STiCModel, stokes: np.ndarray, sigma: np.ndarray,
                       regions: list[io.Region], strategy: STiCStrategy, cols: list[int]) -> dict[int, Any]:
        """Every cycle for pixels ``cols``: per pixel, (model (STiCModel, 1 column), fit (4, nw)) or a reason."""
        model = models.select(cols)
        prof: np.ndarray | None = None
        reason = ""
        for c in range(strategy.cycles):
            prof, reason = self._run_once(folder, model, regions, strategy.nodes_of_cycle(c), 1,
                                          stokes[cols], sigma, len(cols))
            if prof is None:
                reason = f"cycle {c + 1}: {reason}"
                break
            try:
                model = io.read_model(folder.path / io.ATMOS_OUT)
            except STiCError as exc:
                prof, reason = None, f"cycle {c + 1}: STiC's model output is unreadable: {exc}"
                break
            if model.npix != len(cols):
                prof, reason = None, f"cycle {c + 1}: STiC wrote {model.npix} pixels for {len(cols)}"
                break
            bad = pixel_failures(prof, len(cols), (model.temp, model.blong, model.bhor, model.vlos))
            if bad and c + 1 < strategy.cycles:  # a NaN model cannot start the next cycle: reset it to its start
                good = models.select(cols)
                for k in bad:
                    for n in io.STiCModel.REQUIRED:
                        getattr(model, n)[k] = getattr(good, n)[k]
                model = io.STiCModel(**{n: getattr(model, n) for n in io.STiCModel.REQUIRED})
        if prof is None:
            if len(cols) > 1 and self.options.isolate_failures:
                out: dict[int, Any] = {}
                for c in cols:
                    out.update(self._invert_pixels(folder, models, stokes, sigma, regions, strategy, [c]))
                return out
            reason += self._kept(folder, "run")
            return {c: reason for c in cols}
        failed = pixel_failures(prof, len(cols), (model.temp, model.blong, model.bhor, model.vlos))
        kept = self._kept(folder, "pixel") if failed else ""
        return {c: (failed[k] + kept if k in failed else (model.select([k]), prof[k])) for k, c in enumerate(cols)}

    def invert(self, stokes: np.ndarray, wavelength: np.ndarray, init: np.ndarray | None = None) -> ChunkResult:
        """Invert ``stokes`` (npix, 4, nw) [units of the quiet-Sun continuum] observed at ``wavelength`` [A, air].

        ``init`` (npix, len(:attr:`init_columns`) or len(:attr:`parameter_names`)) holds starting points, NaN where not given.
        """
        stokes = np.asarray(stokes, dtype=float)
        wavelength = np.asarray(wavelength, dtype=float)
        npix, _, nw = stokes.shape
        names = self.parameter_names
        strategy = self.options.resolved_strategy()
        lt = self.log_tau
        nd = lt.size
        params = np.full((npix, len(names)), np.nan)
        chi2 = np.full(npix, np.nan)
        status = np.full(npix, STATUS_FAILED, dtype=np.uint8)
        synthetic = np.full((npix, 4, nw), np.nan, dtype=np.float32)
        strat = {n: np.full((npix, nd), np.nan) for n, _ in STRATIFIED}
        errors: dict[int, str] = {}
        good = np.all(np.isfinite(stokes), axis=(1, 2))
        for i in np.flatnonzero(~good):
            status[i], errors[int(i)] = STATUS_BAD_INPUT, "profile holds NaN or inf (STiC not run)"
        idx = [int(i) for i in np.flatnonzero(good)]
        if idx:
            cont = self.continuum(wavelength)
            regions = self._regions(wavelength, cont)
            sigma = self._sigma(nw)
            cols = [self._model_for(None if init is None else np.asarray(init[i], dtype=float), inversion=True) for i in range(npix)]
            models = io.STiCModel(**{n: np.concatenate([getattr(c, n) for c in cols]) for n in io.STiCModel.REQUIRED})
            nfree = sum(strategy.nodes_of_cycle(strategy.cycles - 1).values())
            poor = (float(self.options.poor_chi2) if self.options.poor_chi2 is not None
                    else poor_chi2_threshold(4 * nw - nfree))
            with ScratchFolder("stokesflow-stic-", self.options.scratch) as folder:
                res = self._invert_pixels(folder, models, stokes, sigma, regions, strategy, idx)
            for i, r in res.items():
                if isinstance(r, str):
                    errors[i] = r
                    continue
                model, fit = r
                self._fill(i, model, strat, params)
                synthetic[i] = fit
                chi2[i] = float(np.sum(((stokes[i] - fit) / sigma.T) ** 2) / max(1, 4 * nw - nfree))
                status[i] = STATUS_OK if chi2[i] <= poor else STATUS_POOR_FIT
        return ChunkResult(
            names, params, np.full_like(params, np.nan), chi2, np.zeros(npix, dtype=np.int32), status, synthetic,
            errors, log_tau=lt.copy(), stratified=strat,
        )

    def _fill(self, i: int, model: io.STiCModel, strat: dict[str, np.ndarray], params: np.ndarray) -> None:
        lt_out = model.ltau500[0]
        o = np.argsort(lt_out)
        B, inc, azi = from_stic_field(model.blong[0], model.bhor[0], model.azi[0])
        T = model.temp[0]
        pe = model.nne[0] * _K_B_CGS * T if model.nne is not None else np.full_like(T, np.nan)
        values = {"T": T, "Pe": pe, "vmic": model.vturb[0] * 1e-5, "B": B, "vlos": model.vlos[0] * 1e-5,
                  "inclination": inc, "azimuth": azi}
        lt = self.log_tau
        for j, name in enumerate(self.parameter_names):
            v = np.interp(lt, lt_out[o], values[name][o])
            strat[name][i] = v
            params[i, j] = np.interp(self.options.reference_log_tau, lt, v)

