"""Resolving the 180-degree azimuth ambiguity.

The Zeeman effect fixes the transverse field's direction only modulo 180 deg
(the ME azimuth is fitted in 0-180). A method returns, per pixel, an azimuth in
0-360 deg and a mask of pixels it cannot decide.

Methods (:data:`METHODS`; add one with :func:`register_method`, e.g. minimum
energy, Metcalf 1994, Sol. Phys. 155, 235, later):

- ``none``: the fitted azimuth, 0-180, nothing marked.
- ``acute``: the potential-field acute-angle method (e.g. Metcalf et al. 2006,
  Sol. Phys. 237, 267, sec. 3.1). The potential field whose vertical
  component is the observed ``Bz`` is computed by FFT (:func:`potential_field`);
  of ``phi`` and ``phi + 180`` the azimuth whose transverse field makes an acute
  angle with the potential transverse field is kept.

Known limits of ``acute``: it is right where the field is close to potential
and wrong where it is strongly sheared or twisted (along sheared neutral lines,
in delta spots); it uses the image-frame ``Bz`` as the vertical field, so it is
meant for regions near disc centre (far from it, the line-of-sight field is not
the vertical field); the FFT assumes a periodic, flux-balanced map (the map is
padded with zeros to weaken the wrap-around), so pixels near the map edges and
maps cut through a strong region are less reliable. Where the transverse field
is below ``weak_threshold`` (noise dominates its direction) the pixel is *not*
disambiguated: its azimuth stays in 0-180 and it is marked in
``unreliable``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from stokesflow.orchestrator.errors import OrchestratorError
from stokesflow.orchestrator.vectors import image_components

__all__ = [
    "DisambiguationError",
    "Disambiguation",
    "METHODS",
    "register_method",
    "disambiguate",
    "potential_field",
    "acute_angle",
    "no_disambiguation",
    "DEFAULT_WEAK_THRESHOLD",
]

#: Transverse field [G] below which ``acute`` leaves a pixel undecided.
DEFAULT_WEAK_THRESHOLD = 150.0


class DisambiguationError(OrchestratorError, ValueError):
    """Unknown method, or inputs of mismatched shapes."""


@dataclass
class Disambiguation:
    """The outcome of a method.

    Attributes
    ----------
    azimuth : ndarray, float32
        Azimuth [deg], 0-360 where decided, the fitted 0-180 elsewhere.
    unreliable : ndarray, uint8
        1 where the method did not decide (weak transverse field, no data), else 0.
    method : str
    flipped : ndarray of bool
        Pixels moved by 180 deg.
    """

    azimuth: np.ndarray
    unreliable: np.ndarray
    method: str
    flipped: np.ndarray


Method = Callable[..., Disambiguation]
#: Name -> method ``f(b, inclination, azimuth, *, azimuth_zero, **options)``.
METHODS: dict[str, Method] = {}


def register_method(name: str, method: Method) -> None:
    """Make ``method`` available as ``disambiguate(name, ...)`` and ``--disambiguate name``."""
    METHODS[name] = method


def disambiguate(
    method: str, b: np.ndarray, inclination: np.ndarray, azimuth: np.ndarray, *, azimuth_zero: str = "x",
    **options: Any,
) -> Disambiguation:
    """Run a disambiguation method by name.

    Parameters
    ----------
    method : str
        A key of :data:`METHODS` (``none``, ``acute``).
    b, inclination, azimuth : ndarray, (ny, nx)
        Field strength [G], inclination [deg], azimuth [deg, 0-180].
    azimuth_zero : {"x", "y"}
        Image axis of azimuth 0 (:mod:`stokesflow.orchestrator.vectors`).
    **options
        Passed to the method (``weak_threshold`` [G] for ``acute``).

    Returns
    -------
    Disambiguation
    """
    if method not in METHODS:
        raise DisambiguationError(f"unknown disambiguation method {method!r}; known: {sorted(METHODS)}")
    shapes = {np.shape(b), np.shape(inclination), np.shape(azimuth)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise DisambiguationError(f"B, inclination and azimuth must be maps of one (ny, nx) shape, got {sorted(shapes)}")
    return METHODS[method](b, inclination, azimuth, azimuth_zero=azimuth_zero, **options)


def potential_field(bz: np.ndarray, *, pad: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal components at the surface of the potential field with vertical component ``bz``.

    For a field ``B = -grad(Phi)`` above the surface that decays upwards, each
    Fourier mode gives ``B_h(k) = -i k / |k| Bz(k)`` (the ``k = 0`` mode, net
    flux, carries no horizontal field).

    Parameters
    ----------
    bz : ndarray, (ny, nx)
        Vertical field [G]; NaN counts as 0.
    pad : int, optional
        Zero rows/columns added on each side against the FFT's wrap-around;
        default half the map side, at most 512.

    Returns
    -------
    bx, by : ndarray, (ny, nx) float64
        Along +x (columns) and +y (rows) [G].
    """
    bz = np.nan_to_num(np.asarray(bz, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    ny, nx = bz.shape
    p = min(512, max(ny, nx) // 2) if pad is None else int(pad)
    big = np.zeros((ny + 2 * p, nx + 2 * p))
    big[p:p + ny, p:p + nx] = bz
    shape = big.shape
    f = np.fft.rfft2(big)
    del big
    ky = 2.0 * np.pi * np.fft.fftfreq(shape[0])[:, None]
    kx = 2.0 * np.pi * np.fft.rfftfreq(shape[1])[None, :]
    k = np.hypot(kx, ky)
    k[0, 0] = 1.0
    f /= k            # in place: a 4096^2 map pads to 5120^2, ~200 MB per complex array
    del k
    f *= -1j
    f[0, 0] = 0.0
    bx = np.fft.irfft2(kx * f, s=shape)[p:p + ny, p:p + nx].copy()
    by = np.fft.irfft2(ky * f, s=shape)[p:p + ny, p:p + nx].copy()
    return bx, by


def no_disambiguation(b: np.ndarray, inclination: np.ndarray, azimuth: np.ndarray, *, azimuth_zero: str = "x",
                      **options: Any) -> Disambiguation:
    """``none``: the fitted azimuth unchanged, nothing marked."""
    if options:
        raise DisambiguationError(f"method 'none' takes no options, got {sorted(options)}")
    az = np.asarray(azimuth, dtype=np.float32)
    return Disambiguation(az.copy(), np.zeros(az.shape, np.uint8), "none", np.zeros(az.shape, bool))


def acute_angle(
    b: np.ndarray, inclination: np.ndarray, azimuth: np.ndarray, *, azimuth_zero: str = "x",
    weak_threshold: float = DEFAULT_WEAK_THRESHOLD, pad: int | None = None,
) -> Disambiguation:
    """``acute``: the azimuth closest to the potential field's (see the module documentation).

    Parameters
    ----------
    b, inclination, azimuth : ndarray, (ny, nx)
        Field strength [G], inclination [deg], azimuth [deg].
    azimuth_zero : {"x", "y"}
        Image axis of azimuth 0.
    weak_threshold : float
        Transverse field ``B sin(inclination)`` [G] below which a pixel is
        left as fitted and marked unreliable.
    pad : int, optional
        See :func:`potential_field`.

    Returns
    -------
    Disambiguation
    """
    bx, by, bz = image_components(b, inclination, azimuth, azimuth_zero=azimuth_zero)
    px, py = potential_field(bz, pad=pad)
    bt = np.hypot(bx, by)
    weak = ~(bt >= weak_threshold)  # NaN counts as weak
    flip = ((bx * px + by * py) < 0.0) & ~weak
    az = np.asarray(azimuth, dtype=np.float64)
    out = np.where(flip, az + 180.0, az)
    out = np.where(weak, az, out % 360.0)
    return Disambiguation(out.astype(np.float32), weak.astype(np.uint8), "acute", flip)


register_method("none", no_disambiguation)
register_method("acute", acute_angle)
