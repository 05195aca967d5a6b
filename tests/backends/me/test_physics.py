"""Physics checks of the ME forward model (conventions of DESIGN.md, LL04)."""

import numpy as np
import pytest

from stokesflow.backends.me.lines import ZEEMAN_CONSTANT, get_lines
from stokesflow.backends.me.model import MEModel

WAVE = 6302.4931 + np.linspace(-0.5, 0.5, 401)  # Fe I 6302.5, a normal triplet with g = 2.5
BASE = dict(B=1000.0, inclination=30.0, azimuth=20.0, vlos=0.0, doppler_width=30.0, eta0=10.0,
            damping=0.2, S0=0.3, S1=0.7)


@pytest.fixture(scope="module")
def model():
    return MEModel.for_grid(get_lines(["FeI_6302"]), WAVE)


def synth(model, **kw):
    p = dict(BASE, **kw)
    return model.synthesize({k: np.array([v]) for k, v in p.items()})[0]


def test_no_field_gives_no_polarisation_and_symmetric_I(model):
    I, Q, U, V = synth(model, B=0.0)
    assert np.abs(Q).max() < 1e-14 and np.abs(U).max() < 1e-14 and np.abs(V).max() < 1e-14
    np.testing.assert_allclose(I, I[::-1], atol=1e-12)  # grid symmetric about line centre
    assert I[0] == pytest.approx(1.0, abs=0.02)  # continuum S0 + mu S1 = 1 far from the line


def test_weak_field_limit(model):
    # LL04 eq. 9.78: V = -Delta_B g_eff cos(incl) dI/dlambda, Delta_B = 4.6686e-13 lambda0^2 B
    B, inc = 20.0, 40.0
    I0 = synth(model, B=0.0)[0]
    V = synth(model, B=B, inclination=inc)[3]
    dI = np.gradient(I0, WAVE)
    wfa = -ZEEMAN_CONSTANT * 6302.4931**2 * B * 2.5 * np.cos(np.radians(inc)) * dI
    assert np.abs(V - wfa).max() < 0.01 * np.abs(wfa).max()


def test_sign_conventions(model):
    centre = np.argmin(np.abs(WAVE - 6302.4931))
    # inclination 0, B > 0: V > 0 in the blue wing
    V = synth(model, inclination=0.0)[3]
    assert V[:centre].max() > 0 and V[:centre].max() > abs(V[:centre].min())
    # inclination 90, azimuth 0: Q < 0 at line centre, Q > 0 in the sigma lobes, U = 0, V = 0
    I, Q, U, V = synth(model, inclination=90.0, azimuth=0.0, B=2000.0)
    assert Q[centre] < 0 and Q.max() > 0
    assert np.abs(U).max() < 1e-12 and np.abs(V).max() < 1e-12
    # azimuth 45: U < 0 at line centre and Q = 0
    I, Q, U, V = synth(model, inclination=90.0, azimuth=45.0, B=2000.0)
    assert U[centre] < 0 and np.abs(Q).max() < 1e-12
    # vlos > 0 is a redshift
    I = synth(model, B=0.0, vlos=2.0)[0]
    assert WAVE[np.argmin(I)] > 6302.4931 + 0.03


def test_linear_polarisation_rotates_with_azimuth(model):
    _, Q0, U0, _ = synth(model, azimuth=0.0)
    assert np.abs(U0).max() > 1e-5  # magneto-optical effects make U at azimuth 0
    for chi in (10.0, 33.0, 60.0, 100.0, 170.0):
        _, Q, U, _ = synth(model, azimuth=chi)
        c, s = np.cos(np.radians(2 * chi)), np.sin(np.radians(2 * chi))
        # Faraday rotation is invariant under the rotation: the pair (Q, U) rotates by 2 chi
        np.testing.assert_allclose(Q, Q0 * c - U0 * s, atol=1e-12)
        np.testing.assert_allclose(U, Q0 * s + U0 * c, atol=1e-12)


def test_azimuth_is_periodic_modulo_180_and_polarity_symmetry(model):
    np.testing.assert_allclose(synth(model, azimuth=10.0), synth(model, azimuth=190.0), atol=1e-12)
    # B -> -B equals inclination -> 180 - inclination (the fit uses this to fold negative B)
    np.testing.assert_allclose(synth(model, B=-800.0, inclination=30.0), synth(model, B=800.0, inclination=150.0), atol=1e-12)


def test_mu_scales_line_part():
    m = MEModel.for_grid(get_lines(["FeI_6302"]), WAVE, mu=0.5)
    I = m.synthesize({k: np.array([v]) for k, v in BASE.items()})[0, 0]
    assert I[0] == pytest.approx(BASE["S0"] + 0.5 * BASE["S1"], abs=0.02)


def test_conventions_match_pymilne(shared_data):
    # pyMilne (independent C++ ME code) synthesised these; its conventions are those of DESIGN.md.
    # With the true parameters our synthesis must match to the noise level (sigma = 1e-3).
    import h5py

    names = ["B", "inclination", "azimuth", "vlos", "doppler_width", "eta0", "damping", "S0", "S1"]
    with h5py.File(shared_data / "pymilne_hmi_sample.h5") as f:
        wl = f["wavelength"][:]
        obs = f["stokes"][:].reshape(-1, 4, wl.size)
        truth = {n: f["truth/" + n][:].ravel() for n in names}
    syn = MEModel.for_grid(get_lines(["FeI_6173"]), wl).synthesize(truth)
    rms = np.sqrt(np.mean((syn - obs) ** 2, axis=(0, 2)))
    assert np.all(rms < 1.1e-3), rms
