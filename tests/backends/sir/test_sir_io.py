"""SIR formats: every writer round-trips through its parser; the control file has SIR's 42-line layout."""

from __future__ import annotations

import numpy as np
import pytest

from stokesflow.backends.sir import io
from stokesflow.backends.sir.atomic import A0_SQUARED_CM2, get_classical_lines, load_abundances
from stokesflow.backends.sir.backend import BUILTIN_MODELS, GUESS_FIELD, builtin_model, is_builtin_model
from stokesflow.backends.sir.errors import SIRError

# The control file SIR's own test case ships (BasilioRuiz/SIR-code, test/SIR_input_files/sir.trol,
# commit 8c3d60d), labels only: the layout every control file must keep, line by line.
SIR_LABELS = """Number of cycles          (*)
Observed profiles         (*)
Stray light file             
PSF file                     
Wavelength grid file      (s)
Atomic parameters file       
Abundances file              
Initial guess model 1     (*)
Initial guess model 2        
Weight for Stokes I          
Weight for Stokes Q          
Weight for Stokes U          
Weight for Stokes V          
AUTOMATIC SELECT. OF NODES?  
Nodes for temperature 1      
Nodes for electr. press. 1   
Nodes for microturb. 1       
Nodes for magnetic field 1   
Nodes for LOS velocity 1     
Nodes for gamma 1            
Nodes for phi 1              
Invert macroturbulence 1?    
Nodes for temperature 2      
Nodes for electr. press. 2   
Nodes for microturb. 2       
Nodes for magnetic field 2   
Nodes for LOS velocity 2     
Nodes for gamma 2            
Nodes for phi 2              
Invert macroturbulence 2?    
Invert filling factor?       
Invert stray light factor?   
mu=cos (theta)               
Estimated S/N for I          
Continuum contrast           
Tolerance for SVD            
Initial diagonal element     
Splines/Linear Interpolation 
Gas pressure at surface 1    
Gas pressure at surface 2    
Magnetic pressure term?      
NLTE Departures filename     """.split("\n")

FILES = dict(observed="observed.per", model="guess.mod", grid="grid.grid", lines="LINES", abundances="ABUNDANCES")


def _control(strategy: str) -> str:
    return io.format_control(io.control_values(io.STRATEGIES[strategy], sn=1000.0, **FILES))


@pytest.mark.parametrize("strategy", ["reference", "assisted", "assisted_me"])
def test_control_file_has_sirs_42_line_layout(strategy):
    rows = _control(strategy).splitlines()
    assert len(rows) == 42
    assert [r.split(":", 1)[0] for r in rows] == SIR_LABELS


def test_reference_strategy_values_line_by_line():
    v = [r.split(":", 1)[1] for r in _control("reference").splitlines()]
    expected = {1: "3", 2: "observed.per", 5: "grid.grid", 6: "LINES", 7: "ABUNDANCES", 8: "guess.mod",
                10: "1", 11: "1", 12: "1", 13: "1", 14: "0", 15: "1,3,5", 16: "", 17: "1", 18: "1,3", 19: "1,3",
                20: "1", 21: "1", 22: "1", 33: "1", 34: "1000"}
    for line, value in expected.items():
        assert v[line - 1] == value, f"line {line}"
    assert all(v[k] == "" for k in range(22, 30))  # no second model


def test_assisted_strategy_values_line_by_line():
    v = [r.split(":", 1)[1] for r in _control("assisted").splitlines()]
    assert v[0] == "1"
    assert (v[14], v[17], v[18]) == ("5", "3", "3")  # T, B, vlos
    assert (v[15], v[16], v[19], v[20], v[21]) == ("", "", "", "", "")  # Pe, vmic, gamma, phi, vmac fixed


def test_assisted_me_strategy_is_the_reference_last_cycle_alone():
    """``assisted_me``: one cycle with the nodes the reference ends with (T 5; B, vlos 3; vmic, gamma, phi 1; vmac)."""
    v = [r.split(":", 1)[1] for r in _control("assisted_me").splitlines()]
    ref = io.STRATEGIES["reference"]
    last = {k: n.split(",")[-1] for k, n in ref.nodes.items()}
    assert v[0] == "1"
    assert (v[14], v[15], v[16], v[17], v[18], v[19], v[20]) == (
        last["T"], "", last["vmic"], last["B"], last["vlos"], last["gamma"], last["phi"])
    assert v[21] == ref.vmac.split(",")[-1] == "1"


def test_control_round_trip_and_errors():
    text = _control("reference")
    back = io.parse_control(text)
    assert io.format_control(back) == text
    with pytest.raises(SIRError, match="unknown SIR control key"):
        io.format_control({"cycle": "3"})
    with pytest.raises(SIRError, match="holds '!'"):
        io.format_control({"observed": "a!b"})
    with pytest.raises(SIRError, match="41 lines, expected 42"):
        io.parse_control("\n".join(text.splitlines()[:41]))


