"""How the tests launch MPI jobs: which launcher, with what environment.

    from launch import MPIEXEC, ENV, mpirun
    p, seconds = mpirun(2, sys.executable, "tests/mpi/check_run.py", ...)

MPIEXEC is the test venv's own `mpiexec` (the mpich wheel), else the one on PATH; the Open MPI
tier (`tools/test_openmpi.sh`) sets PRISM_TEST_MPIEXEC to Open MPI's `mpirun`. Open MPI needs
two things MPICH does not: `--oversubscribe` to start more ranks than this machine has cores (the
suite runs 3 and 4 ranks on 2 cores), and, run as root (CI, containers),
OMPI_ALLOW_RUN_AS_ROOT=1 and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 (MPICH ignores both).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
MPIEXEC = (os.environ.get("PRISM_TEST_MPIEXEC")
           or (str(BIN / "mpiexec") if (BIN / "mpiexec").exists() else shutil.which("mpiexec")))
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
           OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


@functools.lru_cache(maxsize=None)
def launcher_name() -> str:
    """'Open MPI', 'MPICH' (Hydra) or 'unknown', from the launcher's --version."""
    if MPIEXEC is None:
        return "none"
    try:
        out = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True, timeout=30, env=ENV).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if "Open MPI" in out or "OpenRTE" in out:
        return "Open MPI"
    return "MPICH" if "HYDRA" in out or "MPICH" in out else "unknown"


def launch_flags() -> list[str]:
    return ["--oversubscribe"] if launcher_name() == "Open MPI" else []


def mpirun(n, *args, timeout=240, mpmd=None, env=None):
    """Run `MPIEXEC -n n args...` (and an MPMD part `: -n k more...`); (CompletedProcess, seconds)."""
    cmd = [MPIEXEC, *launch_flags(), "-n", str(n), *args]
    if mpmd:
        cmd += [":", "-n", str(mpmd[0]), *mpmd[1:]]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV if env is None else env)
    return p, time.monotonic() - t0
