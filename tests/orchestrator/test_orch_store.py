"""Result file layout, chunk writes at flat positions, resume checks."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from stokesflow.backends.base import ChunkResult, ParameterSpec
from stokesflow.orchestrator.plan import plan_chunks
from stokesflow.orchestrator.store import ChunkOutput, ResultStore, ResumeError, StoreError, read_result

SPECS = (ParameterSpec("B", "G", 0.0, 5000.0, 1000.0), ParameterSpec("azimuth", "deg", 0.0, 180.0, 90.0, True))
FP = {"observation": "hdf5:abc", "backend": "me", "backend_options": {"max_iter": 50}, "chunk_pixels": 7}


def _output(plan, i, value_of):
    c = plan.chunk(i)
    flat = np.arange(c.start, c.stop)
    params = np.stack([value_of(flat), -value_of(flat)], axis=1).astype(np.float32)
    result = ChunkResult(
        names=("B", "azimuth"), params=params, sigma=params / 10, chi2=value_of(flat).astype(np.float32),
        n_iter=(flat % 7).astype(np.int32), status=(flat % 3).astype(np.uint8),
    )
    return ChunkOutput(index=i, start=c.start, stop=c.stop, result=result, seconds={"invert": 0.5}, worker="test:1")


def test_layout_and_fill_values(tmp_path):
    plan = plan_chunks(5, 6, 7)
    path = tmp_path / "r.h5"
    with ResultStore.create(path, plan=plan, parameters=SPECS, fingerprint=FP, attrs={"config": "x = 1\n"}, nw=6):
        pass
    with h5py.File(path, "r") as h5:
        for group in ("params", "sigma"):
            assert sorted(h5[group]) == ["B", "azimuth"]
            assert h5[group]["B"].shape == (5, 6) and h5[group]["B"].dtype == np.float32
            assert np.isnan(h5[group]["B"][:]).all()
        assert h5["params/B"].attrs["unit"] == "G"
        assert h5["status"].dtype == np.uint8 and (h5["status"][:] == 255).all()
        assert h5["n_iter"].dtype == np.int32 and h5["chi2"].dtype == np.float32
        assert h5["synthetic"].shape == (5, 6, 4, 6)
        assert h5["chunks/done"].shape == (5,) and not h5["chunks/done"][:].any()
        np.testing.assert_array_equal(h5["chunks/start"][:], [0, 7, 14, 21, 28])
        np.testing.assert_array_equal(h5["chunks/stop"][:], [7, 14, 21, 28, 30])
        assert [e for e in h5["chunks/error"].asstr()[:]] == [""] * 5
        a = h5.attrs
        assert a["config"] == "x = 1\n" and a["complete"] == False  # noqa: E712 - numpy bool
        assert json.loads(a["fingerprint_json"]) == json.loads(json.dumps(FP))
        assert len(a["fingerprint"]) == 64
        for phase in ("plan", "setup", "invert", "write", "total"):
            assert f"time_{phase}_s" in a
        # crash safety: every dataset's space is allocated when the file is created
        for name in ("params/B", "status", "chunks/done", "synthetic"):
            assert h5[name].id.get_storage_size() == h5[name].nbytes


def test_chunks_land_at_their_flat_positions(tmp_path):
    plan = plan_chunks(5, 6, 7)  # chunks straddle rows: partial first and last rows
    path = tmp_path / "r.h5"
    value = lambda flat: flat * 1.5 + 1  # noqa: E731
    with ResultStore.create(path, plan=plan, parameters=SPECS, fingerprint=FP, attrs={}) as store:
        for i in (3, 0, 4, 1):  # out of order, chunk 2 missing
            store.write_chunk(_output(plan, i, value))
        store.record_error(2, "RuntimeError: boom")
        store.finalize({"time_total_s": 1.0})
        assert store.status_counts()[255] == 7
    r = read_result(path)
    flat = np.arange(30, dtype=np.float64)
    expected = (flat * 1.5 + 1).reshape(5, 6)
    missing = np.zeros(30, bool)
    missing[14:21] = True
    missing = missing.reshape(5, 6)
    np.testing.assert_array_equal(r.params["B"][~missing], expected[~missing].astype(np.float32))
    np.testing.assert_array_equal(r.params["azimuth"][~missing], -expected[~missing].astype(np.float32))
    assert np.isnan(r.params["B"][missing]).all()
    assert (r.status[missing] == 255).all()
    np.testing.assert_array_equal(r.n_iter[~missing], (flat.astype(int) % 7).reshape(5, 6)[~missing])
    np.testing.assert_array_equal(r.done, [True, True, False, True, True])
    assert r.errors == {2: "RuntimeError: boom"}
    assert r.attrs["complete"] is False and r.attrs["chunks_computed"] == 4 and r.attrs["runs"] == 1


def test_wrong_chunk_is_refused(tmp_path):
    plan = plan_chunks(5, 6, 7)
    with ResultStore.create(tmp_path / "r.h5", plan=plan, parameters=SPECS, fingerprint=FP, attrs={}) as store:
        out = _output(plan, 1, lambda f: f * 1.0)
        out.start += 1
        with pytest.raises(StoreError, match="chunk 1"):
            store.write_chunk(out)


def test_existing_file_refused_without_overwrite(tmp_path):
    plan = plan_chunks(2, 2, 2)
    path = tmp_path / "r.h5"
    path.write_bytes(b"something")
    with pytest.raises(StoreError, match="already exists.*--resume"):
        ResultStore.create(path, plan=plan, parameters=SPECS, fingerprint=FP, attrs={})
    ResultStore.create(path, plan=plan, parameters=SPECS, fingerprint=FP, attrs={}, overwrite=True).close()
    assert h5py.is_hdf5(path)


def test_resume_checks(tmp_path):
    plan = plan_chunks(5, 6, 7)
    path = tmp_path / "r.h5"
    with ResultStore.create(path, plan=plan, parameters=SPECS, fingerprint=FP, attrs={}) as store:
        store.write_chunk(_output(plan, 2, lambda f: f * 1.0))
    plan2, done = ResultStore.check_resume(path, FP)
    assert plan2 == plan
    np.testing.assert_array_equal(done, [False, False, True, False, False])
    other = dict(FP, backend_options={"max_iter": 10}, chunk_pixels=8)
    with pytest.raises(ResumeError) as err:
        ResultStore.check_resume(path, other)
    msg = str(err.value)
    assert str(path) in msg
    assert "backend_options.max_iter: 50 in the file, 10 in this run" in msg
    assert "chunk_pixels: 7 in the file, 8 in this run" in msg
    with pytest.raises(ResumeError, match="does not exist"):
        ResultStore.check_resume(tmp_path / "none.h5", FP)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as h5:
        h5["x"] = 1
    with pytest.raises(ResumeError, match="not a stokesflow result file"):
        ResultStore.check_resume(plain, FP)
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(ResumeError, match="cannot read result file"):
        ResultStore.check_resume(text, FP)
    # resume then finish: the done chunk stays, the others are written
    with ResultStore.resume(path, fingerprint=FP, parameters=SPECS) as store:
        assert [c.index for c in store.pending()] == [0, 1, 3, 4]
        for c in store.pending():
            store.write_chunk(_output(plan, c.index, lambda f: f * 1.0))
        store.finalize({})
    r = read_result(path)
    assert r.attrs["complete"] is True and r.done.all()
    np.testing.assert_array_equal(r.params["B"].ravel(), np.arange(30, dtype=np.float32))


def test_extra_rows_are_created_with_nan_and_checked(tmp_path):
    """ResultStore.write_extra_rows: a per-pixel extra dataset (the U-Net's /interval/<name>)."""
    import h5py
    import pytest

    from stokesflow.orchestrator.plan import plan_chunks
    from stokesflow.orchestrator.store import ResultStore, StoreError

    plan = plan_chunks(3, 4, 4)
    with ResultStore.create(tmp_path / "r.h5", plan=plan, parameters=SPECS, fingerprint=FP, attrs={}) as store:
        store.write_extra_rows("interval/B", 1, np.ones((1, 4, 2)), {"level": 0.9})
        with pytest.raises(StoreError, match="do not fit"):
            store.write_extra_rows("interval/B", 2, np.ones((2, 4, 2)))
    with h5py.File(tmp_path / "r.h5", "r") as h5:
        ds = h5["interval/B"]
        assert ds.shape == (3, 4, 2) and ds.attrs["level"] == 0.9
        assert np.isnan(ds[0]).all() and (ds[1] == 1).all() and np.isnan(ds[2]).all()
