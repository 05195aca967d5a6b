"""Parameters as distributions over bins, and calibrated 90 % intervals (numpy only).

The building blocks of the ``unet`` provider (the network itself is not
built yet): each parameter is predicted as a distribution over ``n_bins``
(80) bins spanning its range, as in the published HMI emulator.

- :class:`Bins` ``.encode``: the two-bin soft target (a value between two
  bin centres is split between them in proportion to its distance), the
  target of a KL-divergence loss; a circular parameter (the azimuth) wraps
  from the last bin to the first.
- :class:`Bins` ``.decode``: the expectation over the most likely bin and
  its two neighbours.
- :meth:`Bins.interval`: the central interval of probability ``level``
  read from the distribution's cumulative sum, widened or narrowed about the
  decoded value by a ``scale``.
- :func:`calibrate`: a softmax temperature (minimising the held-out negative
  log-likelihood over a grid) and an interval scale (the held-out quantile of
  the normalised error), so that the intervals cover ``level`` of held-out
  pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Bins", "softmax", "calibrate", "coverage"]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax over the last axis of ``logits / temperature``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Bins:
    """``n`` equal bins over ``[lower, upper]`` [units]; ``circular`` wraps the last bin onto the first."""

    lower: float
    upper: float
    n: int = 80
    circular: bool = False

    @property
    def width(self) -> float:
        return (self.upper - self.lower) / self.n

    @property
    def centres(self) -> np.ndarray:
        return self.lower + (np.arange(self.n) + 0.5) * self.width

    def _position(self, values: np.ndarray) -> np.ndarray:
        """Fractional bin index of each value (centre of bin i at i)."""
        x = (np.asarray(values, dtype=np.float64) - self.lower) / self.width - 0.5
        if self.circular:
            return np.mod(x, self.n)
        return np.clip(x, 0.0, self.n - 1.0)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Two-bin soft targets (m, n) for values (m,) [units]."""
        x = self._position(values)
        i = np.floor(x).astype(np.int64)
        t = x - i
        j = (i + 1) % self.n if self.circular else np.minimum(i + 1, self.n - 1)
        out = np.zeros((x.size, self.n))
        rows = np.arange(x.size)
        np.add.at(out, (rows, i), 1.0 - t)
        np.add.at(out, (rows, j), t)
        return out

    def decode(self, probs: np.ndarray) -> np.ndarray:
        """Values (m,) [units]: expectation over the most likely bin and its two neighbours."""
        p = np.asarray(probs, dtype=np.float64)
        k = np.argmax(p, axis=1)
        offs = np.array([-1, 0, 1])
        idx = k[:, None] + offs[None, :]
        if self.circular:
            w = p[np.arange(p.shape[0])[:, None], idx % self.n]
            pos = idx.astype(np.float64)  # unwrapped about the peak
        else:
            valid = (idx >= 0) & (idx < self.n)
            w = np.where(valid, p[np.arange(p.shape[0])[:, None], np.clip(idx, 0, self.n - 1)], 0.0)
            pos = idx.astype(np.float64)
        x = (w * pos).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-300)
        v = self.lower + (x + 0.5) * self.width
        if self.circular:
            v = self.lower + np.mod(v - self.lower, self.upper - self.lower)
        return v

    def interval(self, probs: np.ndarray, level: float = 0.9, scale: float = 1.0) -> np.ndarray:
        """Intervals (m, 2) [units]: the central ``level`` of the distribution, scaled about the decoded value.

        For a circular parameter the bins are first rotated so that the most
        likely bin sits in the middle; the interval may then extend beyond
        ``[lower, upper]`` (read it modulo the period).
        """
        p = np.asarray(probs, dtype=np.float64)
        v = self.decode(p)
        centres = np.broadcast_to(self.centres, p.shape).copy()
        if self.circular:
            shift = self.n // 2 - np.argmax(p, axis=1)
            rows = np.arange(p.shape[0])[:, None]
            cols = (np.arange(self.n)[None, :] - shift[:, None]) % self.n
            p = p[rows, cols]
            centres = self.centres[None, :] - shift[:, None] * self.width
        cdf = np.cumsum(p, axis=1)
        cdf /= cdf[:, -1:]
        lo_q, hi_q = 0.5 * (1 - level), 0.5 * (1 + level)
        # the bin edges carry the cumulative probability: interpolate between them
        edges = np.concatenate([centres[:, :1] - 0.5 * self.width, centres + 0.5 * self.width], axis=1)
        c = np.concatenate([np.zeros((p.shape[0], 1)), cdf], axis=1)
        lo = np.array([np.interp(lo_q, c[r], edges[r]) for r in range(p.shape[0])])
        hi = np.array([np.interp(hi_q, c[r], edges[r]) for r in range(p.shape[0])])
        if self.circular:  # express about the decoded value
            period = self.upper - self.lower
            mid = 0.5 * (lo + hi)
            delta = np.mod(v - mid + 0.5 * period, period) - 0.5 * period
            lo, hi = lo + delta, hi + delta  # same width, centred on the decoded value's branch
        lo = v - scale * (v - np.minimum(lo, v))
        hi = v + scale * (np.maximum(hi, v) - v)
        return np.column_stack([lo, hi])


def coverage(intervals: np.ndarray, truth: np.ndarray, period: float | None = None) -> float:
    """Share of ``truth`` values inside their intervals (a circular value may lie a period away)."""
    lo, hi = intervals[:, 0], intervals[:, 1]
    t = np.asarray(truth, dtype=np.float64)
    if period is not None:
        mid = 0.5 * (lo + hi)
        t = mid + (np.mod(t - mid + 0.5 * period, period) - 0.5 * period)
    return float(np.mean((t >= lo) & (t <= hi)))


def calibrate(bins: Bins, logits: np.ndarray, truth: np.ndarray, *, level: float = 0.9,
              temperatures: np.ndarray | None = None) -> tuple[float, float]:
    """Temperature and interval scale from held-out ``logits`` (m, n) and true values (m,).

    The temperature minimises the negative log-likelihood of the true values'
    soft targets; the scale is the ``level`` quantile of the error
    normalised by the interval's half-width on its side, so the scaled
    intervals cover ``level`` of these pixels.
    """
    temps = np.geomspace(0.25, 4.0, 25) if temperatures is None else np.asarray(temperatures)
    target = bins.encode(truth)
    nll = [-(target * np.log(softmax(logits, t) + 1e-12)).sum(axis=1).mean() for t in temps]
    temp = float(temps[int(np.argmin(nll))])
    p = softmax(logits, temp)
    v = bins.decode(p)
    iv = bins.interval(p, level, 1.0)
    t = np.asarray(truth, dtype=np.float64)
    if bins.circular:
        period = bins.upper - bins.lower
        t = v + (np.mod(t - v + 0.5 * period, period) - 0.5 * period)
    half = np.where(t >= v, iv[:, 1] - v, v - iv[:, 0])
    ratio = np.abs(t - v) / np.maximum(half, 1e-12 * bins.width)
    return temp, float(np.quantile(ratio, level))
