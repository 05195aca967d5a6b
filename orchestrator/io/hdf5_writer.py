"""Writing observation files of the HDF5 contract (the layout is described in :mod:`.hdf5`)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from stokesflow.orchestrator.errors import ObservationError
from stokesflow.orchestrator.io.checks import (
    SPECTRAL_INSTRUMENTS,
    check_filters,
    check_wavelength,
    lines_str,
    noise_value,
    option_float,
)

__all__ = ["ObservationWriter", "write_observation"]

# Target size of one HDF5 chunk of /stokes written by ObservationWriter.
_CHUNK_BYTES = 1 << 20


def _writer_attrs(
    where: str, attrs: Mapping[str, Any] | None, spectral_instrument: str | None, psf_fwhm: float | None,
    has_filters: bool,
) -> dict[str, Any]:
    a = dict(attrs or {})
    line_str = lines_str(a.get("lines"), where)
    if not line_str:
        raise ObservationError(
            f"{where}: attrs must name the spectral lines, e.g. attrs={{'lines': 'FeI_6173', "
            f"'instrument': 'hmi'}}; a file without them cannot be inverted"
        )
    a["lines"] = line_str
    a["instrument"] = str(a.get("instrument") or "generic")
    if a.get("noise") is None:
        a.pop("noise", None)
    else:
        nv = noise_value(a["noise"], where)
        a["noise"] = np.asarray(nv, dtype=np.float64) if isinstance(nv, tuple) else nv
    if spectral_instrument is not None:
        a["spectral_instrument"] = spectral_instrument
    if psf_fwhm is not None:
        a["psf_fwhm"] = psf_fwhm
    kind = a.get("spectral_instrument")
    if kind is None and has_filters:
        kind = a["spectral_instrument"] = "filters"
    if kind is not None and kind not in SPECTRAL_INSTRUMENTS:
        raise ObservationError(
            f"{where}: spectral_instrument={kind!r}; use one of {', '.join(SPECTRAL_INSTRUMENTS)}"
        )
    if has_filters and kind != "filters":
        raise ObservationError(
            f"{where}: filters=(wavelength, transmission) are the profiles of spectral_instrument='filters', "
            f"got spectral_instrument={kind!r}"
        )
    if a.get("psf_fwhm") is not None:
        a["psf_fwhm"] = option_float(a["psf_fwhm"], "psf_fwhm", where, attribute=True)
        if a["psf_fwhm"] <= 0:
            raise ObservationError(f"{where}: psf_fwhm={a['psf_fwhm']!r} mA must be positive")
    return a


class ObservationWriter:
    """Write an observation file of the HDF5 contract row block by row block.

    Creates ``/stokes`` float32 ``(ny, nx, 4, nw)`` chunked by rows (about
    1 MiB per chunk, unwritten pixels read back as NaN), ``/wavelength``, the
    root attributes, ``/filters/...`` when given, and, on first use,
    ``/truth/<param>`` float32 maps. Memory is that of one row block, so a
    4096 x 4096 synthetic scene can be written in blocks of a few rows.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (overwritten).
    ny, nx : int
        Map size in pixels.
    wavelength : array_like
        ``(nw,)`` absolute air wavelengths in Angstrom, strictly increasing.
    attrs : Mapping
        Root attributes; ``lines`` is required, ``instrument`` defaults to
        ``"generic"``, ``noise`` (one sigma or four, continuum units)
        optional; others are stored as given.
    spectral_instrument : str, optional
        How the spectra were taken: ``"grid"``, ``"psf"``, ``"hmi_filters"``
        or ``"filters"`` (attribute ``spectral_instrument``; may also be given
        in ``attrs``).
    psf_fwhm : float, optional
        FWHM of the spectral PSF [mA], for ``"psf"`` (optional: without it
        the inversion needs ``-B psf_fwhm`` or ``-B psf_file``).
    filters : (array_like, array_like), optional
        Measured transmission profiles ``(wavelength (nf,) [A], transmission
        (nw, nf))``, written to ``/filters/wavelength`` and
        ``/filters/transmission``; implies ``spectral_instrument="filters"``.
    require_complete : bool
        When True (default), :meth:`close` raises if some rows were never
        written.
    compression : str, optional
        HDF5 filter for ``/stokes`` (e.g. ``"gzip"``); none by default (speed).

    Examples
    --------
    >>> with ObservationWriter("scene.h5", 4096, 4096, wl, {"lines": "FeI_6173"}) as w:  # doctest: +SKIP
    ...     for y0 in range(0, 4096, 16):
    ...         w.write_rows(y0, stokes_block, truth_block)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        ny: int,
        nx: int,
        wavelength: Any,
        attrs: Mapping[str, Any],
        *,
        spectral_instrument: str | None = None,
        psf_fwhm: float | None = None,
        filters: tuple[Any, Any] | None = None,
        require_complete: bool = True,
        compression: str | None = None,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.ny, self.nx = int(ny), int(nx)
        if self.ny < 1 or self.nx < 1:
            raise ObservationError(f"{self.path}: map size must be at least 1 x 1, got {ny} x {nx}")
        wl = np.asarray(wavelength, dtype=np.float64)
        self.wavelength, flipped = check_wavelength(wl, wl.size, where=self.path, what="wavelength")
        if flipped:
            raise ObservationError(f"{self.path}: write wavelengths in increasing order (got a decreasing grid)")
        self.nw = int(wl.size)
        self.filters = None if filters is None else check_filters(*filters, self.nw, self.path)
        self.attrs = _writer_attrs(self.path, attrs, spectral_instrument, psf_fwhm, self.filters is not None)
        self.require_complete = bool(require_complete)
        self._written = np.zeros(self.ny, dtype=bool)
        self._compression = compression
        self._file: h5py.File | None = h5py.File(self.path, "w")
        try:
            self._file.create_dataset("wavelength", data=self.wavelength, dtype=np.float64)
            self._file.create_dataset(
                "stokes", shape=(self.ny, self.nx, 4, self.nw), dtype=np.float32,
                chunks=self._chunks((4, self.nw), 4), fillvalue=np.nan, compression=compression,
            )
            if self.filters is not None:
                self._file.create_dataset("filters/wavelength", data=self.filters[0])
                self._file.create_dataset("filters/transmission", data=self.filters[1])
            for key, value in self.attrs.items():
                self._file.attrs[key] = value
        except BaseException:
            self._file.close()
            raise

    def _chunks(self, tail: tuple[int, ...], item_bytes: int) -> tuple[int, ...]:
        """Chunk shape of about 1 MiB holding whole rows (or a part of one very long row)."""
        pixel_bytes = item_bytes * int(np.prod(tail, dtype=np.int64))
        row_bytes = self.nx * pixel_bytes
        if row_bytes <= _CHUNK_BYTES:
            rows, cols = max(1, min(self.ny, _CHUNK_BYTES // row_bytes)), self.nx
        else:
            rows, cols = 1, max(1, min(self.nx, _CHUNK_BYTES // pixel_bytes))
        return (rows, cols) + tuple(tail)

    def __enter__(self) -> ObservationWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._close_file()

    def write_rows(
        self, y0: int, stokes_rows: Any, truth_rows: Mapping[str, Any] | None = None
    ) -> None:
        """Write a block of whole rows starting at row ``y0``.

        Parameters
        ----------
        y0 : int
            First row of the block.
        stokes_rows : array_like
            ``(rows, nx, 4, nw)`` Stokes I, Q, U, V in continuum units (cast
            to float32).
        truth_rows : Mapping[str, array_like], optional
            ``(rows, nx)`` true parameter maps of the same rows, by name.
        """
        f = self._require_open()
        block = np.asarray(stokes_rows)
        if block.ndim != 4 or block.shape[1:] != (self.nx, 4, self.nw):
            raise ObservationError(
                f"{self.path}: write_rows got Stokes rows of shape {block.shape}, expected "
                f"(rows, {self.nx}, 4, {self.nw})"
            )
        y0 = int(y0)
        y1 = y0 + block.shape[0]
        if not 0 <= y0 <= y1 <= self.ny:
            raise ObservationError(f"{self.path}: rows [{y0}, {y1}) fall outside the map of {self.ny} rows")
        f["stokes"][y0:y1] = block.astype(np.float32, copy=False)
        for name, values in (truth_rows or {}).items():
            self._write_truth_rows(name, y0, y1, values)
        self._written[y0:y1] = True

    def write_truth(self, name: str, values: Any) -> None:
        """Write one whole ``(ny, nx)`` truth map ``/truth/<name>``."""
        self._require_open()
        self._write_truth_rows(name, 0, self.ny, values)

    def _write_truth_rows(self, name: str, y0: int, y1: int, values: Any) -> None:
        f = self._require_open()
        arr = np.asarray(values)
        if arr.shape != (y1 - y0, self.nx):
            raise ObservationError(
                f"{self.path}: truth map {name!r} for rows [{y0}, {y1}) has shape {arr.shape}, "
                f"expected ({y1 - y0}, {self.nx})"
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
            raise ObservationError(f"{self.path}: truth name {name!r} must be a plain identifier")
        group = f.require_group("truth")
        if name not in group:
            group.create_dataset(
                name, shape=(self.ny, self.nx), dtype=np.float32, chunks=self._chunks((), 4),
                fillvalue=np.nan, compression=self._compression,
            )
        group[name][y0:y1] = arr.astype(np.float32, copy=False)

    def _require_open(self) -> h5py.File:
        if self._file is None:
            raise ObservationError(f"{self.path}: the writer is closed")
        return self._file

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        """Close the file; raise if rows are missing and ``require_complete``."""
        if self._file is None:
            return
        self._close_file()
        if self.require_complete and not self._written.all():
            missing = np.flatnonzero(~self._written)
            runs = np.split(missing, np.flatnonzero(np.diff(missing) > 1) + 1)
            spans = ", ".join(f"[{r[0]}, {r[-1] + 1})" for r in runs[:5])
            raise ObservationError(
                f"{self.path}: closed with {missing.size} of {self.ny} rows never written ({spans}"
                f"{', ...' if len(runs) > 5 else ''}); they hold NaN. Write every row, or pass "
                f"require_complete=False"
            )


def write_observation(
    path: str | os.PathLike[str],
    stokes: Any = None,
    wavelength: Any = None,
    attrs: Mapping[str, Any] | None = None,
    truth: Mapping[str, Any] | None = None,
    *,
    shape: tuple[int, int] | None = None,
    spectral_instrument: str | None = None,
    psf_fwhm: float | None = None,
    filters: tuple[Any, Any] | None = None,
) -> None:
    """Write a whole observation file of the HDF5 contract.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (overwritten).
    stokes : array_like, optional
        ``(ny, nx, 4, nw)`` Stokes I, Q, U, V in continuum units.
    wavelength : array_like
        ``(nw,)`` absolute air wavelengths in Angstrom, increasing.
    attrs : Mapping
        ``lines`` (required), ``instrument``, ``noise`` and any other attribute.
    truth : Mapping[str, array_like], optional
        ``(ny, nx)`` true parameter maps, written to ``/truth/<name>``.
    shape : tuple of int, optional
        ``(ny, nx)`` when ``stokes`` is None: the file is laid out with every
        pixel NaN, to be filled later (e.g. by :class:`ObservationWriter` users
        or tests of the NaN policy).
    spectral_instrument, psf_fwhm, filters
        How the spectra were taken, as for :class:`ObservationWriter`.
    """
    where = os.fspath(path)
    if wavelength is None:
        raise ObservationError(f"{where}: write_observation needs wavelength= (Angstrom, absolute)")
    wl = np.asarray(wavelength, dtype=np.float64)
    if stokes is None:
        if shape is None or len(shape) != 2:
            raise ObservationError(f"{where}: give stokes=(ny, nx, 4, nw) data or shape=(ny, nx)")
        ny, nx = (int(n) for n in shape)
    else:
        arr = np.asarray(stokes)
        if arr.ndim != 4 or arr.shape[2] != 4 or arr.shape[3] != wl.size:
            raise ObservationError(
                f"{where}: stokes has shape {arr.shape}, expected (ny, nx, 4, {wl.size}) with the wave axis "
                f"as long as the wavelength grid"
            )
        if shape is not None and tuple(shape) != arr.shape[:2]:
            raise ObservationError(f"{where}: shape={tuple(shape)} disagrees with stokes {arr.shape[:2]}")
        ny, nx = arr.shape[:2]
    with ObservationWriter(
        path, ny, nx, wl, attrs or {}, spectral_instrument=spectral_instrument, psf_fwhm=psf_fwhm,
        filters=filters, require_complete=stokes is not None,
    ) as w:
        if stokes is not None:
            w.write_rows(0, stokes)
        for name, values in (truth or {}).items():
            w.write_truth(name, values)
