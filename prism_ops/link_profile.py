"""The measured profile of a launch (`prism-run --profile`), and what `prism-run --auto` runs by it.

    mpirun -n 2 prism-run --model smollm2 --profile p.json        # every rank and link, measured
    mpirun -n 2 prism-run --model smollm2 --auto p.json --input-file story.txt

`measure_profile` measures, on the machines and links of the current launch:
- each rank's own compute rates on this model, all ranks at once (`measure_device`): attention
  (the package's attention op on the model's heads: a block of received rows, and a decoder's
  own causal block apart, which runs at a rate of its own) and linear work (the exact model's forward at a few lengths, less its attention);
- the link between each pair of ranks, both directions, one pair at a time (`measure_link`):
  per-message latency from a 1-byte round trip, rate from a round trip of a message large
  enough to take a while,
- what those rates miss when PRISM runs (`calibrate_overhead`: one request over every rank at an
  equal split, each rank's computing seconds against the rates' prediction: its `prism_factor`),
and rank 0 writes (format 2)

    {"format": 2, "model", "shape": {ModelShape's fields}, "kind", "partitions", "hosts": [per rank],
     "config": {the asked setting}, "devices": [{"linear_flops_s", "attention_flops_s", "causal_flops_s" (decoders),
     "prism_factor", ...}],
     "links": [[null | {"bytes_s", "latency_s"}] per rank] per rank}

`plan_request` takes it (as `input_files.read_profile` read and checked it, and `check_profile`
matched it with this job's model and hosts) and picks, for one request of N tokens: among the
asked preset and those at least as accurate (`config.PRESET_ORDER`: a switch never leaves the
asked quality budget), each with either exchange the model allows, the partition bounds and
chunk order that `split.balanced_split` predicts fastest; or the fastest device alone unless a
plan is predicted at least MIN_GAIN times faster. `--weights` fixes the bounds by hand instead.

`predict_seconds` is the older, uniform projection (every rank alike, one link rate), which
bench_frontier uses to project 4 devices from one.
"""

from __future__ import annotations

import dataclasses
import json
import time

import torch

from . import cost
from .config import PRESET_ORDER, PrismConfig
from .cost import ModelShape
from .distributed.control import allgather_json
from .hf import NAME
from .in_process import run_simulated
from .models import pydoc_text
from .ops.chunk_summary import visible_chunks
from .ops.partitioned_attention import partition_bounds
from .ops.prism_attention import prism_attention
from .request_types import Request
from .distributed.runtime import run_distributed
from .split import Device, Link, balanced_split, block_pairs, compute_seconds, fastest, one_device_seconds, predict
from .tags import TAG_PROBE

FORMAT = 2
LENGTHS = (256, 512, 1024)  # the exact model's forward is timed at these (capped at the model's positions)
PROBE_SECONDS = 0.2  # a link's rate is read from a message that takes at least this long (or PROBE_MAX_BYTES)
PROBE_MAX_BYTES = 16 * 2**20
# Distribute only when the plan is predicted at least this much faster than the fastest rank alone:
# the prediction leaves out each request's fixed costs (scatter, gather, messages), and a gain
# within the noise of a shared machine is no gain.
MIN_GAIN = 1.05


