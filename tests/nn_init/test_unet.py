"""The U-Net on tiny synthetic maps: loss goes down, round trip, no seams, calibrated intervals, mismatches raise."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stokesflow.backends import get_backend  # noqa: E402
from stokesflow.nn_init.bins import coverage  # noqa: E402
from stokesflow.nn_init.model_file import ModelMismatchError, load_model  # noqa: E402
from stokesflow.nn_init.providers import InitError  # noqa: E402
from stokesflow.nn_init.unet import (  # noqa: E402
    build_unet, image_inputs, predict_field, tiled_logits, train_unet, unet_architecture,
)

HMI = 6173.3433 + 1e-3 * np.array([-172.0, -103.2, -34.4, 34.4, 103.2, 172.0])
META = {"instrument": "hmi", "spectral_instrument": "", "lines": ["FeI_6173"], "provenance": {"test": True}}
RANGES = [(100, 2500), (10, 170), (5, 175), (-2, 2), (25, 40), (4, 15), (0.05, 0.4), (0.2, 0.4), (0.6, 0.8)]


def _smooth(rng: np.random.Generator, ny: int, nx: int) -> np.ndarray:
    """A smooth random field in [0, 1] (sum of a few random plane waves)."""
    y, x = np.mgrid[0:ny, 0:nx]
    f = np.zeros((ny, nx))
    for _ in range(4):
        k = rng.uniform(0.05, 0.25, 2)
        f += np.sin(k[0] * y + k[1] * x + rng.uniform(0, 2 * np.pi))
    return (f - f.min()) / (f.max() - f.min())


def _scene(seed: int, ny: int = 48, nx: int = 48, smooth: bool = False):
    """ME spectra of random parameter maps on the HMI grid, noise 1e-3; returns backend, cube, params.

    Pixels are independent (``smooth=False``), so a tiny training field cannot be memorised through
    its spatial pattern and held-out pixels follow the same distribution as fresh ones.
    """
    me = get_backend("me", {"lines": ["FeI_6173"]})
    rng = np.random.default_rng(seed)
    if smooth:
        params = np.stack([lo + (hi - lo) * _smooth(rng, ny, nx) for lo, hi in RANGES], axis=2)
    else:
        params = np.stack([rng.uniform(lo, hi, (ny, nx)) for lo, hi in RANGES], axis=2)
    st = me.synthesize(params.reshape(-1, len(RANGES)), HMI) + 1e-3 * rng.standard_normal((ny * nx, 4, HMI.size))
    return me, st.reshape(ny, nx, 4, HMI.size).astype(np.float32), params


@pytest.fixture(scope="module")
def trained():
    """A U-Net trained for 25 epochs on two 48 x 48 maps (one pixel of bad status masked out)."""
    torch.set_num_threads(1)
    me, c1, p1 = _scene(1)
    _, c2, p2 = _scene(2)
    m1 = np.ones(c1.shape[:2], bool)
    m2 = np.ones(c2.shape[:2], bool)
    p1 = p1.copy()
    p1[3, 4] = np.nan  # a failed pixel: masked out, must not poison the loss
    m1[3, 4] = False
    model = train_unet([c1, c2], [p1, p2], [m1, m2], me.parameters, HMI, metadata=META,
                       settings={"epochs": 25, "crop": 32, "batch": 4, "patience": 100, "lr": 3e-3, "channels": 8,
                                 "val_fraction": 0.3, "min_steps": 5},  # x2 with the mirror images: 10 per epoch
                       threads=1)
    return me, model


def test_training_lowers_the_loss(trained):
    _, model = trained
    h = model.metadata["history"]
    assert np.isfinite([e["train_loss"] for e in h]).all()
    assert h[-1]["train_loss"] < 0.85 * h[0]["train_loss"]
    assert min(e["val_loss"] for e in h) < 0.9 * h[0]["val_loss"]


def test_save_load_round_trip(trained, tmp_path):
    _, model = trained
    _, cube, _ = _scene(7, 20, 28)
    path = model.save(tmp_path / "unet.pt")
    back = load_model(path)
    assert back.kind == "unet"
    assert back.metadata["calibration"] == model.metadata["calibration"]
    v1, i1 = predict_field(model, cube)
    v2, i2 = predict_field(back, cube)
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(i1, i2)
    assert v1.shape == (20, 28, 9) and i1.shape == (20, 28, 9, 2)
    assert (i1[..., 0] <= v1).all() and (v1 <= i1[..., 1]).all()


def test_unet_rejects_per_pixel_predict(trained):
    _, model = trained
    with pytest.raises(InitError, match="needs images"):
        model.predict(np.zeros((3, 4, 6), np.float32))


def test_calibrated_intervals_cover_about_90_percent_of_fresh_pixels(trained):
    """Coverage of the 90 % intervals on a fresh 64 x 64 map (not seen in training or calibration).

    Target 90 %; the issue's tolerance 85-95 % (with 4096 correlated pixels the sampling spread
    alone is about 1 %).
    """
    _, model = trained
    _, cube, truth = _scene(11, 64, 64)
    vals, iv = predict_field(model, cube)
    for j, name in enumerate(model.parameters):
        period = 180.0 if name == "azimuth" or model.targets.circular[j] else None
        cov = coverage(iv[:, :, j].reshape(-1, 2), truth[:, :, j].reshape(-1), period)
        assert 0.85 <= cov <= 0.95, (name, cov, model.metadata["calibration"][j])


def test_b_is_learned(trained):
    """Pearson of the predicted B with the truth on a fresh map above 0.9 (25 CPU epochs on 2 tiny maps)."""
    _, model = trained
    _, cube, truth = _scene(11, 64, 64)
    vals, _ = predict_field(model, cube, intervals=False)
    r = np.corrcoef(vals[:, :, 0].ravel(), truth[:, :, 0].ravel())[0, 1]
    assert r > 0.9


def test_tiles_match_one_pass():
    """A 100 x 84 field over 32-pixel tiles overlapping by 24 equals one pass within 0.5 % of the logit spread.

    Tiles see zero padding where one pass sees neighbours; with the overlap near the receptive field
    and the linear window the difference is small (measured 0.3 %); an overlap of 4 pixels gives
    1.3 % and fails this bound.
    """
    torch.manual_seed(0)
    net = build_unet(unet_architecture(6, 3, channels=8)).eval()
    x = np.random.default_rng(3).standard_normal((24, 100, 84)).astype(np.float32)
    one = tiled_logits(net, x, tile=128)
    tiles = tiled_logits(net, x, tile=32, overlap=24)
    assert tiles.shape == one.shape == (3, 80, 100, 84)
    assert np.max(np.abs(tiles - one)) < 0.005 * float(np.std(one))
    seams = tiled_logits(net, x, tile=32, overlap=4)
    assert np.max(np.abs(seams - one)) > 0.005 * float(np.std(one))  # the bound can fail


def test_nan_pixels_give_nan(trained):
    _, model = trained
    _, cube, _ = _scene(8, 16, 16)
    cube[5, 6] = np.nan
    vals, iv = predict_field(model, cube)
    assert np.isnan(vals[5, 6]).all() and np.isnan(iv[5, 6]).all()
    assert np.isfinite(np.delete(vals.reshape(-1, 9), 5 * 16 + 6, axis=0)).all()


def test_incompatible_metadata_raises(trained):
    _, model = trained
    with pytest.raises(ModelMismatchError, match="wavelength"):
        model.check_compatible(where="test", wavelength=HMI[:5])
    with pytest.raises(ModelMismatchError, match="parameters"):
        model.check_compatible(where="test", parameters=["B", "inclination"])


def test_image_inputs_zero_nan():
    from stokesflow.nn_init.features import InputScaling

    cube = np.ones((3, 5, 4, 6), np.float32)
    cube[1, 2] = np.nan
    sc = InputScaling(mean=np.zeros((4, 6)), sigma=np.ones(4))
    x = image_inputs(cube, sc)
    assert x.shape == (24, 3, 5) and (x[:, 1, 2] == 0).all() and (x[:, 0, 0] == 1).all()


@pytest.mark.parametrize("circular", [False, True])
def test_vectorised_decoding_matches_bins(circular):
    """decode_logits equals Bins.decode / Bins.interval of the tempered softmax (float32 logits: 1e-9 of the range)."""
    from stokesflow.nn_init.bins import Bins, softmax
    from stokesflow.nn_init.unet import decode_logits

    b = Bins(0.0, 180.0, 80, circular)
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal((500, 80)) * 3).astype(np.float32)
    logits[:5, 0] += 30  # peaks at the edges
    logits[5:10, -1] += 30
    v, iv = decode_logits(b, logits, 1.7, 1.3)
    p = softmax(logits, 1.7)
    np.testing.assert_allclose(v, b.decode(p), atol=1e-4)
    np.testing.assert_allclose(iv, b.interval(p, 0.9, 1.3), atol=1e-3)


class _Killed(Exception):
    """Stands in for a kill of the training task after an epoch's checkpoint."""


