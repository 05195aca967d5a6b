"""The RH runner and backend against TEST DOUBLES of rh15d_ray_pool and mpiexec (tests/backends/rh/doubles).

The rh15d_ray_pool double reproduces RH 1.5D's real failure modes, chosen per column
by its microturbulence: a crash of the run, a FATAL_ERROR with MPI_Abort, exit 0
without output, hanging, and the two that exit 0 with fill values (a column that
did not converge, one that RH gave up on). Each failed pixel must get status 2
with its reason, never fill values, and its neighbours must be unaffected.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from stokesflow.backends import STATUS_BAD_INPUT, STATUS_FAILED, STATUS_OK, get_backend, list_backends
from stokesflow.backends.base import BackendUnavailable, ConfigError
from stokesflow.backends.registry import BUILTIN_BACKENDS, PLANNED_BACKENDS
from stokesflow.backends.rh import io
from stokesflow.backends.rh.backend import CONTINUUM_OFFSET, RHBackend, field_components
from stokesflow.backends.rh.errors import RHError
from stokesflow.backends.rh.runner import ENV_VAR, RunOutcome, rh_command, run_timeout

from _rh_doubles import rh_double  # noqa: E402,F401 - the fixture

WL = 6300.89 + 0.021549 * np.arange(112)  # Hinode/SP-like grid [A, air]
#: vmic [km/s] that makes the double fail its run or its column (m/s at the top of the column / 1000).
MODES = {"crash": 0.9001, "fatal": 0.9002, "missing": 0.9003, "hang": 0.9004, "noconv": 0.9005, "gaveup": 0.9006}


def _params(modes: list[str]) -> dict[str, np.ndarray]:
    n = len(modes)
    vmic = np.array([MODES.get(m, 1.0) for m in modes])
    return {"B": np.full(n, 1000.0), "inclination": np.zeros(n), "azimuth": np.zeros(n), "vlos": np.zeros(n),
            "vmic": vmic}


def _backend(opts: dict, **kw) -> RHBackend:
    return RHBackend({**opts, **kw})


def test_registered_as_builtin_and_listed():
    assert BUILTIN_BACKENDS["rh"] == "stokesflow.backends.rh.backend:RHBackend"
    assert "rh" not in PLANNED_BACKENDS


def test_unavailable_says_why(monkeypatch, rh_double, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    ok, why = list_backends()["rh"]
    assert not ok and ENV_VAR in why and "not bundled" in why
    with pytest.raises(BackendUnavailable, match=ENV_VAR):
        get_backend("rh", {})
    ok, why = RHBackend.is_available({**rh_double, "rh_data": str(tmp_path / "nowhere")})
    assert not ok and "does not exist" in why and "rh_data" in why
    ok, why = RHBackend.is_available({**rh_double, "mpiexec": str(tmp_path / "no-mpiexec")})
    assert not ok and "MPI launcher" in why
    ok, why = RHBackend.is_available(rh_double)  # the double passes the one-pixel trial
    assert ok, why


def test_options_are_checked():
    with pytest.raises(ConfigError, match="at least 2"):
        RHBackend({"ranks": 1})
    with pytest.raises(ConfigError, match="not in atoms"):
        RHBackend({"active": ["CaII.atom"]})
    with pytest.raises(ConfigError, match="unknown option"):
        RHBackend({"nrays": 3})
    with pytest.raises(RHError, match="at least 2"):
        rh_command("mpiexec", "rh15d_ray_pool", 1)
    assert run_timeout(10.0, 5, 3) == 30.0  # 5 columns over 2 working ranks: 3 rounds


def test_synthesis_through_the_double(rh_double):
    b = _backend(rh_double)
    r = b.synthesize_chunk(_params(["ok", "ok"]), WL)
    assert r.status.tolist() == [STATUS_OK, STATUS_OK] and r.errors == {}
    assert r.n_iter.tolist() == [0, 0]  # LTE (no active atom): nothing iterated, whatever RH's map says
    s = r.synthetic
    assert s.shape == (2, 4, WL.size)
    # the double's continuum is 1e-8 W m-2 Hz-1 sr-1 at the continuum point: the profile is normalised to it
    assert s[0, 0, 0] == pytest.approx(1.0, abs=1e-6)
    # its line sits at 630.4235 nm vacuum = 6302.49 A air (RH's formula): the minimum lands there
    assert WL[np.argmin(s[0, 0])] == pytest.approx(6302.49, abs=0.022)
    assert s[0, 0].min() == pytest.approx(0.5, abs=0.05)
    assert s[0, 3, np.argmin(s[0, 0]) - 1] > 0  # V > 0 in the blue wing for B_z > 0
    np.testing.assert_array_equal(r.param("B"), [1000.0, 1000.0])  # constants given are echoed


def test_inputs_written_for_rh(rh_double, monkeypatch):
    """The folder RH would run in: keyword.input selects every column, the atmosphere holds them."""
    import stokesflow.backends.rh.backend as mod

    seen: dict = {}

    def spy(folder, argv, *, timeout, env=None):
        seen["argv"], seen["timeout"] = argv, timeout
        seen["kw"] = io.parse_keywords((folder / "keyword.input").read_text())
        seen["atmos"] = io.read_atmosphere(folder / "atmos.hdf5")
        seen["atoms"] = io.parse_atoms((folder / "atoms.input").read_text())
        seen["wave"] = io.read_wavetable(folder / "wave.table")
        seen["lines"] = io.parse_kurucz((folder / "lines.kurucz").read_text())
        return RunOutcome(False, "spy stops here", 0.0)

    monkeypatch.setattr(mod, "run_rh", spy)
    b = _backend(rh_double, ranks=3, timeout=7.0, isolate_failures=False, keywords={"NRAYS": 3})
    p = {"B": np.array([0.0, 2000.0, 500.0]), "inclination": np.array([0.0, 90.0, 30.0]),
         "azimuth": np.array([0.0, 45.0, 10.0]), "vlos": np.array([1.5, 0.0, -2.0])}
    r = b.synthesize_chunk(p, WL)
    assert r.status.tolist() == [STATUS_FAILED] * 3 and "spy stops here" in r.errors[0]
    assert seen["argv"][1:3] == ["-n", "3"] and seen["argv"][3].endswith("rh15d_ray_pool")
    assert seen["timeout"] == 14.0  # 3 columns over 2 working ranks
    kw = seen["kw"]
    assert (kw["X_START"], kw["X_END"], kw["Y_START"], kw["Y_END"]) == ("0", "3", "0", "1")
    assert kw["N_MAX_ITER"] == "0"  # no active atom: LTE, nothing to iterate
    assert kw["STOKES_MODE"] == "FULL_STOKES" and kw["NRAYS"] == "3" and kw["VACUUM_TO_AIR"] == "FALSE"
    a = seen["atmos"]
    assert a.ncol == 3 and a.nz == b.log_tau.size and np.all(np.diff(a.z, axis=1) < 0)
    np.testing.assert_allclose(a.velocity_z[:, 0], [-1500.0, 0.0, 2000.0])  # + = upflow: -vlos
    bx, by, bz = field_components(p["B"], p["inclination"], p["azimuth"])
    np.testing.assert_allclose(a.B_x[:, 0], bx, atol=1e-12)
    np.testing.assert_allclose(a.B_y[:, 0], by, atol=1e-12)
    np.testing.assert_allclose(a.B_z[:, 0], bz, atol=1e-12)
    assert np.hypot(a.B_x[1, 0], a.B_y[1, 0]) == pytest.approx(0.2)  # 2000 G transverse = 0.2 T
    # n_H from Pg - Pe and the abundances agrees with the model's own density column: rho / (1.4 u) per
    # hydrogen atom (1.4 u: H plus He at 10.93 and metals, Asplund et al. 2009), within 5 % (ideal gas, no H2).
    m = b.model
    top = np.argsort(-m.z)
    np.testing.assert_allclose(a.temperature[0], m.T[top])
    np.testing.assert_allclose(a.hydrogen[0], m.rho[top] / (1.4 * 1.66054e-24) * 1e6, rtol=0.05)
    np.testing.assert_allclose(a.electron_density[0], m.Pe[top] / (1.380649e-16 * m.T[top]) * 1e6, rtol=1e-12)
    assert [x.active for x in seen["atoms"]] == [False] and seen["atoms"][0].path.endswith("H_6.atom")
    cont = io.air_to_vacuum(np.array([(WL.min() - CONTINUUM_OFFSET) / 10]))
    np.testing.assert_allclose(seen["wave"][[0, -1]], [cont[0], io.air_to_vacuum(np.array([WL[-1] / 10]))[0]])
    assert [round(x.wavelength, 2) for x in seen["lines"]] == [630.15, 630.25]


@pytest.mark.parametrize("mode,why", [
    ("crash", "crashed|exited with code 139"),
    ("fatal", "FATAL_ERROR in routine readAtom Unable to open input file"),
    ("missing", "without writing output/output_ray.hdf5"),
])
def test_a_failed_run_fails_only_its_column(rh_double, mode, why):
    b = _backend(rh_double)
    r = b.synthesize_chunk(_params(["ok", mode, "ok"]), WL)
    assert r.status.tolist() == [STATUS_OK, STATUS_FAILED, STATUS_OK]
    assert list(r.errors) == [1]
    assert re.search(why, r.errors[1]), r.errors[1]
    assert np.all(np.isnan(r.synthetic[1])) and np.all(np.isfinite(r.synthetic[[0, 2]]))


def test_hanging_run_times_out(rh_double):
    b = _backend(rh_double, timeout=3.0)
    r = b.synthesize_chunk(_params(["ok", "hang"]), WL)
    assert r.status.tolist() == [STATUS_OK, STATUS_FAILED]
    assert "timed out after 3 s" in r.errors[1]


@pytest.mark.parametrize("mode,why", [("noconv", "did not converge in 7 iterations"), ("gaveup", "gave up on the column")])
def test_non_converged_columns_are_failed_never_fill_values(rh_double, mode, why):
    b = _backend(rh_double)
    r = b.synthesize_chunk(_params(["ok", mode, "ok"]), WL)
    assert r.status.tolist() == [STATUS_OK, STATUS_FAILED, STATUS_OK]
    assert why in r.errors[1]
    assert np.all(np.isnan(r.synthetic[1]))
    assert np.all(np.abs(r.synthetic[[0, 2]]) < 10)  # the neighbours are profiles, not 9.97e36
    with pytest.raises(RHError, match=f"1 of 3 pixel.*pixel 1: .*{why}"):
        b.synthesize(_params(["ok", mode, "ok"]), WL)


def test_without_isolation_a_failed_run_fails_the_chunk(rh_double):
    b = _backend(rh_double, isolate_failures=False)
    r = b.synthesize_chunk(_params(["ok", "fatal"]), WL)
    assert r.status.tolist() == [STATUS_FAILED, STATUS_FAILED]
    assert "RH run of 2 column(s) failed: exited with code 1" in r.errors[0]


def test_too_few_ranks_is_refused_by_rh(rh_double, monkeypatch):
    import stokesflow.backends.rh.backend as mod

    monkeypatch.setattr(mod, "rh_command", lambda mpiexec, exe, ranks: [str(mpiexec), "-n", "1", str(exe)])
    r = _backend(rh_double).synthesize_chunk(_params(["ok"]), WL)
    assert r.status.tolist() == [STATUS_FAILED] and "more than one process" in r.errors[0]


def test_keep_failed_keeps_the_folder(rh_double):
    b = _backend(rh_double, keep_failed=True)
    r = b.synthesize_chunk(_params(["ok", "noconv"]), WL)
    kept = Path(r.errors[1].split("(folder kept: ")[1].rstrip(")"))
    assert (kept / "keyword.input").is_file() and (kept / "output" / "output_indata.hdf5").is_file()
    with h5py.File(kept / "output" / "output_indata.hdf5") as f:
        assert f["mpi/convergence"][:, 0].tolist() == [1, 0]
    scratch = Path(rh_double["scratch"])
    assert sorted(p.name for p in scratch.iterdir()) == [kept.name]  # the working folder itself is cleaned up


def test_bad_parameters_are_skipped_not_run(rh_double):
    p = _params(["ok", "ok"])
    p["B"][1] = np.nan
    r = _backend(rh_double).synthesize_chunk(p, WL)
    assert r.status.tolist() == [STATUS_OK, STATUS_BAD_INPUT] and "NaN" in r.errors[1]


def test_stratified_parameters_and_errors(rh_double):
    b = _backend(rh_double)
    nd = b.log_tau.size
    r = b.synthesize_chunk({"B": np.linspace(0, 1000, nd)[None, :], "vlos": np.array([1.0])}, WL)
    assert r.status.tolist() == [STATUS_OK]
    assert np.isnan(r.param("B")[0]) and r.param("vlos")[0] == 1.0  # stratifications are not echoed as constants
    with pytest.raises(RHError, match="expected"):
        b.synthesize({"B": np.zeros((1, nd + 1))}, WL)
    with pytest.raises(RHError, match="unknown parameter"):
        b.synthesize({"T": np.zeros(1)}, WL)
    with pytest.raises(RHError, match="synthesises only"):
        b.invert(np.zeros((1, 4, WL.size)), WL)


def test_backend_pickles_and_takes_lines_from_the_observation(rh_double):
    b = _backend({**rh_double, "lines": []})
    _ = b.model  # cached model is not shipped
    c = pickle.loads(pickle.dumps(b))
    assert "model" not in c.__dict__
    assert c.for_observation({"lines": "FeI_6301,FeI_6302"}).options.lines == ("FeI_6301", "FeI_6302")
    with pytest.raises(RHError, match="no spectral lines"):
        c.synthesize({"B": np.array([1.0])}, WL)


def test_nlte_atoms_iterate_and_need_no_line_list(rh_double, monkeypatch):
    import stokesflow.backends.rh.backend as mod

    seen: dict = {}
    real = mod.run_rh

    def spy(folder, argv, *, timeout, env=None):
        seen["kw"] = io.parse_keywords((folder / "keyword.input").read_text())
        seen["atoms"] = io.parse_atoms((folder / "atoms.input").read_text())
        return real(folder, argv, timeout=timeout, env=env)

    monkeypatch.setattr(mod, "run_rh", spy)
    b = _backend(rh_double, atoms=["H_6.atom", "CaII.atom"], active=["CaII.atom"], lines=[], n_max_iter=40)
    assert b.for_observation({"lines": "FeI_6302"}) is b  # the NLTE atom gives the lines
    r = b.synthesize_chunk({"B": np.array([0.0])}, 8542.09 + 0.05 * np.arange(-5, 6))
    assert r.status.tolist() == [STATUS_OK] and r.n_iter.tolist() == [7]  # the double's iterations
    assert seen["kw"]["N_MAX_ITER"] == "40" and seen["kw"]["KURUCZ_DATA"] == "none"
    assert [(a.active, a.initial) for a in seen["atoms"]] == [(False, "LTE_POPULATIONS"), (True, "ZERO_RADIATION")]


def test_rh_atmosphere_file_as_model(rh_double, tmp_path, monkeypatch):
    """An RH atmosphere file's first column is the model; the field and velocity are the pixel's."""
    import stokesflow.backends.rh.backend as mod

    nz = 6
    base = io.Atmosphere(
        z=np.linspace(2e6, -1e5, nz)[None, :], temperature=np.linspace(9000, 6500, nz)[None, :],
        electron_density=np.full((1, nz), 1e19), hydrogen=np.full((1, nz), 1e22), velocity_z=np.full((1, nz), 500.0),
        velocity_turbulent=np.full((1, nz), 1500.0),
    )
    path = io.write_atmosphere(tmp_path / "model.hdf5", base)
    seen: dict = {}
    real = mod.run_rh

    def spy(folder, argv, *, timeout, env=None):
        seen["atmos"] = io.read_atmosphere(folder / "atmos.hdf5")
        return real(folder, argv, timeout=timeout, env=env)

    monkeypatch.setattr(mod, "run_rh", spy)
    b = _backend(rh_double, model=str(path))
    assert b.log_tau is None and b.ndepth == nz  # a height grid: stratifications on its own depth points
    r = b.synthesize_chunk({"B": np.array([1000.0, 0.0]), "vlos": np.array([2.0, 0.0]),
                            "vmic": np.array([np.nan, 0.5])}, WL)
    assert r.status.tolist() == [STATUS_OK, STATUS_OK]
    a = seen["atmos"]
    np.testing.assert_array_equal(a.temperature, np.repeat(base.temperature, 2, axis=0))
    np.testing.assert_array_equal(a.z[1], base.z[0])
    np.testing.assert_allclose(a.velocity_z[:, 0], [-2000.0, 0.0])  # the model's own velocity is replaced
    np.testing.assert_allclose(a.velocity_turbulent[:, 0], [1500.0, 500.0])  # NaN keeps the model's vmic
    np.testing.assert_allclose(a.B_z[:, 0], [0.1, 0.0])
    with pytest.raises(RHError, match="does not exist"):
        _ = _backend(rh_double, model=str(tmp_path / "none.hdf5")).model


def test_synth_observation_with_rh(rh_double, tmp_path):
    """``synthesize_observation(backend="rh")`` (what ``stokesflow synth`` calls) goes through the backend."""
    from stokesflow.orchestrator.synth import synthesize_observation

    opts = {k: v for k, v in rh_double.items() if k != "lines"}  # synth sets the instrument's lines
    out = synthesize_observation(tmp_path / "obs.h5", instrument="hinode", scene="sunspot", size=(3, 2), noise=0.0,
                                 backend="rh", backend_options=opts)
    with h5py.File(out) as f:
        assert f["stokes"].shape == (3, 2, 4, 112)
        assert np.all(np.isfinite(f["stokes"][...]))
        assert sorted(f["truth"]) == ["B", "azimuth", "inclination", "vlos"]
        assert f.attrs["generator"] == "stokesflow synth (backend 'rh', no spectral PSF)"


def test_synth_with_rh_through_the_command_line(rh_double, tmp_path):
    """``stokesflow synth --backend rh -B ...`` reaches the backend (against the test doubles)."""
    from stokesflow.orchestrator.cli import main

    opts = [a for k, v in rh_double.items() if k != "lines" for a in ("-B", f"{k}={v}")]
    out = tmp_path / "cli.h5"
    assert main(["synth", "--instrument", "hinode", "--scene", "sunspot", "--size", "2", "2", "--noise", "0",
                 "--backend", "rh", *opts, "--out", str(out), "-q"]) == 0
    with h5py.File(out) as f:
        assert f["stokes"].shape == (2, 2, 4, 112) and np.all(np.isfinite(f["stokes"][...]))
        assert f.attrs["generator"] == "stokesflow synth (backend 'rh', no spectral PSF)"


def test_built_in_fal_c_as_model(rh_double):
    """``model = "falc"``: the SIR backend's FAL-C (log tau 1.2 to -7.5) on its own log tau grid."""
    b = _backend(rh_double, model="falc")
    assert b.ndepth == 88 and b.log_tau.min() == pytest.approx(-7.5)
    r = b.synthesize_chunk({"B": np.array([1000.0])}, WL)
    assert r.status.tolist() == [STATUS_OK], r.errors
    with pytest.raises(RHError, match=r"nowhere.mod does not exist; give 'hsra', 'falc'"):
        _backend(rh_double, model="nowhere.mod").ndepth
