"""The DeSIRe backend against a TEST DOUBLE of DeSIRe (doubles/desire_test_double.py).

The double takes the control file as its argument and reproduces DeSIRe's real
failure modes (exit 0 with TERMINATING ERROR, missing outputs, exit 0 with the
guess unchanged and 1e8 in .chi for a NaN profile, hanging, crashing, non-zero
exit): each failed pixel must get status 2 with its reason, and its neighbours
must be unaffected.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from stokesflow.backends import STATUS_BAD_INPUT, STATUS_FAILED, STATUS_OK, get_backend, list_backends
from stokesflow.backends.base import ConfigError
from stokesflow.backends.desire import io
from stokesflow.backends.desire.backend import ENV_VAR, DesireBackend
from stokesflow.backends.desire.errors import DesireError
from stokesflow.backends.sir import io as sir_io
from stokesflow.backends.sir.errors import SIRError
from stokesflow.backends.sir.runner import find_stop_line

from conftest import assert_unavailable_until_configured  # noqa: E402

DOUBLE = Path(__file__).parent / "doubles" / "desire_test_double.py"
WL = 6300.89 + 0.021549 * np.arange(112)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the test double is a POSIX executable script")

MODES = {"stop": 0.9001, "missing": 0.9002, "nan": 0.9003, "hang": 0.9004, "crash": 0.9005, "exit3": 0.9006}


@pytest.fixture
def var(tmp_path: Path) -> Path:
    """A stand-in for DeSIRe's var folder: the files RH reads, empty."""
    v = tmp_path / "var"
    for sub, names in {"Atoms": [a for a, _ in __import__(
            "stokesflow.backends.desire.backend", fromlist=["ATOMS"]).ATOMS],
            "Molecules": [f"{m}.molecule" for m in ("H2", "C2", "CH", "CN", "CO", "H2+", "H2O", "N2", "NH", "NO",
                                                    "O2", "OH")],
            "Kurucz": ["pf_Kurucz.input"], "Barklem": ["Barklem_spdata.dat"]}.items():
        (v / sub).mkdir(parents=True)
        for n in names:
            (v / sub / n).write_text("")
    return v


def _pixels(modes: list[str]) -> np.ndarray:
    """One Hinode-like pixel per mode; the first I value tells the double how to behave."""
    rng = np.random.default_rng(12)
    st = np.zeros((len(modes), 4, WL.size))
    st[:, 0] = 1.0 - 0.5 * np.exp(-(((WL - 6302.4931) / 0.05) ** 2))
    st[:, 1:] = rng.normal(0, 1e-3, (len(modes), 3, WL.size))
    for i, m in enumerate(modes):
        if m in MODES:
            st[i, 0, 0] = MODES[m]
        elif m == "nan_input":
            st[i, 2, 5] = np.nan
    return st


def _backend(tmp_path: Path, var: Path, **kw) -> DesireBackend:
    opts = {"executable": str(DOUBLE), "lines": ["FeI_6301", "FeI_6302"], "scratch": str(tmp_path / "scratch"),
            "timeout": 20.0, "data_dir": str(var)}
    opts.update(kw)
    return DesireBackend(opts)


def test_failed_pixels_get_status_2_with_reason_and_neighbours_are_unaffected(tmp_path, var):
    modes = ["ok", "stop", "ok", "missing", "nan", "crash", "exit3", "nan_input", "ok"]
    b = _backend(tmp_path, var)
    r = b.invert(_pixels(modes), WL)
    expected = [STATUS_OK, STATUS_FAILED, STATUS_OK, STATUS_FAILED, STATUS_FAILED, STATUS_FAILED, STATUS_FAILED,
                STATUS_BAD_INPUT, STATUS_OK]
    assert r.status.tolist() == expected, r.errors
    assert "TERMINATING ERROR in routine leeuve2 Incorrect format" in r.errors[1] and "exit code 0" in r.errors[1]
    assert "without writing guess_3.mod" in r.errors[3]
    assert "start value 1e8" in r.errors[4]
    assert "crashed (killed by signal SIGSEGV)" in r.errors[5]
    assert "exited with code 3" in r.errors[6]
    assert "NaN" in r.errors[7] and "not run" in r.errors[7]
    assert set(r.errors) == {1, 3, 4, 5, 6, 7}
    bad = r.status != STATUS_OK
    assert np.all(np.isnan(r.params[bad])) and np.all(np.isnan(r.chi2[bad]))
    for name, arr in r.stratified.items():
        assert np.all(np.isnan(arr[bad])), name
    alone = b.invert(_pixels(["ok"]), WL)
    for i in (0, 2, 8):
        np.testing.assert_array_equal(r.params[i], alone.params[0])
        np.testing.assert_array_equal(r.stratified["B"][i], alone.stratified["B"][0])
        assert r.chi2[i] == 1.5 and r.n_iter[i] == 3 * 4  # the double's log: 3 cycles of 4 iterations
    assert list((tmp_path / "scratch").iterdir()) == []


