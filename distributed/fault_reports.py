"""Fault reports: how a failing rank tells rank 0, which polls for them while it waits.

    reports = FaultReports(MPI, mpi_comm)
    reports.send("rank 2/3: error: ...", wait_s=5.0, exit_code=1)   # on the failing rank
    reports.check()                        # rank 0, on every spin of a wait: raises RemoteFailure

A report is one message under `tags.TAG_FAULT` to rank 0: the exit code the failing rank asks
for (one byte), then its message as UTF-8. What happens next is the fault policy
(`faults.guarded`: rank 0 prints the message and aborts the job with that code).
"""

from __future__ import annotations

import time

import numpy as np

from .faults import RemoteFailure
from prism_ops.tags import TAG_FAULT


class FaultReports:
    """The fault reports of one MPI communicator (mpi4py's MPI module and the communicator)."""

    def __init__(self, MPI, mpi_comm):
        self.MPI, self.comm = MPI, mpi_comm
        self.rank = mpi_comm.Get_rank()

    def check(self) -> None:
        """On rank 0: raise RemoteFailure if another rank's report has arrived (never blocks).
        Elsewhere: nothing (reports go to rank 0 only)."""
        if self.rank != 0:
            return
        status = self.MPI.Status()
        msg = self.comm.Improbe(source=self.MPI.ANY_SOURCE, tag=TAG_FAULT, status=status)
        if msg is not None:
            buf = np.empty(status.Get_count(self.MPI.BYTE), dtype=np.uint8)
            msg.Recv([buf, self.MPI.BYTE])
            raise RemoteFailure(buf[1:].tobytes().decode(errors="replace"), int(buf[0]) if buf.size else 1)

    def send(self, text: str, wait_s: float, exit_code: int = 1) -> bool:
        """Send a report to rank 0 (from another rank); True if it left within wait_s."""
        data = np.frombuffer(bytes([exit_code & 0xFF]) + text.encode(), dtype=np.uint8).copy()
        req = self.comm.Isend([data, self.MPI.BYTE], dest=0, tag=TAG_FAULT)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < wait_s:
            if req.Test():
                return True
            time.sleep(1e-3)
        return False
