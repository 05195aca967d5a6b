"""Checks every opener shares: axis declarations, wavelength grids, metadata, reader options.

Each function raises :class:`~stokesflow.orchestrator.errors.ObservationError`
with the file, the value, what was expected and the fix, naming both the
Python keyword (``axes=``, ``reader_options={'order': ...}``) and the command
line flag (``--axes``, ``-R order=...``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from stokesflow.orchestrator.errors import ObservationError

__all__ = [
    "CANONICAL_AXES",
    "SPECTRAL_INSTRUMENTS",
    "check_filters",
    "check_wavelength",
    "finish_meta",
    "lines_str",
    "noise_value",
    "option_bool",
    "option_float",
    "option_pair",
    "parse_axes",
    "parse_wavelength",
    "plain",
    "reject_unknown_options",
]

#: Axis order of the contract and of everything an Observation returns.
CANONICAL_AXES: tuple[str, ...] = ("y", "x", "stokes", "wave")

#: Values of the ``spectral_instrument`` attribute (the ME backend's instrument kinds).
SPECTRAL_INSTRUMENTS: tuple[str, ...] = ("grid", "psf", "hmi_filters", "filters")

_AXIS_ALIASES = {
    "y": "y", "row": "y", "rows": "y",
    "x": "x", "col": "x", "cols": "x", "slit": "x",
    "stokes": "stokes", "s": "stokes", "pol": "stokes", "iquv": "stokes",
    "wave": "wave", "w": "wave", "wavelength": "wave", "lambda": "wave", "wl": "wave",
}

# Absolute wavelengths of solar spectropolarimetry lie between the UV (Mg II,
# 2800 A) and the far IR (12 micron Mg I): anything outside is a unit slip.
_WAVE_MIN_A = 1000.0
_WAVE_MAX_A = 1.0e6

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# --------------------------------------------------------------------------- #
# Axes and wavelengths
# --------------------------------------------------------------------------- #
def parse_axes(axes: str | Sequence[str], *, where: str = "axes") -> tuple[str, ...]:
    """Parse an axis declaration such as ``"stokes,wave,y,x"``.

    Parameters
    ----------
    axes : str or sequence of str
        Four names separated by commas or spaces, each of ``y``, ``x``,
        ``stokes`` (``s``, ``pol``), ``wave`` (``w``, ``wavelength``,
        ``lambda``), each exactly once.
    where : str
        Context for the error message.

    Returns
    -------
    tuple of str
        The canonical names, in the stored order.
    """
    items = re.split(r"[\s,;]+", axes.strip()) if isinstance(axes, str) else [str(a) for a in axes]
    items = [a for a in (i.strip().lower() for i in items) if a]
    names = []
    for item in items:
        if item not in _AXIS_ALIASES:
            raise ObservationError(
                f"{where}: unknown axis name {item!r} in axes={axes!r} (--axes); use the four names y, x, "
                f"stokes, wave (e.g. --axes y,x,stokes,wave or --axes stokes,wave,y,x)"
            )
        names.append(_AXIS_ALIASES[item])
    if sorted(names) != sorted(CANONICAL_AXES):
        raise ObservationError(
            f"{where}: axes={axes!r} (--axes) must name each of y, x, stokes, wave exactly once "
            f"(got {names}); e.g. --axes y,x,stokes,wave"
        )
    return tuple(names)


def parse_wavelength(
    spec: Any, nw: int, *, where: str = "wavelength", relative_to: str | None = None
) -> np.ndarray:
    """Turn a wavelength declaration into a float64 array (not yet validated).

    Parameters
    ----------
    spec : array_like, str or os.PathLike
        An array of ``nw`` values in Angstrom; a path to a ``.npy`` file or a
        text file (whitespace- or comma-separated numbers); or the string
        ``"start:step"`` (Angstrom), meaning ``start + step * arange(nw)``.
    nw : int
        Length of the wave axis of the cube.
    where : str
        Context for the error message.
    relative_to : str, optional
        Directory against which a relative file name is tried as well.

    Returns
    -------
    numpy.ndarray
        float64 array.
    """
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        m = re.fullmatch(r"\s*([-+0-9.eE]+)\s*:\s*([-+0-9.eE]+)\s*", text)
        if m and not os.path.exists(text):
            try:
                start, step = float(m.group(1)), float(m.group(2))
            except ValueError:
                raise ObservationError(f"{where}: cannot read 'start:step' from {text!r} (--wavelength)") from None
            return start + step * np.arange(nw, dtype=np.float64)
        candidates = [text]
        if relative_to and not os.path.isabs(text):
            candidates.append(os.path.join(relative_to, text))
        for cand in candidates:
            if os.path.isfile(cand):
                try:
                    if cand.lower().endswith(".npy"):
                        return np.asarray(np.load(cand, allow_pickle=False), dtype=np.float64)
                    with open(cand) as fh:
                        numbers = [float(t) for t in re.split(r"[\s,;]+", fh.read()) if t]
                    return np.asarray(numbers, dtype=np.float64)
                except ValueError as exc:
                    raise ObservationError(
                        f"{where}: cannot read wavelengths from {cand}: {exc}; expected a .npy array or a "
                        f"text file of numbers in Angstrom"
                    ) from None
        raise ObservationError(
            f"{where}: wavelength={text!r} (--wavelength) is neither 'start:step' (Angstrom) nor an existing "
            f".npy/.txt file"
        )
    try:
        return np.asarray(spec, dtype=np.float64)
    except (TypeError, ValueError):
        raise ObservationError(f"{where}: cannot turn {type(spec).__name__} into wavelengths") from None


def check_wavelength(wl: Any, nw: int, *, where: str, what: str = "/wavelength") -> tuple[np.ndarray, bool]:
    """Validate a wavelength grid against the cube's wave axis.

    Parameters
    ----------
    wl : array_like
        The grid, Angstrom.
    nw : int
        Length of the cube's wave axis.
    where, what : str
        The file and the array, for the error message.

    Returns
    -------
    grid : numpy.ndarray
        float64, strictly increasing, read-only.
    flipped : bool
        True when the stored grid was decreasing (the data must be flipped too).
    """
    a = np.asarray(wl, dtype=np.float64)
    if a.ndim != 1:
        raise ObservationError(f"{where}: {what} must be one-dimensional (nw,), got shape {a.shape}")
    if a.size != nw:
        raise ObservationError(
            f"{where}: {what} has {a.size} values but the Stokes cube has {nw} wavelength points; "
            f"the two must match (check the axes declaration or the wavelength source)"
        )
    if not np.all(np.isfinite(a)):
        bad = np.flatnonzero(~np.isfinite(a))[:5].tolist()
        raise ObservationError(f"{where}: {what} holds NaN/inf at indices {bad}; all wavelengths must be finite")
    flipped = False
    if a.size > 1:
        d = np.diff(a)
        if np.all(d < 0):
            a, flipped = a[::-1].copy(), True
        elif not np.all(d > 0):
            i = int(np.flatnonzero(d <= 0)[0]) if np.any(d > 0) else int(np.flatnonzero(d >= 0)[0])
            raise ObservationError(
                f"{where}: {what} is not strictly monotonic: value {i + 1} ({float(a[i + 1])!r} A) does not "
                f"continue the order after value {i} ({float(a[i])!r} A); sort the cube along its wavelength axis"
            )
    lo, hi = float(a.min()), float(a.max())
    if lo < _WAVE_MIN_A or hi > _WAVE_MAX_A:
        hint = (
            "it looks like nm: multiply by 10" if 100.0 <= lo and hi <= 1.0e5 / 10 else
            "it looks relative to the line centre: add the line's rest wavelength"
            if abs(lo) < 100.0 else "check the units"
        )
        raise ObservationError(
            f"{where}: {what} spans {lo!r} .. {hi!r}, but absolute air wavelengths in Angstrom "
            f"({_WAVE_MIN_A:g} .. {_WAVE_MAX_A:g}) are expected; {hint}"
        )
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a, flipped


# --------------------------------------------------------------------------- #
# Metadata
# --------------------------------------------------------------------------- #
def lines_str(lines: Any, where: str) -> str:
    """Line names (string or list) as one comma-separated string; ``""`` for None."""
    if lines is None:
        return ""
    if isinstance(lines, bytes):
        lines = lines.decode()
    if isinstance(lines, np.ndarray):
        lines = lines.tolist()
    if isinstance(lines, str):
        items = re.split(r"[\s,;]+", lines)
    elif isinstance(lines, Iterable):
        items = [x.decode() if isinstance(x, bytes) else str(x) for x in lines]
    else:
        raise ObservationError(f"{where}: lines must be a string or a list of names, got {lines!r}")
    return ",".join(s.strip() for s in items if s.strip())


def noise_value(noise: Any, where: str) -> float | tuple[float, ...] | None:
    """One positive sigma, or four (I, Q, U, V), in continuum units; None stays None."""
    if noise is None:
        return None
    try:
        a = np.asarray(noise, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        a = np.array([np.nan])
    if a.size not in (1, 4) or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ObservationError(
            f"{where}: noise must be one positive sigma or four (I, Q, U, V) in continuum units, got {noise!r}"
        )
    return float(a[0]) if a.size == 1 else tuple(float(v) for v in a)


def check_filters(wavelength: Any, transmission: Any, nw: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate measured filter profiles: ``(nf,)`` increasing [A] and ``(nw, nf)``.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        float64 copies, read-only.
    """
    lam = np.array(wavelength, dtype=np.float64)
    trans = np.array(transmission, dtype=np.float64)
    if lam.ndim != 1 or lam.size < 2 or np.any(np.diff(lam) <= 0) or not np.all(np.isfinite(lam)):
        raise ObservationError(
            f"{where}: /filters/wavelength must be a strictly increasing 1-D grid in Angstrom, got shape "
            f"{lam.shape}"
        )
    if trans.shape != (nw, lam.size) or not np.all(np.isfinite(trans)):
        raise ObservationError(
            f"{where}: /filters/transmission has shape {trans.shape}, expected (nw, nf) = ({nw}, {lam.size}): "
            f"one finite profile per observed wavelength point, on /filters/wavelength"
        )
    for a in (lam, trans):
        a.setflags(write=False)
    return lam, trans


