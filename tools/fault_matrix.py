"""The fault matrix: signal one rank of a real mpiexec job at one phase and check the job ends.

    python tools/fault_matrix.py                      # the full matrix, a markdown table on stdout
    python tools/fault_matrix.py --programs minilm --signals STOP --victims last --phases forward

Programs (3 ranks): `minilm` (prism-run on all-MiniLM-L6-v2), `smollm2` (prism-run on
SmolLM2-135M, generating), `serve` (s2m3-serve on a plan spread over the 3 ranks). Signals:
KILL, TERM, INT, STOP. Victims: rank 0, a middle rank, the last rank. Phases: the names the
ranks give their phases (`prism_ops.distributed.watch`): loading, handshake, forward, generation,
serving.

The jobs run with the test harness (`tests/harness`: it installs the package's one test hook,
`prism_ops.distributed.hooks.on_phase`, from the settings below). Each rank appends `pid phase`
lines to `$PRISM_PHASE_LOG/rank<R>.log` when it enters a phase;
the driver waits for the victim to enter the phase, signals it, and then requires, with default
settings: a non-zero exit within `--limit-s` (60 s), no process of the job left alive, and rank
0's message naming the victim where rank 0 is still alive (when a rank dies, MPICH's launcher
ends every rank at once and prints its own report: then no rank can speak). Short phases (the handshake) are held
open for a moment with `PRISM_PHASE_HOLD=phase:seconds`, so the signal lands inside them. The table goes into docs/RESULTS.md; tests/test_fault_matrix.py runs a subset.

Faults on real links (`--links`, as root): the job runs on 2 test hosts (`tools/netns_hosts.py`:
network namespaces over TCP) and the decoding host's link fails while the job is in a phase:

    python tools/fault_matrix.py --links                        # every link fault, a table
    python tools/fault_matrix.py --links --programs tiny,serve-tiny --timeout 5

    down  the link goes down for 60 s: the job must end, non-zero, within the silence timeout
          + 10 s on every host (each host's processes gone, the hydra proxy's included), and a
          service answer its waiting clients 503
    flap  down, then up after 5 s (within the timeout): the job goes on, exit 0, and its answer
          equals the unfaulted run's
    slow  the rate drops to 1 Mbit/s: the job either goes on to the unfaulted answer or ends
          as for down; never hangs
The supervised service (`prism-run --serve --hosts`, which re-forms its job instead of ending):
`--supervised [--models ...] [--cases down,kill,gen,two,flap,slowflap,frontend]` runs tools/supervised_faults.py.
Phases: prefill (the forward; held open 3 s so the cut lands in it), generation (the last
rank decoding alone), and in a service (prism-run --serve) while a request generates. Programs:
minilm (prefill only), smollm2 (real weights), tiny (a tiny GPT-2, for quick checks; decoding
slowed to 0.5 s a token by the harness, PRISM_TEST_DECODE_SLEEP_S, so a generation lasts),
serve and serve-tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import threading
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import netns_hosts  # noqa: E402
from harness import with_hooks  # noqa: E402

BIN = Path(sys.executable).parent
SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.txt"
RANKS = 3
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT, "STOP": signal.SIGSTOP}
VICTIMS = {"0": 0, "middle": 1, "last": RANKS - 1}
PHASES = {"minilm": ("loading", "handshake", "forward"),
          "smollm2": ("loading", "handshake", "forward", "generation"),
          "serve": ("loading", "serving")}
HOLD_S = {"handshake": 3.0, "serving": 3.0}  # phases too short to hit without holding them open


@dataclass
class Case:
    program: str
    signal: str
    victim: str
    phase: str


@dataclass
class Outcome:
    case: Case
    reached: bool  # the victim entered the phase and was signalled
    exit_code: int | None  # None: still running at the limit (then killed)
    seconds: float  # from the signal to the job's end
    named: bool | None  # rank 0 names the victim (None: rank 0 could not, see named_of)
    left: list[int]  # pids of the job still alive after it ended
    stderr: str  # stderr, then the tail of stdout

    @property
    def ok(self) -> bool:
        return (self.reached and self.exit_code not in (None, 0) and not self.left
                and self.named is not False)


def _serve_files(d: Path) -> list[str]:
    """A plan spreading tiny S2M3 models over the 3 ranks, and a burst of requests for it."""
    from prism_ops.cli.s2m3_place import main as place

    models = ["cifar10-vits16", "sentiment-minilm", "image-text-retrieval", "audio-text-retrieval"]
    (d / "devices.json").write_text(json.dumps({"devices": [{"name": n, "memory_gb": 0.0005} for n in "abc"],
                                                "default_link": {"mbit": 100}}))
    (d / "tasks.json").write_text(json.dumps({"models": models, "size": "tiny"}))
    place(["--devices", str(d / "devices.json"), "--tasks", str(d / "tasks.json"), "--json", str(d / "plan.json")])
    (d / "requests.jsonl").write_text("".join(json.dumps({"id": i, "model": models[i % len(models)], "seed": i}) + "\n"
                                              for i in range(400)))
    return ["-m", "prism_ops.cli.s2m3_serve", "--plan", str(d / "plan.json"), "--requests", str(d / "requests.jsonl")]


def command(program: str, d: Path, extra_args=()) -> list[str]:
    if program == "serve":
        return [sys.executable, *_serve_files(d), *extra_args]
    args = [str(BIN / "prism-run"), "--input-file", str(SAMPLE), *extra_args]
    if program == "smollm2":
        return args + ["--model", "smollm2", "--generate", "64"]
    return args + ["--model", "minilm"]


def _phase_pids(log_dir: Path) -> dict[int, list[tuple[int, str]]]:
    """rank -> [(pid, phase), ...] as traced so far."""
    out = {}
    for f in log_dir.glob("rank*.log"):
        rows = [line.split(None, 1) for line in f.read_text().splitlines() if line.strip()]
        out[int(f.stem[4:])] = [(int(p), ph.strip()) for p, ph in rows]
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_case(case: Case, limit_s: float = 60.0, start_s: float = 180.0, extra_args=()) -> Outcome:
    """Run one case; never leaves a process behind (the job's process group is killed at the end).
    extra_args go to the program (e.g. a shorter --timeout for quick checks)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        log = d / "phases"
        log.mkdir()
        env = with_hooks(dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                              PRISM_PHASE_LOG=str(log)))
        if case.phase in HOLD_S:
            env["PRISM_PHASE_HOLD"] = f"{case.phase}:{HOLD_S[case.phase]}"
        cmd = [str(BIN / "mpiexec"), "-n", str(RANKS), *command(case.program, d, extra_args)]
        err_path = d / "stderr"
        with open(err_path, "w") as err, open(d / "stdout", "w") as out:
            p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                 start_new_session=True)
            victim = VICTIMS[case.victim]
            t_start, pid, reached = time.monotonic(), None, False
            while time.monotonic() - t_start < start_s and p.poll() is None:
                pids = _phase_pids(log)
                hit = [q for q, ph in pids.get(victim, []) if ph.startswith(case.phase)]
                if hit:
                    pid, reached = hit[0], True
                    break
                time.sleep(0.01)
            t_sig = time.monotonic()
            if reached:
                os.kill(pid, SIGNALS[case.signal])
            code = None
            try:
                code = p.wait(timeout=limit_s)
            except subprocess.TimeoutExpired:
                pass
            seconds = time.monotonic() - t_sig
            time.sleep(0.5)  # let mpiexec's own clean-up finish before looking for survivors
            every = {q for rows in _phase_pids(log).values() for q, _ in rows}
            left = sorted(q for q in every if _alive(q))
            for q in left + [p.pid]:
                for s in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.kill(q, s)
                    except OSError:
                        pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()
        # What the job printed: rank 0's message on stderr; MPICH's launcher reports a process it
        # saw die, by its pid ("BAD TERMINATION ... PID 123 ... Killed (signal 9)"), on stdout.
        stderr = err_path.read_text(errors="replace")
        stdout = (d / "stdout").read_text(errors="replace")
        said = stderr + stdout[-4000:]
        return Outcome(case, reached, code, seconds, named_of(case, reached, said), left, said)


