"""The Lightweaver backend: LTE full-Stokes synthesis from a 1-D model atmosphere.

Synthesis only (``invert`` raises): it makes test observations that no
Milne-Eddington model produced, from the FAL-C quiet-Sun model (Fontenla, Avrett
& Loeser 1993, as shipped by Lightweaver) with a magnetic field, velocity and
microturbulence that may vary from pixel to pixel and with height.

Conventions (checked against Lightweaver 0.17 and the project's conventions in
DESIGN.md): ``inclination`` and ``azimuth`` are Lightweaver's gammaB and chiB
(inclination 0 with B > 0 gives V > 0 in the blue wing; inclination 90, azimuth
0 gives Q < 0 at line centre; azimuth 45 gives U < 0); Lightweaver's vlos is
positive towards the observer, so ``vlos`` (positive = redshift) is its
negative; B is in G (Lightweaver: T). Wavelengths are in air [A] (Lightweaver
works in vacuum nm; the conversion is Lightweaver's own). Profiles are in units
of the model's continuum intensity at disc centre, taken 1.5 A blue of the grid
where no modelled line absorbs.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Mapping

import numpy as np

from stokesflow.backends.base import Backend, ChunkResult, ConfigError, ParameterSpec, named_params
from stokesflow.backends.lightweaver.atoms import import_lightweaver, model_atoms
from stokesflow.backends.lightweaver.errors import LightweaverError
from stokesflow.backends.sir.atomic import get_classical_lines
from stokesflow.backends.sir.errors import SIRError

__all__ = ["LightweaverOptions", "LightweaverBackend", "CONTINUUM_OFFSET"]

#: Where the continuum is taken: this far blue of the first grid point [A].
CONTINUUM_OFFSET = 1.5

_SPECS = (
    ParameterSpec("B", "G", 0.0, 6000.0, 500.0),
    ParameterSpec("inclination", "deg", 0.0, 180.0, 30.0),
    ParameterSpec("azimuth", "deg", 0.0, 180.0, 30.0, circular=True),
    ParameterSpec("vlos", "km/s", -20.0, 20.0, 1.0),
    ParameterSpec("vmic", "km/s", 0.0, 10.0, 1.0),
)


@dataclass(frozen=True)
class LightweaverOptions:
    """Options of the Lightweaver backend (``[backend.lightweaver]`` or ``-B key=value``).

    Attributes
    ----------
    lines : list of str
        Line names (default: the observation's ``lines``); neutral lines of the
        project's line and atomic tables.
    line_table, atomic_table : str, optional
        A user's tables replacing or extending the packaged ones.
    model : str
        Model atmosphere: ``"falc"`` (FAL-C, Lightweaver's ``Falc82``).
    mu : float
        Cosine of the heliocentric angle of the ray.
    nthreads : int
        Lightweaver's threads per worker.
    """

    lines: tuple[str, ...] = ()
    line_table: str | None = None
    atomic_table: str | None = None
    model: str = "falc"
    mu: float = 1.0
    nthreads: int = 1

    def __post_init__(self) -> None:
        if self.model.lower() != "falc":
            raise ConfigError(f"[backend.lightweaver] model: expected 'falc', got {self.model!r} (-B model=falc)")
        if not 0 < self.mu <= 1:
            raise ConfigError(f"[backend.lightweaver] mu: expected 0 < mu <= 1, got {self.mu!r}")
        if self.nthreads < 1:
            raise ConfigError(f"[backend.lightweaver] nthreads: expected >= 1, got {self.nthreads!r}")


class _Synthesiser:
    """A Lightweaver context for one wavelength grid; pixels change only field, velocity, vmic."""

    def __init__(self, options: LightweaverOptions, wavelength: np.ndarray) -> None:
        lw = import_lightweaver()
        from lightweaver.fal import Falc82
        from lightweaver.rh_atoms import H_6_atom

        try:
            lines = get_classical_lines(options.lines, options.line_table, options.atomic_table)
        except SIRError as exc:
            raise LightweaverError(f"[backend.lightweaver] lines: {exc}") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atmos = Falc82()
            nd = atmos.Nspace
            atmos.B = np.zeros(nd)
            atmos.gammaB = np.zeros(nd)
            atmos.chiB = np.zeros(nd)
            atmos.rays([options.mu])
            atoms = model_atoms(lines)
            aset = lw.RadiativeSet([H_6_atom(), *atoms])
            for a in atoms:
                aset.set_detailed_static(a.element.name)
            self.wavelength = np.asarray(wavelength, dtype=float)
            self.cont_wavelength = float(self.wavelength.min() - CONTINUUM_OFFSET)
            air = np.concatenate([[self.cont_wavelength], self.wavelength])
            self._vac = np.asarray(lw.air_to_vac(air / 10.0), dtype=float)
            spect = aset.compute_wavelength_grid(extraWavelengths=self._vac)
            eq = aset.compute_eq_pops(atmos)
            self.ctx = lw.Context(atmos, spect, eq, Nthreads=options.nthreads, conserveCharge=False)
        self.atmos = atmos
        self.vturb0 = np.array(atmos.vturb, dtype=float)
        self.log_tau = np.log10(np.asarray(atmos.tauRef, dtype=float))

    def __call__(self, B: np.ndarray, incl: np.ndarray, azi: np.ndarray, vlos: np.ndarray,
                 vmic: np.ndarray | None) -> np.ndarray:
        """Stokes (4, nw) for per-depth B [G], angles [deg], vlos [km/s, + = red], vmic [km/s] or None."""
        a = self.atmos
        a.B[:] = B * 1e-4
        a.gammaB[:] = np.deg2rad(incl)
        a.chiB[:] = np.deg2rad(azi)
        a.vlos[:] = -vlos * 1e3
        a.vturb[:] = self.vturb0 if vmic is None else vmic * 1e3
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.ctx.update_deps()
            self.ctx.single_stokes_fs()
        wl = np.asarray(self.ctx.spect.wavelength, dtype=float)
        cols = [np.asarray(self.ctx.spect.I, dtype=float)] + [np.asarray(self.ctx.spect.Quv[k], dtype=float)
                                                              for k in range(3)]
        vals = np.array([np.interp(self._vac, wl, c) for c in cols])
        return vals[:, 1:] / vals[0, 0]


class LightweaverBackend(Backend):
    """Full-Stokes LTE synthesis with Lightweaver (synthesis only).

    :meth:`synthesize` takes B [G], inclination and azimuth [deg], vlos [km/s,
    positive = redshift] and vmic [km/s] as (npix,) values constant with
    height or (npix, ndepth) stratifications on :attr:`log_tau` (FAL-C's 82
    depths); vmic NaN or absent keeps FAL-C's own microturbulence.
    """

    name: ClassVar[str] = "lightweaver"
    options_class: ClassVar[type] = LightweaverOptions

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        """Whether the ``lightweaver`` package imports."""
        try:
            lw = import_lightweaver()
        except LightweaverError as exc:
            return False, str(exc)
        del lw
        return True, ""

    @property
    def parameters(self) -> tuple[ParameterSpec, ...]:
        return _SPECS

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_synth", None)
        return state

    def for_observation(self, meta: Mapping[str, Any]) -> "LightweaverBackend":
        """Lines from the observation unless the options give them."""
        if self.options.lines or not meta.get("lines"):
            return self
        lines = meta["lines"]
        lines = tuple(n.strip() for n in lines.split(",")) if isinstance(lines, str) else tuple(lines)
        return type(self)(replace(self.options, lines=lines))

    def _synthesiser(self, wavelength: np.ndarray) -> _Synthesiser:
        if not self.options.lines:
            raise LightweaverError("[backend.lightweaver] lines: none given; -B lines=[FeI_6301,FeI_6302]")
        key = (np.asarray(wavelength, dtype=float).tobytes(), self.options)
        cached = self.__dict__.get("_synth")
        if cached is None or cached[0] != key:
            self.__dict__["_synth"] = (key, _Synthesiser(self.options, wavelength))
        return self.__dict__["_synth"][1]

    @property
    def log_tau(self) -> np.ndarray:
        """FAL-C's depth grid, log10 tau_500 (82 points)."""
        return _falc_log_tau()

    def setup(self, trial: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Build the Lightweaver context on the trial's grid (the observation's) when given."""
        import_lightweaver()
        if trial is not None and self.options.lines:
            self._synthesiser(np.asarray(trial[1], dtype=float))

    def invert(self, stokes: np.ndarray, wavelength: np.ndarray, init: np.ndarray | None = None) -> ChunkResult:
        raise LightweaverError(
            "the Lightweaver backend synthesises only; invert with --backend me or --backend sir"
        )

    def synthesize(self, params: np.ndarray | Mapping[str, np.ndarray], wavelength: np.ndarray) -> np.ndarray:
        """Stokes profiles (npix, 4, nw) in units of the model's continuum.

        Parameters
        ----------
        params : (npix, 5) array in :attr:`parameter_names` order, or a mapping
            name -> (npix,) or (npix, ndepth) values.
        wavelength : ndarray (nw,)
            Air wavelengths [A].
        """
        wavelength = np.asarray(wavelength, dtype=float)
        syn = self._synthesiser(wavelength)
        nd = syn.log_tau.size
        names = self.parameter_names
        p, npix = named_params(params, names, "the Lightweaver backend", LightweaverError)

        def column(name: str, default: float | None, i: int) -> np.ndarray | None:
            if name not in p:
                return None if default is None else np.full(nd, default)
            v = p[name]
            vi = v[i] if v.ndim >= 1 else v
            if np.ndim(vi) == 0:
                if not np.isfinite(vi):
                    return None if default is None else np.full(nd, default)
                return np.full(nd, float(vi))
            if np.shape(vi) != (nd,):
                raise LightweaverError(f"{name} of pixel {i} has shape {np.shape(vi)}, expected ({nd},) on log_tau")
            return np.asarray(vi, dtype=float)

        out = np.empty((npix, 4, wavelength.size))
        for i in range(npix):
            out[i] = syn(column("B", 0.0, i), column("inclination", 0.0, i), column("azimuth", 0.0, i),
                         column("vlos", 0.0, i), column("vmic", None, i))
        return out


@functools.lru_cache(maxsize=1)
def _falc_log_tau() -> np.ndarray:
    import_lightweaver()
    from lightweaver.fal import Falc82

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.log10(np.asarray(Falc82().tauRef, dtype=float))
