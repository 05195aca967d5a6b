"""``stokesflow train --model unet`` / ``predict`` (parameters and /interval/<name>) / ``invert --init unet|previous``."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

pytest.importorskip("torch")

from _orchestrator_helpers import make_config, write_hmi_observation  # noqa: E402

from stokesflow.nn_init.model_file import load_model  # noqa: E402
from stokesflow.orchestrator.cli import main  # noqa: E402
from stokesflow.orchestrator.predict import predict_observation  # noqa: E402
from stokesflow.orchestrator.run import run_inversion  # noqa: E402
from stokesflow.orchestrator.store import read_result  # noqa: E402


@pytest.fixture(scope="module")
def inverted(tmp_path_factory):
    d = tmp_path_factory.mktemp("unet")
    obs = write_hmi_observation(d / "obs.h5", 20, 24, seed=4, nan_pixels=(3,))
    run_inversion(make_config(obs, d / "res.h5"))
    return d, obs, d / "res.h5"


def test_cli_train_predict_and_invert_from_the_guesses(inverted, tmp_path):
    d, obs, res = inverted
    model = tmp_path / "unet.pt"
    rc = main(["train", "--model", "unet", "-i", str(obs), "-r", str(res), "-o", str(model), "--epochs", "3",
               "--crop", "16", "--val-fraction", "0.3", "--threads", "1", "-q"])
    assert rc == 0
    m = load_model(model)
    assert m.kind == "unet" and len(m.metadata["history"]) == 3
    assert [c["name"] for c in m.metadata["calibration"]] == list(m.parameters)
    assert m.metadata["provenance"]["pairs"][0]["pixels_used"] == int((read_result(res).status == 0).sum())
    # bands of 5 rows (chunk_pixels 120 = 5 x 24) with a halo: the same as one band of the whole field
    predict_observation(obs, model, tmp_path / "g5.h5", chunk_pixels=120, threads=1)
    rc = main(["predict", "-i", str(obs), "-m", str(model), "-o", str(tmp_path / "g.h5"), "-q"])
    assert rc == 0
    g, g5 = read_result(tmp_path / "g.h5"), read_result(tmp_path / "g5.h5")
    np.testing.assert_allclose(g5.params["B"], g.params["B"], rtol=1e-5, atol=1e-3)  # float32 sums over tiles
    assert g.status.reshape(-1)[3] == 3 and np.isnan(g.params["B"].reshape(-1)[3])
    with h5py.File(tmp_path / "g5.h5") as h5:
        iv = h5["interval/B"][()]
        assert iv.shape == (20, 24, 2) and h5["interval/B"].attrs["level"] == 0.9
    b = g5.params["B"]
    ok = np.isfinite(b)
    assert (iv[ok, 0] <= b[ok]).all() and (b[ok] <= iv[ok, 1]).all() and np.isnan(iv.reshape(-1, 2)[3]).all()
    # LM from the guess cube, and from the unet provider directly
    for init, opts in (("previous", {"file": str(tmp_path / "g.h5")}), ("unet", {"model": str(model), "threads": 1})):
        run_inversion(make_config(obs, tmp_path / f"{init}.h5", run={"init": init, "progress": "none"},
                                  init={init: opts}, backend={"me": {"n_starts": 1}}))
        a = read_result(tmp_path / f"{init}.h5")
        assert a.attrs["init"] == init and a.status.reshape(-1)[3] == 3
        assert np.nanmedian(a.chi2) < 2.0  # noise-level fits (reduced chi2 ~ 1 with the stated noise)


def test_crop_is_a_unet_flag(inverted, tmp_path):
    d, obs, res = inverted
    rc = main(["train", "-i", str(obs), "-r", str(res), "-o", str(tmp_path / "m.pt"), "--crop", "16", "-q"])
    assert rc == 2 and not (tmp_path / "m.pt").exists()


def test_assist_unet_end_to_end(tmp_path):
    """assist --model unet: patches that sample every cluster, stacked with NaN separator rows; guess has intervals."""
    from stokesflow.orchestrator.assist import AssistSettings, run_assist

    obs = write_hmi_observation(tmp_path / "obs.h5", 24, 32, seed=7, nan_pixels=(5,))
    d = tmp_path / "loop"
    s = AssistSettings(subset=0.5, clusters=4, epochs=2, threads=1, cluster={"kind": "serial"}, progress="none",
                       chunk_pixels=256, report=True, model="unet")
    data = run_assist(obs, d, s)
    # the loop page shows the calibration curve of the U-Net's intervals on held-out pixels
    curve = data["training"]["calibration_curve"]
    assert curve["levels"][-2:] == [0.9, 0.95] and set(curve["coverage"]) >= {"B", "inclination", "azimuth", "vlos"}
    for cov in curve["coverage"].values():
        assert np.all(np.diff(cov) >= 0) and cov[-2] == pytest.approx(0.9, abs=0.06)  # calibrated at 90 %
    assert (d / "report" / "calibration.png").exists()
    assert data["ran"] == ["subset", "reference", "train", "predict", "assisted"]
    with h5py.File(d / "subset_obs.h5") as h5:
        index = h5["assist/index"][:]
        labels = h5["assist/labels"][:].reshape(-1)
    assert index.size == 33 * 16 and (index.reshape(33, 16)[16] == -1).all()  # two 16 x 16 patches, one NaN row
    assert len(set(index[index >= 0])) == 2 * 256
    assert set(labels[index[index >= 0]]) - {-1} == set(labels[labels >= 0])  # every cluster (a NaN pixel is -1)
    assert load_model(d / "model.pt").kind == "unet"
    with h5py.File(d / "guess.h5") as h5:
        assert h5["interval/B"].shape == (24, 32, 2)
    a = read_result(d / "assisted.h5")
    assert a.attrs["init"] == "previous" and a.status.reshape(-1)[5] == 3 and a.attrs["complete"]
    assert run_assist(obs, d, s)["ran"] == []
