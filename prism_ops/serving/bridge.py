"""Rank 0's side of a supervised service: the engine answers a front end over one TCP connection.

    prism-run --serve --frontend 10.0.0.5:41000 --frontend-job 3-9f2c...   (set by the front end)

The front end (`frontend.py`, outside MPI) launched this job with mpiexec. Rank 0 dials it back,
says hello (the model's shape, the ranks and their hosts, the load time) and then takes checked,
tokenized jobs from it and answers in token ids and float32 vectors (`Engine(raw=True)`); the
front end writes the text and the JSON. Messages (`channel.Channel` frames):

    front end -> rank 0   {"job": {...ApiRequest fields}}, {"cancel": id}, {"stop": true}, {"ping": t}
    rank 0 -> front end   {"hello": token, ...}, {"beat": phase}, {"id", "start": 1},
                          {"id", "vectors": [[tokens, prism]..]} + float32, {"id", "token": t}, {"id", "done": {...}}, {"id", "error": body, "status": s},
                          {"id", "lost": why} (the job failed under it: the front end replays it),
                          {"fault": {"message", "rank", "phase"}} (the whole job is ending)

Both sides beat every BEAT_S. Rank 0 takes a front end silent for the job's timeout, or a closed
connection, as the front end lost: it drops the queued jobs, finishes the forward under way and
stops every rank (exit 0), so a lost front end leaves no job running on the hosts.
"""

from __future__ import annotations

import re
import signal
import socket
import sys
import threading
import time

import numpy as np

from ..distributed.control import allgather_json
from .channel import Channel
from .engine import Engine
from .openai_api import ApiError, ApiRequest

BEAT_S = 0.5
JOB_FIELDS = ("endpoint", "ids", "max_tokens", "temperature", "top_p", "top_k", "seed", "stream", "id")


def run_supervised(engine: Engine, frontend: str, token: str, timeout_s: float, log=sys.stderr) -> None:
    """Serve a front end on every rank until it stops the job (or is lost)."""
    hosts = allgather_json(engine.comm, socket.gethostname())  # collective: every rank takes part
    if engine.comm.rank != 0:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # rank 0 decides when the service stops
        engine.run()
        return
    Bridge(engine, frontend, token, timeout_s, hosts, log).run()


class Bridge:
    def __init__(self, engine: Engine, frontend: str, token: str, timeout_s: float, hosts: list, log=sys.stderr):
        host, _, port = frontend.rpartition(":")
        self.engine, self.address, self.token = engine, (host, int(port)), token
        self.timeout_s, self.hosts, self.log = timeout_s, hosts, log
        self.heard = time.monotonic()
        self.lost = threading.Event()

    def run(self) -> None:
        eng = self.engine
        sock = socket.create_connection(self.address, timeout=self.timeout_s)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ch = Channel(sock)
        s = eng.served
        self.ch.send({"hello": self.token, "served": {"model": s.model, "decoder": s.decoder,
                                                      "max_positions": s.max_positions, "width": s.width,
                                                      "vocab_size": s.vocab_size},
                      "ranks": eng.comm.size, "hosts": self.hosts, "load_s": eng.load_s})
        for target, name in ((self._read, "prism-frontend-in"), (self._beat, "prism-frontend-beat")):
            threading.Thread(target=target, name=name, daemon=True).start()
        print(f"prism-run: serving {s.model} for the front end at {self.address[0]}:{self.address[1]} with "
              f"{eng.comm.size} ranks; loaded in {eng.load_s:.1f} s", file=self.log, flush=True)
        try:
            eng.run()
        except BaseException as e:
            self._send({"fault": {"message": str(e), "rank": _rank_of(e), "phase": getattr(e, "phase", None)
                                  or eng.comm.phase}})
            raise
        finally:
            self.ch.close()

    def _send(self, header: dict, blob: bytes = b"") -> None:
        try:
            self.ch.send(header, blob)
        except OSError:
            self._front_end_lost("the connection to it broke")

    def _read(self) -> None:
        eng = self.engine
        try:
            while True:
                msg, _ = self.ch.recv()
                self.heard = time.monotonic()
                if "job" in msg:
                    self._take(msg["job"])
                elif "cancel" in msg:
                    eng.cancelled.add(msg["cancel"])
                elif msg.get("stop"):
                    eng.stopping.set()  # answer what is queued, then stop every rank
        except (EOFError, OSError, ValueError) as e:
            self._front_end_lost(f"{type(e).__name__}: {e}")

    def _take(self, fields: dict) -> None:
        jid = str(fields.get("id"))
        try:
            job = ApiRequest(texts=[], **{k: fields[k] for k in JOB_FIELDS if k in fields})
        except (TypeError, ValueError) as e:  # a front end of another version: answer, do not die
            self._send({"id": jid, "error": ApiError(f"rank 0 cannot read the job: {e}").body(), "status": 400})
            return
        try:
            self.engine.submit(job, self._sink(job.id))
        except ApiError as e:  # stopping: the front end replays it on the next job
            self._sink(job.id)(("error", e))

    def _beat(self) -> None:
        while not self.lost.is_set():
            self._send({"beat": self.engine.comm.phase})
            silent = time.monotonic() - self.heard
            if silent > self.timeout_s:
                self._front_end_lost(f"silent for {silent:.1f} s (timeout {self.timeout_s:g} s)")
            time.sleep(BEAT_S)

    def _front_end_lost(self, why: str) -> None:
        if self.lost.is_set():
            return
        self.lost.set()
        print(f"prism-run: the front end at {self.address[0]}:{self.address[1]} is lost ({why}): dropping the "
              "queued requests and stopping every rank", file=self.log, flush=True)
        self.engine.stopping.set()
        self.engine.drop_queued()  # nobody is left to answer them

    def _sink(self, jid: str):
        def sink(event):
            kind, value = event
            if kind == "vectors":
                blob = np.stack([v for v, _, _ in value]).astype("<f4").tobytes()
                self._send({"id": jid, "vectors": [[n, prism] for _, n, prism in value]}, blob)
            elif kind == "start":
                self._send({"id": jid, "start": 1})
            elif kind == "token":
                self._send({"id": jid, "token": value})
            elif kind == "done":
                self._send({"id": jid, "done": value})
            elif value.status == 503 and value.kind == "service_unavailable":  # the job is failing
                self._send({"id": jid, "lost": str(value)})
            else:
                self._send({"id": jid, "error": value.body(), "status": value.status})
        return sink


def _rank_of(err: BaseException) -> int | None:
    """The rank a fault names: SilentRank's, the silent rank in another rank's report ('rank 1/3:
    error: rank 2 has been silent ...'), or the first 'rank N' of a failure's message."""
    rank = getattr(err, "rank", None)
    if rank is not None:
        return rank
    m = re.search(r"\brank (\d+) has been silent", str(err)) or re.search(r"\brank (\d+)", str(err))
    return int(m.group(1)) if m else None
