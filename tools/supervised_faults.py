"""Faults against the supervised service (`prism-run --serve --hosts`) on 3 test hosts.

    python tools/supervised_faults.py                          # every case, MiniLM and SmolLM2, a table
    python tools/supervised_faults.py --cases down --models minilm
    python tools/fault_matrix.py --supervised ...              # the same, from the fault matrix

The front end runs here (the root namespace, at the test hosts' gateway address); its job runs on
3 test hosts (`netns_hosts.Hosts`, 100 Mbit/s links, MPICH over TCP, the `exact` preset, so an
answer after re-forming on fewer ranks must equal the unfaulted one within fp32 rounding;
`--split-min-tokens 0`, so every text is split and a fault lands between ranks mid-forward). The
clients are the official `openai` client with max_retries=0: they see exactly what the service
does. Each case first answers the requests unfaulted (the reference), then again with the fault:

    down      20 concurrent requests (MiniLM: embeddings; a decoder: chats and one stream); the
              link of host 1 goes down while it runs the prefill (its rank's phase log says so);
              then the link comes back: the host must be in /health again within 60 s, while a
              client keeps sending requests, none of which may fail
    kill      the same, with host 1's rank SIGKILLed mid-prefill instead
    gen       a decoder only: the link of host 2, whose rank decodes, goes down mid-generation
              (once the stream has had some of its tokens; the tiny model, whose random tokens
              stream no text: once that rank makes a third token); the stream resumes where it stopped;
              then the link comes back, as in down
    two       the links of hosts 1 and 2 go down, one after the other: the job ends on one host
    flap      host 2's link goes down and up every 2 s for 30 s while requests keep coming
    slowflap  host 2's link goes down for 8 s (past the timeout) and up for 12 s, 3 times, while
              requests keep coming: each outage ends the job; the host, lost again within a
              minute of coming back, is held out longer each time; relaunches at most 2 an outage
    frontend  the front end and its mpiexec stop (SIGSTOP: its host is gone, silent): every rank
              and hydra proxy on the hosts must end within the timeout + 10 s, rank 0 saying why

Every case checks: every request 200, answers equal to the reference (embeddings within the fp32
budget, greedy text equal), the stream without a duplicate or missing token and with its
finish_reason, and no process of an old job on any host at the end. Times per case: detection
(fault -> the front end's restart), relaunch (detection -> the new job's hello), reload (the
model's load on the new job) and replay (hello -> the replayed requests answered).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import netns_hosts  # noqa: E402
from fault_matrix import _phase_pids, _wait_phase  # noqa: E402  (the ranks' phase logs)
from harness import with_hooks  # noqa: E402

BIN = Path(sys.executable).parent
CASES = ("down", "kill", "gen", "two", "flap", "slowflap", "frontend")
DECODER_CASES = {"gen"}  # cases that need a decoder
LIMIT_S = {"minilm": 20.0, "smollm2": 60.0, "tiny": 60.0}  # every answer within this of the fault
BACK_S = 60.0  # a host whose link is back is in /health within this
TIMEOUT_S = 5.0  # the ranks' silence timeout (the supervised default)
# Host 2's link, step by step: (up?, seconds), then up for good. flap: down and up every 2 s for
# 30 s; slowflap: down 8 s (past the timeout), up 12 s, three times.
FLAPS = {"flap": [(False, 2.0), (True, 2.0)] * 7 + [(False, 2.0)], "slowflap": [(False, 8.0), (True, 12.0)] * 3}
POLL_S = 0.5  # while flapping: how often a finished burst is followed by the next, and /health read
MBIT = 100
PORT = 8031
REQUESTS = 20
STREAM_MIDWAY = 4  # gen: the link goes down once the stream has had this many chunks (a few tokens in)
TEXTS = ["Edge devices share one transformer, and each sends only compact summaries to the others. " * 6,
         "A short query about the weather in Paris today?", "The quick brown fox jumps over the lazy dog. " * 10,
         "Sentence embeddings for retrieval on small boards. " * 4]


@dataclass
class Outcome:
    model: str
    case: str
    codes: list = field(default_factory=list)  # every faulted request's status (200 or the error)
    same: bool = False  # answers equal the unfaulted ones
    stream_ok: bool | None = None  # the stream: no duplicate or missing token, a finish_reason
    answered_s: float | None = None  # fault -> the last answer
    back_s: float | None = None  # link up -> the host in /health's job again
    rejoin_codes: list = field(default_factory=list)
    restarts: list = field(default_factory=list)  # the front end's restart log
    left: list = field(default_factory=list)  # processes of an old job (or any, after the front end stopped)
    ends_s: float | None = None  # frontend: fault -> no process left on any host
    fault_at: float | None = None  # the fault's wall-clock time (the restart log's "at" is the detection's)
    held_s: float = 0.0  # slowflap: the longest hold /health gave the flapping host
    said: str = ""

    @property
    def relaunches(self) -> int:
        """Jobs started after the first (after a fault, to take a host back, or on the hosts left
        when a launch failed): each job's rank 0 says it is serving the front end (in its log)."""
        return max(0, self.said.count(" for the front end at ") - 1)

    @property
    def ok(self) -> bool:
        if self.case == "frontend":
            return self.ends_s is not None and self.ends_s <= TIMEOUT_S + 10 and not self.left
        # flapping: requests keep coming while it lasts; two: the second link goes 8 s after the first
        limit = LIMIT_S[self.model] + (sum(s for _, s in FLAPS[self.case]) if self.case in FLAPS
                                       else {"two": TIMEOUT_S + 3}.get(self.case, 0))
        good = (bool(self.codes) and set(self.codes) == {200} and self.same and self.stream_ok is not False
                and not self.left and self.answered_s is not None and self.answered_s <= limit)
        if self.case == "slowflap":  # bounded relaunches, and a hold that grew past the first one (5 s)
            outages = sum(not up for up, _ in FLAPS["slowflap"])
            good = good and 1 <= self.relaunches <= 2 * outages and self.held_s > 5.0
        if self.case in ("down", "kill", "gen"):
            good = good and self.back_s is not None and self.back_s <= BACK_S and set(self.rejoin_codes) <= {200}
        return good


