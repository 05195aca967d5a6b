"""Numba kernels of the Milne-Eddington forward model.

Plain module-level functions over arrays and scalars (no config objects),
compiled with ``cache=True, nogil=True``. The model callable handed to
``lm_solver`` is :func:`me_model_impl`, with the signature
``model(p, ctx, y, jac)``.

Physics: Unno-Rachkovsky solution of the polarised transfer equation for a
source function linear in continuum optical depth, S = S0 + S1 tau, observed
at heliocentric mu (LL04 section 9.8). Absorption and dispersion profiles
are the real and imaginary parts of the Faddeeva function w(z), z = v + i a,
computed with Humlicek's (1982) W4 rational approximation
(:func:`faddeeva_w4_impl`, max |w - wofz| 3.7e-5 for damping 0-3). All
derivatives are analytic (derivatives of the rational approximation
itself). Each model evaluation first computes the reduced distance v of
every (model point, Zeeman component), then runs ONE Faddeeva pass over
them (:func:`faddeeva_w4_pass_impl`), then the per-point solution.
:func:`faddeeva_pass_impl` is the branch-free, vectorised (SIMD)
alternative, Weideman's (1994) N = 16 expansion (1.2e-7; 25-30 % faster
fits, ``benchmarks/voigt_simd.py``): tested, and switched in by one line of
:func:`_me_grid_impl`, but not yet used, because it moves LM fits into
other local minima than W4 (see that function).
Scratch arrays are allocated per call, so the kernels are thread-safe.

Context tuple ``ctx`` (built by ``stokesflow.backends.me.model.build_context``):

=====  ===============  =====================================================
index  array            meaning
=====  ===============  =====================================================
0      mwave (nm,)      model wavelengths [A]
1      lam0 (nl,)       line centres [A]
2      ratio (nl,)      line opacity relative to the first line (gf ratio)
3      cline (nc,)      line index of each Zeeman component
4      cgroup (nc,)     0 sigma_b, 1 pi, 2 sigma_r
5      cshift (nc,)     shift in units of ZEEMAN_CONSTANT lambda0^2 B [A]
6      cstr (nc,)       relative strength of each component
7      mu (1,)          heliocentric cosine
8      proj (no, nm)    instrument matrix (observed = proj @ model); (0, 0) = none
9      stray (4*no,)    stray-light profile on the observed grid (filling factor)
10     flags (2,)       [use_filling_factor, unused]
11     rows (nm, 2)     rows [first, stop) of proj reached by each model point
=====  ===============  =====================================================

The Zeeman constant is :data:`stokesflow.backends.me.lines.ZEEMAN_CONSTANT`,
read by numba as a compile-time global: after changing it there, clear
``backends/me/__pycache__/*.nb*`` (numba's cache of this file does not see
changes in other files).

Parameter vector ``p``: B [G], inclination [deg], azimuth [deg], vlos [km/s],
doppler_width [mA], eta0, damping, S0, S1, and filling_factor when used.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from stokesflow.backends.me.lines import ZEEMAN_CONSTANT
from stokesflow.lm_solver._kernels import fit_pixels_impl

__all__ = [
    "faddeeva_w4_impl",
    "faddeeva_w4_pass_impl",
    "faddeeva_pass_impl",
    "faddeeva_weideman16_impl",
    "WEIDEMAN16_L",
    "WEIDEMAN16_COEF",
    "me_model_impl",
    "me_synth_impl",
    "me_fit_pixels_impl",
    "NPAR_ME",
]

#: Parameters of the pure ME atmosphere (without filling factor).
NPAR_ME = 9

_C_KMS = 299792.458
_DEG = math.pi / 180.0


@njit(cache=True, nogil=True, inline="always")
def _recip(z: complex) -> complex:
    """1 / z as conj(z) / |z|^2: no scaling (|z| stays within 1e-3..1e8 in W4), one division."""
    r = 1.0 / (z.real * z.real + z.imag * z.imag)
    return complex(z.real * r, -z.imag * r)


@njit(cache=True, nogil=True)
def faddeeva_w4_impl(v: float, a: float) -> tuple[complex, complex]:
    """Faddeeva function w(z) and dw/dz for z = v + i a, a >= 0 (Humlicek 1982, W4).

    Max relative error of w about 1e-4 (Humlicek 1982, JQSRT 27, 437; 5e-5
    measured against ``scipy.special.wofz`` in the tests). Re w is the Voigt
    function H(a, v) (H(0, 0) = 1), Im w is twice the Faraday-Voigt function.
    The derivative is that of the approximation itself (not -2zw + 2i/sqrt(pi)
    evaluated with it), so the Jacobian is exactly consistent with the model
    the solver fits.
    """
    t = complex(a, -v)
    s = abs(v) + a
    if s >= 15.0:
        u = t * t
        den = 0.5 + u
        inv = _recip(den)
        w = t * 0.5641896 * inv
        dwdt = 0.5641896 * (0.5 - u) * inv * inv
    elif s >= 5.5:
        u = t * t
        num = t * (1.410474 + u * 0.5641896)
        dnum = 1.410474 + 3.0 * 0.5641896 * u
        den = 0.75 + u * (3.0 + u)
        dden = 2.0 * t * (3.0 + 2.0 * u)
        inv = _recip(den)
        w = num * inv
        dwdt = (dnum - w * dden) * inv
    elif a >= 0.195 * abs(v) - 0.176:
        num = 16.4955 + t * (20.20933 + t * (11.96482 + t * (3.778987 + t * 0.5642236)))
        dnum = 20.20933 + t * (2.0 * 11.96482 + t * (3.0 * 3.778987 + t * 4.0 * 0.5642236))
        den = 16.4955 + t * (38.82363 + t * (39.27121 + t * (21.69274 + t * (6.699398 + t))))
        dden = 38.82363 + t * (2.0 * 39.27121 + t * (3.0 * 21.69274 + t * (4.0 * 6.699398 + 5.0 * t)))
        inv = _recip(den)
        w = num * inv
        dwdt = (dnum - w * dden) * inv
    else:
        u = t * t
        n = 36183.31 - u * (3321.9905 - u * (1540.787 - u * (219.0313 - u * (35.76683 - u * (1.320522 - u * 0.56419)))))
        dn = -3321.9905 + u * (2.0 * 1540.787 + u * (-3.0 * 219.0313 + u * (4.0 * 35.76683 + u * (-5.0 * 1.320522 + u * 6.0 * 0.56419))))
        den = 32066.6 - u * (24322.84 - u * (9022.228 - u * (2186.181 - u * (364.2191 - u * (61.57037 - u * (1.841439 - u))))))
        dden = -24322.84 + u * (2.0 * 9022.228 + u * (-3.0 * 2186.181 + u * (4.0 * 364.2191 + u * (-5.0 * 61.57037 + u * (6.0 * 1.841439 - 7.0 * u)))))
        e = np.exp(u)
        num = t * n
        dnum = n + 2.0 * u * dn
        inv = _recip(den)
        q = num * inv
        w = e - q
        dwdt = 2.0 * t * e - (dnum - q * 2.0 * t * dden) * inv
    # t = -i z, so dw/dz = -i dw/dt
    return w, complex(dwdt.imag, -dwdt.real)


@njit(cache=True, nogil=True)
def faddeeva_w4_pass_impl(v, a, wr, wi, dr, di):
    """:func:`faddeeva_w4_impl` over ``v`` (n,) at damping ``a``: the model's Faddeeva pass.

    ``wr``, ``wi``, ``dr``, ``di`` (at least n,) receive Re w, Im w, Re and
    Im dw/dz, as :func:`faddeeva_pass_impl` (Weideman, SIMD) does; one point
    at a time (W4's region branches keep the loop scalar).
    """
    for i in range(v.shape[0]):
        w, dw = faddeeva_w4_impl(v[i], a)
        wr[i] = w.real
        wi[i] = w.imag
        dr[i] = dw.real
        di[i] = dw.imag


def _weideman_coefficients(n: int) -> tuple[float, tuple[float, ...]]:
    """Weideman's (1994) L and polynomial coefficients (highest degree first) for ``n`` terms.

    w(z) = 2 p(Z) / (L - i z)^2 + (1/sqrt(pi)) / (L - i z), Z = (L + i z) / (L - i z),
    p of degree n - 1: his MATLAB recipe (SIAM J. Numer. Anal. 31, 1497,
    1994: FFT of the weighted Gaussian on a tangent grid), as in
    ``benchmarks/voigt_simd.py``.
    """
    m = 2 * n
    k = np.arange(-m + 1, m)
    L = math.sqrt(n / math.sqrt(2.0))
    t = L * np.tan(k * np.pi / m / 2.0)
    f = np.concatenate([[0.0], np.exp(-t * t) * (L * L + t * t)])
    a = np.real(np.fft.fft(np.fft.fftshift(f))) / (2 * m)
    return L, tuple(float(x) for x in a[1:n + 1][::-1])


#: Weideman N = 16: L and the 16 coefficients of p (highest degree first); compile-time constants
#: of the kernels (numba freezes global tuples: clear ``backends/me/__pycache__/*.nb*`` if changed).
WEIDEMAN16_L, WEIDEMAN16_COEF = _weideman_coefficients(16)
_RSQPI = 1.0 / math.sqrt(math.pi)
_L16 = WEIDEMAN16_L
_C16 = WEIDEMAN16_COEF

# Branch-free, vectorisable kernels: fastmath, and error_model="numpy" (numba's default "python"
# error model checks every float division for a zero divisor and raises, a branch that alone keeps
# LLVM from vectorising the loop). The Horner loop is written out (a loop over a tuple is not
# unrolled before the vectoriser runs). Both measured in benchmarks/voigt_simd.py.
_SIMD = dict(cache=True, nogil=True, fastmath=True, error_model="numpy")


@njit(inline="always", **_SIMD)
def _horner_step_impl(pr, pi, dpr, dpi, zr, zi, c):
    """One Horner step of p(Z) and p'(Z) in real arithmetic: p' <- p' Z + p, p <- p Z + c."""
    return (pr * zr - pi * zi + c, pr * zi + pi * zr,
            dpr * zr - dpi * zi + pr, dpr * zi + dpi * zr + pi)


@njit(inline="always", **_SIMD)
def _horner16_impl(zr, zi):
    """p(Z), p'(Z) for Weideman's 16 coefficients, unrolled (real and imaginary parts)."""
    pr, pi, dpr, dpi = _C16[0], 0.0, 0.0, 0.0
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, _C16[1])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, _C16[2])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, _C16[3])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, _C16[4])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, _C16[5])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, _C16[6])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, _C16[7])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, _C16[8])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, _C16[9])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, _C16[10])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, _C16[11])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, _C16[12])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, _C16[13])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, _C16[14])
    pr, pi, dpr, dpi = _horner_step_impl(pr, pi, dpr, dpi, zr, zi, _C16[15])
    return pr, pi, dpr, dpi


