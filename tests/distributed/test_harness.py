"""The test harness (`tests/harness`): a job started with `with_hooks` installs the package's
one test hook from the test's settings; without them, none. One Python process, no MPI."""

import os
import subprocess
import sys

from harness import with_hooks

PROGRAM = """
import time
from prism_ops.distributed import hooks
from prism_ops.distributed.watch import Watch
print(hooks.on_phase is not None)
if hooks.on_phase is not None:
    watch, t0 = Watch(1, 2, 5.0), time.monotonic()
    for phase in ("loading", "handshake", "handshake again", "generation token 1", "generation token 2"):
        watch.phase = phase
    print(round(time.monotonic() - t0, 1))
"""


def run(env):
    return subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=120)


def test_the_harness_logs_holds_and_slows_the_phases(tmp_path):
    env = with_hooks(dict(os.environ, PRISM_PHASE_LOG=str(tmp_path), PRISM_PHASE_HOLD="handshake:0.4",
                          PRISM_TEST_DECODE_SLEEP_S="0.3"))
    p = run(env)
    assert p.returncode == 0, p.stderr
    installed, seconds = p.stdout.split()
    assert installed == "True"
    # Held once (0.4 s), then 2 tokens of 0.3 s: at least that long (a loaded machine takes longer).
    assert float(seconds) >= 1.0
    lines = (tmp_path / "rank1.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["loading", "handshake", "handshake again",
                                                         "generation token 1", "generation token 2"]


def test_without_settings_there_is_no_hook():
    env = with_hooks({k: v for k, v in os.environ.items() if not k.startswith(("PRISM_PHASE", "PRISM_TEST"))})
    p = run(env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False"]
