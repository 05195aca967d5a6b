"""Pure writers and parsers of SIR's file formats (no file system, no subprocess).

Every ``format_*`` returns the text of one file and every ``parse_*`` reads such a
text back, so that each format round-trips. Units are SIR's own: wavelength
offsets in mA from the first line of a block, velocities in cm/s, angles in
degrees, pressures in dyn cm^-2, stray light in percent.

Formats (SIR manual, 2017 version; checked against the code built from
github.com/BasilioRuiz/SIR-code):

- control file (``.trol``): exactly 42 lines read by position; node and
  cycle fields are comma lists, one value per cycle, the last repeats, ``*``
  means as many nodes as possible;
- profiles (``.per``): line index, offset [mA], I, Q, U, V per row;
- model (``.mod``, and ``.err`` for its uncertainties): first row vmac [km/s],
  filling factor, stray light [%]; then rows from deep to high: log tau_500,
  T [K], Pe, vmic [cm/s], B [G], vlos [cm/s], gamma [deg], phi [deg] and
  optionally z [km], Pg, rho [g cm^-3];
- wavelength grid: a header ending in a ``----`` line, then one row per
  wavelength block, ``i1,i2 : start, step, end`` [mA]; several line indices on
  one row share the block, offsets counted from the first line;
- line list (``LINES``): ``index=EL stage wavelength factor excitation loggf
  term-term alpha sigma``;
- abundances: a header ending in a ``____`` line, then ``Z log_eps`` rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np

from stokesflow.backends.sir.atomic import ClassicalLine, term_fields
from stokesflow.backends.sir.errors import SIRError

__all__ = [
    "CONTROL_KEYS",
    "Strategy",
    "STRATEGIES",
    "NODE_PARAMETERS",
    "control_values",
    "format_control",
    "parse_control",
    "Model",
    "format_model",
    "parse_model",
    "format_profiles",
    "parse_profiles",
    "GridBlock",
    "format_grid",
    "parse_grid",
    "grid_for_observation",
    "format_lines",
    "parse_lines",
    "format_abundances",
    "parse_chi",
    "count_iterations",
]

#: The 42 lines of a SIR control file: (key, label as SIR's own sir.trol spells it).
CONTROL_KEYS: tuple[tuple[str, str], ...] = (
    ("cycles", "Number of cycles          (*)"),
    ("observed", "Observed profiles         (*)"),
    ("stray_file", "Stray light file             "),
    ("psf_file", "PSF file                     "),
    ("grid", "Wavelength grid file      (s)"),
    ("lines", "Atomic parameters file       "),
    ("abundances", "Abundances file              "),
    ("model1", "Initial guess model 1     (*)"),
    ("model2", "Initial guess model 2        "),
    ("weight_I", "Weight for Stokes I          "),
    ("weight_Q", "Weight for Stokes Q          "),
    ("weight_U", "Weight for Stokes U          "),
    ("weight_V", "Weight for Stokes V          "),
    ("auto_nodes", "AUTOMATIC SELECT. OF NODES?  "),
    ("T1", "Nodes for temperature 1      "),
    ("Pe1", "Nodes for electr. press. 1   "),
    ("vmic1", "Nodes for microturb. 1       "),
    ("B1", "Nodes for magnetic field 1   "),
    ("vlos1", "Nodes for LOS velocity 1     "),
    ("gamma1", "Nodes for gamma 1            "),
    ("phi1", "Nodes for phi 1              "),
    ("vmac1", "Invert macroturbulence 1?    "),
    ("T2", "Nodes for temperature 2      "),
    ("Pe2", "Nodes for electr. press. 2   "),
    ("vmic2", "Nodes for microturb. 2       "),
    ("B2", "Nodes for magnetic field 2   "),
    ("vlos2", "Nodes for LOS velocity 2     "),
    ("gamma2", "Nodes for gamma 2            "),
    ("phi2", "Nodes for phi 2              "),
    ("vmac2", "Invert macroturbulence 2?    "),
    ("filling_factor", "Invert filling factor?       "),
    ("stray_light", "Invert stray light factor?   "),
    ("mu", "mu=cos (theta)               "),
    ("sn", "Estimated S/N for I          "),
    ("contrast", "Continuum contrast           "),
    ("svd_tol", "Tolerance for SVD            "),
    ("diagonal", "Initial diagonal element     "),
    ("interpolation", "Splines/Linear Interpolation "),
    ("pg_surface1", "Gas pressure at surface 1    "),
    ("pg_surface2", "Gas pressure at surface 2    "),
    ("magnetic_pressure", "Magnetic pressure term?      "),
    ("nlte", "NLTE Departures filename     "),
)
_KEYS = tuple(k for k, _ in CONTROL_KEYS)

#: Node parameters of one model, in the control file's order (SIR's names).
NODE_PARAMETERS = ("T", "Pe", "vmic", "B", "vlos", "gamma", "phi")


@dataclass(frozen=True)
class Strategy:
    """Cycles and nodes of a SIR inversion.

    Attributes
    ----------
    name : str
    cycles : int
        Number of cycles (0 = synthesis).
    nodes : mapping of str to str
        Per SIR parameter (``T``, ``Pe``, ``vmic``, ``B``, ``vlos``, ``gamma``,
        ``phi``) the comma list of nodes per cycle (the last repeats); a
        parameter left out is not inverted.
    vmac : str
        Comma list of 0/1 per cycle: invert the macroturbulence.
    """

    name: str
    cycles: int
    nodes: Mapping[str, str] = field(default_factory=dict)
    vmac: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.nodes) - set(NODE_PARAMETERS))
        if unknown:
            raise SIRError(
                f"SIR strategy {self.name!r}: unknown node parameter(s) {unknown}; valid are {list(NODE_PARAMETERS)}"
            )
        for k, v in list(self.nodes.items()) + [("vmac", self.vmac)]:
            if v and not re.fullmatch(r"\s*(\d+|\*)(\s*,\s*(\d+|\*))*\s*", v):
                raise SIRError(
                    f"SIR strategy {self.name!r}: nodes for {k} must be a comma list of integers or '*', got {v!r}"
                )
        if self.cycles < 0:
            raise SIRError(f"SIR strategy {self.name!r}: cycles must be >= 0, got {self.cycles}")


#: The shipped strategies. ``reference``: the classical three cycles from the
#: default model; ``assisted``: one cycle from a close initial guess that gives
#: every quantity it does not fit (a SIR result, a network trained on SIR
#: results), as in the assisted-inversion papers (DESIGN.md); ``assisted_me``:
#: the reference's last cycle alone (``assisted`` plus one node each for vmic,
#: inclination and azimuth, and vmac), for an ME seed, which gives no vmic or
#: vmac and angles constant with height: held fixed at such a start, these cost
#: ``assisted`` 5-55 % in median chi2 on the Hinode-like SIR sample (README).
STRATEGIES: dict[str, Strategy] = {
    "reference": Strategy(
        "reference", 3,
        {"T": "1,3,5", "vlos": "1,3", "B": "1,3", "gamma": "1", "phi": "1", "vmic": "1"},
        vmac="1",
    ),
    "assisted": Strategy("assisted", 1, {"T": "5", "vlos": "3", "B": "3"}),
    "assisted_me": Strategy(
        "assisted_me", 1, {"T": "5", "vlos": "3", "B": "3", "gamma": "1", "phi": "1", "vmic": "1"}, vmac="1",
    ),
}


def control_values(
    strategy: Strategy,
    *,
    observed: str,
    model: str,
    grid: str,
    lines: str,
    abundances: str,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    sn: float | None = None,
    mu: float = 1.0,
    psf_file: str = "",
    stray_file: str = "",
) -> dict[str, str]:
    """The 42 control-file values for one run (every key of :data:`CONTROL_KEYS`).

    Parameters
    ----------
    strategy : Strategy
    observed, model, grid, lines, abundances : str
        File names in the run folder.
    weights : 4 floats
        Weights of I, Q, U, V (0 = not fitted).
    sn : float, optional
        Signal-to-noise of I (1 / noise in units of the continuum); SIR's default 1000.
    mu : float
        Cosine of the heliocentric angle.
    """
    v = {k: "" for k in _KEYS}
    v.update(
        cycles=str(strategy.cycles), observed=observed, grid=grid, lines=lines, abundances=abundances,
        model1=model, psf_file=psf_file, stray_file=stray_file, auto_nodes="0", mu=f"{mu:g}",
        sn="" if sn is None else f"{sn:.6g}", vmac1=strategy.vmac,
    )
    for k, w in zip(("weight_I", "weight_Q", "weight_U", "weight_V"), weights):
        v[k] = f"{w:g}"
    for p in NODE_PARAMETERS:
        v[p + "1"] = strategy.nodes.get(p, "")
    return v


def format_control(
    values: Mapping[str, str], keys: Sequence[tuple[str, str]] = CONTROL_KEYS, code: str = "SIR"
) -> str:
    """Text of a control file: one ``label:value`` line per key, in the order of ``keys``.

    Parameters
    ----------
    values : mapping of str to str
        Value per key (a key left out is written empty).
    keys : sequence of (key, label)
        The layout: SIR's 42 lines (:data:`CONTROL_KEYS`) by default; DeSIRe's
        layout is ``stokesflow.backends.desire.io.CONTROL_KEYS``.
    code : str
        The code's name, for messages.

    Raises
    ------
    SIRError
        A value for a key not in ``keys``, or one holding ``!``, ``:`` or a
        newline (the codes read up to the ``!``).
    """
    names = [k for k, _ in keys]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise SIRError(f"unknown {code} control key(s) {unknown}; valid keys are {names}")
    rows = []
    for key, label in keys:
        val = str(values.get(key, ""))
        if any(c in val for c in "!:\n"):
            raise SIRError(f"{code} control value {key}={val!r} holds '!', ':' or a newline, which {code} cannot read")
        rows.append(f"{label}:{val}")
    return "\n".join(rows) + "\n"


def parse_control(
    text: str, keys: Sequence[tuple[str, str]] = CONTROL_KEYS, code: str = "SIR"
) -> dict[str, str]:
    """Values of a control file by key (comments after ``!`` dropped), read by position.

    Parameters
    ----------
    text : str
    keys : sequence of (key, label)
        The layout (SIR's :data:`CONTROL_KEYS` by default).
    code : str
        The code's name, for messages.

    Raises
    ------
    SIRError
        Fewer lines than ``keys``, or a line without ``:``.
    """
    rows = text.splitlines()
    if len(rows) < len(keys):
        raise SIRError(f"{code} control file has {len(rows)} lines, expected {len(keys)}")
    out = {}
    for i, ((key, _), row) in enumerate(zip(keys, rows)):
        if ":" not in row:
            raise SIRError(f"{code} control file line {i + 1} ({key}) has no ':': {row!r}")
        out[key] = row.split(":", 1)[1].split("!", 1)[0].strip()
    return out


@dataclass
class Model:
    """A SIR model atmosphere, in SIR's units, rows from deep (large log tau) to high.

    Attributes
    ----------
    log_tau, T, Pe, vmic, B, vlos, gamma, phi : ndarray (ndepth,)
        log tau_500, K, dyn cm^-2, cm/s, G, cm/s, deg, deg.
    z, Pg, rho : ndarray (ndepth,) or None
        km, dyn cm^-2, g cm^-3 (written when present).
    vmac : float
        Macroturbulence [km/s].
    filling_factor : float
    stray_light : float
        Stray light [%].
    """

    log_tau: np.ndarray
    T: np.ndarray
    Pe: np.ndarray
    vmic: np.ndarray
    B: np.ndarray
    vlos: np.ndarray
    gamma: np.ndarray
    phi: np.ndarray
    z: np.ndarray | None = None
    Pg: np.ndarray | None = None
    rho: np.ndarray | None = None
    vmac: float = 0.0
    filling_factor: float = 1.0
    stray_light: float = 0.0

    COLUMNS = ("log_tau", "T", "Pe", "vmic", "B", "vlos", "gamma", "phi", "z", "Pg", "rho")

    @property
    def ndepth(self) -> int:
        """Number of depth points."""
        return int(self.log_tau.shape[0])

    def copy(self) -> "Model":
        """A deep copy."""
        return replace(self, **{c: None if getattr(self, c) is None else np.array(getattr(self, c), dtype=float)
                                for c in self.COLUMNS})


def format_model(model: Model) -> str:
    """Text of a SIR ``.mod`` file (8 or 11 columns)."""
    cols = [np.asarray(getattr(model, c), dtype=float) for c in Model.COLUMNS[:8]]
    extra = [getattr(model, c) for c in Model.COLUMNS[8:]]
    if all(e is not None for e in extra):
        cols += [np.asarray(e, dtype=float) for e in extra]
    n = model.ndepth
    for c, a in zip(Model.COLUMNS, cols):
        if a.shape != (n,):
            raise SIRError(f"SIR model column {c} has shape {a.shape}, expected ({n},) like log_tau")
    out = [f"{model.vmac:12.5f} {model.filling_factor:12.5f} {model.stray_light:12.5f}"]
    fmt = "{:9.4f} {:10.2f} {:13.6E} {:12.5E} {:12.5E} {:13.6E} {:12.5E} {:12.5E}"
    fmt_x = " {:13.6E} {:13.6E} {:13.6E}"
    for i in range(n):
        row = fmt.format(*(c[i] for c in cols[:8]))
        if len(cols) == 11:
            row += fmt_x.format(*(c[i] for c in cols[8:]))
        out.append(row)
    return "\n".join(out) + "\n"


def parse_model(text: str, where: str = "SIR model") -> Model:
    """Read a SIR ``.mod`` (or ``.err``) text; lines starting with ``#`` are comments.

    Raises
    ------
    SIRError
        Fewer than 3 header values, rows with other than 8 or 11 columns, or
        values that are not numbers.
    """
    rows = [r for r in text.splitlines() if r.strip() and not r.lstrip().startswith("#")]
    try:
        head = [float(x) for x in rows[0].split()]
        data = np.array([[float(x) for x in r.split()] for r in rows[1:]], dtype=float)
    except (IndexError, ValueError) as exc:
        raise SIRError(f"{where}: cannot read numbers ({exc}); expected SIR's .mod format") from None
    if len(head) < 3 or data.ndim != 2 or data.shape[1] not in (8, 11) or data.shape[0] < 2:
        raise SIRError(
            f"{where}: expected a first row of 3 values and rows of 8 or 11 columns, "
            f"got {len(head)} header values and rows of shape {data.shape}"
        )
    cols = {c: data[:, i].copy() for i, c in enumerate(Model.COLUMNS[: data.shape[1]])}
    return Model(**cols, vmac=head[0], filling_factor=head[1], stray_light=head[2])


def format_profiles(index: np.ndarray, offset_mA: np.ndarray, stokes: np.ndarray) -> str:
    """Text of a SIR ``.per`` file.

    Parameters
    ----------
    index : ndarray (nw,) int
        Line index of each point (the first line of its block).
    offset_mA : ndarray (nw,)
        Offset from that line's centre [mA].
    stokes : ndarray (4, nw)
        I, Q, U, V in units of the quiet-Sun continuum.
    """
    stokes = np.asarray(stokes, dtype=float)
    if stokes.shape != (4, len(offset_mA)) or len(index) != len(offset_mA):
        raise SIRError(f"profiles: stokes has shape {stokes.shape}, expected (4, {len(offset_mA)})")
    return "".join(
        f"{int(index[i]):6d} {offset_mA[i]:11.4f} {stokes[0, i]:15.7E} {stokes[1, i]:15.7E} "
        f"{stokes[2, i]:15.7E} {stokes[3, i]:15.7E}\n"
        for i in range(len(offset_mA))
    )


def parse_profiles(text: str, where: str = "SIR profiles") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index (nw,), offset [mA] (nw,), stokes (4, nw)) of a ``.per`` text."""
    try:
        data = np.array([[float(x) for x in r.split()] for r in text.splitlines() if r.strip()], dtype=float)
    except ValueError as exc:
        raise SIRError(f"{where}: cannot read numbers ({exc})") from None
    if data.ndim != 2 or data.shape[1] != 6:
        raise SIRError(f"{where}: expected rows of 6 columns (index, offset, I, Q, U, V), got shape {data.shape}")
    return data[:, 0].astype(np.int64), data[:, 1].copy(), data[:, 2:].T.copy()


@dataclass(frozen=True)
class GridBlock:
    """One row of a SIR wavelength grid: ``indices : start, step, end`` [mA]."""

    indices: tuple[int, ...]
    start: float
    step: float
    end: float

    @property
    def npoints(self) -> int:
        """Points in the block."""
        return int(round((self.end - self.start) / self.step)) + 1


_GRID_HEADER = (
    "IMPORTANT: a) All items must be separated by commas.\n"
    "           b) The first six characters of the last line\n"
    "              in the header (if any) must contain the symbol ---\n"
    "\n"
    "Line and blends indices   :   Initial lambda     Step     Final lambda\n"
    "(in this order)                    (mA)          (mA)         (mA)\n"
    "-----------------------------------------------------------------------\n"
)


def format_grid(blocks: Sequence[GridBlock]) -> str:
    """Text of a SIR wavelength-grid file (SIR's header, one row per block)."""
    rows = [
        f"{','.join(str(i) for i in b.indices):<26s}:  {b.start:.4f}, {b.step:.4f}, {b.end:.4f}" for b in blocks
    ]
    return _GRID_HEADER + "\n".join(rows) + "\n"


def parse_grid(text: str) -> list[GridBlock]:
    """Blocks of a SIR wavelength-grid text (rows after the ``---`` header line)."""
    rows = text.splitlines()
    start = next((i + 1 for i, r in enumerate(rows) if r[:6].count("-") >= 3), 0)
    out = []
    for r in rows[start:]:
        if not r.strip():
            continue
        try:
            idx, vals = r.split(":", 1)
            a, s, e = (float(x) for x in vals.split(","))
            out.append(GridBlock(tuple(int(i) for i in idx.split(",")), a, s, e))
        except ValueError:
            raise SIRError(f"SIR grid row {r!r}: expected 'i1,i2 : start, step, end'") from None
    return out


def grid_for_observation(
    wavelength: np.ndarray, lines: Sequence[ClassicalLine], rtol: float = 1e-3
) -> tuple[list[GridBlock], np.ndarray, np.ndarray]:
    """One grid block holding every line (DESIGN.md field note), from an observed grid.

    Parameters
    ----------
    wavelength : ndarray (nw,)
        Observed wavelengths [A], increasing and evenly spaced.
    lines : sequence of ClassicalLine
        The lines, written to the line list with indices 1, 2, ... in this order.
    rtol : float
        Allowed relative deviation of a step from the mean step.

    Returns
    -------
    blocks : list of GridBlock
    index : ndarray (nw,) int
        Line index of every point (1: offsets count from the first line).
    offset_mA : ndarray (nw,)
        Offsets from the first line's centre [mA].

    Raises
    ------
    SIRError
        Grid not increasing or not evenly spaced (SIR's grid rows are uniform).
    """
    wl = np.asarray(wavelength, dtype=float)
    d = np.diff(wl)
    if wl.size < 2 or np.any(d <= 0):
        raise SIRError("the observation's wavelength grid must increase (blue to red) for SIR; reorder it (-R order=...)")
    step = float(np.mean(d))
    if np.max(np.abs(d - step)) > rtol * step:
        raise SIRError(
            f"the observation's wavelength grid is not evenly spaced (steps {d.min() * 1e3:.4f} to "
            f"{d.max() * 1e3:.4f} mA); SIR's grid rows are uniform: resample the observation onto an even grid"
        )
    off = (wl - lines[0].wavelength) * 1e3
    step_mA = step * 1e3
    start = float(off[0])
    end = start + step_mA * (wl.size - 1)
    block = GridBlock(tuple(range(1, len(lines) + 1)), start, step_mA, end)
    offsets = start + step_mA * np.arange(wl.size)
    return [block], np.ones(wl.size, dtype=np.int64), offsets


def format_lines(
    lines: Sequence[ClassicalLine],
    damping_factor: float = 1.0,
    levels: Mapping[int, tuple[int, int]] | None = None,
) -> str:
    """Text of a SIR line list, lines numbered 1, 2, ... in order.

    Parameters
    ----------
    lines : sequence of ClassicalLine
    damping_factor : float
        SIR's enhancement of the Unsoeld damping (used when a line has no ABO data).
    levels : mapping of int to (int, int), optional
        For DeSIRe's NLTE lines: by line number (1-based), the indices of the
        lower and upper level in the RH model atom, appended to the row (a row
        without them is an LTE line); SIR's lists have none.
    """
    out = []
    for i, ln in enumerate(lines, start=1):
        m1, l1, j1 = term_fields(ln.lower)
        m2, l2, j2 = term_fields(ln.upper)
        row = (
            f"{i:5d}={ln.element.symbol.upper():<2s} {ln.stage:d}   {ln.wavelength:10.4f}  {damping_factor:4.1f}"
            f"  {ln.excitation:7.3f}  {ln.loggf:7.3f}  {m1:2d}{l1}{j1:4.1f}-{m2:2d}{l2}{j2:4.1f}"
            f"  {ln.alpha:.3f}  {ln.sigma_cm2:.5e}"
        )
        if levels and i in levels:
            lo, up = levels[i]
            row += f"  {lo:d}.  {up:d}."
        out.append(row)
    return "\n".join(out) + "\n"


def parse_lines(text: str) -> list[dict]:
    """Entries of a SIR (or DeSIRe) line list: index, element, stage, wavelength, factor,
    excitation, loggf, lower and upper ``(mult, L, J)``, alpha, sigma [cm^2], and
    ``levels`` (lower, upper level in the RH model atom: DeSIRe's NLTE lines) or None.
    Text after ``#`` is a comment."""
    out = []
    pat = re.compile(
        r"\s*(\d+)=\s*([A-Za-z]{1,2})\s+(\d)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+"
        r"(\d+)([A-Za-z])\s*(\d+\.\d)-\s*(\d+)([A-Za-z])\s*(\d+\.\d)(?:\s+(\S+)\s+(\S+)(?:\s+(\S+)\s+(\S+))?)?\s*$"
    )
    for r in text.splitlines():
        r = r.split("#", 1)[0]
        if not r.strip():
            continue
        m = pat.match(r)
        if m is None:
            raise SIRError(
                f"SIR line list row {r!r}: expected 'i=EL stage lambda factor chi loggf term-term alpha sigma' "
                "(DeSIRe: then the lower and upper level of an NLTE line)"
            )
        g = m.groups()
        try:
            levels = None if g[15] is None else (int(float(g[15])), int(float(g[16])))
            out.append(
                dict(
                    index=int(g[0]), element=g[1].capitalize(), stage=int(g[2]), wavelength=float(g[3]),
                    factor=float(g[4]), excitation=float(g[5]), loggf=float(g[6]),
                    lower=(int(g[7]), g[8].upper(), float(g[9])), upper=(int(g[10]), g[11].upper(), float(g[12])),
                    alpha=float(g[13] or 0.0), sigma=float(g[14] or 0.0), levels=levels,
                )
            )
        except ValueError:
            raise SIRError(f"SIR line list row {r!r}: a field that should be a number is not") from None
    return out


def format_abundances(abundances: Mapping[int, float]) -> str:
    """Text of a SIR abundance file (log eps, H = 12), rows by atomic number."""
    head = "Abundances written by stokesflow (log10 N/N_H + 12)\n\nAtom  Abundance\n" + "_" * 70 + "\n"
    return head + "".join(f"{z}  {abundances[z]:.3f}\n" for z in sorted(abundances))


def parse_chi(text: str) -> np.ndarray:
    """Rows (s/n, chi2) of ``sir.chi``, one per cycle run (SIR appends to it)."""
    try:
        data = np.array([[float(x) for x in r.split()] for r in text.splitlines() if r.strip()], dtype=float)
    except ValueError as exc:
        raise SIRError(f"sir.chi: cannot read numbers ({exc})") from None
    return data.reshape(-1, 2) if data.size else np.zeros((0, 2))


def count_iterations(log_text: str) -> int:
    """Levenberg-Marquardt iterations in a SIR log (rows ``it DE s/n chi2 ...`` with it > 0)."""
    n = 0
    for r in log_text.splitlines():
        parts = r.split()
        if len(parts) >= 5 and parts[0].isdigit() and int(parts[0]) > 0:
            n += 1
    return n
