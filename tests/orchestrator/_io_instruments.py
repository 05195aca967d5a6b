"""Test doubles of instrument files: small stand-ins for JSOC hmi.S_720s records and
Hinode SOT/SP level-1 scans, written with the keywords the real files carry.

They are doubles, not real data: the pixel values are chosen so that every value
read back can be predicted exactly (integers, powers of two for the scalings).
"""

from __future__ import annotations

import os

import numpy as np
from astropy.io import fits

HMI_PREFIX = "hmi.S_720s.20110215_000000_TAI.3"
HMI_TREC = "2011.02.15_00:00:00_TAI"
HMI_SEGMENTS = tuple(f"{s}{k}" for s in "IQUV" for k in range(6))
INT32_BLANK = -2147483648


def hmi_header(ny: int, nx: int, *, rsun_px: float = 200.0, crval=(0.0, 0.0), crota2: float = 0.0) -> fits.Header:
    """Keywords of an hmi.S_720s segment (JSOC series description), disc centre at the image centre."""
    cdelt = 0.504
    h = fits.Header()
    h["T_REC"] = HMI_TREC
    h["TELESCOP"] = "SDO/HMI"
    h["INSTRUME"] = "HMI_SIDE1"
    h["WAVELNTH"] = 6173.3
    h["CAMERA"] = 3
    h["BUNIT"] = "DN/s"
    h["CTYPE1"], h["CTYPE2"] = "HPLN-TAN", "HPLT-TAN"
    h["CUNIT1"], h["CUNIT2"] = "arcsec", "arcsec"
    h["CRPIX1"] = (nx + 1) / 2.0
    h["CRPIX2"] = (ny + 1) / 2.0
    h["CRVAL1"], h["CRVAL2"] = crval
    h["CDELT1"] = cdelt
    h["CDELT2"] = cdelt
    h["CROTA2"] = crota2
    h["RSUN_OBS"] = rsun_px * cdelt
    h["DSUN_OBS"] = 1.4754e11
    h["OBS_VR"] = 1234.5
    return h


def hmi_values(ny: int, nx: int) -> dict[str, np.ndarray]:
    """Distinct integer values per segment and pixel: 100000 * stokes + 10000 * k + pixel index."""
    pix = np.arange(ny * nx, dtype=np.float64).reshape(ny, nx)
    return {seg: 100000.0 * "IQUV".index(seg[0]) + 10000.0 * int(seg[1]) + pix for seg in HMI_SEGMENTS}


def write_hmi_record(
    directory: str | os.PathLike[str],
    values: dict[str, np.ndarray],
    *,
    compressed: bool,
    header: fits.Header,
    prefix: str = HMI_PREFIX,
    bscale: float = 0.5,
    skip: tuple[str, ...] = (),
) -> list[str]:
    """Write the 24 segment files; compressed: RICE CompImageHDU in HDU 1 with int32, BSCALE, BLANK."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for seg in HMI_SEGMENTS:
        if seg in skip:
            continue
        path = os.path.join(os.fspath(directory), f"{prefix}.{seg}.fits")
        data = np.asarray(values[seg], dtype=np.float64)
        if compressed:
            ints = np.full(data.shape, INT32_BLANK, dtype=np.int32)
            ok = np.isfinite(data)
            ints[ok] = np.round(data[ok] / bscale).astype(np.int32)
            hdu = fits.CompImageHDU(data=ints, header=header.copy(), compression_type="RICE_1")
            hdu.header["BSCALE"] = bscale
            hdu.header["BZERO"] = 0.0
            hdu.header["BLANK"] = INT32_BLANK
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
        else:
            fits.PrimaryHDU(data=data.astype(np.float32), header=header.copy()).writeto(path)
        paths.append(path)
    return paths


SP_CRVAL1 = 6302.08
SP_CDELT1 = 0.021549
SP_CRPIX1 = 56.5


def sp_wavelength(nw: int = 112) -> np.ndarray:
    """Wavelength of the level-1 keywords: CRVAL1 + (i + 1 - CRPIX1) * CDELT1 (1-based FITS pixels)."""
    return SP_CRVAL1 + (np.arange(nw) + 1.0 - SP_CRPIX1) * SP_CDELT1


def sp_encode(counts: np.ndarray, spbshft: int) -> np.ndarray:
    """Inverse of the level-1 storage: halve per SPBSHFT, wrap I into signed 16 bit."""
    d = np.array(counts, dtype=np.float64)
    if spbshft >= 1:
        d[0] /= 2
    if spbshft >= 2:
        d[3] /= 2
    if spbshft >= 3:
        d[1:3] /= 2
    assert np.all(d == np.round(d)), "test counts must survive the halving exactly"
    i = d[0]
    i[i >= 32768] -= 65536
    assert d.min() >= -32768 and d.max() <= 32767
    return d.astype(np.int16)


def write_sp_scan(
    directory: str | os.PathLike[str],
    counts: np.ndarray,
    *,
    spbshft: list[int],
    file_order: list[int] | None = None,
    nslitpos: int | None = None,
    skip: tuple[int, ...] = (),
    extra: dict[int, dict] | None = None,
) -> list[str]:
    """Write one level-1 FITS file per slit; ``counts`` is (nx, 4, ny, nw) in DN.

    File names (SP3D<date>_<time>.<frac>C.fits) follow ``file_order``, so sorting the
    names does not give the slit order; SLITINDX does.
    """
    os.makedirs(directory, exist_ok=True)
    nx = counts.shape[0]
    order = file_order if file_order is not None else list(range(nx))
    paths = []
    for rank, x in enumerate(order):
        if x in skip:
            continue
        h = fits.Header()
        h["TELESCOP"] = "HINODE"
        h["INSTRUME"] = "SOT/SP"
        h["CTYPE1"], h["CUNIT1"] = "WAVELENGTH", "Angstrom"
        h["CRVAL1"], h["CDELT1"], h["CRPIX1"] = SP_CRVAL1, SP_CDELT1, SP_CRPIX1
        h["CTYPE2"], h["CRVAL2"], h["CDELT2"], h["CRPIX2"] = "Solar-Y", -150.0, 0.16, 16.5
        h["XSCALE"], h["YSCALE"] = 0.1476, 0.16
        h["XCEN"], h["YCEN"] = 100.0 + 0.1476 * x, -150.0
        h["SLITINDX"] = x
        h["NSLITPOS"] = nslitpos if nslitpos is not None else nx
        h["SPBSHFT"] = spbshft[x]
        h["TSTART"] = f"2007-01-01T00:{rank:02d}:00.000"
        for k, v in (extra or {}).get(x, {}).items():
            h[k] = v
        path = os.path.join(os.fspath(directory), f"SP3D20070101_00{rank:02d}00.0C.fits")
        fits.PrimaryHDU(data=sp_encode(counts[x], spbshft[x]), header=h).writeto(path)
        paths.append(path)
    return paths
