"""The STiC runner and backend against a TEST DOUBLE of STiC.x (tests/backends/stic/doubles).

The double reproduces STiC's failure modes, chosen per pixel by the guess
model's microturbulence: a crash of the run, a fatal input error that exits 0
(STiC's ``exit(0)``), exit 0 without outputs, hanging, and, inside a run that
ends well, a pixel with NaN (a diverged fit) or all-zero profiles (never
computed, as with 1 rank). A failed pixel gets status 2 with its reason and its
neighbours are unaffected.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_unavailable_until_configured
from stokesflow.backends import STATUS_BAD_INPUT, STATUS_FAILED, STATUS_OK, STATUS_POOR_FIT, get_backend, list_backends
from stokesflow.backends.base import ConfigError
from stokesflow.backends.registry import BUILTIN_BACKENDS, PLANNED_BACKENDS
from stokesflow.backends.stic import io
from stokesflow.backends.stic.backend import STRATEGIES, STiCBackend, from_stic_field, to_stic_field
from stokesflow.backends.stic.errors import STiCError
from stokesflow.backends.stic.runner import ENV_VAR, ScratchFolder, pixel_failures, run_stic, stic_command

from _stic_doubles import stic_double  # noqa: F401 - the fixture

WL = 6302.4931 + 0.02 * np.arange(-10, 11)  # [A, air]
#: vmic [km/s] that makes the double fail its run or its pixel (its vturb code [cm/s] / 1e5).
MODES = {"crash": 0.9001, "fatal": 0.9002, "missing": 0.9003, "hang": 0.9004, "nan": 0.9005, "zeros": 0.9006,
         "misfit": 0.9007}


def _params(modes: list[str]) -> dict[str, np.ndarray]:
    n = len(modes)
    return {"B": np.full(n, 1000.0), "inclination": np.zeros(n), "azimuth": np.zeros(n), "vlos": np.zeros(n),
            "vmic": np.array([MODES.get(m, 1.0) for m in modes])}


def _init(b: STiCBackend, modes: list[str]) -> np.ndarray:
    """Initial guesses (parameter columns only) whose vmic selects the double's behaviour."""
    init = np.full((len(modes), len(b.parameter_names)), np.nan)
    init[:, b.parameter_names.index("vmic")] = [MODES.get(m, 1.0) for m in modes]
    init[:, b.parameter_names.index("B")] = 500.0
    init[:, b.parameter_names.index("inclination")] = 0.0
    return init


def test_registered_and_unavailable_until_configured(tmp_path, monkeypatch):
    assert BUILTIN_BACKENDS["stic"] == "stokesflow.backends.stic.backend:STiCBackend"
    assert "stic" not in PLANNED_BACKENDS
    assert_unavailable_until_configured("stic", STiCBackend, ENV_VAR, "STiC.x", tmp_path, monkeypatch)
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert "not bundled" in list_backends()["stic"][1]


def test_automatic_chunks_reach_every_worker():
    """Seconds per pixel: the plan has no 1024-pixel floor (48 pixels on 2 workers: one pixel per task)."""
    from stokesflow.orchestrator.plan import auto_chunk_pixels

    assert auto_chunk_pixels(48, 2, **STiCBackend.chunk_plan) == 1
    assert auto_chunk_pixels(512 * 512, 2, **STiCBackend.chunk_plan) == 64


def test_available_with_the_double_and_mpiexec_checked(stic_double, tmp_path):
    ok, why = STiCBackend.is_available({**stic_double, "mpiexec": str(tmp_path / "no-mpiexec")})
    assert not ok and "MPI launcher" in why and "STOKESFLOW_STIC_MPIEXEC" in why
    ok, why = STiCBackend.is_available(stic_double)  # the double passes the one-pixel trial
    assert ok, why
    assert isinstance(get_backend("stic", stic_double), STiCBackend)


