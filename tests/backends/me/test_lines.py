"""Line table and Zeeman patterns (reference: LL04 = Landi Degl'Innocenti & Landolfi 2004)."""

from fractions import Fraction

import numpy as np
import pytest

from stokesflow.backends.me.lines import (
    PI,
    SIGMA_BLUE,
    SIGMA_RED,
    LineError,
    effective_lande,
    get_lines,
    lande_ls,
    load_line_table,
    parse_term,
    zeeman_pattern,
)


@pytest.mark.parametrize(
    "term, g",
    [
        ("5P1", 2.5),  # Fe I a5P1 (LS value; NIST lists 2.50)
        ("5D0", 0.0),
        ("5P2", 11.0 / 6.0),  # LS 1.8333 (NIST 1.83)
        ("5D2", 1.5),
        ("7D1", 3.0),
        ("2D2.5", 1.2),  # 2D5/2: 1 + (35/4 + 3/4 - 6) / (35/2) = 6/5
        ("2D5/2", 1.2),
    ],
)
def test_lande_ls(term, g):
    assert parse_term(term).lande == pytest.approx(g, abs=1e-12)


def test_effective_lande_of_shipped_lines():
    # g_eff values quoted throughout the literature (e.g. Borrero et al. 2011 for HMI 6173: 2.5)
    table = load_line_table()
    assert table["FeI_6173"].g_eff == pytest.approx(2.5)
    assert table["FeI_6301"].g_eff == pytest.approx(5.0 / 3.0)
    assert table["FeI_6302"].g_eff == pytest.approx(2.5)
    assert table["FeI_5250"].g_eff == pytest.approx(3.0)
    assert table["FeI_15648"].g_eff == pytest.approx(3.0)
    assert effective_lande(1.0, 1.0, 1.0, 2.0) == pytest.approx(1.0)


@pytest.mark.parametrize("jl, ju", [(1, 0), (2, 2), (0, 1), (1, 1), (1, 2), (2.5, 1.5), (1.5, 1.5)])
def test_strengths_normalised_and_symmetric(jl, ju):
    grp, shift, s = zeeman_pattern(Fraction(jl), Fraction(ju), 1.3, 0.7)
    for g in (SIGMA_BLUE, PI, SIGMA_RED):
        assert s[grp == g].sum() == pytest.approx(1.0, abs=1e-12)
    # sigma_b and sigma_r are mirror images: same strengths, opposite shifts
    sb = sorted(zip(-shift[grp == SIGMA_BLUE], s[grp == SIGMA_BLUE]))
    sr = sorted(zip(shift[grp == SIGMA_RED], s[grp == SIGMA_RED]))
    np.testing.assert_allclose(np.array(sb), np.array(sr), atol=1e-12)


def test_pattern_of_fe6301_matches_ll04_table_3_1():
    # J = 2 -> 2 (Delta J = 0): pi strengths 3 M^2 / (J (J+1) (2J+1)) -> M=+-2: 0.4, M=+-1: 0.1, M=0: 0
    line = load_line_table()["FeI_6301"]
    pi = line.group == PI
    assert pi.sum() == 4
    order = np.argsort(line.shift[pi])
    np.testing.assert_allclose(line.strength[pi][order], [0.4, 0.1, 0.1, 0.4], atol=1e-12)
    # pi shifts -(g_u - g_l) M = (11/6 - 3/2) M
    np.testing.assert_allclose(line.shift[pi][order], np.array([-2, -1, 1, 2]) * (11 / 6 - 1.5), atol=1e-12)
    assert line.n_components == 12


def test_fe6302_collapses_to_triplet_with_g_2p5():
    line = load_line_table()["FeI_6302"]
    assert line.n_components == 3
    order = np.argsort(line.shift)
    np.testing.assert_allclose(line.shift[order], [-2.5, 0.0, 2.5], atol=1e-12)
    assert list(line.group[order]) == [SIGMA_BLUE, PI, SIGMA_RED]
    np.testing.assert_allclose(line.strength, 1.0)


def test_unknown_line_lists_known_ones():
    with pytest.raises(LineError, match="FeI_6173"):
        get_lines(["FeI_9999"])


def test_user_table_extends_and_overrides(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text(
        '[MyLine_5000]\nwavelength = 5000.0\nloggf = -1.0\ng_eff = 1.5\n'
        '[FeI_6173]\nwavelength = 6173.34\nloggf = -2.0\nlower = "5P1"\nupper = "5D0"\n'
    )
    mine, fe = get_lines("MyLine_5000, FeI_6173", str(p))
    assert mine.g_eff == 1.5 and mine.n_components == 3
    assert fe.loggf == -2.0
    with pytest.raises(LineError, match="unknown key"):
        bad = tmp_path / "bad.toml"
        bad.write_text("[X]\nwavelength = 1.0\nloggf = 0.0\ng_eff = 1.0\nstrength = 3\n")
        get_lines(["X"], str(bad))


def test_bad_terms_raise():
    with pytest.raises(LineError):
        parse_term("5J1")
    with pytest.raises(LineError):
        parse_term("5P7")  # J > L + S
    assert lande_ls(Fraction(0), 0, Fraction(0)) == 0.0
