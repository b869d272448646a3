"""Fault reports (`distributed/fault_reports.py`) on their own, over a fake MPI that delivers
messages in memory: a rank's report reaches rank 0 as RemoteFailure with its exit code."""

import numpy as np
import pytest

from prism_ops.distributed.fault_reports import FaultReports
from prism_ops.distributed.faults import RemoteFailure
from prism_ops.tags import TAG_FAULT


class FakeMPI:
    """Just what FaultReports uses of mpi4py's MPI module, over one shared list of messages."""

    ANY_SOURCE, BYTE = -1, "byte"

    class Status:
        count = 0

        def Get_count(self, _datatype):
            return self.count

    def __init__(self):
        self.wire = []  # (source, dest, tag, bytes)

    def comm(self, rank):
        return FakeComm(self, rank)


class Done:
    @staticmethod
    def Test():
        return True


class Message:
    def __init__(self, data):
        self.data = data

    def Recv(self, spec):
        spec[0][:] = np.frombuffer(self.data, dtype=np.uint8)


class FakeComm:
    def __init__(self, mpi, rank):
        self.mpi, self.rank = mpi, rank

    def Get_rank(self):
        return self.rank

    def Isend(self, spec, dest, tag):
        self.mpi.wire.append((self.rank, dest, tag, spec[0].tobytes()))
        return Done()

    def Improbe(self, source, tag, status):
        for i, (src, dest, t, data) in enumerate(self.mpi.wire):
            if dest == self.rank and t == tag and source in (src, FakeMPI.ANY_SOURCE):
                del self.mpi.wire[i]
                status.count = len(data)
                return Message(data)
        return None


def test_a_report_reaches_rank_0_with_its_exit_code():
    mpi = FakeMPI()
    rank0, rank2 = FaultReports(mpi, mpi.comm(0)), FaultReports(mpi, mpi.comm(2))
    rank0.check()  # nothing yet
    assert rank2.send("rank 2/3: error: bad folder", wait_s=1.0, exit_code=2)
    assert [(s, d, t) for s, d, t, _ in mpi.wire] == [(2, 0, TAG_FAULT)]
    with pytest.raises(RemoteFailure, match="rank 2/3: error: bad folder") as e:
        rank0.check()
    assert e.value.exit_code == 2
    rank0.check()  # taken: raised once


def test_only_rank_0_polls_and_only_for_fault_reports():
    mpi = FakeMPI()
    mpi.wire.append((1, 0, TAG_FAULT + 1, b"\x01not a report"))
    FaultReports(mpi, mpi.comm(0)).check()  # another tag: not a report
    mpi.wire.append((0, 1, TAG_FAULT, b"\x01to rank 1"))
    FaultReports(mpi, mpi.comm(1)).check()  # rank 1 never polls
    assert len(mpi.wire) == 2
