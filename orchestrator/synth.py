"""Synthetic observations: a Milne-Eddington scene through an instrument, plus noise.

:func:`synthesize_observation` is what ``stokesflow synth`` calls. It builds
the scene's parameter maps (:func:`stokesflow.orchestrator.scenes.make_scene`), turns
them into Stokes profiles with the ME backend's ``synthesize``, adds Gaussian
noise and writes an observation file of the DESIGN.md contract, with the true
maps under ``/truth/<param>``. Everything happens block of rows by block of
rows, so a 4096 x 4096 field never sits in memory (a block holds about
4 M Stokes values, 32 MB in float64).

Instruments (the observation's ``instrument`` attribute):

- ``"hmi"``: Fe I 6173 sampled at the six HMI tuning offsets
  -172.0, -103.2, -34.4, +34.4, +103.2, +172.0 mA about the HMI line centre.
  The profiles are the ME spectrum *at* those points (ME option
  ``instrument = "grid"``), which is what a plain ``stokesflow invert`` fits;
  pass ``backend_options={"instrument": "hmi_filters"}`` here and in the
  inversion for filtergrams integrated through ~76 mA filter profiles.
- ``"hinode"``: Fe I 6301.5 and 6302.5 at 112 points of 21.549 mA from
  6300.884 A (Hinode/SP sampling), again without spectral PSF by default.

The file states the spectral instrument it was synthesised through, so that
``stokesflow invert`` uses it without being told: the attribute
``spectral_instrument`` (``grid``, ``psf``, ``hmi_filters`` or ``filters``,
from the ME option ``instrument``), ``psf_fwhm`` [mA] for a Gaussian PSF, and
for ``filters`` the profiles as ``/filters/wavelength`` (nf,) [A] and
``/filters/transmission`` (nobs, nf).

Noise: for row ``y`` the generator ``numpy.random.default_rng([seed, 1, y])``
draws ``(nx, 4, nw)`` normal deviates times ``noise``, so the file does not
depend on the block size.

An interruption (Ctrl-C, SIGTERM) or an error leaves nothing behind: the rows
are written to ``<out>.partial``, which is removed, and ``out`` appears (or is
replaced) only once the file is complete.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from stokesflow.orchestrator.errors import OrchestratorError
from stokesflow.orchestrator.paths import check_new_output
from stokesflow.orchestrator.scenes import SCENES

__all__ = [
    "INSTRUMENTS", "SCENES", "instrument_setup", "spectral_instrument_attrs", "synthesize_observation",
    "default_rows_per_block",
]

log = logging.getLogger("stokesflow.synth")

#: Stokes values per synthesis block (float64), which bounds its memory.
_BLOCK_VALUES = 1 << 22


def _hmi() -> tuple[tuple[str, ...], np.ndarray]:
    from stokesflow.backends.me.instrument import HMI_LINE_CENTRE, HMI_OFFSETS_MA

    return ("FeI_6173",), HMI_LINE_CENTRE + 1e-3 * np.asarray(HMI_OFFSETS_MA, dtype=np.float64)


def _hinode() -> tuple[tuple[str, ...], np.ndarray]:
    return ("FeI_6301", "FeI_6302"), 6300.884 + 0.021549 * np.arange(112, dtype=np.float64)


#: instrument name -> function giving (line names, wavelengths [A]).
INSTRUMENTS = {"hmi": _hmi, "hinode": _hinode}


def instrument_setup(instrument: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Line names and wavelength grid [A] of a synthetic instrument."""
    try:
        return INSTRUMENTS[instrument]()
    except KeyError:
        raise OrchestratorError(
            f"unknown synthetic instrument {instrument!r}; choose one of {sorted(INSTRUMENTS)}"
        ) from None


