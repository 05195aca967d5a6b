"""Spectral-line data and Zeeman patterns for the Milne-Eddington backend.

A line is known by its name (``FeI_6173``), as observation files name their
lines. The shipped table ``data/lines.toml`` can be extended or overridden by a
user table of the same form. The Zeeman pattern is computed from the levels'
LS terms (Lande factors in LS coupling, every pi and sigma component with its
relative strength; measured Lande factors ``g_lower``/``g_upper`` replace the
LS ones when an entry gives them) or, when only an effective Lande factor is
known, as a normal triplet.

Conventions (shared with other ME codes, see DESIGN.md; LL04 = Landi
Degl'Innocenti & Landolfi 2004):

- the Zeeman splitting unit is ``ZEEMAN_CONSTANT * lambda0**2 * B`` [A, with
  lambda0 in A and B in G];
- a component (M_u -> M_l) is shifted by ``-(g_u M_u - g_l M_l)`` of that unit,
  so that for B > 0 the sigma component with ``M_u - M_l = +1`` (``SIGMA_BLUE``)
  lies on the blue side of a normal triplet;
- relative strengths are squared 3j symbols (LL04 Table 3.1), normalised so
  that each group (sigma_b, pi, sigma_r) sums to one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from stokesflow.backends.base import ConfigError

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "ZEEMAN_CONSTANT",
    "L_LETTERS",
    "SIGMA_BLUE",
    "PI",
    "SIGMA_RED",
    "Term",
    "Line",
    "parse_term",
    "lande_ls",
    "effective_lande",
    "zeeman_pattern",
    "load_line_table",
    "get_lines",
    "LineError",
]

#: e / (4 pi m_e c^2) in A^-1 G^-1 (cgs with lambda in A): Delta lambda_B = ZEEMAN_CONSTANT lambda0^2 B.
ZEEMAN_CONSTANT = 4.6686e-13

#: Component groups, in the order used by the kernels.
SIGMA_BLUE, PI, SIGMA_RED = 0, 1, 2

#: Orbital angular momentum letters, L = 0, 1, 2, ... (spectroscopic notation).
L_LETTERS = "SPDFGHIKLMNOQRTUV"


class LineError(ConfigError):
    """Unknown line name or malformed line data."""


@dataclass(frozen=True)
class Term:
    """An LS term ``2S+1 L J``.

    Attributes
    ----------
    S, L, J : Fraction
        Spin, orbital and total angular momentum quantum numbers.
    """

    S: Fraction
    L: int
    J: Fraction

    @property
    def lande(self) -> float:
        """Lande factor in LS coupling."""
        return lande_ls(self.S, self.L, self.J)


def parse_term(text: str) -> Term:
    """Parse an LS term such as ``"5P1"``, ``"2D2.5"`` or ``"2D5/2"``.

    Parameters
    ----------
    text : str
        Multiplicity 2S+1, the L letter, then J.
    """
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z])\s*(\d+(?:\.5)?|\d+/2)\s*", text)
    if m is None:
        raise LineError(f"cannot parse LS term {text!r}; expected e.g. '5P1', '2D2.5' or '2D5/2'")
    mult, letter, jtxt = m.groups()
    letter = letter.upper()
    if letter not in L_LETTERS:
        raise LineError(f"unknown orbital letter {letter!r} in term {text!r}")
    S = Fraction(int(mult) - 1, 2)
    L = L_LETTERS.index(letter)
    J = Fraction(jtxt) if "/" in jtxt else Fraction(jtxt)
    if not (abs(L - S) <= J <= L + S) or (J - L - S).denominator != 1:
        raise LineError(f"term {text!r}: J={J} is not allowed for S={S}, L={L}")
    return Term(S, L, J)


def lande_ls(S: Fraction | float, L: int, J: Fraction | float) -> float:
    """Lande factor of a level in LS coupling (g = 0 for J = 0)."""
    S, L, J = float(S), float(L), float(J)
    if J == 0:
        return 0.0
    return 1.0 + (J * (J + 1) + S * (S + 1) - L * (L + 1)) / (2 * J * (J + 1))


def effective_lande(g_l: float, g_u: float, J_l: float, J_u: float) -> float:
    """Effective Lande factor of a transition (LL04 eq. 3.44)."""
    d = J_u * (J_u + 1) - J_l * (J_l + 1)
    return 0.5 * (g_u + g_l) + 0.25 * (g_u - g_l) * d


def _wigner3j_sq(j1: Fraction, j2: Fraction, j3: Fraction, m1: Fraction, m2: Fraction, m3: Fraction) -> float:
    """Square of the Wigner 3j symbol, by Racah's formula."""
    if m1 + m2 + m3 != 0:
        return 0.0
    if abs(m1) > j1 or abs(m2) > j2 or abs(m3) > j3:
        return 0.0
    if j3 < abs(j1 - j2) or j3 > j1 + j2:
        return 0.0
    f = math.factorial

    def i(x: Fraction) -> int:
        assert x.denominator == 1
        return int(x)

    tri = Fraction(f(i(j1 + j2 - j3)) * f(i(j1 - j2 + j3)) * f(i(-j1 + j2 + j3)), f(i(j1 + j2 + j3 + 1)))
    pre = tri * f(i(j1 + m1)) * f(i(j1 - m1)) * f(i(j2 + m2)) * f(i(j2 - m2)) * f(i(j3 + m3)) * f(i(j3 - m3))
    total = Fraction(0)
    kmin = max(0, i(j2 - j3 - m1), i(j1 - j3 + m2))
    kmax = min(i(j1 + j2 - j3), i(j1 - m1), i(j2 + m2))
    for k in range(kmin, kmax + 1):
        den = (
            f(k)
            * f(i(j3 - j2 + k + m1))
            * f(i(j3 - j1 + k - m2))
            * f(i(j1 + j2 - j3 - k))
            * f(i(j1 - k - m1))
            * f(i(j2 - k + m2))
        )
        total += Fraction((-1) ** k, den)
    return float(pre * total * total)


