"""Jitted forward models used by the lm_solver tests (test doubles, not physics).

Every distinct model costs one compilation of the whole engine (a few
seconds), so the tests share two models: :func:`nist_model_impl` for the NIST
StRD problems and :func:`toy_model_impl`, whose formula is chosen at run time
by ``ctx[1][0]``. Both have the ctx type ``(float64[:], float64[:])``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from numba import njit

__all__ = [
    "AUX_SIZE",
    "DATA_DIR",
    "NIST_IDS",
    "TOY_EXPGAUSS",
    "TOY_FREQ",
    "TOY_INCL",
    "TOY_LINE",
    "TOY_LINE_SUM",
    "TOY_NAN_ABOVE",
    "TOY_PHASE",
    "TOY_ROSENBROCK",
    "NistProblem",
    "load_nist",
    "nist_model_impl",
    "toy_ctx",
    "toy_model_impl",
]

DATA_DIR = Path(__file__).resolve().parent / "data"

# ---------------------------------------------------------------- NIST StRD
NIST_IDS = {"Misra1a": 0, "Thurber": 1, "MGH09": 2, "Eckerle4": 3, "Lanczos3": 4}


class NistProblem:
    """One NIST StRD problem read from tests/lm_solver/data/<name>.dat."""

    def __init__(self, name: str) -> None:
        self.name = name
        start1, start2, cert, sd = [], [], [], []
        rows = []
        in_data = False
        self.rss = float("nan")
        for line in (DATA_DIR / f"{name}.dat").read_text().splitlines():
            if line.startswith("#"):
                continue
            m = re.match(r"\s*b\d+\s*=\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", line)
            if m:
                a, b, c, d = (float(v) for v in m.groups())
                start1.append(a)
                start2.append(b)
                cert.append(c)
                sd.append(d)
            if line.startswith("Residual Sum of Squares:"):
                self.rss = float(line.split(":")[1])
            if line.startswith("Data:"):
                in_data = True
                continue
            if in_data and line.strip():
                rows.append([float(v) for v in line.split()])
        data = np.array(rows)
        self.y = np.ascontiguousarray(data[:, 0])
        self.x = np.ascontiguousarray(data[:, 1])
        self.starts = (np.array(start1), np.array(start2))
        self.certified = np.array(cert)
        self.certified_sd = np.array(sd)
        self.ctx = (self.x, np.array([float(NIST_IDS[name])]))


def load_nist(name: str) -> NistProblem:
    """Read a NIST problem."""
    return NistProblem(name)


@njit(cache=True, nogil=True)
def nist_model_impl(b, ctx, y, jac):
    """NIST StRD models with analytic derivatives; ctx = (x, [problem id])."""
    x = ctx[0]
    pid = int(ctx[1][0])
    for i in range(x.size):
        t = x[i]
        if pid == 0:  # Misra1a: b1*(1-exp(-b2*x))
            e = np.exp(-b[1] * t)
            y[i] = b[0] * (1.0 - e)
            jac[i, 0] = 1.0 - e
            jac[i, 1] = b[0] * t * e
        elif pid == 1:  # Thurber: cubic / cubic
            num = b[0] + b[1] * t + b[2] * t * t + b[3] * t ** 3
            den = 1.0 + b[4] * t + b[5] * t * t + b[6] * t ** 3
            y[i] = num / den
            jac[i, 0] = 1.0 / den
            jac[i, 1] = t / den
            jac[i, 2] = t * t / den
            jac[i, 3] = t ** 3 / den
            f = -num / (den * den)
            jac[i, 4] = f * t
            jac[i, 5] = f * t * t
            jac[i, 6] = f * t ** 3
        elif pid == 2:  # MGH09: b1*(x^2+x*b2) / (x^2+x*b3+b4)
            num = t * t + t * b[1]
            den = t * t + t * b[2] + b[3]
            y[i] = b[0] * num / den
            jac[i, 0] = num / den
            jac[i, 1] = b[0] * t / den
            jac[i, 2] = -b[0] * num * t / (den * den)
            jac[i, 3] = -b[0] * num / (den * den)
        elif pid == 3:  # Eckerle4: (b1/b2) * exp(-0.5*((x-b3)/b2)^2)
            u = (t - b[2]) / b[1]
            e = np.exp(-0.5 * u * u)
            y[i] = b[0] / b[1] * e
            jac[i, 0] = e / b[1]
            jac[i, 1] = b[0] / (b[1] * b[1]) * e * (u * u - 1.0)
            jac[i, 2] = b[0] / (b[1] * b[1]) * e * u
        else:  # Lanczos3: sum of three exponentials
            y[i] = 0.0
            for j in range(3):
                e = np.exp(-b[2 * j + 1] * t)
                y[i] += b[2 * j] * e
                jac[i, 2 * j] = e
                jac[i, 2 * j + 1] = -b[2 * j] * t * e


# ---------------------------------------------------------------- toy models
TOY_LINE = 0        # y = p0 + p1 x; columns k >= 2 of the Jacobian are zero
TOY_EXPGAUSS = 1    # y = p0 exp(-x / p1) + p2 exp(-((x - p3) / p4)^2 / 2)
TOY_PHASE = 2       # y = p1 cos(2 (x - p0) deg): periodic in p0 with period 180
TOY_INCL = 3        # y = p1 (cos(p0 deg) x + sin^2(p0 deg)): even about 0 and 180
TOY_NAN_ABOVE = 4   # TOY_LINE, but y = NaN where p0 > aux[4]
TOY_ROSENBROCK = 5  # residuals 10 (p1 - p0^2), 1 - p0 (obs must be 0, 0)
TOY_FREQ = 6        # y = cos(p0 x): many local minima in p0
TOY_LINE_SUM = 7    # y = (p0 + p1) + p2 x: collinear columns, singular J^T J

# aux = ctx[1]: [mode, min p0 seen, max p0 seen, number of evaluations, NaN threshold]
AUX_SIZE = 5


def toy_ctx(mode: int, x: np.ndarray, nan_above: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Context for :func:`toy_model_impl`; ctx[1] also records what the model saw."""
    aux = np.array([float(mode), np.inf, -np.inf, 0.0, nan_above])
    return (np.ascontiguousarray(x, dtype=np.float64), aux)