def spectral_instrument_attrs(backend: Any) -> dict[str, Any]:
    """What an observation synthesised by ``backend`` states about its spectral instrument.

    Returns
    -------
    dict
        The keyword arguments ``spectral_instrument`` (``grid``, ``psf``,
        ``hmi_filters`` or ``filters``), ``psf_fwhm`` [mA] for a Gaussian PSF
        and ``filters`` = (wavelength (nf,) [A], transmission (nobs, nf)) for
        measured profiles (from ``filters_file``), as
        :class:`~stokesflow.orchestrator.io.ObservationWriter` takes them.
    """
    from stokesflow.backends.me.instrument import read_filters_file

    o = backend.options
    kind = getattr(o, "instrument", None) or "grid"
    out: dict[str, Any] = {"spectral_instrument": str(kind)}
    if kind == "psf":
        if getattr(o, "psf_file", None):
            log.warning("the PSF kernel of psf_file %s is not stored in the observation; invert it with "
                        "-B instrument=psf -B psf_file=%s", o.psf_file, o.psf_file)
        elif getattr(o, "psf_fwhm", None):
            out["psf_fwhm"] = float(o.psf_fwhm)
    elif kind == "filters" and getattr(o, "filters_file", None):
        out["filters"] = read_filters_file(o.filters_file)
    return out


def _check_out(out: Path, overwrite: bool) -> None:
    """``out`` can be written: absent (or ``overwrite``), in an existing, writable folder."""
    check_new_output(out, overwrite=overwrite, what=repr(str(out)),
                     exists_remedy="pass --overwrite to replace it or choose another --out")


