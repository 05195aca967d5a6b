"""The RH 1.5D backend: full-Stokes synthesis of model-atmosphere columns with RH 1.5D.

RH 1.5D (Pereira & Uitenbroek 2015; github.com/ITA-Solar/rh) is not bundled:
the executable ``rh15d_ray_pool`` comes from the option ``executable`` or
``STOKESFLOW_RH``; RH's data folder (its source tree, holding
``Atoms_example/`` or ``Atoms/`` with ``H_6.atom``, the Barklem tables,
``pf_Kurucz.input`` and ``abundance.input``, and ``Molecules_example/``) from
the option ``rh_data``, ``STOKESFLOW_RH_DATA``, or two folders above the
executable (``rh/rh15d/rh15d_ray_pool`` -> ``rh/``). It runs under MPI with at
least 2 ranks (``mpiexec`` on PATH, the option ``mpiexec`` or
``STOKESFLOW_RH_MPIEXEC``). Synthesis only, like the Lightweaver backend.

Every call of :meth:`RHBackend.synthesize_chunk` writes the chunk's columns as
one RH atmosphere cube (nx = pixels, ny = 1) in a private scratch folder, with
``keyword.input`` selecting them all (X_START 0, X_END npix), the project's
lines as a Kurucz-format LTE line list (Zeeman patterns from their LS terms),
the observation's grid (plus one continuum point) as RH's wavelength table,
and runs ``mpiexec -n ranks rh15d_ray_pool`` once. Atoms listed in ``active``
are solved in NLTE; a column that RH does not converge (or gives up on) is a
failed pixel with the reason from RH's convergence map, never fill values.

Model: the HSRA (SIR's table shipped with the SIR backend, up to log tau -4,
558 km: photospheric lines) or a SIR ``.mod`` file with the z, Pg and rho
columns (electron density from Pe, hydrogen density from Pg - Pe and the
abundances of RH's abundance file), or the first column of an RH atmosphere
file such as RH's own ``Atmos/FALC_82_5x5.hdf5`` (with a chromosphere).

Conventions (checked by synthesising with RH 1.5D itself): B in G (RH: T),
``inclination`` 0 with B > 0 gives V > 0 in the blue wing and ``vlos`` > 0 is
a redshift (RH's ``velocity_z`` is positive upwards, so it is -vlos);
``inclination`` 90, ``azimuth`` 0 gives Q < 0 at line centre, ``azimuth`` 45
U < 0, as in DESIGN.md (the map to RH's B_x, B_y, B_z is in
:func:`field_components`). Wavelengths are air [A]; RH works in vacuum [nm]:
the grid is converted with RH's own formula (the one it applies to the line
list) and RH writes vacuum wavelengths back (VACUUM_TO_AIR = FALSE). Profiles are in units of the
continuum intensity 1.5 A blue of the grid.
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
    Backend,
    ChunkResult,
    ConfigError,
    ParameterSpec,
    named_params,
    one_pixel_trial,
)
from stokesflow.backends.rh import io
from stokesflow.backends.rh.errors import RHError
from stokesflow.backends.rh.runner import (
    DATA_ENV_VAR,
    ENV_VAR,
    MIN_RANKS,
    ScratchFolder,
    column_failures,
    resolve_mpiexec,
    resolve_rh,
    rh_command,
    run_rh,
    run_timeout,
)
from stokesflow.backends.sir.atomic import ClassicalLine
from stokesflow.backends.sir.backend import observation_changes, option_lines
from stokesflow.backends.sir.errors import SIRError

__all__ = [
    "ENV_VAR",
    "CONTINUUM_OFFSET",
    "DEFAULT_MOLECULES",
    "RHOptions",
    "RHBackend",
    "field_components",
    "atmosphere_from_model",
    "kept_folder_note",
    "profiles_or_raise",
]

#: Where the continuum is taken: this far blue of the first grid point [A].
CONTINUUM_OFFSET = 1.5
#: Molecules in LTE for the chemical equilibrium (the set of RH's own example run).
DEFAULT_MOLECULES = ("H2", "H2+", "C2", "N2", "O2", "CH", "CO", "CN", "NH", "NO", "OH", "H2O")
#: Boltzmann constant [erg/K].
_K_B_CGS = 1.380649e-16

_SPECS = (
    ParameterSpec("B", "G", 0.0, 6000.0, 500.0),
    ParameterSpec("inclination", "deg", 0.0, 180.0, 30.0),
    ParameterSpec("azimuth", "deg", 0.0, 180.0, 30.0, circular=True),
    ParameterSpec("vlos", "km/s", -20.0, 20.0, 1.0),
    ParameterSpec("vmic", "km/s", 0.0, 10.0, 1.0),
)

# Files written in the scratch folder.
_ATMOS = "atmos.hdf5"
_KEYWORDS = "keyword.input"
_ATOMS = "atoms.input"
_MOLECULES = "molecules.input"
_RAY = "ray.input"
_KURUCZ = "kurucz.input"
_LINES = "lines.kurucz"
_WAVETABLE = "wave.table"


@dataclass(frozen=True)
class RHOptions:
    """Options of the RH 1.5D backend (``[backend.rh]`` or ``-B key=value``).

    Attributes
    ----------
    executable : str, optional
        Path of ``rh15d_ray_pool``; ``STOKESFLOW_RH`` if unset.
    rh_data : str, optional
        RH's source folder (with ``Atoms_example/`` or ``Atoms/``); else
        ``STOKESFLOW_RH_DATA``, else two folders above the executable.
    mpiexec : str, optional
        MPI launcher of the MPI RH was built with; else
        ``STOKESFLOW_RH_MPIEXEC``, else ``mpiexec`` on PATH.
    ranks : int
        MPI ranks per run (>= 2; rank 0 hands out columns, the others compute).
    lines : list of str
        Line names (default: the observation's ``lines``), written as an LTE
        Kurucz line list from the project's tables; may be empty when
        ``active`` atoms give the lines (e.g. Ca II 8542 from ``CaII.atom``).
    line_table, atomic_table : str, optional
        A user's tables extending or replacing the packaged ones.
    atoms : list of str
        Model atoms (file names in RH's atoms folder, or paths); hydrogen first.
    active : list of str
        Those of ``atoms`` solved in NLTE (e.g. ``["CaII.atom"]``); none: LTE only.
    molecules : list of str
        Molecules (names in RH's molecules folder) in LTE.
    abundances : str, optional
        An RH abundance file; default: the one in RH's atoms folder.
    model : str, optional
        ``"hsra"`` (default), ``"falc"`` (the SIR backend's FAL-C, up to log
        tau -7.5), a SIR ``.mod`` file with z, Pg and rho columns,
        or an RH atmosphere file (``.hdf5``: its first column, e.g. RH's
        ``Atmos/FALC_82_5x5.hdf5`` for lines that form in the chromosphere).
    mu : float
        Cosine of the heliocentric angle of the output ray.
    n_max_iter : int
        NLTE iterations at most (with active atoms).
    iter_limit : float
        Convergence limit of the relative population change.
    keywords : table, optional
        Extra ``keyword.input`` entries, e.g. ``{NRAYS = 3}``; they win over the backend's.
    timeout : float
        Seconds per column before the run is killed.
    keep_failed : bool
        Keep a copy of the scratch folder of a failed run (its path is in the pixel's error).
    scratch : str, optional
        Parent folder of the scratch folders (default: the system temporary folder).
    isolate_failures : bool
        When a whole run fails (crash, non-zero exit, time-out), rerun its
        columns one by one so that one bad column does not fail its neighbours.
    """

    executable: str | None = None
    rh_data: str | None = None
    mpiexec: str | None = None
    ranks: int = 2
    lines: tuple[str, ...] = ()
    line_table: str | None = None
    atomic_table: str | None = None
    atoms: tuple[str, ...] = ("H_6.atom",)
    active: tuple[str, ...] = ()
    molecules: tuple[str, ...] = DEFAULT_MOLECULES
    abundances: str | None = None
    model: str | None = None
    mu: float = 1.0
    n_max_iter: int = 150
    iter_limit: float = 1e-3
    keywords: Any = field(default=None, metadata={"expected": "a table like {NRAYS = 3}"})
    timeout: float = 300.0
    keep_failed: bool = False
    scratch: str | None = None
    isolate_failures: bool = True

    def __post_init__(self) -> None:
        if self.ranks < MIN_RANKS:
            raise ConfigError(f"[backend.rh] ranks: rh15d_ray_pool needs at least {MIN_RANKS}, got {self.ranks} (-B ranks=2)")
        if not 0 < self.mu <= 1:
            raise ConfigError(f"[backend.rh] mu: expected 0 < mu <= 1, got {self.mu!r}")
        if not self.timeout > 0:
            raise ConfigError(f"[backend.rh] timeout: expected seconds > 0, got {self.timeout!r}")
        if self.n_max_iter < 1 or not self.iter_limit > 0:
            raise ConfigError(
                f"[backend.rh] n_max_iter/iter_limit: expected >= 1 and > 0, got {self.n_max_iter!r}, {self.iter_limit!r}"
            )
        if not self.atoms:
            raise ConfigError("[backend.rh] atoms: at least the hydrogen atom is needed (-B atoms=[H_6.atom])")
        unknown = sorted(set(self.active) - set(self.atoms))
        if unknown:
            raise ConfigError(f"[backend.rh] active: {unknown} are not in atoms {list(self.atoms)}; add them to atoms")
        if self.keywords is not None and not isinstance(self.keywords, Mapping):
            raise ConfigError(f"[backend.rh] keywords: expected a table like {{NRAYS = 3}}, got {self.keywords!r}")


def field_components(B: np.ndarray, inclination: np.ndarray, azimuth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RH's (B_x, B_y, B_z) [T] from B [G], inclination and azimuth [deg] in the project's convention.

    B_z is along the line of sight (towards the observer at mu = 1), so
    inclination 0 with B > 0 gives V > 0 in the blue wing; the azimuth is
    measured from RH's x axis, which gives Q < 0 at line centre for azimuth 0.
    """
    b = np.asarray(B, dtype=float) * 1e-4
    g, c = np.deg2rad(inclination), np.deg2rad(azimuth)
    return b * np.sin(g) * np.cos(c), b * np.sin(g) * np.sin(c), b * np.cos(g)


def atmosphere_from_model(
    model: Any,
    abundances: Mapping[str, float],
    *,
    B: np.ndarray,
    inclination: np.ndarray,
    azimuth: np.ndarray,
    vlos: np.ndarray,
    vmic: np.ndarray | None,
) -> io.Atmosphere:
    """RH atmosphere columns from a model column and per-pixel stratifications.

    Parameters
    ----------
    model : stokesflow.backends.sir.io.Model or io.Atmosphere
        A SIR model (deep first; needs z [km], Pe and Pg [dyn cm^-2], T [K],
        vmic [cm/s]) or one RH column (top first, SI units: an RH atmosphere
        file's column, whose field and velocity are replaced).
    abundances : mapping
        RH abundances (symbol -> log10(N/N_H) + 12), for the hydrogen density
        of a SIR model.
    B, inclination, azimuth, vlos : ndarray (npix, ndepth)
        G, deg, deg, km/s (positive = redshift), in the model's depth order.
    vmic : ndarray (npix, ndepth) or None
        km/s; None keeps the model's.

    Returns
    -------
    io.Atmosphere
        Top first, SI units.
    """
    npix = np.shape(B)[0]
    if isinstance(model, io.Atmosphere):
        top = np.arange(model.nz)
        z, T, ne, nH = model.z[0], model.temperature[0], model.electron_density[0], model.hydrogen[0]
        vt = model.velocity_turbulent[0]
    else:
        if model.z is None or model.Pg is None:
            raise RHError("the model atmosphere needs the z and Pg columns (an 11-column SIR .mod) to be written for RH")
        top = np.argsort(-np.asarray(model.z))  # highest first, as RH wants
        T = np.asarray(model.T, dtype=float)[top]
        Pe, Pg = np.asarray(model.Pe, dtype=float)[top], np.asarray(model.Pg, dtype=float)[top]
        ne = Pe / (_K_B_CGS * T) * 1e6
        nH = (Pg - Pe) / (_K_B_CGS * T) * 1e6 / sum(10.0 ** (a - 12.0) for a in abundances.values())
        z, vt = np.asarray(model.z, dtype=float)[top] * 1e3, np.asarray(model.vmic, dtype=float)[top] * 1e-2

    def rep(a: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.asarray(a, dtype=float), (npix, top.size)).copy()

    bx, by, bz = field_components(B, inclination, azimuth)
    vturb = rep(vt) if vmic is None else np.asarray(vmic, float)[:, top] * 1e3
    return io.Atmosphere(
        z=rep(z), temperature=rep(T), electron_density=rep(ne), hydrogen=rep(nH),
        velocity_z=-np.asarray(vlos, dtype=float)[:, top] * 1e3, velocity_turbulent=vturb,
        B_x=bx[:, top], B_y=by[:, top], B_z=bz[:, top], description="stokesflow RH backend chunk",
    )


def _data_dir(root: Path, kind: str) -> Path:
    for name in (kind, f"{kind}_example"):
        if (root / name).is_dir():
            return root / name
    raise RHError(
        f"RH data folder {root} has no {kind}/ or {kind}_example/; give RH's source folder with -B rh_data=... "
        f"or {DATA_ENV_VAR}"
    )


def kept_folder_note(folder: ScratchFolder, label: str, keep: bool, owner: object) -> str:
    """Keep a copy of a failed run's scratch folder when ``keep``; the note for the pixel's error.

    Shared by the master/worker codes (RH 1.5D, STiC). The copy is named
    ``failed-<label>-<process id>-<owner>`` (``owner``: the backend, so that
    two backends in one process keep apart).

    Returns
    -------
    str
        `` (folder kept: PATH)``, or "" when not kept.
    """
    if not keep:
        return ""
    dest = folder.keep_copy(f"failed-{label}-{os.getpid()}-{id(owner) % 10000}")
    return f" (folder kept: {dest})"


def profiles_or_raise(res: ChunkResult, code: str, error: type[Exception]) -> np.ndarray:
    """The synthetic profiles (npix, 4, nw) of a synthesis in which every pixel succeeded.

    Shared by the master/worker codes (RH 1.5D, STiC).

    Raises
    ------
    error
        A pixel failed or was not run: the message names ``code``, the
        number of failed pixels and the first three with their reasons.
    """
    bad = np.flatnonzero(res.status != STATUS_OK)
    if bad.size:
        shown = "; ".join(f"pixel {i}: {res.errors.get(int(i), 'failed')}" for i in bad[:3])
        more = f" (and {bad.size - 3} more)" if bad.size > 3 else ""
        raise error(f"{code} synthesis failed for {bad.size} of {res.npix} pixel(s): {shown}{more}")
    return np.asarray(res.synthetic, dtype=np.float64)


@functools.lru_cache(maxsize=8)
def _trial(exe: str, mtime_ns: int, data: str, mpiexec: str) -> tuple[bool, str]:
    """Whether the RH at ``exe`` synthesises one LTE pixel of Fe I 6302 (cached per file version)."""
    b = RHBackend({"executable": exe, "rh_data": data, "mpiexec": mpiexec, "lines": ["FeI_6302"], "timeout": 60.0})
    return one_pixel_trial(b, exe, (RHError,))


class RHBackend(Backend):
    """Full-Stokes synthesis with RH 1.5D, one MPI run per chunk (synthesis only).

    :meth:`synthesize` takes B [G], inclination and azimuth [deg], vlos [km/s,
    positive = redshift] and vmic [km/s] as (npix,) values constant with
    height or (npix, ndepth) stratifications on :attr:`log_tau` (the model's
    depth grid, deep first); vmic NaN or absent keeps the model's own.
    """

    name: ClassVar[str] = "rh"
    options_class: ClassVar[type] = RHOptions
    setup_note: ClassVar[str] = "checking the RH 1.5D executable, its data folder and the MPI launcher"

    @classmethod
    def is_available(cls, options: Any = None) -> tuple[bool, str]:
        """Found, its data and ``mpiexec`` found, and passing a one-pixel synthesis."""
        opts: Mapping[str, Any] = {}
        if isinstance(options, RHOptions):
            opts = {"executable": options.executable, "rh_data": options.rh_data, "mpiexec": options.mpiexec}
        elif isinstance(options, Mapping):
            opts = {k: options.get(k) for k in ("executable", "rh_data", "mpiexec")}
        try:
            exe = resolve_rh(opts.get("executable"))
            data = cls._resolve_data(opts.get("rh_data"), exe)
            mpiexec = resolve_mpiexec(opts.get("mpiexec"))
        except RHError as exc:
            return False, str(exc)
        return _trial(str(exe), exe.stat().st_mtime_ns, str(data), str(mpiexec))

    @staticmethod
    def _resolve_data(given: str | None, exe: Path) -> Path:
        where = "the option rh_data" if given else DATA_ENV_VAR
        root = given or os.environ.get(DATA_ENV_VAR)
        if not root:
            root, where = str(exe.parent.parent), f"two folders above {exe}"
        p = Path(root).expanduser()
        if not p.is_dir():
            raise RHError(f"RH data folder {p} (from {where}) does not exist; give RH's source folder with -B rh_data=...")
        atoms = _data_dir(p, "Atoms")
        if not (atoms / "H_6.atom").is_file():
            raise RHError(f"RH data folder {p} (from {where}): {atoms} has no H_6.atom; give RH's source folder")
        return p.resolve()

    # ----------------------------------------------------------------- specs
    @property
    def parameters(self) -> tuple[ParameterSpec, ...]:
        return _SPECS

    @functools.cached_property
    def model(self) -> Any:
        """The model column: a SIR :class:`~stokesflow.backends.sir.io.Model` (deep first) or,
        for an RH atmosphere file, its first column of snapshot 0 (:class:`io.Atmosphere`, top first)."""
        from stokesflow.backends.sir import io as sir_io
        from stokesflow.backends.sir.backend import builtin_model, is_builtin_model

        m = self.options.model
        try:
            if m is None or is_builtin_model(m):
                return builtin_model(m or "hsra", guess=False)
            p = Path(m)
            if not p.is_file():
                raise RHError(
                    f"[backend.rh] model: {m} does not exist; give 'hsra', 'falc', a SIR .mod file (with z, Pg, rho) "
                    "or an RH atmosphere file (.hdf5)"
                )
            if p.suffix.lower() in (".h5", ".hdf5"):
                col = io.read_atmosphere(p)
                if not np.all(np.isfinite(col.electron_density)):
                    raise RHError(f"[backend.rh] model: {p} has no electron_density; give one that has")
                return io.Atmosphere(**{n: np.asarray(getattr(col, n))[:1] for n in io.Atmosphere.COLUMNS},
                                     description=col.description)
            return sir_io.parse_model(p.read_text(), str(p))
        except SIRError as exc:
            raise RHError(f"[backend.rh] model: {exc}") from None

    @property
    def log_tau(self) -> np.ndarray | None:
        """The model's depth grid, log10 tau_500 (deep first, as in SIR's files); None for an RH
        atmosphere file (height grid: stratifications are then given on its depth points, top first)."""
        if isinstance(self.model, io.Atmosphere):
            return None
        return np.asarray(self.model.log_tau, dtype=float).copy()

    @property
    def ndepth(self) -> int:
        """Depth points of the model."""
        m = self.model
        return m.nz if isinstance(m, io.Atmosphere) else m.ndepth

    def _model_vmic(self) -> np.ndarray:
        """The model's microturbulence [km/s] in its own depth order."""
        m = self.model
        if isinstance(m, io.Atmosphere):
            return np.asarray(m.velocity_turbulent[0], dtype=float) * 1e-3
        return np.asarray(m.vmic, dtype=float) * 1e-5

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("model", None)
        return state

    def for_observation(self, meta: Mapping[str, Any]) -> "RHBackend":
        """Lines from the observation unless the options give them (or NLTE atoms alone give them)."""
        changes = observation_changes(self.options, meta, lines=not self.options.active, noise=False)
        return type(self)(replace(self.options, **changes)) if changes else self

    def _lines(self) -> tuple[ClassicalLine, ...]:
        return option_lines(self.options, "[backend.rh]", RHError, hint="")

    def _paths(self) -> tuple[Path, Path, Path, Path]:
        """(executable, data folder, mpiexec, atoms folder)."""
        exe = resolve_rh(self.options.executable)
        data = self._resolve_data(self.options.rh_data, exe)
        return exe, data, resolve_mpiexec(self.options.mpiexec), _data_dir(data, "Atoms")

    def setup(self, trial: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Check the executable, the data folder, the launcher and the line data once per worker."""
        self._paths()
        if self.options.lines:
            self._lines()

    def invert(self, stokes: np.ndarray, wavelength: np.ndarray, init: np.ndarray | None = None) -> ChunkResult:
        raise RHError("the RH 1.5D backend synthesises only; invert with --backend me or --backend sir")

    # -------------------------------------------------------------- the inputs
    def _stratifications(self, params: np.ndarray | Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray | None], int]:
        """(name -> (npix, ndepth) or None for vmic kept, npix) from the caller's parameters."""
        names = self.parameter_names
        nd = self.ndepth
        p, npix = named_params(params, names, "the RH backend", RHError)
        out: dict[str, np.ndarray | None] = {}
        for name, default in (("B", 0.0), ("inclination", 0.0), ("azimuth", 0.0), ("vlos", 0.0), ("vmic", np.nan)):
            v = p.get(name, np.array(default))
            if v.ndim == 0:
                v = np.full(npix, float(v))
            if v.shape[0] != npix:
                raise RHError(f"{name} has {v.shape[0]} pixels, expected {npix} like the other parameters")
            if v.ndim == 1:
                v = np.repeat(v[:, None], nd, axis=1)
            if v.shape != (npix, nd):
                raise RHError(f"{name} has shape {v.shape}, expected ({npix},) or ({npix}, {nd}) on the model's depths")
            out[name] = v
        vmic = out["vmic"]
        assert vmic is not None
        if np.all(np.isnan(vmic)):
            out["vmic"] = None
        else:  # NaN rows keep the model's vmic
            out["vmic"] = np.where(np.isnan(vmic), self._model_vmic()[None, :], vmic)
        return out, npix

    def _keywords(self, data: Path, atoms_dir: Path, ncol: int) -> dict[str, object]:
        active = bool(self.options.active)
        kw: dict[str, object] = {
            "ATMOS_FILE": _ATMOS, "ABUND_FILE": self._abundance_path(atoms_dir),
            "SNAPSHOT": 0, "X_START": 0, "X_END": ncol, "X_STEP": 1, "Y_START": 0, "Y_END": 1, "Y_STEP": 1,
            "15D_RERUN": False, "15D_WRITE_TAU1": False, "15D_DEPTH_ZCUT": False, "15D_DEPTH_REFINE": False,
            "15D_WRITE_POPS": False, "15D_WRITE_RRATES": False, "15D_WRITE_CRATES": False,
            "NRAYS": 5, "ATOMS_FILE": _ATOMS, "MOLECULES_FILE": _MOLECULES, "N_MAX_SCATTER": 5, "I_SUM": -1,
            # No active atom: nothing to iterate (RH counts a 0 change after >0 iterations as a crash).
            "N_MAX_ITER": self.options.n_max_iter if active else 0, "ITER_LIMIT": self.options.iter_limit,
            "NG_DELAY": 10, "NG_ORDER": 2, "NG_PERIOD": 3, "S_INTERPOLATION": "LINEAR", "PRD_N_MAX_ITER": 0,
            "J_FILE": "output/J.dat", "STARTING_J": "NEW_J", "BACKGROUND_FILE": "scratch/background",
            "KURUCZ_DATA": _KURUCZ if self.options.lines else "none", "KURUCZ_PF_DATA": str(atoms_dir / "pf_Kurucz.input"),
            "BARKLEM_DATA_DIR": str(atoms_dir), "SOLVE_NE": "NONE", "HYDROGEN_LTE": True, "VMICRO_CHAR": 2.5,
            "VACUUM_TO_AIR": False, "WAVETABLE": _WAVETABLE, "STOKES_INPUT": "from_atmosphere_file",
            "STOKES_MODE": "FULL_STOKES", "MAGNETO_OPTICAL": True, "B_STRENGTH_CHAR": 0.1,
            "PRINT_CPU": False, "N_THREADS": 1,
        }
        kw.update(dict(self.options.keywords or {}))
        return kw

    def _abundance_path(self, atoms_dir: Path) -> str:
        p = Path(self.options.abundances) if self.options.abundances else atoms_dir / "abundance.input"
        if not p.is_file():
            raise RHError(f"[backend.rh] abundances: {p} does not exist; give an RH abundance file")
        return str(p.resolve())

    def _file(self, folder: Path, name: str, kind: str) -> str:
        p = Path(name)
        cand = p if p.is_absolute() else folder / name
        if kind == "molecule" and not cand.is_file():
            cand = folder / f"{name}.molecule"
        if not cand.is_file():
            raise RHError(f"[backend.rh] {kind} {name!r}: {cand} does not exist; give a file name in {folder} or a path")
        return str(cand.resolve())

    def _write_static(self, folder: ScratchFolder, wavelength: np.ndarray, data: Path, atoms_dir: Path) -> np.ndarray:
        """Write every input but the atmosphere and keyword.input; return the vacuum grid [nm] (continuum first)."""
        if self.options.lines or not self.options.active:  # NLTE atoms alone need no line list
            lines = self._lines()
            folder.write(_LINES, io.format_kurucz([io.kurucz_line(ln) for ln in lines]))
            folder.write(_KURUCZ, f"{_LINES}\n")
        vac = io.air_to_vacuum(np.concatenate([[wavelength.min() - CONTINUUM_OFFSET], wavelength]) / 10.0)
        io.write_wavetable(folder.path / _WAVETABLE, np.unique(vac))
        atoms = [
            io.AtomEntry(self._file(atoms_dir, a, "atom"), a in self.options.active,
                         "ZERO_RADIATION" if a in self.options.active else "LTE_POPULATIONS",
                         f"pops.{Path(a).stem}.out")
            for a in self.options.atoms
        ]
        folder.write(_ATOMS, io.format_atoms(atoms))
        mol_dir = _data_dir(data, "Molecules")
        folder.write(_MOLECULES, io.format_molecules([self._file(mol_dir, m, "molecule") for m in self.options.molecules]))
        folder.write(_RAY, io.format_ray(self.options.mu))
        return vac

    # ------------------------------------------------------------- synthesis
    def synthesize_chunk(self, params: np.ndarray | Mapping[str, np.ndarray], wavelength: np.ndarray) -> ChunkResult:
        """Synthesise the pixels of ``params`` in one RH run; a failed column is a failed pixel.

        Returns
        -------
        ChunkResult
            ``synthetic`` (npix, 4, nw) in continuum units (NaN where failed),
            ``status`` 0 ok, 2 failed (RH did not converge, gave up on the
            column, or the run failed: the reason is in ``errors``), 3 a pixel
            with NaN or inf parameters (not run); ``n_iter`` RH's NLTE
            iterations (0 without active atoms); ``params`` the parameters given as constants (NaN for
            stratifications).
        """
        wavelength = np.asarray(wavelength, dtype=float)
        strat, npix = self._stratifications(params)
        names = self.parameter_names
        nw = wavelength.size
        status = np.full(npix, STATUS_OK, dtype=np.uint8)
        errors: dict[int, str] = {}
        synthetic = np.full((npix, 4, nw), np.nan, dtype=np.float32)
        n_iter = np.zeros(npix, dtype=np.int32)
        given = np.full((npix, len(names)), np.nan)
        for j, n in enumerate(names):
            v = strat.get(n)
            if v is not None and np.all(v == v[:, :1]):
                given[:, j] = v[:, 0]
        good = np.ones(npix, dtype=bool)
        for n, v in strat.items():
            if v is not None:
                good &= np.all(np.isfinite(v), axis=1)
        for i in np.flatnonzero(~good):
            status[i], errors[int(i)] = STATUS_BAD_INPUT, "parameters hold NaN or inf (RH not run)"
        idx = np.flatnonzero(good)
        if idx.size:
            exe, data, mpiexec, atoms_dir = self._paths()
            abund = io.parse_abundances(Path(self._abundance_path(atoms_dir)).read_text())
            sub = {k: (None if v is None else v[idx]) for k, v in strat.items()}
            atmos = atmosphere_from_model(self.model, abund, **sub)  # type: ignore[arg-type]
            with ScratchFolder("stokesflow-rh-", self.options.scratch) as folder:
                vac = self._write_static(folder, wavelength, data, atoms_dir)
                argv = rh_command(mpiexec, exe, self.options.ranks)
                results = self._run_columns(folder, argv, atmos, list(range(idx.size)), data, atoms_dir)
                for k, res in results.items():
                    i = int(idx[k])
                    if isinstance(res, str):
                        status[i], errors[i] = STATUS_FAILED, res
                        continue
                    prof, it = res
                    n_iter[i] = it
                    wl_out, st = prof
                    cont = np.interp(vac[0], wl_out, st[0])
                    synthetic[i] = np.array([np.interp(vac[1:], wl_out, s) for s in st]) / cont
        return ChunkResult(
            names=names, params=given, sigma=np.full_like(given, np.nan), chi2=np.full(npix, np.nan),
            n_iter=n_iter, status=status, synthetic=synthetic, errors=errors,
        )

    def _run_columns(self, folder: ScratchFolder, argv: list[str], atmos: io.Atmosphere, cols: list[int],
                     data: Path, atoms_dir: Path) -> dict[int, Any]:
        """Run RH on atmosphere columns ``cols``: per column, ((wavelength [nm], stokes (4, nwave)), iterations) or a reason."""
        sel = io.Atmosphere(**{n: (None if getattr(atmos, n) is None else np.asarray(getattr(atmos, n))[cols])
                               for n in io.Atmosphere.COLUMNS + io.Atmosphere.FIELD}, description=atmos.description)
        io.write_atmosphere(folder.path / _ATMOS, sel)
        folder.write(_KEYWORDS, io.format_keywords(self._keywords(data, atoms_dir, len(cols))))
        timeout = run_timeout(self.options.timeout, len(cols), self.options.ranks)
        outcome = run_rh(folder.path, argv, timeout=timeout)
        if not outcome.ok:
            if len(cols) > 1 and self.options.isolate_failures:
                out: dict[int, Any] = {}
                for c in cols:
                    out.update(self._run_columns(folder, argv, atmos, [c], data, atoms_dir))
                return out
            reason = f"RH run of {len(cols)} column(s) failed: {outcome.reason}" + self._kept(folder, "run")
            return {c: reason for c in cols}
        try:
            res = io.read_output(folder.path)
        except RHError as exc:
            reason = f"RH run ended but its output is unreadable: {exc}" + self._kept(folder, "output")
            return {c: reason for c in cols}
        failed = column_failures(res, len(cols))
        kept = self._kept(folder, "column") if failed else ""
        where = {int(x): i for i, x in enumerate(res.xnum)}
        out = {}
        for k, c in enumerate(cols):
            if k in failed:
                out[c] = failed[k] + kept
            else:
                i = where[k]
                iters = int(max(res.iterations[i, 0], 0)) if self.options.active else 0  # LTE: nothing iterated
                out[c] = ((res.wavelength, res.stokes[i, 0]), iters)
        return out

    def _kept(self, folder: ScratchFolder, label: str) -> str:
        return kept_folder_note(folder, label, self.options.keep_failed, self)

    def synthesize(self, params: np.ndarray | Mapping[str, np.ndarray], wavelength: np.ndarray) -> np.ndarray:
        """Stokes profiles (npix, 4, nw) in units of the continuum; raises if any pixel failed.

        Parameters
        ----------
        params : (npix, 5) array in :attr:`parameter_names` order, or a mapping
            name -> (npix,) or (npix, ndepth) values.
        wavelength : ndarray (nw,)
            Air wavelengths [A].

        Raises
        ------
        RHError
            A pixel failed (RH did not converge, crashed, timed out) or had
            NaN parameters: the message lists the pixels and the reasons.
            :meth:`synthesize_chunk` flags such pixels instead.
        """
        return profiles_or_raise(self.synthesize_chunk(params, wavelength), "RH", RHError)
