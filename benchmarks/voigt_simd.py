"""Does a SIMD (vectorised) Voigt / Faraday-Voigt evaluation pay in the ME fit? (issue 9, "work per model point").

The production ME kernel (``stokesflow.backends.me._kernels``) evaluates the
Faddeeva function w(z), z = v + i a, with Humlicek's W4 (four regions chosen
by branches) one Zeeman component at a time inside the loop over model
points; the branches keep LLVM from vectorising. This benchmark measures, on
this machine, in ONE process on ONE core (CPU time, ``time.process_time``):

1. the cost per evaluation of the production ``faddeeva_w4_impl`` (w and
   dw/dz) over the (v, a) points an HMI-filter fit really evaluates;
2. the same for a branch-free approximation that LLVM vectorises: Weideman's
   rational expansion (SIAM J. Numer. Anal. 31, 1497, 1994) with N = 16 and
   32 terms, w and the derivative of the approximation itself (as W4's), in
   float64 with fastmath, and whether the loop vectorised (packed ymm/zmm
   double instructions in ``inspect_asm``). Two things it takes, both
   measured here: ``error_model="numpy"`` (numba's default checks every
   float division for zero and raises, a branch that alone blocks the
   vectoriser) and the Horner loop written out (a loop over a tuple is not
   unrolled before the vectoriser runs);
3. the accuracy of W4 and of Weideman against ``scipy.special.wofz`` for
   damping 0.05-0.6 and |v| <= 30, and what it does to ME fits: a few hundred
   HMI-filter fits with the production kernel and with a copy of it whose
   Voigt evaluations are Weideman's (this script's own kernels, wired into
   the backend's real fit problem: same starts, bounds, weights, options);
4. the Voigt share of a model evaluation and of the fit (HMI ``hmi_filters``
   on the default model grid; Hinode/SP-like 112 points with two lines), the
   gain a SIMD Voigt projects from it, and the gain measured on the fits.

The experimental model is the production one restructured per evaluation:
all (model point, component) reduced distances v first, then ONE contiguous
Voigt pass over them (W4, Weideman, or none: the "no Voigt" variant measures
everything else), then the production per-point Unno-Rachkovsky solution and
instrument projection. Scratch arrays travel in the context tuple (one
thread only; this is a benchmark, not a production kernel).

Run: ``nice -n 10 python benchmarks/voigt_simd.py [--npix 300] [--seed 1] [--repeat 7]``.
The first run compiles the kernels into numba's cache (about 30-60 s on a
loaded 2-core machine); later runs load them.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import sys
import time

import numba
import numpy as np
import scipy
from numba import njit
from scipy.special import wofz

from stokesflow.backends import get_backend
from stokesflow.backends.me import backend as me_backend_module
from stokesflow.backends.me._kernels import (  # noqa: F401 - _horner_step_impl is used by the kernels below
    _SIMD,
    _components_geometry_v_impl,
    _components_impl,
    _grid_from_pass_impl,
    _stray_light_impl,
    _horner_step_impl,
    _weideman_coefficients,
    faddeeva_w4_impl,
    me_model_impl,
)
from stokesflow.lm_solver import fit
from stokesflow.lm_solver._kernels import fit_pixels_impl

__all__ = [
    "weideman_coefficients",
    "weideman16_pass_impl",
    "weideman32_pass_impl",
    "w4_pass_impl",
    "w4_many_impl",
    "weideman16_many_impl",
    "weideman32_many_impl",
    "batch_model_impl",
    "batch_fit_impl",
    "main",
]

HMI_WAVE = 6173.334 + np.array([-172.0, -103.2, -34.4, 34.4, 103.2, 172.0]) * 1e-3
HINODE_WAVE = 6300.884 + np.arange(112) * 0.021549
_RSQPI = 1.0 / math.sqrt(math.pi)

#: Voigt variants of the experimental model (ctl[0] in the context).
VARIANT_W4, VARIANT_WEID16, VARIANT_WEID32, VARIANT_NONE = 0, 1, 2, 3
#: Key of the production model's cost in :func:`section_model`'s result (not a variant of the copy).
PRODUCTION = -1
#: The production model in this script's fresh wrapper of the engine (:func:`prod_fit_impl`).
PRODUCTION_FRESH = -2
VARIANT_NAMES = {PRODUCTION_FRESH: "production, fresh wrapper", VARIANT_W4: "W4 pass (production W4)",
                 VARIANT_WEID16: "Weideman N=16 (SIMD)", VARIANT_WEID32: "Weideman N=32 (SIMD)",
                 VARIANT_NONE: "no Voigt (rest of the model)"}


# Weideman's coefficients, the Horner step and the SIMD compile options are the production ones
# (stokesflow.backends.me._kernels, which explains why fastmath and error_model="numpy" are needed
# and why the Horner loop is written out); this script adds N = 32 and the timing harness.
weideman_coefficients = _weideman_coefficients


@njit(inline="always", **_SIMD)
def _horner16_impl(zr, zi, c):
    """p(Z), p'(Z) for the 16 coefficients ``c`` (highest degree first), unrolled."""
    pr, pi, dpr, dpi = c[0], 0.0, 0.0, 0.0
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[1])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[2])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[3])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[4])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[5])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[6])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[7])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[8])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[9])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[10])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[11])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[12])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[13])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[14])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[15])
    return pr, pi, dpr, dpi


