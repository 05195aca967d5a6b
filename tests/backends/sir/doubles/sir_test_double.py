#!/usr/bin/env python3
"""TEST DOUBLE standing in for SIR's sir.x: NOT the SIR code.

Reads the control-file name from stdin like sir.x, parses the 42-line control file
and behaves by the first intensity value of the observed profile, reproducing
SIR's real failure modes (see stokesflow/backends/sir/runner.py):

    I[0] == 0.9001  prints a STOP line and exits 0 (SIR's fatal errors)
    I[0] == 0.9002  exits 0 without writing any output
    I[0] == 0.9003  writes the guess unchanged and zero chi2 (SIR's answer to NaN)
    I[0] == 0.9004  hangs (sleeps far past any time-out)
    I[0] == 0.9005  crashes (SIGSEGV)
    I[0] == 0.9006  exits with code 3
    I[0] == 0.9007  kills its parent (the worker running it) once, when the environment
                    variable SIR_DOUBLE_KILL_MARKER names a file that does not exist yet
                    (the file is then written); otherwise a successful run
    otherwise       a "successful" run: for every cycle N writes guess_N.mod (the guess
                    with B doubled), guess_N.per (the observed profile), guess_N.err
                    (1 % of the model), appends (s/n, chi2 = 1.5) to <control>.chi and
                    4 iterations per cycle to <control>.log.

Environment: SIR_DOUBLE_GARBAGE=1 makes a synthesis (0 cycles) write unreadable profiles.
Only the standard library is used, so any python3 runs it.
"""

import os
import signal
import sys
import time


def main() -> int:
    control = sys.stdin.readline().strip()
    rows = open(control).read().splitlines()
    if len(rows) < 42:
        print("STOP: control file too short")
        return 0
    val = [r.split(":", 1)[1].split("!", 1)[0].strip() for r in rows[:42]]
    cycles, observed, model = int(val[0]), val[1], val[7]
    stem = control.rsplit(".", 1)[0]
    print(" SIR TEST DOUBLE (not SIR)")
    if cycles == 0:
        grid = open(val[4]).read().splitlines()[-1]
        start, step, end = (float(x) for x in grid.split(":", 1)[1].split(","))
        n = int(round((end - start) / step)) + 1
        with open(observed, "w") as f:
            for k in range(n):
                if os.environ.get("SIR_DOUBLE_GARBAGE"):
                    f.write("garbage\n")
                else:
                    x = (start + k * step) / 60.0
                    f.write(f"1 {start + k * step:.4f} {1 - 0.5 / (1 + x * x):.6e} 0 0 {0.01 * x / (1 + x * x) ** 2:.6e}\n")
        return 0
    per = open(observed).read().splitlines()
    first = float(per[0].split()[2])
    mode = round(first, 4)
    if mode == 0.9001:
        print(" STOP: The  magnetic field (model 1)     is zero somewhere.")
        return 0
    if mode == 0.9002:
        return 0
    if mode == 0.9004:
        time.sleep(600)
    if mode == 0.9005:
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode == 0.9006:
        return 3
    marker = os.environ.get("SIR_DOUBLE_KILL_MARKER")
    if mode == 0.9007 and marker and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getppid()))
        os.kill(os.getppid(), signal.SIGKILL)
        return 0
    mod = open(model).read().splitlines()
    for c in range(1, cycles + 1):
        out = [mod[0]]
        err = ["0.01 0.0 0.0"]
        for r in mod[1:]:
            v = [float(x) for x in r.split()]
            if mode != 0.9003:
                v[4] *= 2.0
            out.append(" ".join(f"{x:.6e}" for x in v))
            err.append(" ".join(f"{abs(x) * 0.01:.6e}" for x in v))
        open(f"{model[:-4]}_{c}.mod", "w").write("\n".join(out) + "\n")
        open(f"{model[:-4]}_{c}.err", "w").write("\n".join(err) + "\n")
        open(f"{model[:-4]}_{c}.per", "w").write("\n".join(per) + "\n")
        with open(f"{stem}.chi", "a") as f:
            f.write(f"  1000.0  {0.0 if mode == 0.9003 else 1.5}\n")
        with open(f"{stem}.log", "a") as f:
            f.write("  it  DE     s/n      chi**2\n   0       1.0E+03  2.0E+00\n")
            for it in range(1, 5):
                f.write(f"  {it}  -3.  1.0E+03  1.5E+00  1.0 0 0 0 0 -1 0\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
