"""The supervised front end against the service inside MPI: batched embeddings at 1, 4 and 16 clients.

    .venv-test/bin/python bench/bench_supervised.py [--requests 1600] [--rounds 3] [--json bench/out/bench_supervised.json]
    .venv-test/bin/python bench/bench_supervised.py --crossover    # one client, one text of 11 to 446 tokens

As root (test hosts). The services run on the same 2 test hosts (`tools/netns_hosts.py`, links
unshaped, MPICH over TCP), MiniLM on 2 ranks, batching on (`--batch-tokens 8192`):
- inside MPI: `mpiexec ... prism-run --serve`, HTTP, checks, tokenizing and JSON on rank 0;
- supervised: `prism-run --serve --hosts H0,H1`, all of that in the front end, rank 0 gets token
  ids and sends float32 vectors back;
- supervised, split: the same with `--split-min-tokens 0`, every text split over the 2 ranks (as
  before texts under 128 tokens, all of these, ran whole on one rank each).
They take turns row by row (1, 4, 16 clients; `bench_serve.load`: each client one request after
another on a connection it opened before the clock started, short texts of 5 to 21 tokens), so
a busy spell of the machine falls on all alike, and the whole set runs `--rounds` times.
The figures that matter, each the median of the rounds' own: the front end's req/s at 16 clients
over its own at 1 client in the same round (target >= 4x), and its p95 at 1 client over the
service inside MPI's (target: no worse). A second table
gives each row's CPU time per request by process group (ranks, front end, the client threads
here, launcher), read from /proc: where the 2 cores go; and, for the service inside MPI, whose
/health counts its forwards, the texts a forward held (a round of whole texts on every rank is
one). The requests ask for base64 vectors, as the official openai client does by default.

--crossover: the supervised service with every text split against every text whole, one client,
one text at a time, median latency per text length: where splitting a text starts to pay
(`--split-min-tokens`'s default).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from bench_serve import BIN, ENV, SHORT, cpu_s, load, pct  # noqa: E402
import netns_hosts  # noqa: E402

PORTS = {"mpi": 8041, "frontend": 8042, "frontend-split": 8043}
LABEL = {"mpi": "inside MPI", "frontend": "supervised", "frontend-split": "supervised, every text split"}


def _wait(url: str, proc) -> float:
    t0 = time.perf_counter()
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with code {proc.returncode}")
        time.sleep(0.3)


def start(hosts, kind: str, port: int | None = None, *extra):
    """(process, url) of one service on the test hosts (kind "frontend-split": every text split)."""
    port = port or PORTS[kind]
    common = ["--serve", "--model", "minilm", "--threads", "1", "--port", str(port), *extra]
    if kind == "frontend-split":
        common += ["--split-min-tokens", "0"]
    if kind == "mpi":
        cmd = hosts.mpiexec([str(BIN / "prism-run"), *common, "--host", hosts.ips[0]])
        url = f"http://{hosts.ips[0]}:{port}"
    else:
        launcher = f"-launcher ssh -launcher-exec {hosts.launcher} -localhost {hosts.own_ip}"
        cmd = [str(BIN / "prism-run"), *common, "--hosts", ",".join(hosts.ips), "--mpiexec-args", launcher,
               "--host", hosts.own_ip]
        url = f"http://{hosts.own_ip}:{port}"
    proc = subprocess.Popen(cmd, env=hosts.env(ENV), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    _wait(url, proc)
    return proc, url


def _tree(root: int) -> dict:
    """pid -> "ranks", "front end" or "launcher" for root's process and all below it (the ranks run
    under mpiexec and the hosts' launcher; the front end's service is root itself)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                pass
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        out[pid] = "ranks" if b"--serve" in cmd and pid != root else ("front end" if pid == root else "launcher")
        todo += [c for c, pp in parent.items() if pp == pid]
    if not any(k == "ranks" for k in out.values()):  # inside MPI: mpiexec is root, rank 0 serves
        out = {pid: "ranks" if k == "ranks" else "launcher" for pid, k in out.items()}
    return out


