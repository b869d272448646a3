"""An in-memory stand-in for `prism_ops.distributed.comm.Communicator`: P ranks as P threads of one
process, no MPI. The unit tests of the runtime and the service engine run over it.

    comms = fake_comms(2)                       # one per rank, sharing one in-memory hub
    results = run_ranks(comms, lambda comm: run_distributed(runner_for(comm), comm, req))

It has the Communicator's methods the runtime, the strategy and the engine call, with the same
semantics and the same byte counters (what a rank sends, per key), so bytes counted over it are
the bytes MPI would carry. Collectives rendezvous by call order (every rank calls them in the same
order, as MPI requires); point-to-point messages wait in per-(destination, tag) mailboxes. A wait
that lasts past `timeout_s` fails the test instead of hanging it.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import torch


class Hub:
    """What the ranks share: the collectives' slots and the mailboxes."""

    def __init__(self, size: int, timeout_s: float):
        self.size, self.timeout_s = size, timeout_s
        self.cv = threading.Condition()
        self.slots = defaultdict(dict)  # collective number -> {rank: value}
        self.mail = defaultdict(list)  # (dest, tag) -> [(source, bytes)]

    def deposit(self, seq: int, rank: int, value) -> None:
        with self.cv:
            self.slots[seq][rank] = value
            self.cv.notify_all()

    def collect(self, seq: int) -> dict:
        with self.cv:
            if not self.cv.wait_for(lambda: len(self.slots[seq]) == self.size, timeout=self.timeout_s):
                raise TimeoutError(f"collective {seq}: only ranks {sorted(self.slots[seq])} of {self.size} came")
            return dict(self.slots[seq])

    def post(self, dest: int, tag: int, source: int, data: bytes) -> None:
        with self.cv:
            self.mail[(dest, tag)].append((source, data))
            self.cv.notify_all()

    def take(self, dest: int, tag: int, source=None, block=True):
        def find():
            for i, (s, _) in enumerate(self.mail[(dest, tag)]):
                if source is None or s == source:
                    return i
            return None

        with self.cv:
            if block and not self.cv.wait_for(lambda: find() is not None, timeout=self.timeout_s):
                raise TimeoutError(f"rank {dest}: no message with tag {tag} from {source}")
            i = find()
            return None if i is None else self.mail[(dest, tag)].pop(i)


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).flatten().cpu().numpy().tobytes()


def _tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


class _Pending:
    def __init__(self, wait):
        self.wait = wait


class FakeCommunicator:
    """One rank's side (rank, size); `link` None (no emulated link)."""

    def __init__(self, hub: Hub, rank: int):
        self.hub, self.rank, self.size = hub, rank, hub.size
        self.phase, self.link = "start", None
        self.sent = defaultdict(int)
        self._seq = 0

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    # -- as Communicator ---------------------------------------------------------------------
    def check_alive(self) -> None:
        pass

    def reset_counters(self) -> None:
        self.sent.clear()

    def bytes_sent(self, keys) -> list[int]:
        return [self.sent.get(k, 0) for k in keys]

    def barrier(self) -> None:
        self.hub.collect(self._deposit(None))

    def _deposit(self, value) -> int:
        seq = self._next()
        self.hub.deposit(seq, self.rank, value)
        return seq

    def iallgatherv(self, t, counts, key=None):
        data = _bytes(t)
        if len(data) != counts[self.rank]:
            raise ValueError(f"rank {self.rank} sends {len(data)} bytes, expected counts[{self.rank}]={counts[self.rank]}")
        self.sent[key] += len(data)
        seq = self._deposit(data)
        return _Pending(lambda: [_tensor(d).to(t.device) for _, d in sorted(self.hub.collect(seq).items())])

    def isend_recv(self, t, dests, sources, counts, tag, key=None):
        data = _bytes(t)
        for dest in dests:
            self.hub.post(dest, tag, self.rank, data)
        if dests:
            self.sent[key] += len(data)
        return _Pending(lambda: {s: _tensor(self.hub.take(self.rank, tag, s)[1]).to(t.device) for s in sources})

    def scatterv(self, chunks, counts, key="request"):
        value = None
        if self.rank == 0:
            value = [_bytes(c) for c in chunks]
            self.sent[key] += sum(counts) - counts[0]
        got = self.hub.collect(self._deposit(value))[0]
        return _tensor(got[self.rank])

    def gatherv(self, t, counts, key="result"):
        data = _bytes(t)
        if self.rank:
            self.sent[key] += len(data)
        every = self.hub.collect(self._deposit(data))
        return [_tensor(every[r]) for r in range(self.size)] if self.rank == 0 else None

    def bcast_bytes(self, data, key="request"):
        if self.rank == 0:
            self.sent[key] += len(data) * (self.size - 1)
        return self.hub.collect(self._deposit(data if self.rank == 0 else None))[0]

    def allgather_bytes(self, data, key="control"):
        self.sent[key] += len(data)
        every = self.hub.collect(self._deposit(bytes(data)))
        return [every[r] for r in range(self.size)]

    def isend(self, dest, data, tag, key="p2p"):
        self.sent[key] += len(data)
        self.hub.post(dest, tag, self.rank, bytes(data))
        return True

    @staticmethod
    def test(pending) -> bool:
        return True

    def poll(self, tag):
        return self.hub.take(self.rank, tag, block=False)


def fake_comms(size: int, timeout_s: float = 60.0) -> list[FakeCommunicator]:
    hub = Hub(size, timeout_s)
    return [FakeCommunicator(hub, r) for r in range(size)]


def run_ranks(comms, fn) -> list:
    """fn(comm) on one thread per rank; the results by rank (an exception on any rank is raised)."""
    out, errors = [None] * len(comms), [None] * len(comms)

    def one(r):
        try:
            out[r] = fn(comms[r])
        except BaseException as e:  # noqa: BLE001  (re-raised below, on the test's thread)
            errors[r] = e

    threads = [threading.Thread(target=one, args=(r,), daemon=True) for r in range(len(comms))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(comms[0].hub.timeout_s * 2)
    for e in errors:
        if e is not None:
            raise e
    return out