@njit(inline="always", **_SIMD)
def _horner32_impl(zr, zi, c):
    """p(Z), p'(Z) for the 32 coefficients ``c`` (highest degree first), unrolled."""
    pr, pi, dpr, dpi = c[0], 0.0, 0.0, 0.0
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[1])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[2])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[3])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[4])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[5])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[6])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[7])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[8])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[9])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[10])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[11])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[12])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[13])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[14])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[15])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[16])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[17])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[18])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[19])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[20])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[21])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[22])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[23])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[24])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[25])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[26])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[27])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[28])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[29])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[30])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c[31])
    return pr, pi, dpr, dpi


@njit(inline="always", **_SIMD)
def _weideman_head_impl(v, a, L):
    """1/D and Z = (L + i z)/D for z = v + i a, D = L - i z = (L + a) - i v."""
    ar = L + a
    q = 1.0 / (ar * ar + v * v)
    ir = ar * q
    ii = v * q
    br = L - a
    return ir, ii, br * ir - v * ii, br * ii + v * ir


@njit(inline="always", **_SIMD)
def _weideman_tail_impl(ir, ii, pr, pi, dpr, dpi, L):
    """w = D^-1 (2 p D^-1 + 1/sqrt(pi)) and dw/dz = i D^-2 (4 L p' D^-2 + 4 p D^-1 + 1/sqrt(pi)).

    The derivative is that of the approximation itself (dZ/dz = 2 i L D^-2),
    as the production W4's is. Returns (Re w, Im w, Re dw/dz, Im dw/dz).
    """
    sr = pr * ir - pi * ii
    si = pr * ii + pi * ir
    tr = 2.0 * sr + _RSQPI
    ti = 2.0 * si
    i2r = ir * ir - ii * ii
    i2i = 2.0 * ir * ii
    gr = dpr * i2r - dpi * i2i
    gi = dpr * i2i + dpi * i2r
    hr = 4.0 * L * gr + 4.0 * sr + _RSQPI
    hi = 4.0 * L * gi + 4.0 * si
    return (ir * tr - ii * ti, ir * ti + ii * tr,
            -(i2r * hi + i2i * hr), i2r * hr - i2i * hi)


@njit(**_SIMD)
def weideman16_pass_impl(v, a, L, coef, wr, wi, dr, di):
    """Weideman N=16 (w and dw/dz) over ``v``, ``a`` (n,): one contiguous, branch-free loop."""
    for i in range(v.shape[0]):
        ir, ii, zr, zi = _weideman_head_impl(v[i], a[i], L)
        pr, pi, dpr, dpi = _horner16_impl(zr, zi, coef)
        r0, r1, r2, r3 = _weideman_tail_impl(ir, ii, pr, pi, dpr, dpi, L)
        wr[i] = r0
        wi[i] = r1
        dr[i] = r2
        di[i] = r3


@njit(**_SIMD)
def weideman32_pass_impl(v, a, L, coef, wr, wi, dr, di):
    """Weideman N=32 (w and dw/dz) over ``v``, ``a`` (n,): one contiguous, branch-free loop."""
    for i in range(v.shape[0]):
        ir, ii, zr, zi = _weideman_head_impl(v[i], a[i], L)
        pr, pi, dpr, dpi = _horner32_impl(zr, zi, coef)
        r0, r1, r2, r3 = _weideman_tail_impl(ir, ii, pr, pi, dpr, dpi, L)
        wr[i] = r0
        wi[i] = r1
        dr[i] = r2
        di[i] = r3


@njit(cache=True, nogil=True)
def w4_pass_impl(v, a, wr, wi, dr, di):
    """The production W4 over ``v``, ``a`` (n,), one point at a time (branches per point)."""
    for i in range(v.shape[0]):
        w, dw = faddeeva_w4_impl(v[i], a[i])
        wr[i] = w.real
        wi[i] = w.imag
        dr[i] = dw.real
        di[i] = dw.imag


