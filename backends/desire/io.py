"""Pure writers and parsers of what DeSIRe reads beyond SIR's formats (no file system, no subprocess).

DeSIRe (Ruiz Cobo et al. 2022; github.com/BasilioRuiz/DeSIRe) is SIR's engine
with RH (Uitenbroek 2001) for NLTE lines. It shares SIR's profile (``.per``),
model (``.mod``, ``.err``), wavelength-grid and abundance formats, which come
from :mod:`stokesflow.backends.sir.io`, and its line list is SIR's with two
more numbers on an NLTE line (:func:`stokesflow.backends.sir.io.format_lines`
with ``levels``). What differs, checked against ``desire/src/desire.f``
(version 5.06, 06/Jun/2023) and the example run folders
``desire/run/example*/`` of the repository:

- control file (``.dtrol``, passed as the command-line argument): 45 lines
  read by position. Lines 1-9 are SIR's; line 10 names a coordinates file;
  11-40 are SIR's lines 10-41 without ``mu`` (DeSIRe works in the line-of-sight
  frame, mu = 1); then the NLTE threshold (0 = NLTE, >= 10 = LTE), the number
  of rays, the integration method, the final evaluation per cycle (2 = write
  the model, the profiles and the errors) and whether RH's models are on mass
  column (``m``) or log tau (``t``). The log and the chi2 file take the
  control file's name (``desire.dtrol`` -> ``desire.log``, ``desire.chi``).
- ``keyword.input`` (RH's keywords, ``KEY = value``), with the atom and
  molecule lists and RH's data folders (its defaults ``../../var/...`` are
  relative to a run folder inside DeSIRe's tree, so they are always written).
- ``atoms.input`` and ``molecules.input`` (RH's lists of model atoms and
  molecules: path, ACTIVE/PASSIVE, initial solution, population file).
- coordinates file: ``X/Rsun, Y/Rsun, Vx, Vy``; DeSIRe 5.06 uses only zeros
  (any other value gives a warning and mu = 1).
- ``.chi``: one row written at the end, ``s/n  scale/chi2_real  chi2_new``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from stokesflow.backends.sir import io as sir_io
from stokesflow.backends.desire.errors import DesireError

__all__ = [
    "CONTROL_KEYS",
    "DESIRE_ONLY_KEYS",
    "control_values",
    "final_evaluation",
    "format_control",
    "parse_control",
    "format_keywords",
    "parse_keywords",
    "RHEntry",
    "format_atoms",
    "parse_atoms",
    "format_molecules",
    "parse_molecules",
    "format_coordinates",
    "parse_desire_chi",
    "log_chi2",
]

_SIR = dict(sir_io.CONTROL_KEYS)

#: The 45 lines of a DeSIRe control file: (key, label as DeSIRe's run/example/desire.dtrol spells it).
#: Keys shared with SIR keep SIR's names and labels.
CONTROL_KEYS: tuple[tuple[str, str], ...] = (
    *((k, _SIR[k]) for k in ("cycles", "observed", "stray_file", "psf_file", "grid", "lines", "abundances",
                             "model1", "model2")),
    ("coordinates", "Coordinates file             "),
    *((k, _SIR[k]) for k in (
        "weight_I", "weight_Q", "weight_U", "weight_V", "auto_nodes",
        "T1", "Pe1", "vmic1", "B1", "vlos1", "gamma1", "phi1", "vmac1",
        "T2", "Pe2", "vmic2", "B2", "vlos2", "gamma2", "phi2", "vmac2",
        "filling_factor", "stray_light", "sn", "contrast", "svd_tol", "diagonal", "interpolation",
        "pg_surface1", "pg_surface2")),
    ("nlte_threshold", "NLTE thresh. (0=NLTE,>10 LTE)"),
    ("rays", "Number of rays               "),
    ("integration", "Integration method           "),
    ("final_evaluation", "Final evaluation of profile  "),
    ("rh_models", "RH models mass (m) or tau(t) "),
)

#: Keys of DeSIRe's control file that SIR's has not.
DESIRE_ONLY_KEYS = ("coordinates", "nlte_threshold", "rays", "integration", "final_evaluation", "rh_models")


def final_evaluation(cycles: int) -> str:
    """DeSIRe's per-cycle output switch: nothing written after the inner cycles, the
    model, profiles and errors (2) after the last (``"0,0,2"`` for 3 cycles)."""
    return ",".join(["0"] * max(cycles - 1, 0) + ["2"])


def control_values(
    strategy: sir_io.Strategy,
    *,
    observed: str,
    model: str,
    grid: str,
    lines: str,
    abundances: str,
    coordinates: str,
    nlte: bool,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    sn: float | None = None,
    rays: int = 3,
    integration: int = 2,
) -> dict[str, str]:
    """The 45 control-file values for one run (every key of :data:`CONTROL_KEYS`).

    Parameters
    ----------
    strategy : Strategy
        Cycles and nodes (SIR's strategies serve DeSIRe unchanged).
    observed, model, grid, lines, abundances, coordinates : str
        File names in the run folder.
    nlte : bool
        Whether RH treats the lines flagged NLTE in the line list (NLTE
        threshold 0); False gives 10, DeSIRe's pure LTE (its SIR engine alone).
    weights : 4 floats
        Weights of I, Q, U, V.
    sn : float, optional
        Signal-to-noise of I; DeSIRe's default 1000.
    rays : int
        Rays of RH's angle quadrature.
    integration : int
        Formal solver: 0 Hermite (integral), 1 Hermite, 2 cubic Bezier (the examples' choice).
    """
    v = sir_io.control_values(strategy, observed=observed, model=model, grid=grid, lines=lines,
                              abundances=abundances, weights=weights, sn=sn)
    for k in ("mu", "magnetic_pressure", "nlte"):  # SIR-only lines
        v.pop(k)
    v.update(
        coordinates=coordinates, nlte_threshold="0" if nlte else "10", rays=str(int(rays)),
        integration=str(int(integration)),
        final_evaluation=final_evaluation(strategy.cycles) if strategy.cycles > 0 else "",
        rh_models="t",
    )
    return v


def format_control(values: Mapping[str, str]) -> str:
    """Text of a DeSIRe control file: exactly 45 lines, ``label:value``."""
    return sir_io.format_control(values, CONTROL_KEYS, "DeSIRe")


def parse_control(text: str) -> dict[str, str]:
    """Values of a DeSIRe control file by key (comments after ``!`` dropped)."""
    return sir_io.parse_control(text, CONTROL_KEYS, "DeSIRe")


def format_keywords(keywords: Mapping[str, str]) -> str:
    """Text of RH's ``keyword.input``: one ``KEY = value`` per line.

    Raises
    ------
    DesireError
        A key that is not an upper-case RH keyword, or a value with ``#``, ``=`` or a newline.
    """
    rows = ["# RH keywords written by stokesflow for DeSIRe"]
    for k, val in keywords.items():
        val = str(val)
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", k) or any(c in val for c in "#=\n"):
            raise DesireError(
                f"RH keyword {k}={val!r}: keys are upper-case RH keywords, values hold no '#', '=' or newline")
        rows.append(f"  {k} = {val}")
    return "\n".join(rows) + "\n"


def parse_keywords(text: str) -> dict[str, str]:
    """RH keywords of a ``keyword.input`` text (``#`` starts a comment)."""
    out = {}
    for r in text.splitlines():
        r = r.split("#", 1)[0].strip()
        if not r:
            continue
        if "=" not in r:
            raise DesireError(f"keyword.input row {r!r}: expected 'KEY = value'")
        k, val = (x.strip() for x in r.split("=", 1))
        out[k] = val
    return out


@dataclass(frozen=True)
class RHEntry:
    """One row of RH's ``atoms.input`` or ``molecules.input``.

    Attributes
    ----------
    path : str
        Model atom or molecule file (absolute, or relative to the run folder).
    active : bool
        ACTIVE (NLTE populations solved) or PASSIVE (LTE, background).
    initial : str
        Initial solution: ``ZERO_RADIATION``, ``LTE_POPULATIONS``, ...
    pops : str
        Population output file (atoms only; "" for molecules).
    """

    path: str
    active: bool
    initial: str
    pops: str = ""


_INITIAL = ("ZERO_RADIATION", "LTE_POPULATIONS", "OLD_POPULATIONS", "NO_INITIAL_SOLUTION", "ESCAPE_PROBABILITY",
            "OLD_POPULATIONS_GLOBAL")


def _format_entries(entries: Sequence[RHEntry], what: str, with_pops: bool) -> str:
    rows = [f"# {what} written by stokesflow for DeSIRe (RH format)", "", f"  {len(entries)}", ""]
    for e in entries:
        if e.initial not in _INITIAL or any(c.isspace() for c in e.path + e.pops):
            raise DesireError(
                f"{what} entry {e}: the initial solution must be one of {list(_INITIAL)} and paths must hold no spaces"
            )
        row = f"  {e.path}  {'ACTIVE' if e.active else 'PASSIVE'}  {e.initial}"
        if with_pops:
            row += f"  {e.pops}"
        rows.append(row)
    return "\n".join(rows) + "\n"


def _parse_entries(text: str, what: str, with_pops: bool) -> list[RHEntry]:
    rows = [r.split("#", 1)[0].split() for r in text.splitlines()]
    rows = [r for r in rows if r]
    try:
        n = int(rows[0][0])
    except (IndexError, ValueError):
        raise DesireError(f"{what}: the first row must be the number of entries") from None
    out = []
    for r in rows[1:]:
        if len(r) < 3 or r[1] not in ("ACTIVE", "PASSIVE"):
            raise DesireError(
                f"{what} row {' '.join(r)!r}: expected 'file ACTIVE|PASSIVE initial-solution [pops file]'")
        out.append(RHEntry(r[0], r[1] == "ACTIVE", r[2], r[3] if with_pops and len(r) > 3 else ""))
    if len(out) != n:
        raise DesireError(f"{what}: header says {n} entries, found {len(out)}")
    return out


def format_atoms(entries: Sequence[RHEntry]) -> str:
    """Text of RH's ``atoms.input`` (hydrogen must come first, as RH requires)."""
    if not entries or not entries[0].path.rsplit("/", 1)[-1].upper().startswith("H"):
        raise DesireError("atoms.input: the first model atom must be hydrogen (RH reads it as the background H)")
    return _format_entries(entries, "atoms.input", True)


def parse_atoms(text: str) -> list[RHEntry]:
    """Entries of an ``atoms.input`` text."""
    return _parse_entries(text, "atoms.input", True)


def format_molecules(entries: Sequence[RHEntry]) -> str:
    """Text of RH's ``molecules.input`` (H2 first, as RH requires)."""
    return _format_entries(entries, "molecules.input", False)


def parse_molecules(text: str) -> list[RHEntry]:
    """Entries of a ``molecules.input`` text."""
    return _parse_entries(text, "molecules.input", False)


def format_coordinates(x: float = 0.0, y: float = 0.0, vx: float = 0.0, vy: float = 0.0) -> str:
    """Text of DeSIRe's coordinates file: X/Rsun, Y/Rsun, Vx, Vy [cm/s] (DeSIRe 5.06 uses only zeros)."""
    return f"{x:g},{y:g},{vx:g},{vy:g}\n"


def parse_desire_chi(text: str) -> np.ndarray:
    """The row (s/n, scale/chi2_real, chi2_new) of DeSIRe's ``.chi`` file (3 values).

    Raises
    ------
    DesireError
        Not three numbers.
    """
    try:
        vals = np.array([float(x) for x in text.split()], dtype=float)
    except ValueError as exc:
        raise DesireError(f"DeSIRe .chi file: cannot read numbers ({exc})") from None
    if vals.shape != (3,):
        raise DesireError(f"DeSIRe .chi file: expected 3 numbers (s/n, scale/chi2, chi2), got {vals.size}")
    return vals


def log_chi2(log_text: str) -> np.ndarray:
    """chi2 at the end of each cycle from a DeSIRe (or SIR) log.

    Each cycle is a block: a header row (``it DE s/n chi**2 ...``), an
    iteration-0 row ``0 s/n chi2`` and rows ``it DE s/n chi2 ...``; the chi2 of
    a cycle is that of its last row (DeSIRe's ``.chi`` file holds no chi2 per
    cycle, only ``s/n, scale/chi2, chi2_new`` of the best iteration).
    """
    out: list[float] = []
    for r in log_text.splitlines():
        parts = r.split()
        if not parts or not parts[0].isdigit():
            continue
        try:
            if parts[0] == "0" and len(parts) == 3:
                out.append(float(parts[2]))
            elif len(parts) >= 4 and out:
                out[-1] = float(parts[3])
        except ValueError:
            continue
    return np.array(out, dtype=float)
