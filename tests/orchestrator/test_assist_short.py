"""The loop's strategies of ``stokesflow assist``: default options of the reference, short (phase
``assisted``) and baseline inversions per backend."""

from __future__ import annotations

import dataclasses

import pytest

import stokesflow.orchestrator.assist as assist
from stokesflow.backends.me.backend import MEOptions
from stokesflow.orchestrator.assist import (
    SHORT_SIGMA_TOL,
    AssistSettings,
    default_baseline_options,
    default_reference_options,
    default_short_options,
)


def test_short_strategy_takes_sigma_tol_exactly_when_the_me_backend_has_it() -> None:
    has = "sigma_tol" in {f.name for f in dataclasses.fields(MEOptions)}
    expected = {"n_starts": 1, **({"sigma_tol": SHORT_SIGMA_TOL} if has else {})}
    assert default_short_options("me") == expected
    assert AssistSettings().short_options == expected
    assert AssistSettings().reference_options == {"n_starts": 4, "max_iter": 100}
    assert AssistSettings().baseline_options == {}


def test_sir_loop_compares_the_one_cycle_strategy_with_the_reference_strategy() -> None:
    """SIR ``assisted_me`` (one cycle, angles, vmic and vmac free) from the guesses against ``reference`` (three
    cycles) from the built-in guess model; the subset is inverted with ``reference``."""
    for backend in ("sir", "desire"):
        s = AssistSettings(backend=backend)
        assert s.reference_options == {"strategy": "reference"} == default_reference_options(backend)
        assert s.short_options == {"strategy": "assisted_me"} == default_short_options(backend)
        assert s.baseline_options == {"strategy": "reference"} == default_baseline_options(backend)
        # the short phase starts from an ME inversion of the field (measured: 2.25-2.9x at chi2 within 5 %)
        assert s.me_seed == "alone"
    assert AssistSettings(backend="me").me_seed == "off"
    # a backend without a table entry: its own defaults in every phase
    assert AssistSettings(backend="lightweaver").short_options == {}
    # the baseline's options are not part of what a resumed run must repeat (as --baseline is not)
    assert "baseline_options" not in AssistSettings(backend="sir").identity()


def test_short_strategy_with_sigma_tol_when_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assist, "_backend_has_option", lambda backend, name: name == "sigma_tol")
    assert default_short_options("me") == {"n_starts": 1, "sigma_tol": SHORT_SIGMA_TOL}
    assert 0 < SHORT_SIGMA_TOL < 1  # a share of one sigma


def test_given_short_options_are_kept_and_enter_the_identity() -> None:
    s = AssistSettings(short_options={"n_starts": 2})
    assert s.short_options == {"n_starts": 2}
    assert s.identity()["short_options"] == {"n_starts": 2}
    assert AssistSettings().identity()["short_options"] == default_short_options("me")
