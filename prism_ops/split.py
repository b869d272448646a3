"""Partition bounds computed from measured rates: the split that minimises the slowest rank's time.

    devices = [Device(linear_flops_s=2.1e10, attention_flops_s=1.4e10), Device(1.0e10, 0.7e10)]
    links = uniform_links(2, bytes_s=1.25e6, latency_s=1e-3)          # or a [P][P] table of Link
    plan = balanced_split(2048, devices, links, shape, config, causal=True)
    plan.bounds, plan.order, plan.seconds, plan.distribute, plan.one_device_s

A pure function of plain numbers (no MPI, no I/O): what a profile measured of each rank (its
rates for linear and for attention work, `prism_ops.link_profile`) and of each link (bytes per
second and per-message latency, per direction), the model's shape, the PRISM setting and the
request length. Devices and links are indexed by rank; the split also picks which rank holds
which chunk (`order[c]`: the rank of chunk c). For a decoder the last chunk's rank attends to
every earlier key and decodes, so the fastest rank is tried there and the slowest first.

The time model (FLOPs from `prism_ops.cost`'s counts), layer by layer, each rank running ahead
as far as the rows it reads allow (a causal model's payloads stream point to point):

    local_c    = linear FLOPs of n_c tokens / linear rate + local attention FLOPs / its rate (causal or not)
    send       chunk c's payload leaves when c starts the layer, to its readers in turn, over the
               sender's uplink (a queue: a payload waits for the one before it); it is through at
               reader r after latency(c->r) + bytes / rate(c->r) (bytes: the wire layout's)
    done_c[l]  = max(done_c[l-1] + local_c, the arrivals of the chunks c reads) + remote_c
    remote_c   = attention to the received rows / attention rate (+ projecting hidden rows)

and the forward takes max_c done_c[num_layers - 1]. One device runs the exact model in num_layers x
(its linear and attention FLOPs of all N tokens at its rates); `distribute` is False when the
fastest device alone is predicted faster.

The search starts from sizes proportional to the devices' rates and moves tokens between
neighbouring chunks, in steps halving from N/4P to 1, while the slowest rank's time falls; it
does so for each chunk order tried (every order up to 3 ranks; else rank order and slowest
first; for a decoder only those that put a fastest device last, to decode) and keeps the best.
"""

from __future__ import annotations