@njit(inline="always", **_SIMD)
def _weideman16_impl(v, a):
    """Weideman N=16 at z = v + i a: (Re w, Im w, Re dw/dz, Im dw/dz), branch-free.

    With D = L - i z = (L + a) - i v and Z = (L + i z) / D:
    w = D^-1 (2 p(Z) D^-1 + 1/sqrt(pi)) and, since dZ/dz = 2 i L D^-2,
    dw/dz = i D^-2 (4 L p'(Z) D^-2 + 4 p(Z) D^-1 + 1/sqrt(pi)): the
    derivative of the approximation itself.
    """
    ar = _L16 + a
    q = 1.0 / (ar * ar + v * v)
    ir = ar * q
    ii = v * q
    br = _L16 - a
    zr = br * ir - v * ii
    zi = br * ii + v * ir
    pr, pi, dpr, dpi = _horner16_impl(zr, zi)
    sr = pr * ir - pi * ii
    si = pr * ii + pi * ir
    tr = 2.0 * sr + _RSQPI
    ti = 2.0 * si
    i2r = ir * ir - ii * ii
    i2i = 2.0 * ir * ii
    gr = dpr * i2r - dpi * i2i
    gi = dpr * i2i + dpi * i2r
    hr = 4.0 * _L16 * gr + 4.0 * sr + _RSQPI
    hi = 4.0 * _L16 * gi + 4.0 * si
    return (ir * tr - ii * ti, ir * ti + ii * tr,
            -(i2r * hi + i2i * hr), i2r * hr - i2i * hi)