def _model_arg(model: str, d: Path) -> str:
    if model == "tiny":
        from tiny_model import write_tiny_gpt2
        return str(write_tiny_gpt2(d / "tiny"))
    return model


class Service:
    """The front end on the test hosts, with its log; `health()`, `client()`; `served` (the
    model's name in the API) and `chat` (whether it takes chats) for `_ask`."""

    def __init__(self, hosts, model: str, d: Path, env_extra=None):
        self.hosts, self.d = hosts, d
        self.log = d / "phases"
        self.log.mkdir(exist_ok=True)
        env = hosts.env(with_hooks(dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                                        TOKENIZERS_PARALLELISM="false", PRISM_PHASE_LOG=str(self.log),
                                        **(env_extra or {}))))
        launcher = f"-launcher ssh -launcher-exec {hosts.launcher} -localhost {hosts.own_ip}"
        self.served = _model_arg(model, d)  # the model's name in the API is its --model
        self.chat = model != "tiny"  # the tiny model has no chat template: completions
        cmd = [str(BIN / "prism-run"), "--serve", "--hosts", ",".join(hosts.ips), "--mpiexec-args", launcher,
               "--host", hosts.own_ip, "--port", str(PORT), "--model", self.served, "--preset", "exact",
               "--threads", "1", "--timeout", f"{TIMEOUT_S:g}",
               "--split-min-tokens", "0"]  # every text split: the fault lands inside a forward between ranks
        self.out = open(d / "frontend.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.url = f"http://{hosts.own_ip}:{PORT}"
        import httpx
        t0 = time.monotonic()
        while time.monotonic() - t0 < 600:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.3)
        raise RuntimeError(f"the front end did not come up:\n{self.said()[-3000:]}")

    def health(self) -> dict:
        import httpx
        return httpx.get(self.url + "/health", timeout=10).json()

    def client(self):
        import openai
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=300)

    def said(self) -> str:
        if not self.out.closed:
            self.out.flush()
        return (self.d / "frontend.log").read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()
        finally:
            self.out.close()


