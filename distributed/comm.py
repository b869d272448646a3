"""The communicator: prism-ops' one MPI transport, and its byte counters.

Only mpi4py's uppercase (buffer) methods are used, on flat byte buffers: nothing is pickled on
the wire. Buffers are torch uint8 tensors. CPU tensors go to MPI as numpy views; CUDA tensors go
as they are when the MPI library is CUDA-aware (`cuda_aware`), else through host memory. Bytes
sent are counted per key (the runtime uses the layer index): `sent`.

Every operation is started non-blocking and completed by `_wait`. What a rank does while it
waits is each a layer of its own, which the communicator only calls:
- `faults`, a `fault_reports.FaultReports`: rank 0 polls for another rank's fault report
  (RemoteFailure; `prism_ops.distributed.faults` is the policy: the job aborts);
- `watch`, a `watch.Watch`: this rank's `phase`, and SilentRank once a rank has not been heard
  from for `timeout_s` (heartbeats: `liveness`);
- `link`, an `link.EmulatedLink` or None: holds each operation as long as that slower link would.
Point-to-point waiting loops call `check_alive` (`poll` does) for the same checks.

JSON messages, the handshake and S2M3's messages are built on top of this (`control`, `handshake`,
`prism_ops.s2m3`). Every message tag is in `tags`.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import re
import time
from collections import defaultdict

import numpy as np
import torch

from .fault_reports import FaultReports
from .link import STAMP_BYTES, EmulatedLink
from .liveness import Liveness
from prism_ops.tags import RESERVED_TAGS
from .watch import Watch

DEFAULT_TIMEOUT_S = 30.0  # a stopped rank ends the job well within a minute


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the MPI runtime needs mpi4py: pip install 'prism-ops[mpi]'") from e
    return MPI


def cuda_aware_mpi() -> bool:
    """Whether the loaded MPI library can read CUDA device memory.

    PRISM_CUDA_AWARE_MPI=0/1 overrides. Otherwise asks the library (MPIX_Query_cuda_support,
    in MPICH and Open MPI); False when it cannot tell, which is always safe (host staging).
    """
    env = os.environ.get("PRISM_CUDA_AWARE_MPI")
    if env is not None:
        return env == "1"
    _mpi()
    try:
        with open("/proc/self/maps") as f:
            libs = sorted(set(re.findall(r"(/\S*libmpi[^/\s]*\.so\S*)", f.read())))
        for path in libs:
            fn = getattr(ctypes.CDLL(path), "MPIX_Query_cuda_support", None)
            if fn is not None:
                return bool(fn())
    except OSError:
        pass
    return False


class Communicator:
    """Collectives and point-to-point messages over MPI ranks, on byte buffers, with byte counters.

    Args:
        mpi_comm: an mpi4py communicator (default COMM_WORLD).
        link: an `EmulatedLink` to slow every operation down to, or None (the `link` layer).
        timeout_s: how long a rank may stay silent (no heartbeat) before a wait raises SilentRank
            (the `watch` layer).
        liveness: the heartbeats to use (a sub-communicator shares its parent's); default: this
            communicator's own.
    """

    def __init__(self, mpi_comm=None, *, link: EmulatedLink | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 liveness: Liveness | None = None):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
        MPI = _mpi()
        self.MPI = MPI
        self.comm = mpi_comm if mpi_comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.cuda_aware = cuda_aware_mpi()
        self.sent = defaultdict(int)
        self._sends = []  # point-to-point sends in flight, with their buffers (isend_recv)
        # The layers a wait calls (see the module docstring).
        self.faults = FaultReports(MPI, self.comm)
        if liveness is None and self.size > 1:
            liveness = Liveness.of(MPI, self.comm, timeout_s)  # None without MPI_THREAD_MULTIPLE
        self.watch = Watch(self.rank, self.size, timeout_s, liveness)
        self.link = link
        self._link_free = 0.0  # when this rank's emulated link has sent its last payload (monotonic)
        atexit.register(self._drain_sends)  # before mpi4py's MPI_Finalize (atexit runs last-in first)

    @property
    def phase(self) -> str:
        """What this rank is doing now (`watch.Watch.phase`)."""
        return self.watch.phase

    @phase.setter
    def phase(self, value: str) -> None:
        self.watch.phase = value

    # -- buffers ---------------------------------------------------------------------------

    def _buf(self, t: torch.Tensor):
        """An MPI buffer spec for a contiguous uint8 tensor (host-staged by the caller)."""
        if t.is_cuda:
            return [t, self.MPI.BYTE]  # read through __cuda_array_interface__ (CUDA-aware MPI)
        return [t.numpy(), self.MPI.BYTE]

    def _staged(self, t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous().view(torch.uint8).flatten()
        return t if (not t.is_cuda or self.cuda_aware) else t.cpu()

    def _empty(self, n: int, like: torch.Tensor) -> torch.Tensor:
        dev = like.device if (like.is_cuda and self.cuda_aware) else "cpu"
        return torch.empty(n, dtype=torch.uint8, device=dev)

    # -- waiting ---------------------------------------------------------------------------

    def _wait(self, req, t0: float, recv_bytes: int | None) -> None:
        """Complete req, started at t0, checking on every spin for a fault report and a silent
        rank (no bound on the wait itself while every rank is heard from); then hold it as long
        as the emulated link, if set, takes for recv_bytes (None: the caller holds, `unstamp`)."""
        spins, w0 = 0, time.perf_counter()  # w0: this wait's start (t0 may be an overlapped gather's)
        while not req.Test():
            self.faults.check()
            spins += 1
            if spins > 200:
                # Do not starve the compute threads of a small board (or a busy service's other
                # processes): the sleep grows with the wait, from 50 us to 1 ms, so a wake-up comes at
                # most a twentieth of the time already waited late.
                time.sleep(min(1e-3, max(50e-6, (time.perf_counter() - w0) / 20)))
            self.watch.check(t0)
        self.faults.check()
        if self.link is not None and recv_bytes is not None:
            self.link.hold(t0, recv_bytes)

    def check_alive(self) -> None:
        """For point-to-point waiting loops: raise SilentRank (or RemoteFailure on rank 0) as a
        collective's wait would. Cheap enough to call on every spin."""
        self.faults.check()
        self.watch.check()

    def finalize(self) -> None:
        """Complete the sends in flight, stop the heartbeats and finalize MPI (at the very end of a
        process; `faults.leave_together` first waits for every rank)."""
        self._drain_sends()
        self.watch.close()
        if not self.MPI.Is_finalized():
            self.MPI.Finalize()

    # -- collectives -----------------------------------------------------------------------

    def iallgatherv(self, t: torch.Tensor, counts: list[int], key=None) -> "PendingAllgather":
        """Start gathering every rank's bytes; counts[r] = bytes rank r sends (known to all).

        Returns a handle whose wait() gives one uint8 tensor per rank, on t's device.
        """
        buf = self._staged(t)
        if buf.numel() != counts[self.rank]:
            raise ValueError(f"rank {self.rank} sends {buf.numel()} bytes, expected counts[{self.rank}]={counts[self.rank]}")
        recv = self._empty(sum(counts), buf)
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        t0 = time.perf_counter()
        req = self.comm.Iallgatherv(self._buf(buf), [self._buf(recv)[0], (list(counts), list(displs)), self.MPI.BYTE])
        self.sent[key] += int(buf.numel())
        recv_bytes = sum(counts) - counts[self.rank]
        return PendingAllgather(self, req, t0, recv_bytes, recv, counts, displs, t.device, (buf, recv))

    def isend_recv(self, t: torch.Tensor, dests: list[int], sources: list[int], counts: list[int], tag: int,
                   key=None) -> "PendingRecv":
        """Send t's bytes to each rank in dests and start receiving counts[s] bytes from each rank
        s in sources, point to point: only the ranks that read a payload get it (a causal model's
        chunks go to later ranks only). Every rank must call it with matching dests/sources and
        one tag per exchange (the runtime uses a tag per layer, `tags.TAG_LAYERS`).

        This rank never waits for its sends: they complete in the background (the buffers are
        kept until they have, `pending_sends`), so a rank with no sources runs ahead. The bytes
        count once per payload under `key`, however many ranks read it (as the all-gather's).
        With an emulated link each payload carries its arrival time (`EmulatedLink.stamp`, not
        counted) and the receiver holds it until then. wait() gives {source: uint8 tensor on
        t's device}.
        """
        buf = self._staged(t)
        self._sends = [s for s in self._sends if not s[0].Test()]
        for dest in dests:
            data = buf
            if self.link is not None:
                self._link_free, data = self.link.stamp(buf, self._link_free)
            self._sends.append((self.comm.Isend(self._buf(data), dest=dest, tag=tag), data))
        if dests:
            self.sent[key] += int(buf.numel())
        stamped = self.link is not None
        recvs = {s: self._empty(counts[s] + (STAMP_BYTES if stamped else 0), buf) for s in sources}
        reqs = {s: self.comm.Irecv(self._buf(r), source=s, tag=tag) for s, r in recvs.items()}
        return PendingRecv(self, reqs, recvs, stamped, t.device)

    def _drain_sends(self, wait_s: float = 5.0) -> None:
        """Complete the point-to-point sends still in flight (at exit; their readers have them by then)."""
        if self.MPI.Is_finalized():  # the ranks left together (`faults.leave_together`): nothing is in flight
            return
        t0 = time.perf_counter()
        while self.pending_sends and time.perf_counter() - t0 < wait_s:
            time.sleep(1e-3)

    @property
    def pending_sends(self) -> int:
        """Point-to-point sends (`isend_recv`) not yet complete."""
        self._sends = [s for s in self._sends if not s[0].Test()]
        return len(self._sends)

    def scatterv(self, chunks: list[torch.Tensor] | None, counts: list[int], key="request") -> torch.Tensor:
        """Rank 0's chunks[r] (bytes) to rank r; returns this rank's bytes (CPU)."""
        send = None
        if self.rank == 0:
            flat = torch.cat([self._staged(c).cpu() for c in chunks]) if chunks else torch.empty(0, dtype=torch.uint8)
            displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            send = [flat.numpy(), (list(counts), list(displs)), self.MPI.BYTE]
            self.sent[key] += int(sum(counts) - counts[0])
        recv = torch.empty(counts[self.rank], dtype=torch.uint8)
        t0 = time.perf_counter()
        req = self.comm.Iscatterv(send, [recv.numpy(), self.MPI.BYTE], root=0)
        self._wait(req, t0, counts[self.rank] if self.rank else 0)
        return recv

    def gatherv(self, t: torch.Tensor, counts: list[int], key="result") -> list[torch.Tensor] | None:
        """Every rank's bytes to rank 0 (a list, one CPU tensor per rank); None elsewhere."""
        buf = self._staged(t).cpu()
        recv = torch.empty(sum(counts) if self.rank == 0 else 0, dtype=torch.uint8)
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        spec = [recv.numpy(), (list(counts), list(displs)), self.MPI.BYTE] if self.rank == 0 else None
        if self.rank:
            self.sent[key] += int(buf.numel())
        t0 = time.perf_counter()
        req = self.comm.Igatherv([buf.numpy(), self.MPI.BYTE], spec, root=0)
        self._wait(req, t0, sum(counts) - counts[0] if self.rank == 0 else 0)
        if self.rank != 0:
            return None
        return [recv[d : d + c] for d, c in zip(displs, counts)]

    def bcast_bytes(self, data: bytes | None, key="request") -> bytes:
        """Rank 0's bytes to every rank (length first, then the bytes)."""
        n = np.array([len(data) if self.rank == 0 else 0], dtype=np.int64)
        self._wait(self.comm.Ibcast([n, self.MPI.INT64_T], root=0), time.perf_counter(), 0)
        buf = np.frombuffer(data, dtype=np.uint8).copy() if self.rank == 0 else np.empty(int(n[0]), dtype=np.uint8)
        if self.rank == 0:
            self.sent[key] += int(n[0]) * (self.size - 1)
        t0 = time.perf_counter()
        self._wait(self.comm.Ibcast([buf, self.MPI.BYTE], root=0), t0, 0 if self.rank == 0 else int(n[0]))
        return buf.tobytes()

    def allgather_bytes(self, data: bytes, key="control") -> list[bytes]:
        """Every rank's bytes (of any length), on every rank: lengths first, then Allgatherv."""
        buf = np.frombuffer(data, dtype=np.uint8)
        sizes = np.zeros(self.size, dtype=np.int64)
        self._wait(self.comm.Iallgather([np.array([buf.size], dtype=np.int64), self.MPI.INT64_T],
                                        [sizes, self.MPI.INT64_T]), time.perf_counter(), 0)
        parts = self.iallgatherv(torch.from_numpy(buf.copy()), [int(s) for s in sizes], key=key).wait()
        return [p.numpy().tobytes() for p in parts]

    # -- point to point (S2M3 routing) ------------------------------------------------------

    def isend(self, dest: int, data: bytes, tag: int, key="p2p"):
        """Start sending bytes to dest; returns a request to keep until done (`test`)."""
        if tag in RESERVED_TAGS:
            raise ValueError(f"tags {RESERVED_TAGS} are reserved for fault reports and heartbeats, got {tag}")
        buf = np.frombuffer(data, dtype=np.uint8).copy()
        self.sent[key] += buf.size
        return (self.comm.Isend([buf, self.MPI.BYTE], dest=dest, tag=tag), buf)

    @staticmethod
    def test(pending) -> bool:
        return pending[0].Test()

    def poll(self, tag: int):
        """(source, bytes) of one message with this tag that has arrived, or None (never blocks).
        Checks liveness first (`check_alive`), so a polling loop needs no timeout of its own."""
        self.check_alive()
        status = self.MPI.Status()
        # A matched probe: the message received is the one probed, whatever another thread does.
        msg = self.comm.Improbe(source=self.MPI.ANY_SOURCE, tag=tag, status=status)
        if msg is None:
            return None
        buf = np.empty(status.Get_count(self.MPI.BYTE), dtype=np.uint8)
        msg.Recv([buf, self.MPI.BYTE])
        return status.Get_source(), buf.tobytes()

    def split(self, member: bool) -> "Communicator | None":
        """A communicator of the ranks that pass member=True (collective: every rank calls it).
        It shares this communicator's heartbeats (and so its liveness and phase)."""
        self.barrier()  # MPI_Comm_split blocks: enter it only once every rank is known to be here
        sub = self.comm.Split(0 if member else self.MPI.UNDEFINED, self.rank)
        if sub == self.MPI.COMM_NULL:
            return None
        return Communicator(sub, link=self.link, timeout_s=self.watch.timeout_s, liveness=self.watch.heartbeats)

    def reorder(self, order: list[int]) -> "Communicator":
        """The same ranks in another order: the new communicator's rank c is this one's order[c]
        (collective). It shares this communicator's heartbeats, as `split`'s does."""
        if sorted(order) != list(range(self.size)):
            raise ValueError(f"order must be a permutation of the {self.size} ranks, got {order!r}")
        self.barrier()
        sub = self.comm.Split(0, list(order).index(self.rank))
        return Communicator(sub, link=self.link, timeout_s=self.watch.timeout_s, liveness=self.watch.heartbeats)

    def barrier(self) -> None:
        """Wait until every rank has come here (for timings)."""
        self._wait(self.comm.Ibarrier(), time.perf_counter(), 0)

    def bytes_sent(self, keys) -> list[int]:
        return [self.sent.get(k, 0) for k in keys]

    def reset_counters(self) -> None:
        self.sent.clear()


class PendingAllgather:
    """An all-gather in flight; wait() returns one uint8 tensor per rank."""

    def __init__(self, comm, req, t0, recv_bytes, recv, counts, displs, device, keep):
        self._comm, self._req, self._t0, self._recv_bytes = comm, req, t0, recv_bytes
        self._recv, self._counts, self._displs, self._device = recv, counts, displs, device
        self._keep = keep  # the buffers must outlive the request

    def wait(self) -> list[torch.Tensor]:
        self._comm._wait(self._req, self._t0, self._recv_bytes)
        recv = self._recv.to(self._device) if self._recv.device != self._device else self._recv
        return [recv[int(d) : int(d) + c] for d, c in zip(self._displs, self._counts)]


class PendingRecv:
    """Point-to-point receives in flight (`Communicator.isend_recv`); wait() returns {source: bytes}."""

    def __init__(self, comm, reqs, recvs, stamped, device):
        self._comm, self._reqs, self._recvs, self._stamped, self._device = comm, reqs, recvs, stamped, device

    def wait(self) -> dict:
        out = {}
        for s, req in self._reqs.items():
            self._comm._wait(req, time.perf_counter(), None)
            data = self._recvs[s]
            if self._stamped:  # the emulated link's arrival time follows the bytes
                data = EmulatedLink.unstamp(data)
            out[s] = data.to(self._device) if data.device != self._device else data
        return out
