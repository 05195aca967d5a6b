"""The short strategy of ``stokesflow assist`` (phase ``assisted``): its default options."""

from __future__ import annotations

import dataclasses

import pytest

import stokesflow.orchestrator.assist as assist
from stokesflow.backends.me.backend import MEOptions
from stokesflow.orchestrator.assist import SHORT_SIGMA_TOL, AssistSettings, default_short_options


def test_short_strategy_takes_sigma_tol_exactly_when_the_me_backend_has_it() -> None:
    has = "sigma_tol" in {f.name for f in dataclasses.fields(MEOptions)}
    expected = {"n_starts": 1, **({"sigma_tol": SHORT_SIGMA_TOL} if has else {})}
    assert default_short_options("me") == expected
    assert AssistSettings().short_options == expected
    # another backend gets one start only (its options are not known here)
    assert default_short_options("sir") == {"n_starts": 1}
    assert AssistSettings(backend="sir").short_options == {"n_starts": 1}


def test_short_strategy_with_sigma_tol_when_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assist, "_backend_has_option", lambda backend, name: name == "sigma_tol")
    assert default_short_options("me") == {"n_starts": 1, "sigma_tol": SHORT_SIGMA_TOL}
    assert 0 < SHORT_SIGMA_TOL < 1  # a share of one sigma


def test_given_short_options_are_kept_and_enter_the_identity() -> None:
    s = AssistSettings(short_options={"n_starts": 2})
    assert s.short_options == {"n_starts": 2}
    assert s.identity()["short_options"] == {"n_starts": 2}
    assert AssistSettings().identity()["short_options"] == default_short_options("me")