@njit(cache=True, nogil=True)
def toy_model_impl(p, ctx, y, jac):
    """Several small models selected by ``ctx[1][0]`` (see the TOY_* codes).

    A spy as well: records the range of ``p[0]`` it was evaluated at and the
    number of calls in ``ctx[1]`` (not thread-safe; tests using it run one
    thread).
    """
    x = ctx[0]
    aux = ctx[1]
    mode = int(aux[0])
    if p[0] < aux[1]:
        aux[1] = p[0]
    if p[0] > aux[2]:
        aux[2] = p[0]
    aux[3] += 1.0
    npar = p.size
    deg = np.pi / 180.0
    for i in range(x.size):
        for k in range(npar):
            jac[i, k] = 0.0
        t = x[i]
        if mode == 0 or mode == 4:
            y[i] = p[0] + p[1] * t
            jac[i, 0] = 1.0
            jac[i, 1] = t
            if mode == 4 and p[0] > aux[4]:
                y[i] = np.nan
        elif mode == 1:
            e1 = np.exp(-t / p[1])
            u = (t - p[3]) / p[4]
            e2 = np.exp(-0.5 * u * u)
            y[i] = p[0] * e1 + p[2] * e2
            jac[i, 0] = e1
            jac[i, 1] = p[0] * e1 * t / (p[1] * p[1])
            jac[i, 2] = e2
            jac[i, 3] = p[2] * e2 * u / p[4]
            jac[i, 4] = p[2] * e2 * u * u / p[4]
        elif mode == 2:
            c = np.cos(2.0 * (t - p[0]) * deg)
            s = np.sin(2.0 * (t - p[0]) * deg)
            y[i] = p[1] * c
            jac[i, 0] = p[1] * s * 2.0 * deg
            jac[i, 1] = c
        elif mode == 3:
            c = np.cos(p[0] * deg)
            s = np.sin(p[0] * deg)
            y[i] = p[1] * (c * t + s * s)
            jac[i, 0] = p[1] * (-s * t + 2.0 * s * c) * deg
            jac[i, 1] = c * t + s * s
        elif mode == 5:
            if i == 0:
                y[i] = 10.0 * (p[1] - p[0] * p[0])
                jac[i, 0] = -20.0 * p[0]
                jac[i, 1] = 10.0
            else:
                y[i] = 1.0 - p[0]
                jac[i, 0] = -1.0
        elif mode == 6:
            y[i] = np.cos(p[0] * t)
            jac[i, 0] = -t * np.sin(p[0] * t)
        else:
            y[i] = p[0] + p[1] + p[2] * t
            jac[i, 0] = 1.0
            jac[i, 1] = 1.0
            jac[i, 2] = t
