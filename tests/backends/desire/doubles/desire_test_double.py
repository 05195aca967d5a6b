#!/usr/bin/env python3
"""TEST DOUBLE standing in for DeSIRe's ``desire``: NOT the DeSIRe code.

Takes the control file as its argument like DeSIRe, parses the 45-line control
file, checks that RH's inputs exist (keyword.input, the atom and molecule files
it names) and behaves by the first intensity value of the observed profile,
reproducing DeSIRe's real failure modes (checked with DeSIRe 5.06):

    I[0] == 0.9001  prints '-TERMINATING ERROR in routine ...' and exits 0 (DeSIRe's fatal errors)
    I[0] == 0.9002  exits 0 without writing any output
    I[0] == 0.9003  what DeSIRe does with a NaN profile: exits 0 with every output written,
                    the guess unchanged, a log with the iteration-0 row only and a .chi
                    holding the start value 1e8
    I[0] == 0.9004  hangs (sleeps far past any time-out)
    I[0] == 0.9005  crashes (SIGSEGV)
    I[0] == 0.9006  exits with code 3
    otherwise       a "successful" run: writes guess_N.mod for the last cycle N (the guess
                    with B doubled), guess_N.per (the observed profile), guess_N.err (1 %
                    of the model), <control>.chi (s/n, scale, chi2) and a log of N cycles
                    of 4 iterations, the last at chi2 = 1.5.

A missing RH input prints '-TERMINATING_ERROR' (RH's spelling) and exits 0.
Only the standard library is used, so any python3 runs it.
"""

import os
import signal
import sys
import time

NLINES = 45


def rh_inputs_missing() -> str:
    if not os.path.isfile("keyword.input"):
        return "keyword.input"
    kw = {}
    for r in open("keyword.input"):
        r = r.split("#", 1)[0]
        if "=" in r:
            k, v = (x.strip() for x in r.split("=", 1))
            kw[k] = v
    for key in ("ATOMS_FILE", "MOLECULES_FILE", "KURUCZ_PF_DATA", "BARKLEM_DIR"):
        if key not in kw or not os.path.exists(kw[key]):
            return f"{key} = {kw.get(key)}"
    for key in ("ATOMS_FILE", "MOLECULES_FILE"):
        rows = [r.split("#", 1)[0].split() for r in open(kw[key])]
        for r in [r for r in rows if r][1:]:
            if not os.path.isfile(r[0]):
                return r[0]
    return ""


def main() -> int:
    if len(sys.argv) != 2:
        print(" Control file: ")  # DeSIRe asks on stdin when no argument is given
        return 0
    control = sys.argv[1]
    rows = open(control).read().splitlines()
    print(" DeSIRe TEST DOUBLE (not DeSIRe)")
    if len(rows) < NLINES:
        print("-TERMINATING ERROR in routine mread\n control file too short\n Exiting.....")
        return 0
    val = [r.split(":", 1)[1].split("!", 1)[0].strip() for r in rows[:NLINES]]
    cycles, observed, model = int(float(val[0])), val[1], val[7]
    stem = control.rsplit(".", 1)[0]
    missing = rh_inputs_missing()
    if missing:
        print(f"\n-TERMINATING_ERROR in routine readInput\n cannot open {missing}\n Exiting.....")
        return 0
    if cycles == 0:
        grid = open(val[4]).read().splitlines()[-1]
        start, step, end = (float(x) for x in grid.split(":", 1)[1].split(","))
        n = int(round((end - start) / step)) + 1
        with open(observed, "w") as f:
            for k in range(n):
                x = (start + k * step) / 60.0
                f.write(f"1 {start + k * step:.4f} {1 - 0.5 / (1 + x * x):.6e} 0 0 {0.01 * x / (1 + x * x) ** 2:.6e}\n")
        return 0
    per = open(observed).read().splitlines()
    mode = round(float(per[0].split()[2]), 4)
    if mode == 0.9001:
        print("\n-TERMINATING ERROR in routine leeuve2\n Incorrect format in the observed profiles\n Exiting.....")
        return 0
    if mode == 0.9002:
        return 0
    if mode == 0.9004:
        time.sleep(600)
    if mode == 0.9005:
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode == 0.9006:
        return 3
    nan = mode == 0.9003
    mod = open(model).read().splitlines()
    out, err = [mod[0]], ["0.01 0.0 0.0"]
    for r in mod[1:]:
        v = [float(x) for x in r.split()]
        if not nan:
            v[4] *= 2.0
        out.append(" ".join(f"{x:.6e}" for x in v))
        err.append(" ".join(f"{abs(x) * 0.01:.6e}" for x in v))
    open(f"{model[:-4]}_{cycles}.mod", "w").write("\n".join(out) + "\n")
    open(f"{model[:-4]}_{cycles}.err", "w").write("\n".join(err) + "\n")
    open(f"{model[:-4]}_{cycles}.per", "w").write("\n".join(per) + "\n")
    with open(f"{stem}.chi", "w") as f:
        f.write("   100000000.  9.99999994E-09   100000000.\n" if nan else "   645.4  8.5E-03  0.487\n")
    with open(f"{stem}.log", "w") as f:
        head = "  it  DE     s/n      chi**2    Mac1   Mac2   mic1   mic2   fill2 Ic1/Ic2 stray\n"
        if nan:
            f.write(head + "   0       2.45E+00  4.782E+05\n")
            return 0
        for c in range(cycles):
            f.write(head + "   0       1.0E+02  2.0E+00\n")
            for it in range(1, 5):
                f.write(f"  {it}  -3.  1.0E+03  {2.0 - 0.125 * it:.3E}  1.0 0 0 0 0 -1 0\n")
            f.write(" \n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
