"""Partition bounds computed from measured rates: the split that minimises the slowest rank's time.

    devices = [Device(linear_flops_s=2.1e10, attention_flops_s=1.4e10), Device(1.0e10, 0.7e10)]
    links = uniform_links(2, bytes_s=1.25e6, latency_s=1e-3)          # or a [P][P] table of Link
    plan = balanced_split(2048, devices, links, shape, config, causal=True)
    plan.bounds, plan.seconds, plan.distribute, plan.one_device_s

A pure function of plain numbers (no MPI, no I/O): what a profile measured of each rank (its
rates for linear and for attention work) and of each link (bytes per second and per-message
latency, per direction), the model's shape, the PRISM setting and the request length.

The time model, per layer and rank p owning n_p tokens (FLOPs from `prism_ops.cost`'s counts):

    compute_local_p = linear FLOPs of n_p tokens / linear rate_p + local attention FLOPs / attention rate_p
    arrival_p       = max over the chunks c that p reads of: latency(c->p) + the bytes c has sent by the
                      time its payload to p is through / rate(c->p)   (c sends to its readers in turn,
                      as soon as the layer starts; the payload's bytes are the wire layout's)
    t_p             = max(compute_local_p, arrival_p) + attention to the received rows / attention rate_p

and the forward takes num_layers x max_p t_p (each layer waits for the rows it reads). One device
runs the exact model in num_layers x (its linear and attention FLOPs of all N tokens at its rates);
`distribute` is False when the fastest device alone is predicted faster.

The search starts from sizes proportional to the devices' rates and moves tokens between
neighbouring chunks, in steps halving from N/4P to 1, while the slowest rank's time falls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import PrismConfig
from .cost import ModelShape
from .ops.chunk_summary import summary_count, visible_chunks
from .wire import chunk_options, payload_layouts, readers


@dataclass(frozen=True)
class Device:
    """One rank's measured rates, in FLOPs per second: matrix products per token (projections,
    MLP) and attention (scores and weighted values)."""

    linear_flops_s: float
    attention_flops_s: float


@dataclass(frozen=True)
class Link:
    """One direction of a link: bytes per second, and seconds per message."""

    bytes_s: float
    latency_s: float = 0.0


@dataclass(frozen=True)
class Split:
    """bounds: each rank's [start, end); seconds: the predicted forward (the slowest rank's);
    per_rank: each rank's predicted forward; one_device_s: the fastest device alone (exact model);
    fastest: that device's rank; distribute: whether the split is predicted faster than it."""

    bounds: list
    seconds: float
    per_rank: list
    one_device_s: float
    fastest: int
    distribute: bool


def uniform_links(P: int, bytes_s: float, latency_s: float = 0.0) -> list:
    """A [P][P] table of the same link between every pair (None on the diagonal)."""
    return [[None if a == b else Link(bytes_s, latency_s) for b in range(P)] for a in range(P)]


def _check(N, devices, links, config):
    P = len(devices)
    if not isinstance(N, int) or isinstance(N, bool) or N < P:
        raise ValueError(f"N (the request's tokens) must be an int >= the {P} devices, got {N!r}")
    if config.num_partitions != P:
        raise ValueError(f"config.num_partitions={config.num_partitions} must equal the {P} devices")
    for i, d in enumerate(devices):
        for name in ("linear_flops_s", "attention_flops_s"):
            x = getattr(d, name)
            if not (isinstance(x, (int, float)) and math.isfinite(x) and x > 0):
                raise ValueError(f"devices[{i}].{name} must be a finite rate > 0, got {x!r}")
    if len(links) != P or any(len(row) != P for row in links):
        raise ValueError(f"links must be a [{P}][{P}] table of Link (None on the diagonal)")
    for a in range(P):
        for b in range(P):
            if a != b and not (isinstance(links[a][b], Link) and links[a][b].bytes_s > 0 and links[a][b].latency_s >= 0):
                raise ValueError(f"links[{a}][{b}] must be a Link with bytes_s > 0 and latency_s >= 0, "
                                 f"got {links[a][b]!r}")