def _cpu(pids: dict) -> dict:
    """CPU seconds so far per group of _tree, and this process's (the client threads)."""
    out = {}
    for pid, group in pids.items():
        try:
            out[group] = out.get(group, 0.0) + cpu_s(pid)
        except OSError:  # ended
            pass
    t = os.times()
    out["clients"] = t.user + t.system
    return out


def _forwards(url: str):
    """The forwards the service has run (/health; the front end's does not count rank 0's: None)."""
    return httpx.get(url + "/health", timeout=10).json().get("forwards")


def _stop(services: dict) -> None:
    for proc, _ in services.values():
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def throughput(hosts, requests: int, rounds: int) -> dict:
    """Every service at 1, 4 and 16 clients, taking turns row by row, `rounds` times over."""
    # base64: what the official openai client asks for when the caller names no encoding_format
    bodies = [{"input": t, "encoding_format": "base64"} for t in SHORT]
    rows, services = [], {}
    try:
        for kind in PORTS:
            services[kind] = start(hosts, kind)
            load(services[kind][1], "/v1/embeddings", bodies, 64, 4)  # warm-up
        for rnd in range(rounds):
            for clients in (1, 4, 16):
                for kind, (_, url) in services.items():
                    n = requests if clients > 1 else max(8, requests // 4)
                    pids = _tree(services[kind][0].pid)
                    f0 = _forwards(url)
                    at = {}  # the CPU times as the clock starts: the clients' set-up is not counted
                    lat, wall = load(url, "/v1/embeddings", bodies, n, clients,
                                     lambda pids=pids, at=at: at.update(cpu=_cpu(pids)))
                    c0 = at["cpu"]
                    c1 = _cpu(pids)
                    f1 = _forwards(url)
                    cpu_ms = {k: 1000 * (c1[k] - c0[k]) / len(lat) for k in c1 if k in c0}
                    rows.append(dict(round=rnd, service=kind, clients=clients, requests=len(lat), rps=len(lat) / wall,
                                     p50_s=pct(lat, 0.5), p95_s=pct(lat, 0.95), cpu_ms_per_request=cpu_ms,
                                     texts_per_forward=None if f0 is None else len(lat) / max(1, f1 - f0)))
                    r = rows[-1]
                    print(f"round {rnd + 1}: {kind} clients={clients}: {r['rps']:.2f} req/s, p50 {r['p50_s']:.3f} s, "
                          f"p95 {r['p95_s']:.3f} s", flush=True)
    finally:
        _stop(services)
    by = {(r["round"], r["service"], r["clients"]): r for r in rows}
    print("\n| round | clients | " + " | ".join(f"{LABEL[k]}: req/s | p50 (s) | p95 (s)" for k in PORTS) + " |")
    print("| --- | --- |" + " --- | --- | --- |" * len(PORTS))
    for rnd in range(rounds):
        for c in (1, 4, 16):
            print(f"| {rnd + 1} | {c} | " + " | ".join(
                f"{by[(rnd, k, c)]['rps']:.2f} | {by[(rnd, k, c)]['p50_s']:.3f} | {by[(rnd, k, c)]['p95_s']:.3f}"
                for k in PORTS) + " |")
    groups = ("ranks", "front end", "clients", "launcher")
    print("\nCPU ms per request (2 cores: at most 2000 ms of CPU per second of wall time), and texts a forward "
          "(inside MPI: its /health counts the forwards)\n\n| round | service | clients | "
          + " | ".join(groups) + " | all | texts a forward |\n| --- | --- | --- |" + " --- |" * (len(groups) + 2))
    for r in rows:
        cpu, per = r["cpu_ms_per_request"], r["texts_per_forward"]
        print(f"| {r['round'] + 1} | {LABEL[r['service']]} | {r['clients']} | "
              + " | ".join(f"{cpu.get(g, 0.0):.2f}" for g in groups)
              + f" | {sum(cpu.values()):.2f} | {'-' if per is None else f'{per:.1f}'} |")
    # Each round's ratios come from rows run minutes apart at most; the median over rounds is the figure.
    gains = [{k: by[(rnd, k, 16)]["rps"] / by[(rnd, k, 1)]["rps"] for k in PORTS} for rnd in range(rounds)]
    p95s = [{k: by[(rnd, "frontend", 1)]["p95_s"] / by[(rnd, k, 1)]["p95_s"] for k in ("mpi", "frontend-split")}
            for rnd in range(rounds)]
    gain = {k: statistics.median(g[k] for g in gains) for k in PORTS}
    p95 = {k: statistics.median(p[k] for p in p95s) for k in ("mpi", "frontend-split")}
    print("\n16 clients over 1, each round: supervised " + ", ".join(f"{g['frontend']:.2f}x" for g in gains)
          + "; inside MPI " + ", ".join(f"{g['mpi']:.2f}x" for g in gains))
    print(f"median of {rounds} rounds: 16 clients over 1: supervised {gain['frontend']:.2f}x (target >= 4x), inside MPI "
          f"{gain['mpi']:.2f}x, every text split {gain['frontend-split']:.2f}x; p95 at 1 client, supervised over "
          f"inside MPI {p95['mpi']:.2f}x, over every text split {p95['frontend-split']:.2f}x (target <= 1x)")
    return {"rows": rows, "gain_16_over_1_by_round": gains, "gain_16_over_1": gain,
            "p95_ratio_1_client_by_round": p95s, "p95_ratio_1_client": p95}


def crossover(hosts, repeats: int = 12) -> dict:
    """One client, one text at a time: median latency with every text split against every text
    whole, per length (MiniLM takes 512 tokens, so --split-min-tokens 513 runs all whole)."""
    words = ("edge devices share one transformer and each sends only compact summaries of its keys and values "
             "to the others " * 40).split()
    services = {}
    rows = []
    try:
        services["split"] = start(hosts, "frontend-split")
        services["whole"] = start(hosts, "frontend", None, "--split-min-tokens", "513")
        with httpx.Client(timeout=60) as c:
            for n in (8, 16, 32, 64, 96, 128, 192, 256, 384):
                body = {"input": " ".join(words[:n])}
                for _, url in services.values():  # warm-up
                    for _ in range(3):
                        c.post(url + "/v1/embeddings", json=body).raise_for_status()
                lat = {k: [] for k in services}
                for _ in range(repeats):  # taking turns
                    for k, (_, url) in services.items():
                        t = time.perf_counter()
                        r = c.post(url + "/v1/embeddings", json=body)
                        r.raise_for_status()
                        lat[k].append(time.perf_counter() - t)
                row = dict(tokens=r.json()["usage"]["prompt_tokens"], split_s=pct(lat["split"], 0.5),
                           whole_s=pct(lat["whole"], 0.5))
                rows.append(row)
                print(f"{row['tokens']} tokens: split {1000 * row['split_s']:.1f} ms, whole {1000 * row['whole_s']:.1f} "
                      f"ms, whole / split {row['whole_s'] / row['split_s']:.2f}", flush=True)
    finally:
        _stop(services)
    print("\n| tokens | every text split (ms) | whole on one rank (ms) | whole / split |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['tokens']} | {1000 * r['split_s']:.1f} | {1000 * r['whole_s']:.1f} | {r['whole_s'] / r['split_s']:.2f} |")
    return {"crossover": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1600, help="requests per row at 4 and 16 clients (a quarter at 1)")
    ap.add_argument("--rounds", type=int, default=3, help="times over every row; the ratios are the rounds' median")
    ap.add_argument("--crossover", action="store_true", help="one client: split against whole per text length")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    if args.rounds < 1 or args.requests < 16:
        ap.error(f"--rounds must be at least 1 and --requests at least 16, got {args.rounds} and {args.requests}")
    why = netns_hosts.available()
    if why:
        print(f"bench_supervised: {why}", file=sys.stderr)
        return 2
    netns_hosts.exit_on_signals()
    with netns_hosts.Hosts(2) as hosts:
        out = crossover(hosts) if args.crossover else throughput(hosts, args.requests, args.rounds)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
