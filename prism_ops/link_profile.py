"""Local or distributed? A measured link profile for `prism-run --auto`.

On slow links distributing a request can be slower than running it on one device (the
authors' Jetson follow-up found exactly that for full exchange). `measure_profile` times, on
the machines and link of the current launch, rank 0 running the exact model alone against all
ranks running PRISM, at several input lengths, and writes

    {"model", "partitions", "segment_size", "link_mbit", "rows": [{"tokens", "local_s", "distributed_s"}]}

`choose` takes it, as `input_files.read_profile` read and checked it (once, bounded), and picks
the faster mode for an input of N tokens (linear interpolation between measured lengths, the
nearest end outside them).

`choose_setting` also picks the setting: among the asked preset and those at least as accurate
(`config.PRESET_ORDER`: a switch never leaves the asked quality budget), each with either
exchange the model allows, it predicts every candidate's time from the cost model
(`predict_seconds`: per-layer FLOPs at the seconds per FLOP the profile measured on one device,
plus the per-layer transfer on the profile's link rate and latency, scaled by how far the
measured distributed time of the profiled setting is from its own prediction) and runs the
fastest, or one device when that is faster still.
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from . import cost
from .config import PRESET_ORDER, PrismConfig
from .distributed.control import bcast_json
from .distributed.runtime import run_distributed
from .request_types import Request
from .hf import NAME, model_kind
from .in_process import run_simulated
from .models import pydoc_text
from .ops.chunk_summary import visible_chunks

LENGTHS = (64, 128, 256, 512, 1024, 2048)


def _text_ids(tok, n):
    ids = tok(pydoc_text(), add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor([ids[:n]])


def measure_profile(runner, tok, comm, path: str, *, model_name: str, config: PrismConfig, link_mbit=None,
                    link_latency_ms: float = 0.0, repeats: int = 3) -> dict | None:
    """Time both modes at every length the model allows; rank 0 writes the profile to `path`."""
    model = runner.model
    limit = runner.max_positions or max(LENGTHS)
    rows = []
    for n in [x for x in LENGTHS if comm.size <= x <= limit]:
        req = Request(ids=_text_ids(tok, n)) if comm.rank == 0 else None
        dist = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run_distributed(runner, comm, req, progress=False)
            dist.append(time.perf_counter() - t0)
        local = []
        if comm.rank == 0:
            model.set_attn_implementation("sdpa")
            for _ in range(repeats):
                t0 = time.perf_counter()
                run_simulated(model, req, 1)
                local.append(time.perf_counter() - t0)
            model.set_attn_implementation(NAME)
        bcast_json(comm, "next")  # the others wait here while rank 0 runs alone
        rows.append({"tokens": n, "local_s": statistics.median(local) if local else None,
                     "distributed_s": statistics.median(dist)})
    if comm.rank != 0:
        return None
    prof = {"model": model_name, "partitions": comm.size, "segment_size": config.segment_size,
            "config": config.as_dict(), "link_mbit": link_mbit, "link_latency_ms": link_latency_ms, "rows": rows}
    with open(path, "w") as f:
        json.dump(prof, f, indent=1)
    print(f"prism-run: profile of {len(rows)} lengths written to {path}")
    for r in rows:
        print(f"  {r['tokens']:>5} tokens: local {r['local_s']:.3f} s, distributed {r['distributed_s']:.3f} s")
    return prof


def _rows(prof: dict) -> list:
    """The profile's rows by length."""
    return sorted(prof["rows"], key=lambda r: r["tokens"])


def _at(rows, num_tokens: int, key: str) -> float:
    """A profile column at num_tokens: linear between measured lengths, the nearest end outside."""
    if num_tokens <= rows[0]["tokens"]:
        return rows[0][key]
    for r0, r1 in zip(rows, rows[1:]):
        if num_tokens <= r1["tokens"]:
            w = (num_tokens - r0["tokens"]) / (r1["tokens"] - r0["tokens"])
            return (1 - w) * r0[key] + w * r1[key]
    return rows[-1][key]


def choose(prof: dict, num_tokens: int) -> str:
    """"local" or "distributed", whichever the profile `prof` predicts is faster."""
    rows = _rows(prof)
    return "local" if _at(rows, num_tokens, "local_s") <= _at(rows, num_tokens, "distributed_s") else "distributed"


