"""Test hooks for the fault matrix (tools/fault_matrix.py); they do nothing unless set.

    PRISM_PHASE_LOG=DIR     every phase change appends "pid phase" to DIR/rank<R>.log
    PRISM_PHASE_HOLD=P:S    the first phase that starts with P is held open for S seconds

The fault matrix reads the logs to signal a rank while it is inside a given phase; a hold keeps
a short phase (the handshake) open long enough for the signal to land in it. Heartbeats go on
while a phase is held, so a held rank is alive, not silent.
"""

from __future__ import annotations

import os
import time

_held: set[str] = set()


def trace_phase(rank: int, phase: str) -> None:
    """Called by `watch.Watch.phase` on every change of phase."""
    log = os.environ.get("PRISM_PHASE_LOG")
    if log:
        with open(os.path.join(log, f"rank{rank}.log"), "a") as f:
            f.write(f"{os.getpid()} {phase}\n")
    hold = os.environ.get("PRISM_PHASE_HOLD")
    if hold:
        name, _, seconds = hold.rpartition(":")
        if phase.startswith(name) and name not in _held:
            _held.add(name)
            time.sleep(float(seconds))