@njit(cache=True, nogil=True)
def w4_many_impl(V, A, out):
    """W4 on every row of V, A (npix, n) (one row = one model evaluation's points); out (4, n) reused."""
    for p in range(V.shape[0]):
        w4_pass_impl(V[p], A[p], out[0], out[1], out[2], out[3])


@njit(cache=True, nogil=True)
def weideman16_many_impl(V, A, L, coef, out):
    """Weideman N=16 on every row of V, A (npix, n); out (4, n) reused."""
    for p in range(V.shape[0]):
        weideman16_pass_impl(V[p], A[p], L, coef, out[0], out[1], out[2], out[3])


@njit(cache=True, nogil=True)
def weideman32_many_impl(V, A, L, coef, out):
    """Weideman N=32 on every row of V, A (npix, n); out (4, n) reused."""
    for p in range(V.shape[0]):
        weideman32_pass_impl(V[p], A[p], L, coef, out[0], out[1], out[2], out[3])


@njit(cache=True, nogil=True)
def batch_model_impl(p, ctx, y, jac):
    """The production ME model (``me_model_impl``) with the Faddeeva pass of the chosen variant.

    ``ctx`` is the production context (12 entries) plus: 12 work (6, nmax)
    float64 scratch [v, Re w, Im w, Re dw, Im dw, a] (the first five rows in
    the production layout); 13 ctl int64 [variant, evaluation counter]; 14 L
    of N=16; 15 coefficients N=16 (tuple); 16 L of N=32; 17 coefficients
    N=32 (tuple). Everything but the pass is the production code.
    """
    work = ctx[12]
    ctl = ctx[13]
    ctl[1] += 1
    n = ctx[0].shape[0] * ctx[3].shape[0]
    comp = np.empty((ctx[3].shape[0], 6))
    geo = np.empty(10)
    vv = work[0]
    _components_geometry_v_impl(p, ctx, comp, geo, vv)
    aa = work[5]
    for i in range(n):
        aa[i] = p[6]
    variant = ctl[0]
    if variant == 0:
        w4_pass_impl(vv[:n], aa[:n], work[1], work[2], work[3], work[4])
    elif variant == 1:
        weideman16_pass_impl(vv[:n], aa[:n], ctx[14], ctx[15], work[1], work[2], work[3], work[4])
    elif variant == 2:
        weideman32_pass_impl(vv[:n], aa[:n], ctx[16], ctx[17], work[1], work[2], work[3], work[4])
    _grid_from_pass_impl(p, ctx, y, jac, comp, geo, work)
    _stray_light_impl(p, ctx, y, jac)


@njit(cache=True, nogil=True)
def batch_model_loop_impl(P, ctx, y, jac):
    """Evaluate :func:`batch_model_impl` for every parameter row of P (npix, npar); returns sum(y) (kept live)."""
    tot = 0.0
    for i in range(P.shape[0]):
        batch_model_impl(P[i], ctx, y, jac)
        tot += y[0]
    return tot


@njit(cache=True, nogil=True)
def prod_model_loop_impl(P, ctx, y, jac):
    """Evaluate the production ``me_model_impl`` for every parameter row of P (npix, npar)."""
    tot = 0.0
    for i in range(P.shape[0]):
        me_model_impl(P[i], ctx, y, jac)
        tot += y[0]
    return tot


@njit(cache=True, nogil=True)
def batch_fit_impl(ctx, obs, weights, p0, lower, upper, bound_mode, scale, reg_target, reg_weight,
                   max_iter, chi2_rtol, step_tol, good_chi2, scale_covar,
                   out_p, out_sigma, out_chi2, out_niter, out_status):
    """The lm_solver engine with :func:`batch_model_impl` bound as a global (cached, see lm_solver._kernels)."""
    fit_pixels_impl(batch_model_impl, ctx, obs, weights, p0, lower, upper, bound_mode, scale,
                    reg_target, reg_weight, max_iter, chi2_rtol, step_tol, good_chi2, scale_covar,
                    out_p, out_sigma, out_chi2, out_niter, out_status)


@njit(cache=True, nogil=True)
def prod_fit_impl(ctx, obs, weights, p0, lower, upper, bound_mode, scale, reg_target, reg_weight,
                  max_iter, chi2_rtol, step_tol, good_chi2, scale_covar,
                  out_p, out_sigma, out_chi2, out_niter, out_status):
    """The production ``me_fit_pixels_impl`` compiled afresh here (the current engine, this script's cache).

    Separates what the restructured model gains from what a cached production
    kernel built with an older engine, or in another compilation, costs.
    """
    fit_pixels_impl(me_model_impl, ctx, obs, weights, p0, lower, upper, bound_mode, scale,
                    reg_target, reg_weight, max_iter, chi2_rtol, step_tol, good_chi2, scale_covar,
                    out_p, out_sigma, out_chi2, out_niter, out_status)


