"""The real STiC, end to end on a few pixels (marker ``external``; set STOKESFLOW_STIC to run).

Built and run here from github.com/jaimedelacruz/stic (git HEAD, LTE module,
MPICH); skipped cleanly when STOKESFLOW_STIC is unset, failing when it is set
but unusable.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require_external_code
from stokesflow.backends import STATUS_OK
from stokesflow.backends.stic.backend import STiCBackend
from stokesflow.backends.stic.runner import ENV_VAR

pytestmark = pytest.mark.external

LINE = 6302.4931  # Fe I 6302 [A, air], the project's line table
WL = LINE + 0.02 * np.arange(-12, 13)
#: Both Fe I lines, 25 points each (20 mA steps), for the inversion.
WL2 = np.concatenate([6301.5012 + 0.02 * np.arange(-12, 13), WL])


@pytest.fixture(scope="module")
def stic() -> STiCBackend:
    require_external_code(ENV_VAR, STiCBackend, "STiC")
    return STiCBackend({"lines": ["FeI_6302"], "timeout": 300.0})


def test_synthesis_follows_the_project_conventions(stic):
    """Signs as DESIGN.md states them, from STiC's own profiles (HSRA, 1000 G)."""
    p = {"B": np.array([1000.0, 1000.0, 1000.0, 0.0, 0.0]), "inclination": np.array([0.0, 90.0, 90.0, 0.0, 0.0]),
         "azimuth": np.array([0.0, 0.0, 45.0, 0.0, 0.0]), "vlos": np.array([0.0, 0.0, 0.0, 1.0, 0.0])}
    r = stic.synthesize_chunk(p, WL)
    assert r.status.tolist() == [STATUS_OK] * 5, r.errors
    s = r.synthetic.astype(float)
    c = int(np.argmin(np.abs(WL - LINE)))
    # continuum units: the far wing is the guess model's continuum to within the line's wing (2 %)
    assert np.all(np.abs(s[:, 0, 0] - 1.0) < 0.02)
    assert s[0, 3, :c].max() > 0.05 and s[0, 3, c + 1:].min() < -0.05  # inclination 0: V > 0 in the blue wing
    assert s[1, 1, c] < -0.02 and np.abs(s[1, 2]).max() < 1e-6  # inclination 90, azimuth 0: Q < 0 at centre, U = 0
    assert s[2, 2, c] < -0.02 and np.abs(s[2, 1]).max() < 1e-6  # azimuth 45: U < 0 at centre, Q = 0
    # vlos = +1 km/s is a redshift of 1 km/s (21.0 mA at 6302 A): the centre of gravity of 1 - I moves by
    # that, to 2 mA (the 20 mA grid and the wings' asymmetry)
    cog = [np.sum(WL * (1 - s[k, 0])) / np.sum(1 - s[k, 0]) for k in (3, 4)]
    assert cog[0] - cog[1] == pytest.approx(LINE * 1.0 / 299792.458, abs=0.002)


def test_inversion_recovers_a_known_field(stic):
    """STiC inverts STiC's own noiseless profiles (HSRA, 800 G, 30 deg, azimuth 20 deg, 0.5 km/s) from a
    start 40 % off in B, 20 deg in inclination and azimuth and 0.5 km/s in vlos (an ME-like guess).

    Tolerances: 5 % in B, 5 deg in the angles, 0.15 km/s in vlos, at log tau = -1. The profiles are
    noiseless, so the errors are the temperature's (HSRA on 4 nodes with cubic Bezier interpolation
    cannot be the true stratification, and the field and velocity absorb the difference) and the
    fit's; measured here (reduced chi2 61 for noise 1e-3): B -0.3 %, inclination +2.6 deg,
    azimuth +3.1 deg, vlos -0.07 km/s (with linear interpolation between nodes: -5 %, -6 deg, -6 deg).
    """
    b = STiCBackend({"lines": ["FeI_6301", "FeI_6302"], "strategy": "assisted", "max_iter": 20, "noise": 1e-3,
                     "nodes": {"T": 4, "vlos": 1, "vmic": 1, "blong": 1, "bhor": 1, "azimuth": 1}, "timeout": 600.0})
    truth = {"B": np.array([800.0]), "inclination": np.array([30.0]), "azimuth": np.array([20.0]),
             "vlos": np.array([0.5])}
    obs = b.synthesize(truth, WL2)
    init = np.full((1, len(b.parameter_names)), np.nan)
    for name, value in (("B", 480.0), ("inclination", 50.0), ("azimuth", 40.0), ("vlos", 0.0)):
        init[0, b.parameter_names.index(name)] = value
    r = b.invert(obs, WL2, init)
    assert r.status.tolist() == [STATUS_OK], r.errors
    assert r.param("B")[0] == pytest.approx(800.0, rel=0.05)
    assert r.param("inclination")[0] == pytest.approx(30.0, abs=5.0)
    assert r.param("azimuth")[0] == pytest.approx(20.0, abs=5.0)
    assert r.param("vlos")[0] == pytest.approx(0.5, abs=0.15)
    assert np.isfinite(r.chi2[0]) and np.all(np.isfinite(r.stratified["Pe"][0]))


