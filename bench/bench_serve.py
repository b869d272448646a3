"""The service against one mpirun per request: requests per second and p50/p95 latency.

    .venv-test/bin/python bench/bench_serve.py [--json bench/out/bench_serve.json]
    .venv-test/bin/python bench/bench_serve.py --batching [--json bench/out/bench_batching.json]

For MiniLM on 4 ranks (embeddings of one sentence) and SmolLM2 on 2 ranks (8 greedy tokens), in
the same run:
- one-shot: `mpiexec -n R prism-run --json ...` per request, timed end to end (start-up, model
  load, handshake, the request), `--oneshot` times;
- service: `mpiexec -n R prism-run --serve`, started once (its load time reported apart), then
  `--requests` requests from `--clients` concurrent HTTP clients (httpx), after 2 warm-up ones.
Run it on a quiet machine: the ranks and the clients share its cores. Every service here splits
every text over its ranks (`--split-min-tokens 0`), as these figures were first taken: the
service's default runs short texts whole on one rank (bench_supervised.py measures that).

--batching: MiniLM on 2 ranks, short texts (<= 32 tokens, of different lengths), one service
with batching (`--batch-tokens 8192`, the default) and one without (`--batch-tokens 0`, one text
per forward, as before batching), in the same run: req/s and p50/p95 latency at 1, 4 and 16
concurrent clients. The figures that matter are the ratios within the run. Each row also gives
the CPU the ranks and this process (the clients) used during it, as shares of one core (from
/proc), which says whether the machine's cores were full.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec") if (BIN / "mpiexec").exists() else shutil.which("mpiexec")
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
TEXT = "Edge devices share one transformer, and each sends only compact summaries to the others."
PROMPT = "The capital of France is"
CASES = [  # (model, ranks, one-shot arguments, endpoint, request body)
    ("minilm", 4, ["--input", TEXT], "/v1/embeddings", {"input": TEXT}),
    ("smollm2", 2, ["--input", PROMPT, "--generate", "8"], "/v1/completions",
     {"prompt": PROMPT, "max_tokens": 8, "temperature": 0}),
]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def oneshot(model, ranks, args, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        p = subprocess.run([MPIEXEC, "-n", str(ranks), str(BIN / "prism-run"), "--model", model, "--threads", "1",
                            "--json", *args], capture_output=True, text=True, env=ENV, timeout=600)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        out.append(time.perf_counter() - t0)
    return out


def start(model, ranks, *extra):
    """A running service: (process, url, seconds until /health answered)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    proc = subprocess.Popen([MPIEXEC, "-n", str(ranks), str(BIN / "prism-run"), "--serve", "--split-min-tokens", "0",
                             "--model", model, "--port", str(port), "--threads", "1", *extra], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read()[-2000:]) from None
            time.sleep(0.5)
    return proc, url, time.perf_counter() - t0