@njit(**_SIMD)
def faddeeva_pass_impl(v, a, wr, wi, dr, di):
    """w(z) and dw/dz for z = v[i] + i a over ``v`` (n,), a >= 0: one contiguous, branch-free (SIMD) loop.

    Weideman's (1994) N = 16 rational expansion; max |w - wofz| about
    1.2e-7 for damping ``a`` 0-3 and |v| <= 30 (W4: 3.7e-5; measured in
    ``benchmarks/voigt_simd.py`` and the tests). ``wr``, ``wi``, ``dr``,
    ``di`` (at least n,) receive Re w (the Voigt function H), Im w (twice
    the Faraday-Voigt function), Re and Im dw/dz (the derivative of the
    approximation itself, so the Jacobian is that of the fitted model).
    """
    for i in range(v.shape[0]):
        r0, r1, r2, r3 = _weideman16_impl(v[i], a)
        wr[i] = r0
        wi[i] = r1
        dr[i] = r2
        di[i] = r3


@njit(**_SIMD)
def faddeeva_weideman16_impl(v: float, a: float) -> tuple[complex, complex]:
    """w(z) and dw/dz at one z = v + i a, a >= 0, as :func:`faddeeva_pass_impl` computes them (for tests)."""
    r0, r1, r2, r3 = _weideman16_impl(v, a)
    return complex(r0, r1), complex(r2, r3)


