"""STiC's file formats: pure writers and parsers (no process is run here).

STiC (de la Cruz Rodriguez et al. 2016, 2019; github.com/jaimedelacruz/stic)
reads fixed file names in its working folder:

- ``input.cfg``: ``key = value`` lines (``#`` comments); ``region = w0, dw,
  nw, cscal, instrument, file`` lines, appended one after the other, define
  the wavelength grid: ``nw`` points from ``w0`` [A, air] in steps of ``dw``
  [A] (STiC adds the steps to the air wavelength, ``input.cc: fill_lambdas``),
  with the intensity unit ``cscal`` [erg s^-1 cm^-2 sr^-1 Hz^-1]: profiles are
  read and written divided by it;
- ``lines.cfg``: the LTE line list (``atmosphere_type = lte``): label, element,
  ion, Z, wavelength [A, air], log gf, J_low, J_up, g_low, g_up, E_low [eV],
  log gamma_rad, log gamma_Stark, van der Waals (``sigma.alpha`` Barklem
  packing above 20, else log gamma_6) and the half-width [A] within which the
  line is computed; only lines named by ``lines = a, b`` in ``input.cfg`` are
  used (``input.cc: read_lines``);
- the model atmosphere and the observed profiles as netCDF files
  (``sparsetools.py``'s layout): ``temp, vlos, vturb, blong, bhor, azi,
  ltau500, pgas, [nne, rho, z]`` of shape (time, y, x, ndep) with the first
  depth at the TOP, in CGS units (K, cm/s, G, radians, dyn cm^-2);
  ``profiles`` (time, y, x, wav, stokes), ``wav`` (wav,) [A, air],
  ``weights`` (wav, stokes) (the noise sigma of each point in units of
  ``cscal``; a huge value removes a point) and ``pixel_weights`` (time, y, x).

A chunk of ``npix`` pixels is one row of such a cube: y = 1, x = npix. The
inputs are written as netCDF-3 (``scipy.io.netcdf_file``; the netCDF library
STiC links reads them); STiC writes netCDF-4, which is HDF5 and read with
h5py. :func:`read_netcdf` reads either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from stokesflow.backends.sir.atomic import ClassicalLine
from stokesflow.backends.stic.errors import STiCError

__all__ = [
    "INPUT_CFG",
    "LINES_CFG",
    "MODEL_IN",
    "PROFILES_IN",
    "PROFILES_OUT",
    "ATMOS_OUT",
    "HUGE_SIGMA",
    "Region",
    "format_region",
    "parse_region",
    "regions_for_grid",
    "region_wavelengths",
    "format_input_cfg",
    "parse_input_cfg",
    "STiCLine",
    "stic_line",
    "format_lines_cfg",
    "parse_lines_cfg",
    "STiCModel",
    "write_model",
    "read_model",
    "write_profiles",
    "read_profiles",
    "read_netcdf",
]

#: Fixed input file name STiC reads (``main_sparse.cc``).
INPUT_CFG = "input.cfg"
#: Fixed LTE line-list file name STiC reads (``master_sparse.cc``).
LINES_CFG = "lines.cfg"
#: Names this package gives the other files (input.cfg names them).
MODEL_IN = "modelin.nc"
PROFILES_IN = "observed.nc"
PROFILES_OUT = "synthetic.nc"
ATMOS_OUT = "atmosout.nc"
#: Noise sigma STiC's own example gives the points it should ignore (weight ~ 0).
HUGE_SIGMA = 1.0e16


# ------------------------------------------------------------------ regions
@dataclass(frozen=True)
class Region:
    """One ``region`` line of ``input.cfg``.

    Attributes
    ----------
    w0 : float
        First wavelength [A, air].
    dw : float
        Step [A].
    nw : int
        Number of points.
    cscal : float
        Intensity unit of the profiles of this region [erg s^-1 cm^-2 sr^-1 Hz^-1].
    instrument : str
        ``"none"`` or STiC's instrumental degradation (``"fpi"``, ...).
    ifile : str
        The instrumental profile file (``"none"`` without one).
    """

    w0: float
    dw: float
    nw: int
    cscal: float = 1.0
    instrument: str = "none"
    ifile: str = "none"


def format_region(r: Region) -> str:
    """``region = w0, dw, nw, cscal, instrument, file`` (full double precision)."""
    if r.nw < 1 or not (math.isfinite(r.w0) and math.isfinite(r.dw) and r.cscal > 0):
        raise STiCError(f"input.cfg: region {r} needs nw >= 1, finite w0/dw and cscal > 0")
    return f"region = {r.w0!r}, {r.dw!r}, {int(r.nw)}, {r.cscal!r}, {r.instrument}, {r.ifile}"


def parse_region(value: str) -> Region:
    """The :class:`Region` of a ``region`` value (the text after ``=``)."""
    p = [s.strip() for s in value.split(",")]
    try:
        if len(p) == 6:
            return Region(float(p[0]), float(p[1]), int(p[2]), float(p[3]), p[4], p[5])
        if len(p) == 4:
            return Region(float(p[0]), float(p[1]), int(p[2]), float(p[3]))
    except ValueError:
        pass
    raise STiCError(f"input.cfg: region {value!r}: expected 'w0, dw, nw, cscal[, instrument, file]'")


def regions_for_grid(wavelength: np.ndarray, cscal: float | Sequence[float] = 1.0, *,
                     rtol: float = 1e-4) -> list[Region]:
    """The fewest regions that reproduce an observed grid (equidistant runs).

    STiC's grid is a sequence of equidistant regions; an observed grid is cut
    where its step changes by more than ``rtol`` of the step (a point left
    alone becomes a one-point region).

    Parameters
    ----------
    wavelength : ndarray (nw,)
        Increasing air wavelengths [A].
    cscal : float or sequence
        Intensity unit; one value, or one per point (the first point of each
        region gives the region's).

    Raises
    ------
    STiCError
        The grid is not increasing or not finite.
    """
    w = np.asarray(wavelength, dtype=float).ravel()
    if w.size == 0 or not np.all(np.isfinite(w)) or np.any(np.diff(w) <= 0):
        raise STiCError(f"wavelength grid for STiC must be finite and increasing, got {w[:6]}...")
    cs = np.broadcast_to(np.asarray(cscal, dtype=float), w.shape)
    out: list[Region] = []
    i = 0
    while i < w.size:
        j = i
        if i + 1 < w.size:
            step = w[i + 1] - w[i]
            j = i + 1
            while j + 1 < w.size and abs((w[j + 1] - w[j]) - step) <= rtol * step:
                j += 1
        n = j - i + 1
        dw = float(w[i + 1] - w[i]) if n > 1 else 0.01
        out.append(Region(float(w[i]), dw, n, float(cs[i])))
        i = j + 1
    return out


def region_wavelengths(regions: Sequence[Region]) -> np.ndarray:
    """The air wavelengths [A] of the regions, in order (STiC's grid)."""
    if not regions:
        return np.zeros(0)
    return np.concatenate([r.w0 + r.dw * np.arange(r.nw) for r in regions])


# ---------------------------------------------------------------- input.cfg
def _cfg_value(key: str, v: object) -> str:
    if isinstance(v, (bool, np.bool_)):
        text = "1" if v else "0"
    elif isinstance(v, (list, tuple, np.ndarray)):
        text = ", ".join(_cfg_value(key, x) for x in v)
    elif isinstance(v, float):
        text = repr(v)
    else:
        text = str(v)
    if not text or any(c in text for c in "=#\n"):
        raise STiCError(f"input.cfg: cannot write {key} = {text!r} (no '=', '#' or line breaks allowed)")
    return text


def format_input_cfg(values: Mapping[str, object], regions: Sequence[Region]) -> str:
    """Text of ``input.cfg``: one ``key = value`` line per entry, then the region lines.

    Lists become comma-separated values (``nodes_temp = -4, -2, 0`` gives node
    positions; a single integer gives that many equidistant nodes), booleans 1/0.

    Raises
    ------
    STiCError
        A key with spaces, ``=`` or ``#``; a value with ``=``, ``#`` or a line
        break; no region.
    """
    if not regions:
        raise STiCError("input.cfg: at least one region is needed (the wavelength grid)")
    out = ["# input.cfg written by stokesflow (backends.stic.io)"]
    for k, v in values.items():
        if not k or any(c in k for c in " =#\n") or k == "region":
            raise STiCError(f"input.cfg: cannot write key {k!r} (regions go in `regions`)")
        out.append(f"{k} = {_cfg_value(k, v)}")
    out.extend(format_region(r) for r in regions)
    return "\n".join(out) + "\n"


def parse_input_cfg(text: str) -> tuple[dict[str, str], list[Region]]:
    """(``key -> value`` text, regions) of an ``input.cfg`` text.

    STiC strips every space from keys and values; so does this parser for
    keys, and for values it strips only the ends (``region`` values are split
    on commas).
    """
    values: dict[str, str] = {}
    regions: list[Region] = []
    for row in text.splitlines():
        row = row.split("#", 1)[0].strip()
        if not row or "=" not in row:
            continue
        k, v = row.split("=", 1)
        k, v = k.replace(" ", ""), v.strip()
        if k == "region":
            regions.append(parse_region(v))
        else:
            values[k] = v
    return values, regions


# ----------------------------------------------------------------- lines.cfg
@dataclass(frozen=True)
class STiCLine:
    """One row of ``lines.cfg`` (STiC's LTE line list).

    Attributes
    ----------
    label : str
        Name (``"FeI_6302"``); ``input.cfg``'s ``lines`` selects by it.
    element : str
        Chemical symbol.
    ion : int
        Ionisation stage, 1 = neutral.
    Z : int
        Atomic number.
    wavelength : float
        [A, air].
    loggf : float
    j_low, j_up, g_low, g_up : float
        Total angular momenta and Lande factors of the levels.
    e_low : float
        Lower-level excitation [eV].
    log_gamma_rad : float
        log10 radiative damping [s^-1]; 0 lets STiC estimate it (Gray 2005 eq. 11.13).
    log_gamma_stark : float
        log10 Stark damping per electron at 10^4 K; 0 for none.
    vdw : float
        Barklem ``sigma.alpha`` (sigma [a0^2] in the integer part, alpha in
        the fraction; used when >= 20), else log10 gamma_6 (0: none).
    width : float
        Half-width [A] around the line centre where the line is computed.
    """

    label: str
    element: str
    ion: int
    Z: int
    wavelength: float
    loggf: float
    j_low: float
    j_up: float
    g_low: float
    g_up: float
    e_low: float
    log_gamma_rad: float = 0.0
    log_gamma_stark: float = 0.0
    vdw: float = 0.0
    width: float = 2.0


def stic_line(line: ClassicalLine, *, width: float = 2.0, log_gamma_rad: float = 8.0,
              log_gamma_stark: float = 0.0) -> STiCLine:
    """The ``lines.cfg`` row of a line of the project's tables.

    Radiative damping 10**``log_gamma_rad`` [s^-1] (1e8 s^-1, as the RH and
    Lightweaver backends write it); no Stark damping unless given.
    The ABO cross-section and exponent become STiC's Barklem packing
    ``int(sigma) + alpha`` (RH and STiC read ``sigma.alpha`` this way); a line
    without ABO data gets 0 (no van der Waals broadening: give it in the atomic table).
    """
    vdw = float(int(round(line.sigma))) + line.alpha if line.sigma >= 20.0 else 0.0
    return STiCLine(
        label=line.name, element=line.element.symbol, ion=line.stage, Z=line.element.Z,
        wavelength=line.wavelength, loggf=line.loggf, j_low=float(line.lower.J), j_up=float(line.upper.J),
        g_low=float(line.lower.lande), g_up=float(line.upper.lande), e_low=line.excitation,
        log_gamma_rad=log_gamma_rad, log_gamma_stark=log_gamma_stark, vdw=vdw, width=width,
    )


def format_lines_cfg(lines: Sequence[STiCLine]) -> str:
    """Text of ``lines.cfg``: a comment header, then one white-space separated row per line."""
    out = ["# Label Elem ion anum wav loggf j_low j_up g_low g_up e_low gam_rad gam_strk vdW/Bark width"]
    for ln in lines:
        if not ln.label or any(c.isspace() for c in ln.label) or ln.label.startswith("#"):
            raise STiCError(f"lines.cfg: label {ln.label!r} is empty, holds spaces or starts with '#'")
        out.append(
            f"{ln.label} {ln.element} {ln.ion:d} {ln.Z:d} {ln.wavelength:.6f} {ln.loggf:.4f} "
            f"{ln.j_low:.1f} {ln.j_up:.1f} {ln.g_low:.6f} {ln.g_up:.6f} {ln.e_low:.6f} "
            f"{ln.log_gamma_rad:.4f} {ln.log_gamma_stark:.4f} {ln.vdw:.6f} {ln.width:.4f}"
        )
    return "\n".join(out) + "\n"


def parse_lines_cfg(text: str) -> list[STiCLine]:
    """The rows of a ``lines.cfg`` text (blank and ``#`` rows skipped).

    Raises
    ------
    STiCError
        A row with fewer than 15 fields or a field that is not a number.
    """
    out = []
    for i, row in enumerate(text.splitlines()):
        if not row.strip() or row.lstrip().startswith("#"):
            continue
        p = row.split()
        if len(p) < 15:
            raise STiCError(f"lines.cfg row {i + 1}: expected 15 fields (label ... width), got {len(p)}: {row!r}")
        try:
            out.append(STiCLine(p[0], p[1], int(p[2]), int(p[3]), *(float(x) for x in p[4:15])))
        except ValueError:
            raise STiCError(f"lines.cfg row {i + 1}: a field is not a number: {row!r}") from None
    return out


# -------------------------------------------------------------- netCDF files
def read_netcdf(path: str | Path) -> dict[str, np.ndarray]:
    """Every variable of a netCDF file (netCDF-4/HDF5 via h5py, netCDF-3 via scipy).

    Raises
    ------
    STiCError
        The file is missing or neither format.
    """
    path = Path(path)
    if not path.is_file():
        raise STiCError(f"netCDF file {path} does not exist")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic.startswith(b"\x89HDF"):
        import h5py

        out: dict[str, np.ndarray] = {}
        with h5py.File(path, "r") as f:
            for k, v in f.items():
                if isinstance(v, h5py.Dataset) and v.shape != () and "CLASS" not in v.attrs:
                    out[k] = np.asarray(v[()])
                elif isinstance(v, h5py.Dataset) and v.attrs.get("CLASS") == b"DIMENSION_SCALE" \
                        and "NAME" in v.attrs and not bytes(v.attrs["NAME"]).startswith(b"This is a netCDF dimension"):
                    out[k] = np.asarray(v[()])  # a coordinate variable (e.g. wav)
        return out
    if magic.startswith(b"CDF"):
        from scipy.io import netcdf_file

        with netcdf_file(path, "r", mmap=False) as f:
            return {k: np.array(v[:]) for k, v in f.variables.items()}
    raise STiCError(f"{path} is not a netCDF file (first bytes {magic!r})")


def _write_netcdf(path: Path, dims: Sequence[tuple[str, int | None]],
                  variables: Sequence[tuple[str, str, tuple[str, ...], np.ndarray]]) -> Path:
    from scipy.io import netcdf_file

    with netcdf_file(path, "w", version=2) as f:
        for name, size in dims:
            f.createDimension(name, size)
        for name, typ, d, arr in variables:
            v = f.createVariable(name, typ, d)
            v[:] = arr
    return path


@dataclass
class STiCModel:
    """Model-atmosphere columns in STiC's units, first depth index at the TOP.

    Every array has shape (npix, ndep). ``ltau500`` is log10 tau_500; ``temp``
    K; ``pgas`` dyn cm^-2 (STiC takes the boundary value at the top and puts
    the rest in hydrostatic equilibrium); ``vlos`` and ``vturb`` cm/s;
    ``blong`` and ``bhor`` G; ``azi`` rad; ``nne`` cm^-3, ``rho`` g cm^-3,
    ``z`` cm (outputs; zero or absent in an input).
    """

    ltau500: np.ndarray
    temp: np.ndarray
    pgas: np.ndarray
    vlos: np.ndarray
    vturb: np.ndarray
    blong: np.ndarray
    bhor: np.ndarray
    azi: np.ndarray
    nne: np.ndarray | None = None
    rho: np.ndarray | None = None
    z: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    REQUIRED = ("ltau500", "temp", "pgas", "vlos", "vturb", "blong", "bhor", "azi")
    OPTIONAL = ("nne", "rho", "z")

    def __post_init__(self) -> None:
        shape = np.shape(self.temp)
        if len(shape) != 2:
            raise STiCError(f"STiCModel.temp has shape {shape}, expected (npix, ndep)")
        for n in self.REQUIRED + self.OPTIONAL:
            a = getattr(self, n)
            if a is None:
                continue
            a = np.asarray(a, dtype=float)
            if a.shape != shape:
                raise STiCError(f"STiCModel.{n} has shape {a.shape}, expected {shape} like temp (npix, ndep)")
            setattr(self, n, a)

    @property
    def npix(self) -> int:
        """Number of columns."""
        return int(np.shape(self.temp)[0])

    @property
    def ndep(self) -> int:
        """Number of depth points."""
        return int(np.shape(self.temp)[1])

    def select(self, idx: Sequence[int] | np.ndarray) -> "STiCModel":
        """The columns ``idx``."""
        kw = {n: (None if getattr(self, n) is None else np.asarray(getattr(self, n))[idx])
              for n in self.REQUIRED + self.OPTIONAL}
        return STiCModel(**kw)


def write_model(path: str | Path, model: STiCModel) -> Path:
    """Write a model as STiC's netCDF atmosphere (time = 1, y = 1, x = npix, ndep).

    Raises
    ------
    STiCError
        Non-finite values, or a depth scale that does not increase downwards.
    """
    path = Path(path)
    for n in STiCModel.REQUIRED:
        if not np.all(np.isfinite(getattr(model, n))):
            raise STiCError(f"model {path.name}: {n} holds NaN or inf; give finite values for every column")
    if np.any(np.diff(model.ltau500, axis=1) <= 0):
        raise STiCError(f"model {path.name}: ltau500 must increase with the depth index (top first, as STiC reads it)")
    shape = (1, 1, model.npix, model.ndep)
    names = [n for n in STiCModel.REQUIRED + STiCModel.OPTIONAL if getattr(model, n) is not None]
    variables = [(n, "f8", ("time", "y", "x", "ndep"), np.asarray(getattr(model, n), dtype=float).reshape(shape))
                 for n in names]
    return _write_netcdf(path, [("time", None), ("y", 1), ("x", model.npix), ("ndep", model.ndep)], variables)


def read_model(path: str | Path) -> STiCModel:
    """A STiC model file (its first time step, every pixel of every row) as (npix, ndep) columns.

    Raises
    ------
    STiCError
        A required variable is missing (the message lists those present).
    """
    v = read_netcdf(path)
    missing = [n for n in ("ltau500", "temp") if n not in v]
    if missing:
        raise STiCError(f"STiC model {path}: missing {missing}; it has {sorted(v)}")
    temp = v["temp"]
    if temp.ndim == 4:
        temp = temp[0]
    ny, nx, nd = temp.shape

    def col(name: str) -> np.ndarray | None:
        if name not in v:
            return None
        a = np.asarray(v[name], dtype=float)
        return (a[0] if a.ndim == 4 else a).reshape(ny * nx, nd)

    kw = {n: col(n) for n in STiCModel.REQUIRED + STiCModel.OPTIONAL}
    for n in STiCModel.REQUIRED:
        if kw[n] is None:
            kw[n] = np.zeros((ny * nx, nd))
    return STiCModel(**kw)


def write_profiles(path: str | Path, wavelength: np.ndarray, profiles: np.ndarray,
                   sigma: np.ndarray | None = None) -> Path:
    """Write observed profiles as STiC's netCDF profiles file.

    Parameters
    ----------
    wavelength : ndarray (nw,)
        [A, air].
    profiles : ndarray (npix, 4, nw)
        I, Q, U, V in units of the regions' ``cscal`` (the project's layout;
        STiC's is (wav, stokes), transposed here).
    sigma : ndarray (nw, 4), optional
        Noise sigma per point and Stokes parameter (STiC's ``weights``);
        :data:`HUGE_SIGMA` removes a point. Default 3e-3 (STiC's own default).
    """
    path = Path(path)
    prof = np.asarray(profiles, dtype=float)
    wl = np.asarray(wavelength, dtype=float).ravel()
    if prof.ndim != 3 or prof.shape[1] != 4 or prof.shape[2] != wl.size:
        raise STiCError(f"profiles {path.name}: shape {prof.shape}, expected (npix, 4, {wl.size})")
    w = np.full((wl.size, 4), 3.0e-3) if sigma is None else np.asarray(sigma, dtype=float)
    if w.shape != (wl.size, 4) or not np.all(w > 0):
        raise STiCError(f"profiles {path.name}: sigma has shape {w.shape}, expected ({wl.size}, 4) with values > 0")
    npix = prof.shape[0]
    data = np.transpose(prof, (0, 2, 1)).reshape(1, 1, npix, wl.size, 4)
    return _write_netcdf(
        path, [("time", None), ("y", 1), ("x", npix), ("wav", wl.size), ("stokes", 4)],
        [("profiles", "f8", ("time", "y", "x", "wav", "stokes"), data),
         ("wav", "f8", ("wav",), wl),
         ("weights", "f8", ("wav", "stokes"), w),
         ("pixel_weights", "f8", ("time", "y", "x"), np.ones((1, 1, npix)))],
    )


def read_profiles(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(wavelength (nw,) [A, air], profiles (npix, 4, nw), sigma (nw, 4) or None) of a profiles file.

    Raises
    ------
    STiCError
        No ``profiles`` variable, or its shape is not (time, y, x, wav, 4).
    """
    v = read_netcdf(path)
    if "profiles" not in v:
        raise STiCError(f"STiC profiles file {path}: no 'profiles' variable; it has {sorted(v)}")
    p = np.asarray(v["profiles"], dtype=float)
    if p.ndim == 5:
        p = p[0]
    if p.ndim != 4 or p.shape[-1] != 4:
        raise STiCError(f"STiC profiles file {path}: 'profiles' has shape {v['profiles'].shape}, expected (time, y, x, wav, 4)")
    ny, nx, nw, _ = p.shape
    prof = np.transpose(p.reshape(ny * nx, nw, 4), (0, 2, 1))
    wl = np.asarray(v.get("wav", np.full(nw, np.nan)), dtype=float)
    return wl, prof, (np.asarray(v["weights"], dtype=float) if "weights" in v else None)