def predict_seconds(shape: cost.ModelShape, num_tokens: int, config: PrismConfig, *, causal: bool,
                    sec_per_flop: float, link_mbit: float | None, latency_ms: float = 0.0) -> float:
    """Predicted seconds of one forward over config.num_partitions ranks (cost model).

    Per layer a rank computes its FLOPs (`cost.flops_per_layer`) and receives the payloads of the
    chunks it reads at link_mbit (None: unlimited) plus latency_ms per layer. An encoder's rank
    waits for them inside every layer (compute + transfer); a decoder's payloads stream ahead
    point to point (`Communicator.isend_recv`), so its rank takes the larger of the two.
    """
    P = config.num_partitions
    flops = cost.flops_per_layer(shape, num_tokens, config, causal=causal)
    sent = cost.bytes_per_layer(shape, num_tokens, config, causal=causal)
    worst = 0.0
    for p in range(P):
        recv = sum(sent[c] for c in visible_chunks(p, P, causal))
        wire = 0.0 if link_mbit is None else latency_ms / 1e3 + recv * 8 / (link_mbit * 1e6)
        work = flops[p] * sec_per_flop
        worst = max(worst, max(work, wire) if causal else work + wire)
    return shape.num_layers * worst


def auto_candidates(preset: str) -> list[str]:
    """The presets --auto may run for `preset`: it and the more accurate ones (PRESET_ORDER)."""
    if preset not in PRESET_ORDER:
        raise ValueError(f"auto: preset must be one of {list(PRESET_ORDER)}, got {preset!r}")
    return list(PRESET_ORDER[: PRESET_ORDER.index(preset) + 1])[::-1]


def choose_setting(prof: dict, shape: cost.ModelShape, num_tokens: int, *, preset: str, causal: bool,
                   exchanges=("kv",)) -> dict:
    """{"mode": "local" | "distributed", "preset", "exchange", "predicted_s", "local_s"}: the
    fastest of one device and every candidate setting (`auto_candidates(preset)` x exchanges)
    on the link of the profile `prof` (as `measure_profile` writes it), predicted from the
    profile and the cost model."""
    num_partitions = prof["partitions"]
    rows = _rows(prof)
    local = _at(rows, num_tokens, "local_s")
    sec_per_flop = local / (shape.num_layers * cost.one_device_flops_per_layer(shape, num_tokens, causal=causal))
    link = dict(link_mbit=prof.get("link_mbit"), latency_ms=prof.get("link_latency_ms") or 0.0)
    scale = 1.0
    if prof.get("config"):  # how far the measured setting's time is from its prediction
        measured = PrismConfig(**{**prof["config"], "weights": None if prof["config"]["weights"] is None
                                  else tuple(prof["config"]["weights"])})
        scale = _at(rows, num_tokens, "distributed_s") / predict_seconds(
            shape, num_tokens, measured, causal=causal, sec_per_flop=sec_per_flop, **link)
    best = {"mode": "local", "preset": None, "exchange": None, "predicted_s": local, "local_s": local}
    for name in auto_candidates(preset):
        for exchange in exchanges:
            config = PrismConfig.from_preset(num_partitions, name, exchange=exchange)
            t = scale * predict_seconds(shape, num_tokens, config, causal=causal, sec_per_flop=sec_per_flop, **link)
            if t < best["predicted_s"]:
                best = {**best, "mode": "distributed", "preset": name, "exchange": exchange, "predicted_s": t}
    return best


def auto_choice(prof: dict, model, config: PrismConfig, preset: str | None, num_tokens: int) -> dict:
    """What `prism-run --auto` runs for a request of num_tokens: {"mode", "preset", "exchange"}.
    prof: the profile as `input_files.read_profile` read and checked it (measured on this job's
    ranks).

    With a budgeted preset asked (PRESET_ORDER) the setting is chosen too (`choose_setting`;
    hidden exchange is a candidate where the asked config resolved to it); with anything else
    (the paper preset, explicit levers) only one device against the asked setting (`choose`).
    """
    if preset not in PRESET_ORDER:
        return {"mode": choose(prof, num_tokens), "preset": None, "exchange": None}
    return choose_setting(prof, cost.ModelShape.from_config(model.config), num_tokens, preset=preset,
                          causal=model_kind(model) == "decoder", exchanges=tuple(dict.fromkeys(("kv", config.exchange))))
