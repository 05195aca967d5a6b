"""``stokesflow train`` / ``predict`` / ``invert --init cnn|previous`` on a tiny HMI-like cube (serial executor)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("torch")

from _orchestrator_helpers import make_config, write_hmi_observation  # noqa: E402

from stokesflow.nn_init.model_file import ModelMismatchError, load_model  # noqa: E402
from stokesflow.orchestrator.cli import main  # noqa: E402
from stokesflow.orchestrator.predict import predict_observation  # noqa: E402
from stokesflow.orchestrator.run import run_inversion  # noqa: E402
from stokesflow.orchestrator.store import read_result  # noqa: E402
from stokesflow.orchestrator.train import read_training_pairs, train_model  # noqa: E402


@pytest.fixture(scope="module")
def inverted(tmp_path_factory):
    d = tmp_path_factory.mktemp("tp")
    obs = write_hmi_observation(d / "obs.h5", 12, 16, seed=4, nan_pixels=(3,))
    run_inversion(make_config(obs, d / "res.h5"))
    return d, obs, d / "res.h5"


def test_pairs_keep_good_fits_only(inverted):
    d, obs, res = inverted
    r = read_result(res)
    data = read_training_pairs([str(obs)], [str(res)])
    assert data.stokes.shape[0] == int((r.status == 0).sum())  # NaN pixel (status 3) and capped fits left out
    assert data.metadata["lines"] == ["FeI_6173"]
    prov = data.metadata["provenance"]["pairs"][0]
    assert prov["result"] == str(res.resolve()) and len(prov["config_digest"]) == 16
    with pytest.raises(Exception, match="in pairs"):
        read_training_pairs([str(obs)], [])


def test_train_predict_and_assisted_invert(inverted):
    d, obs, res = inverted
    summary = train_model([str(obs)], [str(res)], d / "model.pt", settings={"epochs": 4}, threads=1)
    assert summary["epochs"] == 4 and summary["device"] == "cpu"
    meta = load_model(d / "model.pt").metadata
    assert meta["provenance"]["pairs"][0]["input"] == str(obs.resolve())
    assert meta["units"][0] == "G" and len(meta["history"]) == 4 and meta["instrument"] == "hmi"
    out = predict_observation(obs, d / "model.pt", d / "guess.h5", threads=1)
    assert out["pixels"] == 12 * 16
    g = read_result(d / "guess.h5")
    assert g.status.reshape(-1)[3] == 3 and np.isnan(g.params["B"].reshape(-1)[3])
    assert np.isfinite(g.params["B"]).sum() == 12 * 16 - 1 and (g.n_iter == 0).all()
    # the guesses are a start: LM from them ends at the same minima as the classical start (same data)
    for init, opts in (("cnn", {"model": str(d / "model.pt"), "threads": 1}), ("previous", {"file": str(d / "guess.h5")})):
        run_inversion(make_config(obs, d / f"{init}.h5", run={"init": init, "progress": "none"},
                                  init={init: opts}, backend={"me": {"n_starts": 1}}))
        a = read_result(d / f"{init}.h5")
        assert a.attrs["init"] == init and a.status.reshape(-1)[3] == 3
        assert np.nanmedian(a.chi2) < 2.0  # noise-level fits (reduced chi2 ~ 1 with the stated noise)
    # --init cnn and --init previous of the predicted cube start from the same guesses (the cube holds
    # them in float32: starts differ by ~1e-7 relative, the converged fits by less than 1e-4)
    np.testing.assert_allclose(read_result(d / "cnn.h5").params["B"], read_result(d / "previous.h5").params["B"],
                               rtol=1e-4)


def test_model_on_other_data_is_refused(inverted, tmp_path, capsys):
    d, obs, res = inverted
    if not (d / "model.pt").exists():
        train_model([str(obs)], [str(res)], d / "model.pt", settings={"epochs": 1}, threads=1)
    other = write_hmi_observation(tmp_path / "other.h5", 4, 4, lines="FeI_6173,FeI_6301")
    with pytest.raises(ModelMismatchError, match=r"lines \['FeI_6173', 'FeI_6301'\] but the model was trained on"):
        predict_observation(other, d / "model.pt", tmp_path / "g.h5")
    rc = main(["predict", "-i", str(other), "-m", str(d / "model.pt"), "-o", str(tmp_path / "g.h5"), "-q"])
    assert rc == 2
    capsys.readouterr()
    rc = main(["invert", "--input", str(other), "--out", str(tmp_path / "x.h5"), "--cluster", "serial",
               "--init", "cnn", "-I", f"model={d / 'model.pt'}", "--progress", "none", "-q"])
    assert rc == 2 and not (tmp_path / "x.h5").exists()
    # the error points at the model flag, not at --cluster (its key, "kind", is a word of the message)
    err = capsys.readouterr().err
    assert f"(given on the command line as -I model={d / 'model.pt'})" in err and "--cluster" not in err


def test_train_says_when_a_result_is_incomplete_or_not_a_result(inverted, tmp_path, caplog, capsys):
    import shutil

    d, obs, res = inverted
    part = tmp_path / "part.h5"
    shutil.copy(res, part)
    with h5py.File(part, "r+") as h5:  # as a run stopped before its last chunk leaves it
        h5["chunks/done"][-1] = False
        h5.attrs["complete"] = False
        n = int(h5["chunks/done"].shape[0])
    with caplog.at_level("WARNING", logger="stokesflow.train"):
        train_model([str(obs)], [str(part)], tmp_path / "m.pt", settings={"epochs": 1}, threads=1)
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said == [f"{part} is not complete ({n - 1} of {n} chunks done): the model learns from its finished "
                    "pixels only; finish it first (`stokesflow invert ... --resume`) to train on the whole field"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="stokesflow.train"):
        train_model([str(obs)], [str(res)], tmp_path / "n.pt", settings={"epochs": 1}, threads=1)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    # an observation given as the result: named as such, before any training
    rc = main(["train", "-i", str(obs), "-r", str(obs), "-o", str(tmp_path / "o.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and "is not a stokesflow result file" in err and not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("argv, said", [
    (["train", "--val-fraction", "1.5"], "--val-fraction: expected a share in (0, 0.9), got 1.5"),
    (["train", "--epochs", "0"], "--epochs: expected a positive integer, got 0"),
    (["train", "--lr=-1e-3"], "--lr: expected a positive number, got -0.001"),
    (["assist", "--clusters", "0"], "--clusters: expected a positive integer, got 0"),
    (["assist", "--epochs", "x"], "--epochs: expected a positive integer, got 'x'"),
    (["predict", "--chunk-pixels", "-5"], "--chunk-pixels: expected an integer >= 0"),
])
def test_network_commands_name_the_flag_out_of_range(argv, said, capsys):
    files = {"train": ["-i", "o.h5", "-r", "r.h5", "-o", "m.pt"], "assist": ["-i", "o.h5", "-o", "D"],
             "predict": ["-i", "o.h5", "-m", "m.pt", "-o", "g.h5"]}
    assert main(argv[:1] + files[argv[0]] + argv[1:]) == 2
    assert f"argument {said}" in capsys.readouterr().err


def test_a_swallowed_ctrl_c_stops_the_training_and_says_what_is_kept(inverted, tmp_path, monkeypatch, capsys):
    """A Ctrl-C raised inside a finalizer is printed and dropped by Python; the command line's handler
    records it first (``request_stop``), and the training stops after its epoch's checkpoint."""
    import stokesflow.orchestrator.train as train
    from stokesflow.orchestrator.run import request_stop

    d, obs, res = inverted
    real = train.read_training_pairs

    def swallowed(*a, **k):  # the handler ran, its exception was lost (as in a finalizer)
        request_stop(KeyboardInterrupt())
        return real(*a, **k)

    monkeypatch.setattr(train, "read_training_pairs", swallowed)
    out = tmp_path / "m.pt"
    argv = ["train", "-i", str(obs), "-r", str(res), "-o", str(out), "--epochs", "3", "--threads", "1"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"interrupted: the finished epochs are in {out}.ckpt: run the same command again" in err
    assert not out.exists() and (tmp_path / "m.pt.ckpt").exists()
    monkeypatch.setattr(train, "read_training_pairs", real)
    assert main(argv) == 0
    assert out.exists() and not (tmp_path / "m.pt.ckpt").exists()
    assert len(load_model(out).metadata["history"]) == 3  # epoch 1 from the checkpoint, then 2 and 3


def test_a_swallowed_ctrl_c_stops_the_prediction_at_a_chunk_and_resume_finishes_it(inverted, tmp_path, monkeypatch,
                                                                                     capsys):
    import stokesflow.orchestrator.predict as predict
    from stokesflow.orchestrator.run import request_stop

    d, obs, res = inverted
    if not (d / "model.pt").exists():
        train_model([str(obs)], [str(res)], d / "model.pt", settings={"epochs": 1}, threads=1)
    real = predict.predict_chunk

    def swallowed(*a, **k):
        request_stop(KeyboardInterrupt())
        return real(*a, **k)

    monkeypatch.setattr(predict, "predict_chunk", swallowed)
    def argv(out):
        return ["predict", "-i", str(obs), "-m", str(d / "model.pt"), "-o", str(out), "--chunk-pixels", "64",
                "--threads", "1"]

    assert main(argv(tmp_path / "g.h5")) == 130  # 12 x 16 pixels: 3 chunks
    assert f"interrupted: 1 of 3 chunks are on disk in {tmp_path / 'g.h5'}; finish the run with --resume" in \
        capsys.readouterr().err
    monkeypatch.setattr(predict, "predict_chunk", real)
    assert main(argv(tmp_path / "g.h5") + ["--resume"]) == 0
    assert main(argv(tmp_path / "straight.h5")) == 0
    a, b = read_result(tmp_path / "g.h5"), read_result(tmp_path / "straight.h5")
    assert a.attrs["complete"] and a.done.all()
    for name in b.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])