def test_options_are_checked():
    with pytest.raises(ConfigError, match="at least 2 MPI ranks"):
        STiCBackend({"ranks": 1})
    with pytest.raises(ConfigError, match="unknown option"):
        STiCBackend({"nodes_temp": 3})
    with pytest.raises(ConfigError, match="isothermal"):
        STiCBackend({"nodes": {"T": 1}})
    with pytest.raises(ConfigError, match="unknown parameter"):
        STiCBackend({"nodes": {"gamma": 1}})
    with pytest.raises(ConfigError, match="needs model atoms"):
        STiCBackend({"atmosphere": "nlte"})
    with pytest.raises(ConfigError, match="not in atoms"):
        STiCBackend({"atmosphere": "nlte", "atoms": ["H_6.atom"], "active": ["CaII.atom"]})
    with pytest.raises(STiCError, match=r"\[backend.stic\] ranks: STiC needs at least 2"):
        stic_command("mpiexec", "STiC.x", 1)
    st = STiCBackend({"nodes": {"T": "4,6", "vlos": "2"}, "cycles": 2}).options.resolved_strategy()
    assert st.cycles == 2 and st.nodes_of_cycle(1)["nodes_temp"] == 6 and st.nodes_of_cycle(1)["nodes_vlos"] == 2
    assert STRATEGIES["reference"].nodes_of_cycle(2) == {
        "nodes_temp": 7, "nodes_vlos": 3, "nodes_blong": 3, "nodes_bhor": 1, "nodes_azi": 1, "nodes_vturb": 1}


def test_field_conventions_map_both_ways():
    bl, bh, az = to_stic_field(np.array([1000.0, 500.0]), np.array([30.0, 120.0]), np.array([45.0, 170.0]))
    B, inc, azi = from_stic_field(bl, bh, az)
    np.testing.assert_allclose(B, [1000.0, 500.0], rtol=1e-12)
    np.testing.assert_allclose(inc, [30.0, 120.0], rtol=1e-12)
    np.testing.assert_allclose(azi, [45.0, 170.0], rtol=1e-12)
    # a negative Bhor is the transverse field turned by 180 deg: same inclination, azimuth modulo 180
    B, inc, azi = from_stic_field(np.array([0.0]), np.array([-100.0]), np.array([0.2]))
    assert inc[0] == pytest.approx(90.0) and azi[0] == pytest.approx(np.rad2deg(0.2))


def test_synthesis_through_the_double(stic_double):
    b = STiCBackend(stic_double)
    r = b.synthesize_chunk(_params(["ok", "ok"]), WL)
    assert r.status.tolist() == [STATUS_OK, STATUS_OK] and r.errors == {}
    # the double's I = 1 - 0.5 exp(-(dl/0.1)^2) in units of the continuum option (4e-5)
    expected = 1.0 - 0.5 * np.exp(-((WL - 6302.4931) / 0.1) ** 2)
    np.testing.assert_allclose(r.synthetic[:, 0], np.broadcast_to(expected, (2, WL.size)), rtol=1e-6)
    np.testing.assert_allclose(r.param("B"), [1000.0, 1000.0])


@pytest.mark.parametrize("mode, why", [
    ("crash", "exited with code 139"),  # mpiexec reports a rank killed by SIGSEGV as 128 + 11
    ("fatal", "stopped with exit code 0: master, ERROR"),
    ("missing", "exited 0 without writing synthetic.nc"),
    ("nan", "NaN or inf"),
    ("zeros", "all-zero profiles"),
])
def test_a_failed_pixel_is_flagged_and_its_neighbours_are_unaffected(stic_double, mode, why):
    b = STiCBackend(stic_double)
    r = b.synthesize_chunk(_params(["ok", mode, "ok"]), WL)
    assert r.status.tolist() == [STATUS_OK, STATUS_FAILED, STATUS_OK]
    assert why in r.errors[1] and set(r.errors) == {1}
    assert np.all(np.isnan(r.synthetic[1])) and np.all(np.isfinite(r.synthetic[[0, 2]]))
    with pytest.raises(STiCError, match=f"1 of 3 pixel.*pixel 1: .*{why}"):
        b.synthesize(_params(["ok", mode, "ok"]), WL)


def test_a_hanging_run_is_killed_after_the_timeout(stic_double):
    # one pixel: a neighbour would need a time-out long enough for the double's start on a loaded
    # machine (isolation of a failed run is tested with the crash and fatal modes above)
    r = STiCBackend({**stic_double, "timeout": 2.0}).synthesize_chunk(_params(["hang"]), WL)
    assert r.status.tolist() == [STATUS_FAILED]
    assert "timed out after 2 s (killed)" in r.errors[0]