def default_rows_per_block(nx: int, nw: int) -> int:
    """Rows per block so that a block holds about 4 M Stokes values."""
    return max(1, _BLOCK_VALUES // max(1, 4 * nw * nx))


def synthesize_observation(
    out: str | Path,
    *,
    instrument: str = "hmi",
    scene: str = "sunspot",
    size: tuple[int, int] = (64, 64),
    noise: float = 1e-3,
    seed: int = 0,
    rows_per_block: int | None = None,
    overwrite: bool = False,
    backend_options: Mapping[str, Any] | None = None,
    backend: str = "me",
) -> Path:
    """Write a synthetic observation with its true parameter maps.

    Parameters
    ----------
    out : str or Path
        HDF5 file to write.
    instrument : {"hmi", "hinode"}
        Lines and wavelength sampling (see the module docstring).
    scene : {"sunspot", "quiet", "plage", "mixed"}
        Kind of scene (:func:`stokesflow.orchestrator.scenes.make_scene`).
    size : (int, int)
        ``(ny, nx)`` in pixels.
    noise : float
        Gaussian noise sigma, in units of the continuum intensity (0: none).
    seed : int
        Seed of the scene and of the noise.
    rows_per_block : int, optional
        Rows synthesised and written at a time; default about 4 M Stokes
        values per block.
    overwrite : bool
        Replace an existing ``out``.
    backend_options : mapping, optional
        Extra options of the synthesising backend (ME: ``instrument``,
        ``psf_fwhm``, ...); ``lines`` (and for ME ``noise``) are set here.
    backend : {"me", "lightweaver", "sir", "rh"}
        Who synthesises: the ME backend (default), Lightweaver (LTE radiative
        transfer in the FAL-C model with the scene's B, inclination, azimuth
        and vlos constant with height: profiles no ME model produced), SIR or
        RH 1.5D (the same in the HSRA model, when their executables are
        configured; RH's failed columns are NaN pixels). The
        truth maps are those of the scene's parameters the backend takes.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    OrchestratorError
        Unknown instrument or scene, bad size or noise, existing file.
    """
    from stokesflow.backends import BackendError, get_backend

    out = Path(out)
    ny, nx = (int(v) for v in size)
    if ny <= 0 or nx <= 0:
        raise OrchestratorError(f"synthetic field size must be positive, got {ny} x {nx}")
    if not (noise >= 0 and np.isfinite(noise)):
        raise OrchestratorError(f"noise must be a finite sigma >= 0 in continuum units, got {noise}")
    if scene not in SCENES:
        raise OrchestratorError(f"unknown scene {scene!r}; choose one of {list(SCENES)}")
    _check_out(out, overwrite)
    lines, wavelength = instrument_setup(instrument)
    options = dict(backend_options or {})
    options["lines"] = list(lines)
    if backend == "me":
        options.setdefault("noise", noise if noise > 0 else 1e-3)
    backend_name = backend
    try:
        backend = get_backend(backend_name, options)
    except BackendError:
        raise
    except (TypeError, ValueError) as exc:  # an option value checked with plain Python errors
        raise OrchestratorError(f"{backend_name} options {options} for synth (-B): {exc}") from exc
    nw = wavelength.size
    rows = int(rows_per_block or default_rows_per_block(nx, nw))
    spectral = spectral_instrument_attrs(backend)
    if spectral.get("filters") is not None:  # checked here, naming the file (the writer knows only the output)
        from stokesflow.orchestrator.io.checks import check_filters

        check_filters(*spectral["filters"], nw, f"filters file {backend.options.filters_file}")
    attrs = {
        "instrument": instrument,
        "lines": ",".join(lines),
        "noise": float(noise) if noise > 0 else None,  # noise-free: no attribute
        "scene": scene,
        "seed": int(seed),
        "generator": "stokesflow synth (Milne-Eddington, spectral instrument "
        f"{spectral['spectral_instrument']!r})",
    }
    if backend_name == "lightweaver":
        attrs["generator"] = "stokesflow synth (Lightweaver LTE radiative transfer, FAL-C model, no spectral PSF)"
    elif backend_name != "me":
        attrs["generator"] = f"stokesflow synth (backend {backend_name!r}, no spectral PSF)"
    tmp = out.with_name(out.name + ".partial")
    t0 = time.perf_counter()
    try:
        _write_blocks(tmp, backend, scene=scene, ny=ny, nx=nx, wavelength=wavelength, attrs=attrs,
                      rows=rows, noise=noise, seed=seed, spectral=spectral)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    log.info("wrote %s: %d x %d pixels, %d wavelengths, %s (%.1f s)", out, ny, nx, nw, instrument,
             time.perf_counter() - t0)
    return out



def _write_blocks(
    tmp: Path, backend: Any, *, scene: str, ny: int, nx: int, wavelength: np.ndarray,
    attrs: Mapping[str, Any], rows: int, noise: float, seed: int, spectral: Mapping[str, Any] | None = None,
) -> None:
    """Synthesise and write the file ``tmp`` block of ``rows`` rows by block.

    ``spectral`` holds the writer's ``spectral_instrument``, ``psf_fwhm`` and
    ``filters`` (see :func:`spectral_instrument_attrs`).
    """
    from stokesflow.orchestrator.io import ObservationWriter
    from stokesflow.orchestrator.scenes import make_scene

    names = backend.parameter_names
    is_me = backend.name == "me"
    nw = wavelength.size
    t0 = last = time.perf_counter()
    with ObservationWriter(tmp, ny, nx, wavelength, attrs, **dict(spectral or {})) as writer:
        for y0 in range(0, ny, rows):
            y1 = min(ny, y0 + rows)
            maps = make_scene(scene, ny, nx, seed=seed, rows=slice(y0, y1))
            if not is_me:  # model-atmosphere backends: the scene's quantities they take, constant with height
                used = [n for n in names if n in maps]
                params_map = {n: np.asarray(maps[n], dtype=np.float64).reshape(-1) for n in used}
                stokes = backend.synthesize(params_map, wavelength).reshape(y1 - y0, nx, 4, nw)
                names = tuple(used)
            else:
                missing = [n for n in names if n not in maps]
                if missing:
                    raise OrchestratorError(
                        f"scene {scene!r} has no map for parameter(s) {missing}; the ME backend needs {list(names)}"
                    )
                params = np.stack([np.asarray(maps[n], dtype=np.float64).reshape(-1) for n in names], axis=1)
                stokes = backend.synthesize(params, wavelength).reshape(y1 - y0, nx, 4, nw)
            if noise > 0:
                for k, y in enumerate(range(y0, y1)):
                    rng = np.random.default_rng([int(seed), 1, y])
                    stokes[k] += noise * rng.standard_normal((nx, 4, nw))
            truth = {n: np.asarray(maps[n], dtype=np.float32).reshape(y1 - y0, nx) for n in names}
            writer.write_rows(y0, stokes.astype(np.float32), truth)
            now = time.perf_counter()
            if now - last > 10.0:
                last = now
                log.info("synth: %d/%d rows, %.0f s", y1, ny, now - t0)
