"""Atomic data for the classical codes, built from the project's own tables.

The project's line table (``stokesflow/backends/me/data/lines.toml``: wavelength,
log gf, LS terms) is completed by ``data/atomic.toml`` (element, ionisation stage,
excitation potential, ABO collisional broadening) so that SIR's line list and
Lightweaver's model atoms are written from the same numbers. The solar
abundances are Asplund et al. (2009), shipped as ``data/asplund2009.abu`` (SIR's
format). A user's TOML tables of the same forms extend or replace entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Iterable

from stokesflow.backends.me.lines import L_LETTERS, Term, parse_term
from stokesflow.backends.sir.errors import SIRError

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "A0_SQUARED_CM2",
    "Element",
    "ClassicalLine",
    "get_classical_lines",
    "load_abundances",
    "term_fields",
]

#: Bohr radius squared [cm^2] (ABO cross-sections are tabulated in a0^2, SIR reads cm^2).
A0_SQUARED_CM2 = 2.80028520e-17


@dataclass(frozen=True)
class Element:
    """Per-element data.

    Attributes
    ----------
    symbol : str
        Chemical symbol (``"Fe"``).
    Z : int
        Atomic number.
    ionisation : float
        First ionisation energy [eV].
    mass : float
        Atomic mass [u].
    log_u1, log_u2 : float
        log10 partition functions of the neutral and singly ionised stage at 5040 K.
    """

    symbol: str
    Z: int
    ionisation: float
    mass: float
    log_u1: float
    log_u2: float


@dataclass(frozen=True)
class ClassicalLine:
    """One spectral line with everything an LTE/NLTE code needs.

    Attributes
    ----------
    name : str
        Table name (``"FeI_6302"``).
    wavelength : float
        Line centre [A, air].
    loggf : float
        log10(g f).
    lower, upper : Term
        LS terms of the lower and upper level.
    element : Element
    stage : int
        Ionisation stage, 1 = neutral.
    excitation : float
        Lower-level excitation potential [eV].
    sigma : float
        ABO cross-section [a0^2]; 0 with ``alpha`` 0 means Unsoeld broadening.
    alpha : float
        ABO velocity exponent.
    """

    name: str
    wavelength: float
    loggf: float
    lower: Term
    upper: Term
    element: Element
    stage: int
    excitation: float
    sigma: float
    alpha: float

    @property
    def sigma_cm2(self) -> float:
        """ABO cross-section [cm^2] (SIR's unit)."""
        return self.sigma * A0_SQUARED_CM2


def _toml(path: str | None, packaged: tuple[str, str]) -> tuple[str, dict]:
    if path is None:
        pkg, rel = packaged
        return f"the packaged {rel}", tomllib.loads(resources.files(pkg).joinpath(rel).read_text())
    p = Path(path)
    if not p.is_file():
        raise SIRError(f"atomic table {path} does not exist; give an existing TOML file or leave the option unset")
    try:
        return str(p), tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SIRError(f"atomic table {path} is not valid TOML: {exc}") from exc


def get_classical_lines(
    names: Iterable[str] | str,
    line_table: str | None = None,
    atomic_table: str | None = None,
) -> tuple[ClassicalLine, ...]:
    """The lines named, with terms from the line table and the rest from the atomic table.

    Parameters
    ----------
    names : sequence of str or comma-separated str
        Line names, as observation files give them.
    line_table : str, optional
        A user's line table (ME format: wavelength, loggf, lower, upper) whose
        entries extend or replace the packaged ones.
    atomic_table : str, optional
        A user's atomic table (``data/atomic.toml`` format).

    Raises
    ------
    SIRError
        Unknown line, missing key, or a line given without LS terms.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    if not names:
        raise SIRError("no spectral line given; the observation's 'lines' attribute or the option lines=[...] names them")
    where_l, lines = _toml(None, ("stokesflow.backends.me", "data/lines.toml"))
    srcs = {n: where_l for n in lines}
    if line_table:
        w, user = _toml(line_table, ("", ""))
        lines.update(user)
        srcs.update({n: w for n in user})
    where_a, atomic = _toml(None, ("stokesflow.backends.sir", "data/atomic.toml"))
    elements = dict(atomic.pop("elements", {}))
    asrcs = {n: where_a for n in atomic}
    if atomic_table:
        w, user = _toml(atomic_table, ("", ""))
        elements.update(user.pop("elements", {}))
        atomic.update(user)
        asrcs.update({n: w for n in user})
    out = []
    for name in names:
        if name not in lines or name not in atomic:
            known = sorted(set(lines) & set(atomic))
            raise SIRError(
                f"line {name!r} is not in both the line table and the atomic table; lines known to the "
                f"classical backends: {known}; add it with the options line_table=... and atomic_table=..."
            )
        e, a = lines[name], atomic[name]
        try:
            lo, up = parse_term(str(e["lower"])), parse_term(str(e["upper"]))
            sym = str(a["element"])
            el = elements[sym]
            element = Element(sym, int(el["Z"]), float(el["ionisation"]), float(el["mass"]),
                              float(el["log_u1"]), float(el["log_u2"]))
            out.append(
                ClassicalLine(
                    name, float(e["wavelength"]), float(e["loggf"]), lo, up, element,
                    int(a["stage"]), float(a["excitation"]), float(a.get("sigma", 0.0)), float(a.get("alpha", 0.0)),
                )
            )
        except KeyError as exc:
            raise SIRError(
                f"line {name!r}: key {exc.args[0]!r} missing (line data from {srcs[name]}, atomic data from "
                f"{asrcs[name]}); every classical line needs lower/upper terms, element, stage and excitation, "
                "and its element an [elements.<symbol>] table"
            ) from None
    return tuple(out)


def load_abundances(path: str | None = None) -> dict[int, float]:
    """Solar abundances log10(N/N_H) + 12 by atomic number, from a SIR-format file.

    Parameters
    ----------
    path : str, optional
        A user's abundance file (SIR format: header ending in a ``____`` line,
        then ``Z abundance`` rows); the packaged Asplund et al. (2009) table if None.
    """
    if path is None:
        text = resources.files("stokesflow.backends.sir").joinpath("data/asplund2009.abu").read_text()
        where = "the packaged Asplund et al. (2009) table"
    else:
        p = Path(path)
        if not p.is_file():
            raise SIRError(f"abundance file {path} does not exist")
        text, where = p.read_text(), str(p)
    rows = text.splitlines()
    start = next((i + 1 for i, r in enumerate(rows[:20]) if r[2:6] in ("____", "----")), 0)
    out: dict[int, float] = {}
    for r in rows[start:]:
        parts = r.split()
        if len(parts) < 2:
            continue
        try:
            out[int(parts[0])] = float(parts[1])
        except ValueError:
            raise SIRError(f"abundance file {where}: cannot read row {r!r}; expected 'Z abundance'") from None
    if 26 not in out or 1 not in out:
        raise SIRError(f"abundance file {where} has no row for H (1) or Fe (26)")
    return out


def term_fields(term: Term) -> tuple[int, str, float]:
    """(multiplicity 2S+1, L letter, J) of an LS term."""
    return int(2 * term.S + 1), L_LETTERS[term.L], float(Fraction(term.J))
