"""The supervised front end against the service inside MPI: batched embeddings at 1, 4 and 16 clients.

    .venv-test/bin/python bench/bench_supervised.py [--requests 320] [--json bench/out/bench_supervised.json]

As root (test hosts). Both services run on the same 2 test hosts (`tools/netns_hosts.py`, links
unshaped, MPICH over TCP), MiniLM on 2 ranks, batching on (`--batch-tokens 8192`):
- inside MPI: `mpiexec ... prism-run --serve`, HTTP, checks, tokenizing and JSON on rank 0;
- supervised: `prism-run --serve --hosts H0,H1`, all of that in the front end, rank 0 gets token
  ids and sends float32 vectors back.
They take turns row by row (1, 4, 16 clients; `bench_serve.load`: each client one request after
another, short texts of different lengths), so a busy spell of the machine falls on both alike.
The figures that matter: the front end's req/s at 16 clients over its own at 1 client (target
>= 4x), and its p95 at 1 client over the service inside MPI's (target: no worse).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from bench_serve import BIN, ENV, SHORT, load, pct  # noqa: E402
import netns_hosts  # noqa: E402

PORTS = {"mpi": 8041, "frontend": 8042}


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


def start(hosts, kind: str):
    """(process, url) of one service on the test hosts."""
    common = ["--serve", "--model", "minilm", "--threads", "1", "--port", str(PORTS[kind])]
    if kind == "mpi":
        cmd = hosts.mpiexec([str(BIN / "prism-run"), *common, "--host", hosts.ips[0]])
        url = f"http://{hosts.ips[0]}:{PORTS[kind]}"
    else:
        launcher = f"-launcher ssh -launcher-exec {hosts.launcher} -localhost {hosts.own_ip}"
        cmd = [str(BIN / "prism-run"), *common, "--hosts", ",".join(hosts.ips), "--mpiexec-args", launcher,
               "--host", hosts.own_ip]
        url = f"http://{hosts.own_ip}:{PORTS[kind]}"
    proc = subprocess.Popen(cmd, env=hosts.env(ENV), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    _wait(url, proc)
    return proc, url


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=320, help="requests per row at 4 and 16 clients (a quarter at 1)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    why = netns_hosts.available()
    if why:
        print(f"bench_supervised: {why}", file=sys.stderr)
        return 2
    netns_hosts.exit_on_signals()
    bodies = [{"input": t} for t in SHORT]
    rows = []
    with netns_hosts.Hosts(2) as hosts:
        services = {}
        try:
            for kind in PORTS:
                services[kind] = start(hosts, kind)
                load(services[kind][1], "/v1/embeddings", bodies, 16, 4)  # warm-up
            for clients in (1, 4, 16):
                for kind, (_, url) in services.items():
                    n = args.requests if clients > 1 else max(8, args.requests // 4)
                    lat, wall = load(url, "/v1/embeddings", bodies, n, clients)
                    rows.append(dict(service=kind, clients=clients, requests=len(lat), rps=len(lat) / wall,
                                     p50_s=pct(lat, 0.5), p95_s=pct(lat, 0.95)))
                    r = rows[-1]
                    print(f"{kind} clients={clients}: {r['rps']:.2f} req/s, p50 {r['p50_s']:.3f} s, "
                          f"p95 {r['p95_s']:.3f} s", flush=True)
        finally:
            for proc, _ in services.values():
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    by = {(r["service"], r["clients"]): r for r in rows}
    print("\n| clients | inside MPI: req/s | p50 (s) | p95 (s) | supervised: req/s | p50 (s) | p95 (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for c in (1, 4, 16):
        m, f = by[("mpi", c)], by[("frontend", c)]
        print(f"| {c} | {m['rps']:.2f} | {m['p50_s']:.3f} | {m['p95_s']:.3f} | {f['rps']:.2f} | {f['p50_s']:.3f} | "
              f"{f['p95_s']:.3f} |")
    gain = {k: by[(k, 16)]["rps"] / by[(k, 1)]["rps"] for k in PORTS}
    p95 = by[("frontend", 1)]["p95_s"] / by[("mpi", 1)]["p95_s"]
    print(f"\n16 clients over 1: supervised {gain['frontend']:.2f}x (target >= 4x), inside MPI {gain['mpi']:.2f}x; "
          f"p95 at 1 client, supervised over inside MPI: {p95:.2f}x (target <= 1x)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "gain_16_over_1": gain, "p95_ratio_1_client": p95},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
