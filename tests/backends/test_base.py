"""The backend contract: status codes defined once, typed option errors, the base noise estimate."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stokesflow import lm_solver
from stokesflow.backends import base
from stokesflow.backends.base import Backend, ConfigError, coerce_option, options_from_mapping


def test_status_codes_come_from_lm_solver_and_add_4_and_255():
    # lm_solver owns 0-3; the backends re-export the same objects and add 4 and 255
    for name in ("STATUS_OK", "STATUS_MAX_ITER", "STATUS_FAILED", "STATUS_BAD_INPUT"):
        assert getattr(base, name) == getattr(lm_solver, name)
    assert (base.STATUS_OK, base.STATUS_MAX_ITER, base.STATUS_FAILED, base.STATUS_BAD_INPUT) == (0, 1, 2, 3)
    assert base.STATUS_POOR_FIT == 4 and base.STATUS_NOT_RUN == 255
    assert set(base.STATUS_NAMES) == {0, 1, 2, 3, 4, 255}


@dataclasses.dataclass(frozen=True)
class _Toy:
    n: int = 1
    x: float = 0.5
    flag: bool = False
    name: str | None = None
    pair: tuple[float, float] = (0.0, 1.0)
    many: tuple[str, ...] = ()
    either: float | tuple[float, float, float, float] | None = None
    table: tuple[tuple[str, float, float], ...] = dataclasses.field(
        default=(), metadata={"expected": "a list of [name, target, weight]"})


def test_values_are_converted_to_the_declared_types():
    t = options_from_mapping(_Toy, {"n": "7", "x": 2, "flag": True, "name": "a", "pair": [1, 2],
                                    "many": ["p", "q"], "either": [1, 2, 3, 4], "table": [["eta0", 5, 0.1]]},
                             where="[backend.toy]")
    assert t == _Toy(7, 2.0, True, "a", (1.0, 2.0), ("p", "q"), (1.0, 2.0, 3.0, 4.0), (("eta0", 5.0, 0.1),))
    assert options_from_mapping(_Toy, {"either": 1e-3, "n": 3.0}, where="[backend.toy]").either == 1e-3


@pytest.mark.parametrize("key, value, expected", [
    ("n", "abc", "an integer"),
    ("n", 2.5, "an integer"),
    ("n", True, "an integer"),
    ("x", "abc", "a number"),
    ("flag", 3, "true or false"),
    ("pair", [1.0], "a list of 2 values"),
    ("either", [1, 2], "a number or a list of 4 values"),
    ("table", "foo", "a list of [name, target, weight]"),
])
def test_wrong_values_name_the_table_key_expected_and_given(key, value, expected):
    with pytest.raises(ConfigError) as err:
        options_from_mapping(_Toy, {key: value}, where="[backend.toy]")
    msg = str(err.value)
    assert msg.startswith(f"[backend.toy] {key}: expected ")
    assert expected in msg and f"got {value!r}" in msg and f"-B {key}=" in msg


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['m'\] in \[backend.toy\]; valid options"):
        options_from_mapping(_Toy, {"m": 1}, where="[backend.toy]")
    assert coerce_option(_Toy, "x", "1.5", where="[backend.toy]") == 1.5


def test_base_estimate_noise_is_the_continuum_scatter():
    # white noise of known sigma on a flat continuum with a line in the middle
    rng = np.random.default_rng(3)
    wl = 6300.0 + 0.02 * np.arange(120)
    line = 1.0 - 0.6 * np.exp(-0.5 * ((wl - wl[60]) / 0.08) ** 2)
    sig = np.array([1e-3, 2e-3, 2e-3, 1e-3])
    stokes = np.zeros((400, 4, wl.size))
    stokes[:, 0] = line
    stokes += rng.normal(0.0, 1.0, stokes.shape) * sig[None, :, None]
    est = Backend().estimate_noise(stokes, wl)
    # 400 x ~80 second differences: MAD scatter ~1.5 %; 5 % tolerance
    np.testing.assert_allclose(est, sig, rtol=0.05)
    assert est.shape == (4,)


def test_valid_pixels_need_finite_values_and_some_positive_stokes_i():
    from stokesflow.backends import valid_pixels

    s = np.ones((5, 4, 3))
    s[1] = 0.0                  # padding: no light
    s[2, 0] = -0.1              # I negative everywhere
    s[3, 2, 1] = np.nan         # NaN in U
    s[4, 0, :2] = 0.0           # I positive at one point only: an observation
    np.testing.assert_array_equal(valid_pixels(s), [True, False, False, False, True])
    image = s.reshape(1, 5, 4, 3)  # an image (ny, nx, 4, nw) gives (ny, nx)
    np.testing.assert_array_equal(valid_pixels(image), [[True, False, False, False, True]])