def test_killed_training_resumes_to_the_same_model(tmp_path):
    """A training stopped after epoch 2 and run again from its checkpoint ends bit-identical to one
    that was never stopped (same weights, history and calibration: the crops' random state is restored)."""
    torch.set_num_threads(1)
    me, cube, params = _scene(3, 32, 32)
    mask = np.ones(cube.shape[:2], bool)
    kw = dict(metadata=META, settings={"epochs": 4, "crop": 16, "batch": 2, "patience": 100, "channels": 4,
                                       "val_fraction": 0.3, "min_steps": 2}, threads=1)
    whole = train_unet([cube], [params], [mask], me.parameters, HMI, **kw)

    ckpt = tmp_path / "unet.pt.ckpt"

    def kill_after_two(entry):
        if entry["epoch"] == 2:
            raise _Killed

    with pytest.raises(_Killed):
        train_unet([cube], [params], [mask], me.parameters, HMI, checkpoint=ckpt, on_epoch=kill_after_two, **kw)
    assert ckpt.exists()
    seen = []
    resumed = train_unet([cube], [params], [mask], me.parameters, HMI, checkpoint=ckpt,
                         on_epoch=lambda e: seen.append(e["epoch"]), **kw)
    assert seen == [3, 4]  # only the epochs the killed run had not finished
    assert [h["val_loss"] for h in resumed.metadata["history"]] == [h["val_loss"] for h in whole.metadata["history"]]
    for name, w in whole.state_dict.items():
        assert torch.equal(w, resumed.state_dict[name]), name
    assert resumed.metadata["calibration"] == whole.metadata["calibration"]

    # a checkpoint of other settings is refused, not mixed in
    other = dict(kw, settings={**kw["settings"], "lr": 1e-2})
    with pytest.raises(InitError, match="other training data or settings"):
        train_unet([cube], [params], [mask], me.parameters, HMI, checkpoint=ckpt, **other)


def test_an_epoch_with_the_mirror_images_takes_twice_the_steps():
    """An epoch is a pass over the training maps: with their polarity mirror images it takes twice the
    optimiser steps, ``min_steps`` included (each polarity gets what one polarity gets without them)."""
    torch.set_num_threads(1)
    me, cube, params = _scene(4, 24, 24)
    mask = np.ones(cube.shape[:2], bool)
    steps = {}
    for mirror in (False, True):
        model = train_unet([cube], [params], [mask], me.parameters, HMI, metadata=META,
                           settings={"epochs": 1, "crop": 16, "batch": 2, "channels": 4, "val_fraction": 0.3,
                                     "min_steps": 3, "mirror": mirror}, threads=1)
        steps[mirror] = [h["steps"] for h in model.metadata["history"]]
    assert steps == {False: [3], True: [6]}