def named_of(case: Case, reached: bool, said: str) -> bool | None:
    """Whether rank 0 named the victim; None where rank 0 could not: it was the victim of a
    fatal signal, or the launcher ended the job (it kills every rank at once when one dies, and
    reports a pid it saw end, not always the victim's)."""
    if not reached or (case.victim == "0" and case.signal in ("KILL", "TERM", "STOP")):
        return None
    if "BAD TERMINATION" in said and f"rank {VICTIMS[case.victim]}" not in said:
        return None
    return f"rank {VICTIMS[case.victim]}" in said


def cases(programs, signals, victims, phases) -> list[Case]:
    return [Case(p, s, v, ph) for p in programs for ph in PHASES[p] if ph in phases
            for s in signals for v in victims]


def table(outcomes: list[Outcome]) -> str:
    rows = ["| program | phase | signal | rank | exit | seconds | rank 0 names it | left | ok |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for o in outcomes:
        c = o.case
        named = {None: "n/a", True: "yes", False: "no"}[o.named]
        rows.append(f"| {c.program} | {c.phase} | {c.signal} | {c.victim} | "
                    f"{'-' if o.exit_code is None else o.exit_code} | {o.seconds:.1f} | {named} | "
                    f"{len(o.left)} | {'yes' if o.ok else 'NO' + ('' if o.reached else ' (phase not reached)')} |")
    return "\n".join(rows)


# -- faults on real links --------------------------------------------------------------------

LINK_FAULTS = ("down", "flap", "slow")
DOWN_S, FLAP_S, SLOW_MBIT = 60.0, 5.0, 1.0
HOSTS = 2
LINK_PHASES = {"minilm": ("prefill",), "smollm2": ("prefill", "generation"), "tiny": ("prefill", "generation"),
               "serve": ("serving",), "serve-tiny": ("serving",)}
TRACED = {"prefill": "forward", "generation": "generation", "serving": "generation"}  # the phase names ranks trace
TINY_DECODE_S = 0.5  # seconds per token for the tiny model (PRISM_TEST_DECODE_SLEEP_S): a generation lasts
PORT = 8000


@dataclass
class LinkCase:
    program: str
    phase: str
    fault: str


@dataclass
class LinkOutcome:
    case: LinkCase
    timeout: float
    reached: bool
    exit_code: int | None  # None: still running at the limit (then killed)
    seconds: float  # from the fault to mpiexec's end
    host_ends: list  # per host: seconds from the fault until no process was left there (None: never)
    left: list[int]  # pids still alive in the hosts after the job ended
    same: bool | None  # the answer equals the unfaulted run's (None: no answer)
    codes: list = field(default_factory=list)  # HTTP status of the service's clients
    said: str = ""

    @property
    def limit_s(self) -> float:
        return self.timeout + 10.0

    @property
    def ended_in_time(self) -> bool:
        return (self.exit_code not in (None, 0) and self.seconds <= self.limit_s
                and all(e is not None and e <= self.limit_s for e in self.host_ends))

    @property
    def ok(self) -> bool:
        if not self.reached or self.left:
            return False
        service = self.case.program.startswith("serve")
        if self.case.fault == "down":
            return self.ended_in_time and (not service or (bool(self.codes) and set(self.codes) == {503}))
        went_on = self.same is True and (self.exit_code == 0 or service)
        if self.case.fault == "flap":
            return went_on
        return went_on or (self.ended_in_time and (not service or set(self.codes) <= {200, 503}))


def _tiny_folder(d: Path) -> Path:
    from tiny_model import write_tiny_gpt2

    return write_tiny_gpt2(d / "tiny")


def _link_job(program: str, d: Path, timeout: float, host_ip: str) -> tuple[list[str], dict, dict]:
    """(prism-run's arguments, extra environment, the service request or {})."""
    env = {}
    if program in ("tiny", "serve-tiny"):
        model, text, n = str(_tiny_folder(d)), " ".join(f"w{i}" for i in range(40)), 20
        env["PRISM_TEST_DECODE_SLEEP_S"] = str(TINY_DECODE_S)
    elif program == "minilm":
        model, text, n = "minilm", " ".join((SAMPLE.read_text().split() * 8)[:380]), 0
    else:
        model, text, n = "smollm2", SAMPLE.read_text(), 2000
    (d / "input.txt").write_text(text)
    args = ["--model", model, "--timeout", f"{timeout:g}"]
    if program.startswith("serve"):
        n = min(n, 200)
        args += ["--serve", "--host", host_ip, "--port", str(PORT)]
        return args, env, {"model": model, "prompt": text, "max_tokens": n, "temperature": 0}
    args += ["--input-file", str(d / "input.txt"), "--json"]
    if n:
        args += ["--generate", str(n)]
    return args, env, {}


def _answer(stdout: str):
    """The output of prism-run --json's last line (None if there is none)."""
    try:
        return json.loads(stdout.strip().splitlines()[-1])["output"]
    except (ValueError, IndexError, KeyError):
        return None


def _same(a, b) -> bool:
    """Equal answers: the same tokens, or embeddings within the fp32 budget of 6 layers."""
    if a is None or b is None:
        return False
    if isinstance(a, dict):
        return a["token_ids"] == b["token_ids"]
    return max(abs(x - y) for x, y in zip(a, b)) <= 1e-5 * max(1.0, max(abs(x) for x in b)) * 6


def _post(url: str, body: dict, out: list) -> None:
    import httpx

    try:
        r = httpx.post(url, json=body, timeout=600)
        out.append((r.status_code, r.json() if r.headers.get("content-type", "").startswith("application/json")
                    else r.text))
    except httpx.HTTPError as e:
        out.append((None, str(e)))


def _wait_phase(log: Path, rank: int, prefix: str, after: int, p, limit_s: float) -> bool:
    """Wait until rank has entered a phase starting with prefix more than `after` times."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s and p.poll() is None:
        if sum(ph.startswith(prefix) for _, ph in _phase_pids(log).get(rank, [])) > after:
            return True
        time.sleep(0.02)
    return False


def run_link_case(case: LinkCase, timeout: float = 30.0, start_s: float = 300.0, refs: dict | None = None) -> LinkOutcome:
    """One link fault on 2 test hosts; removes the hosts and everything in them at the end.
    refs caches the unfaulted answers per program (a service answers its own first)."""
    refs = {} if refs is None else refs
    service = case.program.startswith("serve")
    victim = HOSTS - 1  # the last rank's host: it decodes
    with tempfile.TemporaryDirectory() as tmp, netns_hosts.Hosts(HOSTS) as hosts:
        d = Path(tmp)
        log = d / "phases"
        log.mkdir()
        args, extra, request = _link_job(case.program, d, timeout, hosts.ips[0])
        env = hosts.env(with_hooks(dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                                        TOKENIZERS_PARALLELISM="false", PRISM_PHASE_LOG=str(log), **extra)))
        cmd = hosts.mpiexec([str(BIN / "prism-run"), *args])
        if not service and case.fault != "down" and case.program not in refs:
            ref = hosts.run([str(BIN / "prism-run"), *args], timeout=start_s,
                            env={k: v for k, v in env.items() if k != "PRISM_PHASE_LOG"})
            refs[case.program] = _answer(ref.stdout)
        if case.phase == "prefill":
            env["PRISM_PHASE_HOLD"] = "forward:3"
        out_f, err_f = open(d / "stdout", "w"), open(d / "stderr", "w")
        p = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, stdin=subprocess.DEVNULL, env=env,
                             start_new_session=True)
        replies, threads, reached, same = [], [], False, None
        url = f"http://{hosts.ips[0]}:{PORT}/v1/completions"
        try:
            seen = 0
            if service:
                if _wait_phase(log, 0, "serving", 0, p, start_s):
                    first = []
                    _post(url, request, first)  # the unfaulted answer, from the same service
                    refs[case.program] = first[0][1]["choices"][0]["text"] if first and first[0][0] == 200 else None
                    seen = sum(ph.startswith("generation") for _, ph in _phase_pids(log).get(victim, []))
                    threads = [threading.Thread(target=_post, args=(url, request, replies))]
                    threads[0].start()
            reached = _wait_phase(log, victim, TRACED[case.phase], seen, p, start_s)
            if reached and case.phase == "generation":
                time.sleep(1.0)  # a few tokens in
            t_fault = time.monotonic()
            if reached:
                if case.fault == "slow":
                    hosts.set_rate(victim, SLOW_MBIT)
                else:
                    hosts.link_down(victim)
            if reached and service:  # a second client, waiting in the queue
                threads.append(threading.Thread(target=_post, args=(url, request, replies)))
                threads[-1].start()
            ends = [None] * HOSTS
            code, end_s = None, None
            restored = False
            horizon = max(DOWN_S, timeout + 10.0) + 5.0 if case.fault == "down" else start_s
            while time.monotonic() - t_fault < horizon:
                now = time.monotonic() - t_fault
                if case.fault == "flap" and not restored and now >= FLAP_S:
                    hosts.link_up(victim)
                    restored = True
                for i, ns in enumerate(hosts.namespaces):
                    if ends[i] is None and not netns_hosts._ip("netns", "pids", ns, check=False).stdout.split():
                        ends[i] = now
                if code is None and p.poll() is not None:
                    code, end_s = p.returncode, now
                if service and case.fault != "down" and len(replies) == len(threads) and code is None:
                    for t in threads:
                        t.join()
                    p.send_signal(signal.SIGINT)  # answered: stop the service
                if code is not None and all(e is not None for e in ends):
                    break
                time.sleep(0.1)
            for t in threads:
                t.join(timeout=5)
            left = hosts.pids()
        finally:
            hosts.kill(p)
            p.wait()
            out_f.close()
            err_f.close()
        said = (d / "stderr").read_text(errors="replace") + (d / "stdout").read_text(errors="replace")[-4000:]
        if service:
            codes = [c for c, _ in replies]
            texts = [b["choices"][0]["text"] for c, b in replies if c == 200]
            same = bool(texts) and all(t == refs.get(case.program) for t in texts) if case.fault != "down" else None
        else:
            codes = []
            if case.fault != "down":
                same = _same(_answer((d / "stdout").read_text(errors="replace")), refs.get(case.program))
        return LinkOutcome(case, timeout, reached, code, end_s if end_s is not None else float("inf"), ends, left,
                           same, codes, said)


def link_cases(programs, faults, phases) -> list[LinkCase]:
    return [LinkCase(p, ph, f) for p in programs for ph in LINK_PHASES[p] if ph in phases for f in faults]


def link_table(outcomes: list[LinkOutcome]) -> str:
    rows = ["| program | phase | link | timeout (s) | exit | job ends (s) | hosts empty (s) | clients | answer as unfaulted | left | ok |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for o in outcomes:
        c = o.case
        ends = ", ".join("-" if e is None else f"{e:.1f}" for e in o.host_ends)
        rows.append(f"| {c.program} | {c.phase} | {c.fault} | {o.timeout:g} | "
                    f"{'-' if o.exit_code is None else o.exit_code} | {o.seconds:.1f} | {ends} | "
                    f"{','.join(map(str, o.codes)) or '-'} | {({None: 'n/a', True: 'yes', False: 'no'})[o.same]} | "
                    f"{len(o.left)} | {'yes' if o.ok else 'NO' + ('' if o.reached else ' (phase not reached)')} |")
    return "\n".join(rows)


def links_main(args) -> int:
    why = netns_hosts.available()
    if why:
        print(f"fault_matrix --links: {why}", file=sys.stderr)
        return 2
    netns_hosts.exit_on_signals()  # a stopped run still removes its test hosts
    timeout = 30.0 if args.timeout is None else args.timeout
    todo = link_cases(args.programs.split(","), args.faults.split(","),
                      (args.phases or "prefill,generation,serving").split(","))
    outcomes, refs = [], {}
    for i, c in enumerate(todo, 1):
        o = run_link_case(c, timeout, start_s=args.start_s, refs=refs)
        outcomes.append(o)
        print(f"[{i}/{len(todo)}] {c.program} {c.phase} link {c.fault}: exit {o.exit_code} in {o.seconds:.1f} s, "
              f"hosts empty {o.host_ends}, {'ok' if o.ok else 'FAILED'}", file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps([{**vars(o.case), "timeout": o.timeout, "reached": o.reached,
                                                    "exit_code": o.exit_code, "seconds": o.seconds,
                                                    "host_ends": o.host_ends, "left": o.left, "same": o.same,
                                                    "codes": o.codes, "ok": o.ok, "said_tail": o.said[-2000:]}
                                                   for o in outcomes], indent=1, default=str))
    print(link_table(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--supervised" in argv:  # the supervised service's faults on 3 test hosts (its own driver)
        import supervised_faults
        return supervised_faults.main([a for a in argv if a != "--supervised"])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", default="minilm,smollm2,serve")
    ap.add_argument("--signals", default=",".join(SIGNALS))
    ap.add_argument("--victims", default=",".join(VICTIMS))
    ap.add_argument("--phases", help="default: loading,handshake,forward,generation,serving "
                                     "(with --links: prefill,generation,serving)")
    ap.add_argument("--links", action="store_true",
                    help="faults on real links between 2 test hosts (tools/netns_hosts.py; needs root)")
    ap.add_argument("--faults", default=",".join(LINK_FAULTS), help="with --links: down, flap, slow")
    ap.add_argument("--start-s", type=float, default=300.0, help="with --links: longest wait for the phase")
    ap.add_argument("--limit-s", type=float, default=60.0, help="longest a job may take to end after the signal")
    ap.add_argument("--timeout", type=float, help="pass --timeout (silence, s) to the programs; default: theirs (30 s)")
    ap.add_argument("--json", help="also write every outcome (with stderr tails) to this file")
    ap.add_argument("--table-from", metavar="JSON", help="print the table of an earlier run's --json and stop")
    ap.add_argument("--supervised", action="store_true", help="the supervised service's faults (see above)")
    args = ap.parse_args(argv)
    if args.links:
        return links_main(args)
    args.phases = args.phases or "loading,handshake,forward,generation,serving"
    if args.table_from:
        rows = json.loads(Path(args.table_from).read_text())
        outcomes = []
        for r in rows:
            c = Case(r["program"], r["signal"], r["victim"], r["phase"])
            outcomes.append(Outcome(c, r["reached"], r["exit_code"], r["seconds"],
                                    named_of(c, r["reached"], r["stderr_tail"]), r["left"], r["stderr_tail"]))
        print(table(outcomes))
        return 0 if all(o.ok for o in outcomes) else 1
    todo = cases(args.programs.split(","), args.signals.split(","), args.victims.split(","), args.phases.split(","))
    outcomes = []
    for i, c in enumerate(todo, 1):
        o = run_case(c, args.limit_s, extra_args=[] if args.timeout is None else ["--timeout", f"{args.timeout:g}"])
        outcomes.append(o)
        print(f"[{i}/{len(todo)}] {c.program} {c.phase} {c.signal} rank {c.victim}: exit {o.exit_code} "
              f"in {o.seconds:.1f} s, {'ok' if o.ok else 'FAILED'}", file=sys.stderr, flush=True)
        if args.json:  # after every case, so an interrupted run keeps what it measured
            Path(args.json).write_text(json.dumps([{**vars(o.case), "reached": o.reached, "exit_code": o.exit_code,
                                                    "seconds": o.seconds, "named": o.named, "left": o.left,
                                                    "ok": o.ok, "stderr_tail": o.stderr[-2000:]} for o in outcomes],
                                                  indent=1))
    print(table(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
