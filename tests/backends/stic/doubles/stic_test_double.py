"""TEST DOUBLE standing in for STiC.x: it computes no radiative transfer.

Run in a folder holding STiC's inputs (``input.cfg``, the model and, for an
inversion, the profiles), it writes STiC-like outputs (netCDF-4, i.e. HDF5,
with STiC's variable names and layout) and reproduces STiC's failure modes,
chosen per pixel by the model's vturb at the top [cm/s]:

- 90010: the whole run crashes (SIGSEGV);
- 90020: a fatal input error: an ``ERROR`` line, then exit 0 without outputs (STiC's ``exit(0)``);
- 90030: exit 0 without writing any output;
- 90040: hangs (until the runner's time-out kills it);
- 90050: that pixel's profiles and model are NaN (a diverged fit), the others fine;
- 90060: that pixel's profiles are all zero (never computed);
- 90070: that pixel's fit is 0.02 above the observation (a wrong minimum; inversion only).

With 1 rank (``RH_DOUBLE_RANKS=1`` from the mpiexec test double) every pixel
is zero, as STiC on 1 rank. Synthesis (mode 2): I = 1 - 0.5 exp(-(dl/0.1 A)^2)
times 4e-5 / cscal (the region's intensity unit), V = 1e-4 blong x dI/dl; in
NLTE with an ACTIVE atom in ``atoms.input`` also times 1 - 0.4 exp(-(dl/3 A)^2),
the broad wings of a chromospheric line (Ca II 8542's reach 1.5 A and further).
Inversion (mode 1): the fit equals the observation and the model is the input
with blong + 100 G (so each cycle can be told from the last).
"""

import os
import signal
import sys
import time

import h5py
import numpy as np
from scipy.io import netcdf_file

MODEL = ("ltau500", "temp", "pgas", "vlos", "vturb", "blong", "bhor", "azi")


def write_nc4(path, variables):
    with h5py.File(path, "w") as f:
        for k, v in variables.items():
            f.create_dataset(k, data=v)


def read_nc3(path):
    with netcdf_file(path, "r", mmap=False) as f:
        return {k: np.array(v[:]) for k, v in f.variables.items()}


def read_cfg(path):
    values, regions = {}, []
    for row in open(path):
        row = row.split("#", 1)[0].strip()
        if "=" not in row:
            continue
        k, v = (s.strip() for s in row.split("=", 1))
        if k == "region":
            p = [s.strip() for s in v.split(",")]
            regions.append((float(p[0]), float(p[1]), int(p[2]), float(p[3])))
        else:
            values[k] = v
    return values, regions


def active_atom():
    """Whether ``atoms.input`` (NLTE runs) lists an ACTIVE atom."""
    if not os.path.isfile("atoms.input"):
        return False
    rows = [r.split() for r in open("atoms.input") if r.strip() and not r.lstrip().startswith("#")]
    return any(len(r) > 1 and r[1].upper() == "ACTIVE" for r in rows)


def main():
    values, regions = read_cfg("input.cfg")
    m = read_nc3(values["input_model"])
    model = {k: m[k][0, 0] for k in MODEL}  # (npix, ndep)
    npix, ndep = model["temp"].shape
    top = model["vturb"][:, 0]
    codes = np.round(top).astype(int)
    if np.any(codes == 90010):
        os.kill(os.getpid(), signal.SIGSEGV)
    if np.any(codes == 90020):
        print("master, ERROR, number of wavelength points in regions != observed.nc")
        return 0
    if np.any(codes == 90030):
        return 0
    if np.any(codes == 90040):
        time.sleep(3600)
    wl = np.concatenate([w0 + dw * np.arange(nw) for w0, dw, nw, _ in regions])
    cscal = np.concatenate([np.full(nw, c) for _, _, nw, c in regions])
    mode = int(values.get("mode", "1"))
    if mode == 1:
        obs = read_nc3(values["input_profiles"])["profiles"][0, 0]  # (npix, nw, 4)
        prof = np.transpose(obs, (0, 2, 1)).copy()
        model["blong"] = model["blong"] + 100.0
    else:
        line = 6302.4931
        dl = wl - line
        intensity = 1.0 - 0.5 * np.exp(-(dl / 0.1) ** 2)
        if active_atom():
            intensity = intensity * (1.0 - 0.4 * np.exp(-(dl / 3.0) ** 2))
        didl = np.gradient(intensity, wl) if wl.size > 1 else np.zeros_like(wl)
        prof = np.zeros((npix, 4, wl.size))
        prof[:, 0] = 4.0e-5 * intensity / cscal
        prof[:, 3] = -1.0e-4 * model["blong"][:, :1] * 4.0e-5 * didl / cscal
    for i in np.flatnonzero(codes == 90050):
        prof[i] = np.nan
        model["temp"][i] = np.nan
    for i in np.flatnonzero(codes == 90060):
        prof[i] = 0.0
    if mode == 1:
        prof[codes == 90070] += 0.02
    if os.environ.get("RH_DOUBLE_RANKS") == "1":
        prof[:] = 0.0
    out = np.transpose(prof, (0, 2, 1)).reshape(1, 1, npix, wl.size, 4)
    write_nc4(values["output_profiles"], {"profiles": out, "wav": wl})
    if mode == 1:
        write_nc4(values["output_atmos"], {n: model[n].reshape(1, 1, npix, ndep) for n in MODEL})
    print("main: total elapsed time [00:00:00.010]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
