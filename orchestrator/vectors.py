"""Field vectors from (B, inclination, azimuth): image frame and local heliographic frame.

Azimuth convention
------------------
stokesflow's ME model (DESIGN.md, "Milne-Eddington physics") measures the
azimuth from the direction in which Stokes Q is positive: inclination 90 deg and
azimuth 0 give Q < 0 at line centre (the pi component absorbs the light polarised
along the transverse field), azimuth 45 gives U < 0. The files do not say how
that polarimetric reference direction lies on the detector, so stokesflow takes
it along the image's +x axis (increasing column) and the azimuth increasing
counter-clockwise towards +y (increasing row), as the map is drawn with row 0
at the bottom. ``azimuth_zero="y"`` takes the reference along +y instead
(the SDO/HMI convention: "azimuth 0 in the +y CCD direction, increasing
counter-clockwise"), which adds 90 deg. Inclination 0 is along the line of
sight towards the observer (V > 0 in the blue wing for B > 0).

Image frame: ``Bx = B sin(inc) cos(psi)``, ``By = B sin(inc) sin(psi)``,
``Bz = B cos(inc)`` (towards the observer), ``psi = azimuth (+ 90 for "y")``.

Heliographic frame: ``Bp`` (positive west), ``Bt`` (positive south), ``Br``
(radial, outwards), by the transformation of Gary & Hagyard (1990, Sol. Phys.
126, 21) used for the SDO/HMI vector products (Sun 2013, arXiv:1309.2392, eqs.
1, 7, 8): the image components are first turned into (solar west, solar north)
with the orientation of the image axes from the WCS
(:func:`~stokesflow.orchestrator.geometry.image_rotation`, which covers
``CROTA2`` as the HMI code's P angle does, and also mirrored axes), then
rotated into the pixel's local frame from its heliographic longitude ``phi``
(from the observer's central meridian), latitude ``lambda`` and the observer's
latitude ``B0``. The line of sight is taken parallel for all pixels (observer at
infinity), as in that transformation.
"""

from __future__ import annotations

import numpy as np

__all__ = ["AZIMUTH_ZEROS", "image_components", "field_angles", "heliographic_components",
           "heliographic_matrix"]

#: Accepted ``azimuth_zero`` values and the angle they add to the azimuth [deg].
AZIMUTH_ZEROS = {"x": 0.0, "y": 90.0}


def _offset(azimuth_zero: str) -> float:
    try:
        return AZIMUTH_ZEROS[azimuth_zero]
    except KeyError:
        raise ValueError(f"azimuth_zero must be one of {sorted(AZIMUTH_ZEROS)}, got {azimuth_zero!r}") from None


def image_components(
    b: np.ndarray, inclination: np.ndarray, azimuth: np.ndarray, *, azimuth_zero: str = "x"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(Bx, By, Bz)`` in the image frame [G] (see the module documentation).

    Parameters
    ----------
    b : ndarray
        Field strength [G].
    inclination : ndarray
        Inclination to the line of sight [deg], 0 towards the observer.
    azimuth : ndarray
        Azimuth [deg], 0-180 (ambiguous) or 0-360 (disambiguated).
    azimuth_zero : {"x", "y"}
        Image axis of azimuth 0.

    Returns
    -------
    bx, by, bz : ndarray, float64
    """
    inc = np.radians(np.asarray(inclination, dtype=np.float64))
    psi = np.radians(np.asarray(azimuth, dtype=np.float64) + _offset(azimuth_zero))
    bt = np.asarray(b, dtype=np.float64) * np.sin(inc)
    return bt * np.cos(psi), bt * np.sin(psi), np.asarray(b, dtype=np.float64) * np.cos(inc)


def field_angles(
    bx: np.ndarray, by: np.ndarray, bz: np.ndarray, *, azimuth_zero: str = "x"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`image_components`: ``(B, inclination, azimuth)``, azimuth in [0, 360) deg."""
    bx, by, bz = (np.asarray(v, dtype=np.float64) for v in (bx, by, bz))
    b = np.sqrt(bx * bx + by * by + bz * bz)
    inc = np.degrees(np.arctan2(np.hypot(bx, by), bz))
    az = (np.degrees(np.arctan2(by, bx)) - _offset(azimuth_zero)) % 360.0
    return b, inc, az


def heliographic_matrix(lon: np.ndarray, lat: np.ndarray, b0: float) -> np.ndarray:
    """Rows (Bp, Bt, Br) of the matrix that acts on (B_west, B_north, B_los).

    Gary & Hagyard (1990) eq. 1 with P = 0 (the image is first turned to solar
    north up by :func:`heliographic_components`); written as in Sun (2013)
    eqs. 7-8, with ``Bt = -B_north,local``.

    Parameters
    ----------
    lon, lat : ndarray
        Pixel longitude from the observer's central meridian and latitude [rad].
    b0 : float
        Observer's heliographic latitude [rad].

    Returns
    -------
    ndarray, (3, 3) + lon.shape
    """
    sb, cb = np.sin(b0), np.cos(b0)
    sp, cp = np.sin(lon), np.cos(lon)
    sl, cl = np.sin(lat), np.cos(lat)
    zero = np.zeros_like(sp)
    return np.array([
        [cp, sb * sp, -cb * sp],                                     # Bp (west)
        [sl * sp, -(sl * sb * cp + cl * cb), sl * cb * cp - cl * sb],  # Bt (south)
        [cl * sp, -cl * sb * cp + sl * cb, cl * cb * cp + sl * sb],    # Br (up)
    ]) + zero


def heliographic_components(
    bx: np.ndarray, by: np.ndarray, bz: np.ndarray, lon: np.ndarray, lat: np.ndarray, b0: float,
    rotation: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(Bp, Bt, Br)`` [G] of image-frame components at the given disc positions.

    Parameters
    ----------
    bx, by, bz : ndarray
        Image-frame components [G] (:func:`image_components`).
    lon, lat : ndarray
        Pixel longitude from the observer's central meridian (positive west)
        and latitude [rad] (:func:`~stokesflow.orchestrator.geometry.pixel_heliographic`).
    b0 : float
        Observer's heliographic latitude [rad].
    rotation : ndarray (2, 2), optional
        Directions of the image +x and +y axes as (west, north) columns
        (:func:`~stokesflow.orchestrator.geometry.image_rotation`); default the
        identity (x west, y north).

    Returns
    -------
    bp, bt, br : ndarray, float64
        Positive west, south and outwards; NaN where the position is NaN (off the disc).
    """
    m = np.eye(2) if rotation is None else np.asarray(rotation, dtype=np.float64)
    bx, by, bz = (np.asarray(v, dtype=np.float64) for v in (bx, by, bz))
    bw = m[0, 0] * bx + m[0, 1] * by
    bn = m[1, 0] * bx + m[1, 1] * by
    k = heliographic_matrix(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64), float(b0))
    return tuple(k[i, 0] * bw + k[i, 1] * bn + k[i, 2] * bz for i in range(3))  # type: ignore[return-value]
