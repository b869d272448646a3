"""The fault matrix: signal one rank of a real mpiexec job at one phase and check the job ends.

    python tools/fault_matrix.py                      # the full matrix, a markdown table on stdout
    python tools/fault_matrix.py --programs minilm --signals STOP --victims last --phases forward

Programs (3 ranks): `minilm` (prism-run on all-MiniLM-L6-v2), `smollm2` (prism-run on
SmolLM2-135M, generating), `serve` (prism-serve on a plan spread over the 3 ranks). Signals:
KILL, TERM, INT, STOP. Victims: rank 0, a middle rank, the last rank. Phases: the names the
ranks trace (`prism_ops.distributed.phases`): loading, handshake, forward, generation, serving.

Each rank appends `pid phase` lines to `$PRISM_PHASE_LOG/rank<R>.log` when it enters a phase;
the driver waits for the victim to enter the phase, signals it, and then requires, with default
settings: a non-zero exit within `--limit-s` (60 s), no process of the job left alive, and rank
0's message naming the victim where rank 0 is still alive (when a rank dies, MPICH's launcher
ends every rank at once and prints its own report: then no rank can speak). Short phases (the handshake) are held
open for a moment with `PRISM_PHASE_HOLD=phase:seconds`, a test hook, so the signal lands
inside them. The table goes into docs/RESULTS.md; tests/test_fault_matrix.py runs a subset.
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
from dataclasses import dataclass
from pathlib import Path

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
    from prism_ops.cli.place import main as place

    models = ["cifar10-vits16", "sentiment-minilm", "image-text-retrieval", "audio-text-retrieval"]
    (d / "devices.json").write_text(json.dumps({"devices": [{"name": n, "memory_gb": 0.0005} for n in "abc"],
                                                "default_link": {"mbit": 100}}))
    (d / "tasks.json").write_text(json.dumps({"models": models, "size": "tiny"}))
    place(["--devices", str(d / "devices.json"), "--tasks", str(d / "tasks.json"), "--json", str(d / "plan.json")])
    (d / "requests.jsonl").write_text("".join(json.dumps({"id": i, "model": models[i % len(models)], "seed": i}) + "\n"
                                              for i in range(400)))
    return ["-m", "prism_ops.cli.serve", "--plan", str(d / "plan.json"), "--requests", str(d / "requests.jsonl")]


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
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   PRISM_PHASE_LOG=str(log))
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", default="minilm,smollm2,serve")
    ap.add_argument("--signals", default=",".join(SIGNALS))
    ap.add_argument("--victims", default=",".join(VICTIMS))
    ap.add_argument("--phases", default="loading,handshake,forward,generation,serving")
    ap.add_argument("--limit-s", type=float, default=60.0, help="longest a job may take to end after the signal")
    ap.add_argument("--timeout", type=float, help="pass --timeout (silence, s) to the programs; default: theirs (30 s)")
    ap.add_argument("--json", help="also write every outcome (with stderr tails) to this file")
    ap.add_argument("--table-from", metavar="JSON", help="print the table of an earlier run's --json and stop")
    args = ap.parse_args(argv)
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
