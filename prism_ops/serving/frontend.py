"""The supervised service: a front end outside MPI that serves HTTP, runs the MPI job on the
healthy hosts, re-forms it when a host is lost, replays what was accepted and takes hosts back.

    prism-run --serve --hosts h1,h2,h3 [--mpiexec-args "-launcher-exec /usr/bin/ssh"] --port 8000

This process owns the HTTP port (the OpenAI-style routes of `http.py`), the hosts (`fleet.Fleet`)
and a journal of accepted requests. It parses, checks and tokenizes each request and writes
every answer's JSON; rank 0 (`bridge.py`) gets token ids and sends back token ids and float32
vectors over one TCP connection. One rank per healthy host, rank 0 on the first.

The job fails when the launcher exits, rank 0 reports a fault (a rank silent past the job's
timeout, 5 s by default here), or rank 0 itself goes silent or closes its connection. Then the
front end kills mpiexec and, through the launcher's remote shell, every process of the old job on
each host it can reach; a host named by the fault, or that cannot be reached, is lost. It
relaunches on the hosts left (down to one) and replays every accepted request that was not
answered: a completion resumes from the prompt plus the tokens already made (a stream goes on
where it stopped, nothing sent twice). A request that was running when two jobs on two different
sets of hosts failed gets a 503 naming both. While no job is up, new requests wait, at most
`queue_limit` of them (503 with Retry-After past it) and at most HOLD_MAX_S.

Lost hosts are probed (`Fleet.probe_lost`); once one is ready, the front end drains the job
(holds new requests, lets the running ones finish), stops it and relaunches on the larger set.
`GET /health` reports the hosts up and lost, the ranks, every restart (detection, relaunch,
reload and replay times) and the last fault with its host and phase.

With summaries (any preset but exact) the answer depends on the number of ranks, so a replay
on fewer hosts answers as that job would; with the exact preset it equals an unfaulted run's
within fp32 rounding. A sampled completion (temperature > 0) resumes with its seed from the
tokens made, so its text after the fault is another sample.
"""

from __future__ import annotations

import collections
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..models import load_tokenizer
from .bridge import BEAT_S
from .channel import Channel
from .engine import _Decoding, prepare
from .fleet import Fleet, Launcher
from .openai_api import ApiError, ApiRequest, Served, embeddings_body

START_TIMEOUT_S = 900.0  # a job has this long to load and say hello
HELLO_TIMEOUT_S = 10.0
DRAIN_S = 30.0  # re-admitting a host: the running requests get this long to finish first
HOLD_MAX_S = 120.0  # the longest a request waits while no job is up (then 503)
RETRY_AFTER_S = 5
WATCH_S = 0.05
MAX_BAD_LAUNCHES = 3  # launches in a row that fail with no host to blame: the front end gives up


def _unavailable(message: str, retry: bool = True) -> ApiError:
    return ApiError(message, status=503, kind="service_unavailable", retry_after=RETRY_AFTER_S if retry else None)


@dataclass
class Pending:
    """One accepted request in the journal, until it is answered."""

    job: ApiRequest
    sink: object
    decoding: _Decoding | None = None
    dispatched: str | None = None  # the hello token of the job it was sent to
    running: bool = False  # rank 0 has started it
    cancelled: bool = False
    failed_on: list = field(default_factory=list)  # the host sets of jobs that failed while it ran
    accepted: float = field(default_factory=time.monotonic)


@dataclass
class Job:
    """One launched MPI job."""

    token: str
    hosts: list
    proc: subprocess.Popen
    started: float
    channel: Channel | None = None
    hello: dict | None = None
    last_beat: float = 0.0
    phase: str = "loading"
    fault: dict | None = None
    closed: str | None = None  # why rank 0's connection ended
    output: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))


