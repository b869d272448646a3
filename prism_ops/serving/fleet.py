"""The hosts a supervised service runs on, and the launcher that reaches them.

    fleet = Fleet(["h1", "h2", "h3"], Launcher(["-launcher", "ssh"]))
    fleet.up()                       # the hosts a job may use now, in the given order
    fleet.lose("h2", now)            # a fault named h2: out of the next job
    fleet.probe_lost(now)            # probe every lost host once; hosts ready to come back

A host that was lost is probed through the launcher (`ssh HOST true`, or the `-launcher-exec`
program given to mpiexec), once per PROBE_S. It comes back after GOOD_PROBES good probes in a row
and after its hold: a host lost again within FLAP_S of coming back is a flapping host, and its
hold doubles (HOLD_S, 2 x HOLD_S, ... up to MAX_HOLD_S); a host that stays up FLAP_S starts again
from HOLD_S. Before a host comes back, what the old jobs left on it is killed (`clean`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

PROBE_S = 1.0
GOOD_PROBES = 5  # consecutive: a link that flaps every 2 s never reaches it
HOLD_S, MAX_HOLD_S = 5.0, 300.0
FLAP_S = 60.0
REMOTE_TIMEOUT_S = 5.0


def mpiexec_path() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if found is None:
        raise RuntimeError("the supervised service needs mpiexec (pip install mpich)")
    return found


class Launcher:
    """mpiexec with the user's launcher options, and commands on one host through the same
    remote shell hydra uses (its -launcher-exec program, or ssh)."""

    def __init__(self, mpiexec_args=()):
        self.args = list(mpiexec_args)
        self.exec = _option(self.args, "-launcher-exec") or _option(self.args, "-bootstrap-exec")
        launcher = _option(self.args, "-launcher") or _option(self.args, "-bootstrap")
        self.local = launcher in ("fork", "manual")  # every rank on this machine: no remote shell

    def command(self, hosts: list, rank_cmd: list) -> list:
        return [mpiexec_path(), "-hosts", ",".join(f"{h}:1" for h in hosts), "-n", str(len(hosts)), *self.args,
                *rank_cmd]

    def remote(self, host: str, shell_cmd: str, timeout: float = REMOTE_TIMEOUT_S) -> bool:
        """Run shell_cmd on host; whether it ran and exited 0 (False when the host is unreachable)."""
        if self.local:
            argv = ["sh", "-c", shell_cmd]
        elif self.exec:
            argv = [self.exec, host, shell_cmd]
        else:
            argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(timeout)}", host, shell_cmd]
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=timeout).returncode == 0
        except (subprocess.TimeoutExpired, OSError):
            return False

    def probe(self, host: str) -> bool:
        return self.remote(host, "true")

    def clean(self, host: str, tokens) -> bool:
        """Kill every rank of the jobs with these hello tokens on host (pkill exits 1 when none is left)."""
        if not tokens:
            return True
        # "[-]-frontend-job": the regex matches the ranks' flag, not this shell's own command line
        pattern = "|".join(f"[-]-frontend-job {t}" for t in sorted(tokens))
        return self.remote(host, f"pkill -KILL -f -- '{pattern}'; true")


def _option(args: list, name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return None


@dataclass
class Host:
    name: str
    up: bool = True
    good: int = 0  # good probes in a row since it was lost
    last_probe: float = 0.0
    hold_until: float = 0.0
    hold_s: float = HOLD_S
    back_at: float | None = None  # when it last came back
    losses: int = 0
    stale: set = field(default_factory=set)  # hello tokens of jobs that may have left processes on it


class Fleet:
    def __init__(self, names: list, launcher: Launcher):
        self.hosts = [Host(n) for n in names]
        self.launcher = launcher

    def up(self) -> list[str]:
        return [h.name for h in self.hosts if h.up]

    def lost(self) -> list[str]:
        return [h.name for h in self.hosts if not h.up]

    def host(self, name: str) -> Host | None:
        return next((h for h in self.hosts if h.name == name), None)

    def lose(self, name: str, now: float) -> None:
        h = self.host(name)
        if h is None or not h.up:
            return
        flapping = h.back_at is not None and now - h.back_at < FLAP_S
        h.hold_s = min(MAX_HOLD_S, h.hold_s * 2) if flapping else HOLD_S
        h.up, h.good, h.losses, h.hold_until = False, 0, h.losses + 1, now + h.hold_s

    def probe_lost(self, now: float) -> list[str]:
        """Probe each lost host whose turn it is; the hosts ready to come back (held long enough,
        GOOD_PROBES good probes in a row, cleaned of old jobs)."""
        ready = []
        for h in self.hosts:
            if h.up or now - h.last_probe < PROBE_S:
                continue
            h.last_probe = now
            h.good = h.good + 1 if self.launcher.probe(h.name) else 0
            if h.good >= GOOD_PROBES and now >= h.hold_until and self.clean(h):
                ready.append(h.name)
        return ready

    def clean(self, h: Host) -> bool:
        if self.launcher.clean(h.name, h.stale):
            h.stale.clear()
            return True
        return False

    def admit(self, names: list, now: float) -> None:
        for n in names:
            h = self.host(n)
            h.up, h.back_at, h.good = True, now, 0

    def describe(self) -> dict:
        return {"up": self.up(), "lost": [{"host": h.name, "losses": h.losses, "good_probes": h.good,
                                           "held_s": h.hold_s} for h in self.hosts if not h.up]}