# ---------------------------------------------------------------------------------------------------------
W16 = weideman_coefficients(16)
W32 = weideman_coefficients(32)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The SIMD flags of the CPU (avx2, fma, avx512f) from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    fl = set(line.split(":", 1)[1].split())
                    return " ".join(x for x in ("sse4_2", "avx", "avx2", "fma", "avx512f") if x in fl)
    except OSError:
        pass
    return "?"


def llvm_cpu() -> str:
    """The CPU name LLVM compiles for (numba's target unless NUMBA_CPU_NAME overrides it)."""
    import llvmlite.binding as llvm

    return numba.config.CPU_NAME or llvm.get_host_cpu_name()


def best_cpu(fns: dict, repeat: int) -> dict:
    """Best CPU time of this process [s] of each ``fns[key]()`` over ``repeat`` rounds.

    The calls alternate (one of each per round), so a change of the
    machine's load during the measurement hits every case alike.
    """
    best = {key: math.inf for key in fns}
    for _ in range(repeat):
        for key, fn in fns.items():
            t0 = time.process_time()
            fn()
            best[key] = min(best[key], time.process_time() - t0)
    return best


def simd_census(asm: str) -> dict[str, int]:
    """Count packed-double (ymm/zmm/xmm) and scalar-double arithmetic instructions in an asm listing."""
    arith = r"v(?:add|sub|mul|div|fmadd\d*|fmsub\d*|fnmadd\d*|fnmsub\d*|max|min)"
    lines = asm.splitlines()
    out = {"ymm packed pd": 0, "zmm packed pd": 0, "xmm packed pd": 0, "scalar sd": 0}
    for ln in lines:
        s = ln.strip()
        if re.match(arith + r"pd\b", s):
            if "zmm" in s:
                out["zmm packed pd"] += 1
            elif "ymm" in s:
                out["ymm packed pd"] += 1
            else:
                out["xmm packed pd"] += 1
        elif re.match(arith + r"sd\b", s):
            out["scalar sd"] += 1
    return out


def asm_of(dispatcher) -> str:
    """Assembly of a dispatcher's compiled signatures, compiled afresh with the same options.

    Code loaded from numba's cache carries no assembly (``inspect_asm`` is
    empty then), so the check always compiles a copy (without the cache).
    """
    opts = {k: v for k, v in dispatcher.targetoptions.items() if k not in ("cache", "nopython")}
    fresh = njit(**opts)(dispatcher.py_func)
    for sig in dispatcher.signatures:
        fresh.compile(sig)
    return "\n".join(fresh.inspect_asm().values())


def model_points(be, wave) -> tuple[int, int]:
    """(model points, Zeeman components) of a backend's model for ``wave``."""
    m = be.model_for(wave)
    return m.instrument.model_wavelength.size, m.ctx[3].shape[0]


def extended_ctx(ctx: tuple, variant: int) -> tuple:
    """The production context plus the experimental model's scratch, control and coefficients."""
    n = ctx[0].shape[0] * ctx[3].shape[0]
    return ctx + (np.zeros((6, n)), np.array([variant, 0], dtype=np.int64), W16[0], W16[1], W32[0], W32[1])


def random_params(n: int, rng: np.random.Generator, eta_range: tuple[float, float]) -> np.ndarray:
    """Uniform random ME parameters (n, 9), the ranges of benchmarks/me_throughput.py."""
    return np.stack([rng.uniform(0, 3000, n), rng.uniform(0, 180, n), rng.uniform(0, 180, n),
                     rng.uniform(-3, 3, n), rng.uniform(20, 40, n), rng.uniform(*eta_range, n),
                     rng.uniform(0, 0.5, n), rng.uniform(0.1, 0.4, n), rng.uniform(0.5, 1.0, n)], axis=1)