import itertools
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
    MLP), attention to a full block of keys (scores and weighted values: received rows, an
    encoder's own block) and, where it differs, a decoder's own causal block (its kernels skip
    the masked half less efficiently; None: the attention rate)."""

    linear_flops_s: float
    attention_flops_s: float
    causal_flops_s: float | None = None

    def speed(self) -> tuple:
        """What ranks devices by speed: linear rate first (most of the work), then attention."""
        return self.linear_flops_s, self.attention_flops_s

    def block_rate(self, causal: bool) -> float:
        """The rate of a rank's attention to its own block (causal or full)."""
        return (self.causal_flops_s or self.attention_flops_s) if causal else self.attention_flops_s


def block_pairs(n: int, causal: bool) -> int:
    """(query, key) pairs of n tokens attending to themselves (causally: each to itself and before)."""
    return n * (n + 1) // 2 if causal else n * n


def fastest(devices) -> int:
    """The rank of a fastest device (`Device.speed`; the first of equals)."""
    return max(range(len(devices)), key=lambda r: devices[r].speed())


@dataclass(frozen=True)
class Link:
    """One direction of a link: bytes per second, and seconds per message."""

    bytes_s: float
    latency_s: float = 0.0


@dataclass(frozen=True)
class Split:
    """bounds: each chunk's [start, end), in sequence order; order: the rank that holds each chunk;
    seconds: the predicted forward (the slowest rank's); per_rank: each chunk's predicted forward;
    one_device_s: the fastest device alone (exact model); fastest: that device's rank;
    distribute: whether the split is predicted faster than it."""

    bounds: list
    order: list
    seconds: float
    per_rank: list
    one_device_s: float
    fastest: int
    distribute: bool

    def rank_bounds(self) -> list:
        """bounds[rank]: the [start, end) each rank holds (what the runtime takes as Request.bounds
        on a communicator whose rank c is order[c])."""
        out = [None] * len(self.order)
        for c, r in enumerate(self.order):
            out[r] = self.bounds[c]
        return out


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
        for name in ("linear_flops_s", "attention_flops_s", "causal_flops_s"):
            x = getattr(d, name)
            if name == "causal_flops_s" and x is None:
                continue
            if not (isinstance(x, (int, float)) and math.isfinite(x) and x > 0):
                raise ValueError(f"devices[{i}].{name} must be a finite rate > 0, got {x!r}")
    if len(links) != P or any(len(row) != P for row in links):
        raise ValueError(f"links must be a [{P}][{P}] table of Link (None on the diagonal)")
    for a in range(P):
        for b in range(P):
            if a != b and not (isinstance(links[a][b], Link) and links[a][b].bytes_s > 0 and links[a][b].latency_s >= 0):
                raise ValueError(f"links[{a}][{b}] must be a Link with bytes_s > 0 and latency_s >= 0, "
                                 f"got {links[a][b]!r}")


def compute_seconds(bounds, devices, shape: ModelShape, config: PrismConfig, *, causal: bool, order=None):
    """(local, remote): each chunk's seconds per layer for its own tokens (linear work and the
    local attention block) and for attending to the rows it receives, at its rank's rates."""
    P = len(bounds)
    order = list(range(P)) if order is None else list(order)
    config = config.for_tokens(bounds[-1][1])
    opts = chunk_options(config, causal)
    rows = [sum(summary_count(bounds, c, config.segment_size, heavy=config.heavy_fraction, **opts)) for c in range(P)]
    attn_per_pair = 2 * 2 * shape.num_heads * shape.head_dim  # FLOPs per (query, key): scores and values
    local, remote = [], []
    for c, (start, end) in enumerate(bounds):
        n, dev = end - start, devices[order[c]]
        local.append(2 * n * shape.linear_macs_per_token() / dev.linear_flops_s
                     + attn_per_pair * block_pairs(n, causal) / dev.block_rate(causal))
        received = sum(rows[s] for s in visible_chunks(c, P, causal, bounds=bounds))
        t = attn_per_pair * n * received / dev.attention_flops_s
        if config.exchange == "hidden":  # the receiver projects each row to K and V
            t += 2 * received * 2 * shape.hidden_size * shape.num_kv_heads * shape.head_dim / dev.linear_flops_s
        remote.append(t)
    return local, remote


def predict(bounds, devices, links, shape: ModelShape, config: PrismConfig, *, causal: bool,
            dtype: torch.dtype = torch.float32, order=None, result_bytes: int = 0) -> list[float]:
    """Each chunk's predicted forward (seconds) with these bounds (see the module docstring);
    order[c]: the rank (device, links) holding chunk c (default: chunk c on rank c); dtype: the
    model's (the wire carries verbatim and full-precision rows in it); result_bytes: what the
    last chunk sends the first one's rank at the end (for a decoder's next-token logits, its last
    hidden row)."""
    P = len(bounds)
    order = list(range(P)) if order is None else list(order)
    heads, channels = shape.row_shape(config.exchange)
    config = config.for_tokens(bounds[-1][1])
    per_layer = [config.for_layer(i) for i in range(shape.num_layers)]  # dense layers send and read more rows
    costs = {}
    for cfg in dict.fromkeys(per_layer):  # at most two settings: the config and its dense layers'
        costs[cfg] = (payload_layouts(cfg, bounds, causal=causal, batch=1, heads=heads, channels=channels, dtype=dtype),
                      *compute_seconds(bounds, devices, shape, cfg, causal=causal, order=order))
    seen = [visible_chunks(c, P, causal, bounds=bounds) for c in range(P)]
    to = [readers(c, P, causal, bounds=bounds) for c in range(P)]
    done = [0.0] * P
    uplink = [0.0] * P  # when each sender's uplink is free again
    for cfg in per_layer:
        layouts, local, remote = costs[cfg]
        arrive = {}
        for c in range(P):
            for r in to[c]:  # c starts the layer at done[c] and sends to its readers in turn
                link = links[order[c]][order[r]]
                uplink[c] = max(uplink[c], done[c]) + layouts[c].nbytes / link.bytes_s
                arrive[c, r] = uplink[c] + link.latency_s
        done = [max([done[c] + local[c]] + [arrive[s, c] for s in seen[c]]) + remote[c] for c in range(P)]
    if result_bytes and P > 1:
        back = links[order[-1]][order[0]]
        done[-1] += back.latency_s + result_bytes / back.bytes_s
    return done


def one_device_seconds(N: int, device: Device, shape: ModelShape, *, causal: bool) -> float:
    """The exact model on one device, all N tokens."""
    return shape.num_layers * (2 * N * shape.linear_macs_per_token() / device.linear_flops_s
                               + 2 * 2 * shape.num_heads * shape.head_dim * block_pairs(N, causal)
                               / device.block_rate(causal))


def _bounds(sizes):
    out, start = [], 0
    for s in sizes:
        out.append((start, start + s))
        start += s
    return out


def _orders(devices, causal: bool) -> list:
    """The chunk orders tried: every one up to 3 ranks (else rank order and slowest first); for
    a decoder only those whose last chunk, the one that decodes, is on a fastest device."""
    P = len(devices)
    if P <= 3:
        out = [list(o) for o in itertools.permutations(range(P))]
    else:
        slow_first = sorted(range(P), key=lambda r: (devices[r].speed(), -r))
        out = [list(range(P))] + ([slow_first] if slow_first != list(range(P)) else [])
    if not causal:
        return out
    top = devices[fastest(devices)].speed()
    fast_last = [o for o in out if devices[o[-1]].speed() == top]
    return fast_last or [sorted(range(P), key=lambda r: devices[r].speed())]


def _search(N, devices, links, shape, config, causal, dtype, order, result_bytes):
    """(slowest, total, per chunk, sizes): the best sizes found for one chunk order."""
    P = len(devices)
    speed = [devices[r].linear_flops_s for r in order]
    sizes = [max(1, int(N * s / sum(speed))) for s in speed]
    sizes[max(range(P), key=lambda c: speed[c])] += N - sum(sizes)

    def cost(sz):
        t = predict(_bounds(sz), devices, links, shape, config, causal=causal, dtype=dtype, order=order,
                    result_bytes=result_bytes)
        return max(t), sum(t), t, sz

    best = cost(sizes)
    step = max(1, N // (4 * P))
    while step >= 1:
        improved = True
        while improved:
            improved = False
            for i in range(P - 1):
                for a, b in ((i, i + 1), (i + 1, i)):  # move `step` tokens from chunk a to its neighbour b
                    if best[3][a] - step < 1:
                        continue
                    trial = list(best[3])
                    trial[a] -= step
                    trial[b] += step
                    got = cost(trial)
                    if got[:2] < best[:2]:
                        best, improved = got, True
        step //= 2
    return best


def balanced_split(N: int, devices, links, shape: ModelShape, config: PrismConfig, *, causal: bool,
                   dtype: torch.dtype = torch.float32, orders=None, result_bytes: int = 0) -> Split:
    """The bounds (and chunk order) that minimise the slowest rank's predicted time, and whether
    they beat the fastest device alone. orders: the chunk orders to try (default: see the module
    docstring; [[0, 1, ...]] keeps chunk c on rank c); result_bytes: as `predict` takes it."""
    _check(N, devices, links, config)
    P = len(devices)
    tried = _orders(devices, causal) if orders is None else [list(o) for o in orders]
    for o in tried:
        if sorted(o) != list(range(P)):
            raise ValueError(f"orders: each must be a permutation of the {P} ranks, got {o!r}")
    best = None
    for o in tried:
        got = _search(N, devices, links, shape, config, causal, dtype, o, result_bytes)
        if best is None or got[:2] < best[0][:2]:
            best = (got, o)
    (slowest, _, per_chunk, sizes), order = best
    first = fastest(devices)
    alone = one_device_seconds(N, devices[first], shape, causal=causal)
    return Split(bounds=_bounds(sizes), order=order, seconds=slowest, per_rank=per_chunk, one_device_s=alone,
                 fastest=first, distribute=slowest < alone)