def test_without_isolation_a_failed_run_fails_the_chunk(stic_double):
    r = STiCBackend({**stic_double, "isolate_failures": False}).synthesize_chunk(_params(["ok", "fatal"]), WL)
    assert r.status.tolist() == [STATUS_FAILED, STATUS_FAILED]
    assert "STiC run of 2 pixel(s) stopped with exit code 0" in r.errors[0]


def test_one_rank_writes_zeros_and_is_caught(stic_double, monkeypatch):
    import stokesflow.backends.stic.backend as mod

    monkeypatch.setattr(mod, "stic_command", lambda mpiexec, exe, ranks: [str(mpiexec), "-n", "1", str(exe)])
    r = STiCBackend(stic_double).synthesize_chunk(_params(["ok"]), WL)
    assert r.status.tolist() == [STATUS_FAILED] and "1 MPI rank" in r.errors[0]


def test_bad_parameters_are_skipped_not_run(stic_double):
    p = _params(["ok", "ok"])
    p["B"][1] = np.nan
    r = STiCBackend(stic_double).synthesize_chunk(p, WL)
    assert r.status.tolist() == [STATUS_OK, STATUS_BAD_INPUT] and "NaN" in r.errors[1]


def test_inversion_chains_cycles_and_maps_the_results(stic_double):
    b = STiCBackend({**stic_double, "strategy": "reference", "noise": 1e-3})
    obs = b.synthesize(_params(["ok", "ok", "ok"]), WL)
    obs[1] = np.nan  # a bad pixel: skipped
    r = b.invert(obs, WL, _init(b, ["ok", "ok", "nan"]))
    assert r.status.tolist() == [STATUS_OK, STATUS_BAD_INPUT, STATUS_FAILED]
    assert "NaN or inf" in r.errors[2] and "STiC not run" in r.errors[1]
    # the double adds 100 G to Blong per cycle: 3 cycles of the reference strategy from B = 500 G vertical
    np.testing.assert_allclose(r.stratified["B"][0], 800.0, rtol=1e-9)
    np.testing.assert_allclose(r.param("inclination")[0], 0.0, atol=1e-9)
    assert r.log_tau is not None and r.stratified["T"].shape == (3, r.log_tau.size)
    assert np.all(np.diff(r.log_tau) > 0)  # top first, as STiC orders depths
    # the double's fit equals the observation: chi2 0; STiC reports no uncertainties
    assert r.chi2[0] == 0.0 and np.all(np.isnan(r.sigma))
    np.testing.assert_allclose(r.synthetic[0], obs[0], rtol=1e-6)
    assert np.all(np.isnan(r.stratified["Pe"][0]))  # the double writes no nne


def test_a_fit_far_above_the_noise_is_flagged_poor(stic_double):
    """The double's fit of a 'misfit' pixel is 0.02 (20 noise sigma) above the observation: reduced chi2
    400 x 84 points / (84 - free parameters), above the default threshold (100): status 4, results kept; its
    neighbour fits exactly (chi2 0)."""
    b = STiCBackend({**stic_double, "strategy": "assisted", "noise": 1e-3})
    obs = b.synthesize(_params(["ok", "ok"]), WL)
    init = _init(b, ["ok", "misfit"])
    r = b.invert(obs, WL, init)
    assert r.status.tolist() == [STATUS_OK, STATUS_POOR_FIT] and r.chi2[0] == 0.0
    nfree = sum(STRATEGIES["assisted"].nodes_of_cycle(0).values())
    assert r.chi2[1] == pytest.approx(400.0 * 4 * WL.size / (4 * WL.size - nfree), rel=1e-9)
    assert r.param("B")[1] == pytest.approx(600.0)
    r2 = STiCBackend({**stic_double, "strategy": "assisted", "noise": 1e-3, "poor_chi2": 1000.0}).invert(obs, WL, init)
    assert r2.status.tolist() == [STATUS_OK, STATUS_OK]
    with pytest.raises(ConfigError, match=r"poor_chi2 must be > 0 \(reduced chi2\), got -1"):
        STiCBackend({**stic_double, "poor_chi2": -1.0})