def _requests(model: str) -> list:
    """(kind, arguments): 20 embeddings, or 19 chats and one stream."""
    if model == "minilm":
        return [("embed", TEXTS[i % len(TEXTS)]) for i in range(REQUESTS)]
    out = [("chat", f"Tell me one fact about the number {i}.") for i in range(REQUESTS - 1)]
    return out + [("stream", "Write two sentences about edge devices.")]


def _ask(client, served: str, kind: str, text: str, chat: bool = True, midway: threading.Event | None = None):
    """(status, answer): the vector, the text, or (the stream's deltas, its finish_reason).
    chat=False: completions (a model without a chat template). midway: set once a stream has
    had STREAM_MIDWAY chunks (the gen case takes the link down then)."""
    import openai

    def chunks(stream):
        out = []
        for c in stream:
            out.append(c)
            if midway is not None and len(out) == STREAM_MIDWAY:
                midway.set()
        return out

    try:
        if kind == "embed":
            return 200, client.embeddings.create(model=served, input=text).data[0].embedding
        if not chat:
            if kind == "stream":
                got = chunks(client.completions.create(model=served, prompt=text, max_tokens=12, temperature=0,
                                                       stream=True))
                return 200, ([c.choices[0].text for c in got if c.choices],
                             [c.choices[0].finish_reason for c in got if c.choices and c.choices[0].finish_reason])
            r = client.completions.create(model=served, prompt=text, max_tokens=12, temperature=0)
            return 200, r.choices[0].text
        msgs = [{"role": "user", "content": text}]
        if kind == "stream":
            got = chunks(client.chat.completions.create(model=served, messages=msgs, max_tokens=24, temperature=0,
                                                        stream=True))
            return 200, ([c.choices[0].delta.content or "" for c in got if c.choices],
                         [c.choices[0].finish_reason for c in got if c.choices and c.choices[0].finish_reason])
        r = client.chat.completions.create(model=served, messages=msgs, max_tokens=12, temperature=0)
        return 200, r.choices[0].message.content
    except openai.APIStatusError as e:
        return e.status_code, str(e)
    except openai.APIError as e:
        return None, str(e)


def _same(model: str, kind: str, a, b) -> bool:
    """Equal answers: embeddings within the fp32 budget, the same text, the same streamed text."""
    if kind == "embed":  # the fp32 budget over MiniLM's 6 layers (as fault_matrix._same)
        return max(abs(x - y) for x, y in zip(a, b)) <= 1e-5 * 6
    if kind == "stream":
        return "".join(a[0]) == "".join(b[0])
    return a == b


def _burst(svc: Service, reqs: list, midway: threading.Event | None = None) -> tuple[list, list, list]:
    """All of reqs at once: (statuses, answers, when each finished, monotonic)."""
    client, done = svc.client(), []

    def one(kr):
        out = _ask(client, svc.served, *kr, chat=svc.chat, midway=midway)
        done.append(time.monotonic())
        return out

    with ThreadPoolExecutor(len(reqs)) as pool:
        res = list(pool.map(one, reqs))
    return [c for c, _ in res], [a for _, a in res], done


class Burst:
    """_burst in a thread; `collect` adds its statuses to the outcome and checks its answers."""

    def __init__(self, svc: Service, reqs: list):
        self.reqs, self.result = reqs, None
        self.midway = threading.Event()  # the stream is half-way (`_ask`)
        self.thread = threading.Thread(target=lambda: setattr(self, "result", _burst(svc, reqs, self.midway)))
        self.thread.start()

    def collect(self, o: "Outcome", ref: list, model: str) -> None:
        self.thread.join()
        codes, answers, self.done = self.result
        o.codes += codes
        o.same = o.same and all(c == 200 and _same(model, k, a, b)
                                for (k, _), c, a, b in zip(self.reqs, codes, answers, ref))
        self.answers = answers


