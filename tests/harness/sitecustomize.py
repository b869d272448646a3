"""Installs the test hook of a job a test started; see tests/harness/__init__.py.

Python imports this module at start-up when its folder is on PYTHONPATH (`harness.with_hooks`).
"""

import os
import time

_LOG = os.environ.get("PRISM_PHASE_LOG")
_HOLD = os.environ.get("PRISM_PHASE_HOLD")
_DECODE_SLEEP_S = float(os.environ.get("PRISM_TEST_DECODE_SLEEP_S", "0") or 0)
_held: set[str] = set()


def on_phase(rank: int, phase: str) -> None:
    """Called on every change of this rank's phase (`prism_ops.distributed.hooks.on_phase`)."""
    if _LOG:
        with open(os.path.join(_LOG, f"rank{rank}.log"), "a") as f:
            f.write(f"{os.getpid()} {phase}\n")
    if _HOLD:
        name, _, seconds = _HOLD.rpartition(":")
        if phase.startswith(name) and name not in _held:
            _held.add(name)
            time.sleep(float(seconds))
    if _DECODE_SLEEP_S > 0 and phase.startswith("generation token "):
        time.sleep(_DECODE_SLEEP_S)


if _LOG or _HOLD or _DECODE_SLEEP_S > 0:
    from prism_ops.distributed import hooks

    hooks.on_phase = on_phase
