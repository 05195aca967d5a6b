"""Spectra and parameters as the networks and the clustering see them (numpy only, no torch).

- :func:`normalise_spectra` turns Stokes profiles (npix, 4, nw) in continuum
  units into the features k-means clusters: I divided by the pixel's mean
  intensity, Q, U, V divided by the same, each Stokes parameter scaled by one
  field-wide sigma so that polarisation weighs as much as intensity.
- :class:`InputScaling` is the network's input normalisation (per Stokes and
  wavelength mean, per Stokes sigma, after an asinh stretch of Q, U and V for
  the CNN), fitted on the training spectra and stored in the model file.
- :class:`TargetEncoding` turns parameter vectors into network targets and
  back: each parameter is normalised by its training mean and sigma (a
  positive, long-tailed one, such as the field strength, after a log), and a
  circular parameter (the azimuth, defined modulo 180 deg) is learned through
  cos 2phi and sin 2phi, so the 180 deg ambiguity does not tear the target.
- :func:`node_column` / :func:`split_column` name a depth-stratified quantity at
  one log tau_500 (``"T@-2"``, the node columns of a backend's ``init_columns``),
  and :func:`sample_depth` reads such a value out of a stratified map.
- :func:`polarity_mirror` gives each training pixel its mirror image under the
  exact symmetry of polarised radiative transfer, field reversal along the line
  of sight with the azimuth mirrored, so that a network sees both polarities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from stokesflow.backends.base import valid_pixels

__all__ = ["normalise_spectra", "InputScaling", "TargetEncoding", "node_column", "split_column", "sample_depth",
           "polarity_mirror", "MIRRORED", "LOG_OFFSET_FLOOR", "INPUT_STRETCH"]

#: Quantities that change under :func:`polarity_mirror` (inclination -> 180 deg - inclination,
#: azimuth -> -azimuth), also as depth columns (``"inclination@-1"``).
MIRRORED = ("inclination", "azimuth")


def node_column(name: str, log_tau: float) -> str:
    """The column of quantity ``name`` at ``log_tau`` (``"T@-2"``; the form of ``Backend.init_columns``)."""
    return f"{name}@{float(log_tau):g}"


def polarity_mirror(stokes: np.ndarray, params: np.ndarray,
                    specs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The mirror images of training pixels: (I, Q, -U, -V) with inclination -> 180 - inclination, azimuth -> -azimuth.

    Reversing the field's line-of-sight component (gamma -> 180 deg - gamma)
    and mirroring its azimuth (phi -> -phi) flips the signs of eta_U, rho_U,
    eta_V and rho_V in the transfer equation and leaves every other
    coefficient as it is; the solution then has the same I and Q and the
    opposite U and V, in a Milne-Eddington atmosphere and in a stratified one
    alike (every depth mirrored), and through any instrument that acts on each
    Stokes parameter separately (filters, PSF) and noise of either sign. A
    network trained on one field learns the polarities that field happens to
    have (a sunspot's umbra has one); with the mirror images it sees both.

    Parameters
    ----------
    stokes : ndarray (n, 4, nw)
        I, Q, U, V.
    params : ndarray (n, ncol)
        Their parameters, columns in the order of ``specs``.
    specs : sequence of ParameterSpec
        Names (``inclination``, ``azimuth``, and depth columns of them), bounds, circular flags.

    Returns
    -------
    (stokes, params) or None
        The mirrored copies, with each mirrored column reflected about the
        middle of its range (``lower + upper - x``: 180 - x for an
        inclination in [0, 180], -x modulo the period for an azimuth), a
        circular one wrapped back into [lower, upper); None when no column is
        an inclination (the targets do not say which polarity a pixel has).
    """
    bases = [split_column(s.name)[0] for s in specs]
    if "inclination" not in bases:
        return None
    x = np.array(stokes, copy=True)
    x[:, 2:, :] = -x[:, 2:, :]
    p = np.array(params, dtype=np.float64, copy=True)
    for k, (base, s) in enumerate(zip(bases, specs)):
        if base not in MIRRORED:
            continue
        lo, up = float(s.lower), float(s.upper)
        p[:, k] = lo + up - p[:, k]
        if s.circular:
            p[:, k] = lo + np.mod(p[:, k] - lo, up - lo)
    return x, p