@njit(cache=True, nogil=True)
def _components_impl(B, vlos, dlam_d, lam0, ratio, cline, cshift, cstr, comp):
    """Per-evaluation constants of each Zeeman component, shared by all wavelengths.

    ``comp`` (nc, 6) receives [shift [A], strength, dv/dB, dv/dvlos,
    1/dlam_d, lambda0 [A]] with v = ((lambda - lambda0) - shift) / dlam_d the
    reduced distance from the (Doppler-shifted, Zeeman-split) component
    centre; lambda - lambda0 first keeps v exact to rounding.
    """
    inv_d = 1.0 / dlam_d
    for k in range(cline.shape[0]):
        li = cline[k]
        l0 = lam0[li]
        zfac = ZEEMAN_CONSTANT * l0 * l0
        comp[k, 0] = l0 * vlos / _C_KMS + cshift[k] * zfac * B
        comp[k, 1] = cstr[k] * ratio[li]
        comp[k, 2] = -cshift[k] * zfac * inv_d
        comp[k, 3] = -(l0 / _C_KMS) * inv_d
        comp[k, 4] = inv_d
        comp[k, 5] = l0


@njit(cache=True, nogil=True)
def _profiles_impl(j, comp, cgroup, work, acc):
    """Accumulate absorption/dispersion profiles and their derivatives at model point ``j``.

    ``comp`` from :func:`_components_impl`; ``work`` (5, nm * nc) holds,
    at column j * nc + k of (model point j, component k), [v, Re w, Im w,
    Re dw/dz, Im dw/dz] (:func:`faddeeva_pass_impl`). ``acc`` (5, 6) is
    filled: rows [value, d/dB, d/dvlos, d/d(doppler_width [mA]), d/da],
    columns [H_b, H_p, H_r, L_b, L_p, L_r] (without the eta0 factor).
    """
    for r in range(5):
        for c in range(6):
            acc[r, c] = 0.0
    nc = cgroup.shape[0]
    for k in range(nc):
        i = j * nc + k
        inv_d = comp[k, 4]
        v = work[0, i]
        s = comp[k, 1]
        g = cgroup[k]
        sH = s * work[1, i]
        sL = s * work[2, i]
        sdH = s * work[3, i]
        sdL = s * work[4, i]
        dv_dw = -v * inv_d * 1e-3
        acc[0, g] += sH
        acc[0, 3 + g] += sL
        acc[1, g] += sdH * comp[k, 2]
        acc[1, 3 + g] += sdL * comp[k, 2]
        acc[2, g] += sdH * comp[k, 3]
        acc[2, 3 + g] += sdL * comp[k, 3]
        acc[3, g] += sdH * dv_dw
        acc[3, 3 + g] += sdL * dv_dw
        # Cauchy-Riemann: dH/da = -dL/dv, dL/da = dH/dv
        acc[4, g] -= sdL
        acc[4, 3 + g] += sdH


