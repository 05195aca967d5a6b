"""Synthetic solar scenes: Milne-Eddington parameter maps that look like the Sun.

:func:`make_scene` returns maps of the nine ME parameters (stokesflow names and
units) for four kinds of scene:

``quiet``
    Granulation: bright granules with upflows (blueshift, negative ``vlos``,
    down to about -2 km/s) and narrow dark lanes with downflows (up to about
    +2.5 km/s); weak fields of tens of gauss with random inclination and
    azimuth.
``plage``
    Quiet Sun in which kilogauss patches (1000-1500 G, within 20 deg of the
    vertical, slightly bright, a small downflow, a weakened line) line the
    lanes of a network pattern.
``sunspot``
    A round spot with a ragged edge: a dark umbra (continuum 0.15-0.4,
    2500-3500 G, within 25 deg of the vertical), a filamentary penumbra
    (continuum 0.55-0.95, 1000-2000 G, inclination 55-88 deg, azimuth radial
    modulo 180 deg) with an Evershed-like flow along the field (seen at disc
    centre: blueshift in the inner penumbra, redshift at the outer edge where
    the flow dives), in quiet surroundings. Its polarity is drawn from the seed.
``mixed``
    A smaller spot, a plage region of the opposite polarity beside it, and
    quiet Sun around both.

Units: ``B`` G; ``inclination`` deg in [0, 180]; ``azimuth`` deg in [0, 180)
(measured from the +x axis towards +y, radial in the penumbra); ``vlos`` km/s,
positive = redshift; ``doppler_width`` mA; ``eta0``, ``damping`` dimensionless;
``S0``, ``S1`` in units of the quiet-Sun continuum at disc centre (continuum
``S0 + S1``). The scene is seen at disc centre (the line of sight is the local
vertical).

Determinism and size
--------------------
Every pixel value is a pure function of the pixel's coordinates, the seed and
a handful of layout numbers (spot position and radii, ...): the random fields
are gradient ("Perlin") and cellular ("Worley") noise whose lattice values come
from a counter-based hash of ``(seed, field, lattice cell)``. So a block of
rows (``rows=slice(y0, y1)``) is computed without the rest of the map and is
bit-for-bit equal to the same rows of the full call, and a 4096 x 4096 scene
can be generated and written block by block with memory of a block
(internally blocks are further split into pieces of about 2**18 pixels).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr

__all__ = [
    "PARAMETERS",
    "PENUMBRA",
    "PLAGE",
    "QUIET",
    "REGION_NAMES",
    "SCENES",
    "UMBRA",
    "PlageLayout",
    "SceneLayout",
    "SpotLayout",
    "make_scene",
    "scene_layout",
    "scene_regions",
]

#: Kinds of scene :func:`make_scene` draws.
SCENES: tuple[str, ...] = ("sunspot", "quiet", "plage", "mixed")

#: Parameter maps returned by :func:`make_scene`, in this order.
PARAMETERS: tuple[str, ...] = (
    "B", "inclination", "azimuth", "vlos", "doppler_width", "eta0", "damping", "S0", "S1",
)

#: Region codes of :func:`scene_regions`.
QUIET, PLAGE, PENUMBRA, UMBRA = 0, 1, 2, 3
REGION_NAMES: dict[int, str] = {QUIET: "quiet", PLAGE: "plage", PENUMBRA: "penumbra", UMBRA: "umbra"}

_KIND_ID = {k: i + 1 for i, k in enumerate(SCENES)}
_MASK64 = (1 << 64) - 1
_BLOCK_PIXELS = 1 << 18  # pixels per internal piece: bounds the temporaries (~100 MB at most)

# Noise streams (one independent random field each).
_S_GRAN, _S_FINE, _S_MESO, _S_BQ, _S_INC, _S_AZI, _S_FIL, _S_NET, _S_PMOD, _S_ENV, _S_SPOT = range(1, 12)


# --------------------------------------------------------------------------- #
# Counter-based hashing and noise
# --------------------------------------------------------------------------- #
_M1 = np.array([0xBF58476D1CE4E5B9], dtype=np.uint64)
_M2 = np.array([0x94D049BB133111EB], dtype=np.uint64)
_PY = np.array([0x9E3779B97F4A7C15], dtype=np.uint64)
_PX = np.array([0xC2B2AE3D27D4EB4F], dtype=np.uint64)
_SQ = math.sqrt(0.5)
_GY = np.array([0.0, 0.0, 1.0, -1.0, _SQ, _SQ, -_SQ, -_SQ])
_GX = np.array([1.0, -1.0, 0.0, 0.0, _SQ, -_SQ, _SQ, -_SQ])


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrap-around arithmetic, no warnings for arrays)."""
    z = z ^ (z >> np.uint64(30))
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))


