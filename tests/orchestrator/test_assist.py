"""``stokesflow assist`` end to end on a tiny cube (serial executor), and resumed after interruptions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("torch")

from _orchestrator_helpers import assisted_phase_interrupted_and_resumed, write_hmi_observation  # noqa: E402
from _processes import kill_during_training  # noqa: E402

from stokesflow.orchestrator.assist import AssistSettings, run_assist  # noqa: E402
from stokesflow.orchestrator.errors import OrchestratorError  # noqa: E402
from stokesflow.orchestrator.store import read_result  # noqa: E402

FILES = ("subset_obs.h5", "subset.h5", "model.pt", "guess.h5", "assisted.h5", "summary.json")


def _settings(**kw):
    base = dict(subset=0.3, clusters=4, epochs=3, threads=1, cluster={"kind": "serial"}, progress="none",
                chunk_pixels=64, report=False)
    base.update(kw)
    return AssistSettings(**base)


@pytest.fixture
def obs(tmp_path):
    return write_hmi_observation(tmp_path / "obs.h5", 16, 16, seed=7, nan_pixels=(5,))


def test_end_to_end_serial(obs, tmp_path):
    d = tmp_path / "loop"
    data = run_assist(obs, d, _settings(baseline=True, report=True))
    for f in FILES + ("baseline.h5", "report/loop.html", "report/iterations.png", "report/loss.png"):
        assert (d / f).exists(), f
    assert (d / "report" / "index.html").exists()  # the results report of assisted.h5 against baseline.h5
    assert data["ran"] == ["subset", "reference", "train", "predict", "assisted", "baseline"]
    assert set(data["phases"]) == {"subset", "reference", "train", "predict", "assisted", "baseline"}
    assert set(data["lm_iterations"]) == {"reference", "assisted", "baseline"}
    for k in ("assisted", "baseline"):
        assert data["lm_iterations"][k] == int(read_result(d / f"{k}.h5").n_iter.sum())
    with h5py.File(d / "subset_obs.h5") as h5:
        index = h5["assist/index"][:]
        labels = h5["assist/labels"][:].reshape(-1)
    assert index.size == h5py.File(d / "subset.h5")["status"].shape[1]
    assert set(labels[index]) == set(labels[labels >= 0])  # every cluster is in the subset
    assert 5 not in index  # the NaN pixel is never chosen
    a = read_result(d / "assisted.h5")
    assert a.attrs["init"] == "previous" and a.status.reshape(-1)[5] == 3 and a.attrs["complete"]
    assert json.loads((d / "summary.json").read_text())["speedup"]["iterations"] > 0
    assert "B" in data["agreement_with_baseline"]["assisted"] and "truth" in data
    assert set(data["disagreement_with_baseline"]) == {"B", "inclination", "azimuth", "vlos"}
    # the loop's network learns the field it predicts: no polarity mirror images
    from stokesflow.nn_init.model_file import load_model

    assert load_model(d / "model.pt").metadata["settings"]["mirror"] is False
    # nothing left to do: a rerun skips every phase
    again = run_assist(obs, d, _settings(baseline=True))
    assert again["ran"] == []
    with pytest.raises(OrchestratorError, match=r"other arguments \(differences: \['subset'\]\)"):
        run_assist(obs, d, _settings(subset=0.5))


def test_a_lost_file_reruns_its_phase_and_those_after_it(obs, tmp_path, caplog):
    d = tmp_path / "loop"
    run_assist(obs, d, _settings())
    before = {n: read_result(d / n) for n in ("guess.h5", "assisted.h5")}
    (d / "guess.h5").unlink()  # e.g. deleted to save space
    with caplog.at_level("WARNING", logger="stokesflow.assist"):
        data = run_assist(obs, d, _settings())
    assert data["ran"] == ["predict", "assisted"]
    assert any("guess.h5 of the finished phase predict is missing: running predict, assisted again" in r.getMessage()
               for r in caplog.records)
    for name, old in before.items():  # the same model (one torch thread): the same files again
        new = read_result(d / name)
        for p in old.params:
            np.testing.assert_array_equal(new.params[p], old.params[p], err_msg=f"{name} {p}")
    (d / "model.pt").unlink()
    data = run_assist(obs, d, _settings())
    assert data["ran"] == ["train", "predict", "assisted"] and (d / "model.pt").exists()
    state = json.loads((d / "summary.json").read_text())
    assert state["done"] == ["subset", "reference", "train", "predict", "assisted"]
    assert set(state["phases"]) == {"subset", "reference", "train", "predict", "assisted"}


def test_interrupted_mid_phase_resumes(obs, tmp_path, monkeypatch):
    assisted_phase_interrupted_and_resumed(obs, tmp_path / "loop", _settings(chunk_pixels=32), 8,  # 16 x 16 field
                                           monkeypatch)


def test_killed_during_training_resumes(obs, tmp_path):
    d = tmp_path / "loop"
    cmd = [sys.executable, "-m", "stokesflow.orchestrator.cli", "assist", "-i", str(obs), "-o", str(d),
           "--subset", "0.5", "--clusters", "4", "--epochs", "400", "--threads", "1", "--cluster", "serial",
           "--progress", "none", "--chunk-pixels", "64", "--no-report", "-q"]
    kill_during_training(cmd, d / "model.pt.ckpt", tmp_path / "output.txt")
    state = json.loads((d / "summary.json").read_text())
    assert state["done"] == ["subset", "reference"] and not (d / "model.pt").exists()
    fast = cmd[:cmd.index("--epochs") + 1] + ["2"] + cmd[cmd.index("--epochs") + 2:]
    out = subprocess.run(fast, capture_output=True, text=True, timeout=300)
    # --epochs is part of the run's identity: another value is refused, the folder is left as it was
    assert out.returncode == 2 and "other arguments" in out.stderr
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    state = json.loads((d / "summary.json").read_text())
    assert state["ran"] == ["train", "predict", "assisted"]
    assert state["training"]["epochs"] >= 1 and Path(d / "model.pt").exists()
    assert not (d / "model.pt.ckpt").exists()


def test_kmeans_look_up_loop(obs, tmp_path):
    d = tmp_path / "loop"
    data = run_assist(obs, d, _settings(model="kmeans"))
    assert (d / "kmeans.h5").exists() and not (d / "model.pt").exists()
    ref = read_result(d / "subset.h5")
    assert ref.synthetic is not None  # the representatives' best-fit profiles are the database
    assert data["training"]["representatives"] == int((ref.status == 0).sum())
    g = read_result(d / "guess.h5")
    ok = g.status == 0
    # every valid pixel got a representative's model; /chi2 is the look-up's quality map
    assert np.isfinite(g.chi2[ok]).all() and np.isfinite(g.params["B"][ok]).all()
    reps = set(np.round(ref.params["B"][ref.status == 0], 2).tolist())
    assert set(np.round(g.params["B"][ok], 2).tolist()) <= reps
    # a subset pixel finds itself (or a profile as close): its look-up chi2 is at the noise level
    with h5py.File(d / "subset_obs.h5") as h5:
        index = h5["assist/index"][:]
    assert np.median(g.chi2.reshape(-1)[index]) < 3.0
    assert read_result(d / "assisted.h5").done.all()


def test_end_to_end_local_on_one_executor(obs, tmp_path, monkeypatch):
    """With a local Dask cluster every phase (reference, training, prediction, inversions) runs on one
    executor, opened once: the workers start once."""
    import stokesflow.clusters as clusters
    import stokesflow.clusters.factory as factory

    opened = []
    real = factory.open_executor

    def counting(spec):
        opened.append(spec.kind)
        return real(spec)

    monkeypatch.setattr(factory, "open_executor", counting)
    monkeypatch.setattr(clusters, "open_executor", counting)
    d = tmp_path / "loop"
    data = run_assist(obs, d, _settings(baseline=True, cluster={"kind": "local", "workers": 2}))
    assert data["ran"] == ["subset", "reference", "train", "predict", "assisted", "baseline"]
    assert opened == ["local"]
    for f in FILES + ("baseline.h5",):
        assert (d / f).exists(), f
    assert read_result(d / "assisted.h5").attrs["complete"]
    assert run_assist(obs, d, _settings(baseline=True, cluster={"kind": "local", "workers": 2}))["ran"] == []
    assert opened == ["local"]  # nothing left to do: no cluster started


def test_assist_reads_the_observation_as_invert_does(obs, tmp_path, capsys):
    """A .npy cube in another axis order, without wavelengths, lines or noise in it, read with invert's
    input flags (--axes, --wavelength, --lines, --instrument, --noise): every phase reads it so (subset,
    predict, the whole-field inversions), and the loop gives what it gives on the same data as HDF5;
    the input flags are part of the loop's arguments (another value is refused), predict takes them too,
    and without them the cube cannot be read."""
    from stokesflow.orchestrator.cli import main
    from stokesflow.orchestrator.io import open_observation

    o = open_observation(obs)
    cube = np.ascontiguousarray(o.read_rows(0, o.ny).transpose(2, 3, 0, 1))  # (stokes, wave, y, x)
    npy = tmp_path / "cube.npy"
    np.save(npy, cube)
    wl = tmp_path / "wl.txt"
    np.savetxt(wl, o.wavelength, fmt="%.6f")
    flags = ["--axes", "stokes,wave,y,x", "--wavelength", str(wl), "--lines", "FeI_6173", "--instrument", "hmi",
             "--noise", "1e-3"]
    common = ["--subset", "0.3", "--clusters", "4", "--epochs", "3", "--threads", "1", "--cluster", "serial",
              "--chunk-pixels", "64", "--progress", "none", "--no-report", "--baseline", "-q"]
    assert main(["assist", "-i", str(obs), "-o", str(tmp_path / "h5"), *common]) == 0
    # what the command prints: the files, then the summary's figures in lines for a person
    printed = capsys.readouterr().out.splitlines()
    summary = json.loads((tmp_path / "h5" / "summary.json").read_text())
    assert printed[0].startswith(f"wrote {tmp_path / 'h5'}: assisted.h5, baseline.h5, guess.h5, model.pt")
    sp = summary["speedup"]
    assert (f"speed-up: iterations {sp['iterations']:.2f}x, wall (assisted vs baseline) {sp['wall_assisted']:.2f}x, "
            f"wall (whole loop vs baseline) {sp['wall_loop']:.2f}x") in printed
    assert main(["assist", "-i", str(npy), "-o", str(tmp_path / "npy"), *common, *flags]) == 0
    for name in ("guess", "assisted", "baseline"):
        a, b = read_result(tmp_path / "h5" / f"{name}.h5"), read_result(tmp_path / "npy" / f"{name}.h5")
        for p in ("B", "inclination", "vlos"):
            np.testing.assert_allclose(b.params[p], a.params[p], rtol=1e-6, atol=1e-9, equal_nan=True,
                                       err_msg=f"{name} {p}")
    data = json.loads((tmp_path / "npy" / "summary.json").read_text())
    assert data["arguments"]["input_options"]["axes"] == "stokes,wave,y,x"
    # other input options are other arguments
    assert main(["assist", "-i", str(npy), "-o", str(tmp_path / "npy"), *common, *flags[:-2], "--noise", "2e-3"]) == 2
    # predict reads the cube the same way
    assert main(["predict", "-i", str(npy), "-m", str(tmp_path / "npy" / "model.pt"), "-o",
                 str(tmp_path / "g.h5"), "-q", *flags]) == 0
    np.testing.assert_allclose(read_result(tmp_path / "g.h5").params["B"],
                               read_result(tmp_path / "npy" / "guess.h5").params["B"], rtol=1e-6, equal_nan=True)
    # and so does train (with the loop's result files of the subset: here the whole-field baseline)
    assert main(["train", "-i", str(npy), "-r", str(tmp_path / "npy" / "baseline.h5"), "-o", str(tmp_path / "m.pt"),
                 "--epochs", "1", "--threads", "1", "-q", *flags]) == 0
    # without the flags the .npy cube is not readable as an HMI observation: a clear error, no loop folder
    assert main(["assist", "-i", str(npy), "-o", str(tmp_path / "bare"), *common]) == 2
    assert not (tmp_path / "bare" / "summary.json").exists()


def test_the_summary_reads_a_result_map_by_map(obs, tmp_path):
    """The summary's view of a result file gives read_result's maps, one read per access, none kept
    (an HMI full disk: 64 MB a map); chi2, status and n_iter are read once."""
    from stokesflow.orchestrator.assist import _SummaryMaps

    d = tmp_path / "loop"
    run_assist(obs, d, _settings())
    ref = read_result(d / "assisted.h5")
    view = _SummaryMaps(d / "assisted.h5")
    assert list(view.params) == list(ref.params) and len(view.sigma) == len(ref.sigma)
    for name in ref.params:
        np.testing.assert_array_equal(view.params[name], ref.params[name])
        np.testing.assert_array_equal(view.sigma[name], ref.sigma[name])
        assert view.params[name] is not view.params[name]  # read again, not kept
    for name in ("chi2", "status", "n_iter"):
        np.testing.assert_array_equal(getattr(view, name), getattr(ref, name))
        assert getattr(view, name) is getattr(view, name)
    with pytest.raises(KeyError):
        view.params["nosuch"]
    # the truth is read map by map too (Observation.read_truth), with the figures of whole maps in memory
    from stokesflow.orchestrator.assist_metrics import truth_metrics
    from stokesflow.orchestrator.io import open_observation

    truth = open_observation(obs).read_truth()
    assert not isinstance(truth, dict) and truth["B"] is not truth["B"]
    assert truth_metrics(view, truth) == truth_metrics(ref, {k: np.array(v) for k, v in truth.items()})


def test_training_budget_grows_with_the_field_and_train_options_reach_the_model(obs, tmp_path):
    from stokesflow.nn_init.model_file import load_model
    from stokesflow.orchestrator.assist import LARGE_FIELD_PIXELS, LARGE_FIELD_SAMPLES, loop_training_settings
    from stokesflow.orchestrator.cli import main

    s = _settings()
    small, large = loop_training_settings(s, LARGE_FIELD_PIXELS - 1), loop_training_settings(s, LARGE_FIELD_PIXELS)
    assert "max_samples" not in small and large["max_samples"] == LARGE_FIELD_SAMPLES
    assert small["mirror"] is False and small["epochs"] == s.epochs
    assert "max_samples" not in loop_training_settings(_settings(model="unet"), LARGE_FIELD_PIXELS)
    # --train-option: over the loop's own settings, into the model file, part of the loop's arguments
    d = tmp_path / "loop"
    rc = main(["assist", "-i", str(obs), "-o", str(d), "--subset", "0.3", "--clusters", "4", "--epochs", "3",
               "--threads", "1", "--cluster", "serial", "--progress", "none", "--chunk-pixels", "64", "--no-report",
               "--train-option", "max_samples=512", "--train-option", "batch=32", "-q"])
    assert rc == 0
    settings = load_model(d / "model.pt").metadata["settings"]
    assert (settings["max_samples"], settings["batch"], settings["mirror"]) == (512, 32, False)
    assert json.loads((d / "summary.json").read_text())["arguments"]["train_options"] == {"max_samples": 512,
                                                                                         "batch": 32}
    with pytest.raises(OrchestratorError, match=r"other arguments \(differences: \['train_options'\]\)"):
        run_assist(obs, d, _settings(subset=0.3, train_options={"max_samples": 1024}))
    # an unknown setting is refused before anything runs
    with pytest.raises(OrchestratorError, match=r"--train-option: unknown training setting\(s\) \['nosuch'\]"):
        _settings(train_options={"nosuch": 1})
    rc = main(["assist", "-i", str(obs), "-o", str(tmp_path / "other"), "--train-option", "nosuch=1",
               "--cluster", "serial", "-q"])
    assert rc == 2 and not (tmp_path / "other").exists()
