"""Init providers: default, constant, and the registry."""

from __future__ import annotations

import numpy as np
import pytest

from stokesflow.backends.base import ParameterSpec
from stokesflow.nn_init.providers import ConstantInit, DefaultInit, InitError, get_provider, list_providers


class _SpecsOnly:
    """Stands in for a backend: only ``name`` and ``parameters`` are read by providers."""

    name = "specs-double"
    parameters = (
        ParameterSpec("B", "G", 0.0, 5000.0, 1000.0),
        ParameterSpec("inclination", "deg", 0.0, 180.0, 90.0),
        ParameterSpec("azimuth", "deg", 0.0, 180.0, 90.0, circular=True),
    )


def test_default_returns_none():
    p = get_provider("default").bind(_SpecsOnly())
    assert isinstance(p, DefaultInit)
    assert p.initial_guess(np.zeros((3, 4, 6)), np.arange(6.0), start=0, stop=3) is None
    with pytest.raises(InitError, match="takes no options"):
        get_provider("default", {"B": 1.0})


def test_constant_fills_midpoints():
    p = get_provider("constant", {"B": 500}).bind(_SpecsOnly())
    assert isinstance(p, ConstantInit)
    guess = p.initial_guess(np.zeros((4, 4, 6)), np.arange(6.0), start=10, stop=14)
    # midpoints of the bounds for the parameters not given: (0+180)/2 = 90
    np.testing.assert_array_equal(guess, np.tile([500.0, 90.0, 90.0], (4, 1)))
    guess[0, 0] = -1  # a copy: the next chunk is not affected
    assert p.initial_guess(np.zeros((1, 4, 6)), np.arange(6.0), start=0, stop=1)[0, 0] == 500.0
    assert p.describe() == {"name": "constant", "options": {"B": 500}, "vector": [500.0, 90.0, 90.0]}


def test_constant_errors():
    with pytest.raises(InitError, match=r"unknown parameter\(s\) \['b'\].*\['B', 'inclination', 'azimuth'\]"):
        get_provider("constant", {"b": 1.0}).bind(_SpecsOnly())
    with pytest.raises(InitError, match="outside the bounds"):
        get_provider("constant", {"B": 9000.0}).bind(_SpecsOnly())
    with pytest.raises(InitError, match="finite number"):
        get_provider("constant", {"B": "strong"})
    with pytest.raises(InitError, match="before bind"):
        get_provider("constant").initial_guess(np.zeros((1, 4, 6)), np.arange(6.0), start=0, stop=1)


def test_registry():
    listing = list_providers()
    assert listing["default"] == (True, "") and listing["constant"] == (True, "")
    assert listing["previous"] == (True, "") and listing["kmeans"] == (True, "")
    assert listing["unet"][0] is listing["cnn"][0]  # both need torch only
    if listing["unet"][0]:
        with pytest.raises(InitError, match="'unet' needs a trained model: -I model=model.pt"):
            get_provider("unet")
    with pytest.raises(InitError, match="unknown init provider 'nope'"):
        get_provider("nope")
    with pytest.raises(InitError, match="needs the file to start from: -I file=prev.h5"):
        get_provider("previous")
    with pytest.raises(InitError, match="needs a trained model: -I model=model.pt"):
        get_provider("cnn")
    with pytest.raises(InitError, match="needs a database"):
        get_provider("kmeans")