def _check_spectral(meta: dict[str, Any], where: str) -> None:
    kind = meta.get("spectral_instrument")
    if kind is None and meta.get("filters") is not None:
        meta["spectral_instrument"] = kind = "filters"  # measured profiles are there to be used
    if kind is None:
        return
    kind = str(kind).strip()
    if kind not in SPECTRAL_INSTRUMENTS:
        raise ObservationError(
            f"{where}: spectral_instrument = {kind!r}; expected one of {', '.join(SPECTRAL_INSTRUMENTS)}"
        )
    meta["spectral_instrument"] = kind
    if meta.get("filters") is not None and kind != "filters":
        raise ObservationError(
            f"{where}: the file holds /filters profiles but states spectral_instrument = {kind!r}; state "
            f"'filters' (or remove the profiles)"
        )
    # "psf" without psf_fwhm, or "filters" without /filters, is left to the backend's own options
    # (-B psf_file=..., -B filters_file=...), which say what is missing if nothing is given.
    if meta.get("psf_fwhm") is not None:
        fwhm = option_float(meta["psf_fwhm"], "psf_fwhm", where, attribute=True)
        if not fwhm > 0:
            raise ObservationError(f"{where}: psf_fwhm = {fwhm!r} mA; a spectral PSF needs a positive FWHM")
        meta["psf_fwhm"] = fwhm


