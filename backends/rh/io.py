"""Pure writers and parsers of RH 1.5D's files (no RH needed to test them).

RH 1.5D (Pereira & Uitenbroek 2015; github.com/ITA-Solar/rh) reads, in its
working folder:

- an HDF5 atmosphere cube (``rh15d/hdf5atmos.c``): ``temperature``,
  ``velocity_z`` (positive = upflow), ``electron_density``,
  ``hydrogen_populations`` (nhydr = 1: the total, RH computes LTE level
  populations), optional ``velocity_turbulent`` and ``B_x``/``B_y``/``B_z``
  [T], shaped (nt, nx, ny, nz) ((nt, nhydr, nx, ny, nz) for hydrogen), on a
  height grid ``z`` [m] whose first index is the TOP of the atmosphere; ``x``,
  ``y``, ``snapshot_number`` and the attribute ``has_B``;
- ``keyword.input`` (``KEY = value`` lines; the chunk is chosen by
  ``X_START``/``X_END``/``Y_START``/``Y_END``, ends exclusive),
  ``atoms.input``, ``molecules.input``, ``ray.input`` (mu and the wavelengths
  with detailed output), ``kurucz.input`` (a list of line-list files);
- a Kurucz-format line list (LTE background lines with a Zeeman pattern from
  their LS level labels) and a wavelength table (``WAVETABLE``: XDR, one int
  then vacuum wavelengths [nm] as doubles) that forces RH to compute the
  observation's wavelengths.

It writes ``output/output_ray.hdf5`` (``wavelength`` [nm], ``intensity`` and
``stokes_Q/U/V`` (nx, ny, nwave) [W m^-2 Hz^-1 sr^-1]) and
``output/output_indata.hdf5`` whose group ``mpi`` holds ``convergence``
(nx, ny: 1 converged, 0 not converged, -1 crashed column), ``iterations`` and
the atmosphere indices ``xnum``/``ynum``. Columns that did not converge, or
were never run, keep the fill value :data:`FILL_VALUE` in the ray file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from stokesflow.backends.rh.errors import RHError
from stokesflow.backends.sir.atomic import ClassicalLine, term_fields

__all__ = [
    "AIR_TO_VACUUM_LIMIT",
    "FILL_VALUE",
    "RAY_FILE",
    "INDATA_FILE",
    "Atmosphere",
    "write_atmosphere",
    "read_atmosphere",
    "format_keywords",
    "parse_keywords",
    "AtomEntry",
    "format_atoms",
    "parse_atoms",
    "format_molecules",
    "parse_molecules",
    "format_ray",
    "parse_ray",
    "write_wavetable",
    "read_wavetable",
    "air_to_vacuum",
    "KuruczLine",
    "format_kurucz",
    "parse_kurucz",
    "kurucz_line",
    "EV_TO_CM1",
    "parse_abundances",
    "RHOutput",
    "read_output",
]

#: RH's HDF5 fill value (``rh15d/io.h``: FILL): left in the ray file for columns not written.
FILL_VALUE = 9.96921e36
#: RH converts air to vacuum at and above this wavelength [nm] (``spectrum.h``).
AIR_TO_VACUUM_LIMIT = 199.9352
#: 1 eV in cm^-1.
EV_TO_CM1 = 8065.54429
#: Output files, relative to the working folder (``rh15d/io.h``).
RAY_FILE = "output/output_ray.hdf5"
INDATA_FILE = "output/output_indata.hdf5"


# --------------------------------------------------------------------- atmosphere
@dataclass
class Atmosphere:
    """Columns of a model atmosphere in RH 1.5D's units, first depth index at the TOP.

    Attributes
    ----------
    z : ndarray (ncol, nz)
        Height [m], decreasing along the depth axis (top first).
    temperature : ndarray (ncol, nz)
        [K].
    electron_density : ndarray (ncol, nz)
        [m^-3].
    hydrogen : ndarray (ncol, nz)
        Total hydrogen number density [m^-3] (written with nhydr = 1: RH
        computes LTE hydrogen populations from it).
    velocity_z : ndarray (ncol, nz)
        Vertical velocity [m/s], positive = upflow (towards the observer).
    velocity_turbulent : ndarray (ncol, nz)
        Microturbulence [m/s].
    B_x, B_y, B_z : ndarray (ncol, nz) or None
        Magnetic field [T]; z along the line of sight at mu = 1. None: no field
        (``has_B`` = 0).
    description : str
        Written as the file's ``description`` attribute.
    """

    z: np.ndarray
    temperature: np.ndarray
    electron_density: np.ndarray
    hydrogen: np.ndarray
    velocity_z: np.ndarray
    velocity_turbulent: np.ndarray
    B_x: np.ndarray | None = None
    B_y: np.ndarray | None = None
    B_z: np.ndarray | None = None
    description: str = ""

    COLUMNS = ("z", "temperature", "electron_density", "hydrogen", "velocity_z", "velocity_turbulent")
    FIELD = ("B_x", "B_y", "B_z")

    @property
    def ncol(self) -> int:
        """Number of columns."""
        return int(np.shape(self.z)[0])

    @property
    def nz(self) -> int:
        """Number of depth points."""
        return int(np.shape(self.z)[1])

    @property
    def has_B(self) -> bool:
        """Whether the field is given."""
        return self.B_x is not None

    def check(self, where: str = "RH atmosphere") -> None:
        """Raise RHError unless the arrays fit RH's rules (shapes, top first, positive densities).

        Raises
        ------
        RHError
            Naming the array, the expected and the actual shape or value.
        """
        z = np.asarray(self.z)
        if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 2:
            raise RHError(f"{where}: z has shape {z.shape}, expected (ncol, nz) with ncol >= 1 and nz >= 2")
        given = [f is not None for f in (self.B_x, self.B_y, self.B_z)]
        if any(given) and not all(given):
            raise RHError(f"{where}: give all of B_x, B_y, B_z or none of them (got {given})")
        names = self.COLUMNS + (self.FIELD if self.has_B else ())
        for name in names:
            a = np.asarray(getattr(self, name))
            if a.shape != z.shape:
                raise RHError(f"{where}: {name} has shape {a.shape}, expected {z.shape} like z (ncol, nz)")
            if not np.all(np.isfinite(a)):
                raise RHError(f"{where}: {name} holds NaN or inf; every value must be finite")
        if not np.all(np.diff(z, axis=1) < 0):
            raise RHError(
                f"{where}: z must decrease along the depth axis (RH wants the TOP of the atmosphere first, "
                "on a height grid); reverse the depth order"
            )
        for name in ("temperature", "electron_density", "hydrogen"):
            if not np.all(np.asarray(getattr(self, name)) > 0):
                raise RHError(f"{where}: {name} must be > 0 everywhere")


def write_atmosphere(path: str | Path, atmos: Atmosphere) -> Path:
    """Write ``atmos`` as an RH 1.5D atmosphere cube: one snapshot, nx = ncol columns, ny = 1.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    RHError
        The arrays break RH's rules (see :meth:`Atmosphere.check`).
    """
    import h5py

    atmos.check(f"RH atmosphere for {path}")
    path = Path(path)
    ncol, nz = atmos.ncol, atmos.nz

    def cube(a: np.ndarray) -> np.ndarray:
        return np.asarray(a, dtype=np.float64).reshape(1, ncol, 1, nz)

    with h5py.File(path, "w") as f:
        f.attrs["description"] = atmos.description or "written by stokesflow (backends.rh.io)"
        f.attrs["has_B"] = np.int64(1 if atmos.has_B else 0)
        f.attrs["nx"], f.attrs["ny"], f.attrs["nz"] = np.int64(ncol), np.int64(1), np.int64(nz)
        f.attrs["nhydr"] = np.int64(1)
        f.create_dataset("temperature", data=cube(atmos.temperature))
        f.create_dataset("velocity_z", data=cube(atmos.velocity_z))
        f.create_dataset("velocity_turbulent", data=cube(atmos.velocity_turbulent))
        f.create_dataset("electron_density", data=cube(atmos.electron_density))
        f.create_dataset("hydrogen_populations", data=np.asarray(atmos.hydrogen, dtype=np.float64).reshape(1, 1, ncol, 1, nz))
        f.create_dataset("z", data=cube(atmos.z))
        if atmos.has_B:
            for name in Atmosphere.FIELD:
                f.create_dataset(name, data=cube(getattr(atmos, name)))
        f.create_dataset("x", data=np.arange(ncol, dtype=np.float64))
        f.create_dataset("y", data=np.zeros(1, dtype=np.float64))
        f.create_dataset("snapshot_number", data=np.zeros(1, dtype=np.int32))
    return path


def read_atmosphere(path: str | Path, snapshot: int = 0) -> Atmosphere:
    """Read snapshot ``snapshot`` of an RH 1.5D atmosphere cube, columns in (x, y) row-major order.

    A z of shape (nt, nz) (one height grid per snapshot) is repeated for every
    column; hydrogen is the sum over the populations of all levels.

    Raises
    ------
    RHError
        A required array is missing or the snapshot is out of range.
    """
    import h5py

    path = Path(path)
    with h5py.File(path, "r") as f:
        missing = [n for n in ("temperature", "velocity_z", "hydrogen_populations", "z") if n not in f]
        if missing:
            raise RHError(f"RH atmosphere {path}: missing {missing}; not an RH 1.5D atmosphere file")
        nt, nx, ny, nz = f["temperature"].shape
        if not 0 <= snapshot < nt:
            raise RHError(f"RH atmosphere {path}: snapshot {snapshot} out of range, the file has {nt}")

        def col(name: str) -> np.ndarray:
            return np.asarray(f[name][snapshot], dtype=np.float64).reshape(nx * ny, nz)

        z = np.asarray(f["z"][snapshot], dtype=np.float64)
        z = np.broadcast_to(z, (nx * ny, nz)).copy() if z.ndim == 1 else z.reshape(nx * ny, nz)
        nh = np.asarray(f["hydrogen_populations"][snapshot], dtype=np.float64).sum(axis=0).reshape(nx * ny, nz)
        has_B = bool(np.asarray(f.attrs.get("has_B", 0)).ravel()[0])  # a scalar, or a 1-element array (netCDF-made files)
        desc = f.attrs.get("description", "")
        desc = desc.decode(errors="replace") if isinstance(desc, bytes) else str(desc)
        out = Atmosphere(
            z=z, temperature=col("temperature"),
            electron_density=col("electron_density") if "electron_density" in f else np.full((nx * ny, nz), np.nan),
            hydrogen=nh, velocity_z=col("velocity_z"),
            velocity_turbulent=col("velocity_turbulent") if "velocity_turbulent" in f else np.zeros((nx * ny, nz)),
            description=desc,
        )
        if has_B:
            out.B_x, out.B_y, out.B_z = col("B_x"), col("B_y"), col("B_z")
    return out


# ----------------------------------------------------------------- input files
def _value(v: object) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "TRUE" if v else "FALSE"
    if isinstance(v, float):
        return repr(v) if abs(v) < 1e5 and (v == 0 or abs(v) >= 1e-3) else f"{v:.6E}"
    return str(v)


def format_keywords(values: Mapping[str, object]) -> str:
    """Text of ``keyword.input``: one ``KEY = value`` line per entry (booleans as TRUE/FALSE).

    Raises
    ------
    RHError
        A key or value that RH's parser cannot read (empty, ``=`` or ``#`` in it, a line break).
    """
    out = ["# keyword.input written by stokesflow (backends.rh.io)"]
    for k, v in values.items():
        text = _value(v)
        if not k or any(c in k for c in " =#\n") or not text or any(c in text for c in "=#\n"):
            raise RHError(f"keyword.input: cannot write {k!r} = {text!r} (no spaces, '=', '#' or line breaks allowed)")
        out.append(f"  {k} = {text}")
    return "\n".join(out) + "\n"


def parse_keywords(text: str) -> dict[str, str]:
    """``KEY = value`` pairs of a ``keyword.input`` text (``#`` starts a comment).

    Raises
    ------
    RHError
        A non-comment line without ``=``.
    """
    out: dict[str, str] = {}
    for i, row in enumerate(text.splitlines()):
        row = row.split("#", 1)[0].strip()
        if not row:
            continue
        if "=" not in row:
            raise RHError(f"keyword.input line {i + 1}: expected 'KEY = value', got {row!r}")
        k, v = (s.strip() for s in row.split("=", 1))
        out[k] = v
    return out


def _rows(text: str) -> list[str]:
    return [r.strip() for r in text.splitlines() if r.strip() and not r.strip().startswith("#")]


@dataclass(frozen=True)
class AtomEntry:
    """One row of ``atoms.input``.

    Attributes
    ----------
    path : str
        Model atom file.
    active : bool
        Solved in NLTE (ACTIVE) or kept in LTE (PASSIVE).
    initial : str
        Initial solution (``ZERO_RADIATION``, ``LTE_POPULATIONS``, ``ESCAPE_PROBABILITY``, ...).
    pops_file : str
        Population output file name (RH requires one).
    """

    path: str
    active: bool = False
    initial: str = "LTE_POPULATIONS"
    pops_file: str = "pops.out"


def format_atoms(atoms: Sequence[AtomEntry]) -> str:
    """Text of ``atoms.input``."""
    if not atoms:
        raise RHError("atoms.input: at least the hydrogen atom is needed")
    out = ["# atoms.input written by stokesflow", f"  {len(atoms)}", "# model file  ACTIVE/PASSIVE  INITIAL_SOLUTION  population file"]
    for a in atoms:
        for s in (a.path, a.initial, a.pops_file):
            if not s or any(c.isspace() for c in s):
                raise RHError(f"atoms.input: {s!r} is empty or holds spaces (RH splits on white space); move the file")
        out.append(f"  {a.path}  {'ACTIVE' if a.active else 'PASSIVE'}  {a.initial}  {a.pops_file}")
    return "\n".join(out) + "\n"


def parse_atoms(text: str) -> list[AtomEntry]:
    """The rows of an ``atoms.input`` text.

    Raises
    ------
    RHError
        The count does not match the rows, or a row is short.
    """
    rows = _rows(text)
    try:
        n = int(rows[0])
    except (IndexError, ValueError):
        raise RHError(f"atoms.input: first value must be the number of atoms, got {rows[:1]}") from None
    out = []
    for r in rows[1:]:
        p = r.split()
        if len(p) < 3:
            raise RHError(f"atoms.input: row {r!r} needs file, ACTIVE/PASSIVE, initial solution [, population file]")
        out.append(AtomEntry(p[0], p[1].upper() == "ACTIVE", p[2], p[3] if len(p) > 3 else ""))
    if len(out) != n:
        raise RHError(f"atoms.input: says {n} atoms, lists {len(out)}")
    return out


def format_molecules(paths: Sequence[str]) -> str:
    """Text of ``molecules.input``: every molecule PASSIVE with LTE populations."""
    out = ["# molecules.input written by stokesflow", f"  {len(paths)}"]
    for p in paths:
        if any(c.isspace() for c in p):
            raise RHError(f"molecules.input: {p!r} holds spaces (RH splits on white space); move the file")
        out.append(f"  {p}  PASSIVE  LTE_POPULATIONS")
    return "\n".join(out) + "\n"


def parse_molecules(text: str) -> list[str]:
    """Molecule files of a ``molecules.input`` text."""
    rows = _rows(text)
    try:
        n = int(rows[0])
    except (IndexError, ValueError):
        raise RHError(f"molecules.input: first value must be the number of molecules, got {rows[:1]}") from None
    out = [r.split()[0] for r in rows[1:]]
    if len(out) != n:
        raise RHError(f"molecules.input: says {n} molecules, lists {len(out)}")
    return out


def format_ray(mu: float, detailed: Sequence[int] = ()) -> str:
    """Text of ``ray.input``: the output ray's mu and the wavelength indices with detailed output."""
    if not 0 < mu <= 1:
        raise RHError(f"ray.input: mu must be in (0, 1], got {mu}")
    second = " ".join(str(int(i)) for i in [len(detailed), *detailed])
    return f"{mu:.6f}\n{second}\n"


def parse_ray(text: str) -> tuple[float, list[int]]:
    """(mu, detailed wavelength indices) of a ``ray.input`` text."""
    rows = _rows(text)
    try:
        mu = float(rows[0].split()[0])
        nums = [int(x) for x in rows[1].split()]
    except (IndexError, ValueError):
        raise RHError(f"ray.input: expected a mu line and an 'Nsource [indices]' line, got {rows}") from None
    if len(nums) != nums[0] + 1:
        raise RHError(f"ray.input: Nsource {nums[0]} but {len(nums) - 1} indices")
    return mu, nums[1:]


def write_wavetable(path: str | Path, vacuum_nm: np.ndarray) -> Path:
    """Write an RH wavelength table: XDR int count, then the vacuum wavelengths [nm] as XDR doubles."""
    w = np.asarray(vacuum_nm, dtype=np.float64).ravel()
    if w.size == 0 or not np.all(np.isfinite(w)) or not np.all(w > 0):
        raise RHError(f"wavelength table {path}: need finite positive wavelengths [nm], got {w[:5]}...")
    path = Path(path)
    path.write_bytes(np.array([w.size], dtype=">i4").tobytes() + w.astype(">f8").tobytes())
    return path


def read_wavetable(path: str | Path) -> np.ndarray:
    """Vacuum wavelengths [nm] of an RH wavelength table (XDR)."""
    raw = Path(path).read_bytes()
    n = int(np.frombuffer(raw[:4], dtype=">i4")[0]) if len(raw) >= 4 else -1
    if n < 0 or len(raw) != 4 + 8 * n:
        raise RHError(f"wavelength table {path}: {len(raw)} bytes do not hold an XDR count and that many doubles")
    return np.frombuffer(raw[4:], dtype=">f8").astype(np.float64)


def air_to_vacuum(air_nm: np.ndarray) -> np.ndarray:
    """Vacuum wavelengths [nm] from air ones, with RH's own formula (``vacuumtoair.c``).

    RH converts a Kurucz line's air wavelength with this formula, so the
    observed grid converted the same way keeps each line where it was observed.
    Below :data:`AIR_TO_VACUUM_LIMIT` the value is unchanged.
    """
    a = np.asarray(air_nm, dtype=np.float64)
    sq = (1.0e7 / a) ** 2
    increase = 1.0000834213 + 2.406030e6 / (1.30e10 - sq) + 1.5997e4 / (3.89e9 - sq)
    return np.where(a >= AIR_TO_VACUUM_LIMIT, a * increase, a)


# ------------------------------------------------------------ Kurucz line list
@dataclass(frozen=True)
class KuruczLine:
    """One record of a Kurucz-format line list, as RH reads it (``kurucz.c``).

    Attributes
    ----------
    wavelength : float
        Air wavelength [nm] (above 200 nm).
    loggf : float
    Z : int
        Atomic number.
    charge : int
        0 for a neutral atom.
    E_low, E_up : float
        Level energies [cm^-1].
    J_low, J_up : float
    label_low, label_up : str
        Level labels whose last word ends in the LS term (``"5P"``): RH takes
        S and L from it for the Zeeman pattern and the Barklem broadening.
    log_gamma_rad, log_gamma_stark, log_gamma_vdw : float
        log10 damping constants (0: not given; RH then uses Barklem or Unsoeld).
    g_low, g_up : float
        Lande factors (informative; RH recomputes them from the labels).
    """

    wavelength: float
    loggf: float
    Z: int
    charge: int
    E_low: float
    J_low: float
    label_low: str
    E_up: float
    J_up: float
    label_up: str
    log_gamma_rad: float = 8.0
    log_gamma_stark: float = 0.0
    log_gamma_vdw: float = 0.0
    g_low: float = 0.0
    g_up: float = 0.0


def _put(buf: list[str], start: int, text: str) -> None:
    buf[start:start + len(text)] = list(text)


def format_kurucz(lines: Sequence[KuruczLine]) -> str:
    """Text of a Kurucz-format line list, fields at the offsets RH's ``kurucz.c`` reads.

    Raises
    ------
    RHError
        A value that does not fit its fixed-width field (a label over 10
        characters, an energy of 1e8 cm^-1 or more).
    """
    out = []
    for ln in lines:
        for lab in (ln.label_low, ln.label_up):
            if len(lab) > 10 or not lab.strip():
                raise RHError(f"Kurucz line {ln.wavelength} nm: label {lab!r} must be 1-10 characters")
        if max(ln.E_low, ln.E_up) >= 1e7 or min(ln.E_low, ln.E_up) < 0:
            raise RHError(f"Kurucz line {ln.wavelength} nm: level energies must be in [0, 1e7) cm^-1")
        b = [" "] * 153
        _put(b, 0, f"{ln.wavelength:10.4f}")
        _put(b, 10, f"{ln.loggf:7.3f}")
        _put(b, 17, f"{ln.Z + ln.charge / 100:6.2f}")
        _put(b, 23, f"{ln.E_low:12.3f}")
        _put(b, 35, f"{ln.J_low:5.1f}")
        _put(b, 41, f"{ln.label_low:<10s}")
        _put(b, 51, f"{ln.E_up:12.3f}")
        _put(b, 63, f"{ln.J_up:5.1f}")
        _put(b, 69, f"{ln.label_up:<10s}")
        _put(b, 79, f"{ln.log_gamma_rad:6.2f}{ln.log_gamma_stark:6.2f}{ln.log_gamma_vdw:6.2f}")
        _put(b, 97, "STKF")
        _put(b, 101, " 0 0")  # NLTE level indices
        _put(b, 105, "  0 0.000  0 0.000    0    0")  # isotope, its log fraction, hyperfine, shifts
        _put(b, 143, f"{round(ln.g_low * 1000):5d}{round(ln.g_up * 1000):5d}")
        out.append("".join(b))
    return "\n".join(out) + "\n"


def parse_kurucz(text: str) -> list[KuruczLine]:
    """Records of a Kurucz-format line list, read at RH's offsets (``#`` lines skipped).

    Raises
    ------
    RHError
        A record shorter than 153 characters or with a field that is not a number.
    """
    out = []
    for i, r in enumerate(text.splitlines()):
        if not r.strip() or r.startswith("#"):
            continue
        if len(r) < 153:
            raise RHError(f"Kurucz line list record {i + 1} has {len(r)} characters, RH reads 153")
        try:
            wl, loggf, code, e_low = r[:35].split()[:4]
            zi, _, ch = code.partition(".")
            gr, gs, gv = (float(x) for x in r[79:97].split())
            out.append(KuruczLine(
                wavelength=float(wl), loggf=float(loggf), Z=int(zi), charge=int(ch or 0), E_low=float(e_low),
                J_low=float(r[35:41]), label_low=r[41:51].strip(), E_up=float(r[51:63]), J_up=float(r[63:69]),
                label_up=r[69:79].strip(), log_gamma_rad=gr, log_gamma_stark=gs, log_gamma_vdw=gv,
                g_low=int(r[143:148]) / 1000, g_up=int(r[148:153]) / 1000,
            ))
        except ValueError as exc:
            raise RHError(f"Kurucz line list record {i + 1}: {exc}; expected the Kurucz fixed-width format") from None
    return out


def kurucz_line(line: ClassicalLine, log_gamma_rad: float = 8.0) -> KuruczLine:
    """The Kurucz record of one of the project's lines (LTE, Zeeman pattern from its LS terms).

    Energies: the lower level from the excitation potential, the upper one
    from it plus the line's vacuum wavenumber (RH's air-to-vacuum formula).
    Collisional broadening is left to RH (Barklem tables for s-p, p-d, d-f
    transitions, Unsoeld otherwise); radiative damping is ``10**log_gamma_rad``
    [s^-1] (1e8 s^-1, as for the Lightweaver backend).
    """
    e_low = line.excitation * EV_TO_CM1
    vac = float(air_to_vacuum(np.array([line.wavelength / 10.0]))[0])
    e_up = e_low + 1.0e7 / vac
    m_lo, l_lo, j_lo = term_fields(line.lower)
    m_up, l_up, j_up = term_fields(line.upper)
    return KuruczLine(
        wavelength=line.wavelength / 10.0, loggf=line.loggf, Z=line.element.Z, charge=line.stage - 1,
        E_low=e_low, J_low=j_lo, label_low=f"{m_lo}{l_lo}",
        E_up=e_up, J_up=j_up, label_up=f"{m_up}{l_up}", log_gamma_rad=log_gamma_rad,
        g_low=line.lower.lande, g_up=line.upper.lande,
    )


def parse_abundances(text: str) -> dict[str, float]:
    """RH abundance file (``SYMBOL  log10(N/N_H) + 12`` rows, ``#`` comments): symbol (upper case) -> abundance."""
    out: dict[str, float] = {}
    for r in _rows(text):
        p = r.split("#", 1)[0].split()
        if len(p) < 2:
            continue
        try:
            out[p[0].upper()] = float(p[1])
        except ValueError:
            raise RHError(f"RH abundance file: cannot read row {r!r}; expected 'SYMBOL value'") from None
    if "H" not in out:
        raise RHError("RH abundance file: no row for H")
    return out


# ---------------------------------------------------------------------- output
@dataclass
class RHOutput:
    """What an RH 1.5D run wrote.

    Attributes
    ----------
    wavelength : ndarray (nwave,)
        [nm], vacuum unless the run set VACUUM_TO_AIR.
    stokes : ndarray (nx, ny, 4, nwave)
        I, Q, U, V [W m^-2 Hz^-1 sr^-1]; NaN where RH left its fill value
        (columns not converged, crashed or not run). Q, U, V are 0 when the
        run had no field.
    convergence : ndarray (nx, ny), int
        1 converged, 0 not converged, -1 crashed, -2 not run (fill value).
    iterations : ndarray (nx, ny), int
        NLTE iterations (-1 where not run).
    xnum, ynum : ndarray (nx,), (ny,), int
        Atmosphere-file indices of the output's x and y.
    """

    wavelength: np.ndarray
    stokes: np.ndarray
    convergence: np.ndarray
    iterations: np.ndarray
    xnum: np.ndarray
    ynum: np.ndarray


def _unfill(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return np.where(np.abs(a) >= 0.5 * FILL_VALUE, np.nan, a)


def read_output(folder: str | Path) -> RHOutput:
    """Read ``output/output_ray.hdf5`` and the convergence map of ``output/output_indata.hdf5``.

    Raises
    ------
    RHError
        A file or array is missing or the shapes disagree.
    """
    import h5py

    folder = Path(folder)
    ray, ind = folder / RAY_FILE, folder / INDATA_FILE
    for p in (ray, ind):
        if not p.is_file():
            raise RHError(f"RH output {p} is missing; the run did not finish")
    try:
        with h5py.File(ind, "r") as f:
            g = f["mpi"]
            conv = np.asarray(g["convergence"][...])
            itr = np.asarray(g["iterations"][...])
            xnum = np.asarray(g["xnum"][...], dtype=np.int64)
            ynum = np.asarray(g["ynum"][...], dtype=np.int64)
        with h5py.File(ray, "r") as f:
            wl = np.asarray(f["wavelength"][...], dtype=np.float64)
            inten = _unfill(f["intensity"][...])
            quv = [_unfill(f[k][...]) if k in f else np.zeros_like(inten) for k in ("stokes_Q", "stokes_U", "stokes_V")]
    except KeyError as exc:
        raise RHError(f"RH output in {folder / 'output'}: missing {exc}; not RH 1.5D output files") from None
    except OSError as exc:
        raise RHError(f"RH output in {folder / 'output'} cannot be read: {exc}") from None
    conv = np.asarray(conv, dtype=np.float64)
    filled = ~np.isfinite(conv) | (np.abs(conv) >= 0.5 * FILL_VALUE)
    convergence = np.where(filled, -2, conv).astype(np.int64)
    itr = np.asarray(itr, dtype=np.float64)
    iterations = np.where(~np.isfinite(itr) | (np.abs(itr) >= 0.5 * FILL_VALUE), -1, itr).astype(np.int64)
    stokes = np.stack([inten, *quv], axis=2)
    if stokes.shape[:2] != convergence.shape or stokes.shape[3] != wl.size:
        raise RHError(
            f"RH output in {folder / 'output'}: intensity has shape {inten.shape}, convergence {convergence.shape}, "
            f"wavelength {wl.shape}; they do not fit (nx, ny, nwave)"
        )
    return RHOutput(wl, stokes, convergence, iterations, xnum, ynum)