@njit(cache=True, nogil=True)
def _geometry_impl(p, geo):
    """Angle factors of the absorption matrix, shared by all wavelengths of one evaluation.

    ``geo`` (10,) receives [A, C, c2, s2, cos_t, dA, dC, dct, dc2, ds2]:
    A = sin^2(t) / 2, C = (1 + cos^2 t) / 4, c2 = cos 2chi, s2 = sin 2chi and
    their derivatives per degree of inclination t and azimuth chi.
    """
    th = p[1] * _DEG
    ch = p[2] * _DEG
    sin_t = math.sin(th)
    cos_t = math.cos(th)
    c2 = math.cos(2.0 * ch)
    s2 = math.sin(2.0 * ch)
    geo[0] = 0.5 * sin_t * sin_t
    geo[1] = 0.25 * (1.0 + cos_t * cos_t)
    geo[2] = c2
    geo[3] = s2
    geo[4] = cos_t
    geo[5] = sin_t * cos_t * _DEG
    geo[6] = -0.5 * sin_t * cos_t * _DEG
    geo[7] = -sin_t * _DEG
    geo[8] = -2.0 * s2 * _DEG
    geo[9] = 2.0 * c2 * _DEG


@njit(cache=True, nogil=True, inline="always")
def _column_impl(gm, dout, j, v0, v1, v2, v3, v4, v5, v6):
    """dout[:, j] = gm @ v: the chain rule from the 7 absorption-matrix entries to I, Q, U, V."""
    for s in range(4):
        dout[s, j] = (gm[s, 0] * v0 + gm[s, 1] * v1 + gm[s, 2] * v2 + gm[s, 3] * v3
                      + gm[s, 4] * v4 + gm[s, 5] * v5 + gm[s, 6] * v6)


