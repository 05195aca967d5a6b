"""Random Milne-Eddington parameters for the nn_init tests (one draw, ranges as keyword arguments)."""

from __future__ import annotations

import numpy as np

__all__ = ["random_me_params"]

#: Default ranges of the 9 ME parameters, in the backend's order and units.
RANGES = {"B": (100, 2500), "inclination": (10, 170), "azimuth": (5, 175), "vlos": (-2, 2),
          "doppler_width": (25, 40), "eta0": (4, 15), "damping": (0.05, 0.4), "S0": (0.2, 0.4), "S1": (0.6, 0.8)}


def random_me_params(rng: np.random.Generator, n: int, **ranges: tuple[float, float]) -> np.ndarray:
    """(n, 9) parameters drawn uniformly, each in ``RANGES`` unless given (``B=(300, 2500)``)."""
    unknown = set(ranges) - set(RANGES)
    if unknown:
        raise ValueError(f"unknown ME parameter(s) {sorted(unknown)}")
    return np.column_stack([rng.uniform(*ranges.get(k, RANGES[k]), n) for k in RANGES])
