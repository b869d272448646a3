"""The communicator: the transport, and the one place prism-ops calls MPI.

Only mpi4py's uppercase (buffer) methods are used, on flat byte buffers: nothing is pickled on
the wire. Every operation is started non-blocking and completed by `_wait`, which also polls
for a fault report (`prism_ops.distributed.faults` is the policy: rank 0 raises RemoteFailure,
the job aborts), applies the emulated link if one is set (`link.EmulatedLink`), and raises
SilentRank once a rank has not been heard from for `timeout_s` (`liveness`: every rank's
heartbeat thread says it is alive about once a second, so a wait may last as long as the work
it waits for). Point-to-point loops call `check_alive` (`poll` does) for the same.

`phase` says what this rank is doing ("loading", "handshake", "forward layer 3", ...); it travels
with the heartbeats, so a rank that finds another silent names both ranks' phases.

Buffers are torch uint8 tensors. CPU tensors go to MPI as numpy views; CUDA tensors go as they
are when the MPI library is CUDA-aware (`cuda_aware`), else through host memory.

Bytes sent are counted per key (the runtime uses the layer index): `sent`. JSON messages, the
handshake and S2M3's messages are built on top of this (`control`, `handshake`,
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

from .faults import RemoteFailure
from .link import EmulatedLink
from .liveness import Liveness
from .phase_trace import trace_phase
from .tags import RESERVED_TAGS, TAG_FAULT
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
    """Collectives over MPI ranks for PRISM's runtime.

    Args:
        mpi_comm: an mpi4py communicator (default COMM_WORLD).
        link: an `EmulatedLink` to slow every operation down to, or None.
        timeout_s: how long a rank may stay silent (no heartbeat) before a wait raises SilentRank.
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
        self.link = link
        self.timeout_s = timeout_s
        self.cuda_aware = cuda_aware_mpi()
        self.sent = defaultdict(int)
        if liveness is None and self.size > 1:
            liveness = Liveness.of(MPI, self.comm, timeout_s)
        self.liveness = liveness  # None: one rank, or no MPI_THREAD_MULTIPLE (each wait is bounded instead)
        self._phase = "start"
        self._sends = []  # point-to-point sends in flight, with their buffers (isend_recv)
        self._link_free = 0.0  # when this rank's emulated link has sent its last payload (monotonic)
        atexit.register(self._drain_sends)  # before mpi4py's MPI_Finalize (atexit runs last-in first)

    @property
    def phase(self) -> str:
        """What this rank is doing now (sent with its heartbeats; named in SilentRank)."""
        return self.liveness.phase if self.liveness is not None else self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        if value != self._phase:
            trace_phase(self.rank, value)
        self._phase = value
        if self.liveness is not None:
            self.liveness.phase = value

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

    # -- waiting, link emulation, faults --------------------------------------------------

    def _wait(self, req, t0: float, recv_bytes: int | None) -> None:
        """Complete req, honouring the emulated link (recv_bytes None: not here, the caller holds),
        a peer's fault report and liveness (no bound on the wait itself while every rank is heard
        from)."""
        spins = 0
        while not req.Test():
            self._check_fault()
            spins += 1
            if spins > 200:
                # Do not starve the compute threads of a small board; idle waits (a service's workers
                # waiting for the next request) back off to 1 ms.
                time.sleep(50e-6 if time.perf_counter() - t0 < 1.0 else 1e-3)
            self._check_alive(t0)
        self._check_fault()
        if self.link is not None and recv_bytes is not None:
            self.link.hold(t0, recv_bytes)

    def _check_alive(self, t0: float) -> None:
        if self.liveness is not None:
            self.liveness.check(self.timeout_s)
        elif self.size > 1 and time.perf_counter() - t0 > self.timeout_s:
            # No heartbeats (no MPI_THREAD_MULTIPLE): bound the wait itself instead.
            raise TimeoutError(f"rank {self.rank}: a wait in {self.phase} took over {self.timeout_s:g} s (timeout)")

    def check_alive(self) -> None:
        """For point-to-point waiting loops: raise SilentRank (or RemoteFailure on rank 0) as a
        collective's wait would. Cheap enough to call on every spin."""
        self._check_fault()
        if self.liveness is not None:
            self.liveness.check(self.timeout_s)

    def _check_fault(self) -> None:
        if self.rank != 0:
            return
        status = self.MPI.Status()
        msg = self.comm.Improbe(source=self.MPI.ANY_SOURCE, tag=TAG_FAULT, status=status)
        if msg is not None:
            buf = np.empty(status.Get_count(self.MPI.BYTE), dtype=np.uint8)
            msg.Recv([buf, self.MPI.BYTE])
            # The first byte is the exit code the failing rank asks for, the rest its message.
            raise RemoteFailure(buf[1:].tobytes().decode(errors="replace"), int(buf[0]) if buf.size else 1)

    def send_fault(self, text: str, wait_s: float, exit_code: int = 1) -> bool:
        """Send a fault report to rank 0 (from another rank); True if it left within wait_s."""
        data = np.frombuffer(bytes([exit_code & 0xFF]) + text.encode(), dtype=np.uint8).copy()
        req = self.comm.Isend([data, self.MPI.BYTE], dest=0, tag=TAG_FAULT)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < wait_s:
            if req.Test():
                return True
            time.sleep(1e-3)
        return False

    def finalize(self) -> None:
        """Stop the heartbeats and finalize MPI (at the very end of a process)."""
        if self.liveness is not None:
            self.liveness.close()
        if not self.MPI.Is_finalized():
            self.MPI.Finalize()

    def abort(self, exit_code: int) -> None:
        """MPI_Abort: end every rank of the job. Never returns."""
        self.comm.Abort(exit_code)
        # MPICH's MPI_Abort returns to the caller once the launcher is told: never run on (the
        # short wait lets the launcher take this rank's last output first).
        time.sleep(0.5)
        os._exit(exit_code)

    # -- collectives -----------------------------------------------------------------------

    def iallgatherv(self, t: torch.Tensor, counts: list[int], key=None) -> "PendingAllgather":
        """Start gathering every rank's bytes; counts[r] = bytes rank r sends (known to all).

        Returns a handle whose wait() gives one uint8 tensor per rank, on t's device.
        """
        if isinstance(key, int):
            self.phase = f"forward layer {key}"  # the runtime keys each layer's summaries by its index
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
        one tag per exchange (the runtime uses a tag per layer).

        This rank never waits for its sends: they complete in the background (the buffers are
        kept until they have, `pending_sends`), so a rank with no sources runs ahead. The bytes
        count once per payload under `key`, however many ranks read it (as the all-gather's).
        With an emulated link each send leaves this rank's link after the previous one and the
        receiver holds it until it has arrived (`EmulatedLink.arrival`; an 8-byte arrival time,
        emulation only and not counted, follows the bytes). wait() gives {source: uint8 tensor
        on t's device}.
        """
        if isinstance(key, int):
            self.phase = f"forward layer {key}"  # as in iallgatherv: the runtime keys summaries by layer
        buf = self._staged(t)
        self._sends = [s for s in self._sends if not s[0].Test()]
        for dest in dests:
            data = buf
            if self.link is not None:
                now = time.monotonic()
                self._link_free, due = self.link.arrival(self._link_free, now, int(buf.numel()))
                data = torch.cat([buf.cpu(), torch.tensor([due], dtype=torch.float64).view(torch.uint8)])
            self._sends.append((self.comm.Isend(self._buf(data), dest=dest, tag=tag), data))
        if dests:
            self.sent[key] += int(buf.numel())
        extra = 8 if self.link is not None else 0
        recvs = {s: self._empty(counts[s] + extra, buf) for s in sources}
        reqs = {s: self.comm.Irecv(self._buf(r), source=s, tag=tag) for s, r in recvs.items()}
        return PendingRecv(self, reqs, recvs, extra, t.device)

    def _drain_sends(self, wait_s: float = 5.0) -> None:
        """Complete the point-to-point sends still in flight (at exit; their readers have them by then)."""
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
        It shares this communicator's heartbeats (and so its liveness)."""
        self.barrier()  # MPI_Comm_split blocks: enter it only once every rank is known to be here
        sub = self.comm.Split(0 if member else self.MPI.UNDEFINED, self.rank)
        if sub == self.MPI.COMM_NULL:
            return None
        return Communicator(sub, link=self.link, timeout_s=self.timeout_s, liveness=self.liveness)

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

    def __init__(self, comm, reqs, recvs, extra, device):
        self._comm, self._reqs, self._recvs, self._extra, self._device = comm, reqs, recvs, extra, device

    def wait(self) -> dict:
        out = {}
        for s, req in self._reqs.items():
            self._comm._wait(req, time.perf_counter(), None)
            data = self._recvs[s]
            if self._extra:  # the emulated link's arrival time
                EmulatedLink.hold_until(float(data[-self._extra :].cpu().view(torch.float64)[0]))
                data = data[: -self._extra]
            out[s] = data.to(self._device) if data.device != self._device else data
        return out