def split_column(column: str) -> tuple[str, float | None]:
    """``"T@-2"`` -> ``("T", -2.0)``; a plain parameter name -> ``(name, None)``."""
    base, sep, at = column.partition("@")
    return (base, float(at)) if sep else (column, None)


def sample_depth(maps: np.ndarray, log_tau: np.ndarray, at: float, *, period: float | None = None) -> np.ndarray | None:
    """Values of stratified maps (..., ndepth) at ``at`` [log tau_500], linear in log tau.

    Parameters
    ----------
    maps : ndarray (..., ndepth)
        A quantity on the depth grid ``log_tau`` (any order).
    log_tau : ndarray (ndepth,)
    at : float
        The depth; None is returned when it is outside ``log_tau``'s range.
    period : float, optional
        For a circular quantity (the azimuth: 180 deg): interpolated as a unit
        vector of ``2 pi value / period`` and returned in [0, period).

    Returns
    -------
    ndarray (...) float64, or None
    """
    lt = np.asarray(log_tau, dtype=np.float64)
    order = np.argsort(lt)
    if not lt[order[0]] <= at <= lt[order[-1]]:
        return None
    k = int(np.clip(np.searchsorted(lt[order], at), 1, max(1, lt.size - 1)))
    lo, hi = (order[0], order[0]) if lt.size == 1 else (order[k - 1], order[k])
    w = 0.0 if lt[hi] == lt[lo] else (at - lt[lo]) / (lt[hi] - lt[lo])
    a, b = np.asarray(maps[..., lo], dtype=np.float64), np.asarray(maps[..., hi], dtype=np.float64)
    if period is None:
        return (1.0 - w) * a + w * b
    ang_a, ang_b = 2.0 * np.pi * a / period, 2.0 * np.pi * b / period
    c = (1.0 - w) * np.cos(ang_a) + w * np.cos(ang_b)
    s = (1.0 - w) * np.sin(ang_a) + w * np.sin(ang_b)
    return np.mod(np.arctan2(s, c), 2.0 * np.pi) * period / (2.0 * np.pi)