def test_inversion_run_failure_is_isolated(stic_double):
    b = STiCBackend({**stic_double, "strategy": "assisted"})
    obs = b.synthesize(_params(["ok", "ok"]), WL)
    r = b.invert(obs, WL, _init(b, ["crash", "ok"]))
    assert r.status.tolist() == [STATUS_FAILED, STATUS_OK]
    assert "cycle 1: STiC run of 1 pixel(s) exited with code 139" in r.errors[0]
    assert r.param("B")[1] == pytest.approx(600.0)  # one cycle: 500 + 100 G


def test_keep_failed_keeps_the_folder(stic_double):
    r = STiCBackend({**stic_double, "keep_failed": True}).synthesize_chunk(_params(["ok", "zeros"]), WL)
    kept = Path(r.errors[1].split("(folder kept: ")[1].rstrip(")"))
    assert (kept / io.INPUT_CFG).is_file() and (kept / io.LINES_CFG).is_file() and (kept / io.PROFILES_OUT).is_file()
    values, regions = io.parse_input_cfg((kept / io.INPUT_CFG).read_text())
    assert values["mode"] == "2" and values["atmosphere_type"] == "lte" and values["lines"] == "FeI_6302"
    assert values["depth_interpolation"] == "2"  # cubic Bezier in LTE
    np.testing.assert_allclose(io.region_wavelengths(regions), WL, atol=1e-9)
    scratch = Path(stic_double["scratch"])
    assert sorted(p.name for p in scratch.iterdir()) == [kept.name]  # the working folder itself is cleaned up


def test_run_stic_judges_the_outputs(tmp_path):
    script = tmp_path / "fake"
    script.write_text("#!/bin/sh\necho 'read_input: fine'\ntouch synthetic.nc\n")
    script.chmod(0o755)
    out = run_stic(tmp_path, [str(script)], timeout=10.0, expected=["synthetic.nc", "atmosout.nc"])
    assert not out.ok and out.reason == "exited 0 without writing atmosout.nc"
    out = run_stic(tmp_path, [str(script)], timeout=10.0, expected=["synthetic.nc"])
    assert out.ok, out.reason
    fails = pixel_failures(np.array([[[1.0]], [[0.0]], [[np.nan]]]), 4, (np.array([[1.0], [1.0], [1.0]]),))
    assert sorted(fails) == [1, 2, 3] and "not in STiC's output" in fails[3]


def test_backend_pickles_and_takes_lines_and_noise_from_the_observation(stic_double):
    b = STiCBackend({**stic_double, "lines": []})
    _ = b.guess_model
    c = pickle.loads(pickle.dumps(b))
    assert "guess_model" not in c.__dict__
    d = c.for_observation({"lines": "FeI_6301,FeI_6302", "noise": [1e-3, 5e-4, 5e-4, 5e-4]})
    assert d.options.lines == ("FeI_6301", "FeI_6302") and d.options.noise == (1e-3, 5e-4, 5e-4, 5e-4)
    with pytest.raises(STiCError, match="no spectral lines"):
        c.synthesize({"B": np.array([1.0])}, WL)
    assert len(c.init_columns) == len(c.parameter_names) + 6 * len(c.options.seed_nodes)


def test_nlte_inputs_are_rh_files_written_by_the_rh_writers(stic_double, tmp_path):
    from stokesflow.backends.rh import io as rh_io
    from stokesflow.backends.stic.backend import _MOLECULES_DEFAULT

    data = _stic_data(tmp_path, ("H_6.atom", "CaII.atom"))
    b = STiCBackend({**stic_double, "atmosphere": "nlte", "atoms": ["H_6.atom", "CaII.atom"], "active": ["CaII.atom"],
                     "lines": [], "stic_data": str(data), "keep_failed": True})
    r = b.synthesize_chunk(_params(["ok", "zeros"]), WL)
    assert r.status.tolist() == [STATUS_OK, STATUS_FAILED]
    kept = Path(r.errors[1].split("(folder kept: ")[1].rstrip(")"))
    values, _ = io.parse_input_cfg((kept / io.INPUT_CFG).read_text())
    assert values["atmosphere_type"] == "rh" and "lines" not in values
    assert values["depth_interpolation"] == "1"  # linear in NLTE (cubic overshoots FAL-C's top)
    kw = rh_io.parse_keywords((kept / "keyword.input").read_text())
    assert kw["ATOMS_FILE"] == "atoms.input" and kw["STOKES_MODE"] == "FIELD_FREE" and "KURUCZ_DATA" not in kw
    atoms = rh_io.parse_atoms((kept / "atoms.input").read_text())
    assert [(Path(a.path).name, a.active) for a in atoms] == [("H_6.atom", False), ("CaII.atom", True)]
    assert len(rh_io.parse_molecules((kept / "molecules.input").read_text())) == len(_MOLECULES_DEFAULT)
    with pytest.raises(STiCError, match="has no Atoms/"):
        STiCBackend({**stic_double, "atmosphere": "nlte", "atoms": ["H_6.atom"], "stic_data": str(tmp_path)}).setup()


