"""The DeSIRe backend: SIR's inversions with RH's NLTE populations for chromospheric lines.

DeSIRe (Ruiz Cobo et al. 2022, A&A 660, A37; github.com/BasilioRuiz/DeSIRe) is
not bundled: the executable (``desire/bin/desire``) comes from the option
``executable`` or the environment variable ``STOKESFLOW_DESIRE``, and RH's data
(model atoms and molecules, Kurucz partition functions, Barklem tables) from
the option ``data_dir`` or, by default, the ``var`` folder beside the
executable's ``bin`` (``desire/var``).

Everything SIR and DeSIRe share (the ``.per``/``.mod``/``.err`` formats, grid,
abundances, strategies, guess model, initial guesses, units, sign conventions
and the depth-stratified result layout) comes from the SIR backend; what
differs is the control file (passed as the command-line argument, 45 lines),
RH's inputs (``keyword.input``, ``atoms.input``, ``molecules.input``), the
coordinates file, the NLTE flags of the line list and the outputs' names
(``desire.chi``, ``desire.log``). A line listed in ``data/nlte.toml`` (Ca II
8498, 8542, 8662) is treated in NLTE with its RH model atom ACTIVE; the
others (Fe I 6301/6302, ...) in LTE, where DeSIRe runs its SIR engine alone.
DeSIRe 5.06 works in the line-of-sight frame only (mu = 1). Without the option
``model``, an inversion with NLTE lines starts from the built-in FAL-C (up to
log tau -7.5), one with LTE lines only from the HSRA, as SIR.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from stokesflow.backends.base import ConfigError, one_pixel_trial
from stokesflow.backends.desire import io
from stokesflow.backends.sir import io as sir_io
from stokesflow.backends.sir.atomic import ClassicalLine, get_classical_lines, load_abundances
from stokesflow.backends.sir.backend import SIRBackend, SIROptions
from stokesflow.backends.desire.errors import DesireError
from stokesflow.backends.sir.errors import SIRError
from stokesflow.backends.sir.runner import ScratchFolder, resolve_executable, run_code

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["ENV_VAR", "NLTE_TOP_LOG_TAU", "DesireOptions", "DesireBackend", "nlte_table", "ATOMS", "MOLECULES"]

ENV_VAR = "STOKESFLOW_DESIRE"

_CONTROL = "desire.dtrol"
_CHI = "desire.chi"
_LOG = "desire.log"
_OBSERVED = "observed.per"
_GUESS = "guess.mod"
_GRID = "grid.grid"
_LINES = "LINES"
_ABUND = "ABUNDANCES"
_COORD = "pos.coor"
_KEYWORDS = "keyword.input"
_ATOMS = "atoms.input"
_MOLECULES = "molecules.input"

#: RH's background atoms as DeSIRe's run/example/input/atoms.input lists them (file in
#: var/Atoms, initial solution); the atom of a line treated in NLTE replaces its element's
#: row and is made ACTIVE.
ATOMS: tuple[tuple[str, str], ...] = (
    ("H_6.atom", "ZERO_RADIATION"),
    ("C.atom", "LTE_POPULATIONS"),
    ("CaII_CRDbark.atom", "ZERO_RADIATION"),
    ("Fe.atom", "LTE_POPULATIONS"),
    ("He.atom", "LTE_POPULATIONS"),
    ("KI_fine.atom", "ZERO_RADIATION"),
    ("Mg.atom", "ZERO_RADIATION"),
    ("N.atom", "LTE_POPULATIONS"),
    ("NaI_fine.atom", "ZERO_RADIATION"),
    ("O.atom", "ZERO_RADIATION"),
    ("S.atom", "LTE_POPULATIONS"),
    ("Si.atom", "LTE_POPULATIONS"),
)
#: RH's molecules as DeSIRe's run/example/input/molecules.input lists them (H2 first).
MOLECULES: tuple[str, ...] = ("H2", "C2", "CH", "CN", "CO", "H2+", "H2O", "N2", "NH", "NO", "O2", "OH")

#: RH's keywords of DeSIRe's run/example/keyword.input (the file names and data folders are added per run).
_RH_KEYWORDS = {
    "N_MAX_ITER": "200",
    "ITER_LIMIT": "1.0E-4",
    "STOKES_MODE": "FIELD_FREE",
    "S_INTERPOLATION_STOKES": "DELO_BEZIER3",
    "NG_DELAY": "10",
    "NG_ORDER": "2",
    "NG_PERIOD": "6",
    "HYDROGEN_LTE": "FALSE",
}

_NLTE_TABLE = "data/nlte.toml"

#: Highest layer [log tau_500] a guess model must reach for NLTE lines: the Ca II infrared
#: triplet cores form near log tau -5 to -6 in quiet-Sun models (DeSIRe's example model
#: reaches -9.3, the built-in FAL-C -7.5, the built-in HSRA only -4).
NLTE_TOP_LOG_TAU = -6.0


@functools.lru_cache(maxsize=1)
def nlte_table() -> dict[str, dict]:
    """The packaged NLTE line table (``data/nlte.toml``) by line name: RH atom and levels among the keys."""
    data = tomllib.loads(resources.files("stokesflow.backends.desire").joinpath(_NLTE_TABLE).read_text())
    data.pop("elements", None)
    return data


def _packaged_table() -> str:
    return str(resources.files("stokesflow.backends.desire").joinpath(_NLTE_TABLE))


@dataclass(frozen=True)
class DesireOptions(SIROptions):
    """Options of the DeSIRe backend (TOML table ``[backend.desire]``, or ``-B key=value``).

    Every option of the SIR backend (:class:`~stokesflow.backends.sir.backend.SIROptions`:
    strategy, cycles, nodes, lines, model, weights, noise, timeout,
    keep_failed, scratch, reference_log_tau, line_table, atomic_table,
    abundances), with these differences:

    Attributes
    ----------
    executable : str, optional
        Path of DeSIRe's ``desire``; the environment variable ``STOKESFLOW_DESIRE`` if unset.
    data_dir : str, optional
        DeSIRe's ``var`` folder (``Atoms``, ``Molecules``, ``Kurucz``,
        ``Barklem``); default: ``../var`` from the executable's folder.
    nlte : list of str, optional
        Lines treated in NLTE (each must be in ``data/nlte.toml``); default:
        every requested line that table lists; ``[]`` for pure LTE.
    line_table, atomic_table : str, optional
        Default: the packaged ``data/nlte.toml`` (the project's tables plus
        Ca II 8498/8542/8662); a user's table replaces it.
    model : str, optional
        Guess model: a SIR ``.mod`` file, ``"hsra"`` or ``"falc"``; default
        ``"falc"`` (FAL-C, up to log tau -7.5) when a line is treated in
        NLTE, ``"hsra"`` otherwise. NLTE lines need a model reaching log tau
        :data:`NLTE_TOP_LOG_TAU` or higher.
    rays : int
        Rays of RH's angle quadrature (DeSIRe's default 3).
    integration : int
        Formal solver: 0 Hermite (integral), 1 Hermite, 2 cubic Bezier (default, as DeSIRe's examples).
    mu : float
        Must be 1: DeSIRe 5.06 works in the line-of-sight frame only.
    """

    data_dir: str | None = None
    nlte: tuple[str, ...] | None = None
    rays: int = 3
    integration: int = 2

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("[backend.sir]", "[backend.desire]")) from None
        if self.mu != 1.0:
            raise ConfigError(
                "[backend.desire] mu: DeSIRe 5.06 inverts in the line-of-sight frame only (mu = 1), "
                f"got mu={self.mu!r}; "
                "leave mu at 1 or use the sir backend for off-centre data"
            )
        if self.integration not in (0, 1, 2, 3):
            raise ConfigError(f"[backend.desire] integration: expected 0, 1, 2 or 3, got {self.integration!r}")
        if not int(self.rays) >= 1:
            raise ConfigError(f"[backend.desire] rays: expected an integer >= 1, got {self.rays!r}")

    def resolved_strategy(self) -> sir_io.Strategy:
        """The strategy with ``cycles`` and ``nodes`` overrides applied (as for SIR)."""
        try:
            return super().resolved_strategy()
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("[backend.sir]", "[backend.desire]")) from None


@functools.lru_cache(maxsize=8)
def _trial(path: str, mtime_ns: int, data_dir: str | None) -> tuple[bool, str]:
    """Whether the DeSIRe at ``path`` synthesises one LTE pixel (cached per file version)."""
    try:
        b = DesireBackend({"executable": path, "lines": ["FeI_6302"], "timeout": 60.0, "data_dir": data_dir})
    except SIRError as exc:
        return False, f"{path} fails a one-pixel trial: {exc}"
    return one_pixel_trial(b, path, (SIRError,))


class DesireBackend(SIRBackend):
    """Inversions with DeSIRe, one process per pixel in a private folder.

    Results as for :class:`~stokesflow.backends.sir.backend.SIRBackend`
    (``stratified`` on the guess model's log tau grid, ``params`` at
    ``reference_log_tau``, uncertainties from DeSIRe's ``.err``); chi2 is the
    last cycle's chi2 of DeSIRe's log. A pixel whose run fails (time-out,
    crash, ``TERMINATING ERROR`` or ``STOP``, missing output, no accepted
    iteration) gets status 2 and its reason; one with NaN or inf gets status 3
    without running DeSIRe.
    """

    name: ClassVar[str] = "desire"
    options_class: ClassVar[type] = DesireOptions

    @classmethod
    def is_available(cls, options: Any = None) -> tuple[bool, str]:
        """Found, executable and passing a one-pixel synthesis (from the option or ``STOKESFLOW_DESIRE``)."""
        path, data_dir = None, None
        if isinstance(options, DesireOptions):
            path, data_dir = options.executable, options.data_dir
        elif isinstance(options, Mapping):
            path, data_dir = options.get("executable"), options.get("data_dir")
        try:
            exe = resolve_executable(path, ENV_VAR, "DeSIRe")
        except SIRError as exc:
            return False, str(exc)
        return _trial(str(exe), exe.stat().st_mtime_ns, data_dir)

    def _executable(self) -> Path:
        return resolve_executable(self.options.executable, ENV_VAR, "DeSIRe")

    def data_dir(self) -> Path:
        """DeSIRe's ``var`` folder, checked to hold what RH reads.

        Raises
        ------
        DesireError
            The folder or one of its data files is missing.
        """
        given = self.options.data_dir
        d = Path(given) if given else self._executable().parent.parent / "var"
        where = "the option data_dir" if given else f"the default beside the executable ({self._executable()})"
        needed = ["Atoms/H_6.atom", "Molecules/H2.molecule", "Kurucz/pf_Kurucz.input", "Barklem"]
        missing = [n for n in needed if not (d / n).exists()]
        if missing:
            raise DesireError(
                f"DeSIRe data folder {d} (from {where}) lacks {', '.join(missing)}; give DeSIRe's var folder "
                "with -B data_dir=/path/to/desire/var"
            )
        return d.resolve()

    def _lines(self) -> tuple[ClassicalLine, ...]:
        if not self.options.lines:
            raise DesireError(
                "[backend.desire] lines: no spectral lines; the observation names none, "
                "give -B lines=[FeI_6301,FeI_6302] or lines=[CaII_8542]"
            )
        table = _packaged_table()
        return get_classical_lines(self.options.lines, self.options.line_table or table,
                                   self.options.atomic_table or table)

    def default_model(self) -> str:
        """The built-in model when the option ``model`` is not given: FAL-C (up to log tau -7.5)
        when a line is treated in NLTE, the HSRA (SIR's) otherwise."""
        return "falc" if self.nlte_lines() else "hsra"

    def nlte_lines(self) -> tuple[str, ...]:
        """Names of the requested lines treated in NLTE.

        Raises
        ------
        DesireError
            The option ``nlte`` names a line that is not requested or that
            ``data/nlte.toml`` does not list.
        """
        known = nlte_table()
        if self.options.nlte is None:
            return tuple(n for n in self.options.lines if n in known)
        bad = [n for n in self.options.nlte if n not in known or n not in self.options.lines]
        if bad:
            raise DesireError(
                f"[backend.desire] nlte: {bad} cannot be treated in NLTE; the lines must be among the requested "
                f"lines {list(self.options.lines)} and in DeSIRe's NLTE table ({sorted(known)})"
            )
        return tuple(self.options.nlte)

    # -------------------------------------------------------------- inputs
    def _write_static(self, folder: ScratchFolder, wavelength: np.ndarray, cycles_strategy: sir_io.Strategy,
                      observed: str) -> tuple[np.ndarray, np.ndarray]:
        lines = self._lines()
        nlte = self.nlte_lines()
        table = nlte_table()
        var = self.data_dir()
        top = float(np.min(self.guess_model.log_tau))
        if nlte and top > NLTE_TOP_LOG_TAU:
            raise DesireError(
                f"[backend.desire] model: the guess model reaches log tau {top:g}, too low in the atmosphere for "
                f"the NLTE line(s) {list(nlte)} (their cores form above log tau {NLTE_TOP_LOG_TAU:g}); give "
                "-B model=falc (the built-in FAL-C, the default for NLTE lines, up to log tau -7.5), "
                "-B model=/path/to/a/model.mod reaching log tau -7 or higher, or -B nlte=[] for LTE"
            )
        blocks, index, offsets = sir_io.grid_for_observation(wavelength, lines)
        folder.write(_GRID, sir_io.format_grid(blocks))
        levels = {i: tuple(table[ln.name]["levels"]) for i, ln in enumerate(lines, start=1) if ln.name in nlte}
        folder.write(_LINES, sir_io.format_lines(lines, levels=levels))
        folder.write(_ABUND, sir_io.format_abundances(load_abundances(self.options.abundances)))
        folder.write(_COORD, io.format_coordinates())
        active = {table[n]["atom"] for n in nlte}
        atoms = []
        for fname, initial in ATOMS:
            element = fname.split("_")[0].split(".")[0].rstrip("I")
            use = next((a for a in active if a.split("_")[0].split(".")[0].rstrip("I") == element), fname)
            atoms.append(io.RHEntry(str(var / "Atoms" / use), use in active, initial,
                                    f"pops.{element.upper()}.out"))
        folder.write(_ATOMS, io.format_atoms(atoms))
        folder.write(_MOLECULES, io.format_molecules(
            [io.RHEntry(str(var / "Molecules" / f"{m}.molecule"), False, "LTE_POPULATIONS") for m in MOLECULES]))
        keywords = dict(_RH_KEYWORDS, ATOMS_FILE=_ATOMS, MOLECULES_FILE=_MOLECULES,
                        KURUCZ_PF_DATA=str(var / "Kurucz" / "pf_Kurucz.input"), BARKLEM_DIR=str(var / "Barklem"))
        folder.write(_KEYWORDS, io.format_keywords(keywords))
        sn = self._signal_to_noise()
        values = io.control_values(
            cycles_strategy, observed=observed, model=_GUESS, grid=_GRID, lines=_LINES, abundances=_ABUND,
            coordinates=_COORD, nlte=bool(nlte), weights=self.options.weights, sn=sn, rays=self.options.rays,
            integration=self.options.integration,
        )
        folder.write(_CONTROL, io.format_control(values))
        return index, offsets

    def _clear(self, folder: ScratchFolder, cycles: int) -> None:
        """Remove what a previous pixel left (models, profiles, H populations, RH's pops files, chi, log)."""
        stem = _GUESS[:-4]
        names = [_CHI, _LOG] + [p.name for p in folder.path.glob(f"{stem}_*")] + [
            p.name for p in folder.path.glob("pops.*")] + [f"{stem}.hyd"]
        if cycles == 0:
            names.append(_OBSERVED)
        folder.remove(names)

    code_name: ClassVar[str] = "DeSIRe"
    error_class: ClassVar[type[SIRError]] = DesireError

    def _run(self, exe: Path, folder: ScratchFolder, expected: list[str]) -> Any:
        """Run DeSIRe once in ``folder``: it takes the control file as its argument (SIR reads it from stdin)."""
        return run_code([str(exe), _CONTROL], folder.path, stdin=None, timeout=self.options.timeout,
                        expected=expected)

    def _judged_outputs(self) -> list[str]:
        return [_CHI, _LOG]

    def _judge(self, folder: ScratchFolder, cycles: int) -> tuple[str, float, str]:
        """From DeSIRe's log (chi2 per cycle) and its ``.chi`` (the best iteration): see :func:`_chi2_failure`."""
        log = folder.read(_LOG)
        chi = io.log_chi2(log)
        reason = _chi2_failure(chi, io.parse_desire_chi(folder.read(_CHI)), cycles)
        return reason, (float(chi[-1]) if not reason else float("nan")), log


def _chi2_failure(chi: np.ndarray, best: np.ndarray, cycles: int) -> str:
    """Why DeSIRe's chi2 means failure ("" when it does not).

    Parameters
    ----------
    chi : ndarray
        chi2 per cycle from its log (:func:`~stokesflow.backends.desire.io.log_chi2`).
    best : ndarray (3,)
        Its ``.chi`` row (s/n, scale/chi2, chi2 of the best iteration).
    cycles : int

    A missing cycle, a non-finite or zero chi2, or the ``.chi`` start value
    1e8 (no iteration accepted: DeSIRe's answer to a profile with NaN, which
    it otherwise ends with exit code 0 and every output written) is a failure.
    """
    if best[2] >= 1e8 or best[0] >= 1e8:
        return (f"accepted no iteration: {_CHI} holds its start value 1e8 "
                "(DeSIRe's sign of a profile it cannot fit, e.g. one with NaN)")
    if chi.shape[0] < cycles:
        return f"{_LOG} has chi2 for {chi.shape[0]} of {cycles} cycles"
    last = chi[-1]
    if not np.isfinite(last) or last <= 0.0:
        return f"chi2 {last} in the last cycle (non-finite or zero)"
    return ""
