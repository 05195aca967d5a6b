"""TEST DOUBLE standing in for mpiexec: NOT an MPI launcher.

``mpiexec_test_double.py -n K program [args]`` runs ``program`` once, in the
foreground, with RH_DOUBLE_RANKS=K in its environment, and exits with its exit
code (a program killed by a signal gives 128 + the signal, as mpiexec reports).
"""

import os
import subprocess
import sys


def main():
    args = sys.argv[1:]
    if len(args) < 3 or args[0] != "-n":
        print("usage: mpiexec_test_double.py -n K program [args]")
        return 2
    env = dict(os.environ, RH_DOUBLE_RANKS=args[1])
    rc = subprocess.call(args[2:], env=env)
    return 128 - rc if rc < 0 else rc


if __name__ == "__main__":
    sys.exit(main())