def test_predict_and_train_refuse_to_overwrite_their_inputs(inverted, tmp_path, capsys):
    import shutil

    d, obs, res = inverted
    if not (d / "model.pt").exists():
        train_model([str(obs)], [str(res)], d / "model.pt", settings={"epochs": 1}, threads=1)
    o, r, m = (shutil.copy(p, tmp_path / p.name) for p in (obs, res, d / "model.pt"))
    before = {p: p.read_bytes() for p in map(Path, (o, r, m))}
    cases = [["predict", "-i", str(o), "-m", str(m), "-o", str(o), "--overwrite"],
             ["predict", "-i", str(o), "-m", str(m), "-o", str(m), "--overwrite"],
             ["train", "-i", str(o), "-r", str(r), "-o", str(r), "--overwrite"],
             ["train", "-i", str(o), "-r", str(r), "-o", str(o), "--overwrite"]]
    for argv in cases:
        assert main(argv) == 2
        assert "writing it would destroy the input" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before


def test_predict_refuses_a_field_without_one_valid_pixel(inverted, tmp_path, capsys):
    d, obs, res = inverted
    if not (d / "model.pt").exists():
        train_model([str(obs)], [str(res)], d / "model.pt", settings={"epochs": 1}, threads=1)
    nan = write_hmi_observation(tmp_path / "nan.h5", 3, 4, nan_pixels=tuple(range(12)))
    rc = main(["predict", "-i", str(nan), "-m", str(d / "model.pt"), "-o", str(tmp_path / "g.h5")])
    err = capsys.readouterr().err
    assert rc == 2 and "no valid pixel" in err and "nothing to predict" in err
    assert not (tmp_path / "g.h5").exists()


