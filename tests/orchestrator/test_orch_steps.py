"""The steps of run_inversion on their own (validate, open the store, drive, summarise), the
init provider's view of a chunk (index alignment with NaN pixels), the warm-up on the trial
pixel, and poor-fit pixels (status 4) in the summary."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _orchestrator_doubles import EchoInitDouble, PoorFitDouble, PositionInit, SetupCountingDouble  # noqa: E402
from _orchestrator_helpers import make_config, write_hmi_observation  # noqa: E402

import stokesflow.clusters as clusters  # noqa: E402
from stokesflow.backends import STATUS_POOR_FIT, get_backend  # noqa: E402
from stokesflow.nn_init import providers  # noqa: E402
from stokesflow.orchestrator.progress import Progress  # noqa: E402
from stokesflow.orchestrator.run import (  # noqa: E402
    drive_chunks,
    open_store,
    run_inversion,
    summarise,
    validate_run,
)
from stokesflow.orchestrator.store import read_result  # noqa: E402

NY, NX, K = 8, 12, 10
NAN_PIXELS = (5, 40, 41)


@pytest.fixture(scope="module")
def obs(tmp_path_factory) -> Path:
    return write_hmi_observation(tmp_path_factory.mktemp("obs") / "obs.h5", NY, NX, nan_pixels=NAN_PIXELS)


@pytest.fixture
def no_cluster(monkeypatch):
    def refuse(spec):
        raise AssertionError("the cluster was started")

    monkeypatch.setattr(clusters, "open_executor", refuse)


def test_validate_alone_settles_everything_and_writes_nothing(obs, tmp_path, no_cluster):
    out = tmp_path / "r.h5"
    prep = validate_run(make_config(obs, out, run={"chunk_pixels": K}))
    assert not out.exists() and not list(tmp_path.iterdir())  # not even the write test's file is left
    assert (prep.plan.n_chunks, prep.plan.chunk_pixels) == (10, K) and not prep.done.any()
    assert not prep.resume and not prep.already_complete
    assert prep.noise.source == "observation" and prep.noise.sigma == (1e-3,) * 4
    stokes, wavelength = prep.trial
    assert stokes.shape == (1, 4, 6) and np.isfinite(stokes).all() and wavelength.shape == (6,)
    assert prep.fingerprint["chunk_pixels"] == K and prep.fingerprint["noise"] == [1e-3] * 4
    assert prep.backend.options.noise is not None  # built for the observation's noise
    ctx = prep.context()
    assert ctx.backend is prep.backend and ctx.trial is prep.trial and ctx.backend_token == prep.token


def test_open_store_then_drive_alone(obs, tmp_path, no_cluster):
    from stokesflow.clusters.serial import SerialExecutor

    out = tmp_path / "r.h5"
    prep = validate_run(make_config(obs, out, run={"chunk_pixels": K}))
    with open_store(prep) as store:
        assert out.exists() and store.pending() == list(prep.plan)
        seconds: dict[str, float] = {}
        with SerialExecutor() as ex:
            half = store.pending()[:5]
            drive_chunks(ex, prep.context(), half, 2, store, Progress(NY * NX, mode="none"), seconds)
        assert store.done.tolist() == [True] * 5 + [False] * 5 and seconds["total"] > 0
    r = read_result(out)
    assert (r.status.ravel()[:50] != 255).all() and (r.status.ravel()[50:] == 255).all()
    assert r.attrs["noise_source"] == "observation" and list(r.attrs["noise"]) == [1e-3] * 4


def test_summarise_alone_counts_every_status_including_poor_fit(obs, tmp_path, no_cluster, caplog):
    prep = validate_run(make_config(obs, tmp_path / "r.h5", run={"chunk_pixels": K}))
    counts = {0: 50, 1: 3, 3: 3, STATUS_POOR_FIT: 40}
    with caplog.at_level(logging.WARNING, logger="stokesflow"):
        s = summarise(prep, counts=counts, done=np.ones(10, bool), computed=10, failed={},
                      times={"invert": 2.0}, workers=1)
    assert s.pixels_by_status == {"ok": 50, "max-iterations": 3, "failed": 0, "skipped (bad input)": 3,
                                  "poor fit": 40}
    assert "pixels: ok 50, max-iterations 3, failed 0, skipped (bad input) 3, poor fit 40" in s.report()
    assert s.pixels_per_s == 96 / 2.0 and s.complete
    assert "40 of 96 pixels (41.7 %) ended with a poor fit" in caplog.text
    partial = summarise(prep, counts={0: 46, 255: 50}, done=np.arange(10) < 5, computed=5,
                        failed={7: "RuntimeError: x"}, times={"invert": 1.0}, workers=1)
    assert partial.partial and partial.pixels_by_status["not yet run"] == 50
    assert "chunk 7 FAILED: RuntimeError: x" in partial.report()


def test_poor_fit_pixels_keep_their_parameters_and_are_counted(obs, tmp_path):
    out = tmp_path / "r.h5"
    summary = run_inversion(make_config(obs, out, run={"chunk_pixels": K}), backend=PoorFitDouble())
    r = read_result(out)
    poor = r.status == STATUS_POOR_FIT
    assert poor.sum() == summary.pixels_by_status["poor fit"] > 30
    assert np.isfinite(r.params["B"][poor]).all()


def test_init_provider_sees_the_whole_chunk_in_pixel_order(obs, tmp_path, monkeypatch):
    # A provider that looks starting points up by flat position, a backend that returns its
    # starting points as the fit, and chunks holding NaN pixels (5; 40 and 41 at the start of
    # chunk 4): each valid pixel must end with its own table row.
    monkeypatch.setitem(providers.PROVIDERS, "position-double", PositionInit)
    names = get_backend("me").parameter_names
    lo = np.array([p.lower for p in get_backend("me").parameters])
    table = lo + 0.5 + np.arange(NY * NX)[:, None] * 1e-3 + np.arange(len(names))[None, :] * 1e-4
    np.save(tmp_path / "table.npy", table)
    out = tmp_path / "r.h5"
    run_inversion(make_config(obs, out, run={"chunk_pixels": K, "init": "position-double"},
                              init={"position-double": {"table": str(tmp_path / "table.npy")}}),
                  backend=EchoInitDouble())
    r = read_result(out)
    valid = np.ones(NY * NX, bool)
    valid[list(NAN_PIXELS)] = False
    for j, name in enumerate(names):
        got = r.params[name].ravel()
        # stored as float32: equal to the float32 rounding of the pixel's own row (neighbours differ by 1e-3)
        np.testing.assert_array_equal(got[valid], table[valid, j].astype(np.float32), err_msg=name)
        assert np.isnan(got[~valid]).all()


def test_setup_gets_the_trial_pixel_and_says_it_compiles(obs, tmp_path, caplog):
    marks = tmp_path / "marks"
    marks.mkdir()
    with caplog.at_level(logging.INFO, logger="stokesflow"):
        run_inversion(make_config(obs, tmp_path / "r.h5", run={"chunk_pixels": K}),
                      backend=SetupCountingDouble({"setup_dir": str(marks)}))
    setups = [f for f in marks.iterdir() if not f.name.startswith("chunk-")]
    assert len(setups) == 1 and setups[0].read_text() == "1x4x6 6"  # one valid pixel, the observation's grid
    messages = [r.getMessage() for r in caplog.records]
    first = next(i for i, m in enumerate(messages) if "compiled on the first run (about 10-20 s" in m)
    assert caplog.records[first].levelno == logging.INFO
    assert any("ready in" in m for m in messages[first:])