def test_strategy_checks_nodes():
    with pytest.raises(SIRError, match="unknown node parameter"):
        io.Strategy("x", 1, {"Bfield": "1"})
    with pytest.raises(SIRError, match="comma list"):
        io.Strategy("x", 1, {"B": "1;2"})
    assert io.Strategy("x", 2, {"B": "1,*"}).nodes["B"] == "1,*"


def test_model_round_trip_builtin_hsra():
    m = builtin_model("hsra", guess=False)
    assert m.ndepth == 55 and m.log_tau[0] == pytest.approx(1.4) and m.log_tau[-1] == pytest.approx(-4.0)
    # HSRA at log tau = 0: T = 6390 K (Gingerich et al. 1971, as tabulated in SIR's hsra11.mod)
    assert m.T[np.argmin(np.abs(m.log_tau))] == pytest.approx(6390.0, abs=1.0)
    back = io.parse_model(io.format_model(m))
    for c in io.Model.COLUMNS:
        np.testing.assert_allclose(getattr(back, c), getattr(m, c), rtol=1e-5, atol=1e-6)
    assert (back.vmac, back.filling_factor, back.stray_light) == (m.vmac, m.filling_factor, m.stray_light)
    eight = io.Model(*(getattr(m, c) for c in io.Model.COLUMNS[:8]))
    assert len(io.format_model(eight).splitlines()[1].split()) == 8
    assert io.parse_model(io.format_model(eight)).z is None


def test_builtin_fal_c_reaches_the_chromosphere():
    """FAL-C (Fontenla, Avrett & Loeser 1993) on its even 0.1 grid: published values where the grid
    meets the table, the chromosphere above log tau -6, positive pressures, heights rising upwards."""
    m = builtin_model("falc", guess=False)
    assert m.ndepth == 88 and m.log_tau[0] == pytest.approx(1.2) and m.log_tau[-1] == pytest.approx(-7.5)
    np.testing.assert_allclose(np.diff(m.log_tau), -0.1, atol=1e-6)  # deep to high, monotonic, even
    k0 = int(np.argmin(np.abs(m.log_tau)))
    # the table at tau_500 = 0.9999: T 6520 K, n_e 7.697e13 cm^-3 (Pe = n_e k T = 69.3 dyn/cm2), height 0 km;
    # tolerances: the 1e-4 in tau between the table's point and the grid's
    assert m.T[k0] == pytest.approx(6520.0, abs=1.0)
    assert m.Pe[k0] == pytest.approx(7.697e13 * 1.380649e-16 * 6520.0, rel=1e-3)
    assert abs(m.z[k0]) < 0.1
    # temperature minimum 4400 K near log tau -3.6, then the chromospheric rise: above 9000 K from log tau
    # -6.5 (the table: 9450 K at tau 3.3e-7) and 12,350 K at the top (between 12,000 and 13,000 K in the table)
    assert 4400.0 <= m.T.min() <= 4410.0 and m.log_tau[np.argmin(m.T)] == pytest.approx(-3.6)
    assert np.all(m.T[m.log_tau <= -6.5] > 9000.0) and 12000.0 < m.T[-1] < 13000.0
    for col in ("Pe", "Pg", "rho"):
        v = getattr(m, col)
        assert np.all(np.isfinite(v)) and np.all(v > 0), col
    # gas pressure and density fall upwards; at the top (above log tau -7.3) the table's P_gas rises by 0.2 %
    # (P_gas / P_total grows from 0.785 to 0.801 there), which the grid keeps
    below = m.log_tau >= -7.3
    assert np.all(np.diff(m.Pg[below]) < 0) and np.all(np.diff(m.rho) < 0)
    assert np.all(np.diff(m.z) > 0) and m.z[-1] == pytest.approx(2190.0, abs=5.0)  # km above tau_500 = 1
    assert np.all(m.B == 0) and np.all(m.vlos == 0) and np.all(m.vmic > 0)
    back = io.parse_model(io.format_model(m))
    for c in io.Model.COLUMNS:
        np.testing.assert_allclose(getattr(back, c), getattr(m, c), rtol=1e-5, atol=1e-6)
    g = builtin_model("FALC")  # case-insensitive; the guess field as for the HSRA
    assert g.B[0] == GUESS_FIELD["B"] and g.gamma[0] == GUESS_FIELD["gamma"] and g.vmac == GUESS_FIELD["vmac"]
    with pytest.raises(SIRError, match=r"unknown built-in model 'valc'.*\['falc', 'hsra'\].*\.mod file"):
        builtin_model("valc")
    assert is_builtin_model("falc") and is_builtin_model("HSRA") and not is_builtin_model("guess.mod")
    assert not is_builtin_model(None)
    assert sorted(BUILTIN_MODELS) == ["falc", "hsra"]


def test_the_model_option_names_a_built_in_model_or_a_file(tmp_path):
    from stokesflow.backends.sir.backend import SIRBackend

    assert SIRBackend({}).guess_model.ndepth == 55 and SIRBackend({}).default_model() == "hsra"  # LTE: HSRA
    assert SIRBackend({"model": "falc"}).log_tau.min() == pytest.approx(-7.5)
    path = tmp_path / "guess.mod"
    path.write_text(io.format_model(builtin_model("hsra")))
    assert SIRBackend({"model": str(path)}).guess_model.ndepth == 55
    with pytest.raises(SIRError, match=r"\[backend.sir\] model: guess model nowhere.mod does not exist; .*'falc'"):
        SIRBackend({"model": "nowhere.mod"}).guess_model