def _text_ids(tok, n):
    ids = tok(pydoc_text(), add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor([ids[:n]])


def _best_of(fn, repeats: int) -> float:
    """The fastest of `repeats` timed calls (after one warm-up): what the device can do."""
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def attention_flops(shape: ModelShape, pairs: int) -> float:
    """FLOPs of one forward's attention over `pairs` (query, key) pairs per layer: scores and values."""
    return shape.num_layers * 2 * 2 * shape.num_heads * shape.head_dim * pairs


def linear_flops(shape: ModelShape, n: int) -> float:
    """FLOPs of one forward's projections and MLP for n tokens."""
    return shape.num_layers * 2 * n * shape.linear_macs_per_token()


def measure_device(runner, tok, *, causal: bool, backend: str = "auto", repeats: int = 2) -> dict:
    """This rank's rates on this model: {"linear_flops_s", "attention_flops_s", "lengths", "seconds"}."""
    model, dev = runner.model, runner.device
    shape = ModelShape.from_config(model.config)
    dtype = next(model.parameters()).dtype
    limit = runner.max_positions or max(LENGTHS)
    lengths = sorted({min(n, limit) for n in LENGTHS})
    # Attention: one layer's local block and as many received rows (what a middle rank attends to).
    n = lengths[-1]
    g = torch.Generator().manual_seed(0)

    def rand(heads, rows):
        return torch.randn(1, heads, rows, shape.head_dim, generator=g).to(dev, dtype)

    q, k, v = rand(shape.num_heads, n), rand(shape.num_kv_heads, n), rand(shape.num_kv_heads, n)
    k_sum, v_sum = rand(shape.num_kv_heads, n), rand(shape.num_kv_heads, n)
    counts = torch.ones(1, n, dtype=torch.int32, device=dev)

    def local():
        prism_attention(q, k, v, causal=causal, return_lse=True, backend=backend)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def remote():
        prism_attention(q, k[:, :, :0], v[:, :, :0], k_sum, v_sum, counts, return_lse=True, backend=backend)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    per_pair = 2 * 2 * shape.num_heads * shape.head_dim
    attention_flops_s = per_pair * n * n / _best_of(remote, 3 * repeats)
    causal_flops_s = per_pair * block_pairs(n, True) / _best_of(local, 3 * repeats) if causal else None
    # Linear work: the exact model at each length, less its attention at that rate.
    model.set_attn_implementation("sdpa")
    seconds = []
    try:
        for m in lengths:
            req = Request(ids=_text_ids(tok, m))
            seconds.append(_best_of(lambda: run_simulated(model, req, 1), repeats))
    finally:
        model.set_attn_implementation(NAME)
    own_rate = causal_flops_s if causal else attention_flops_s
    linear_s = [max(t - attention_flops(shape, block_pairs(m, causal)) / own_rate, 1e-9)
                for t, m in zip(seconds, lengths)]
    per_token = sum(t * m for t, m in zip(linear_s, lengths)) / sum(m * m for m in lengths)  # least squares
    out = {"linear_flops_s": linear_flops(shape, 1) / per_token, "attention_flops_s": attention_flops_s,
           "lengths": lengths, "seconds": seconds}
    if causal:
        out["causal_flops_s"] = causal_flops_s
    return out


def _round_trip(comm, a: int, b: int, nbytes: int) -> float | None:
    """a sends b nbytes, b answers 1 byte (point to point, through the communicator's emulated
    link if any); a's seconds for the round trip, None on the other ranks."""
    counts = [0] * comm.size
    if comm.rank == a:
        counts[b] = 1
        t0 = time.perf_counter()
        comm.isend_recv(torch.zeros(nbytes, dtype=torch.uint8), [b], [b], counts, tag=TAG_PROBE, key="probe").wait()
        return time.perf_counter() - t0
    if comm.rank == b:
        counts[a] = nbytes
        comm.isend_recv(torch.empty(0, dtype=torch.uint8), [], [a], counts, tag=TAG_PROBE, key="probe").wait()
        counts[a] = 0
        comm.isend_recv(torch.zeros(1, dtype=torch.uint8), [a], [], counts, tag=TAG_PROBE, key="probe")
    return None


def measure_link(comm, a: int, b: int, repeats: int = 3) -> dict | None:
    """The link from rank a to rank b: {"bytes_s", "latency_s"} on rank a (None elsewhere). Every
    rank calls it; only a and b send. The message grows 8x until it takes PROBE_SECONDS."""
    small = [_round_trip(comm, a, b, 1) for _ in range(repeats)]
    rtt1 = min(small) if comm.rank == a else None
    nbytes = 64 * 2**10
    while True:
        t = min(_round_trip(comm, a, b, nbytes) or 0.0 for _ in range(repeats)) if comm.rank in (a, b) else 0.0
        grow = allgather_json(comm, comm.rank == a and t < PROBE_SECONDS and nbytes < PROBE_MAX_BYTES)[a]
        if not grow:
            break
        nbytes *= 8
    if comm.rank != a:
        return None
    return {"bytes_s": nbytes / max(t - rtt1, 1e-9), "latency_s": rtt1 / 2, "probe_bytes": nbytes}


def calibrate_overhead(runner, tok, comm, devices: list, num_tokens: int) -> list[float]:
    """Each rank's PRISM forward against its prediction from the exact model's rates: one request
    of num_tokens (capped at the model's positions) at an equal split, the asked setting; the
    seconds a rank computed (its forward less its waits for rows) over the seconds predicted
    (`split.compute_seconds`). What the rates miss (building and decoding payloads, merging,
    Python) scales them in the plan. On every rank."""
    shape = ModelShape.from_config(runner.model.config)
    causal = runner.kind == "decoder"
    N = min(num_tokens, runner.max_positions or num_tokens)
    req = Request(ids=_text_ids(tok, N)) if comm.rank == 0 else None
    run_distributed(runner, comm, req, progress=False)  # warm-up
    res = run_distributed(runner, comm, req, progress=False)
    t = allgather_json(comm, res.seconds_per_rank if comm.rank == 0 else None)[0]
    rates = [_device(d) for d in devices]
    bounds = partition_bounds(N, comm.size)
    local, remote = compute_seconds(bounds, rates, shape, runner.config, causal=causal)
    return [max(1.0, (r["forward"] - r.get("attention wait", 0.0)) / (shape.num_layers * (lo + re)))
            for r, lo, re in zip(t, local, remote)]


def profile_dict(*, model: str, shape: ModelShape, kind: str, hosts: list, config: PrismConfig, devices: list,
                 links: list) -> dict:
    """The profile as `measure_profile` writes it (devices: dicts with at least the Device fields;
    links: [P][P] of None or dicts with the Link fields)."""
    return {"format": FORMAT, "model": model, "shape": dataclasses.asdict(shape), "kind": kind,
            "partitions": len(devices), "hosts": list(hosts), "config": config.as_dict(), "devices": list(devices),
            "links": links}


def measure_profile(runner, tok, comm, path: str, *, model_name: str, config: PrismConfig,
                    repeats: int = 2) -> dict | None:
    """Measure every rank and link (see the module docstring); rank 0 writes the profile to `path`
    and returns it (None on the other ranks)."""
    if runner.kind == "vision":
        raise ValueError("--profile measures text models (its lengths are token counts); a vision model's "
                         "request has one length: run it with and without --simulate to compare")
    causal = runner.kind == "decoder"
    mine = measure_device(runner, tok, causal=causal, backend=config.backend, repeats=repeats)
    devices = allgather_json(comm, mine)
    hosts = host_names(comm)
    links = [[None] * comm.size for _ in range(comm.size)]
    for a in range(comm.size):
        for b in range(comm.size):
            if a != b:
                links[a][b] = allgather_json(comm, measure_link(comm, a, b))[a]
    factors = calibrate_overhead(runner, tok, comm, devices, max(d["lengths"][-1] for d in devices) * comm.size)
    for d, f in zip(devices, factors):
        d["prism_factor"] = f
    if comm.rank != 0:
        return None
    prof = profile_dict(model=model_name, shape=ModelShape.from_config(runner.model.config), kind=runner.kind,
                        hosts=hosts, config=config, devices=devices, links=links)
    with open(path, "w") as f:
        json.dump(prof, f, indent=1)
    print(f"prism-run: profile of {comm.size} ranks written to {path}")
    for r, (d, h) in enumerate(zip(devices, hosts)):
        own = f", causal block {d['causal_flops_s'] / 1e9:.1f}" if "causal_flops_s" in d else ""
        print(f"  rank {r} ({h}): linear {d['linear_flops_s'] / 1e9:.1f} GFLOP/s, "
              f"attention {d['attention_flops_s'] / 1e9:.1f}{own} GFLOP/s; PRISM x{d['prism_factor']:.3f}")
    for a, row in enumerate(links):
        for b, link in enumerate(row):
            if link is not None:
                print(f"  link {a} -> {b}: {link['bytes_s'] * 8 / 1e6:.1f} Mbit/s, {link['latency_s'] * 1e3:.2f} ms")
    return prof


def check_profile(prof: dict, flag: str, *, model: str, shape: ModelShape, hosts: list) -> None:
    """The profile must be of this model (name and shape) and these hosts, in rank order."""
    if prof["model"] != model or prof["shape"] != dataclasses.asdict(shape):
        raise ValueError(f"{flag}: the profile was measured for model {prof['model']!r} "
                         f"({_shape_text(prof['shape'])}), this job runs {model!r} "
                         f"({_shape_text(dataclasses.asdict(shape))}); measure it again with --profile")
    if prof["hosts"] != list(hosts):
        raise ValueError(f"{flag}: the profile was measured on hosts {prof['hosts']} (by rank), this job runs on "
                         f"{list(hosts)}; measure it again with --profile")


def _shape_text(shape: dict) -> str:
    return f"{shape.get('num_layers')} layers, d={shape.get('hidden_size')}, {shape.get('num_heads')} heads"


def host_names(comm) -> list[str]:
    """Every rank's host name (MPI's processor name), in rank order (collective)."""
    return allgather_json(comm, comm.MPI.Get_processor_name())


def _device(d: dict) -> Device:
    """A profile's device entry as the exact model runs on it."""
    return Device(d["linear_flops_s"], d["attention_flops_s"], d.get("causal_flops_s"))


def devices_and_links(prof: dict) -> tuple[list, list, list]:
    """The profile's rates: (as PRISM runs on each rank: the exact model's rates over its
    `prism_factor`; the exact model's; the links), as `split.Device`s and `split.Link`s."""
    exact = [_device(d) for d in prof["devices"]]
    prism = []
    for e, d in zip(exact, prof["devices"]):
        f = d.get("prism_factor", 1.0)
        prism.append(Device(e.linear_flops_s / f, e.attention_flops_s / f, e.causal_flops_s and e.causal_flops_s / f))
    links = [[None if x is None else Link(x["bytes_s"], x["latency_s"]) for x in row] for row in prof["links"]]
    return prism, exact, links


def auto_candidates(preset: str) -> list[str]:
    """The presets --auto may run for `preset`: it and the more accurate ones (PRESET_ORDER)."""
    if preset not in PRESET_ORDER:
        raise ValueError(f"auto: preset must be one of {list(PRESET_ORDER)}, got {preset!r}")
    return list(PRESET_ORDER[: PRESET_ORDER.index(preset) + 1])[::-1]


def plan_request(prof: dict, num_tokens: int, config: PrismConfig, *, preset: str | None, causal: bool,
                 exchanges=("kv",), dtype: torch.dtype = torch.float32, result_bytes: int = 0) -> dict:
    """What --auto runs for a request of num_tokens, JSON-ready:

        {"mode": "local" | "distributed", "preset", "exchange", "bounds": per rank, "order": the
         rank of each chunk, "predicted_s", "local_s", "fastest": the rank that runs alone}

    preset: a budgeted preset (PRESET_ORDER) lets the setting change within its budget (each of
    `exchanges`); None keeps `config` as asked. config.weights set: the bounds follow them in
    rank order (`--weights` by hand), else `split.balanced_split` chooses bounds and order.
    result_bytes: what the last chunk sends back at the end (for a decoder's logits, its last hidden
    row: hidden size x 4).
    """
    P = prof["partitions"]
    shape = ModelShape(**prof["shape"])
    devices, exact, links = devices_and_links(prof)
    if preset is None:
        configs = [(None, config)]
    else:
        configs = [(name, PrismConfig.from_preset(P, name, exchange=ex, backend=config.backend))
                   for name in auto_candidates(preset) for ex in exchanges]
    first = fastest(exact)
    local = one_device_seconds(num_tokens, exact[first], shape, causal=causal)
    best = {"mode": "local", "preset": None, "exchange": None, "bounds": None, "order": None, "predicted_s": local,
            "local_s": local, "fastest": first}
    for name, cfg in configs:
        if config.weights is not None:
            bounds, order = partition_bounds(num_tokens, P, config.weights), list(range(P))
            t = max(predict(bounds, devices, links, shape, cfg, causal=causal, dtype=dtype, result_bytes=result_bytes))
        else:
            plan = balanced_split(num_tokens, devices, links, shape, cfg, causal=causal, dtype=dtype,
                                  result_bytes=result_bytes)
            bounds, order, t = plan.bounds, plan.order, plan.seconds
        if t * MIN_GAIN < local and (best["mode"] == "local" or t < best["predicted_s"]):
            best = {**best, "mode": "distributed", "preset": name, "exchange": cfg.exchange,
                    "bounds": [list(b) for b in bounds], "order": order, "predicted_s": t}
    return best


def predict_seconds(shape: cost.ModelShape, num_tokens: int, config: PrismConfig, *, causal: bool,
                    sec_per_flop: float, link_mbit: float | None, latency_ms: float = 0.0) -> float:
    """Predicted seconds of one forward over config.num_partitions equal ranks (uniform projection).

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