def _phase_count(log: Path, rank: int, prefix: str) -> int:
    """How many times rank has entered a phase starting with prefix (its phase log)."""
    return sum(ph.startswith(prefix) for _, ph in _phase_pids(log).get(rank, []))


def _job_processes(hosts) -> dict:
    """pid -> the hello token of every rank on the hosts (from its command line)."""
    out = {}
    for pid in hosts.pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--frontend-job" in cmd:
            out[pid] = cmd[cmd.index(b"--frontend-job") + 1].decode()
    return out


def _rejoin(svc: Service, model: str, host: str, t_up: float, o: Outcome) -> None:
    """Keep one client busy until host is in the job again (or BACK_S passes)."""
    stop = threading.Event()
    kind, text = _requests(model)[0]

    def keep_asking():
        client = svc.client()
        while not stop.is_set():
            o.rejoin_codes.append(_ask(client, svc.served, kind, text, chat=svc.chat)[0])
            time.sleep(0.2)

    t = threading.Thread(target=keep_asking)
    t.start()
    try:
        while time.monotonic() - t_up < BACK_S + 30:
            h = svc.health()
            if host in h["job_hosts"] and h["status"] == "up":
                o.back_s = time.monotonic() - t_up
                break
            time.sleep(0.25)
        time.sleep(2.0)  # requests keep coming on the re-formed job
    finally:
        stop.set()
        t.join()


def run_case(model: str, case: str) -> Outcome:
    o = Outcome(model, case)
    with tempfile.TemporaryDirectory() as tmp, netns_hosts.Hosts(3, MBIT) as hosts:
        d = Path(tmp)
        extra = {"PRISM_TEST_DECODE_SLEEP_S": "0.05"} if model == "tiny" else {}
        svc = Service(hosts, model, d, extra)
        try:
            reqs = _requests(model)
            codes, ref, _ = _burst(svc, reqs)  # the unfaulted answers, from the same service
            if set(codes) != {200}:
                raise RuntimeError(f"unfaulted requests failed: {codes} {ref[:2]}")
            if case == "frontend":
                return _frontend_lost(svc, hosts, o)
            victim = 2 if case == "gen" else 1  # gen: the last rank's host, it decodes
            phase = "generation token 3" if case == "gen" else "forward"
            seen = _phase_count(svc.log, victim, phase)
            burst = Burst(svc, reqs)
            if case == "gen" and model != "tiny":  # mid-generation: the stream has had some of its tokens
                if not burst.midway.wait(120.0):
                    raise RuntimeError(f"the stream never had {STREAM_MIDWAY} chunks")
            # else the victim's phase log (the tiny model's random tokens stream no text)
            elif not _wait_phase(svc.log, victim, phase, seen, svc.proc, 120.0):
                raise RuntimeError(f"host {victim}'s rank never entered {phase!r}")
            t_fault, o.fault_at, o.same = time.monotonic(), time.time(), True
            if case == "kill":
                os.kill(_phase_pids(svc.log)[1][-1][0], signal.SIGKILL)
            elif case in ("down", "two", "gen"):
                hosts.link_down(victim)
                if case == "two":
                    time.sleep(TIMEOUT_S + 3)
                    hosts.link_down(2)
            for up, seconds in FLAPS.get(case, []):
                (hosts.link_up if up else hosts.link_down)(2)
                t_end = time.monotonic() + seconds
                while time.monotonic() < t_end:
                    time.sleep(min(POLL_S, max(0.0, t_end - time.monotonic())))
                    for lost in svc.health()["hosts"]["lost"]:
                        if lost["host"] == hosts.ips[2]:
                            o.held_s = max(o.held_s, lost["held_s"])
                    if not burst.thread.is_alive():  # keep requests coming throughout
                        burst.collect(o, ref, model)
                        burst = Burst(svc, reqs)
            if case in FLAPS:
                hosts.link_up(2)
            burst.collect(o, ref, model)
            o.answered_s = max(burst.done) - t_fault
            streams = [a for (k, _), a in zip(reqs, burst.answers) if k == "stream"]
            if streams:
                deltas, finishes = streams[0] if isinstance(streams[0], tuple) else ([], [])
                ref_deltas = [a for (k, _), a in zip(reqs, ref) if k == "stream"][0][0]
                o.stream_ok = "".join(deltas) == "".join(ref_deltas) and len(finishes) == 1
            if case in ("down", "kill", "two", "gen"):
                t_up = time.monotonic()
                if case != "kill":
                    hosts.link_up(victim)
                    if case == "two":
                        hosts.link_up(2)
                _rejoin(svc, model, hosts.ips[victim], t_up, o)
            h = svc.health()
            o.restarts = h["restart_log"]
            now = _job_processes(hosts)
            current = {t for t in now.values() if t.split("-")[0] == str(h.get("job"))}
            o.left = [pid for pid, t in now.items() if t not in current] if case != "two" else []
        finally:
            svc.stop()
            time.sleep(0.5)
            o.left += hosts.pids()
            o.said = svc.said()
    return o