def zeeman_pattern(
    J_l: Fraction | float, J_u: Fraction | float, g_l: float, g_u: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All Zeeman components of a transition.

    Parameters
    ----------
    J_l, J_u : Fraction or float
        Total angular momentum of the lower and upper level.
    g_l, g_u : float
        Lande factors of the lower and upper level.

    Returns
    -------
    group : ndarray of int64
        ``SIGMA_BLUE`` (M_u - M_l = +1), ``PI`` or ``SIGMA_RED`` per component.
    shift : ndarray of float64
        Wavelength shift in units of ``ZEEMAN_CONSTANT lambda0^2 B``:
        ``-(g_u M_u - g_l M_l)``.
    strength : ndarray of float64
        Relative strength, each group summing to one.
    """
    J_l, J_u = Fraction(J_l).limit_denominator(2), Fraction(J_u).limit_denominator(2)
    if abs(J_u - J_l) > 1 or (J_u == 0 and J_l == 0):
        raise LineError(f"J_l={J_l} -> J_u={J_u} is not an electric-dipole transition")
    groups, shifts, strengths = [], [], []
    Mu = -J_u
    while Mu <= J_u:
        for dM, grp in ((1, SIGMA_BLUE), (0, PI), (-1, SIGMA_RED)):
            Ml = Mu - dM
            if abs(Ml) > J_l:
                continue
            s = _wigner3j_sq(J_u, J_l, Fraction(1), -Mu, Ml, Fraction(dM))
            if s < 1e-12:
                continue
            groups.append(grp)
            shifts.append(-(g_u * float(Mu) - g_l * float(Ml)))
            strengths.append(s)
        Mu += 1
    group = np.array(groups, dtype=np.int64)
    strength = np.array(strengths, dtype=np.float64)
    for g in (SIGMA_BLUE, PI, SIGMA_RED):
        sel = group == g
        strength[sel] /= strength[sel].sum()
    return group, np.array(shifts, dtype=np.float64), strength


@dataclass(frozen=True)
class Line:
    """One spectral line with its Zeeman pattern.

    Attributes
    ----------
    name : str
        Table name, e.g. ``"FeI_6302"``.
    wavelength : float
        Line centre [A].
    loggf : float
        log10(g f).
    g_eff : float
        Effective Lande factor.
    group, shift, strength : ndarray
        Zeeman components (see :func:`zeeman_pattern`).
    source : str
        Provenance of the data.
    """

    name: str
    wavelength: float
    loggf: float
    g_eff: float
    group: np.ndarray = field(repr=False)
    shift: np.ndarray = field(repr=False)
    strength: np.ndarray = field(repr=False)
    source: str = ""

    @property
    def n_components(self) -> int:
        """Number of Zeeman components."""
        return int(self.group.size)

    @classmethod
    def from_entry(cls, name: str, entry: Mapping[str, object], where: str) -> "Line":
        """Build a line from one table entry (see ``data/lines.toml``)."""
        valid = {"wavelength", "loggf", "lower", "upper", "g_lower", "g_upper", "g_eff", "source"}
        unknown = sorted(set(entry) - valid)
        if unknown:
            raise LineError(f"line {name!r} in {where}: unknown key(s) {unknown}; valid keys are {sorted(valid)}")
        for key in ("wavelength", "loggf"):
            if key not in entry:
                raise LineError(f"line {name!r} in {where} has no {key!r}")
        lam = _number(entry, "wavelength", name, where)
        loggf = _number(entry, "loggf", name, where)
        has_terms = "lower" in entry and "upper" in entry
        if ("g_lower" in entry or "g_upper" in entry) and not has_terms:
            raise LineError(
                f"line {name!r} in {where} gives g_lower/g_upper without the terms 'lower' and 'upper': "
                "the levels' J come from the terms, so give both terms too"
            )
        if has_terms:
            lo, up = parse_term(str(entry["lower"])), parse_term(str(entry["upper"]))
            # measured Lande factors (when given) replace the LS values; J stays from the terms
            g_l = _number(entry, "g_lower", name, where) if "g_lower" in entry else lo.lande
            g_u = _number(entry, "g_upper", name, where) if "g_upper" in entry else up.lande
            group, shift, strength = zeeman_pattern(lo.J, up.J, g_l, g_u)
            g_eff = effective_lande(g_l, g_u, float(lo.J), float(up.J))
        elif "g_eff" in entry:
            g_eff = _number(entry, "g_eff", name, where)
            group = np.array([SIGMA_BLUE, PI, SIGMA_RED], dtype=np.int64)
            shift = np.array([-g_eff, 0.0, g_eff])
            strength = np.ones(3)
        else:
            raise LineError(f"line {name!r} in {where} needs either 'lower' and 'upper' terms or 'g_eff'")
        return cls(name, lam, loggf, g_eff, group, shift, strength, str(entry.get("source", "")))


def _number(entry: Mapping[str, object], key: str, name: str, where: str) -> float:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LineError(f"line {name!r} in {where}: {key} must be a number, got {value!r}")
    return float(value)


@lru_cache(maxsize=16)
def _parse_table(path: str | None, mtime_ns: int) -> tuple[str, str]:
    """(where, TOML text) of a line table; cached per path and modification time.

    Only immutable values are cached: every caller parses its own fresh
    dictionaries (see :func:`_read_table`), so nothing a caller does to them,
    and no error half-way through building lines, can change the cache.
    """
    if path is None:
        text = resources.files("stokesflow.backends.me").joinpath("data/lines.toml").read_text()
        return "the packaged line table", text
    return str(path), Path(path).read_text()


def _read_table(path: str | None) -> tuple[str, dict[str, dict]]:
    """(where, {line name: fresh entry dict}) of a line table."""
    if path is None:
        where, text = _parse_table(None, 0)
    else:
        p = Path(path)
        if not p.is_file():
            raise LineError(f"line table {path} does not exist")
        where, text = _parse_table(str(p), p.stat().st_mtime_ns)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LineError(f"line table {where} is not valid TOML: {exc}") from exc
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise LineError(f"line table {where}: {name!r} must be a table [{name}] of line data, got {entry!r}")
    return where, data


def load_line_table(user_table: str | None = None) -> dict[str, Line]:
    """The packaged line table, extended/overridden by ``user_table`` (a TOML path)."""
    where, data = _read_table(None)
    entries = {name: (entry, where) for name, entry in data.items()}
    if user_table:
        where, data = _read_table(str(user_table))
        entries.update({name: (entry, where) for name, entry in data.items()})
    return {name: Line.from_entry(name, entry, w) for name, (entry, w) in entries.items()}


def get_lines(names: Iterable[str] | str, user_table: str | None = None) -> tuple[Line, ...]:
    """The lines named (a sequence, or a comma-separated string as in observation files)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    if not names:
        raise LineError("no spectral line given; name at least one, e.g. lines = ['FeI_6173']")
    table = load_line_table(user_table)
    missing = [n for n in names if n not in table]
    if missing:
        raise LineError(
            f"unknown line name(s) {missing}; known lines: {sorted(table)} "
            "(add your own with the ME option line_table = 'my_lines.toml')"
        )
    return tuple(table[n] for n in names)
