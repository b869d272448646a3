"""Distributed speed-up on this machine: 2 MPI ranks x 1 thread against 1 process x 1 thread.

    mpiexec -n 2 python bench/bench_distributed.py            # N = 2048, prints the table
    mpiexec -n 2 python bench/bench_distributed.py --json docs/bench_distributed.json

Two stacks with random weights (timing only): MiniLM's shape (6 layers, d 384; its position
table stretched to 2048) and GPT-2 small's (12 layers, d 768, causal). In the same run, per
stack: rank 0 alone runs the exact model (SDPA) while the other rank idles; then both ranks run
PRISM at segment size 16 and at segment size 1 (every K/V row sent: full exchange), on an
unlimited link (shared memory) and on emulated 100 and 10 Mbit/s links (`Communicator`'s rate
limit; the transfer overlaps the local block as it would on a real link). Times are medians of
--repeats requests (one request on the slowest links, whose time is dominated by the emulated
transfer). Targets (issue 4): >= 1.6x over one process at segment size 16, >= 1.3x over full
exchange.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from prism_ops import hf
from prism_ops.distributed.comm import Communicator
from prism_ops.distributed.link import EmulatedLink
from prism_ops.distributed.runtime import run_distributed
from prism_ops.request_types import Request
from prism_ops.in_process import run_simulated
from prism_ops.distributed.control import bcast_json

torch.set_num_threads(1)


def stacks(N):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    yield "MiniLM shape (6 x 384, encoder)", BertModel(BertConfig(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
        max_position_embeddings=N, vocab_size=30522), add_pooling_layer=False).eval()
    torch.manual_seed(0)
    yield "GPT-2 small shape (12 x 768, causal)", GPT2LMHeadModel(GPT2Config(
        n_embd=768, n_layer=12, n_head=12, n_positions=N, vocab_size=50257)).eval()


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--links", default="100,10", help="emulated link rates in Mbit/s")
    ap.add_argument("--json", help="write the rows here (rank 0)")
    args = ap.parse_args()
    comm = Communicator(timeout_s=1200)
    N, P = args.tokens, comm.size
    links = [None] + [float(x) for x in args.links.split(",") if x]
    rows = []
    for name, model in stacks(N):
        req = Request(ids=torch.randint(0, 30000, (1, N), generator=torch.Generator().manual_seed(1)))
        hf.register()
        local = None
        if comm.rank == 0:
            model.set_attn_implementation("sdpa")
            run_simulated(model, req, 1)  # warm-up
            local = timed(lambda: run_simulated(model, req, 1), args.repeats)
        bcast_json(comm, "go")
        for segment_size in (16, 1):
            runner = hf.configure(model, num_partitions=P, segment_size=segment_size, comm=comm)
            run_distributed(runner, comm, req, progress=False)  # warm-up
            for link in links:
                comm.link = None if link is None else EmulatedLink(link)
                reps = args.repeats if link is None or link >= 100 else 1
                box = {}

                def once():
                    box["res"] = run_distributed(runner, comm, req if comm.rank == 0 else None, progress=False)

                t = timed(once, reps)
                comm.link = None
                if comm.rank == 0:
                    res = box["res"]
                    rows.append(dict(stack=name, tokens=N, ranks=P, segment_size=segment_size, link_mbit=link,
                                     seconds=t, local_seconds=local, speedup=local / t,
                                     bytes_per_forward=sum(res.bytes_per_layer)))
                    print(f"{name}: segment size {segment_size:>2}, link {link or 'unlimited'}: {t:.3f} s, "
                          f"one process {local:.3f} s, speed-up {local / t:.2f}x", flush=True)
    if comm.rank != 0:
        return
    print()
    print("| stack | link | one process (s) | segment size 16 (s) | speed-up | segment size 1 = full exchange (s) | speed-up | 16 over 1 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in dict.fromkeys(r["stack"] for r in rows):
        for link in links:
            r16 = next(r for r in rows if r["stack"] == name and r["segment_size"] == 16 and r["link_mbit"] == link)
            r1 = next(r for r in rows if r["stack"] == name and r["segment_size"] == 1 and r["link_mbit"] == link)
            print(f"| {name} | {f'{link:g} Mbit/s' if link else 'shared memory'} | {r16['local_seconds']:.2f} | "
                  f"{r16['seconds']:.2f} | {r16['speedup']:.2f}x | {r1['seconds']:.2f} | {r1['speedup']:.2f}x | "
                  f"{r1['seconds'] / r16['seconds']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