def _frontend_lost(svc: Service, hosts, o: Outcome) -> Outcome:
    """SIGSTOP the front end and its mpiexec: the ranks must end by themselves, everywhere."""
    stopped = [svc.proc.pid] + [int(p.name) for p in Path("/proc").glob("[0-9]*") if _ppid(p) == svc.proc.pid]
    t0 = time.monotonic()
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        while time.monotonic() - t0 < TIMEOUT_S + 30:
            if not hosts.pids():
                o.ends_s = time.monotonic() - t0
                break
            time.sleep(0.1)
        o.left = hosts.pids()
    finally:
        for pid in stopped:
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
    return o


def _ppid(proc: Path) -> int | None:
    try:
        return int(proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def table(outcomes: list) -> str:
    rows = ["| model | case | requests 200 | answers as unfaulted | stream | last answer after fault (s) | "
            "host back (s) | relaunches (after faults) | longest hold (s) | first restart: detection, relaunch, "
            "reload, replay (s) | ranks end (s) | old processes left | ok |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    nan = float("nan")
    for o in outcomes:
        times = ""
        if o.restarts:
            r = o.restarts[0]
            detect = r["at"] - o.fault_at if o.fault_at else nan
            times = (f"{detect:.1f}, {r.get('relaunch_s', nan):.1f}, {r.get('load_s') or nan:.1f}, "
                     f"{r.get('replay_s', nan):.1f}")
        n200 = f"{sum(c == 200 for c in o.codes)}/{len(o.codes)}" if o.codes else "-"
        rows.append(f"| {o.model} | {o.case} | {n200} | {'yes' if o.same else 'no'} | "
                    f"{ {None: '-', True: 'ok', False: 'NO'}[o.stream_ok]} | "
                    f"{'-' if o.answered_s is None else f'{o.answered_s:.1f}'} | "
                    f"{'-' if o.back_s is None else f'{o.back_s:.1f}'} | {o.relaunches} ({len(o.restarts)}) | "
                    f"{f'{o.held_s:g}' if o.held_s else '-'} | {times or '-'} | "
                    f"{'-' if o.ends_s is None else f'{o.ends_s:.1f}'} | {len(o.left)} | {'yes' if o.ok else 'NO'} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json", help="also write every outcome here")
    args = ap.parse_args(argv)
    why = netns_hosts.available()
    if why:
        print(f"supervised_faults: {why}", file=sys.stderr)
        return 2
    netns_hosts.exit_on_signals()
    outcomes = []
    for model in args.models.split(","):
        for case in args.cases.split(","):
            if case in DECODER_CASES and model == "minilm":
                print(f"{model} {case}: skipped (an encoder does not generate)", file=sys.stderr, flush=True)
                continue
            o = run_case(model, case)
            outcomes.append(o)
            print(f"{model} {case}: {'ok' if o.ok else 'FAILED'} codes={o.codes} same={o.same} "
                  f"answered {o.answered_s} back {o.back_s} left {o.left}", file=sys.stderr, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps([{**{k: v for k, v in vars(x).items() if k != "said"},
                                                        "ok": x.ok, "said_tail": x.said[-3000:]} for x in outcomes],
                                                      indent=1, default=str))
    print(table(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