@njit(cache=True, nogil=True)
def _me_point_impl(p, mu, geo, acc, gm, out, dout):
    """Stokes I, Q, U, V and their derivatives at one wavelength.

    ``geo`` from :func:`_geometry_impl`, ``acc`` from :func:`_profiles_impl`;
    ``gm`` (4, 7) is a work array (the gradient of I, Q, U, V with respect
    to the absorption-matrix entries [eI, eQ, eU, eV, rQ, rU, rV]); ``out``
    (4,) and ``dout`` (4, 9) receive the result.
    """
    eta0 = p[5]
    S0 = p[7]
    S1 = p[8]
    A = geo[0]
    C = geo[1]
    c2 = geo[2]
    s2 = geo[3]
    cos_t = geo[4]
    dA = geo[5]
    dC = geo[6]
    dct = geo[7]
    dc2 = geo[8]
    ds2 = geo[9]

    # absorption-matrix entries per unit eta0 from the profiles (row 0 of acc)
    hb = acc[0, 0]
    hp = acc[0, 1]
    hr = acc[0, 2]
    lb = acc[0, 3]
    lp = acc[0, 4]
    lr = acc[0, 5]
    le0 = hp - 0.5 * (hb + hr)
    lr0 = lp - 0.5 * (lb + lr)
    fI = A * hp + C * (hb + hr)
    fQ = A * le0 * c2
    fU = A * le0 * s2
    fV = 0.5 * (hr - hb) * cos_t
    gQ = A * lr0 * c2
    gU = A * lr0 * s2
    gV = 0.5 * (lr - lb) * cos_t
    eI = 1.0 + eta0 * fI
    eQ = eta0 * fQ
    eU = eta0 * fU
    eV = eta0 * fV
    rQ = eta0 * gQ
    rU = eta0 * gU
    rV = eta0 * gV
    eI2 = eI * eI
    Pi = eQ * rQ + eU * rU + eV * rV
    R2 = rQ * rQ + rU * rU + rV * rV
    E2 = eQ * eQ + eU * eU + eV * eV
    D = eI2 * (eI2 - E2 + R2) - Pi * Pi
    nI = eI * (eI2 + R2)
    nQ = eI2 * eQ + eI * (eV * rU - eU * rV) + rQ * Pi
    nU = eI2 * eU + eI * (eQ * rV - eV * rQ) + rU * Pi
    nV = eI2 * eV + eI * (eU * rQ - eQ * rU) + rV * Pi
    invD = 1.0 / D
    muS1 = mu * S1
    xI = nI * invD
    xQ = nQ * invD
    xU = nU * invD
    xV = nV * invD
    out[0] = S0 + muS1 * xI
    out[1] = -muS1 * xQ
    out[2] = -muS1 * xU
    out[3] = -muS1 * xV

    # gradient of (I, Q, U, V) wrt the 7 rt quantities, once per point (gm (4, 7)),
    # then one 7-term dot product per output and parameter: the chain rule
    # shared by all parameters instead of redone for each
    dD0 = 4.0 * eI2 * eI - 2.0 * eI * E2 + 2.0 * eI * R2
    dD1 = -2.0 * eI2 * eQ - 2.0 * Pi * rQ
    dD2 = -2.0 * eI2 * eU - 2.0 * Pi * rU
    dD3 = -2.0 * eI2 * eV - 2.0 * Pi * rV
    dD4 = 2.0 * eI2 * rQ - 2.0 * Pi * eQ
    dD5 = 2.0 * eI2 * rU - 2.0 * Pi * eU
    dD6 = 2.0 * eI2 * rV - 2.0 * Pi * eV
    cI = muS1 * invD
    cP = -muS1 * invD
    # d nI / d rt
    gm[0, 0] = cI * ((3.0 * eI2 + R2) - xI * dD0)
    gm[0, 1] = cI * (-xI * dD1)
    gm[0, 2] = cI * (-xI * dD2)
    gm[0, 3] = cI * (-xI * dD3)
    gm[0, 4] = cI * (2.0 * eI * rQ - xI * dD4)
    gm[0, 5] = cI * (2.0 * eI * rU - xI * dD5)
    gm[0, 6] = cI * (2.0 * eI * rV - xI * dD6)
    # d nQ / d rt
    gm[1, 0] = cP * ((2.0 * eI * eQ + eV * rU - eU * rV) - xQ * dD0)
    gm[1, 1] = cP * ((eI2 + rQ * rQ) - xQ * dD1)
    gm[1, 2] = cP * ((-eI * rV + rQ * rU) - xQ * dD2)
    gm[1, 3] = cP * ((eI * rU + rQ * rV) - xQ * dD3)
    gm[1, 4] = cP * ((Pi + rQ * eQ) - xQ * dD4)
    gm[1, 5] = cP * ((eI * eV + rQ * eU) - xQ * dD5)
    gm[1, 6] = cP * ((-eI * eU + rQ * eV) - xQ * dD6)
    # d nU / d rt
    gm[2, 0] = cP * ((2.0 * eI * eU + eQ * rV - eV * rQ) - xU * dD0)
    gm[2, 1] = cP * ((eI * rV + rU * rQ) - xU * dD1)
    gm[2, 2] = cP * ((eI2 + rU * rU) - xU * dD2)
    gm[2, 3] = cP * ((-eI * rQ + rU * rV) - xU * dD3)
    gm[2, 4] = cP * ((-eI * eV + rU * eQ) - xU * dD4)
    gm[2, 5] = cP * ((Pi + rU * eU) - xU * dD5)
    gm[2, 6] = cP * ((eI * eQ + rU * eV) - xU * dD6)
    # d nV / d rt
    gm[3, 0] = cP * ((2.0 * eI * eV + eU * rQ - eQ * rU) - xV * dD0)
    gm[3, 1] = cP * ((-eI * rU + rV * rQ) - xV * dD1)
    gm[3, 2] = cP * ((eI * rQ + rV * rU) - xV * dD2)
    gm[3, 3] = cP * ((eI2 + rV * rV) - xV * dD3)
    gm[3, 4] = cP * ((eI * eU + rV * eQ) - xV * dD4)
    gm[3, 5] = cP * ((-eI * eQ + rV * eU) - xV * dD5)
    gm[3, 6] = cP * ((Pi + rV * eV) - xV * dD6)
    # eta0 (p5)
    _column_impl(gm, dout, 5, fI, fQ, fU, fV, gQ, gU, gV)
    # inclination (p1) and azimuth (p2)
    _column_impl(gm, dout, 1, eta0 * (dA * hp + dC * (hb + hr)), eta0 * dA * le0 * c2, eta0 * dA * le0 * s2,
                 eta0 * 0.5 * (hr - hb) * dct, eta0 * dA * lr0 * c2, eta0 * dA * lr0 * s2,
                 eta0 * 0.5 * (lr - lb) * dct)
    _column_impl(gm, dout, 2, 0.0, eta0 * A * le0 * dc2, eta0 * A * le0 * ds2, 0.0,
                 eta0 * A * lr0 * dc2, eta0 * A * lr0 * ds2, 0.0)
    # profile parameters: rows 1-4 of acc are B (p0), vlos (p3), Doppler width (p4), damping (p6)
    for r in range(1, 5):
        j = 0
        if r == 2:
            j = 3
        elif r == 3:
            j = 4
        elif r == 4:
            j = 6
        hb = acc[r, 0]
        hp = acc[r, 1]
        hr = acc[r, 2]
        lb = acc[r, 3]
        lp = acc[r, 4]
        lr = acc[r, 5]
        le = A * (hp - 0.5 * (hb + hr))
        lrr = A * (lp - 0.5 * (lb + lr))
        _column_impl(gm, dout, j, eta0 * (A * hp + C * (hb + hr)), eta0 * le * c2, eta0 * le * s2,
                     eta0 * 0.5 * (hr - hb) * cos_t, eta0 * lrr * c2, eta0 * lrr * s2,
                     eta0 * 0.5 * (lr - lb) * cos_t)
    dout[0, 7] = 1.0
    dout[1, 7] = 0.0
    dout[2, 7] = 0.0
    dout[3, 7] = 0.0
    dout[0, 8] = mu * xI
    dout[1, 8] = -mu * xQ
    dout[2, 8] = -mu * xU
    dout[3, 8] = -mu * xV