def test_model_parser_errors():
    with pytest.raises(SIRError, match="rows of 8 or 11 columns"):
        io.parse_model("1 1 0\n1 2 3\n4 5 6\n")
    with pytest.raises(SIRError, match="cannot read numbers"):
        io.parse_model("1 1 0\n1 2 x 4 5 6 7 8\n")


def test_profiles_round_trip():
    rng = np.random.default_rng(3)
    stokes = rng.normal(0, 0.1, (4, 112)) + np.array([[1.0], [0], [0], [0]])
    idx = np.ones(112, dtype=int)
    off = -610.0 + 21.549 * np.arange(112)
    i, o, s = io.parse_profiles(io.format_profiles(idx, off, stokes))
    np.testing.assert_array_equal(i, idx)
    np.testing.assert_allclose(o, off, atol=5e-5)
    np.testing.assert_allclose(s, stokes, rtol=1e-7, atol=1e-12)


def test_grid_several_lines_on_one_row():
    lines = get_classical_lines("FeI_6301,FeI_6302")
    wl = 6300.89 + 0.021549 * np.arange(112)  # Hinode/SP: both lines in one 112-point block
    blocks, idx, off = io.grid_for_observation(wl, lines)
    assert len(blocks) == 1 and blocks[0].indices == (1, 2) and blocks[0].npoints == 112
    np.testing.assert_allclose(lines[0].wavelength + off / 1e3, wl, atol=1e-7)
    text = io.format_grid(blocks)
    assert text.splitlines()[-1].split(":")[0].strip() == "1,2"
    back = io.parse_grid(text)
    assert back[0].indices == (1, 2)
    assert back[0].start == pytest.approx(blocks[0].start, abs=1e-4)
    assert back[0].step == pytest.approx(21.549, abs=1e-4)
    assert back[0].npoints == 112


def test_grid_needs_even_increasing_wavelengths():
    lines = get_classical_lines(["FeI_6302"])
    with pytest.raises(SIRError, match="not evenly spaced"):
        io.grid_for_observation(np.array([6302.0, 6302.02, 6302.05]), lines)
    with pytest.raises(SIRError, match="must increase"):
        io.grid_for_observation(np.array([6302.1, 6302.0]), lines)


def test_line_list_from_project_tables_round_trips():
    lines = get_classical_lines(["FeI_6301", "FeI_6302", "FeI_6173"])
    text = io.format_lines(lines)
    rows = text.splitlines()
    # SIR reads the terms by position around the '-': ' 5P 2.0- 5D 2.0'
    assert " 5P 2.0- 5D 2.0" in rows[0] and " 5P 1.0- 5D 0.0" in rows[1]
    back = io.parse_lines(text)
    assert [b["index"] for b in back] == [1, 2, 3]
    for b, ln in zip(back, lines):
        assert b["element"] == "Fe" and b["stage"] == 1
        assert b["wavelength"] == pytest.approx(ln.wavelength, abs=1e-4)
        assert b["loggf"] == pytest.approx(ln.loggf, abs=1e-3)
        assert b["excitation"] == pytest.approx(ln.excitation, abs=1e-3)
        assert b["alpha"] == pytest.approx(ln.alpha, abs=1e-3)
        assert b["sigma"] == pytest.approx(ln.sigma * A0_SQUARED_CM2, rel=1e-5)
    # the line-list rows SIR's own test case ships parse too
    sir_row = "  5=FE 1  5250.2080      1.0    0.121    -4.938   5D 0.0- 7D 1.0  0.252 5.79467e-15"
    assert io.parse_lines(sir_row)[0]["upper"] == (7, "D", 1.0)


def test_unknown_line_names_the_fix():
    with pytest.raises(SIRError, match="atomic_table"):
        get_classical_lines(["FeI_9999"])


def test_abundances_round_trip():
    ab = load_abundances()
    assert ab[1] == 12.0 and ab[26] == pytest.approx(7.50)  # Asplund et al. (2009): Fe 7.50
    text = io.format_abundances(ab)
    back = {int(r.split()[0]): float(r.split()[1]) for r in text.split("_" * 70 + "\n")[1].splitlines()}
    assert back == pytest.approx(ab, abs=1e-3)


def test_chi_and_log_parsers():
    chi = io.parse_chi("   190.188065       552.614685\n   1046.97961       6.44601917\n")
    np.testing.assert_allclose(chi[:, 1], [552.614685, 6.44601917])
    log = ("  it  DE     s/n      chi**2    Mac1\n   0       1.90E+02  5.561E+02\n"
           "   1  -3.  4.72E+02  2.077E+02  2.000\n   2  -4.  6.90E+02  2.885E+01  2.000\n")
    assert io.count_iterations(log) == 2