def finish_meta(
    where: str, file_meta: Mapping[str, Any], lines: Any, instrument: Any, noise: Any,
    default_instrument: str = "generic",
) -> dict[str, Any]:
    """Merge file metadata with the caller's overrides and check them.

    A ``noise`` attribute of 0, a negative value or NaN in the file (one value, or four that
    are all such) is a placeholder for "unknown": ``meta["noise"]`` becomes None and the value
    is kept as ``meta["noise_attribute"]``. Any other value that is no noise (text, three
    values, four with one negative) is an error: the file is broken, and guessing would hide it.
    """
    meta = {k: (v if k == "filters" else plain(v)) for k, v in file_meta.items()}
    line_str = lines_str(lines if lines is not None else meta.get("lines"), where)
    if not line_str:
        raise ObservationError(
            f"{where}: no spectral lines declared: the file has no 'lines' attribute and none was given; "
            f"pass lines='FeI_6301,FeI_6302' (--lines; comma-separated names known to the backend) or add the "
            f"attribute to the file"
        )
    meta["lines"] = line_str
    inst = instrument if instrument is not None else meta.get("instrument")
    meta["instrument"] = str(inst).strip() if inst not in (None, "") else default_instrument
    if noise is not None:
        meta["noise"] = noise_value(noise, where)
    else:
        try:
            meta["noise"] = noise_value(meta.get("noise"), where)
        except ObservationError:  # a placeholder such as 0 or NaN in the file means "unknown"
            if not _noise_placeholder(meta.get("noise")):
                raise ObservationError(
                    f"{where}: the noise attribute {meta.get('noise')!r} is neither a noise (one positive sigma "
                    "or four, I, Q, U, V, in continuum units) nor a placeholder for unknown (0, NaN or a "
                    "negative value); fix the attribute, or state the noise with --noise"
                ) from None
            meta["noise_attribute"], meta["noise"] = meta.get("noise"), None
    _check_spectral(meta, where)
    return meta


