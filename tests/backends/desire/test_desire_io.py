"""DeSIRe formats: its control file keeps DeSIRe's 45-line layout; each of its own inputs
round-trips through its writer and parser; the formats it shares with SIR come from SIR's io."""

from __future__ import annotations

import numpy as np
import pytest

from stokesflow.backends.desire import io
from stokesflow.backends.desire.backend import DesireBackend, nlte_table
from stokesflow.backends.desire.errors import DesireError
from stokesflow.backends.sir import io as sir_io
from stokesflow.backends.sir.atomic import get_classical_lines
from stokesflow.backends.sir.errors import SIRError

# The control file of DeSIRe's own example (BasilioRuiz/DeSIRe, desire/run/example/desire.dtrol,
# commit 2e6d608, DeSIRe 5.06), labels only: the layout read by position in desire/src/desire.f
# (the mreadi3/mreadr3/mreadc2 calls from 'numero de ciclos' to 'RH models mass or tau').
DESIRE_LABELS = """Number of cycles          (*)
Observed profiles         (*)
Stray light file             
PSF file                     
Wavelength grid file      (s)
Atomic parameters file       
Abundances file              
Initial guess model 1     (*)
Initial guess model 2        
Coordinates file             
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
Estimated S/N for I          
Continuum contrast           
Tolerance for SVD            
Initial diagonal element     
Splines/Linear Interpolation 
Gas pressure at surface 1    
Gas pressure at surface 2    
NLTE thresh. (0=NLTE,>10 LTE)
Number of rays               
Integration method           
Final evaluation of profile  
RH models mass (m) or tau(t) """.split("\n")

FILES = dict(observed="observed.per", model="guess.mod", grid="grid.grid", lines="LINES", abundances="ABUNDANCES",
             coordinates="pos.coor")


def _control(strategy: str, nlte: bool = True) -> str:
    return io.format_control(io.control_values(sir_io.STRATEGIES[strategy], sn=1000.0, nlte=nlte, **FILES))


@pytest.mark.parametrize("strategy", ["reference", "assisted"])
def test_control_file_has_desires_45_line_layout(strategy):
    rows = _control(strategy).splitlines()
    assert len(rows) == 45
    assert [r.split(":", 1)[0] for r in rows] == DESIRE_LABELS


def test_reference_strategy_values_line_by_line():
    v = [r.split(":", 1)[1] for r in _control("reference").splitlines()]
    # line numbers of DeSIRe's layout (SIR's lines 10-32 moved down by one for the coordinates file)
    expected = {1: "3", 2: "observed.per", 5: "grid.grid", 6: "LINES", 7: "ABUNDANCES", 8: "guess.mod", 9: "",
                10: "pos.coor", 11: "1", 12: "1", 13: "1", 14: "1", 15: "0", 16: "1,3,5", 17: "", 18: "1",
                19: "1,3", 20: "1,3", 21: "1", 22: "1", 23: "1", 34: "1000",
                41: "0", 42: "3", 43: "2", 44: "0,0,2", 45: "t"}
    for line, value in expected.items():
        assert v[line - 1] == value, f"line {line}"
    assert all(v[k] == "" for k in range(23, 31))  # no second model


def test_assisted_and_lte_values():
    v = [r.split(":", 1)[1] for r in _control("assisted", nlte=False).splitlines()]
    assert v[0] == "1" and (v[15], v[18], v[19]) == ("5", "3", "3")  # cycles; T, B, vlos
    assert (v[16], v[17], v[20], v[21], v[22]) == ("", "", "", "", "")
    assert v[40] == "10"  # DeSIRe's LTE threshold: its SIR engine alone
    assert v[43] == "2"  # the only cycle writes model, profiles and errors
    assert io.final_evaluation(0) == "2" and io.final_evaluation(4) == "0,0,0,2"