#: Ca II 8542 grid of the NLTE test: 81 points of 30 mA (+-1.2 A).
CA_WL = 8542.091 + 0.03 * np.arange(-40, 41)


def test_nlte_ca_ii_8542_inversion_from_the_built_in_fal_c():
    """NLTE (STiC's RH module, Ca II from STiC's ``CaII_bklm.atom``) without a model option: the guess is
    the built-in FAL-C (up to log tau -7.5). STiC synthesises one pixel from FAL-C (1000 G, 40 deg,
    azimuth 30 deg, 0.5 km/s), noise 1e-3 is added, and STiC inverts it from FAL-C with the guess field
    (400 G, 60 deg, 30 deg, 0 km/s): one cycle of 3 iterations, T on 7 nodes, the others on 1, with
    the backend's NLTE interpolation between nodes (linear: with cubic Bezier, T through 4, 5 and 7 nodes
    overshot at the top, to 20,000-37,000 K with 7, and STiC aborted the fit, 'ERROR in the evaluation
    of FX'; linear with 5 nodes too). The assisted strategy's own nodes (T 5, vlos and Blong 3) and 20
    iterations: with cubic interpolation past the 600 s time-out; with linear 167 s, B 992 G,
    inclination 17.5 deg, vlos 1.31 km/s, reduced chi2 114 (flagged poor).

    Measured here (STiC HEAD of 2026-11-30, 2 ranks): B 830 G (-17 %), inclination 30.7 deg (-9.3),
    azimuth 33.1 deg (+3.1), vlos 0.43 km/s (-0.07), reduced chi2 78; 88 s of CPU. Three iterations
    do not converge: tolerances 25 %, 15 deg, 10 deg, 0.25 km/s.
    """
    require_external_code(ENV_VAR, STiCBackend, "STiC")
    b = STiCBackend({"atmosphere": "nlte", "atoms": ["H_6.atom", "CaII_bklm.atom"], "active": ["CaII_bklm.atom"],
                     "noise": 1e-3, "timeout": 900.0, "strategy": "assisted", "max_iter": 3,
                     "nodes": {"T": 7, "vlos": 1, "vmic": 1, "blong": 1, "bhor": 1, "azimuth": 1}})
    assert b.options.model is None and b.log_tau[0] == pytest.approx(-7.5) and b.log_tau.size == 88
    truth = {"B": np.array([1000.0]), "inclination": np.array([40.0]), "azimuth": np.array([30.0]),
             "vlos": np.array([0.5])}
    syn = b.synthesize_chunk(truth, CA_WL)
    assert syn.status.tolist() == [STATUS_OK], syn.errors
    s = syn.synthetic.astype(float)
    # units of FAL-C's continuum at 8540.6 A (STiC's, without the Ca II atom): the core about 0.2, the
    # wing at -1.2 A about 0.56 (DeSIRe's FAL-C profile in its HSRA units: 0.21 and 0.58)
    assert 0.15 < s[0, 0, 40] < 0.25 and 0.5 < s[0, 0, 0] < 0.62
    rng = np.random.default_rng(5)
    r = b.invert(s + rng.normal(0.0, 1e-3, s.shape), CA_WL)
    assert r.status.tolist() == [STATUS_OK], r.errors
    assert r.param("B")[0] == pytest.approx(1000.0, rel=0.25)
    assert r.param("inclination")[0] == pytest.approx(40.0, abs=15.0)
    assert r.param("azimuth")[0] == pytest.approx(30.0, abs=10.0)
    assert r.param("vlos")[0] == pytest.approx(0.5, abs=0.25)
    assert np.isfinite(r.chi2[0]) and np.all(np.isfinite(r.stratified["T"][0]))