def _noise_placeholder(value: Any) -> bool:
    """One value, or four, each 0, negative or NaN: what files write for an unknown noise."""
    try:
        a = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return False
    return a.size in (1, 4) and bool(np.all(np.isnan(a) | (a <= 0)))


def plain(v: Any) -> Any:
    """HDF5/FITS attribute value -> plain Python (str, float, int, list)."""
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, np.generic):
        v = v.item()
        return v.decode(errors="replace") if isinstance(v, bytes) else v
    if isinstance(v, np.ndarray):
        return [plain(x) for x in v.tolist()] if v.dtype.kind in "SO" else v.tolist()
    return v


# --------------------------------------------------------------------------- #
# Reader options (reader_options= / -R key=value)
# --------------------------------------------------------------------------- #
def reject_unknown_options(where: str, fmt: str, options: Mapping[str, Any], known: Sequence[str]) -> None:
    """Raise when ``options`` holds keys a format does not take."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        flags = " ".join(f"-R {k}=..." for k in unknown)
        takes = (
            f"it takes only {', '.join(known)}" if known else "it takes none (leave reader_options / -R out)"
        )
        raise ObservationError(
            f"{where}: reader_options {unknown} ({flags}) are not used by {fmt!r} observations; {takes}"
        )


def _flag(key: str, value: Any, attribute: bool) -> str:
    return f"attribute {key} = {value!r}" if attribute else f"{key}={value!r} (-R {key}=...)"


def option_bool(value: Any, key: str, where: str) -> bool:
    """A reader option that is true or false (also ``"true"``/``"false"``, ``1``/``0``)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ObservationError(f"{where}: {_flag(key, value, False)} must be true or false")


def option_float(value: Any, key: str, where: str, *, attribute: bool = False) -> float:
    """A reader option (or file attribute) that is a finite number, possibly given as text."""
    try:
        out = float(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError):
        out = math.nan
    if not math.isfinite(out):
        raise ObservationError(f"{where}: {_flag(key, value, attribute)} must be a finite number")
    return out


def option_pair(value: Any, key: str, where: str) -> tuple[float, float]:
    """A reader option holding two numbers: a sequence, or text such as ``"6301.0,6301.2"``."""
    items = re.split(r"[\s,;:]+", value.strip(" []()")) if isinstance(value, str) else value
    try:
        lo, hi = (option_float(v, key, where) for v in items)
    except (TypeError, ValueError, ObservationError):
        raise ObservationError(
            f"{where}: {_flag(key, value, False)} must be two numbers, e.g. -R {key}=[6301.0,6301.2]"
        ) from None
    return (min(lo, hi), max(lo, hi))