def test_a_launcher_of_another_mpi_is_named_in_the_error(stic_double, tmp_path):
    """Under the mpiexec of another MPI every rank runs alone (STiC on 1 rank writes zeros): the continuum run
    fails, and the error names the launcher and how to give the right one."""
    wrong = tmp_path / "other_mpi" / "mpiexec"
    wrong.parent.mkdir()
    wrong.write_text('#!/bin/sh\nshift 2\nRH_DOUBLE_RANKS=1 exec "$@"\n')  # drops "-n K", runs one rank alone
    wrong.chmod(0o755)
    opts = {k: v for k, v in stic_double.items() if k != "continuum"}  # the continuum run is what fails
    b = STiCBackend({**opts, "mpiexec": str(wrong), "strategy": "assisted"})
    with pytest.raises(STiCError, match=rf"continuum of the guess model .* if {re.escape(str(wrong))} is not the "
                                        r"mpiexec of the MPI STiC was built with, .* -B mpiexec="):
        b.continuum(WL)


def _stic_data(tmp_path: Path, atoms: tuple[str, ...] = ("H_6.atom", "CaII_bklm.atom")) -> Path:
    """A stand-in for STiC's input/ folder: the files the NLTE inputs name, never read by the double."""
    from stokesflow.backends.stic.backend import _MOLECULES_DEFAULT

    data = tmp_path / "stic_input"
    (data / "Atoms").mkdir(parents=True)
    for name in (*atoms, "pf_Kurucz.input", "abundance.input"):
        (data / "Atoms" / name).write_text("# stand-in\n")
    (data / "Molecules").mkdir()
    for m in _MOLECULES_DEFAULT:
        (data / "Molecules" / f"{m}.molecule").write_text("# stand-in\n")
    return data


def test_nlte_starts_from_fal_c_and_takes_the_continuum_without_the_atoms_lines(stic_double, tmp_path):
    """NLTE without ``model``: the built-in FAL-C (chromosphere up to log tau -7.5), LTE the HSRA; the
    continuum run leaves out the active atom, whose broad wings (in the double: 40 % deep, 3 A wide) reach
    the continuum point 1.5 A blue of the grid."""
    opts = {k: v for k, v in stic_double.items() if k != "continuum"}
    nlte = {**opts, "atmosphere": "nlte", "atoms": ["H_6.atom", "CaII_bklm.atom"], "active": ["CaII_bklm.atom"],
            "lines": [], "stic_data": str(_stic_data(tmp_path))}
    b = STiCBackend(nlte)
    assert b.default_model() == "falc" and b.log_tau.size == 88
    assert b.log_tau[0] == pytest.approx(-7.5) and b.log_tau[-1] == pytest.approx(1.2)  # top first
    assert STiCBackend(opts).log_tau.size == 55 and STiCBackend(opts).default_model() == "hsra"
    assert STiCBackend({**nlte, "model": "hsra"}).log_tau[0] == pytest.approx(-4.0)  # a given model wins
    # the double's continuum is 4e-5; with the active atom the point 1.5 A blue of the grid is in the wing
    assert b.continuum(WL) == pytest.approx(4.0e-5, rel=1e-6)
    m = b.guess_model.select([0])
    with ScratchFolder("wing-", str(tmp_path)) as folder:
        prof, reason = b._run_once(folder, m, [io.Region(float(WL[0]) - 1.5, 0.01, 1, 1.0)], {}, 2, None, None, 1)
    assert reason == "" and prof[0, 0, 0] < 0.9 * 4.0e-5  # what the continuum would have been with the atom
