"""Figures of the assisted loop: agreement of two result files in units of their uncertainties."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from stokesflow.orchestrator.assist_metrics import (DETERMINED_SIGMA, DISAGREE, agreement, agreement_within_sigma,
                                                    disagreement, summary_lines)


def _results(seed: int = 3, n: int = 4000) -> tuple[SimpleNamespace, SimpleNamespace, np.ndarray]:
    """Two fits of the same truth: determined pixels (sigma 2 deg) and undetermined ones (sigma 150 deg).

    Each fit scatters by its sigma about the truth, so the determined
    pixels differ by draws of their combined sigma; the
    undetermined ones (a quarter) take unrelated angles in each fit, as
    weak-field pixels do.
    """
    rng = np.random.default_rng(seed)
    truth = rng.uniform(10.0, 170.0, n)
    weak = rng.random(n) < 0.25
    sig = np.where(weak, 150.0, 2.0)
    a = np.where(weak, rng.uniform(0, 180, n), truth + sig * rng.standard_normal(n))
    b = np.where(weak, rng.uniform(0, 180, n), truth + sig * rng.standard_normal(n))
    # azimuth: the same values shifted across the 0/180 wrap in b
    az_a = np.mod(truth + 85.0, 180.0)
    az_b = np.mod(az_a + 0.5 * rng.standard_normal(n), 180.0)
    status = np.zeros(n, dtype=np.uint8)
    status[:10] = 2  # failed in one file: left out
    ra = SimpleNamespace(params={"inclination": a, "azimuth": az_a}, sigma={"inclination": sig, "azimuth": np.ones(n)},
                         status=status)
    rb = SimpleNamespace(params={"inclination": b, "azimuth": az_b}, sigma={"inclination": sig, "azimuth": np.ones(n)},
                         status=np.zeros(n, dtype=np.uint8))
    return ra, rb, weak


def test_within_sigma_separates_undetermined_pixels_from_disagreement() -> None:
    """Pearson over all pixels is dragged down by the undetermined quarter; the sigma figures are not.

    Expected: within 1 combined sigma, a normal draw of the combined sigma
    lands inside it 68.3 % of the time (determined pixels), and an
    undetermined pair (two uniform angles, combined sigma 212 deg) always:
    0.75 * 0.683 + 0.25 = 0.762, +- 0.02 (binomial 1-sigma 0.007 at n =
    4000); Pearson over the determined pixels (sigma 2 deg < 10 deg) above
    0.99 (expected 0.998 for a 46-deg spread and 2-deg scatter), over all
    pixels below 0.9 (about 0.75 + 0.25 * 0). The azimuth is compared
    circularly: the wrap at 180 deg costs nothing (99th percentile of
    |diff| / sigma below 2.5 for a 0.5-deg scatter over a combined sigma of
    1.41 deg: expected 0.9).
    """
    a, b, weak = _results()
    w = agreement_within_sigma(a, b)
    assert abs(w["inclination"]["within_1sigma"] - (0.75 * 0.683 + 0.25)) < 0.02, w
    assert w["inclination"]["pearson_determined"] > 0.99, w
    assert abs(w["inclination"]["determined"] - (~weak[10:]).mean()) < 0.01, w
    assert agreement(a, b)["inclination"] < 0.9
    assert w["azimuth"]["within_1sigma"] > 0.99 and w["azimuth"]["p99_sigma"] < 2.5, w
    assert set(DETERMINED_SIGMA) == {"inclination", "azimuth"}


def test_within_sigma_sees_a_real_disagreement() -> None:
    """A fit off by 5 of its sigmas on every determined pixel: within 1 sigma drops to the weak quarter."""
    a, b, weak = _results()
    shifted = SimpleNamespace(params={"inclination": b.params["inclination"] + 5 * np.hypot(2.0, 2.0),
                                      "azimuth": b.params["azimuth"]}, sigma=b.sigma, status=b.status)
    w = agreement_within_sigma(a, shifted, ("inclination",))
    assert w["inclination"]["within_1sigma"] < 0.3, w
    assert w["inclination"]["p99_sigma"] > 4.0, w


def test_disagreement_tells_which_run_found_the_better_minimum() -> None:
    """Run a finds the better minimum (lower chi2) in 3 of 4 of the weak pixels where the two differ.

    Chi2: both runs 1.0 on the determined pixels; on the weak ones the
    run that "found the minimum" 1.0 and the other 1.2, a drawn 75 % / 25 %
    in a's favour. Expected: the disagreeing pixels are (nearly all of) the
    weak quarter (two uniform angles differ by > 20 deg with probability
    (160/180)^2 = 0.79, so about 0.25 * 0.79 = 0.20 of the fitted pixels;
    +-0.02); a has the lower chi2 in 0.75 of them (+-0.05: binomial 1-sigma
    0.015 at ~790 pixels), median difference -0.2; and against the better
    fit of the two per pixel a correlates better than b (a equals it on
    three quarters of the weak pixels, b on one quarter). Pixels failed in
    one run are left out, as in the other figures; the azimuth's wrap at
    180 deg is no disagreement.
    """
    a, b, weak = _results()
    rng = np.random.default_rng(9)
    a_wins = rng.random(weak.size) < 0.75
    a.chi2 = np.where(weak & ~a_wins, 1.2, 1.0)
    b.chi2 = np.where(weak & a_wins, 1.2, 1.0)
    d = disagreement(a, b)
    inc = d["inclination"]
    assert abs(inc["share"] - 0.25 * (160 / 180) ** 2) < 0.02, inc
    assert abs(inc["a_lower_chi2"] - 0.75) < 0.05, inc
    assert inc["median_chi2_diff"] == -0.2 or abs(inc["median_chi2_diff"] + 0.2) < 1e-12, inc
    assert inc["pearson_a_best"] > inc["pearson_b_best"] + 0.1, inc
    assert d["azimuth"]["pixels"] == 0, d["azimuth"]
    assert set(d) == {"inclination", "azimuth"} and set(DISAGREE) >= set(d)
    # the same files the other way round: the mirror image
    r = disagreement(b, a)["inclination"]
    assert r["pixels"] == inc["pixels"] and abs(r["a_lower_chi2"] - (1 - inc["a_lower_chi2"])) < 1e-12, r


def test_summary_lines_for_a_person() -> None:
    """The loop's figures in lines: speed-ups as the summary has them, the break-even field from the
    phases (subset, reference and training fixed; assisted, ME seed and prediction against the
    baseline per pixel), the median chi2 change; without a baseline no comparison lines."""
    d = {"phases": {"subset": 1.0, "reference": 2.0, "train": 7.0, "predict": 0.5, "assisted": 2.0, "baseline": 10.0},
         "loop_seconds": 12.5, "lm_iterations": {"reference": 300, "assisted": 400, "baseline": 1600},
         "iterations": {"reference": {"mean": 3.0}, "assisted": {"mean": 4.0, "pixels": 100},
                        "baseline": {"mean": 16.0}},
         "speedup": {"iterations": 4.0, "wall_assisted": 5.0, "wall_loop": 0.8},
         "chi2": {"assisted": {"median": 1.01}, "baseline": {"median": 1.0}},
         "agreement_with_baseline": {"assisted": {"B": 0.99991, "eta0": 0.5}},
         "truth": {"assisted": {"B_off_100G": 3, "B_off_100G_fraction": 0.03, "pearson": {"B": 0.9, "vlos": 0.8}}},
         "subset": {"pixels": 20, "clusters": 4},
         "training": {"pixels": 19, "epochs": 5, "best_epoch": 4, "val_loss": 0.25, "device": "cpu", "threads": 1,
                      "history": [{"samples": 10}] * 5}}
    lines = summary_lines(d)
    assert lines[0] == ("wall seconds per phase: subset 1.0, reference 2.0, train 7.0, predict 0.5, assisted 2.0, "
                        "baseline 10.0")
    assert "loop (subset+reference+train+predict+assisted) 12.5 s, baseline 10.0 s" in lines
    assert "speed-up: iterations 4.00x, wall (assisted vs baseline) 5.00x, wall (whole loop vs baseline) 0.80x" in lines
    # fixed 10 s; per pixel (10 - 2 - 0.5) / 100 = 0.075 s: 133 pixels
    assert "break-even field size (subset, reference and training as a fixed cost): 133 pixels (~12^2)" in lines
    assert "median chi2: assisted 1.0100, baseline 1.0000 (+1.00 %)" in lines
    assert "Pearson with the baseline (assisted): B 0.9999" in lines  # the four main parameters only
    assert "vs truth (assisted): B off > 100 G 3 (3.00 %); Pearson B 0.9000, vlos 0.8000" in lines
    assert lines[-1] == ("subset: 20 pixels in 4 clusters; training: 19 good pixels, 5 epochs (best 4), 50 samples "
                         "drawn, validation loss 0.2500, on cpu (1 thread(s))")
    d["phases"]["baseline"] = 2.4  # the assisted inversion and prediction no faster per pixel
    assert any(x.startswith("break-even: none") for x in summary_lines(d))
    bare = {k: v for k, v in d.items() if k not in ("speedup", "agreement_with_baseline")}
    bare["phases"] = {k: v for k, v in d["phases"].items() if k != "baseline"}
    bare["chi2"] = {"assisted": {"median": 1.01}}
    text = "\n".join(summary_lines(bare))
    assert "speed-up" not in text and "break-even" not in text and "median chi2" not in text
    assert "loop (subset+reference+train+predict+assisted) 12.5 s\n" in text
