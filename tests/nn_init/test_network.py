"""The CNN's inference batching: cache-sized batches, results independent of the batch, stable weight names."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stokesflow.nn_init.network import (  # noqa: E402
    BATCH_BYTES, build_network, cnn_architecture, inference_batch, run_network,
)

HMI = 6173.3433 + 1e-3 * np.array([-172.0, -103.2, -34.4, 34.4, 103.2, 172.0])
HINODE = 6300.884 + 0.021549 * np.arange(112)


def test_inference_batch_fits_the_cache_budget():
    # Hinode/SP: 64 channels x 112 points x 4 B = 28 KiB a pixel -> 4 MiB hold 146 -> 128 (a power of two)
    assert inference_batch(64, 112) == 128
    assert inference_batch(64, 6) == 2048  # HMI: 1.5 KiB a pixel -> 2730 -> 2048
    for c, nw in [(64, 112), (64, 6), (32, 50), (128, 300)]:
        b = inference_batch(c, nw)
        assert b & (b - 1) == 0 and 4 * c * nw * b <= BATCH_BYTES
    assert inference_batch(64, 100_000) == 16  # floor: a huge grid still runs in batches of 16
    assert inference_batch(1, 1) == 4096  # ceiling
    assert inference_batch(64, 112, budget=1 << 30) == 4096
    assert inference_batch(64, 112, threads=4) == 512  # torch splits a batch over its threads: 128 each


@pytest.mark.parametrize("wave", [HMI, HINODE], ids=["hmi", "hinode"])
def test_outputs_do_not_depend_on_the_batch(wave):
    torch.manual_seed(0)
    net = build_network(cnn_architecture(wave, 10))
    x = np.random.default_rng(1).standard_normal((300, 4, wave.size)).astype(np.float32)
    ref = run_network(net, x, batch=300)
    assert ref.shape == (300, 10) and ref.dtype == np.float32
    # 300 is not a multiple of 7 or 128: the last partial batch is written too. Tolerance: float32
    # sums of up to 64 * 7 * 4 products may be ordered differently by another batch size (~1e-6 relative).
    np.testing.assert_allclose(run_network(net, x, batch=7), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run_network(net, x), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run_network(net, x.astype(np.float64)[:, :, :]), ref, rtol=1e-5, atol=1e-5)
    assert run_network(net, x[:0]).shape == (0, 10)


def test_weight_names_match_model_files_of_format_1():
    # model files store the state_dict: renaming or reordering layers would break every saved model.
    # The in-place ReLUs have no weights; these are the names the first model files were written with.
    net = build_network(cnn_architecture(HINODE, 10))
    assert list(net.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias", "6.weight", "6.bias",
                                      "9.weight", "9.bias", "12.weight", "12.bias"]
    hmi = build_network(cnn_architecture(HMI, 10))
    assert list(hmi.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias",
                                      "7.weight", "7.bias", "10.weight", "10.bias"]
