"""The test harness for jobs the tests start (mpiexec prism-run ..., tools/fault_matrix.py).

    env = with_hooks(dict(os.environ, PRISM_PHASE_LOG=str(log_dir)))
    subprocess.Popen([mpiexec, "-n", "2", prism_run, ...], env=env)

`with_hooks` puts this folder first on the job's PYTHONPATH, so every Python process of the job
imports `sitecustomize.py` from here at start-up: it reads the settings below from the
environment and installs the package's one test hook (`prism_ops.distributed.hooks.on_phase`).
Without any of them set it does nothing. The package itself never reads them.

    PRISM_PHASE_LOG=DIR          every phase change appends "pid phase" to DIR/rank<R>.log
    PRISM_PHASE_HOLD=P:S         the first phase that starts with P is held open for S seconds
    PRISM_TEST_DECODE_SLEEP_S=S  the decoding rank sleeps S seconds each time its phase becomes
                                 "generation token T": as decoding starts and after each token,
                                 n + 1 times for n tokens, so a generation of n tokens lasts at
                                 least (n + 1) S

Heartbeats go on while a phase is held or a token sleeps, so such a rank is alive, not silent.
"""

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def with_hooks(env: dict) -> dict:
    """env with this folder first on PYTHONPATH (the job's processes then install the hook)."""
    path = [str(HERE)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**env, "PYTHONPATH": os.pathsep.join(path)}