class FrontEnd:
    """The service's front end; to `http.make_app` it is the engine (prepare, submit, health)."""

    def __init__(self, opts, log=sys.stderr):
        self.opts, self.log = opts, log
        self.fleet = Fleet(list(opts.hosts), Launcher(opts.mpiexec_args))
        self.lock = threading.RLock()
        self.journal: dict[str, Pending] = {}
        self.job: Job | None = None
        self.state = "starting"
        self.stopping = threading.Event()
        self.served: Served | None = None
        self.tok, self.tok_lock, self.eos = None, threading.Lock(), None
        self.ranks = 0
        self.restarts: list[dict] = []
        self.last_fault: dict | None = None
        self.served_n = 0
        self._secret, self._jobs = secrets.token_hex(6), 0
        self._ready: list = []  # lost hosts the prober found ready to come back
        self.address = _address_towards(opts.hosts[0])
        self.listener = socket.create_server((self.address, 0))
        self.listener.settimeout(0.2)

    # -- the engine's face to the HTTP side ----------------------------------------------------

    def prepare(self, job: ApiRequest) -> ApiRequest:
        return prepare(job, self.tok, self.served, max(1, self.ranks), self.tok_lock, self.opts.split_min_tokens)

    def note_arrival(self, n: int) -> None:
        pass  # rank 0 batches what is queued there; the front end forwards each request at once

    def submit(self, job: ApiRequest, sink) -> None:
        with self.lock:
            if self.stopping.is_set():
                raise _unavailable("the service is shutting down", retry=False)
            waiting = self._held()
            if self.state != "up" and waiting >= self.opts.queue_limit:
                raise _unavailable(f"the service is re-forming its job ({self.state}) and already holds "
                                   f"{waiting} requests, its limit; retry shortly")
            p = Pending(job, sink, _Decoding(job, sink, self) if job.endpoint != "embeddings" else None)
            self.journal[job.id] = p
            if self.state == "up":
                self._dispatch(p)

    def health(self) -> dict:
        with self.lock:
            job, held = self.job, self._held()
            return {"status": "stopping" if self.stopping.is_set() else self.state,
                    "model": self.served.model if self.served else self.opts.model, "pid": os.getpid(),
                    "ranks": self.ranks if self.state == "up" else 0, "hosts": self.fleet.describe(),
                    "job": int(job.token.split("-")[0]) if job else None, "job_hosts": job.hosts if job else [],
                    "queued": held, "in_flight": len(self.journal) - held, "served": self.served_n,
                    "restarts": len(self.restarts),
                    "restart_log": [{k: v for k, v in r.items() if not k.startswith("_")} for r in self.restarts[-20:]],
                    "last_fault": self.last_fault, "load_s": job.hello.get("load_s") if job and job.hello else None}

    def _held(self) -> int:
        """Accepted requests not sent to any job (hold the lock)."""
        return sum(p.dispatched is None for p in self.journal.values())

    # -- to and from rank 0 --------------------------------------------------------------------

    def _dispatch(self, p: Pending) -> None:
        """Send p to the running job: a completion as its prompt plus the tokens made so far."""
        job, ids, left = p.job, p.job.ids, p.job.max_tokens
        if p.decoding is not None:
            ids, left = [job.ids[0] + p.decoding.made], job.max_tokens - len(p.decoding.made)
            if left <= 0 or p.decoding.finish is not None:
                self._answered(p)
                p.decoding.close({"bytes_sent": 0, "partitions": self.ranks, "replayed": True})
                return
        p.dispatched, p.running = self.job.token, False
        try:
            self.job.channel.send({"job": {"endpoint": job.endpoint, "ids": ids, "max_tokens": left,
                                           "temperature": job.temperature, "top_p": job.top_p, "top_k": job.top_k,
                                           "seed": job.seed, "stream": job.stream, "id": job.id}})
        except OSError:
            pass  # the job is failing: the watch finds it and replays p

    def _answered(self, p: Pending) -> None:
        self.journal.pop(p.job.id, None)
        self.served_n += 1
        if self.restarts and p.job.id in self.restarts[-1].get("_replaying", set()):
            r = self.restarts[-1]
            r["_replaying"].discard(p.job.id)
            if not r["_replaying"]:
                r["replay_s"] = round(time.monotonic() - r["_up_at"], 3)

    def _listen(self, job: Job) -> None:
        """rank 0's messages, until its connection ends."""
        try:
            while True:
                msg, blob = job.channel.recv()
                job.last_beat = time.monotonic()
                if "beat" in msg:
                    job.phase = msg["beat"]
                elif "fault" in msg:
                    job.fault = msg["fault"]
                else:
                    with self.lock:
                        self._on_answer(job, msg, blob)
        except (EOFError, OSError, ValueError) as e:
            job.closed = f"{type(e).__name__}: {e}"

    def _on_answer(self, job: Job, msg: dict, blob: bytes) -> None:
        p = self.journal.get(msg.get("id"))
        if p is None or p.dispatched != job.token:
            return  # answered already, or a stale job's
        if "start" in msg:
            p.running = True
        elif "vectors" in msg:
            rows = msg["vectors"]
            vectors = np.frombuffer(blob, dtype="<f4").reshape(len(rows), -1)
            fmt = p.job.encoding_format
            results = [(v.tolist() if fmt == "float" else v, n, prism) for v, (n, prism) in zip(vectors, rows)]
            self._answered(p)
            p.sink(("done", embeddings_body(self.served, results, fmt)))
        elif "token" in msg:
            if p.decoding.take(int(msg["token"])) and not p.cancelled and p.decoding.finish == "stop":
                p.cancelled = True  # a stop sequence: rank 0 may stop decoding this row
                job.channel.send({"cancel": p.job.id})
        elif "done" in msg:
            p.decoding.finish = p.decoding.finish or msg["done"]["finish"]
            self._answered(p)
            p.decoding.close(msg["done"]["prism"])
        elif "error" in msg:
            err = msg["error"]["error"]
            self._answered(p)
            p.sink(("error", ApiError(err["message"], err.get("param"), msg["status"], err.get("type"))))
        # "lost": the job is failing under it; the watch sees the fault and `_fault` replays it

    # -- jobs -------------------------------------------------------------------------------

    def _rank_command(self, token: str) -> list:
        here = Path(sys.executable).parent / "prism-run"
        prog = [str(here)] if here.exists() else [sys.executable, "-m", "prism_ops.cli.run"]
        port = self.listener.getsockname()[1]
        return [*prog, *self.opts.rank_args, "--frontend", f"{self.address}:{port}", "--frontend-job", token]

    def _launch(self, hosts: list) -> Job:
        """Start the job on hosts; returns it once rank 0 said hello, or with proc ended."""
        self._jobs += 1
        token = f"{self._jobs}-{self._secret}"
        cmd = self.fleet.launcher.command(hosts, self._rank_command(token))
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, text=True, errors="replace")
        job = Job(token, list(hosts), proc, time.monotonic())
        threading.Thread(target=self._pump, args=(job,), name="prism-mpiexec-out", daemon=True).start()
        while proc.poll() is None and time.monotonic() - job.started < START_TIMEOUT_S:
            if self.stopping.is_set() and not self.journal:
                break
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            conn.settimeout(HELLO_TIMEOUT_S)
            ch = Channel(conn)
            try:
                msg, _ = ch.recv()
            except (EOFError, OSError, ValueError):
                ch.close()
                continue
            if msg.get("hello") != token:
                ch.close()  # an old job's rank 0, or not ours
                continue
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            job.channel, job.hello, job.last_beat = ch, msg, time.monotonic()
            threading.Thread(target=self._listen, args=(job,), name="prism-rank0-in", daemon=True).start()
            break
        return job

    def _pump(self, job: Job) -> None:
        for line in job.proc.stdout:
            job.output.append(line)
            print(line, end="", file=self.log, flush=True)

    def _end(self, job: Job) -> list:
        """Kill the job everywhere it can be reached; the hosts it could not reach."""
        try:
            os.killpg(job.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        job.proc.wait()
        if job.channel is not None:
            job.channel.close()
        unreachable = []

        def clean(h):
            if not self.fleet.launcher.clean(h, {job.token}):
                unreachable.append(h)

        threads = [threading.Thread(target=clean, args=(h,)) for h in job.hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for h in unreachable:
            self.fleet.host(h).stale.add(job.token)
        return unreachable

    def _watch(self, job: Job) -> tuple:
        """Wait while the job serves: ("fault", why, [hosts named]), ("readmit", hosts) or ("stop",)."""
        timeout, pinged = self.opts.timeout, 0.0
        while True:
            now = time.monotonic()
            if now - pinged >= BEAT_S:  # rank 0 stops the job when the front end goes silent
                pinged = now
                try:
                    job.channel.send({"ping": round(now, 3)})
                except OSError:
                    pass  # the connection's end is seen below
            if job.proc.poll() is not None:
                time.sleep(0.3)  # the launcher's last words (which host) come just before it exits
                return "fault", f"the launcher exited with code {job.proc.returncode}", self._named(job)
            if job.fault is not None:
                return "fault", job.fault["message"], self._named(job)
            if job.closed is not None:
                return "fault", f"rank 0's connection ended ({job.closed})", self._named(job)
            if now - job.last_beat > timeout:
                return "fault", f"rank 0 silent for {now - job.last_beat:.1f} s", [job.hosts[0]]
            if self.stopping.is_set():
                return ("stop",)
            if self._ready:
                ready, self._ready = self._ready, []
                return "readmit", ready
            time.sleep(WATCH_S)

    def _named(self, job: Job) -> list:
        """The hosts a fault names: rank 0's report (rank r runs on hosts[r]) and the launcher's
        'RUNNING AT host' lines (a name in the job's host list, or a rank's host name)."""
        names = []
        if job.fault is not None and job.fault.get("rank") is not None and job.fault["rank"] < len(job.hosts):
            names.append(job.hosts[job.fault["rank"]])
        rank_names = (job.hello or {}).get("hosts") or []
        for at in re.findall(r"RUNNING AT (\S+)", "".join(job.output)):
            if at in job.hosts:
                names.append(at)
            elif at in rank_names:
                names.append(job.hosts[rank_names.index(at)])
        return list(dict.fromkeys(names))

    def _probe(self) -> None:
        """Probe lost hosts in the background; ready ones wait in _ready for the watch."""
        while not self.stopping.is_set():
            ready = self.fleet.probe_lost(time.monotonic())
            if ready:
                self._ready = list(dict.fromkeys(self._ready + ready))
            time.sleep(0.2)

    # -- the supervision loop ----------------------------------------------------------------

    def run(self) -> int:
        threading.Thread(target=self._probe, name="prism-probe", daemon=True).start()
        bad_launches, http = 0, None
        pending_restart = None
        try:
            while True:
                if self._ready:  # no job is up: lost hosts that are ready join the next one
                    ready, self._ready = self._ready, []
                    self.fleet.admit(ready, time.monotonic())
                hosts = self.fleet.up()
                if self.stopping.is_set() and not self.journal:
                    return 0
                if not hosts:
                    self._expire_held()
                    time.sleep(0.2)
                    continue
                job = self._launch(hosts)
                if job.hello is None:  # never said hello
                    code = job.proc.poll()
                    lost = self._end(job)
                    if code in (2, 3) and not lost:  # a bad flag or mismatched hosts: a relaunch cannot help
                        print(f"prism-run: the job on {','.join(hosts)} exited with code {code}; stopping",
                              file=self.log, flush=True)
                        return code
                    if self.stopping.is_set():
                        return 0
                    lost = list(dict.fromkeys(self._named(job) + lost))
                    bad_launches = 0 if lost else bad_launches + 1
                    if bad_launches >= MAX_BAD_LAUNCHES:
                        print(f"prism-run: {bad_launches} launches on {','.join(hosts)} failed with no host to "
                              "blame; stopping", file=self.log, flush=True)
                        return 1
                    for h in lost:
                        self.fleet.lose(h, time.monotonic())
                    self._expire_held()
                    continue
                bad_launches = 0
                if self.served is None:
                    http = self._first_hello(job)
                with self.lock:
                    self.job, self.ranks, self.state = job, job.hello["ranks"], "up"
                    if pending_restart is not None:
                        r = pending_restart
                        r.update(relaunch_s=round(time.monotonic() - r["_detected"], 3), load_s=job.hello["load_s"],
                                 hosts_after=list(hosts), _up_at=time.monotonic())
                        r["_replaying"] = {p.job.id for p in self.journal.values() if p.dispatched is None}
                        r["replayed"] = len(r["_replaying"])
                        if not r["_replaying"]:
                            r["replay_s"] = 0.0
                        pending_restart = None
                    for p in list(self.journal.values()):
                        if p.dispatched is None:
                            self._dispatch(p)
                what = self._watch(job)
                if what[0] == "fault":
                    pending_restart = self._fault(job, what[1], what[2])
                elif what[0] == "readmit":
                    self._drain_and_stop(job)
                    self.fleet.admit(what[1], time.monotonic())
                    print(f"prism-run: {','.join(what[1])} back; relaunching on {','.join(self.fleet.up())}",
                          file=self.log, flush=True)
                else:
                    self._drain_and_stop(job)
                    return 0
        finally:
            self.stopping.set()
            if self.job is not None:
                self._end(self.job)
            with self.lock:
                for p in list(self.journal.values()):
                    self.journal.pop(p.job.id, None)
                    p.sink(("error", _unavailable("the service stopped", retry=False)))
            if http is not None:
                time.sleep(0.5)  # let the last answers go out
                http.stop()

    def _first_hello(self, job: Job):
        """The model's shape from the first job, the tokenizer, then HTTP."""
        from .http import HttpThread, make_app  # starlette and uvicorn: only where HTTP is served

        s = job.hello["served"]
        self.served = Served(s["model"], s["decoder"], s["max_positions"], s["width"], s["vocab_size"])
        self.tok = load_tokenizer(self.opts.model)
        self.eos = self.tok.eos_token_id if self.served.decoder else None
        http = HttpThread(make_app(self, self.opts.api_key), self.opts.host, self.opts.port)
        http.start()
        print(f"prism-run: serving {self.served.model} on http://{self.opts.host}:{self.opts.port} across "
              f"{','.join(job.hosts)} ({job.hello['ranks']} ranks; loaded in {job.hello['load_s']:.1f} s)",
              file=self.log, flush=True)
        return http

    def _fault(self, job: Job, why: str, named: list) -> dict:
        detected = time.monotonic()
        with self.lock:
            self.state = "reforming"
        unreachable = self._end(job)
        lost = list(dict.fromkeys(named + unreachable))
        now = time.monotonic()
        for h in lost:
            self.fleet.lose(h, now)
        phase = (job.fault or {}).get("phase") or job.phase
        self.last_fault = {"why": why, "hosts": lost, "phase": phase, "job_hosts": job.hosts, "at": time.time()}
        failed = []
        with self.lock:
            for p in list(self.journal.values()):
                if p.dispatched != job.token:
                    continue
                if p.running:
                    p.failed_on.append(tuple(job.hosts))
                if len(set(p.failed_on)) >= 2:
                    self._answered(p)
                    sets = " and ".join(",".join(s) for s in dict.fromkeys(p.failed_on))
                    failed.append(p)
                    p.sink(("error", _unavailable(f"the request failed twice, on hosts {sets}: {why}", retry=False)))
                p.dispatched, p.running = None, False
        print(f"prism-run: job on {','.join(job.hosts)} failed in {phase}: {why}; lost: {','.join(lost) or 'none'}; "
              f"relaunching on {','.join(self.fleet.up()) or '(no host yet)'}", file=self.log, flush=True)
        r = {"why": why, "lost": lost, "phase": phase, "hosts_before": job.hosts, "failed_twice": len(failed),
             "end_s": round(time.monotonic() - detected, 3), "_detected": detected, "at": time.time()}
        self.restarts.append(r)
        return r

    def _drain_and_stop(self, job: Job) -> None:
        """Let the running requests finish (new ones wait), then stop the job cleanly."""
        with self.lock:
            self.state = "draining"
        t0 = time.monotonic()
        while time.monotonic() - t0 < DRAIN_S and job.proc.poll() is None and job.closed is None:
            with self.lock:
                if not any(p.dispatched == job.token for p in self.journal.values()):
                    break
            time.sleep(WATCH_S)
        try:
            job.channel.send({"stop": True})
            job.proc.wait(timeout=DRAIN_S)
        except (OSError, subprocess.TimeoutExpired):
            pass
        with self.lock:
            self.state = "reforming"
            for p in self.journal.values():
                if p.dispatched == job.token:
                    p.dispatched, p.running = None, False  # not answered in time: replayed
        self._end(job)

    def _expire_held(self) -> None:
        """While no job is up: a request held past HOLD_MAX_S gets a 503."""
        now = time.monotonic()
        with self.lock:
            for p in list(self.journal.values()):
                if p.dispatched is None and now - p.accepted > HOLD_MAX_S:
                    self._answered(p)
                    p.sink(("error", _unavailable(f"no job could be formed on the hosts within {HOLD_MAX_S:g} s "
                                                  f"(lost: {','.join(self.fleet.lost())})")))


def _address_towards(host: str) -> str:
    """This machine's address on the route to host (where its ranks can dial the front end)."""
    if host in ("localhost", "127.0.0.1"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))  # no packet is sent: this only picks the route
        return s.getsockname()[0]


def supervise(opts) -> int:
    """prism-run --serve --hosts ...: the front end until SIGINT/SIGTERM (then it drains, exit 0)."""
    fe = FrontEnd(opts)

    def stop(signum, frame):
        print(f"prism-run: {signal.Signals(signum).name}: answering what was accepted, then stopping",
              file=fe.log, flush=True)
        fe.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    return fe.run()