def predict(bounds, devices, links, shape: ModelShape, config: PrismConfig, *, causal: bool,
            dtype: torch.dtype = torch.float32) -> list[float]:
    """Each rank's predicted forward (seconds) with these bounds (see the module docstring); dtype:
    the model's (the wire carries verbatim and full-precision rows in it)."""
    P = len(bounds)
    heads, channels = shape.row_shape(config.exchange)
    layouts = payload_layouts(config, bounds, causal=causal, batch=1, heads=heads, channels=channels, dtype=dtype)
    opts = chunk_options(config, causal)
    rows = [sum(summary_count(bounds, c, config.segment_size, **opts)) for c in range(P)]
    arrive = [[0.0] * P for _ in range(P)]  # arrive[c][r]: when c's payload is through at r
    for c in range(P):
        sent = 0
        for r in readers(c, P, causal, bounds=bounds):
            sent += layouts[c].nbytes
            arrive[c][r] = links[c][r].latency_s + sent / links[c][r].bytes_s
    attn_per_pair = 2 * 2 * shape.num_heads * shape.head_dim  # FLOPs per (query, key) for scores and values
    out = []
    for p, (start, end) in enumerate(bounds):
        n, dev = end - start, devices[p]
        seen = visible_chunks(p, P, causal, bounds=bounds)
        local_pairs = n * (n + 1) // 2 if causal else n * n
        compute = 2 * n * shape.linear_macs_per_token() / dev.linear_flops_s + attn_per_pair * local_pairs / dev.attention_flops_s
        received = sum(rows[c] for c in seen)
        remote = attn_per_pair * n * received / dev.attention_flops_s
        if config.exchange == "hidden":  # the receiver projects each row to K and V
            remote += 2 * received * 2 * shape.hidden_size * shape.num_kv_heads * shape.head_dim / dev.linear_flops_s
        wait = max((arrive[c][p] for c in seen), default=0.0)
        out.append(shape.num_layers * (max(compute, wait) + remote))
    return out


def one_device_seconds(N: int, device: Device, shape: ModelShape, *, causal: bool) -> float:
    """The exact model on one device, all N tokens."""
    pairs = N * (N + 1) // 2 if causal else N * N
    return shape.num_layers * (2 * N * shape.linear_macs_per_token() / device.linear_flops_s
                               + 2 * 2 * shape.num_heads * shape.head_dim * pairs / device.attention_flops_s)


def _bounds(sizes):
    out, start = [], 0
    for s in sizes:
        out.append((start, start + s))
        start += s
    return out


def balanced_split(N: int, devices, links, shape: ModelShape, config: PrismConfig, *, causal: bool,
                   dtype: torch.dtype = torch.float32) -> Split:
    """The bounds that minimise the slowest rank's predicted time, and whether they beat one device."""
    _check(N, devices, links, config)
    P = len(devices)
    speed = [d.linear_flops_s for d in devices]
    sizes = [max(1, int(N * s / sum(speed))) for s in speed]
    sizes[max(range(P), key=lambda p: speed[p])] += N - sum(sizes)

    def cost(sz):
        t = predict(_bounds(sz), devices, links, shape, config, causal=causal, dtype=dtype)
        return max(t), sum(t), t

    best = cost(sizes)
    step = max(1, N // (4 * P))
    while step >= 1:
        improved = True
        while improved:
            improved = False
            for i in range(P - 1):
                for a, b in ((i, i + 1), (i + 1, i)):  # move `step` tokens from chunk a to its neighbour b
                    if sizes[a] - step < 1:
                        continue
                    trial = list(sizes)
                    trial[a] -= step
                    trial[b] += step
                    got = cost(trial)
                    if got[:2] < best[:2]:
                        sizes, best, improved = trial, got, True
        step //= 2
    fastest = max(range(P), key=lambda p: (devices[p].linear_flops_s, devices[p].attention_flops_s))
    alone = one_device_seconds(N, devices[fastest], shape, causal=causal)
    return Split(bounds=_bounds(sizes), seconds=best[0], per_rank=best[2], one_device_s=alone, fastest=fastest,
                 distribute=best[0] < alone)