def rank_pids(port) -> list[int]:
    """The service's rank processes (their command lines name its port), in pid order."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:  # the process has ended
            continue
        if b"python" in cmd[0] and b"--serve" in cmd and str(port).encode() in cmd:
            out.append(int(d.name))
    return sorted(out)


def cpu_s(pid) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(url, endpoint, bodies, n, clients, on_start=None):
    """n requests (bodies in turn) from `clients` concurrent clients: (latencies, wall seconds).

    Each client is a thread with its own connection, made and opened (GET /v1/models) before the
    clock starts, as a load generator does: an httpx.Client costs about 20 ms of CPU to make (its
    TLS context), which, counted in the row, took 16 clients' share of the 2 cores from the
    service. on_start(): called as the clock starts (a caller's own counters, read from there).
    A failed request fails the row.
    """
    lat, errors, lock = [], [], threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(c, ks):
        try:
            start.wait()
            for k in ks:
                t = time.perf_counter()
                c.post(url + endpoint, json=bodies[k % len(bodies)]).raise_for_status()
                with lock:
                    lat.append(time.perf_counter() - t)
        except Exception as e:  # noqa: BLE001  (any failure fails the row, below)
            errors.append(e)

    conns, threads = [], []
    try:
        for _ in range(clients):
            conns.append(httpx.Client(timeout=600))
            conns[-1].get(url + "/v1/models").raise_for_status()
        threads = [threading.Thread(target=client, args=(conns[i], range(i, n, clients)), daemon=True)
                   for i in range(clients)]
        for t in threads:
            t.start()
        start.wait()
        t1 = time.perf_counter()
        if on_start is not None:
            on_start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t1
    finally:
        start.abort()  # a client still at the barrier (the row failed before it) stops waiting
        for t in threads:
            t.join()
        for c in conns:
            c.close()
    if errors:
        raise RuntimeError(f"{len(errors)} of {clients} clients failed; the first: {errors[0]!r}")
    return lat, wall


SHORT = ["Edge devices share one transformer.", "Summaries cross the link.", "Hello there.",
         "Each rank owns a slice of the tokens and attends to the others' summaries.",
         "Batching keeps the ranks busy.", "A short query about the weather in Paris today?",
         "Sentence embeddings for retrieval.", "The quick brown fox jumps over the lazy dog."]


def batching(args):
    """Rows: (batching, clients) -> req/s, p50, p95, forwards. Both services run at once and take
    turns, row by row, so a busy spell of a shared machine falls on both alike."""
    rows, services = [], {}
    bodies = [{"input": t} for t in SHORT]
    try:
        for batch_tokens in (0, 8192):
            services[batch_tokens] = start("minilm", 2, "--batch-tokens", str(batch_tokens))
            load(services[batch_tokens][1], "/v1/embeddings", bodies, 8, 4)  # warm-up
        for clients in (1, 4, 16):
            for batch_tokens, (_, url, ready_s) in services.items():
                h0 = httpx.get(url + "/health", timeout=10).json()
                n = args.requests if clients > 1 else max(8, args.requests // 4)
                pids = rank_pids(url.rsplit(":", 1)[1])
                at = {}  # the CPU times as the clock starts: the clients' set-up is not counted
                lat, wall = load(url, "/v1/embeddings", bodies, n, clients,
                                 lambda pids=pids, at=at: at.update(c0=[cpu_s(p) for p in pids], m0=os.times()))
                c0, m0 = at["c0"], at["m0"]
                c1, m1 = [cpu_s(p) for p in pids], os.times()
                h1 = httpx.get(url + "/health", timeout=10).json()
                rows.append(dict(batching=bool(batch_tokens), batch_tokens=batch_tokens, clients=clients,
                                 requests=len(lat), rps=len(lat) / wall, p50_s=pct(lat, 0.5), p95_s=pct(lat, 0.95),
                                 forwards=h1["forwards"] - h0["forwards"], ready_s=ready_s,
                                 rank_cpu=[(b - a) / wall for a, b in zip(c0, c1)],
                                 client_cpu=(m1.user + m1.system - m0.user - m0.system) / wall))
                r = rows[-1]
                print(f"batching={r['batching']} clients={clients}: {r['rps']:.2f} req/s, p50 {r['p50_s']:.3f} s, "
                      f"p95 {r['p95_s']:.3f} s, {r['forwards']} forwards for {r['requests']} requests; CPU (cores): "
                      f"ranks {' '.join(f'{c:.2f}' for c in r['rank_cpu'])}, clients {r['client_cpu']:.2f}", flush=True)
    finally:
        for proc, _, _ in services.values():
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
    one = {r["clients"]: r for r in rows if not r["batching"]}
    print()
    print("| clients | one at a time: req/s | p50 (s) | p95 (s) | batched: req/s | p50 (s) | p95 (s) | forwards "
          "/ requests | req/s ratio | p95 ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in (r for r in rows if r["batching"]):
        o = one[r["clients"]]
        print(f"| {r['clients']} | {o['rps']:.2f} | {o['p50_s']:.3f} | {o['p95_s']:.3f} | {r['rps']:.2f} | "
              f"{r['p50_s']:.3f} | {r['p95_s']:.3f} | {r['forwards']} / {r['requests']} | "
              f"{r['rps'] / o['rps']:.2f}x | {r['p95_s'] / o['p95_s']:.2f}x |")
    return rows


def service(model, ranks, endpoint, body, n, clients):
    proc, url, ready_s = start(model, ranks)
    for _ in range(2):
        httpx.post(url + endpoint, json=body, timeout=600).raise_for_status()
    lat, wall = load(url, endpoint, [body], n, clients)
    health = httpx.get(url + "/health", timeout=10).json()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    return lat, wall, ready_s, health


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--oneshot", type=int, default=3, help="one-shot mpirun requests per model")
    ap.add_argument("--requests", type=int, default=40, help="service requests per model (SmolLM2: a quarter)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--batching", action="store_true",
                    help="the batching table instead (MiniLM, 2 ranks; --requests per row at 4 and 16 clients)")
    args = ap.parse_args()
    if args.batching:
        rows = batching(args)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return
    rows = []
    for model, ranks, oneshot_args, endpoint, body in CASES:
        n = args.requests if model == "minilm" else max(4, args.requests // 4)
        one = oneshot(model, ranks, oneshot_args, args.oneshot)
        lat, wall, ready_s, health = service(model, ranks, endpoint, body, n, args.clients)
        rows.append(dict(model=model, ranks=ranks, oneshot_s=one, oneshot_rps=len(one) / sum(one),
                         service_rps=len(lat) / wall, service_p50_s=pct(lat, 0.5), service_p95_s=pct(lat, 0.95),
                         oneshot_p50_s=pct(one, 0.5), oneshot_p95_s=pct(one, 0.95), service_ready_s=ready_s,
                         service_load_s=health["load_s"], requests=len(lat), clients=args.clients))
        r = rows[-1]
        print(f"{model} x{ranks}: one-shot {r['oneshot_rps']:.3f} req/s (p50 {r['oneshot_p50_s']:.2f} s); service "
              f"{r['service_rps']:.2f} req/s (p50 {r['service_p50_s']:.3f} s, p95 {r['service_p95_s']:.3f} s), "
              f"ready after {ready_s:.1f} s", flush=True)
    print()
    print("| model | ranks | one mpirun per request: req/s | p50 (s) | p95 (s) | service: req/s | p50 (s) | p95 (s) "
          "| service over one-shot | service start-up (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['ranks']} | {r['oneshot_rps']:.3f} | {r['oneshot_p50_s']:.2f} | "
              f"{r['oneshot_p95_s']:.2f} | {r['service_rps']:.2f} | {r['service_p50_s']:.3f} | "
              f"{r['service_p95_s']:.3f} | {r['service_rps'] / r['oneshot_rps']:.0f}x | {r['service_ready_s']:.1f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
