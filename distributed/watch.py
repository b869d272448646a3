"""What a waiting rank watches: its own phase, and the other ranks' silence.

    watch = Watch(rank, size, timeout_s, heartbeats)   # heartbeats: a `liveness.Liveness`, or None
    watch.phase = "forward layer 3"                    # what this rank is doing now
    watch.check(t0)                                    # on every spin of a wait started at t0

`phase` says what this rank is doing ("loading", "handshake", "forward layer 3", ...). With
heartbeats it travels with them, so a rank that finds another silent names both ranks' phases;
every change of phase also goes to the test hook, if one is set (`hooks.on_phase`).

`check` raises SilentRank once a rank has not been heard from for timeout_s (the heartbeats say
every rank is alive about once a second, so a wait may last as long as the work it waits for).
Without heartbeats (one rank, or an MPI library without MPI_THREAD_MULTIPLE), a wait itself may
last at most timeout_s instead: TimeoutError.
"""

from __future__ import annotations

import time

from . import hooks


class Watch:
    """The waiting side of one communicator (see the module docstring). Communicators that share
    heartbeats (a sub-communicator and its parent) share the phase too."""

    def __init__(self, rank: int, size: int, timeout_s: float, heartbeats=None):
        self.rank, self.size, self.timeout_s = rank, size, timeout_s
        self.heartbeats = heartbeats
        self._phase = "start"

    @property
    def phase(self) -> str:
        """What this rank is doing now (sent with its heartbeats; named in SilentRank)."""
        return self.heartbeats.phase if self.heartbeats is not None else self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        if value != self._phase and hooks.on_phase is not None:
            hooks.on_phase(self.rank, value)
        self._phase = value
        if self.heartbeats is not None:
            self.heartbeats.phase = value

    def check(self, t0: float | None = None) -> None:
        """Raise SilentRank if a rank has gone silent; without heartbeats, TimeoutError if the
        wait that started at t0 (perf_counter; None: not in a wait) has lasted over timeout_s."""
        if self.heartbeats is not None:
            self.heartbeats.check(self.timeout_s)
        elif t0 is not None and self.size > 1 and time.perf_counter() - t0 > self.timeout_s:
            raise TimeoutError(f"rank {self.rank}: a wait in {self.phase} took over {self.timeout_s:g} s (timeout)")

    def close(self) -> None:
        """Stop the heartbeats (at the very end of a process, before MPI is finalized)."""
        if self.heartbeats is not None:
            self.heartbeats.close()
