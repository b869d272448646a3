"""How one attention layer is partitioned, and the state one request carries through the layers.

A model configured by `prism_ops.hf.configure` has one small `PrismLayer` object per attention
module (attribute `prism_layer`): the frozen `PrismConfig`, the layer's index and head dim, its
key/value projections, and a partition strategy:

    SimulatedPartitions     all P partitions in this process (`partitioned_attention`)
    RankPartition           this process is one MPI rank (`prism_ops.distributed.attention`)

A strategy's `attend(layer, q, k, v, *, valid, hidden, scale, causal, state)` returns this
process's output `[B, H, n, D]` and, for a causal model, the rows its last partition attended to
(a `CachedRows`: what a decoding rank caches), else None. A layer with a sliding window or a
logit cap (`layer.window`, `layer.softcap`) runs `window_attention` on token positions.

Per-request state (partition bounds and padding on MPI ranks, rows cached for decoding) lives
in a `RequestState` that the runtime creates and scopes with `request_scope`; nothing
per-request is stored on a module. Outside any scope a forward runs with no state: fine for a
full-sequence forward, while decoding (a KV cache) needs the rows of its prefill, so prefill and
decode must share one scope:

    with prism_ops.request_scope():
        model.generate(ids, max_new_tokens=8)
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from dataclasses import dataclass, field

import torch

from .ops.chunk_summary import visible_spans
from .ops.codebook_attention import codebook_partitioned_attention
from .ops.partitioned_attention import partition_bounds, partitioned_attention

LAYER_ATTR = "prism_layer"  # the attribute of an attention module that holds its PrismLayer


@dataclass
class RequestState:
    """One request's state, shared by all layers of one forward (and its decoding steps).

    bounds: every rank's token range [start, end) (MPI ranks; None when simulated).
    valid: the padding mask of the whole sequence `[B, N]`, True = real token (MPI ranks).
    rows: layer index -> the `CachedRows` of the prefill, for decoding.
    """

    bounds: list | None = None
    valid: torch.Tensor | None = None
    rows: dict = field(default_factory=dict)


@dataclass
class CachedRows:
    """What the last partition of a decoder keeps per layer from its prefill, to decode with.

    start: the index in its KV cache of its own first token (keys before it are earlier
        partitions', seen only through the rows).
    k_sum, v_sum `[B, Hkv, S, D]`, counts `[B, S]`: the rows it attended to (None when none).
    spans `[S, 2]`: the rows' (start, end) positions (sliding-window or soft-capped layers).
    pos0: the position of its KV cache's index 0 at prefill; end: the positions seen so far
        (prefill, then each decoding step), so a window-cropped cache is still placed right.
    """

    start: int
    k_sum: torch.Tensor | None
    v_sum: torch.Tensor | None
    counts: torch.Tensor | None
    spans: torch.Tensor | None = None
    pos0: int = 0
    end: int = 0


_CURRENT: contextvars.ContextVar[RequestState | None] = contextvars.ContextVar("prism_request", default=None)
# How many request scopes are open now, in any thread or context. While none is, current_state()
# is None without reading the ContextVar, which torch.compile cannot trace: a plain forward
# compiles with fullgraph=True.
_open_scopes = 0
_scopes_lock = threading.Lock()


def _count_scope(step: int) -> None:
    global _open_scopes
    with _scopes_lock:
        _open_scopes += step


@contextlib.contextmanager
def request_scope(state: RequestState | None = None):
    """Make `state` (a fresh one by default) the current request for the block; yields it."""
    state = RequestState() if state is None else state
    token = _CURRENT.set(state)
    _count_scope(1)
    try:
        yield state
    finally:
        _count_scope(-1)
        _CURRENT.reset(token)


def current_state() -> RequestState | None:
    """The RequestState of the enclosing `request_scope`, or None."""
    if not _open_scopes:
        return None
    return _CURRENT.get()


def attached_layers(model) -> list:
    """The PrismLayer objects of a configured model, in layer order."""
    return [getattr(m, LAYER_ATTR) for m in model.modules() if getattr(m, LAYER_ATTR, None) is not None]


class SimulatedPartitions:
    """All `config.num_partitions` partitions in this process, on the full sequence."""

    def attend(self, layer, q, k, v, *, valid, hidden, scale, causal, state):
        cfg = layer.config
        kw = {}
        if cfg.exchange == "hidden" and (cfg.summary_bits or cfg.summary_codebook):
            # Averaging commutes with the projection; only rounding needs the hidden features.
            kw.update(hidden=hidden, kv_weight=layer.kv_weight())
        common = dict(num_partitions=cfg.num_partitions, segment_size=cfg.segment_size,
                      causal=causal and q.shape[2] > 1, scale=scale, log_count_bias=cfg.log_count_bias,
                      sink_tokens=cfg.sink_tokens, halo=cfg.halo, valid=valid, weights=cfg.weights,
                      cluster_iters=cfg.cluster_iters, backend=cfg.backend, return_rows=causal, **kw)
        windowed = layer.window is not None or layer.softcap is not None
        if cfg.summary_codebook:
            out = codebook_partitioned_attention(q, k, v, layer.codebook, **common)
        elif windowed:
            out = partitioned_attention(q, k, v, summary_bits=cfg.summary_bits, window=layer.window,
                                        softcap=layer.softcap, **common)
        else:
            out = partitioned_attention(q, k, v, summary_bits=cfg.summary_bits, **common)
        if not causal:
            return out, None
        out, seen = out
        # What the last partition attended to: its rank would decode with these cached rows.
        T = q.shape[2]
        bounds = partition_bounds(T, cfg.num_partitions, cfg.weights)
        spans = None
        if windowed:
            spans = visible_spans(bounds, len(bounds) - 1, cfg.segment_size, sink_tokens=cfg.sink_tokens,
                                  halo=cfg.halo, causal=common["causal"], window=layer.window)
        return out, CachedRows(bounds[-1][0], *seen[-1], spans=spans, pos0=0, end=T)