@njit(cache=True, nogil=True)
def _me_grid_impl(p, ctx, y, jac):
    """ME Stokes vector and Jacobian (9 columns) on the observed points.

    Without an instrument (``ctx[8]`` of shape (0, 0)) the model points are
    the observed ones (layout y[s * nm + j]); with one, each model point's
    values and derivatives are added into the observed points it
    contributes to as soon as they are computed (observed = proj @ model),
    so no model-grid Jacobian is stored and re-read. The reduced distances
    of all (model point, component) are computed first, then one Faddeeva
    pass over them; its scratch is allocated here, per call (thread-safe).

    The pass is W4 (:func:`faddeeva_w4_pass_impl`, results bit-identical to
    the per-point W4 loop before). Weideman's :func:`faddeeva_pass_impl`
    (same arguments) is 300x more accurate and 25-30 % faster per fit,
    but changes the model by up to 3e-6 of the continuum (measured on 200
    random HMI-filter pixels), enough to move some LM fits into other
    local minima: with it, 6 instead of >= 15 of the 19 pixels of
    tests/backends/data/sunspot_wrong_minima.npz stay stuck with two
    starts, and three tests of tests/backends/me/test_fit_quality.py
    (calibrated on W4's minima) fail; they need re-measuring before the
    switch (a one-line change here).
    """
    mwave = ctx[0]
    nm = mwave.shape[0]
    nc = ctx[3].shape[0]
    comp = np.empty((nc, 6))
    geo = np.empty(10)
    work = np.empty((5, nm * nc))
    # what does not depend on the wavelength, once per evaluation; then v of every
    # (model point, component) and one contiguous Faddeeva pass over them
    _components_geometry_v_impl(p, ctx, comp, geo, work[0])
    faddeeva_w4_pass_impl(work[0], p[6], work[1], work[2], work[3], work[4])
    _grid_from_pass_impl(p, ctx, y, jac, comp, geo, work)


@njit(cache=True, nogil=True)
def _components_geometry_v_impl(p, ctx, comp, geo, vv):
    """Zeeman components ``comp`` (nc, 6), geometry ``geo`` (10,) and the reduced distances
    ``vv[j * nc + k]`` of every (model point j, component k): what a Faddeeva pass needs
    (lambda - lambda0 first keeps v exact to rounding)."""
    mwave = ctx[0]
    _components_impl(p[0], p[3], p[4] * 1e-3, ctx[1], ctx[2], ctx[3], ctx[5], ctx[6], comp)
    _geometry_impl(p, geo)
    nc = comp.shape[0]
    for j in range(mwave.shape[0]):
        lam = mwave[j]
        for k in range(nc):
            vv[j * nc + k] = ((lam - comp[k, 5]) - comp[k, 0]) * comp[k, 4]


