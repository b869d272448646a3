"""An emulated network link: makes a transfer last as long as it would on a slower link.

`EmulatedLink(mbit, latency_ms)` holds an operation that started at t0 until
t0 + latency + received bytes * 8 / rate (`hold`). Work done meanwhile (the local attention
block) overlaps with the transfer, as on a real link. The communicator applies it to every
collective's wait when its `link` is set.

Point-to-point sends (`Communicator.isend_recv`) are emulated from the sender's side instead: a
rank's sends leave its link one after the other, and each payload carries its arrival time
(`stamp`: 8 bytes after the payload, emulation only, not counted); the receiver holds it until
then (`unstamp`; the time is on `time.monotonic`, which is one clock for every process of a
host), so a sender that runs ahead streams its payloads while the receiver computes, as on a
real link.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

STAMP_BYTES = 8  # the arrival time after a point-to-point payload (float64)


def check_link(mbit: float | None, latency_ms: float) -> None:
    """ValueError unless mbit (None: no emulated link) is a finite rate > 0 and latency_ms >= 0:
    the one check of a link's settings (prism-run's --link-mbit and --link-latency-ms too)."""
    if mbit is not None and not (math.isfinite(mbit) and mbit > 0):
        raise ValueError(f"link_mbit must be a finite rate > 0 in Mbit/s, got {mbit}")
    if not (math.isfinite(latency_ms) and latency_ms >= 0):
        raise ValueError(f"link_latency_ms must be >= 0, got {latency_ms}")


@dataclass(frozen=True)
class EmulatedLink:
    mbit: float  # Mbit/s
    latency_ms: float = 0.0  # one way, per operation

    def __post_init__(self):
        check_link(self.mbit, self.latency_ms)

    def seconds(self, nbytes: int) -> float:
        """How long receiving nbytes takes on this link, latency included."""
        return self.latency_ms / 1e3 + nbytes * 8 / (self.mbit * 1e6)

    def hold(self, t0: float, recv_bytes: int) -> None:
        """Sleep until an operation that started at t0 (perf_counter) and received recv_bytes is due."""
        due = t0 + self.seconds(recv_bytes)
        while time.perf_counter() < due:
            time.sleep(min(1e-3, max(0.0, due - time.perf_counter())))

    def arrival(self, free_at: float, now: float, nbytes: int) -> tuple[float, float]:
        """(when this sender's link is free again, when the bytes arrive) for nbytes sent at `now`
        (time.monotonic) on a link busy until free_at."""
        done = max(now, free_at) + nbytes * 8 / (self.mbit * 1e6)
        return done, done + self.latency_ms / 1e3

    @staticmethod
    def hold_until(due: float) -> None:
        """Sleep until time.monotonic() reaches due."""
        while time.monotonic() < due:
            time.sleep(min(1e-3, max(0.0, due - time.monotonic())))

    def stamp(self, buf: torch.Tensor, free_at: float) -> tuple[float, torch.Tensor]:
        """(when this sender's link is free again, buf's bytes with their arrival time after
        them, on the CPU) for a uint8 payload sent now on a link busy until free_at."""
        free_at, due = self.arrival(free_at, time.monotonic(), int(buf.numel()))
        return free_at, torch.cat([buf.cpu(), torch.tensor([due], dtype=torch.float64).view(torch.uint8)])

    @staticmethod
    def unstamp(data: torch.Tensor) -> torch.Tensor:
        """The payload of a stamped message, once its arrival time has come (sleeps until then)."""
        # A copy: the stamp follows a payload of any length, so it may not lie on an 8-byte boundary.
        EmulatedLink.hold_until(float(data[-STAMP_BYTES:].cpu().clone().view(torch.float64)[0]))
        return data[:-STAMP_BYTES]
