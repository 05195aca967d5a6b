"""Training a CNN on tiny cubes: loss goes down, model files round-trip, mismatches raise, checkpoints resume."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _me_pixels import random_me_params  # noqa: E402

from stokesflow.backends import get_backend  # noqa: E402
from stokesflow.nn_init.model_file import ModelFileError, ModelMismatchError, load_model  # noqa: E402
from stokesflow.nn_init.network import cnn_architecture  # noqa: E402
from stokesflow.nn_init.providers import InitError, get_provider  # noqa: E402
from stokesflow.nn_init.training import train_network  # noqa: E402

HMI = 6173.3433 + 1e-3 * np.array([-172.0, -103.2, -34.4, 34.4, 103.2, 172.0])
META = {"instrument": "hmi", "spectral_instrument": "", "lines": ["FeI_6173"], "provenance": {"test": True}}


@pytest.fixture(scope="module")
def pairs():
    """400 random ME pixels synthesised on the HMI grid (noise 1e-3) with their true parameters."""
    me = get_backend("me", {"lines": ["FeI_6173"]})
    rng = np.random.default_rng(5)
    n = 400
    params = random_me_params(rng, n)
    stokes = me.synthesize(params, HMI) + 1e-3 * rng.standard_normal((n, 4, HMI.size))
    torch.set_num_threads(1)
    return me, stokes.astype(np.float32), params


def _train(pairs, epochs, **kw):
    me, stokes, params = pairs
    return train_network(stokes, params, me.parameters, HMI, metadata=META,
                         settings={"epochs": epochs, "batch": 64, "patience": 100, "lr": 3e-3}, threads=1, **kw)


def test_architecture_scales_kernels_to_the_sampling():
    hmi = cnn_architecture(HMI, 10)
    assert hmi["kernels"] == [3, 3, 3] and not hmi["pool"]  # 69 mA steps: 7 * 21.5 / 69 -> 3
    hinode = cnn_architecture(6300.884 + 0.021549 * np.arange(112), 10)
    assert hinode["kernels"] == [7, 5, 3] and hinode["pool"] and hinode["flat_length"] == 28


def test_training_lowers_loss_and_round_trips(pairs, tmp_path):
    model = _train(pairs, 12)
    hist = model.metadata["history"]
    assert len(hist) == 12
    # the untrained net predicts ~0 for unit-variance targets: loss ~1; training must cut it clearly
    assert min(h["val_loss"] for h in hist) < 0.7 * hist[0]["val_loss"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    path = model.save(tmp_path / "m.pt")
    again = load_model(path)
    assert again.parameters == tuple(pairs[0].parameter_names)
    assert again.metadata["lines"] == ["FeI_6173"] and again.metadata["provenance"] == {"test": True}
    np.testing.assert_array_equal(again.predict(pairs[1][:50]), model.predict(pairs[1][:50]))
    # the provider gives the same guesses, pixel by pixel, NaN rows for NaN pixels
    prov = get_provider("cnn", {"model": str(path)}).bind(pairs[0])
    s = pairs[1][:5].copy()
    s[2, 1, 3] = np.nan
    g = prov.initial_guess(s, HMI, start=0, stop=5)
    assert np.isnan(g[2]).all() and np.isfinite(g[[0, 1, 3, 4]]).all()


def test_incompatible_model_raises(pairs, tmp_path):
    path = _train(pairs, 1).save(tmp_path / "m.pt")
    model = load_model(path)
    with pytest.raises(ModelMismatchError, match=r"lines \['FeI_6301', 'FeI_6302'\] but the model was trained on \['FeI_6173'\]"):
        model.check_compatible(where="x", lines=["FeI_6301", "FeI_6302"])
    with pytest.raises(ModelMismatchError, match="112 wavelength points but the model was trained on 6"):
        model.check_compatible(where="x", wavelength=6300.884 + 0.021549 * np.arange(112))
    with pytest.raises(ModelMismatchError, match="differs from the model's .* by up to 50.0 mA"):
        model.check_compatible(where="x", wavelength=HMI + 0.05)
    with pytest.raises(ModelMismatchError, match=r"parameters \['B'\] but the model predicts"):
        model.check_compatible(where="x", parameters=["B"])
    hinode_me = get_backend("me", {"lines": ["FeI_6301", "FeI_6302"]})
    with pytest.raises(ModelMismatchError, match="does not fit backend 'me': lines"):
        get_provider("cnn", {"model": str(path)}).bind(hinode_me)
    prov = get_provider("cnn", {"model": str(path)}).bind(pairs[0])
    with pytest.raises(ModelMismatchError, match="observed wavelength grid"):
        prov.initial_guess(np.zeros((2, 4, 6)), HMI + 0.05, start=0, stop=2)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="junk.pt: not a stokesflow model file: torch cannot read it"):
        load_model(tmp_path / "junk.pt")
    import h5py

    with h5py.File(tmp_path / "result.h5", "w") as h5:  # e.g. a result file given as the model
        h5["status"] = np.zeros((2, 2), "u1")
    with pytest.raises(ModelFileError, match="result.h5 is an HDF5 file, not a model file of `stokesflow train`"):
        load_model(tmp_path / "result.h5")
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "none.pt")


def test_checkpoint_resumes_where_it_stopped(pairs, tmp_path):
    straight = _train(pairs, 6)
    ckpt = tmp_path / "m.ckpt"

    def stop_after_3(entry):
        if entry["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(pairs, 6, checkpoint=ckpt, on_epoch=stop_after_3)
    seen = []
    resumed = _train(pairs, 6, checkpoint=ckpt, on_epoch=seen.append)
    assert [e["epoch"] for e in seen] == [4, 5, 6]  # epochs 1-3 came from the checkpoint
    for a, b in zip(straight.metadata["history"], resumed.metadata["history"]):
        # same seed, same data, RNG state restored: the same losses (float32 CPU arithmetic, same order)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    other = (pairs[0], pairs[1][:200], pairs[2][:200])
    with pytest.raises(InitError, match="written for other training data"):
        _train(other, 6, checkpoint=ckpt)


def test_samples_per_epoch_bounds_the_work_of_an_epoch(pairs, tmp_path):
    me, stokes, params = pairs
    # 340 training pixels after the held-out 15 %, and their 340 polarity mirror images (setting mirror)
    n_train = 2 * (400 - round(0.15 * 400))

    def run(per_epoch, **kw):
        return train_network(stokes, params, me.parameters, HMI, metadata=META, threads=1,
                             settings={"epochs": 6, "batch": 64, "patience": 100, "lr": 3e-3,
                                       "samples_per_epoch": per_epoch}, **kw)

    full = run(0).metadata["history"]
    assert [h["samples"] for h in full] == [n_train] * 6
    assert [h["samples"] for h in run(10_000).metadata["history"]] == [n_train] * 6  # never more than the set
    bounded = run(128)
    hist = bounded.metadata["history"]
    assert [h["samples"] for h in hist] == [128] * 6  # two batches of 64 per epoch, whatever the set's size
    assert bounded.metadata["settings"]["samples_per_epoch"] == 128
    assert min(h["val_loss"] for h in hist) < hist[0]["val_loss"]  # 12 Adam steps at 3e-3 still learn
    # each epoch draws its own random pixels from torch's generator, which the checkpoint restores
    ckpt = tmp_path / "b.ckpt"

    def stop_after_2(entry):
        if entry["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(128, checkpoint=ckpt, on_epoch=stop_after_2)
    resumed = run(128, checkpoint=ckpt).metadata["history"]
    for a, b in zip(hist, resumed):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)  # float32 CPU, same order of operations


def test_val_pixels_bounds_the_held_out_pixels_judged_each_epoch(pairs):
    """Each epoch's validation loss is the mean over a fixed random draw of ``val_pixels`` held-out
    pixels (0 or more than there are: all of them); the training itself does not depend on it."""
    me, stokes, params = pairs

    def run(val_pixels):
        return train_network(stokes, params, me.parameters, HMI, metadata=META, threads=1,
                             settings={"epochs": 1, "batch": 64, "patience": 100, "val_pixels": val_pixels})

    every, more, few = run(0), run(10_000), run(7)
    loss = [[h["val_loss"] for h in m.metadata["history"]] for m in (every, more, few)]
    assert loss[0] == loss[1] and loss[2] != loss[0]  # 60 held out; 7 of them judge `few`
    for name, w in every.state_dict.items():  # one epoch: the kept state is that epoch's, judged or not
        assert torch.equal(w, few.state_dict[name]), name
    assert few.metadata["n_val"] == 60 and few.metadata["settings"]["val_pixels"] == 7
    with pytest.raises(InitError, match="val_pixels >= 0"):
        run(-1)


def test_training_settings_are_checked():
    from stokesflow.nn_init.training import TrainSettings

    with pytest.raises(InitError, match="samples_per_epoch >= 0"):
        TrainSettings(samples_per_epoch=-1)
    with pytest.raises(InitError, match=r"unknown training setting\(s\) \['samples'\]"):
        TrainSettings(samples=100)
    assert TrainSettings(samples_per_epoch=None)["samples_per_epoch"] == TrainSettings.DEFAULTS["samples_per_epoch"]
    with pytest.raises(InitError, match="log_targets true, false or 'auto'"):
        TrainSettings(log_targets="yes")
    with pytest.raises(InitError, match="mirror and input_stretch true or false"):
        TrainSettings(input_stretch=1)


def test_log_targets_auto_follows_the_sampling(pairs):
    """``log_targets = "auto"``: the log on a coarse grid (HMI's filtergrams), not on a spectrograph's;
    true and false as given; the model file records what was learned."""
    from stokesflow.nn_init.training import log_targets

    hinode = 6300.884 + 0.021549 * np.arange(112)
    assert log_targets({}, HMI) and not log_targets({}, hinode)
    assert log_targets({"log_targets": True}, hinode) and not log_targets({"log_targets": False}, HMI)
    me, stokes, params = pairs
    names = list(me.parameter_names)
    p = params.copy()
    p[:, names.index("B")] = np.random.default_rng(1).lognormal(3.0, 1.5, p.shape[0]).clip(0, 5000)
    kw = dict(metadata=META, threads=1)
    auto = train_network(stokes, p, me.parameters, HMI, settings={"epochs": 1, "batch": 64}, **kw)
    off = auto.metadata["targets"]["log_offset"]
    assert off[names.index("B")] is not None and off[names.index("vlos")] is None
    lin = train_network(stokes, p, me.parameters, HMI, settings={"epochs": 1, "batch": 64, "log_targets": False}, **kw)
    assert lin.metadata["targets"]["log_offset"] == [None] * len(names)
    assert auto.metadata["data_digest"] != lin.metadata["data_digest"]  # a checkpoint of one does not resume the other
    # the inputs' stretch is on by default and recorded; off, the inputs are linear
    assert auto.metadata["inputs"]["stretch"][0] == 0.0 and min(auto.metadata["inputs"]["stretch"][1:]) > 0
    flat = train_network(stokes, p, me.parameters, HMI, settings={"epochs": 1, "batch": 64, "input_stretch": False},
                         **kw)
    assert set(flat.metadata["inputs"]["stretch"]) == {0.0}


def test_planned_epochs_cap_the_samples_drawn_whatever_the_set_size():
    from stokesflow.nn_init.training import TrainSettings, planned_epochs

    d = TrainSettings()
    assert (d["samples_per_epoch"], d["max_samples"]) == (8192, 245_760)
    assert planned_epochs({}, 20_000) == 30 and planned_epochs({}, 2_000_000) == 30  # 30 x 8,192 in all
    assert planned_epochs({}, 2_000) == 123  # ceil(245,760 / 2,000): a small set is drawn whole each epoch
    assert planned_epochs({}, 340) == 200  # ... up to ``epochs``
    assert planned_epochs({"max_samples": 0}, 20_000) == 200
    assert planned_epochs({"samples_per_epoch": 0, "max_samples": 100_000}, 20_000) == 5


def test_subset_pixels_clamps_the_share_of_the_field():
    from stokesflow.nn_init.training import SUBSET_MAX_PIXELS, SUBSET_MIN_PIXELS, subset_pixels

    assert subset_pixels(256 * 256, 0.05) == SUBSET_MIN_PIXELS == 16_000  # 5 % would be 3,277
    assert subset_pixels(1024 * 1024, 0.05) == SUBSET_MAX_PIXELS == 32_000  # 5 % would be 52,429
    assert subset_pixels(512 * 512, 0.1) == 26_214  # inside the bounds: the share itself
    assert subset_pixels(40 * 50, 0.05) == 2_000  # a field below the floor is used whole
    assert subset_pixels(1024 * 1024, 0.05, 64, 10**9) == 52_429  # wide bounds: the old rule
    with pytest.raises(InitError, match=r"share of the pixels in \(0, 1\], got 1.5"):
        subset_pixels(100, 1.5)
    with pytest.raises(InitError, match="64 <= min_pixels <= max_pixels, got min_pixels=500, max_pixels=100"):
        subset_pixels(10_000, 0.1, 500, 100)


def test_mirror_lets_a_network_trained_on_one_polarity_invert_the_other():
    """Trained on pixels of one polarity only (inclination < 70 deg, as a field with one sunspot
    gives), a CNN with the polarity mirror images predicts the other polarity's inclination
    (> 110 deg); without them it cannot (it has never seen negative V).

    1,500 training pixels, 40 epochs of 1,024 samples. Expected: with the mirror the median
    inclination error on 300 opposite-polarity pixels is within 8 deg (measured 3.5), and B
    correlates at r > 0.95; without it the median error exceeds 15 deg and 3 times the
    mirrored one (measured 24.8: the network extrapolates into a polarity it never saw).
    """
    me = get_backend("me", {"lines": ["FeI_6173"]})
    rng = np.random.default_rng(8)

    def draw(n, inc_lo, inc_hi):
        p = random_me_params(rng, n, B=(300, 2500), inclination=(inc_lo, inc_hi))
        return (me.synthesize(p, HMI) + 1e-3 * rng.standard_normal((n, 4, HMI.size))).astype(np.float32), p

    x_tr, p_tr = draw(1500, 10, 70)
    x_te, p_te = draw(300, 110, 170)
    err = {}
    for mirror in (True, False):
        model = train_network(x_tr, p_tr, me.parameters, HMI, metadata=META, threads=1,
                              settings={"epochs": 40, "batch": 64, "patience": 100, "lr": 3e-3,
                                        "samples_per_epoch": 1024, "max_samples": 0, "mirror": mirror})
        pred = model.predict(x_te)
        err[mirror] = float(np.median(np.abs(pred[:, 1] - p_te[:, 1])))
        if mirror:
            assert np.corrcoef(pred[:, 0], p_te[:, 0])[0, 1] > 0.95
        assert model.metadata["settings"]["mirror"] is mirror
    assert err[True] < 8.0 and err[False] > max(15.0, 3.0 * err[True]), err
