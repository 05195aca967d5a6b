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


def test_measured_lande_factors_replace_the_ls_values(tmp_path):
    # Fe I 6302.5 (5P1 -> 5D0): the upper level has J = 0, so the pattern is a triplet at -+g_lower;
    # pyMilne's measured g_lower = 2.49 instead of LS 2.5 (shared/data README)
    p = tmp_path / "measured.toml"
    p.write_text(
        '[FeI_6302]\nwavelength = 6302.4931\nloggf = -1.160\nlower = "5P1"\nupper = "5D0"\n'
        'g_lower = 2.49\ng_upper = 0.0\n'
        '[FeI_6301]\nwavelength = 6301.4995\nloggf = -0.718\nlower = "5P2"\nupper = "5D2"\n'
        'g_lower = 1.84\ng_upper = 1.50\n'
    )
    fe6302, fe6301 = get_lines(["FeI_6302", "FeI_6301"], str(p))
    order = np.argsort(fe6302.shift)
    np.testing.assert_allclose(fe6302.shift[order], [-2.49, 0.0, 2.49], atol=1e-12)
    assert fe6302.g_eff == pytest.approx(2.49)
    # J = 2 -> 2: pi components shifted by -(g_u - g_l) M = 0.34 M; g_eff = (g_u + g_l) / 2 (LL04 3.44)
    pi = fe6301.group == PI
    np.testing.assert_allclose(np.sort(fe6301.shift[pi]), np.array([-2, -1, 1, 2]) * 0.34, atol=1e-12)
    assert fe6301.g_eff == pytest.approx(1.67)
    # sigma components: -(g_u M_u - g_l M_l), e.g. M_u = 2 -> M_l = 1: -(3.0 - 1.84)
    assert np.any(np.isclose(fe6301.shift[fe6301.group == SIGMA_BLUE], -(1.5 * 2 - 1.84 * 1)))
    # only one measured: the other stays LS
    one = tmp_path / "one.toml"
    one.write_text('[L]\nwavelength = 6301.4995\nloggf = -0.7\nlower = "5P2"\nupper = "5D2"\ng_lower = 1.84\n')
    (line,) = get_lines(["L"], str(one))
    np.testing.assert_allclose(np.sort(line.shift[line.group == PI]), np.array([-2, -1, 1, 2]) * (1.84 - 1.5))


def test_measured_lande_factors_need_the_terms(tmp_path):
    p = tmp_path / "noterms.toml"
    p.write_text("[L]\nwavelength = 6000.0\nloggf = -1.0\ng_lower = 1.5\ng_upper = 1.0\n")
    with pytest.raises(LineError, match="without the terms"):
        get_lines(["L"], str(p))
    p.write_text('[L]\nwavelength = 6000.0\nloggf = -1.0\nlower = "5P1"\nupper = "5D0"\ng_lower = "x"\n')
    with pytest.raises(LineError, match="g_lower must be a number"):
        get_lines(["L"], str(p))


def test_a_bad_entry_does_not_corrupt_the_cached_table(tmp_path):
    # regression (issue 6): the cache handed out dicts that were mutated and not restored on error,
    # so the second call raised KeyError('_where') instead of the line-table error
    bad = tmp_path / "bad.toml"
    bad.write_text('[X]\nwavelength = 6000.0\nloggf = 0.0\nlower = "5J1"\nupper = "5D0"\n')
    for _ in range(3):
        with pytest.raises(LineError, match="5J1"):
            get_lines(["X"], str(bad))
    # the packaged table is untouched, and an edited user table is read again
    assert get_lines(["FeI_6173"])[0].g_eff == pytest.approx(2.5)
    import os

    bad.write_text('[X]\nwavelength = 6000.0\nloggf = 0.0\nlower = "5P1"\nupper = "5D0"\n')
    os.utime(bad, ns=(1, 1_000_000_000_000))  # a new modification time even on a coarse clock
    assert get_lines(["X"], str(bad))[0].g_eff == pytest.approx(2.5)
    # what load_line_table hands out is the caller's to change
    table = load_line_table()
    table.pop("FeI_6173")
    assert "FeI_6173" in load_line_table()
