"""Helpers of the FITS-based readers (generic cube, SDO/HMI, Hinode SP).

astropy is imported on first use only, so reading HDF5 or .npy never needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from stokesflow.orchestrator.errors import ObservationError
from stokesflow.orchestrator.io.checks import plain

__all__ = ["SIGNATURE", "image_hdu_index", "is_fits", "keywords", "open_fits", "quiet_sun_level"]

#: First bytes of every FITS file.
SIGNATURE = b"SIMPLE  ="


def is_fits(path: str, head: bytes) -> bool:
    """A FITS file: its first card, or a gzip stream named ``*.fits.gz`` / ``*.fts.gz``."""
    if head.startswith(SIGNATURE):
        return True
    return head[:2] == b"\x1f\x8b" and path.lower().endswith((".fits.gz", ".fts.gz"))


def open_fits(path: str, hint: str = "pass format= (--format) if it is HDF5 or .npy"):
    """Open a FITS file lazily (only the headers are read), with an error that names the file."""
    from astropy.io import fits

    try:
        return fits.open(path, lazy_load_hdus=True)
    except (OSError, ValueError) as exc:
        raise ObservationError(f"{path}: not a readable FITS file ({exc}); {hint}") from None


def image_hdu_index(path: str, hdul, ndim: int) -> int:
    """Index of the first image HDU with ``ndim`` axes (a tile-compressed one counts)."""
    shapes = []
    for i, h in enumerate(hdul):
        shape = tuple(getattr(h, "shape", None) or ())
        shapes.append(shape)
        if h.is_image and len(shape) == ndim:
            return i
    raise ObservationError(f"{path}: no {ndim}-D image HDU (HDU shapes: {shapes})")


def keywords(header, names: Sequence[str]) -> dict[str, Any]:
    """The header keywords among ``names`` that are present, as plain Python values."""
    return {k: plain(header[k]) for k in names if k in header}


def quiet_sun_level(icont: Any) -> float:
    """Quiet-Sun continuum level of a field of view.

    The 95th percentile ``c95`` of the finite, positive continuum values sits
    just above the quiet-Sun mean as long as dark features (umbrae, penumbrae,
    pores) cover less than about 90 % of the field; the level is the median of
    the values between ``0.7 c95`` and ``1.2 c95``, which drops those dark
    features but keeps the granulation (whose rms contrast is well below 30 %).

    Parameters
    ----------
    icont : array_like
        Continuum intensities (any units, any shape); NaN allowed.

    Returns
    -------
    float
        The level, same units as ``icont``.
    """
    v = np.asarray(icont, dtype=np.float64).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        raise ObservationError(
            "cannot estimate the quiet-Sun continuum: no finite positive intensity in the field of view; "
            "pass continuum= a number (-R continuum=<number>: the quiet-Sun continuum in the file's units)"
        )
    c95 = float(np.percentile(v, 95.0))
    sel = v[(v >= 0.7 * c95) & (v <= 1.2 * c95)]
    return float(np.median(sel))