def test_desires_example_control_file_parses():
    # rows 41-45 of desire/run/example/desire.dtrol (DeSIRe 5.06), with their comments
    tail = ["NLTE thresh. (0=NLTE,>10 LTE): 0.01              !10 (LTE)=default",
            "Number of rays               : 3                 !0 or blank=3",
            "Integration method           : 2                 !0=herm_int, 1=herm, 2=bzr3 ",
            "Final evaluation of profile  : 0,0,0,0,1",
            "RH models mass (m) or tau(t) : t                 !default=m"]
    rows = _control("reference").splitlines()[:40] + tail
    back = io.parse_control("\n".join(rows))
    assert (back["nlte_threshold"], back["rays"], back["integration"], back["final_evaluation"],
            back["rh_models"]) == ("0.01", "3", "2", "0,0,0,0,1", "t")


def test_control_round_trip_and_errors():
    text = _control("reference")
    assert io.format_control(io.parse_control(text)) == text
    with pytest.raises(SIRError, match="unknown DeSIRe control key.*'mu'"):
        io.format_control({"mu": "1"})  # SIR's mu line does not exist in DeSIRe
    with pytest.raises(SIRError, match="DeSIRe control file has 44 lines, expected 45"):
        io.parse_control("\n".join(text.splitlines()[:44]))
    # SIR's 42-line layout is unchanged by the shared writer
    sir = sir_io.format_control(sir_io.control_values(sir_io.STRATEGIES["reference"], **{
        k: v for k, v in FILES.items() if k != "coordinates"}))
    assert len(sir.splitlines()) == 42 and sir_io.parse_control(sir)["mu"] == "1"


def test_keywords_round_trip_and_errors():
    kw = {"ATOMS_FILE": "atoms.input", "MOLECULES_FILE": "molecules.input", "N_MAX_ITER": "200",
          "KURUCZ_PF_DATA": "/opt/desire/var/Kurucz/pf_Kurucz.input"}
    assert io.parse_keywords(io.format_keywords(kw)) == kw
    with pytest.raises(DesireError, match="upper-case"):
        io.format_keywords({"atoms_file": "x"})
    with pytest.raises(DesireError, match="no '#'"):
        io.format_keywords({"ATOMS_FILE": "a#b"})
    # a row of DeSIRe's example keyword.input, with its indentation and a comment before it
    assert io.parse_keywords("# c\n  ATOMS_FILE     = input/atoms.input\n##I_SUM = -1\n") == {
        "ATOMS_FILE": "input/atoms.input"}


def test_atoms_and_molecules_round_trip():
    atoms = [io.RHEntry("/v/Atoms/H_6.atom", False, "ZERO_RADIATION", "pops.H.out"),
             io.RHEntry("/v/Atoms/CaII_CRDbark.atom", True, "ZERO_RADIATION", "pops.CA.out")]
    assert io.parse_atoms(io.format_atoms(atoms)) == atoms
    mols = [io.RHEntry("/v/Molecules/H2.molecule", False, "LTE_POPULATIONS")]
    assert io.parse_molecules(io.format_molecules(mols)) == mols
    with pytest.raises(DesireError, match="hydrogen"):
        io.format_atoms(atoms[1:])
    with pytest.raises(DesireError, match="initial solution"):
        io.format_atoms([io.RHEntry("/v/Atoms/H_6.atom", False, "HOT_START", "pops.H.out")])
    with pytest.raises(DesireError, match="header says 2 entries, found 1"):
        io.parse_atoms("2\n/v/Atoms/H_6.atom PASSIVE ZERO_RADIATION pops.H.out\n")
    # the first rows of DeSIRe's example atoms.input parse as written there
    example = "# Nmetals\n\n  2\n\n  ../../var/Atoms/H_6.atom  PASSIVE  ZERO_RADIATION  pops.H.out\n" \
              "  ../../var/Atoms/CaII_CRDbark.atom  ACTIVE  ZERO_RADIATION  pops.CA.out\n#end\n"
    assert [e.active for e in io.parse_atoms(example)] == [False, True]


