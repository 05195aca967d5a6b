"""The ``previous`` provider: values by position, unusable pixels, shape / name / unit checks."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from stokesflow.backends import get_backend
from stokesflow.nn_init.providers import InitError, get_provider


@pytest.fixture
def me():
    return get_backend("me", {"lines": ["FeI_6173"]})


def _cube(path, me, ny=3, nx=5, *, status=None, skip=(), units=None):
    """An init cube: /params/<name> = 1000 * j + flat pixel index, so each value says where it came from."""
    with h5py.File(path, "w") as h5:
        for j, p in enumerate(me.parameters):
            if p.name in skip:
                continue
            d = h5.create_dataset(f"params/{p.name}", data=(1000.0 * j + np.arange(ny * nx)).reshape(ny, nx))
            d.attrs["unit"] = (units or {}).get(p.name, p.unit)
        if status is not None:
            h5.create_dataset("status", data=np.asarray(status, dtype=np.uint8).reshape(ny, nx))
    return path


def test_values_by_position_and_unusable_status(tmp_path, me):
    status = np.zeros(15, dtype=np.uint8)
    status[[7, 8]] = [2, 255]  # failed, not run: the backend's own estimate instead (NaN row)
    prov = get_provider("previous", {"file": str(_cube(tmp_path / "c.h5", me, status=status))}).bind(me)
    prov.check_observation((3, 5))
    stokes = np.zeros((6, 4, 6))
    guess = prov.initial_guess(stokes, np.arange(6.0), start=4, stop=10)  # crosses rows 0 -> 1
    expected = 1000.0 * np.arange(len(me.parameters))[None, :] + np.arange(4, 10)[:, None]
    expected[[3, 4]] = np.nan  # flat pixels 7 and 8
    np.testing.assert_array_equal(guess, expected)


def test_rejects_other_shape(tmp_path, me):
    prov = get_provider("previous", {"file": str(_cube(tmp_path / "c.h5", me))}).bind(me)
    with pytest.raises(InitError, match=r"holds maps of 3 x 5 pixels, the observation has 4 x 5"):
        prov.check_observation((4, 5))
    with pytest.raises(InitError, match=r"holds 3 x 5 = 15 pixels, asked for pixels 10..20"):
        prov.initial_guess(np.zeros((10, 4, 6)), np.arange(6.0), start=10, stop=20)


def test_rejects_missing_parameter_wrong_unit_and_file(tmp_path, me):
    with pytest.raises(InitError, match=r"lacks /params/vlos.*fits \['B'"):
        get_provider("previous", {"file": str(_cube(tmp_path / "a.h5", me, skip=("vlos",)))}).bind(me)
    with pytest.raises(InitError, match=r"/params/B is in 'kG', backend 'me' fits it in 'G'"):
        get_provider("previous", {"file": str(_cube(tmp_path / "b.h5", me, units={"B": "kG"}))}).bind(me)
    with pytest.raises(InitError, match="not found"):
        get_provider("previous", {"file": str(tmp_path / "none.h5")}).bind(me)
    with pytest.raises(InitError, match="takes only 'file'"):
        get_provider("previous", {"file": "x.h5", "path": "y"})


def test_invert_refuses_a_previous_file_of_the_same_pixel_count_but_another_shape(tmp_path, me, capsys):
    """Through the command line: 5 x 3 maps for a 3 x 5 observation (15 pixels each) is exit 2."""
    from stokesflow.orchestrator.cli import main
    from stokesflow.orchestrator.synth import synthesize_observation

    obs = synthesize_observation(tmp_path / "obs.h5", instrument="hmi", scene="quiet", size=(3, 5), seed=1)
    prev = _cube(tmp_path / "prev.h5", me, ny=5, nx=3)
    out = tmp_path / "r.h5"
    code = main(["invert", "--input", str(obs), "--out", str(out), "--cluster", "serial",
                 "--init", "previous", "-I", f"file={prev}"])
    assert code == 2
    assert "holds maps of 5 x 3 pixels, the observation has 3 x 5" in capsys.readouterr().err
    assert not out.exists()


def test_a_backend_with_seed_parameters_gets_nan_columns_for_what_the_file_lacks(tmp_path, me):
    """SIR needs only B, inclination, azimuth, vlos from a seed; an ME cube binds, T ... stray_light are NaN."""
    from stokesflow.backends.sir.backend import SIRBackend

    sir = SIRBackend({"lines": ["FeI_6302"]})  # binding needs no executable
    prov = get_provider("previous", {"file": str(_cube(tmp_path / "c.h5", me))}).bind(sir)
    guess = prov.initial_guess(np.zeros((15, 4, 6)), np.arange(6.0), start=0, stop=15)
    names = sir.parameter_names
    seeded = [names.index(n) for n in ("B", "inclination", "azimuth", "vlos")]
    me_col = {p.name: j for j, p in enumerate(me.parameters)}
    for n in ("B", "inclination", "azimuth", "vlos"):
        np.testing.assert_array_equal(guess[:, names.index(n)], 1000.0 * me_col[n] + np.arange(15))
    rest = np.delete(guess, seeded, axis=1)
    assert rest.shape == (15, len(sir.init_columns) - 4) and np.all(np.isnan(rest))
    with pytest.raises(InitError, match=r"lacks /params/azimuth: backend 'sir' needs \['B', 'inclination'"):
        get_provider("previous", {"file": str(_cube(tmp_path / "d.h5", me, skip=("azimuth",)))}).bind(sir)
