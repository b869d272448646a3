"""Local or distributed? A measured link profile for `prism-run --auto`.

On slow links distributing a request can be slower than running it on one device (the
authors' Jetson follow-up found exactly that for full exchange). `measure_profile` times, on
the machines and link of the current launch, rank 0 running the exact model alone against all
ranks running PRISM, at several input lengths, and writes

    {"model", "partitions", "segment_size", "link_mbit", "rows": [{"tokens", "local_s", "distributed_s"}]}

`choose` reads it and picks the faster mode for an input of N tokens (linear interpolation
between measured lengths, the nearest end outside them).
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from .config import PrismConfig
from .distributed.control import bcast_json
from .distributed.runtime import Request, RequestError, max_positions, run_distributed, run_simulated
from .models import pydoc_text

LENGTHS = (64, 128, 256, 512, 1024, 2048)


def _text_ids(tok, n):
    tok.model_max_length = 10**9
    ids = tok(pydoc_text(), add_special_tokens=False)["input_ids"]
    return torch.tensor([ids[:n]])


def measure_profile(model, tok, comm, path: str, *, model_name: str, config: PrismConfig, link_mbit=None,
                    repeats: int = 3) -> dict | None:
    """Time both modes at every length the model allows; rank 0 writes the profile to `path`."""
    limit = max_positions(model) or max(LENGTHS)
    rows = []
    for n in [x for x in LENGTHS if comm.size <= x <= limit]:
        req = Request(ids=_text_ids(tok, n)) if comm.rank == 0 else None
        dist = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run_distributed(model, comm, req, progress=False)
            dist.append(time.perf_counter() - t0)
        local = []
        if comm.rank == 0:
            model.set_attn_implementation("sdpa")
            for _ in range(repeats):
                t0 = time.perf_counter()
                run_simulated(model, req, 1)
                local.append(time.perf_counter() - t0)
            model.set_attn_implementation("prism")
        bcast_json(comm, "next")  # the others wait here while rank 0 runs alone
        rows.append({"tokens": n, "local_s": statistics.median(local) if local else None,
                     "distributed_s": statistics.median(dist)})
    if comm.rank != 0:
        return None
    prof = {"model": model_name, "partitions": comm.size, "segment_size": config.segment_size,
            "link_mbit": link_mbit, "rows": rows}
    with open(path, "w") as f:
        json.dump(prof, f, indent=1)
    print(f"prism-run: profile of {len(rows)} lengths written to {path}")
    for r in rows:
        print(f"  {r['tokens']:>5} tokens: local {r['local_s']:.3f} s, distributed {r['distributed_s']:.3f} s")
    return prof


def choose(path: str, num_tokens: int, num_partitions: int) -> str:
    """"local" or "distributed", whichever the profile at `path` predicts is faster."""
    try:
        with open(path) as f:
            prof = json.load(f)
        rows = sorted(prof["rows"], key=lambda r: r["tokens"])
    except (OSError, ValueError, KeyError) as e:
        raise RequestError(f"auto: {path!r} is not a profile written by prism-run --profile ({e})") from None
    if prof.get("partitions") != num_partitions or not rows:
        raise RequestError(f"auto: the profile {path!r} was measured on {prof.get('partitions')} ranks, "
                           f"this job has {num_partitions}; measure it again with --profile")

    def at(key):
        xs = [r["tokens"] for r in rows]
        if num_tokens <= xs[0]:
            return rows[0][key]
        for r0, r1 in zip(rows, rows[1:]):
            if num_tokens <= r1["tokens"]:
                w = (num_tokens - r0["tokens"]) / (r1["tokens"] - r0["tokens"])
                return (1 - w) * r0[key] + w * r1[key]
        return rows[-1][key]

    return "local" if at("local_s") <= at("distributed_s") else "distributed"