@njit(cache=True, nogil=True)
def _grid_from_pass_impl(p, ctx, y, jac, comp, geo, work):
    """The rest of :func:`_me_grid_impl` once ``work`` (5, >= nm * nc) holds [v, Re w, Im w,
    Re dw/dz, Im dw/dz] of every (model point, component): profiles, the Unno-Rachkovsky
    solution and its derivatives per point, and the projection onto the observed points."""
    mwave = ctx[0]
    cgroup = ctx[4]
    mu = ctx[7][0]
    proj = ctx[8]
    rows = ctx[11]
    nm = mwave.shape[0]
    acc = np.empty((5, 6))
    out = np.empty(4)
    dout = np.empty((4, 9))
    gm = np.empty((4, 7))
    no = proj.shape[0]
    if no > 0:
        for i in range(4 * no):
            y[i] = 0.0
            for q in range(9):
                jac[i, q] = 0.0
    for j in range(nm):
        _profiles_impl(j, comp, cgroup, work, acc)
        _me_point_impl(p, mu, geo, acc, gm, out, dout)
        if no == 0:
            for s in range(4):
                y[s * nm + j] = out[s]
                for q in range(9):
                    jac[s * nm + j, q] = dout[s, q]
        else:
            for i in range(rows[j, 0], rows[j, 1]):
                w = proj[i, j]
                for s in range(4):
                    r = s * no + i
                    y[r] += w * out[s]
                    for q in range(9):
                        jac[r, q] += w * dout[s, q]


@njit(cache=True, nogil=True)
def _stray_light_impl(p, ctx, y, jac):
    """With ``ctx[10][0] != 0`` mix the ME profile with the stray-light profile ``ctx[9]`` by the
    filling factor ``p[9]`` (and its Jacobian column); otherwise zero the columns beyond the 9 ME ones."""
    stray = ctx[9]
    npar = p.shape[0]
    no = y.shape[0] // 4
    if ctx[10][0] != 0.0:
        ff = p[9]
        for i in range(4 * no):
            me = y[i]
            for q in range(9):
                jac[i, q] *= ff
            jac[i, 9] = me - stray[i]
            y[i] = ff * me + (1.0 - ff) * stray[i]
    else:
        for i in range(4 * no):
            for q in range(9, npar):
                jac[i, q] = 0.0


@njit(cache=True, nogil=True)
def me_model_impl(p, ctx, y, jac):
    """Forward model for ``lm_solver``: fills ``y`` (4*no,) and ``jac`` (4*no, npar).

    Applies the instrument matrix ``ctx[8]`` (observed = proj @ model, per
    Stokes parameter) and, when ``ctx[10][0] != 0``, a filling factor
    ``p[9]`` mixing the ME profile with the stray-light profile ``ctx[9]``.
    """
    _me_grid_impl(p, ctx, y, jac)
    _stray_light_impl(p, ctx, y, jac)


@njit(cache=True, nogil=True)
def me_synth_impl(params, ctx, nobs):
    """Stokes profiles (npix, 4*nobs) for parameter rows ``params`` (npix, npar)."""
    npix, npar = params.shape
    out = np.empty((npix, 4 * nobs))
    jac = np.empty((4 * nobs, npar))
    p = np.empty(npar)
    for i in range(npix):
        for q in range(npar):
            p[q] = params[i, q]
        me_model_impl(p, ctx, out[i], jac)
    return out


@njit(cache=True, nogil=True)
def me_fit_pixels_impl(ctx, obs, weights, p0, lower, upper, bound_mode, scale, reg_target, reg_weight,
                       max_iter, chi2_rtol, step_tol, good_chi2, scale_covar,
                       out_p, out_sigma, out_chi2, out_niter, out_status, sigma_tol=0.0):
    """The lm_solver engine with :func:`me_model_impl` bound as a global (``sigma_tol``: the
    engine's statistical step rule, 0 = off).

    The engine is inlined at the numba-IR level, so this wrapper is cached
    on disk and a new worker process does not recompile it (see
    ``stokesflow.lm_solver._kernels``).
    """
    fit_pixels_impl(me_model_impl, ctx, obs, weights, p0, lower, upper, bound_mode, scale,
                    reg_target, reg_weight, max_iter, chi2_rtol, step_tol, good_chi2, scale_covar,
                    out_p, out_sigma, out_chi2, out_niter, out_status, sigma_tol)