def _key(seed: int, stream: int) -> np.ndarray:
    """A (1,) uint64 key for one random field of one seed."""
    base = (int(seed) * 0x632BE59BD9B4E019 + int(stream) * 0x8CB92BA72F3D8DD7 + 0x2545F4914F6CDD1D) & _MASK64
    return _mix(np.array([base], dtype=np.uint64))


def _hash2(key: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Hash of integer lattice coordinates (broadcast) under a key."""
    hy = np.asarray(iy, dtype=np.int64).view(np.uint64)
    hx = np.asarray(ix, dtype=np.int64).view(np.uint64)
    return _mix(_mix(key ^ (hy * _PY)) ^ (hx * _PX))


def _unit(h: np.ndarray) -> np.ndarray:
    """uint64 hash -> float64 uniform in [0, 1)."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _perlin(y: np.ndarray, x: np.ndarray, key: np.ndarray) -> np.ndarray:
    """2-D gradient noise at lattice coordinates ``y`` (R, 1) and ``x`` (1, C) (or any broadcast)."""
    fy, fx = np.floor(y), np.floor(x)
    iy, ix = fy.astype(np.int64), fx.astype(np.int64)
    ty, tx = y - fy, x - fx

    def corner(dy: int, dx: int) -> np.ndarray:
        g = (_hash2(key, iy + dy, ix + dx) >> np.uint64(61)).astype(np.intp)
        return _GY[g] * (ty - dy) + _GX[g] * (tx - dx)

    u, v = _fade(tx), _fade(ty)
    n0 = corner(0, 0)
    n0 = n0 + u * (corner(0, 1) - n0)
    n1 = corner(1, 0)
    n1 = n1 + u * (corner(1, 1) - n1)
    return n0 + v * (n1 - n0)


def _fbm_raw(y: np.ndarray, x: np.ndarray, seed: int, stream: int, octaves: int) -> np.ndarray:
    total = np.zeros(np.broadcast_shapes(np.shape(y), np.shape(x)))
    amp, freq = 1.0, 1.0
    for o in range(octaves):
        total += amp * _perlin(y * freq, x * freq, _key(seed, 64 * stream + o))
        amp *= 0.5
        freq *= 2.0
    return total


@functools.lru_cache(maxsize=None)
def _fbm_std(octaves: int) -> float:
    """Standard deviation of :func:`_fbm_raw`, measured once on a fixed sample (deterministic)."""
    y = np.arange(0.0, 48.0, 0.37)[:, None]
    x = np.arange(0.0, 48.0, 0.41)[None, :]
    return float(np.std(_fbm_raw(y, x, 0, 1000, octaves)))


def _noise(y: np.ndarray, x: np.ndarray, seed: int, stream: int, octaves: int = 2) -> np.ndarray:
    """Smooth random field with unit standard deviation; lattice spacing 1 in the units of y, x."""
    return _fbm_raw(y, x, seed, stream, octaves) / _fbm_std(octaves)


def _worley(
    y: np.ndarray, x: np.ndarray, seed: int, stream: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cellular noise: distances to the nearest and second-nearest feature point (one
    jittered point per lattice cell) and a uniform random value of the nearest cell."""
    iy, ix = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    ky, kx, kv = _key(seed, 64 * stream), _key(seed, 64 * stream + 1), _key(seed, 64 * stream + 2)
    shape = np.broadcast_shapes(np.shape(y), np.shape(x))
    f1 = np.full(shape, np.inf)
    f2 = np.full(shape, np.inf)
    cell = np.zeros(shape)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            cy, cx = iy + dy, ix + dx
            py = cy + _unit(_hash2(ky, cy, cx))
            px = cx + _unit(_hash2(kx, cy, cx))
            d = np.hypot(y - py, x - px)
            nearer = d < f1
            cell = np.where(nearer, _unit(_hash2(kv, cy, cx)), cell)
            f2 = np.minimum(f2, np.maximum(f1, d))
            f1 = np.minimum(f1, d)
    return f1, f2, cell


def _granulation_raw(y: np.ndarray, x: np.ndarray, seed: int) -> np.ndarray:
    # Warp the coordinates a little so the lanes are wavy rather than straight cell walls.
    wy = y + 0.22 * _noise(y * 1.3, x * 1.3, seed, _S_GRAN + 40, 1)
    wx = x + 0.22 * _noise(y * 1.3 + 17.0, x * 1.3, seed, _S_GRAN + 41, 1)
    f1, f2, cell = _worley(wy, wx, seed, _S_GRAN)
    edge = f2 - f1  # 0 on the cell boundaries (intergranular lanes)
    # Granules differ in brightness (cell value), bright in the middle, dark narrow lanes.
    return (0.55 + 0.9 * cell) * np.tanh(edge / 0.4) - 0.7 * np.exp(-((edge / 0.16) ** 2))


@functools.lru_cache(maxsize=None)
def _granulation_stats() -> tuple[float, float]:
    y = np.arange(0.0, 48.0, 0.17)[:, None]
    x = np.arange(0.0, 48.0, 0.19)[None, :]
    g = _granulation_raw(y, x, 1000)
    return float(np.mean(g)), float(np.std(g))


def _granulation(y: np.ndarray, x: np.ndarray, seed: int) -> np.ndarray:
    """Standardised granulation pattern: positive in granules, strongly negative in lanes."""
    mean, std = _granulation_stats()
    return np.clip((_granulation_raw(y, x, seed) - mean) / std, -3.0, 2.5)


# --------------------------------------------------------------------------- #
# Layout
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class SpotLayout:
    """Geometry of a sunspot (pixels; 0-based row ``cy`` and column ``cx``).

    The umbra and penumbra boundaries are ``r_umbra * (1 + sum a_k cos(k phi + p_k))``
    (``harm_umbra``) and likewise for the penumbra, so the spot is not a perfect
    circle. ``polarity`` is +1 (inclination below 90 deg) or -1.
    """

    cy: float
    cx: float
    r_penumbra: float
    r_umbra: float
    polarity: int
    n_filaments: float
    harm_penumbra: tuple[tuple[int, float, float], ...]
    harm_umbra: tuple[tuple[int, float, float], ...]


@dataclass(frozen=True)
class PlageLayout:
    """Where plage is: ``mode`` ``"field"`` (patchy over the whole map) or ``"blob"``
    (a region of radius ``radius`` pixels around ``(cy, cx)``); ``network_px`` is
    the network cell size in pixels."""

    mode: str
    cy: float
    cx: float
    radius: float
    polarity: int
    network_px: float


@dataclass(frozen=True)
class SceneLayout:
    """The few global numbers of a scene; everything else is per-pixel noise."""

    kind: str
    ny: int
    nx: int
    seed: int
    granule_px: float
    spot: SpotLayout | None
    plage: PlageLayout | None


def _check_kind(kind: str, ny: int, nx: int, granule_px: float) -> tuple[str, int, int, float]:
    key = str(kind).strip().lower()
    if key not in SCENES:
        raise ValueError(f"unknown scene kind {kind!r}; choose one of {', '.join(SCENES)}")
    if int(ny) < 1 or int(nx) < 1:
        raise ValueError(f"scene size must be at least 1 x 1 pixels, got {ny} x {nx}")
    if not (float(granule_px) > 0 and math.isfinite(float(granule_px))):
        raise ValueError(f"granule_px must be a positive number of pixels, got {granule_px!r}")
    return key, int(ny), int(nx), float(granule_px)


def scene_layout(kind: str, ny: int, nx: int, *, seed: int = 0, granule_px: float = 8.0) -> SceneLayout:
    """The global layout of a scene (spot position and radii, plage region).

    Parameters
    ----------
    kind : str
        One of :data:`SCENES`.
    ny, nx : int
        Map size in pixels.
    seed : int
        Random seed.
    granule_px : float
        Typical granule size in pixels.

    Returns
    -------
    SceneLayout
    """
    kind, ny, nx, gp = _check_kind(kind, ny, nx, granule_px)
    rng = np.random.default_rng([int(seed) & _MASK64, _KIND_ID[kind]])
    m = float(min(ny, nx))

    def harmonics(scale: float) -> tuple[tuple[int, float, float], ...]:
        return tuple((k, float(rng.uniform(0.0, scale) / k), float(rng.uniform(0.0, 2 * math.pi))) for k in range(2, 7))

    def spot(cy: float, cx: float, rp: float) -> SpotLayout:
        ru = rp * float(rng.uniform(0.38, 0.46))
        return SpotLayout(
            cy=cy, cx=cx, r_penumbra=rp, r_umbra=ru, polarity=int(rng.choice([-1, 1])),
            n_filaments=max(12.0, 2 * math.pi * rp / (0.8 * gp)),
            harm_penumbra=harmonics(0.12), harm_umbra=harmonics(0.10),
        )

    network_px = float(min(10.0 * gp, max(3.0 * gp, m / 6.0)))
    s = p = None
    if kind == "sunspot":
        s = spot(ny / 2 - 0.5 + float(rng.uniform(-0.04, 0.04)) * ny,
                 nx / 2 - 0.5 + float(rng.uniform(-0.04, 0.04)) * nx, 0.30 * m)
    elif kind == "mixed":
        s = spot(0.36 * ny + float(rng.uniform(-0.02, 0.02)) * ny,
                 0.32 * nx + float(rng.uniform(-0.02, 0.02)) * nx, 0.22 * m)
        radius = 0.26 * m
        p = PlageLayout("blob", 0.68 * ny, 0.70 * nx, radius, -s.polarity,
                        max(2.0 * gp, min(network_px, 0.8 * radius)))
    elif kind == "plage":
        p = PlageLayout("field", ny / 2, nx / 2, math.inf, int(rng.choice([-1, 1])), network_px)
    return SceneLayout(kind, ny, nx, int(seed), gp, s, p)


# --------------------------------------------------------------------------- #
# Pixel values
# --------------------------------------------------------------------------- #
def _ring(phi: np.ndarray, harm: tuple[tuple[int, float, float], ...]) -> np.ndarray:
    out = np.ones_like(phi)
    for k, a, ph in harm:
        out += a * np.cos(k * phi + ph)
    return out


def _mod180(a: np.ndarray) -> np.ndarray:
    a = np.mod(a, 180.0)
    return np.where(a >= 180.0, a - 180.0, a)  # np.mod(-tiny, 180) rounds to 180.0


def _quiet(lay: SceneLayout, Y: np.ndarray, X: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    gp, seed = lay.granule_px, lay.seed
    n = {
        "gran": _granulation(Y / gp, X / gp, seed),
        "fine": _noise(Y / (0.5 * gp), X / (0.5 * gp), seed, _S_FINE),
        "meso": _noise(Y / (2.5 * gp), X / (2.5 * gp), seed, _S_MESO, 3),
        "bq": _noise(Y / gp, X / gp, seed, _S_BQ),
        "inc": _noise(Y / (0.7 * gp), X / (0.7 * gp), seed, _S_INC),
        "azi": _noise(Y / (0.7 * gp), X / (0.7 * gp), seed, _S_AZI),
    }
    g, fine, meso = n["gran"], n["fine"], n["meso"]
    ic = 1.0 + 0.055 * g + 0.01 * meso + 0.004 * fine
    p = {
        "B": np.clip(30.0 * np.exp(0.55 * n["bq"]), 3.0, 150.0),
        # isotropic random directions: cos(inclination) uniform in [-1, 1]
        "inclination": np.degrees(np.arccos(np.clip(1.0 - 2.0 * ndtr(n["inc"]), -1.0, 1.0))),
        "azimuth": _mod180(180.0 * ndtr(n["azi"])),
        "vlos": np.clip(-1.1 * g + 0.25 * meso + 0.1 * fine, -2.5, 3.0),
        "doppler_width": np.clip(30.0 + 1.5 * g + 1.0 * meso, 22.0, 40.0),
        "eta0": np.clip(8.0 - 0.9 * g + 0.8 * meso, 3.0, 15.0),
        "damping": np.clip(0.22 + 0.03 * meso, 0.05, 0.6),
        "ic": ic,
        "s1_fraction": np.clip(0.72 + 0.03 * g, 0.6, 0.8),
    }
    return p, n


def _apply(p: dict[str, np.ndarray], mask: np.ndarray, values: dict[str, Any]) -> None:
    for name, v in values.items():
        p[name] = np.where(mask, v, p[name])


def _plage(lay: SceneLayout, Y, X, p, n, label) -> None:
    pl = lay.plage
    net, seed = pl.network_px, lay.seed
    f1, f2, _ = _worley(Y / net, X / net, seed, _S_NET)
    lane = np.exp(-(((f2 - f1) / 0.3) ** 2))
    strength = lane * (0.35 + 0.65 * ndtr(_noise(Y / (0.5 * net), X / (0.5 * net), seed, _S_PMOD)))
    if pl.mode == "blob":
        rr = np.hypot(Y - pl.cy, X - pl.cx) / pl.radius
        strength = strength * np.clip((1.0 - rr) / 0.3, 0.0, 1.0)
    else:
        strength = strength * ndtr(2.0 * (_noise(Y / (2.0 * net), X / (2.0 * net), seed, _S_ENV, 1) + 0.5))
    patch = strength > 0.5
    if not patch.any():
        return
    fine, meso = n["fine"], n["meso"]
    tilt = np.clip(4.0 + 6.0 * np.abs(n["inc"]), 0.0, 20.0)
    _apply(p, patch, {
        "B": np.clip(1000.0 + 500.0 * np.clip((strength - 0.5) / 0.35, 0.0, 1.0) + 40.0 * fine, 1000.0, 1500.0),
        "inclination": tilt if pl.polarity > 0 else 180.0 - tilt,
        "vlos": np.clip(0.35 + 0.2 * meso, -0.5, 1.2),
        "doppler_width": np.clip(31.0 + 1.0 * meso, 25.0, 38.0),
        "eta0": np.clip(5.5 + 0.6 * meso, 3.0, 9.0),
        "damping": np.clip(0.2 + 0.03 * meso, 0.05, 0.6),
        "ic": np.clip(1.02 + 0.015 * fine + 0.01 * meso, 0.97, 1.08),
        "s1_fraction": 0.74,
    })
    label[patch] = PLAGE


def _spot(lay: SceneLayout, Y, X, p, n, label) -> None:
    s = lay.spot
    dy, dx = Y - s.cy, X - s.cx
    r = np.hypot(dy, dx)
    phi = np.arctan2(dy, dx)
    rp = s.r_penumbra * _ring(phi, s.harm_penumbra)
    ru = s.r_umbra * _ring(phi, s.harm_umbra)
    umbra = r < ru
    pen = ~umbra & (r < rp)
    if not (umbra.any() or pen.any()):
        return
    fine, meso = n["fine"], n["meso"]
    radial = np.degrees(phi)
    pol = s.polarity

    # Umbra: dark, strong, nearly vertical field, umbral dots, almost at rest.
    tu = np.clip(r / ru, 0.0, 1.0)
    gam_u = np.clip(4.0 + 14.0 * tu + 2.0 * fine, 0.0, 22.0)
    dots = np.clip(n["gran"] - 1.5, 0.0, 1.0)
    _apply(p, umbra, {
        "B": np.clip(3250.0 - 550.0 * tu**2 + 80.0 * fine - 150.0 * dots, 2550.0, 3450.0),
        "inclination": gam_u if pol > 0 else 180.0 - gam_u,
        "azimuth": _mod180(radial + 10.0 * meso),
        "vlos": np.clip(0.1 * meso - 0.3 * dots, -0.6, 0.6),
        "doppler_width": np.clip(24.0 + 1.0 * meso, 20.0, 30.0),
        "eta0": np.clip(22.0 + 3.0 * meso, 12.0, 40.0),
        "damping": np.clip(0.45 + 0.05 * meso, 0.1, 0.8),
        "ic": np.clip(0.20 + 0.10 * tu**2 + 0.12 * dots + 0.01 * fine, 0.15, 0.40),
        "s1_fraction": 0.60,
    })

    # Penumbra: filaments in azimuth (a noise field sampled on a circle, so periodic
    # in phi, drifting slowly with r so filaments are radially elongated).
    tp = np.clip((r - ru) / np.maximum(rp - ru, 1e-9), 0.0, 1.0)
    c = s.n_filaments / (2.0 * math.pi) * (1.0 + 0.12 * r / s.r_penumbra)
    fil = np.clip(_noise(c * np.sin(phi), c * np.cos(phi), lay.seed, _S_FIL), -2.0, 2.0)
    gam_p = np.clip(62.0 + 16.0 * tp - 4.0 * fil + 1.5 * fine, 55.0, 88.0)
    # Evershed flow: outward along the field of the intraspines (fil < 0), rising in the
    # inner penumbra and diving at the outer edge; at disc centre the line of sight sees
    # its vertical component, -v cos(flow inclination) (positive = redshift = downward).
    intraspine = np.clip(0.5 - 0.5 * fil, 0.0, 1.0)
    v_flow = 1.0 + 4.0 * tp
    gam_flow = np.radians(50.0 + 55.0 * tp)
    _apply(p, pen, {
        "B": np.clip((2000.0 - 900.0 * tp) * (1.0 + 0.07 * fil), 1000.0, 2000.0),
        "inclination": gam_p if pol > 0 else 180.0 - gam_p,
        "azimuth": _mod180(radial + 4.0 * meso),
        "vlos": np.clip(-v_flow * np.cos(gam_flow) * (0.3 + 0.7 * intraspine) + 0.1 * meso, -3.0, 4.0),
        "doppler_width": np.clip(27.0 + 1.0 * meso, 22.0, 34.0),
        "eta0": np.clip(14.0 + 2.0 * meso, 6.0, 30.0),
        "damping": np.clip(0.35 + 0.04 * meso, 0.1, 0.7),
        "ic": np.clip(0.78 + 0.06 * fil + 0.05 * tp + 0.01 * fine, 0.55, 0.95),
        "s1_fraction": 0.66,
    })
    label[pen] = PENUMBRA
    label[umbra] = UMBRA


def _piece(lay: SceneLayout, yv: np.ndarray, xv: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    Y = yv.astype(np.float64)[:, None]
    X = xv.astype(np.float64)[None, :]
    shape = (yv.size, xv.size)
    p, n = _quiet(lay, Y, X)
    for k in p:
        p[k] = np.broadcast_to(p[k], shape)
    for k in n:
        n[k] = np.broadcast_to(n[k], shape)
    label = np.full(shape, QUIET, dtype=np.int8)
    if lay.plage is not None:
        _plage(lay, Y, X, p, n, label)
    if lay.spot is not None:
        _spot(lay, Y, X, p, n, label)
    ic, f1 = p.pop("ic"), p.pop("s1_fraction")
    p["S1"] = f1 * ic
    p["S0"] = ic - p["S1"]
    return p, label


def _generate(
    kind: str, ny: int, nx: int, seed: int, rows: slice | None, granule_px: float, want_params: bool
) -> tuple[dict[str, np.ndarray] | None, np.ndarray]:
    lay = scene_layout(kind, ny, nx, seed=seed, granule_px=granule_px)
    if rows is not None and not isinstance(rows, slice):
        raise TypeError(f"rows must be a slice of row indices (e.g. slice(0, 64)) or None, got {type(rows).__name__}")
    yv = np.arange(lay.ny)[rows] if rows is not None else np.arange(lay.ny)
    xv = np.arange(lay.nx)
    shape = (yv.size, lay.nx)
    params = {k: np.empty(shape, dtype=np.float64) for k in PARAMETERS} if want_params else None
    labels = np.empty(shape, dtype=np.int8)
    step = max(1, _BLOCK_PIXELS // lay.nx)
    for i0 in range(0, yv.size, step):
        p, lab = _piece(lay, yv[i0 : i0 + step], xv)
        labels[i0 : i0 + step] = lab
        if params is not None:
            for k in PARAMETERS:
                params[k][i0 : i0 + step] = p[k]
    return params, labels


def make_scene(
    kind: str, ny: int, nx: int, *, seed: int = 0, rows: slice | None = None, granule_px: float = 8.0
) -> dict[str, np.ndarray]:
    """Milne-Eddington parameter maps of a synthetic solar scene.

    Parameters
    ----------
    kind : str
        One of :data:`SCENES`: ``"sunspot"``, ``"quiet"``, ``"plage"``,
        ``"mixed"``.
    ny, nx : int
        Size of the whole map in pixels.
    seed : int
        Random seed; the same seed gives the same scene, bit for bit.
    rows : slice, optional
        Only these rows of the map (e.g. ``slice(y0, y1)``); identical to the
        same rows of the full map. Use it for large maps: memory is that of
        the block.
    granule_px : float
        Typical granule size in pixels (8 by default); the network and the
        penumbral filaments scale with it, the spot and plage region with the
        map.

    Returns
    -------
    dict[str, numpy.ndarray]
        The nine maps of :data:`PARAMETERS`, float64, shape ``(rows, nx)``:
        ``B`` [G], ``inclination`` [deg, 0-180], ``azimuth`` [deg, 0-180),
        ``vlos`` [km/s, + = redshift], ``doppler_width`` [mA], ``eta0`` [-],
        ``damping`` [-], ``S0``, ``S1`` [quiet-Sun continuum units; continuum
        = S0 + S1].

    Examples
    --------
    >>> p = make_scene("sunspot", 128, 128, seed=1)
    >>> sorted(p) == sorted(PARAMETERS)
    True
    >>> block = make_scene("sunspot", 128, 128, seed=1, rows=slice(40, 48))
    >>> bool((block["B"] == p["B"][40:48]).all())
    True
    """
    params, _ = _generate(kind, ny, nx, seed, rows, granule_px, True)
    assert params is not None
    return params


def scene_regions(
    kind: str, ny: int, nx: int, *, seed: int = 0, rows: slice | None = None, granule_px: float = 8.0
) -> np.ndarray:
    """Region labels of the scene :func:`make_scene` draws with the same arguments.

    Returns
    -------
    numpy.ndarray
        int8 ``(rows, nx)``: :data:`QUIET` (0), :data:`PLAGE` (1),
        :data:`PENUMBRA` (2), :data:`UMBRA` (3).
    """
    _, labels = _generate(kind, ny, nx, seed, rows, granule_px, False)
    return labels
