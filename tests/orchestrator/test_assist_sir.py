"""``stokesflow assist --backend sir``, and ``train`` / ``predict`` / ``--init previous`` on depth-stratified
results: run against the sir.x TEST DOUBLE (tests/backends/sir/doubles/sir_test_double.py, which writes the
guess model back with B doubled, chi2 1.5 and 4 iterations per cycle), and, marked ``external``, the real SIR."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("torch")

import stokesflow.orchestrator.run as run_module  # noqa: E402
from stokesflow.backends import get_backend  # noqa: E402
from stokesflow.nn_init.features import sample_depth  # noqa: E402
from stokesflow.nn_init.model_file import ModelMismatchError, load_model  # noqa: E402
from stokesflow.nn_init.providers import get_provider  # noqa: E402
from stokesflow.orchestrator.assist import AssistSettings, run_assist  # noqa: E402
from stokesflow.orchestrator.cli import main  # noqa: E402
from stokesflow.orchestrator.config import load_config  # noqa: E402
from stokesflow.orchestrator.io import open_observation, write_observation  # noqa: E402
from stokesflow.orchestrator.predict import predict_observation  # noqa: E402
from stokesflow.orchestrator.store import inspect_result, read_result  # noqa: E402
from stokesflow.orchestrator.train import read_training_pairs, train_model, training_columns  # noqa: E402

DOUBLE = Path(__file__).parents[1] / "backends" / "sir" / "doubles" / "sir_test_double.py"
WL = 6300.89 + 0.021549 * np.arange(112)  # Hinode/SP-like: Fe I 6301/6302, 112 points of 21.549 mA
NODES = (1.0, 0.0, -1.0, -2.0, -3.0, -4.0)  # the SIR backend's default seed_nodes, deep to high

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the test double is a POSIX executable script")


def _observation(path: Path, ny: int, nx: int, *, seed: int = 3, nan_pixel: int | None = None) -> Path:
    """A Hinode-like observation of random ME pixels (ME synthesis) with noise 1e-3."""
    from _orchestrator_helpers import random_me_params

    rng = np.random.default_rng(seed)
    me = get_backend("me", {"lines": ["FeI_6301", "FeI_6302"]})
    stokes = me.synthesize(random_me_params(ny * nx, rng), WL) + 1e-3 * rng.standard_normal((ny * nx, 4, WL.size))
    if nan_pixel is not None:
        stokes[nan_pixel, 1, 3] = np.nan
    write_observation(path, stokes.reshape(ny, nx, 4, WL.size).astype(np.float32), WL,
                      {"lines": "FeI_6301,FeI_6302", "noise": 1e-3, "instrument": "hinode"})
    return path


def _settings(**kw):
    """The loop's settings for the double; the network's guesses alone unless ``me_seed`` is given."""
    base = dict(subset=0.3, clusters=3, epochs=2, threads=1, cluster={"kind": "serial"}, progress="none",
                chunk_pixels=8, report=False, backend="sir", backend_options={"executable": str(DOUBLE)},
                me_seed="off")
    base.update(kw)
    return AssistSettings(**base)


def _strategy(path: Path) -> str:
    return json.loads(inspect_result(path)["fingerprint_json"])["backend_options"]["strategy"]


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    return _observation(tmp_path_factory.mktemp("sir_assist") / "obs.h5", 4, 6, nan_pixel=5)


def test_assist_me_seed_flag(obs, tmp_path):
    """``--me-seed off`` reaches the loop (no ME phase, no me_seed.h5); a value outside the choices is a usage error."""
    d = tmp_path / "loop"
    rc = main(["assist", "-i", str(obs), "-o", str(d), "--backend", "sir", "-B", f"executable={DOUBLE}",
               "--me-seed", "off", "--subset", "0.3", "--clusters", "3", "--epochs", "1", "--threads", "1",
               "--cluster", "serial", "--chunk-pixels", "8", "--progress", "none", "--no-report", "-q"])
    assert rc == 0
    data = json.loads((d / "summary.json").read_text())
    assert data["arguments"]["me_seed"] == "off" and "me_seed" not in data["ran"]
    assert not (d / "me_seed.h5").exists()
    assert main(["assist", "-i", str(obs), "-o", str(tmp_path / "x"), "--backend", "sir", "--me-seed", "always"]) == 2
    assert not (tmp_path / "x").exists()


def test_assist_sir_end_to_end_serial(obs, tmp_path):
    d = tmp_path / "loop"
    rc = main(["assist", "-i", str(obs), "-o", str(d), "--backend", "sir", "-B", f"executable={DOUBLE}", "--baseline",
               "--subset", "0.3", "--clusters", "3", "--epochs", "2", "--threads", "1", "--cluster", "serial",
               "--chunk-pixels", "8", "--progress", "none", "--no-report", "-q"])
    assert rc == 0
    data = json.loads((d / "summary.json").read_text())
    # SIR's default ME seed: "alone" (the short phase starts from the ME result, DIR/me_seed.h5)
    assert data["ran"] == ["subset", "reference", "train", "me_seed", "predict", "assisted", "baseline"]
    assert data["arguments"]["me_seed"] == "alone"
    # reference strategy for the subset and the baseline, one cycle (assisted_me) for the field
    assert [_strategy(d / f) for f in ("subset.h5", "assisted.h5", "baseline.h5")] == ["reference", "assisted_me",
                                                                                       "reference"]
    n = 23  # 24 pixels, one NaN (status 3, SIR not run)
    ref = read_result(d / "subset.h5")
    # the double: 4 iterations per cycle; reference 3 cycles, assisted 1
    assert data["lm_iterations"] == {"reference": 12 * int((ref.status == 0).sum()), "assisted": 4 * n,
                                     "baseline": 12 * n}
    assert data["speedup"]["iterations"] == 3.0
    # the model learned the SIR backend's node columns (a subset of its init columns), not its 2-D maps
    sir = get_backend("sir", {"executable": str(DOUBLE)})
    cols = load_model(d / "model.pt").parameters
    assert set(cols) <= set(sir.init_columns) and "B@-1" in cols and "azimuth@-4" in cols
    assert not {"B", "T", "Pe"} & set(cols) and "vmac" in cols
    # guess.h5: the predictions as a stratified file on the nodes (which --init previous reads)
    with h5py.File(d / "guess.h5") as g:
        np.testing.assert_array_equal(g["log_tau"][:], NODES)
        assert g["params/B"].shape == (4, 6, 6) and g["params/vmac"].shape == (4, 6)
        assert json.loads(g.attrs["columns"]) == list(cols)
        guess_b = g["params/B"][:, :, 2].reshape(-1)  # B at log tau -1
    with h5py.File(d / "assisted.h5") as a:
        k = int(np.argmin(np.abs(a["log_tau"][:] + 1.0)))
        assert abs(a["log_tau"][k] + 1.0) < 1e-6  # -1 is on the HSRA grid
        b = a["params/B"][:, :, k].reshape(-1)
        status = a["status"][:].reshape(-1)
    assert status[5] == 3 and (np.delete(status, 5) == 0).all()
    # each pixel started from the ME result: the double doubles the guess model's field (SIR's .mod text: rtol 1e-4)
    me_b = read_result(d / "me_seed.h5").params["B"].reshape(-1)
    np.testing.assert_allclose(np.delete(b, 5), 2 * np.maximum(np.delete(me_b, 5), 10.0), rtol=1e-4)
    # the reference B (the double: 2 x HSRA's 400 G everywhere) is one value: the network gives it exactly
    np.testing.assert_allclose(np.delete(guess_b, 5), 800.0, rtol=1e-6)
    assert np.isfinite(data["chi2"]["assisted"]["median"])
    # the CLI's defaults are the library's
    assert run_assist(obs, d, _settings(baseline=True, me_seed=None))["ran"] == []


def test_assist_sir_with_kmeans_is_refused_before_any_work(obs, tmp_path):
    from stokesflow.orchestrator.errors import OrchestratorError

    with pytest.raises(OrchestratorError, match=r"--model kmeans .* backend 'sir' gives depth-stratified results: "
                                                r"use --model cnn"):
        run_assist(obs, tmp_path / "loop", _settings(model="kmeans"))
    assert not (tmp_path / "loop").exists()


def test_assist_sir_interrupted_mid_phase_resumes(obs, tmp_path, monkeypatch):
    from _orchestrator_helpers import assisted_phase_interrupted_and_resumed

    assisted_phase_interrupted_and_resumed(obs, tmp_path / "loop", _settings(chunk_pixels=4), 6,  # 4 x 6 field
                                           monkeypatch)


@pytest.fixture(scope="module")
def stratified(tmp_path_factory):
    """A SIR result of a 5 x 6 field (the double), its maps then rewritten with values that vary per pixel
    and depth (T linear in log tau, B and the azimuth per pixel, the azimuth wrapping through 180 deg)."""
    d = tmp_path_factory.mktemp("sir_train")
    obs = _observation(d / "obs.h5", 5, 6, seed=11)
    res = d / "sir.h5"
    run_module.run_inversion(load_config(None, {
        "input": {"path": str(obs)}, "output": {"path": str(res)},
        "run": {"backend": "sir", "progress": "none"}, "cluster": {"kind": "serial"},
        "backend": {"sir": {"executable": str(DOUBLE), "strategy": "assisted"}}}))
    with h5py.File(res, "r+") as h5:
        lt = h5["log_tau"][:]
        k = np.arange(30.0).reshape(5, 6, 1)
        h5["params/T"][...] = 5000.0 - 500.0 * lt + 10.0 * k
        h5["params/B"][...] = 100.0 + 50.0 * k + 20.0 * lt
        h5["params/azimuth"][...] = np.mod(170.0 + 2.0 * k + 10.0 * lt, 180.0)
    return obs, res


def test_train_on_a_stratified_result_reads_the_backend_node_columns(stratified):
    obs, res = stratified
    sir = get_backend("sir", {"executable": str(DOUBLE)})
    assert training_columns(res) == sir.init_columns  # the backend rebuilt from the file's attributes
    data = read_training_pairs([str(obs)], [str(res)], columns=training_columns(res))
    names = [p.name for p in data.specs]
    # node columns of every seeded quantity inside the file's depths (HSRA: 1.4 .. -4) and the 2-D maps;
    # not the plain names of stratified maps, not Pe (SIR puts it in hydrostatic equilibrium itself)
    assert names == [c for c in sir.init_columns if "@" in c or c in ("vmac", "filling_factor", "stray_light")]
    assert data.stokes.shape[0] == 30 and data.params.shape == (30, len(names))
    k = np.arange(30.0)
    for node in (-4.0, -1.0, 1.0):  # nodes on the HSRA grid: the maps' values there (float32 store)
        np.testing.assert_allclose(data.params[:, names.index(f"T@{node:g}")], 5000.0 - 500.0 * node + 10.0 * k,
                                   rtol=1e-6)
        np.testing.assert_allclose(data.params[:, names.index(f"B@{node:g}")], 100.0 + 50.0 * k + 20.0 * node,
                                   rtol=1e-6)
    az = data.params[:, names.index("azimuth@0")]
    np.testing.assert_allclose(az, np.mod(170.0 + 2.0 * k, 180.0), atol=1e-3)
    spec = data.specs[names.index("azimuth@-2")]
    assert spec.circular and spec.unit == "deg" and data.specs[names.index("T@-2")].unit == "K"


def test_sample_depth_interpolates_the_azimuth_through_180():
    lt = np.array([0.0, -1.0])
    got = sample_depth(np.array([[176.0, 4.0]]), lt, -0.5, period=180.0)
    assert got[0] == pytest.approx(0.0, abs=1e-9) or got[0] == pytest.approx(180.0, abs=1e-9)  # not 90
    np.testing.assert_allclose(sample_depth(np.array([[10.0, 20.0]]), lt, -0.25), [12.5])
    assert sample_depth(np.array([[1.0, 2.0]]), lt, -2.0) is None  # outside the depths


@pytest.fixture(scope="module")
def sir_model(stratified, tmp_path_factory):
    obs, res = stratified
    out = tmp_path_factory.mktemp("sir_model") / "sir.pt"
    train_model([str(obs)], [str(res)], out, settings={"epochs": 3}, threads=1)
    return out


def test_predict_then_previous_round_trips_the_node_columns(stratified, sir_model, tmp_path):
    obs, _ = stratified
    model = load_model(sir_model)
    guess = tmp_path / "guess.h5"
    sir = get_backend("sir", {"executable": str(DOUBLE)})
    predict_observation(obs, sir_model, guess, threads=1, columns=sir.init_columns)
    o = open_observation(obs)
    stokes = o.read_pixels(0, o.npix)
    pred = model.predict(stokes)
    prov = get_provider("previous", {"file": str(guess)}).bind(sir)
    prov.check_observation((o.ny, o.nx))
    init = prov.initial_guess(stokes, o.wavelength, start=0, stop=o.npix)
    cols = sir.init_columns
    assert init.shape == (o.npix, len(cols))
    for j, c in enumerate(model.parameters):  # every predicted column back in its place (float32 file)
        np.testing.assert_allclose(init[:, cols.index(c)], pred[:, j], rtol=1e-6, atol=1e-9 if "azimuth" in c else 0,
                                   err_msg=c)
    for c in ("T", "Pe", "B", "azimuth"):  # plain names of stratified quantities: not given (the nodes are)
        assert np.isnan(init[:, cols.index(c)]).all(), c
    # a run with other seed nodes reads the same file linearly in log tau between its nodes
    other = get_backend("sir", {"executable": str(DOUBLE), "seed_nodes": [-3.5, -0.5]})
    init2 = get_provider("previous", {"file": str(guess)}).bind(other).initial_guess(stokes, o.wavelength, start=0,
                                                                                    stop=o.npix)
    t = init2[:, other.init_columns.index("T@-0.5")]
    np.testing.assert_allclose(t, 0.5 * (pred[:, model.parameters.index("T@0")]
                                         + pred[:, model.parameters.index("T@-1")]), rtol=1e-6)


def test_a_model_of_one_backend_is_refused_for_the_other(stratified, sir_model, tmp_path):
    obs, _ = stratified
    me_res = tmp_path / "me.h5"
    assert main(["invert", "--input", str(obs), "--out", str(me_res), "--cluster", "serial", "--progress", "none",
                 "-q"]) == 0
    me_model = tmp_path / "me.pt"
    train_model([str(obs)], [str(me_res)], me_model, settings={"epochs": 1}, threads=1)
    sir = get_backend("sir", {"executable": str(DOUBLE)})
    me = get_backend("me", {"lines": ["FeI_6301", "FeI_6302"]})
    with pytest.raises(ModelMismatchError, match=r"predicts \['doppler_width', 'eta0', 'damping', 'S0', 'S1'\], "
                                                 r"which the run does not take"):
        load_model(me_model).check_compatible(where="backend 'sir'", columns=sir.init_columns)
    with pytest.raises(ModelMismatchError, match=r"predicts \['vmac', 'filling_factor', 'stray_light', 'T@-4'.*"
                                                 r"which the run does not take and lacks \['B', 'inclination'"):
        load_model(sir_model).check_compatible(where="backend 'me'", columns=me.init_columns)
    load_model(sir_model).check_compatible(where="backend 'sir'", columns=sir.init_columns)  # its own: fine
    load_model(me_model).check_compatible(where="backend 'me'", columns=me.init_columns)
    with pytest.raises(ModelMismatchError, match="which the run does not take"):
        predict_observation(obs, me_model, tmp_path / "g.h5", threads=1, columns=sir.init_columns)
    assert not (tmp_path / "g.h5").exists()
    # --init cnn: the ME model on a SIR run is exit 2, nothing written
    rc = main(["invert", "--input", str(obs), "--out", str(tmp_path / "x.h5"), "--cluster", "serial", "--backend",
               "sir", "-B", f"executable={DOUBLE}", "--init", "cnn", "-I", f"model={me_model}", "--progress", "none",
               "-q"])
    assert rc == 2 and not (tmp_path / "x.h5").exists()


def test_cli_train_and_predict_on_a_sir_result(stratified, tmp_path):
    obs, res = stratified
    m = tmp_path / "m.pt"
    assert main(["train", "-i", str(obs), "-r", str(res), "-o", str(m), "--epochs", "1", "--threads", "1",
                 "-q"]) == 0
    assert main(["predict", "-i", str(obs), "-m", str(m), "-o", str(tmp_path / "g.h5"), "-q"]) == 0
    with h5py.File(tmp_path / "g.h5") as g:
        assert g["params/T"].shape == (5, 6, 6) and json.loads(g.attrs["stratified"]) == [
            "T", "vmic", "B", "vlos", "inclination", "azimuth"]


@pytest.mark.external
def test_real_sir_assist_loop_on_a_few_pixels(shared_data, tmp_path):
    """The real SIR (``STOKESFLOW_SIR``): the loop on a 4 x 5 crop of the shared SIR sample (penumbra and
    plage, rows 4-7, columns 10-14), every pixel in the subset (the CNN needs 20 good fits): every phase runs
    with the real code (the ME seed merged into the network's guesses), every pixel is fitted, each pixel's SIR
    run starts from its guess. No accuracy
    figure: a 3-epoch network on 20 pixels is a rough start (measured: assisted median chi2 466 against the
    reference's 26); the loop's accuracy is measured on a 16 x 16 field (README)."""
    from conftest import require_external_code

    from stokesflow.backends.sir.backend import ENV_VAR, SIRBackend

    require_external_code(ENV_VAR, SIRBackend, "SIR")
    with h5py.File(shared_data / "sir_hinode_sample.h5") as f:
        stokes = f["stokes"][4:8, 10:15]
        attrs = {k: f.attrs[k] for k in ("lines", "noise", "instrument")}
        write_observation(tmp_path / "obs.h5", stokes, f["wavelength"][:], attrs,
                          {"B": f["truth/B"][4:8, 10:15]})
    d = tmp_path / "loop"
    data = run_assist(tmp_path / "obs.h5", d, AssistSettings(
        subset=1.0, clusters=2, epochs=3, threads=1, cluster={"kind": "serial"}, progress="none", report=False,
        backend="sir", me_seed="merge"))
    assert data["ran"] == ["subset", "reference", "train", "me_seed", "predict", "assisted"]
    for f in ("subset.h5", "assisted.h5"):
        assert (read_result(d / f).status == 0).all(), f
    assert _strategy(d / "assisted.h5") == "assisted_me"
    assert data["lm_iterations"]["assisted"] < data["lm_iterations"]["reference"]
    assert np.isfinite(data["chi2"]["assisted"]["median"])
    assert json.loads(inspect_result(d / "assisted.h5")["fingerprint_json"])["init"]["options"]["file"] == str(
        d / "guess.h5")


def test_cnn_provider_places_a_sir_models_columns_at_the_runs_init_columns(stratified, sir_model, tmp_path):
    """``--init cnn -I model=sir.pt`` on a SIR run: each model column lands at its init column, the others are
    NaN (not given); the SIR double then doubles the guessed B, so the result's B at a node is 2 x the guess."""
    obs, _ = stratified
    model = load_model(sir_model)
    sir = get_backend("sir", {"executable": str(DOUBLE)})
    o = open_observation(obs)
    stokes = o.read_pixels(0, o.npix)
    prov = get_provider("cnn", {"model": str(sir_model)}).bind(sir)
    init = prov.initial_guess(stokes, o.wavelength, start=0, stop=o.npix)
    cols, pred = sir.init_columns, model.predict(stokes)
    assert init.shape == (o.npix, len(cols))
    for j, c in enumerate(model.parameters):
        np.testing.assert_array_equal(init[:, cols.index(c)], pred[:, j], err_msg=c)
    for c in set(cols) - set(model.parameters):
        assert np.isnan(init[:, cols.index(c)]).all(), c
    small = _observation(tmp_path / "small.h5", 1, 2, seed=5)  # end to end through the CLI on two pixels
    out = tmp_path / "r.h5"
    assert main(["invert", "--input", str(small), "--out", str(out), "--cluster", "serial", "--backend", "sir",
                 "-B", f"executable={DOUBLE}", "-B", "strategy=assisted", "--init", "cnn", "-I",
                 f"model={sir_model}", "--progress", "none", "-q"]) == 0
    with h5py.File(out) as h5:
        lt, b = h5["log_tau"][()], h5["params/B"][()].reshape(2, -1)
    k = int(np.argmin(np.abs(lt)))
    assert abs(lt[k]) < 1e-6  # HSRA has the node log tau = 0 on its grid
    guess_b0 = model.predict(open_observation(small).read_pixels(0, 2))[:, model.parameters.index("B@0")]
    np.testing.assert_allclose(b[:, k], 2.0 * np.maximum(guess_b0, 10.0), rtol=1e-3)  # float32 file


_SEEDED = ("B", "inclination", "azimuth", "vlos")  # the SIR backend's seed_parameters


def test_assist_sir_me_seed_reaches_the_short_phase(obs, tmp_path):
    """``me_seed="merge"``: the ME result of the whole field (phase ``me_seed``) replaces the network's B,
    inclination, azimuth and vlos at every node of ``guess.h5`` (the network's own guesses stay in
    ``network_guess.h5``, its T and the rest are kept), and the short phase starts from it: the double
    doubles the guess model's B, so the assisted B is 2 x the ME B at every depth."""
    from stokesflow.orchestrator.predict import seed_guess

    d = tmp_path / "loop"
    data = run_assist(obs, d, _settings(me_seed="merge", baseline=True))
    assert data["ran"] == ["subset", "reference", "train", "me_seed", "predict", "assisted", "baseline"]
    assert data["arguments"]["me_seed"] == "merge"
    me = read_result(d / "me_seed.h5")
    assert json.loads(inspect_result(d / "me_seed.h5")["fingerprint_json"])["backend"] == "me"
    usable = ~np.isin(me.status.reshape(-1), (2, 3, 255))
    assert usable.sum() == 23 and not usable[5]  # every pixel but the NaN one
    with h5py.File(d / "guess.h5") as g, h5py.File(d / "network_guess.h5") as n:
        assert json.loads(g.attrs["seeded"]) == list(_SEEDED)
        for name in _SEEDED:  # seeded at every node where the ME fit is usable (both float32: exact)
            got = g[f"params/{name}"][()].reshape(24, -1)
            want = me.params[name].reshape(-1).astype(np.float32)
            np.testing.assert_array_equal(got[usable], np.repeat(want[usable, None], got.shape[1], axis=1),
                                          err_msg=name)
            np.testing.assert_array_equal(got[~usable], n[f"params/{name}"][()].reshape(24, -1)[~usable])
        for name in ("T", "vmic", "vmac"):  # the network's, unchanged
            np.testing.assert_array_equal(g[f"params/{name}"][()], n[f"params/{name}"][()], err_msg=name)
    with h5py.File(d / "assisted.h5") as a:
        b = a["params/B"][()].reshape(24, -1)
        assert (a["status"][()].reshape(-1)[usable] == 0).all()
    want_b = 2.0 * np.maximum(me.params["B"].reshape(-1)[usable], 10.0)  # SIR's B floor, then the double's 2x
    np.testing.assert_allclose(b[usable], np.repeat(want_b[:, None], b.shape[1], axis=1), rtol=1e-4)  # .mod text
    assert json.loads(inspect_result(d / "assisted.h5")["fingerprint_json"])["init"]["options"]["file"] == str(
        d / "guess.h5")
    ph = data["phases"]
    assert ph["me_seed"] > 0 and data["speedup"]["wall_assisted"] == pytest.approx(
        ph["baseline"] / (ph["assisted"] + ph["me_seed"]), rel=1e-12)
    assert data["loop_seconds"] == pytest.approx(sum(ph[p] for p in ph if p != "baseline"), rel=1e-12)
    assert "network_guess" in data["agreement_with_baseline"] and data["predict"]["me_seed"]["pixels"] == 23
    assert run_assist(obs, d, _settings(me_seed="merge", baseline=True))["ran"] == []  # resumed: nothing to redo

    # a pixel whose ME fit failed (status 2) keeps the network's guess; the rest is seeded
    bad = tmp_path / "me_bad.h5"
    bad.write_bytes((d / "me_seed.h5").read_bytes())
    with h5py.File(bad, "r+") as h5:
        st = h5["status"][()]
        st.reshape(-1)[0] = 2
        h5["status"][...] = st
    sir = get_backend("sir", {"executable": str(DOUBLE)})
    out = seed_guess(d / "network_guess.h5", bad, tmp_path / "merged.h5", sir)
    assert out["pixels"] == 22 and out["parameters"] == list(_SEEDED)
    with h5py.File(tmp_path / "merged.h5") as m, h5py.File(d / "network_guess.h5") as n, h5py.File(d / "guess.h5") as g:
        np.testing.assert_array_equal(m["params/B"][0, 0], n["params/B"][0, 0])
        np.testing.assert_array_equal(m["params/B"][0, 1], g["params/B"][0, 1])
    from stokesflow.orchestrator.errors import OrchestratorError

    with pytest.raises(OrchestratorError, match="is the guess file itself"):
        seed_guess(d / "network_guess.h5", bad, d / "network_guess.h5", sir)


def test_assist_sir_me_seed_alone_starts_the_short_phase_from_the_me_result(obs, tmp_path):
    """``me_seed="alone"``: the short phase starts from ``me_seed.h5`` itself (T, vmic, vmac from the guess
    model); ``guess.h5`` is the network's own."""
    d = tmp_path / "loop"
    data = run_assist(obs, d, _settings(me_seed="alone", chunk_pixels=4))
    assert data["ran"] == ["subset", "reference", "train", "me_seed", "predict", "assisted"]
    assert json.loads(inspect_result(d / "assisted.h5")["fingerprint_json"])["init"]["options"]["file"] == str(
        d / "me_seed.h5")
    assert not (d / "network_guess.h5").exists() and "network_guess" not in data.get("truth", {})
    me = read_result(d / "me_seed.h5")
    usable = ~np.isin(me.status.reshape(-1), (2, 3, 255))
    with h5py.File(d / "assisted.h5") as a:
        b = a["params/B"][()].reshape(24, -1)
    want_b = 2.0 * np.maximum(me.params["B"].reshape(-1)[usable], 10.0)
    np.testing.assert_allclose(b[usable], np.repeat(want_b[:, None], b.shape[1], axis=1), rtol=1e-4)
    with h5py.File(d / "guess.h5") as g:
        assert "seeded" not in g.attrs


def test_assist_sir_me_seed_off_runs_no_me_phase(obs, tmp_path):
    """``me_seed="off"``: no ME inversion, ``guess.h5`` is the network's own (its B, learned from the double's
    2 x HSRA = 800 G references, is 800 G: no ME value)."""
    d = tmp_path / "loop"
    data = run_assist(obs, d, _settings(me_seed="off"))
    assert data["ran"] == ["subset", "reference", "train", "predict", "assisted"] and "me_seed" not in data["phases"]
    assert not (d / "me_seed.h5").exists() and not (d / "network_guess.h5").exists()
    with h5py.File(d / "guess.h5") as g:
        assert "seeded" not in g.attrs
        np.testing.assert_allclose(np.delete(g["params/B"][()].reshape(24, -1), 5, axis=0), 800.0, rtol=1e-6)


def test_me_seed_on_a_backend_without_seed_parameters_is_refused(obs, tmp_path):
    from stokesflow.orchestrator.errors import OrchestratorError

    with pytest.raises(OrchestratorError, match=r"me_seed='merge': backend 'me' takes no seed .* use me_seed='off'"):
        run_assist(obs, tmp_path / "loop", AssistSettings(me_seed="merge", cluster={"kind": "serial"}, report=False))
    assert not (tmp_path / "loop").exists()
    with pytest.raises(OrchestratorError, match=r"me_seed must be one of off, merge, alone, got True"):
        AssistSettings(backend="sir", me_seed=True)


def test_assist_sir_interrupted_in_the_me_seed_phase_resumes_it(obs, tmp_path, monkeypatch):
    """The ``me_seed`` phase dies at its 5th chunk (6 chunks of 4 pixels; up to 3 in flight per serial worker):
    a rerun finishes that phase's missing chunks only, without redoing the reference, and goes on."""
    calls = {"n": 0}
    real = run_module.invert_chunk

    def dies_in_me_seed(ctx, index, start, stop):
        if ctx.backend.name == "me":
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
        return real(ctx, index, start, stop)

    d = tmp_path / "loop"
    monkeypatch.setattr(run_module, "invert_chunk", dies_in_me_seed)
    with pytest.raises(KeyboardInterrupt):
        run_assist(obs, d, _settings(me_seed="alone", chunk_pixels=4))
    assert json.loads((d / "summary.json").read_text())["done"] == ["subset", "reference", "train"]
    info = inspect_result(d / "me_seed.h5")
    assert 0 < info["n_done"] < 6 and not info["complete"]
    ref_mtime = (d / "subset.h5").stat().st_mtime_ns
    monkeypatch.setattr(run_module, "invert_chunk", real)
    data = run_assist(obs, d, _settings(me_seed="alone", chunk_pixels=4))
    assert data["ran"] == ["me_seed", "predict", "assisted"]
    assert (d / "subset.h5").stat().st_mtime_ns == ref_mtime
    me = read_result(d / "me_seed.h5")
    assert me.done.all() and me.attrs["runs"] == 2 and me.attrs["chunks_computed"] == 6 - info["n_done"]