def test_cli_train_then_predict(inverted, tmp_path, capsys):
    d, obs, res = inverted
    rc = main(["train", "-i", str(obs), "-r", str(res), "-o", str(tmp_path / "m.pt"), "--epochs", "2",
               "--threads", "1", "-q"])
    assert rc == 0 and (tmp_path / "m.pt").exists() and not (tmp_path / "m.pt.ckpt").exists()
    assert main(["train", "-i", str(obs), "-r", str(res), "-o", str(tmp_path / "m.pt"), "-q"]) == 2  # exists
    # the polarity mirror images are on by default; --no-mirror records its choice in the model file
    from stokesflow.nn_init.model_file import load_model

    assert load_model(tmp_path / "m.pt").metadata["settings"]["mirror"] is True
    rc = main(["train", "-i", str(obs), "-r", str(res), "-o", str(tmp_path / "n.pt"), "--epochs", "1",
               "--threads", "1", "--no-mirror", "-q"])
    assert rc == 0 and load_model(tmp_path / "n.pt").metadata["settings"]["mirror"] is False
    # log targets: "auto" by default (the HMI grid is coarse), --log-targets no records linear targets
    assert load_model(tmp_path / "m.pt").metadata["settings"]["log_targets"] == "auto"
    rc = main(["train", "-i", str(obs), "-r", str(res), "-o", str(tmp_path / "l.pt"), "--epochs", "1",
               "--threads", "1", "--log-targets", "no", "-q"])
    lin = load_model(tmp_path / "l.pt").metadata
    assert rc == 0 and lin["settings"]["log_targets"] is False and set(lin["targets"]["log_offset"]) == {None}
    assert main(["train", "-i", str(obs), "-r", str(res), "-o", str(tmp_path / "u.pt"), "--model", "unet",
                 "--log-targets", "yes", "-q"]) == 2  # a cnn setting
    # the inputs' asinh stretch: on by default, --no-input-stretch records linear inputs
    assert min(load_model(tmp_path / "m.pt").metadata["inputs"]["stretch"][1:]) > 0
    rc = main(["train", "-i", str(obs), "-r", str(res), "-o", str(tmp_path / "s.pt"), "--epochs", "1",
               "--threads", "1", "--no-input-stretch", "-q"])
    flat = load_model(tmp_path / "s.pt").metadata
    assert rc == 0 and flat["settings"]["input_stretch"] is False and set(flat["inputs"]["stretch"]) == {0.0}
    rc = main(["predict", "-i", str(obs), "-m", str(tmp_path / "m.pt"), "-o", str(tmp_path / "g.h5"), "-q"])
    assert rc == 0
    with h5py.File(tmp_path / "g.h5") as h5:
        assert h5["params/azimuth"].shape == (12, 16) and h5.attrs["complete"]
    # --resume of a complete file leaves it as it was (as invert does), and says so
    before = (tmp_path / "g.h5").read_bytes()
    capsys.readouterr()
    rc = main(["predict", "-i", str(obs), "-m", str(tmp_path / "m.pt"), "-o", str(tmp_path / "g.h5"), "--resume"])
    assert rc == 0 and "already complete" in capsys.readouterr().out
    assert (tmp_path / "g.h5").read_bytes() == before


def test_training_threads_are_resolved_on_the_worker(inverted, tmp_path, monkeypatch):
    """threads=0: the training task takes every core its process may run on (it runs alone), counted
    where it runs, not the driver's share of its own machine; a number given is kept."""
    import os

    import stokesflow.orchestrator.train as train

    assert train.task_threads(3) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4}, raising=False)
    assert train.task_threads(0) == train.task_threads(None) == 5
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # a driver's count must not matter
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    _, obs, res = inverted
    summary = train_model([str(obs)], [str(res)], tmp_path / "model.pt", settings={"epochs": 1},
                          cluster={"kind": "serial"})
    assert summary["threads"] == 1