def reduced_distances(ctx: tuple, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V, A (npix, nm*nc): the (v, a) every model evaluation at the parameter rows P computes."""
    mwave, lam0, ratio, cline, _, cshift, cstr = ctx[:7]
    nm, nc = mwave.size, cline.size
    V = np.empty((P.shape[0], nm * nc))
    comp = np.empty((nc, 6))
    for i, p in enumerate(P):
        _components_impl(p[0], p[3], p[4] * 1e-3, lam0, ratio, cline, cshift, cstr, comp)
        V[i] = (((mwave[:, None] - comp[None, :, 5]) - comp[None, :, 0]) * comp[None, :, 4]).ravel()
    A = np.repeat(P[:, 6:7], nm * nc, axis=1)
    return np.ascontiguousarray(V), np.ascontiguousarray(np.maximum(A, 0.0))


# ---------------------------------------------------------------------------------------------------------
def section_cost(ctx: tuple, P: np.ndarray, repeat: int, label: str) -> dict[str, float]:
    """1 + 2: ns per evaluation (w and dw/dz) of W4 and Weideman over one case's real (v, a)."""
    V, A = reduced_distances(ctx, P)
    n = V.shape[1]
    out = np.empty((4, n))
    s = np.abs(V) + A
    reg = [np.mean(s >= 15), np.mean((s < 15) & (s >= 5.5)),
           np.mean((s < 5.5) & (A >= 0.195 * np.abs(V) - 0.176)), np.mean((s < 5.5) & (A < 0.195 * np.abs(V) - 0.176))]
    print(f"{label}: {V.shape[0]} pixels x {n} (v, a) per model evaluation; W4 regions I/II/III/IV "
          f"{100 * reg[0]:.0f}/{100 * reg[1]:.0f}/{100 * reg[2]:.0f}/{100 * reg[3]:.0f} % of the points")
    runs = {"W4 (production, branches)": lambda: w4_many_impl(V, A, out),
            "Weideman N=16 (SIMD)": lambda: weideman16_many_impl(V, A, W16[0], W16[1], out),
            "Weideman N=32 (SIMD)": lambda: weideman32_many_impl(V, A, W32[0], W32[1], out)}
    for fn in runs.values():
        fn()  # compile / load
    costs = {name: 1e9 * dt / V.size for name, dt in best_cpu(runs, 3 * repeat).items()}
    base = costs["W4 (production, branches)"]
    for name, c in costs.items():
        print(f"  {name:28s} {c:6.2f} ns per evaluation (w and dw/dz) | {base / c:5.2f}x W4")
    return costs


def section_asm() -> None:
    """2: did LLVM vectorise the loops? Packed-double instruction census of each pass."""
    print("vectorisation (inspect_asm, arithmetic instructions on doubles: packed ymm/zmm/xmm vs scalar):")
    for name, disp in (("weideman16_pass_impl", weideman16_pass_impl),
                       ("weideman32_pass_impl", weideman32_pass_impl),
                       ("w4_pass_impl (production W4)", w4_pass_impl)):
        c = simd_census(asm_of(disp))
        verdict = "VECTORISED" if c["ymm packed pd"] + c["zmm packed pd"] > 0 else "scalar (not vectorised)"
        print(f"  {name:36s} {c} -> {verdict}")


def section_accuracy(eta_max: float, noise: float) -> None:
    """3: accuracy against scipy.special.wofz for a 0.05-0.6, |v| <= 30."""
    v = np.linspace(-30.0, 30.0, 6001)
    a = np.linspace(0.05, 0.6, 56)
    Vg, Ag = (x.ravel().copy() for x in np.meshgrid(v, a))
    z = Vg + 1j * Ag
    w = wofz(z)
    dw = -2.0 * z * w + 2j * _RSQPI  # exact dw/dz
    out = np.empty((4, Vg.size))
    print(f"accuracy against scipy.special.wofz on {Vg.size} points (a 0.05-0.6, |v| <= 30); "
          "H = Re w, F = Im w (twice the Faraday-Voigt function); F relative where |v| >= 0.1:")
    far = np.abs(Vg) >= 0.1
    for name, fn in (("W4 (production)", lambda: w4_pass_impl(Vg, Ag, out[0], out[1], out[2], out[3])),
                     ("Weideman N=16", lambda: weideman16_pass_impl(Vg, Ag, W16[0], W16[1], *out)),
                     ("Weideman N=32", lambda: weideman32_pass_impl(Vg, Ag, W32[0], W32[1], *out))):
        fn()
        eH = np.abs(out[0] - w.real)
        eF = np.abs(out[1] - w.imag)
        ed = np.abs(out[2] + 1j * out[3] - dw)
        relF = np.max(eF[far] / np.abs(w.imag[far]))
        print(f"  {name:16s} max rel H {np.max(eH / w.real):8.1e} | max rel F {relF:8.1e}"
              f" | max abs H {eH.max():8.1e}, F {eF.max():8.1e} | max |d(dw/dz)| / max|dw/dz| "
              f"{ed.max() / np.abs(dw).max():8.1e} | eta0 {eta_max:g} x max abs error = "
              f"{eta_max * max(eH.max(), eF.max()):7.1e}"
              f" (noise {noise:g})")
    # the fit's whole damping range (bounds 0-3): absolute errors (H itself underflows in the far
    # Doppler wing as a -> 0, so a relative figure says nothing there)
    v = np.linspace(-30.0, 30.0, 3001)
    a = np.concatenate([[0.0, 1e-3, 0.01], np.linspace(0.02, 3.0, 150)])
    Vg, Ag = (x.ravel().copy() for x in np.meshgrid(v, a))
    w = wofz(Vg + 1j * Ag)
    out = np.empty((4, Vg.size))
    msg = []
    for name, fn in (("W4", lambda: w4_pass_impl(Vg, Ag, out[0], out[1], out[2], out[3])),
                     ("Weideman N=16", lambda: weideman16_pass_impl(Vg, Ag, W16[0], W16[1], *out)),
                     ("Weideman N=32", lambda: weideman32_pass_impl(Vg, Ag, W32[0], W32[1], *out))):
        fn()
        msg.append(f"{name} {np.max(np.abs(out[0] + 1j * out[1] - w)):.1e}")
    print(f"  max |w - wofz| over the fit's damping bounds a 0-3, |v| <= 30: {', '.join(msg)}")


def capture_fits(be, obs: np.ndarray, wave: np.ndarray, repeat: int) -> tuple[list, float, object]:
    """Run ``be.invert`` with the LM calls recorded; returns (calls of the last run, best CPU s, result)."""
    calls = []
    original = me_backend_module.fit

    def recorder(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    me_backend_module.fit = recorder
    dt = math.inf
    try:
        for _ in range(repeat):
            calls.clear()
            t0 = time.process_time()
            res = be.invert(obs, wave)
            dt = min(dt, time.process_time() - t0)
    finally:
        me_backend_module.fit = original
    return calls, dt, res


def replay(calls: list, variant: int | None) -> tuple[list, int]:
    """Re-run the recorded LM calls: production kernel (None) or the experimental one; (results, evaluations)."""
    results, nev = [], 0
    for args, kwargs in calls:
        if variant is None:
            results.append(fit(*args, **kwargs))
            continue
        if variant == PRODUCTION_FRESH:
            results.append(fit(*args, **dict(kwargs, kernel=prod_fit_impl)))
            continue
        ctx = extended_ctx(args[1], variant)
        kw = dict(kwargs, kernel=batch_fit_impl, threads=1)
        results.append(fit(args[0], ctx, *args[2:], **kw))
        nev += int(ctx[13][1])
    return results, nev


def folded(params: np.ndarray) -> np.ndarray:
    """Fit parameters with B >= 0 (B -> -B, inclination -> 180 - inclination: the same field, as invert() does)."""
    q = params.copy()
    neg = q[:, 0] < 0
    q[neg, 0] = -q[neg, 0]
    q[neg, 1] = 180.0 - q[neg, 1]
    return q


def deltas(res: list, ref: list) -> str:
    """Median/max |difference| of B, inclination and vlos between two replays (all LM calls, folded)."""
    if all(np.array_equal(r.params, q.params, equal_nan=True) for r, q in zip(res, ref)):
        return "bit-identical"
    d = {}
    for name, col in (("B", 0), ("incl", 1), ("vlos", 3)):
        diff = np.concatenate([np.abs(folded(r.params)[:, col] - folded(q.params)[:, col]) for r, q in zip(res, ref)])
        d[name] = (np.nanmedian(diff), np.nanmax(diff))
    return (f"median/max |dB| {d['B'][0]:.2g}/{d['B'][1]:.2g} G, |dincl| {d['incl'][0]:.2g}/{d['incl'][1]:.2g} deg, "
            f"|dvlos| {1e3 * d['vlos'][0]:.2g}/{1e3 * d['vlos'][1]:.2g} m/s")


def versus_truth(res: list, truth: np.ndarray) -> str:
    """Median |B - truth| and pixels off by > 100 G, from the first LM call (every pixel, the first starts)."""
    dB = np.abs(folded(res[0].params)[:, 0] - truth[:, 0])
    return f"vs truth median |dB| {np.nanmedian(dB):.2f} G, > 100 G: {int(np.sum(dB > 100))}"


def section_fits(label: str, be, obs: np.ndarray, wave: np.ndarray, truth: np.ndarray, repeat: int,
                 model_cost: dict[int, float]) -> None:
    """3 + 4: the backend's real fit problem with W4 (production and copy) and Weideman; time, evaluations, deltas."""
    be.setup((obs[:2], wave))
    calls, t_invert, _ = capture_fits(be, obs, wave, repeat)
    npix = obs.shape[0]
    ref, _ = replay(calls, None)
    rows = {}
    for variant in (PRODUCTION_FRESH, VARIANT_W4, VARIANT_WEID16, VARIANT_WEID32):
        rows[variant] = replay(calls, variant)
    times = best_cpu({None: lambda: replay(calls, None),
                      **{v: (lambda v=v: replay(calls, v)) for v in rows}}, repeat)
    t_prod = times[None]
    print(f"{label}: {npix} pixels, invert {t_invert:.3f} CPU s ({npix / t_invert:.0f} px/s) of which the LM fit "
          f"(production kernel, {len(calls)} call(s)) {t_prod:.3f} s ({100 * t_prod / t_invert:.0f} %)")
    iters = sum(int(r.n_iter.sum()) for r in ref)
    nev = rows[VARIANT_W4][1]
    rows = {v: (res, nev if v == PRODUCTION_FRESH else nv, times[v]) for v, (res, nv) in rows.items()}
    t_voigt = nev * (model_cost[VARIANT_W4] - model_cost[VARIANT_NONE])
    t_model = nev * model_cost[PRODUCTION]
    print(f"  model evaluations {nev} ({nev / npix:.1f} per pixel, {iters / npix:.1f} iterations per pixel); "
          f"production model {1e6 * model_cost[PRODUCTION]:.2f} us per evaluation -> model "
          f"{100 * t_model / t_prod:.0f} % of the fit, its W4 Voigt evaluations "
          f"{100 * t_voigt / t_prod:.0f} % of the fit")
    print(f"  {'production me_fit_pixels_impl':28s} fit {t_prod:.3f} CPU s, {1e6 * t_prod / nev:6.2f} us per evaluation"
          f" | {versus_truth(ref, truth)}")
    for variant, (res, nv, dt) in rows.items():
        proj = nev * (model_cost[PRODUCTION] - model_cost.get(variant, model_cost[PRODUCTION]))
        print(f"  {VARIANT_NAMES[variant]:28s} fit {dt:.3f} CPU s, {1e6 * dt / nv:6.2f} us per evaluation, "
              f"{nv} evaluations: {100 * (t_prod / dt - 1):+5.1f} % speed vs production (per evaluation "
              f"{100 * (t_prod / nev / (dt / nv) - 1):+5.1f} %; projected from the model cost alone "
              f"{100 * (t_prod / (t_prod - proj) - 1):+5.1f} %) | {versus_truth(res, truth)}")
        print(f"  {'':28s} vs production W4 fit: {deltas(res, ref)}")
    print(f"  Weideman N=16 vs N=32 fits (the error of N=16 alone): "
          f"{deltas(rows[VARIANT_WEID16][0], rows[VARIANT_WEID32][0])}")

    def per_eval(v):
        return rows[v][2] / rows[v][1]

    print(f"  SUMMARY {label}: fit CPU per model evaluation vs production: one Voigt pass per evaluation "
          f"(W4, no SIMD) {100 * (t_prod / nev / per_eval(VARIANT_W4) - 1):+.0f} %, the same with SIMD Weideman N=16 "
          f"{100 * (t_prod / nev / per_eval(VARIANT_WEID16) - 1):+.0f} % (SIMD alone "
          f"{100 * (per_eval(VARIANT_W4) / per_eval(VARIANT_WEID16) - 1):+.0f} %); W4 evaluations "
          f"{100 * t_voigt / t_prod:.0f} % of the production fit")


def section_model(label: str, ctx: tuple, P: np.ndarray, repeat: int) -> dict[int, float]:
    """4: CPU s per model evaluation (value + 9-column Jacobian) for each Voigt variant and for production (key -1)."""
    nobs = ctx[8].shape[0] if ctx[8].size else ctx[0].size
    y = np.empty(4 * nobs)
    jac = np.empty((4 * nobs, 9))
    prod_model_loop_impl(P[:2], ctx, y, jac)
    ext = {v: extended_ctx(ctx, v) for v in (VARIANT_W4, VARIANT_WEID16, VARIANT_WEID32, VARIANT_NONE)}
    batch_model_loop_impl(P[:2], ext[VARIANT_W4], y, jac)
    runs = {None: lambda: prod_model_loop_impl(P, ctx, y, jac),
            **{v: (lambda v=v: batch_model_loop_impl(P, ext[v], y, jac)) for v in ext}}
    cost = {v: dt / P.shape[0] for v, dt in best_cpu(runs, 3 * repeat).items()}
    t_prod = cost.pop(None)
    nm, nc = ctx[0].size, ctx[3].size
    share = (cost[VARIANT_W4] - cost[VARIANT_NONE]) / cost[VARIANT_W4]
    print(f"{label}: one model evaluation ({nm} points x {nc} components, value + Jacobian), {P.shape[0]} pixels:")
    print(f"  production me_model_impl     {1e6 * t_prod:7.2f} us")
    for variant, c in cost.items():
        gain = cost[VARIANT_W4] / c - 1.0
        print(f"  {VARIANT_NAMES[variant]:28s} {1e6 * c:7.2f} us" + ("" if variant == VARIANT_W4 else
                                                                     f" ({100 * gain:+.0f} % speed vs W4 pass)"))
    print(f"  -> the W4 Voigt pass is {100 * share:.0f} % of a model evaluation "
          f"({1e9 * (cost[VARIANT_W4] - cost[VARIANT_NONE]) / (nm * nc):.1f} ns per (point, component))")
    cost[PRODUCTION] = t_prod
    return cost


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npix", type=int, default=300, help="HMI-filter pixels fitted (default 300)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--noise", type=float, default=1e-3)
    ap.add_argument("--repeat", type=int, default=7,
                    help="timing rounds of the fits (3x that for the shorter Voigt and model timings); the best "
                         "CPU time of each case is printed, cases alternate within a round")
    args = ap.parse_args(argv)
    t_start = time.process_time()
    w_start = time.perf_counter()
    print(f"cpu: {cpu_model()} ({cpu_flags()}), cores: {os.cpu_count()}, llvm target {llvm_cpu()}"
          f", load average {os.getloadavg()[0]:.1f}; one process, one thread, CPU time (time.process_time)")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, numba {numba.__version__}, "
          f"scipy {scipy.__version__}, SVML {'yes' if numba.config.USING_SVML else 'no'}")
    rng = np.random.default_rng(args.seed)
    noise = args.noise

    # the HMI filtergram case of issue 9: built-in hmi_filters on the default model grid
    be_h = get_backend("me", {"lines": ["FeI_6173"], "noise": noise, "instrument": "hmi_filters"})
    ctx_h = be_h.model_for(HMI_WAVE).ctx
    be_hin = get_backend("me", {"lines": ["FeI_6301", "FeI_6302"], "noise": noise})
    ctx_hin = be_hin.model_for(HINODE_WAVE).ctx
    nm, nc = model_points(be_h, HMI_WAVE)
    nm2, nc2 = model_points(be_hin, HINODE_WAVE)
    print(f"cases: HMI hmi_filters default model grid {nm} points x {nc} Zeeman components; "
          f"Hinode/SP-like FeI 6301+6302 {nm2} points x {nc2} components")
    P_h = random_params(2000, rng, (3, 20))
    P_hin = random_params(300, rng, (5, 40))

    print("\n== 1-2. cost per Faddeeva evaluation (w and dw/dz), the (v, a) of real model evaluations ==")
    section_cost(ctx_h, P_h, args.repeat, "HMI hmi_filters")
    section_cost(ctx_hin, P_hin, args.repeat, "Hinode/SP-like")
    section_asm()

    print("\n== 3. accuracy ==")
    section_accuracy(40.0, noise)

    print("\n== 4. Voigt share of a model evaluation, and of the fit ==")
    cost_h = section_model("HMI hmi_filters", ctx_h, P_h, args.repeat)
    cost_hin = section_model("Hinode/SP-like", ctx_hin, P_hin, args.repeat)

    truth = random_params(args.npix, rng, (3, 20))
    obs = get_backend("me", {"lines": ["FeI_6173"], "noise": noise, "instrument": "hmi_filters",
                             "filter_step": 0}).synthesize(truth, HMI_WAVE)
    obs += rng.normal(0.0, noise, obs.shape)
    print()
    section_fits("HMI hmi_filters fits", be_h, obs, HMI_WAVE, truth, args.repeat, cost_h)
    th = random_params(max(args.npix // 3, 10), rng, (5, 40))
    obs_hin = be_hin.synthesize(th, HINODE_WAVE) + rng.normal(0.0, noise, (th.shape[0], 4, HINODE_WAVE.size))
    section_fits("Hinode/SP-like fits", be_hin, obs_hin, HINODE_WAVE, th, args.repeat, cost_hin)
    print(f"\ntotal: {time.process_time() - t_start:.1f} CPU s, {time.perf_counter() - w_start:.1f} s wall "
          f"(includes compiling or loading the kernels)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