def _deep_model(tmp_path: Path) -> str:
    """The HSRA guess on a grid reaching log tau -7 (NLTE lines need the upper layers)."""
    m = DesireBackend({}).guess_model
    m.log_tau = np.linspace(1.4, -7.0, m.ndepth)
    m.z = m.Pg = m.rho = None
    path = tmp_path / "deep.mod"
    path.write_text(sir_io.format_model(m))
    return str(path)


def test_inputs_the_double_received(tmp_path, var):
    b = _backend(tmp_path, var, keep_failed=True, lines=["FeI_6302", "CaII_8542"], model=_deep_model(tmp_path))
    r = b.invert(_pixels(["stop"]), WL)
    kept = Path(r.errors[0].split("its folder is kept in ")[1])
    control = io.parse_control((kept / "desire.dtrol").read_text())
    assert control["nlte_threshold"] == "0" and control["coordinates"] == "pos.coor"
    lines = sir_io.parse_lines((kept / "LINES").read_text())
    assert [ln["levels"] for ln in lines] == [None, (2, 4)]  # Ca II 8542 in NLTE, Fe I in LTE
    atoms = io.parse_atoms((kept / "atoms.input").read_text())
    assert [Path(a.path).name for a in atoms if a.active] == ["CaII_CRDbark.atom"]
    assert all(Path(a.path).is_absolute() and Path(a.path).is_file() for a in atoms)
    kw = io.parse_keywords((kept / "keyword.input").read_text())
    assert kw["KURUCZ_PF_DATA"] == str(var.resolve() / "Kurucz" / "pf_Kurucz.input")
    assert kw["ATOMS_FILE"] == "atoms.input" and kw["MOLECULES_FILE"] == "molecules.input"
    # an LTE-only run asks DeSIRe for its SIR engine alone
    lte = _backend(tmp_path, var, keep_failed=True, nlte=[])
    kept = Path(lte.invert(_pixels(["stop"]), WL).errors[0].split("its folder is kept in ")[1])
    assert io.parse_control((kept / "desire.dtrol").read_text())["nlte_threshold"] == "10"
    assert not any(a.active for a in io.parse_atoms((kept / "atoms.input").read_text()))


def test_result_units_and_depth_grid(tmp_path, var):
    b = _backend(tmp_path, var)
    r = b.invert(_pixels(["ok"]), WL)
    guess = b.guess_model
    np.testing.assert_array_equal(r.log_tau, guess.log_tau)
    assert r.stratified["T"].shape == (1, guess.ndepth)
    np.testing.assert_allclose(r.stratified["B"][0], 2 * guess.B)  # the double doubles B
    np.testing.assert_allclose(r.stratified["vmic"][0], guess.vmic * 1e-5)
    np.testing.assert_allclose(r.stratified_sigma["T"][0], 0.01 * guess.T, rtol=1e-5)
    k = int(np.argmin(np.abs(guess.log_tau + 1.0)))
    assert r.param("B")[0] == pytest.approx(2 * guess.B[k])
    assert r.param("stray_light")[0] == pytest.approx(guess.stray_light / 100)
    np.testing.assert_allclose(r.synthetic[0], _pixels(["ok"])[0], atol=1e-6)


def test_time_out_fails_only_that_pixel(tmp_path, var):
    # 4 s: room for the double's python start on a loaded machine; the hang sleeps 600 s
    r = _backend(tmp_path, var, timeout=4.0).invert(_pixels(["hang", "ok"]), WL)
    assert r.status.tolist() == [STATUS_FAILED, STATUS_OK], r.errors
    assert "timed out after 4 s" in r.errors[0]


def test_missing_rh_data_fails_the_pixel_with_rhs_message(tmp_path, var):
    (var / "Atoms" / "Fe.atom").unlink()
    r = _backend(tmp_path, var).invert(_pixels(["ok"]), WL)
    assert r.status.tolist() == [STATUS_FAILED]
    assert "TERMINATING_ERROR in routine readInput" in r.errors[0] and "Fe.atom" in r.errors[0]


def test_nlte_lines_need_a_model_reaching_high_layers(tmp_path, var):
    b = _backend(tmp_path, var, lines=["CaII_8542"], model="hsra")  # the built-in HSRA stops at log tau -4
    with pytest.raises(DesireError, match=r"reaches log tau -4, too low .*CaII_8542.*-B model=falc.*-B nlte=\[\]"):
        b.invert(_pixels(["ok"]), 8542.091 + 0.03 * np.arange(-20, 21))
    lte = _backend(tmp_path, var, lines=["CaII_8542"], nlte=[])
    assert lte.invert(_pixels(["ok"])[:, :, :41], 8542.091 + 0.03 * np.arange(-20, 21)).status.tolist() == [STATUS_OK]


