"""The ME forward model as a Python object: context building and synthesis.

:class:`MEModel` bundles the lines, the instrument and the kernel context
tuple for one observed wavelength grid. It is what the backend hands to
``lm_solver`` and what ``synthesize`` uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from stokesflow.backends.base import ParameterSpec
from stokesflow.backends.me import _kernels
from stokesflow.backends.me.instrument import Instrument, make_instrument
from stokesflow.backends.me.lines import Line

__all__ = ["ME_PARAMETERS", "FILLING_FACTOR", "MEModel", "build_context", "me_parameters", "params_to_array"]

#: Parameters of the ME atmosphere, in kernel order (names are the result-file contract).
ME_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("B", "G", 0.0, 6000.0, 1000.0),
    ParameterSpec("inclination", "deg", 0.0, 180.0, 45.0),
    ParameterSpec("azimuth", "deg", 0.0, 180.0, 45.0, circular=True),
    ParameterSpec("vlos", "km/s", -20.0, 20.0, 1.0),
    ParameterSpec("doppler_width", "mA", 5.0, 200.0, 10.0),
    ParameterSpec("eta0", "", 0.05, 500.0, 5.0),
    ParameterSpec("damping", "", 0.0, 3.0, 0.2),
    ParameterSpec("S0", "", 0.0, 3.0, 0.2),
    ParameterSpec("S1", "", 0.0, 3.0, 0.2),
)
#: Optional magnetic filling factor (with a stray-light profile).
FILLING_FACTOR = ParameterSpec("filling_factor", "", 0.0, 1.0, 0.2)


def me_parameters(filling_factor: bool) -> tuple[ParameterSpec, ...]:
    """The fitted parameters, in column order, with or without the filling factor."""
    return ME_PARAMETERS + ((FILLING_FACTOR,) if filling_factor else ())


def _merge_components(lines: Sequence[Line]) -> tuple[np.ndarray, ...]:
    """Flatten the Zeeman components of all lines, merging identical (group, shift) pairs."""
    cl, cg, cs, cw = [], [], [], []
    for li, line in enumerate(lines):
        seen: dict[tuple[int, float], int] = {}
        for g, s, w in zip(line.group, line.shift, line.strength):
            key = (int(g), round(float(s), 10))
            if key in seen:
                cw[seen[key]] += float(w)
                continue
            seen[key] = len(cw)
            cl.append(li)
            cg.append(int(g))
            cs.append(float(s))
            cw.append(float(w))
    return (
        np.array(cl, dtype=np.int64),
        np.array(cg, dtype=np.int64),
        np.array(cs, dtype=np.float64),
        np.array(cw, dtype=np.float64),
    )


def build_context(
    lines: Sequence[Line],
    instrument: Instrument,
    *,
    mu: float = 1.0,
    stray: np.ndarray | None = None,
) -> tuple:
    """The kernel context tuple (see ``stokesflow.backends.me._kernels``)."""
    lam0 = np.array([ln.wavelength for ln in lines], dtype=np.float64)
    loggf = np.array([ln.loggf for ln in lines], dtype=np.float64)
    ratio = 10.0 ** (loggf - loggf[0])
    cl, cg, cs, cw = _merge_components(lines)
    no = instrument.n_observed
    use_ff = stray is not None
    stray_arr = (
        np.ascontiguousarray(np.asarray(stray, dtype=np.float64).reshape(4 * no))
        if use_ff
        else np.zeros(4 * no)
    )
    proj = np.ascontiguousarray(instrument.matrix, dtype=np.float64)
    # rows [first, stop) of proj that each model point reaches (a PSF is banded)
    rows = np.zeros((proj.shape[1] if proj.size else 0, 2), dtype=np.int64)
    if proj.size:
        nz = proj != 0.0
        anyz = nz.any(axis=0)
        rows[:, 0] = np.where(anyz, np.argmax(nz, axis=0), 0)
        rows[:, 1] = np.where(anyz, proj.shape[0] - np.argmax(nz[::-1], axis=0), 0)
    return (
        np.ascontiguousarray(instrument.model_wavelength, dtype=np.float64),
        lam0,
        ratio,
        cl,
        cg,
        cs,
        cw,
        np.array([float(mu)]),
        proj,
        stray_arr,
        np.array([1.0 if use_ff else 0.0, 0.0]),
        rows,
    )


def params_to_array(params: np.ndarray | Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Parameters as a (npix, npar) float64 array from an array or a name mapping."""
    if isinstance(params, Mapping):
        missing = [n for n in names if n not in params]
        if missing:
            raise KeyError(f"parameters {missing} missing; need {list(names)}")
        cols = [np.asarray(params[n], dtype=np.float64).ravel() for n in names]
        return np.ascontiguousarray(np.stack(cols, axis=1))
    arr = np.asarray(params, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != len(names):
        raise ValueError(f"parameter array has shape {arr.shape}; expected (npix, {len(names)}) for {list(names)}")
    return np.ascontiguousarray(arr)


@dataclass
class MEModel:
    """The ME forward model for one set of lines, instrument and observed grid.

    Parameters
    ----------
    lines : sequence of Line
        Lines synthesised together (eta0 belongs to the first).
    instrument : Instrument
        How model spectra become observed points.
    mu : float
        Heliocentric cosine of the observed point.
    stray : ndarray (4, no), optional
        Stray-light profile; when given, a filling factor is a 10th parameter.
    """

    lines: tuple[Line, ...]
    instrument: Instrument
    mu: float = 1.0
    stray: np.ndarray | None = None
    ctx: tuple = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.lines = tuple(self.lines)
        self.ctx = build_context(self.lines, self.instrument, mu=self.mu, stray=self.stray)

    @classmethod
    def for_grid(cls, lines: Sequence[Line], wavelength: np.ndarray, kind: str = "grid", **kw) -> "MEModel":
        """Model for observed ``wavelength`` [A] with instrument ``kind``."""
        mu = kw.pop("mu", 1.0)
        stray = kw.pop("stray", None)
        return cls(tuple(lines), make_instrument(kind, wavelength, **kw), mu=mu, stray=stray)

    @property
    def parameters(self) -> tuple[ParameterSpec, ...]:
        """Parameters of this model, in column order."""
        return me_parameters(self.stray is not None)

    @property
    def n_observed(self) -> int:
        """Observed points per Stokes parameter."""
        return self.instrument.n_observed

    def synthesize(self, params: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """Stokes profiles (npix, 4, no) for parameters (npix, npar) or a name mapping."""
        names = [p.name for p in self.parameters]
        arr = params_to_array(params, names)
        out = _kernels.me_synth_impl(arr, self.ctx, self.n_observed)
        return out.reshape(arr.shape[0], 4, self.n_observed)

    def jacobian(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Profiles (4*no,) and analytic Jacobian (4*no, npar) for one parameter vector."""
        p = np.ascontiguousarray(p, dtype=np.float64)
        y = np.empty(4 * self.n_observed)
        jac = np.empty((4 * self.n_observed, p.size))
        _kernels.me_model_impl(p, self.ctx, y, jac)
        return y, jac
