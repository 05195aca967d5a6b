"""TEST DOUBLE standing in for RH 1.5D's rh15d_ray_pool: NOT the RH code.

Run as ``mpiexec_test_double.py -n K rh15d_ray_pool_test_double.py`` (the mpiexec
double puts K in RH_DOUBLE_RANKS). Reads keyword.input, the atmosphere cube and
the wavelength table like RH and writes RH's two output files with its layout
(fill values, convergence map in the group ``mpi``). It behaves by the
microturbulence at the top of each column (m/s), reproducing RH's real failure
modes (see stokesflow/backends/rh/runner.py):

    900.1  the whole run crashes (SIGSEGV)
    900.2  prints RH's -FATAL_ERROR message and exits 1 (MPI_Abort)
    900.3  exits 0 without writing any output
    900.4  hangs (sleeps far past any time-out)
    900.5  the column does not converge: convergence 0, fill values, exit 0
    900.6  RH gives up on the column ("crashed"): convergence -1, fill values, exit 0
    otherwise  a converged column: I = 1e-8 (1 - 0.5 exp(-(dl/0.01 nm)^2)) around
               630.2493 nm (vacuum 630.4235), V = -0.01 * B_z [T] * dI/dl (V > 0 in the blue wing for B_z > 0), Q = U = 0.

With fewer than 2 ranks it refuses like RH. Needs numpy and h5py.
"""

import os
import signal
import sys
import time

import h5py
import numpy as np

FILL = 9.96921e36


def keywords():
    out = {}
    for row in open("keyword.input"):
        row = row.split("#", 1)[0]
        if "=" in row:
            k, v = row.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def main():
    print("RH 1.5D TEST DOUBLE (not RH)")
    if int(os.environ.get("RH_DOUBLE_RANKS", "1")) < 2:
        print("\n-FATAL_ERROR in routine rh15d_ray_pool\n Must run rh15d_ray_pool with more than one process. Aborting.")
        return 1
    kw = keywords()
    with h5py.File(kw["ATMOS_FILE"], "r") as f:
        vturb = f["velocity_turbulent"][0][:, 0, 0]
        bz = f["B_z"][0][:, 0, :].mean(axis=1) if "B_z" in f else np.zeros(vturb.size)
    x0, x1 = int(kw["X_START"]), int(kw["X_END"])
    raw = open(kw["WAVETABLE"], "rb").read()
    n = int(np.frombuffer(raw[:4], ">i4")[0])
    wl = np.sort(np.concatenate([np.frombuffer(raw[4:4 + 8 * n], ">f8"), [500.0]]))
    modes = [round(float(v), 1) for v in vturb[x0:x1]]
    if 900.1 in modes:
        os.kill(os.getpid(), signal.SIGSEGV)
    if 900.2 in modes:
        print("\n\n-FATAL_ERROR in routine readAtom\n Unable to open input file H_6.atom \n Exiting.....")
        return 1
    if 900.3 in modes:
        return 0
    if 900.4 in modes:
        time.sleep(3600)
    nx = x1 - x0
    inten = np.full((nx, 1, wl.size), FILL, dtype=np.float32)
    quv = np.full((3, nx, 1, wl.size), FILL, dtype=np.float32)
    conv = np.ones((nx, 1), dtype=np.int64)
    iters = np.full((nx, 1), 7, dtype=np.int64)
    for i, m in enumerate(modes):
        if m == 900.5:
            conv[i] = 0
            continue
        if m == 900.6:
            conv[i] = -1
            continue
        prof = 1e-8 * (1 - 0.5 * np.exp(-(((wl - 630.4235) / 0.01) ** 2)))
        inten[i, 0] = prof
        quv[0, i, 0] = quv[1, i, 0] = 0.0
        quv[2, i, 0] = -0.01 * bz[x0 + i] * np.gradient(prof, wl)
    os.makedirs("output", exist_ok=True)
    with h5py.File("output/output_ray.hdf5", "w") as f:
        f["wavelength"] = wl
        f["intensity"] = inten
        for k, name in enumerate(("stokes_Q", "stokes_U", "stokes_V")):
            f[name] = quv[k]
    with h5py.File("output/output_indata.hdf5", "w") as f:
        g = f.create_group("mpi")
        g["convergence"] = conv
        g["iterations"] = iters
        g["xnum"] = np.arange(x0, x1, dtype=np.int32)
        g["ynum"] = np.zeros(1, dtype=np.int32)
    print(f"*** Job ending. Total {nx} 1-D columns: {int((conv == 1).sum())} converged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