def test_nlte_lines_start_from_fal_c_by_default(tmp_path, var):
    """Without ``model``, NLTE lines get the built-in FAL-C (up to log tau -7.5), LTE lines the HSRA."""
    wl = 8542.091 + 0.03 * np.arange(-20, 21)
    b = _backend(tmp_path, var, lines=["CaII_8542"])
    assert b.nlte_lines() == ("CaII_8542",) and b.default_model() == "falc"
    assert b.guess_model.log_tau.min() == pytest.approx(-7.5) and b.guess_model.ndepth == 88
    r = b.invert(_pixels(["ok"])[:, :, :41], wl)
    assert r.status.tolist() == [STATUS_OK], r.errors
    np.testing.assert_array_equal(r.log_tau, b.guess_model.log_tau)
    assert r.stratified["T"].shape == (1, 88)
    # the double doubles B: the guess it received was FAL-C with the guess field (400 G)
    np.testing.assert_allclose(r.stratified["B"][0], 800.0)
    assert _backend(tmp_path, var, lines=["CaII_8542"], nlte=[]).guess_model.ndepth == 55  # LTE: HSRA
    assert _backend(tmp_path, var).guess_model.ndepth == 55  # Fe I: HSRA
    given = _backend(tmp_path, var, lines=["CaII_8542"], model=_deep_model(tmp_path))
    assert given.guess_model.log_tau.min() == pytest.approx(-7.0)  # a user's model still wins


def test_data_folder_is_checked_before_running(tmp_path, var):
    with pytest.raises(DesireError, match="lacks Kurucz/pf_Kurucz.input.*-B data_dir="):
        (var / "Kurucz" / "pf_Kurucz.input").unlink()
        _backend(tmp_path, var).invert(_pixels(["ok"]), WL)
    # the default is the var folder beside the executable's bin folder (desire/bin/desire -> desire/var)
    b = _backend(tmp_path, var, data_dir=None)
    with pytest.raises(DesireError, match=f"{DOUBLE.parent.parent / 'var'} .*beside the executable"):
        b.data_dir()


def test_stop_markers_of_both_codes():
    assert find_stop_line(" STOP: The  magnetic field (model 1)     is zero somewhere.") == (
        "STOP: The  magnetic field (model 1)     is zero somewhere.")
    assert find_stop_line("\n-TERMINATING ERROR in routine coor \n The coordinates file does not exist\n") == (
        "-TERMINATING ERROR in routine coor The coordinates file does not exist")
    assert find_stop_line("-ERROR in routine x\n Trying to continue.....") is None


def test_executable_resolution_and_availability(tmp_path, var, monkeypatch):
    assert_unavailable_until_configured("desire", DesireBackend, ENV_VAR, "desire", tmp_path, monkeypatch)
    # the double with its data folder passes the one-pixel trial, by option or environment
    monkeypatch.setenv(ENV_VAR, str(DOUBLE))
    assert DesireBackend.is_available({"data_dir": str(var)}) == (True, "")
    monkeypatch.delenv(ENV_VAR)
    assert list_backends({"desire": {"executable": str(DOUBLE), "data_dir": str(var)}})["desire"] == (True, "")
    assert isinstance(get_backend("desire", {"executable": str(DOUBLE), "data_dir": str(var)}), DesireBackend)
    # without its data folder it fails the trial, and says why
    ok, why = DesireBackend.is_available({"executable": str(DOUBLE)})
    assert not ok and "fails a one-pixel trial" in why and "data_dir" in why


def test_options(tmp_path, var):
    with pytest.raises(ConfigError, match=r"\[backend.desire\] strategy"):
        DesireBackend({"strategy": "fast"})
    with pytest.raises(ConfigError, match=r"\[backend.desire\] mu: .*line-of-sight"):
        DesireBackend({"mu": 0.8})
    with pytest.raises(ConfigError, match=r"\[backend.desire\] nodes: unknown parameter 'Bfield'"):
        DesireBackend({"nodes": {"Bfield": "2"}}).options.resolved_strategy()
    with pytest.raises(ConfigError, match="unknown option"):
        DesireBackend({"magnetic_pressure": 1})
    with pytest.raises(DesireError, match="cannot be treated in NLTE"):
        DesireBackend({"lines": ["FeI_6302"], "nlte": ["FeI_6302"]}).nlte_lines()
    assert DesireBackend({"lines": ["FeI_6302", "CaII_8542"]}).nlte_lines() == ("CaII_8542",)
    b = DesireBackend({}).for_observation({"lines": "FeI_6301,FeI_6302", "noise": 1e-3})
    assert isinstance(b, DesireBackend) and b.options.lines == ("FeI_6301", "FeI_6302") and b.options.noise == 1e-3
    b = _backend(tmp_path, var)
    b.guess_model  # noqa: B018 - cached, must not travel
    clone = pickle.loads(pickle.dumps(b))
    assert "guess_model" not in clone.__dict__ and clone.options == b.options
    assert issubclass(DesireError, SIRError)


def test_synthesis_through_the_double(tmp_path, var):
    prof = _backend(tmp_path, var).synthesize({"B": np.array([100.0, 200.0])}, WL)
    assert prof.shape == (2, 4, WL.size) and np.all(np.isfinite(prof))
    assert os.access(_backend(tmp_path, var)._executable(), os.X_OK)