def normalise_spectra(stokes: np.ndarray, scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features for clustering: (npix, 4 * nw) float32, and the per-Stokes scale used.

    Parameters
    ----------
    stokes : ndarray (npix, 4, nw)
        Stokes I, Q, U, V in continuum units; rows that are not
        :func:`~stokesflow.backends.valid_pixels` (NaN/inf, or no positive Stokes I) give NaN features.
    scale : ndarray (4,), optional
        Per-Stokes sigma of the features (from an earlier call, so that two
        sets of pixels are comparable); computed from ``stokes`` when None.

    Returns
    -------
    features : ndarray (npix, 4 * nw) float32
    scale : ndarray (4,) float64
    """
    s = np.asarray(stokes, dtype=np.float32)
    mean_i = s[:, 0, :].mean(axis=1)
    mean_i = np.where(np.abs(mean_i) > 1e-6, mean_i, 1.0)
    f = s / mean_i[:, None, None]
    f[:, 0, :] -= 1.0
    f[~valid_pixels(s)] = np.nan  # no light, or NaN: no features (as the inversions skip them)
    if scale is None:
        good = np.isfinite(f).all(axis=(1, 2))
        sub = f[good] if good.any() else np.zeros((1,) + f.shape[1:], np.float32)
        scale = np.array([float(np.std(sub[:, k, :])) for k in range(4)], dtype=np.float64)
        scale = np.where(scale > 1e-8, scale, 1.0)
    f = f / np.asarray(scale, dtype=np.float32)[None, :, None]
    return f.reshape(f.shape[0], -1), np.asarray(scale, dtype=np.float64)


#: Softening of the input stretch of Q, U and V, in units of the training spectra's median
#: ``|Q|``, ``|U|``, ``|V|`` (about the noise, where most pixels are weak): :class:`InputScaling`
#: learns ``asinh(x / s0)`` with ``s0`` this many medians, linear for signals below s0 and
#: logarithmic above, so that the network sees a weak field's polarisation as well as a sunspot's.
#: Measured (LM iterations per pixel of the assisted inversion, 2026-12-01; no stretch / 1 / 3 / 5
#: / 10 / 30 medians): HMI-like 256^2 5.24 / 4.64 / 4.55 / 4.55 / 4.67 / 5.12, Hinode-like 256^2
#: 3.91 / 4.05 / 3.99 / - / 3.81 / 3.68; at 10, pyMilne's HMI sample 6.48 -> 6.09, its Hinode
#: sample and HMI filtergrams unchanged (4.15, 17.0). 10 is the value that helps on both grids.
INPUT_STRETCH = 10.0


@dataclass(frozen=True)
class InputScaling:
    """The network's input normalisation: ``(f(stokes) - mean) / sigma``.

    ``f`` is the identity for I and, for Q, U and V, ``asinh(x / stretch)`` (the identity where
    ``stretch`` is 0: model files written before it).

    Attributes
    ----------
    mean : ndarray (4, nw)
        Mean of each Stokes parameter (after ``f``) at each wavelength over the training pixels.
    sigma : ndarray (4,)
        One sigma per Stokes parameter (after ``f``) over the training pixels and wavelengths.
    stretch : ndarray (4,)
        Softening ``s0`` [continuum units] of each Stokes parameter's asinh; 0: no stretch.
    """

    mean: np.ndarray
    sigma: np.ndarray
    stretch: np.ndarray | None = None

    def __post_init__(self) -> None:
        st = np.zeros(4) if self.stretch is None else np.asarray(self.stretch, dtype=np.float64)
        object.__setattr__(self, "stretch", st)

    @classmethod
    def fit(cls, stokes: np.ndarray, *, stretch: bool = False) -> "InputScaling":
        """From the training spectra (npix, 4, nw); ``stretch``: Q, U, V through :data:`INPUT_STRETCH`'s asinh."""
        s = np.asarray(stokes, dtype=np.float64)
        s0 = np.zeros(4)
        if stretch:
            for k in (1, 2, 3):
                m = float(np.median(np.abs(s[:, k, :])))
                s0[k] = INPUT_STRETCH * m if np.isfinite(m) and m > 0.0 else 0.0
        s = _stretched(s, s0)
        mean = s.mean(axis=0)
        sigma = np.array([float(np.std(s[:, k, :] - mean[k])) for k in range(4)])
        return cls(mean=mean, sigma=np.where(sigma > 1e-8, sigma, 1.0), stretch=s0)

    def apply(self, stokes: np.ndarray) -> np.ndarray:
        """Normalised spectra (npix, 4, nw) float32."""
        out = _stretched(np.asarray(stokes, dtype=np.float32), self.stretch.astype(np.float32))
        out -= self.mean.astype(np.float32)
        out /= self.sigma.astype(np.float32)[:, None]
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, for the model file."""
        return {"mean": self.mean.tolist(), "sigma": self.sigma.tolist(), "stretch": self.stretch.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputScaling":
        return cls(mean=np.asarray(d["mean"], dtype=np.float64), sigma=np.asarray(d["sigma"], dtype=np.float64),
                   stretch=None if d.get("stretch") is None else np.asarray(d["stretch"], dtype=np.float64))


def _stretched(stokes: np.ndarray, s0: np.ndarray) -> np.ndarray:
    """A copy of spectra (npix, 4, nw) with each Stokes parameter k where s0[k] > 0 as asinh(x / s0[k])."""
    out = np.array(stokes, copy=True)
    for k in range(4):
        if s0[k] > 0:
            np.divide(out[:, k], s0[k], out=out[:, k])
            np.arcsinh(out[:, k], out=out[:, k])
    return out


#: Share of the training values' median [1] below which a log-encoded parameter's offset may not
#: fall (:meth:`TargetEncoding.fit`): keeps log(p + offset) finite where the lowest percentile is 0.
LOG_OFFSET_FLOOR = 1e-3


def _skewness(v: np.ndarray) -> float:
    """The sample skewness m3 / m2**1.5 [1] of finite values (``scipy.stats.skew`` with ``bias=True``;
    NaN for constant values).

    Written out because importing :mod:`scipy.stats` costs a fresh worker about 0.7 s, a tenth of a
    1024^2 loop's whole training phase on two workers.
    """
    mean = float(v.mean())
    d = v - mean
    m2 = float(np.mean(d * d))
    if not m2 > (np.finfo(np.float64).eps * mean) ** 2:  # constant to rounding (as scipy.stats.skew)
        return float("nan")
    return float(np.mean(d * d * d)) / m2 ** 1.5


def _log_offset(values: np.ndarray) -> float:
    """The offset c [units] under which ``log(values + c)`` is the more symmetric target, or NaN (linear).

    Only for values that are all >= 0 with a positive median: c is their first percentile (at least
    :data:`LOG_OFFSET_FLOOR` times the median), and the log is taken when it brings the sample's
    skewness nearer to zero than the values themselves have it (a field strength, an opacity ratio:
    most pixels low, a long tail of strong ones). A symmetric parameter (a Doppler width around its
    mean, the inclination, the source function) stays linear.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 3 or v.min() < 0.0:
        return float("nan")
    p1, p50 = np.percentile(v, [1.0, 50.0])
    if not p50 > 0.0:
        return float("nan")
    c = float(max(p1, LOG_OFFSET_FLOOR * p50))
    lin, log = abs(_skewness(v)), abs(_skewness(np.log(v + c)))
    return c if np.isfinite(log) and (not np.isfinite(lin) or log < lin) else float("nan")


def _log(values: np.ndarray, offset: float) -> np.ndarray:
    """The target of a log-encoded parameter before its normalisation: ``log(values + offset)``."""
    return np.log(np.maximum(values + offset, np.finfo(float).tiny))


@dataclass(frozen=True)
class TargetEncoding:
    """Parameters <-> network outputs.

    Attributes
    ----------
    names : tuple of str
        Parameter names, in the backend's order.
    units : tuple of str
    lower, upper : ndarray (npar,)
        Bounds [units]; decoded values are clipped to them.
    circular : tuple of bool
        Angles modulo ``upper - lower`` (the azimuth: 180 deg), encoded as cos and sin of
        ``2 pi (phi - lower) / (upper - lower)``.
    mean, sigma : ndarray (npar,)
        Training mean and sigma of each non-circular parameter's target value (0 and 1 for circular
        ones): of the parameter [units], or of ``log(p + log_offset)`` for a log-encoded one. A
        parameter with one value over all training pixels (SIR's filling factor when it is not
        inverted) has sigma 0: its target is 0 and it decodes to that value exactly.
    log_offset : ndarray (npar,)
        NaN for a parameter learned as it is; else the offset c [units] of a parameter learned as
        ``log(p + c)`` (:func:`_log_offset`: chosen in :meth:`fit` when it makes the training values
        more symmetric, so that the squared-error loss weighs a weak field's 20 G as it weighs a
        strong field's relative error, instead of being ruled by the tail). Model files written
        before it have none: every parameter linear, as they were trained.
    """

    names: tuple[str, ...]
    units: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    circular: tuple[bool, ...]
    mean: np.ndarray
    sigma: np.ndarray
    log_offset: np.ndarray | None = None

    def __post_init__(self) -> None:
        off = np.full(len(self.names), np.nan) if self.log_offset is None else np.asarray(self.log_offset, float)
        object.__setattr__(self, "log_offset", off)

    @classmethod
    def fit(cls, specs: Sequence[Any], params: np.ndarray, *, log: bool = True) -> "TargetEncoding":
        """From the backend's ParameterSpecs and the training parameters (n, npar).

        ``log=False`` learns every parameter linearly (no :attr:`log_offset`).
        """
        p = np.asarray(params, dtype=np.float64)
        circ = tuple(bool(getattr(s, "circular", False)) for s in specs)
        const = np.ptp(p, axis=0) == 0 if p.shape[0] else np.zeros(p.shape[1], dtype=bool)
        off = np.array([_log_offset(p[:, j]) if log and not circ[j] and not const[j] and float(specs[j].lower) >= 0.0
                        else np.nan for j in range(p.shape[1])])
        t = p.copy()
        for j in np.flatnonzero(np.isfinite(off)):
            t[:, j] = _log(p[:, j], off[j])
        mean = np.where(circ, 0.0, np.where(const, p[0] if p.shape[0] else 0.0, t.mean(axis=0)))
        sigma = t.std(axis=0)
        sigma = np.where(circ, 1.0, np.where(const, 0.0, np.where(sigma > 1e-12, sigma, 1.0)))
        return cls(
            names=tuple(s.name for s in specs), units=tuple(s.unit for s in specs),
            lower=np.array([s.lower for s in specs], dtype=np.float64),
            upper=np.array([s.upper for s in specs], dtype=np.float64),
            circular=circ, mean=mean, sigma=sigma, log_offset=off,
        )

    @property
    def n_outputs(self) -> int:
        """Network outputs: one per parameter, two per circular one."""
        return len(self.names) + sum(self.circular)

    def encode(self, params: np.ndarray) -> np.ndarray:
        """Targets (n, n_outputs) float32 from parameters (n, npar) [units]."""
        p = np.asarray(params, dtype=np.float64)
        cols = []
        for j, circ in enumerate(self.circular):
            c = self.log_offset[j]
            if circ:
                ang = 2.0 * np.pi * (p[:, j] - self.lower[j]) / (self.upper[j] - self.lower[j])
                cols += [np.cos(ang), np.sin(ang)]
            elif self.sigma[j] == 0:  # one value in training: nothing to learn
                cols.append(np.zeros(p.shape[0]))
            elif np.isfinite(c):
                cols.append((_log(p[:, j], c) - self.mean[j]) / self.sigma[j])
            else:
                cols.append((p[:, j] - self.mean[j]) / self.sigma[j])
        return np.column_stack(cols).astype(np.float32)

    def decode(self, out: np.ndarray) -> np.ndarray:
        """Parameters (n, npar) float64 [units], clipped to the bounds, from outputs (n, n_outputs)."""
        o = np.asarray(out, dtype=np.float64)
        res = np.empty((o.shape[0], len(self.names)), dtype=np.float64)
        k = 0
        for j, circ in enumerate(self.circular):
            period = self.upper[j] - self.lower[j]
            if circ:
                ang = np.arctan2(o[:, k + 1], o[:, k])
                res[:, j] = self.lower[j] + np.mod(ang, 2.0 * np.pi) * period / (2.0 * np.pi)
                k += 2
            else:
                v = o[:, k] * self.sigma[j] + self.mean[j]
                c = self.log_offset[j]
                if np.isfinite(c) and self.sigma[j] != 0:
                    # bounded exponent: a wild output decodes to the upper bound, not to inf
                    v = np.exp(np.minimum(v, np.log(self.upper[j] + c))) - c
                res[:, j] = np.clip(v, self.lower[j], self.upper[j])
                k += 1
        return res

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, for the model file (``log_offset``: None for a linear parameter)."""
        return {"names": list(self.names), "units": list(self.units), "lower": self.lower.tolist(),
                "upper": self.upper.tolist(), "circular": list(self.circular), "mean": self.mean.tolist(),
                "sigma": self.sigma.tolist(),
                "log_offset": [None if not np.isfinite(c) else float(c) for c in self.log_offset]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TargetEncoding":
        off = d.get("log_offset")
        return cls(
            names=tuple(d["names"]), units=tuple(d["units"]), lower=np.asarray(d["lower"], dtype=np.float64),
            upper=np.asarray(d["upper"], dtype=np.float64), circular=tuple(bool(c) for c in d["circular"]),
            mean=np.asarray(d["mean"], dtype=np.float64), sigma=np.asarray(d["sigma"], dtype=np.float64),
            log_offset=None if off is None else np.array([np.nan if c is None else c for c in off], dtype=np.float64),
        )