def test_coordinates_and_chi():
    assert io.format_coordinates() == "0,0,0,0\n"
    np.testing.assert_allclose(io.parse_desire_chi("   645.409058       8.52544233E-03  0.487171799\n"),
                               [645.409058, 8.52544233e-3, 0.487171799])
    with pytest.raises(DesireError, match="expected 3 numbers"):
        io.parse_desire_chi("1 2")


def test_log_chi2_per_cycle():
    # the layout of a desire.log written by DeSIRe 5.06 (two cycles, shortened)
    log = ("  it  DE     s/n      chi**2    Mac1   Mac2   mic1   mic2   fill2 Ic1/Ic2 stray\n"
           "   0       2.45E+00  4.782E+05\n"
           "   1  -3.  1.04E+01  2.640E+04  1.500  0.000  0.300  0.000  0.000 -1.000  0.000\n"
           "   2  -4.  4.36E+01  1.543E+03  2.250  0.000  0.150  0.000  0.000 -1.000  0.000\n \n"
           "  it  DE     s/n      chi**2    Mac1   Mac2   mic1   mic2   fill2 Ic1/Ic2 stray\n"
           "   0       2.17E+02  8.488E+01\n"
           "   1  -1.  2.43E+02  7.153E+01  2.616  0.000  0.000  0.000  0.000 -1.000  0.000\n")
    np.testing.assert_allclose(io.log_chi2(log), [1.543e3, 7.153e1])
    assert sir_io.count_iterations(log) == 3
    assert io.log_chi2("  it  DE\n   0       2.45E+00  4.782E+05\n").tolist() == [4.782e5]


def test_nlte_line_list_round_trips_with_levels():
    # the backend's default tables: the project's plus the packaged data/nlte.toml
    lines = DesireBackend({"lines": ["FeI_6301", "CaII_8542"]})._lines()
    assert [ln.name for ln in lines] == ["FeI_6301", "CaII_8542"]
    text = sir_io.format_lines(lines, levels={2: (2, 4)})
    back = sir_io.parse_lines(text)
    assert back[0]["levels"] is None and back[1]["levels"] == (2, 4)
    ca = back[1]
    assert (ca["element"], ca["stage"], ca["lower"], ca["upper"]) == ("Ca", 2, (2, "D", 2.5), (2, "P", 1.5))
    assert ca["wavelength"] == pytest.approx(8542.091, abs=1e-4) and ca["loggf"] == pytest.approx(-0.362, abs=1e-3)
    # sigma back in cm^2: DeSIRe's LINES_NLTE gives 8.1486e-15 for Ca II 8542 (291 a0^2 in nlte.toml)
    assert ca["sigma"] == pytest.approx(8.1486e-15, rel=1e-3)
    # row 4 of DeSIRe's run/example/input/LINES_NLTE, as written there (with its comment)
    row = "  4=CA 2  8542.091    1.0   1.7000  -0.36199   2D 2.5- 2P 1.5   0.275  8.1486e-15  2.  4.  # Ca II IR"
    assert sir_io.parse_lines(row)[0]["levels"] == (2, 4)
    # SIR's rows keep parsing with no levels
    assert sir_io.parse_lines(sir_io.format_lines(get_classical_lines(["FeI_6302"])))[0]["levels"] is None


def test_nlte_table_levels_match_the_line_terms():
    # the levels of each line in its RH atom (CaII_CRDbark.atom: 0 4S 2S1/2, 1 3D 2D3/2, 2 3D 2D5/2,
    # 3 4P 2P1/2, 4 4P 2P3/2) must carry the line's J values
    j_of_level = {0: 0.5, 1: 1.5, 2: 2.5, 3: 0.5, 4: 1.5}
    b = DesireBackend({"lines": sorted(nlte_table())})
    for ln in b._lines():
        lo, up = nlte_table()[ln.name]["levels"]
        assert (float(ln.lower.J), float(ln.upper.J)) == (j_of_level[lo], j_of_level[up]), ln.name
