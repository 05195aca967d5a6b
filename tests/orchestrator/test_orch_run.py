"""run_inversion in-process (serial executor, real ME backend): results, NaN pixels,
bad input before any work, partial runs, resume checks."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _orchestrator_doubles import HugeSigmaDouble, PoisonDouble, SmallChunkDouble  # noqa: E402
from _orchestrator_helpers import HMI_WAVELENGTH, make_config, write_hmi_observation  # noqa: E402

import stokesflow.clusters as clusters  # noqa: E402
from stokesflow.backends import BackendError, get_backend  # noqa: E402
from stokesflow.nn_init.providers import InitError  # noqa: E402
from stokesflow.orchestrator.config import tomllib  # noqa: E402
from stokesflow.orchestrator.errors import ObservationError  # noqa: E402
from stokesflow.orchestrator.run import run_inversion  # noqa: E402
from stokesflow.orchestrator.store import ResumeError, StoreError, read_result  # noqa: E402

NY, NX, K = 8, 12, 10  # 96 pixels, 10 chunks, the last one of 6 pixels; chunks straddle rows


@pytest.fixture(scope="module")
def obs(tmp_path_factory) -> Path:
    return write_hmi_observation(tmp_path_factory.mktemp("obs") / "obs.h5", NY, NX, nan_pixels=(5, 40))


@pytest.fixture
def no_cluster(monkeypatch):
    """Fail the test if an executor is opened (for errors that must come before any work)."""

    def refuse(spec):
        raise AssertionError("the cluster was started before the bad input was detected")

    monkeypatch.setattr(clusters, "open_executor", refuse)


def _direct(obs: Path, init=None, options=None) -> tuple[np.ndarray, np.ndarray]:
    """Reference: the ME backend called chunk by chunk on the same pixels, no orchestrator."""
    from stokesflow.orchestrator.io import open_observation

    o = open_observation(obs)
    me = get_backend("me", options).for_observation(o.meta)
    params = np.full((NY * NX, 9), np.nan, np.float32)
    status = np.full(NY * NX, 3, np.uint8)
    for start in range(0, NY * NX, K):
        stop = min(start + K, NY * NX)
        st = o.read_pixels(start, stop)
        good = np.isfinite(st).all(axis=(1, 2))
        ini = None if init is None else np.tile(init, (int(good.sum()), 1))
        res = me.invert(st[good], o.wavelength, ini)
        idx = np.arange(start, stop)[good]
        params[idx] = res.params
        status[idx] = res.status
    return params.reshape(NY, NX, 9), status.reshape(NY, NX)


def test_serial_run_equals_direct_backend_calls(obs, tmp_path):
    out = tmp_path / "r.h5"
    cfg = make_config(obs, out, run={"chunk_pixels": K})
    summary = run_inversion(cfg)
    assert summary.complete and not summary.partial and not summary.failed
    assert (summary.n_chunks, summary.chunks_computed, summary.chunks_skipped) == (10, 10, 0)
    assert summary.pixels_by_status["skipped (bad input)"] == 2
    assert sum(summary.pixels_by_status.values()) == NY * NX
    r = read_result(out)
    params, status = _direct(obs)
    names = get_backend("me").parameter_names
    for j, name in enumerate(names):
        np.testing.assert_array_equal(r.params[name], params[..., j], err_msg=name)
    np.testing.assert_array_equal(r.status, status)
    # NaN pixels: skipped with status 3 and NaN parameters
    assert r.status.ravel()[5] == 3 and r.status.ravel()[40] == 3
    assert np.isnan(r.params["B"].ravel()[[5, 40]]).all()
    assert (r.status != 255).all() and r.done.all()
    a = r.attrs
    assert a["complete"] is True and a["backend"] == "me" and a["init"] == "default"
    assert tomllib.loads(a["config"])["run"]["chunk_pixels"] == K
    versions = json.loads(a["versions"])
    for pkg in ("stokesflow", "numpy", "numba", "dask", "h5py", "python"):
        assert pkg in versions
    assert a["time_total_s"] > 0 and a["time_invert_s"] > 0 and a["chunks_computed"] == 10
    assert json.loads(a["fingerprint_json"])["backend_options"]["lines"] == ["FeI_6173"]


def test_pixels_without_light_are_skipped_as_bad_input_and_a_dark_field_is_refused(tmp_path):
    """Zero-padded pixels (Stokes all 0) and pixels whose Stokes I is nowhere positive are not
    observations: status 3 with NaN maps, as NaN pixels; they take no part in the noise estimate."""
    zero = write_hmi_observation(tmp_path / "zero.h5", 4, 6, zero_pixels=(0, 1, 2, 7), state_noise=False)
    with h5py.File(zero, "r+") as h5:  # a pixel with Q, U, V but no positive I
        h5["stokes"][3, 5, 0] = -h5["stokes"][3, 5, 0]
    run_inversion(make_config(zero, tmp_path / "r.h5"))
    r = read_result(tmp_path / "r.h5")
    skipped = np.flatnonzero(r.status.ravel() == 3)
    np.testing.assert_array_equal(skipped, [0, 1, 2, 7, 23])
    assert np.isnan(r.params["B"].ravel()[skipped]).all() and np.isfinite(r.params["B"].ravel()[3:7]).all()
    assert r.attrs["noise"][0] == pytest.approx(1e-3, rel=0.3)  # estimated from the lit pixels only
    dark = write_hmi_observation(tmp_path / "dark.h5", 2, 3, zero_pixels=tuple(range(6)))
    with pytest.raises(ObservationError, match="no valid pixel: .* NaN or inf in some Stokes value, or no "
                                               "positive Stokes I, so there is nothing to invert"):
        run_inversion(make_config(dark, tmp_path / "d.h5"))


def test_stokes_not_in_continuum_units_are_refused_before_any_work(tmp_path, no_cluster):
    counts = write_hmi_observation(tmp_path / "counts.h5", 3, 4)
    with h5py.File(counts, "r+") as h5:  # DN: the quiet-Sun continuum about 1e4
        h5["stokes"][...] = 1e4 * h5["stokes"][...]
    for stated in (True, False):  # the noise stated (a small sample) or estimated
        with h5py.File(counts, "r+") as h5:
            if stated:
                h5.attrs["noise"] = 10.0
            else:
                del h5.attrs["noise"]
        with pytest.raises(ObservationError, match=r"counts.h5: Stokes I is not in continuum units: the median "
                                                   r"of the pixels' highest I is 1\.\d+e\+04"):
            run_inversion(make_config(counts, tmp_path / "r.h5"))
    assert not (tmp_path / "r.h5").exists()


def test_constant_init_reaches_the_backend(obs, tmp_path):
    # A deliberately wrong start (opposite polarity, strong field, redshift) with one start and
    # few iterations: the fit then depends on where it starts, so the result equals the direct
    # calls from that start and differs from the classical estimates' (init "default").
    out = tmp_path / "r.h5"
    vector = [4000.0, 170.0, 150.0, 5.0, 55.0, 40.0, 0.8, 0.1, 0.4]
    names = get_backend("me").parameter_names
    me = {"n_starts": 1, "max_iter": 3}
    if "max_starts" in {f.name for f in dataclasses.fields(get_backend("me").options)}:
        me["max_starts"] = 1  # no adaptive extra starts either
    cfg = make_config(obs, out, run={"chunk_pixels": K, "init": "constant"},
                      init={"constant": dict(zip(names, vector))}, backend={"me": me})
    run_inversion(cfg)
    r = read_result(out)
    params, status = _direct(obs, init=np.array(vector), options=me)
    np.testing.assert_array_equal(r.params["B"], params[..., 0])
    np.testing.assert_array_equal(r.status, status)
    assert r.attrs["init"] == "constant"
    from_default, _ = _direct(obs, options=me)
    valid = np.isfinite(params[..., 0])
    assert np.median(np.abs(params[..., 0] - from_default[..., 0])[valid]) > 100.0  # G: the start matters here


def _h5_with(path: Path, stokes_shape, nw_wave, lines="FeI_6173"):
    with h5py.File(path, "w") as h5:
        h5["stokes"] = np.ones(stokes_shape, np.float32)
        h5["wavelength"] = HMI_WAVELENGTH[:nw_wave] if nw_wave <= 6 else np.linspace(6172, 6174, nw_wave)
        h5.attrs["lines"] = lines
        h5.attrs["instrument"] = "hmi"
    return path


@pytest.mark.parametrize(
    "case, exc, fragments",
    [
        ("missing", ObservationError, ["missing.h5", "not found"]),
        ("not-hdf5", ObservationError, ["text.h5"]),
        ("wrong-shape", ObservationError, ["shape.h5", "4"]),
        ("wrong-wave-count", ObservationError, ["wave.h5", "5", "6"]),
        ("unknown-line", BackendError, ["FeI_9999"]),
        ("unknown-backend", BackendError, ["nope", "me"]),
        ("unknown-init", InitError, ["unet"]),
    ],
)
def test_bad_input_fails_before_any_work(case, exc, fragments, obs, tmp_path, no_cluster):
    out = tmp_path / "r.h5"
    path, extra = obs, {}
    if case == "missing":
        path = tmp_path / "missing.h5"
    elif case == "not-hdf5":
        path = tmp_path / "text.h5"
        path.write_text("this is not HDF5")
    elif case == "wrong-shape":
        path = _h5_with(tmp_path / "shape.h5", (4, 5, 3, 6), 6)
    elif case == "wrong-wave-count":
        path = _h5_with(tmp_path / "wave.h5", (4, 5, 4, 6), 5)
    elif case == "unknown-line":
        path = _h5_with(tmp_path / "line.h5", (4, 5, 4, 6), 6, lines="FeI_9999")
    elif case == "unknown-backend":
        extra = {"run": {"backend": "nope"}}
    elif case == "unknown-init":
        extra = {"run": {"init": "unet"}}
    with pytest.raises(exc) as err:
        run_inversion(make_config(path, out, **extra))
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))
    assert not out.exists()


def test_overwrite_onto_an_input_or_a_folder_is_refused_before_any_work(obs, tmp_path, no_cluster):
    import shutil

    mine = tmp_path / "obs.h5"
    shutil.copy(obs, mine)
    before = mine.read_bytes()
    for out in (mine, tmp_path / "." / "obs.h5"):  # the same file under another name too
        with pytest.raises(StoreError, match="is the input .*writing it would destroy the input; choose another --out"):
            run_inversion(make_config(mine, out, output={"overwrite": True}))
    assert mine.read_bytes() == before
    # the file a provider starts from is an input as well
    res = tmp_path / "res.h5"
    res.write_bytes(b"a result")
    with pytest.raises(StoreError, match="destroy the input"):
        run_inversion(make_config(mine, res, output={"overwrite": True}, run={"init": "previous"},
                                  init={"previous": {"file": str(res)}}))
    assert res.read_bytes() == b"a result"
    (tmp_path / "folder.h5").mkdir()
    with pytest.raises(StoreError, match="it is a folder; give a file name"):
        run_inversion(make_config(mine, tmp_path / "folder.h5", output={"overwrite": True}))


def test_resume_of_a_moved_observation_says_where_the_file_was_written_for(tmp_path, no_cluster):
    (tmp_path / "a").mkdir()
    first = write_hmi_observation(tmp_path / "a" / "obs.h5", 3, 4)
    out = tmp_path / "r.h5"
    run_inversion(make_config(first, out))
    with h5py.File(out, "r+") as h5:  # as a run stopped early leaves it
        h5["chunks/done"][...] = False
        h5.attrs["complete"] = False
    (tmp_path / "b").mkdir()
    moved = first.rename(tmp_path / "b" / "obs.h5")
    with pytest.raises(ResumeError, match=f"the file was written for '{first}': an observation moved or renamed "
                                          "counts as another one, so resume from that path"):
        run_inversion(make_config(moved, out, output={"resume": True}))


def test_existing_output_needs_resume_or_overwrite(obs, tmp_path, monkeypatch):
    out = tmp_path / "r.h5"
    run_inversion(make_config(obs, out, run={"chunk_pixels": 48}))
    with monkeypatch.context() as m:
        m.setattr(clusters, "open_executor", lambda spec: (_ for _ in ()).throw(AssertionError("started")))
        with pytest.raises(StoreError, match="already exists.*--resume"):
            run_inversion(make_config(obs, out, run={"chunk_pixels": 48}))
        # a different configuration is refused on --resume, naming the file and the difference
        with pytest.raises(ResumeError) as err:
            run_inversion(make_config(obs, out, run={"chunk_pixels": 48}, output={"resume": True},
                                      backend={"me": {"max_iter": 7}}))
        msg = str(err.value)
        assert str(out) in msg and "backend_options.max_iter: 50 in the file, 7 in this run" in msg
        with pytest.raises(ResumeError, match="chunk_pixels: 48 in the file, 24 in this run"):
            run_inversion(make_config(obs, out, run={"chunk_pixels": 24}, output={"resume": True}))
        with pytest.raises(ResumeError, match="does not exist"):
            run_inversion(make_config(obs, tmp_path / "none.h5", output={"resume": True}))
        # resuming a complete file says so, starts no cluster and leaves the file untouched
        # (automatic chunking adopts the file's)
        before = (out.read_bytes(), out.stat().st_mtime_ns)
        summary = run_inversion(make_config(obs, out, output={"resume": True}))
        assert summary.already_complete and summary.complete and summary.chunks_computed == 0
        assert summary.chunks_skipped == 2 and "was already complete" in summary.report()
        assert (out.read_bytes(), out.stat().st_mtime_ns) == before
        assert read_result(out).attrs["runs"] == 1
    summary = run_inversion(make_config(obs, out, run={"chunk_pixels": 24}, output={"overwrite": True}))
    assert summary.n_chunks == 4


def test_automatic_chunks_follow_the_backends_plan(obs, tmp_path):
    """ME's plan keeps 96 pixels in one chunk (1024-pixel floor); a backend whose pixels take seconds
    asks for small chunks: ceil(96 / (4 tasks x 2 workers)) = 12 pixels, 8 chunks."""
    me = run_inversion(make_config(obs, tmp_path / "me.h5", cluster={"kind": "serial", "workers": 2}))
    small = run_inversion(make_config(obs, tmp_path / "small.h5", cluster={"kind": "serial", "workers": 2}),
                          backend=SmallChunkDouble())
    assert (me.n_chunks, small.n_chunks) == (1, 8)
    assert read_result(tmp_path / "small.h5").attrs["chunk_pixels"] == 12


def test_deterministic_chunk_failure_gives_partial_result(tmp_path):
    obs = write_hmi_observation(tmp_path / "obs.h5", NY, NX, poison_pixels=(33,))
    out = tmp_path / "r.h5"
    summary = run_inversion(make_config(obs, out, run={"chunk_pixels": K}), backend=PoisonDouble())
    assert summary.partial and set(summary.failed) == {3}
    assert "RuntimeError: poisoned pixel" in summary.failed[3]
    assert "chunk 3 FAILED" in summary.report()
    r = read_result(out)
    assert r.attrs["complete"] is False and r.done.sum() == 9 and not r.done[3]
    assert "poisoned pixel" in r.errors[3] and set(r.errors) == {3}
    assert (r.status.ravel()[30:40] == 255).all()
    assert (r.status.ravel()[:30] != 255).all() and (r.status.ravel()[40:] != 255).all()


def test_values_beyond_float32_are_stored_as_inf_without_warning(obs, tmp_path):
    # regression: an unconstrained parameter's sigma overflowed the float32 cast with a
    # RuntimeWarning (an error under this test configuration) and failed the chunk
    out = tmp_path / "r.h5"
    summary = run_inversion(make_config(obs, out, run={"chunk_pixels": 48}), backend=HugeSigmaDouble())
    assert summary.complete
    r = read_result(out)
    assert np.isinf(r.sigma["B"].ravel()[[0, 48]]).all() and np.isinf(r.chi2.ravel()[[0, 48]]).all()
    assert np.isfinite(r.chi2.ravel()[1])


def test_npy_input_with_declared_axes_gives_the_same_result(obs, tmp_path):
    from stokesflow.orchestrator.cli import main
    from stokesflow.orchestrator.io import open_observation

    o = open_observation(obs)
    cube = o.read_rows(0, NY)  # (ny, nx, 4, nw)
    npy = tmp_path / "cube.npy"
    np.save(npy, np.ascontiguousarray(cube.transpose(2, 3, 0, 1)))  # stokes, wave, y, x
    wl = tmp_path / "wl.txt"
    np.savetxt(wl, o.wavelength, fmt="%.17g")  # exact round trip of float64
    common = ["--cluster", "serial", "--chunk-pixels", str(K), "--progress", "none", "-q"]
    assert main(["invert", "--input", str(obs), "--out", str(tmp_path / "h5.h5"), *common]) == 0
    assert main(["invert", "--input", str(npy), "--axes", "stokes,wave,y,x", "--wavelength", str(wl),
                 "--lines", "FeI_6173", "--noise", "1e-3", "--out", str(tmp_path / "npy.h5"), *common]) == 0
    a, b = read_result(tmp_path / "h5.h5"), read_result(tmp_path / "npy.h5")
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
    np.testing.assert_array_equal(a.status, b.status)


def test_synthetic_profiles_are_stored_on_request(obs, tmp_path):
    out = tmp_path / "r.h5"
    run_inversion(make_config(obs, out, run={"chunk_pixels": 48}, output={"synthetic": True}))
    r = read_result(out)
    assert r.synthetic is not None and r.synthetic.shape == (NY, NX, 4, 6)
    me = get_backend("me", {"lines": ["FeI_6173"]})
    ok = r.status == 0
    params = np.stack([r.params[n][ok] for n in me.parameter_names], axis=1).astype(np.float64)
    expected = me.synthesize(params, HMI_WAVELENGTH)
    # the stored parameters are float32, so the profiles agree to float32 rounding of the inputs
    np.testing.assert_allclose(r.synthetic[ok], expected, rtol=0, atol=2e-5)
    assert np.isnan(r.synthetic[r.status == 3]).all()
