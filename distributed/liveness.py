"""Liveness: a wait fails when a rank has gone silent, never because work is long.

Every process runs one daemon thread per MPI communicator (`Liveness.of(mpi_comm)`) that sends
each other rank a tiny heartbeat, its current phase as UTF-8 (at most `MAX_PHASE` bytes), every
`interval_s`, and records when it last heard each rank and that rank's phase. Heartbeats go on
their own duplicate of the communicator (never freed: MPI_Finalize refuses to free a
communicator with unreceived messages, and beats from ranks still running are always in
flight), under their own tag (`tags.TAG_HEARTBEAT`), and are not counted in the communicator's
byte counters. A heartbeat that cannot go (its rank has exited) is ignored. A rank that works for a long time (a decoding rank, a slow load)
keeps beating from its thread; a rank that is stopped (SIGSTOP, a frozen link) or gone does not.

Waits call `check(timeout_s)` (through `watch.Watch`): it first drains the heartbeats that
have arrived (so a waiting rank whose own thread was starved of the GIL does not take that for silence) and raises
`SilentRank` naming the first rank not heard from for longer than timeout_s, with that rank's
last phase and this rank's own.

Needs MPI_THREAD_MULTIPLE (what mpi4py asks for; the pip mpich gives it). Without it
`Liveness.of` returns None and `watch.Watch` falls back to bounding each wait's duration.
"""

from __future__ import annotations

import atexit
import threading
import time

import numpy as np

from .faults import SilentRank
from prism_ops.tags import TAG_HEARTBEAT

MAX_PHASE = 64  # bytes of the phase a heartbeat carries
_BY_COMM: dict = {}  # MPI communicator handle -> its Liveness (one thread per process and communicator)


class Liveness:
    """Heartbeats to and from every other rank of one MPI communicator (see the module docstring)."""

    def __init__(self, MPI, mpi_comm, interval_s: float = 1.0, start_s: float = 60.0):
        self.MPI = MPI
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        self.comm = self._duplicate(mpi_comm, start_s)
        self.interval_s = interval_s
        self.phase = "start"  # set by the main thread (a str assignment: atomic), read by the beats
        now = time.monotonic()
        self.heard = {r: (now, "start") for r in range(self.size) if r != self.rank}
        self._drain_lock = threading.Lock()
        self._sends = {}  # peer -> (request, buffer) of the heartbeat in flight to it
        self._checked = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prism-heartbeat", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # before mpi4py finalizes MPI (atexit runs last-registered first)

    def _duplicate(self, mpi_comm, start_s: float):
        """mpi_comm's duplicate (collective), waiting at most start_s for every rank to come."""
        dup, req = mpi_comm.Idup()
        t0 = time.monotonic()
        while not req.Test():
            if time.monotonic() - t0 > start_s:
                raise TimeoutError(f"rank {self.rank}: not every one of the {self.size} ranks started within "
                                   f"{start_s:g} s")
            time.sleep(1e-3)
        return dup

    @classmethod
    def of(cls, MPI, mpi_comm, timeout_s: float) -> "Liveness | None":
        """The process's Liveness for mpi_comm (made on first use), beating at least 4 times per
        timeout_s (at most once a second); None without MPI_THREAD_MULTIPLE."""
        if MPI.Query_thread() != MPI.THREAD_MULTIPLE:
            return None
        key = mpi_comm.py2f()
        interval = min(1.0, timeout_s / 4)
        live = _BY_COMM.get(key)
        if live is None or live._stop.is_set():
            live = _BY_COMM[key] = cls(MPI, mpi_comm, interval, start_s=max(timeout_s, 60.0))
        live.interval_s = min(live.interval_s, interval)
        return live

    # -- the thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        due, sent = 0.0, None
        while not self._stop.wait(min(0.05, self.interval_s / 4)):
            try:
                self._drain()
                phase = self.phase
                if time.monotonic() >= due or phase != sent:  # a new phase goes out at once
                    self._beat(phase)
                    due, sent = time.monotonic() + self.interval_s, phase
            except self.MPI.Exception:
                pass  # a rank that has exited: the waits find it silent (or the job is ending)

    def _beat(self, phase: str) -> None:
        data = np.frombuffer(phase.encode()[:MAX_PHASE], dtype=np.uint8).copy()
        for r in self.heard:
            pending = self._sends.get(r)
            if pending is not None and not pending[0].Test():
                continue  # the last beat to r has not left (r is not receiving): do not pile up
            self._sends[r] = (self.comm.Isend([data, self.MPI.BYTE], dest=r, tag=TAG_HEARTBEAT), data)

    def _drain(self) -> None:
        """Receive every heartbeat that has arrived (matched probes: safe from two threads)."""
        with self._drain_lock:
            status = self.MPI.Status()
            while (msg := self.comm.Improbe(source=self.MPI.ANY_SOURCE, tag=TAG_HEARTBEAT, status=status)) is not None:
                buf = np.empty(status.Get_count(self.MPI.BYTE), dtype=np.uint8)
                msg.Recv([buf, self.MPI.BYTE])
                self.heard[status.Get_source()] = (time.monotonic(), buf.tobytes().decode(errors="replace"))

    # -- the waiting side ---------------------------------------------------------------------

    def check(self, timeout_s: float) -> None:
        """Raise SilentRank if a rank has not been heard from for over timeout_s (cheap: looks at
        most every 50 ms)."""
        now = time.monotonic()
        if now - self._checked < 0.05:
            return
        self._checked = now
        self._drain()
        now = time.monotonic()
        for r, (t, phase) in sorted(self.heard.items()):
            if now - t > timeout_s:
                raise SilentRank(r, now - t, timeout_s, phase, self.rank, self.phase)

    def close(self) -> None:
        """Stop beating (at exit, before MPI is finalized; `Communicator.finalize`)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sends.clear()  # beats still in flight are left to MPI (eager: they are already out)
