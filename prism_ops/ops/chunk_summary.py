"""What one rank sends per layer, and which of it a receiver attends to.

The sequence is cut into contiguous chunks, one per rank (`partition_bounds`). Chunk c
`[c0, c1)` is laid out by `chunk_layout` as

    [c0, a)  verbatim rows: sink tokens (the first `sink_tokens` of the sequence) and, with halo,
             its first `halo` tokens (for the previous rank; not when causal)
    [a, b)   summary rows: segment means on a grid starting at a (or key-cluster means)
    [b, c1)  verbatim rows: with halo, its last `halo` tokens (for the next rank)

Every rank computes every chunk's layout from the bounds, so nothing but the rows travels.
The all-gather delivers a chunk's whole payload to every rank, so every receiver that may see
chunk c (all others; only earlier ones when causal) attends to all of its rows: verbatim rows with
count 1, summary rows with their counts. Padding (`keep` False) gets count 0 and is ignored.

The simulation (`partitioned_attention`) and the MPI runtime (`prism_ops.distributed`) both
build rows with these functions, so they agree by construction up to the transport.

Shapes: x `[B, H, n, C]` (H heads of C channels over the chunk's n tokens; K|V concatenated,
or hidden features with H = 1), keep `[B, n]`. Rows `[B, H, R, C]`, counts `[B, R]` int32.
"""

from __future__ import annotations

import torch

from .heavy_rows import heavy_rows_count, heavy_summary
from .segment_means import num_summary_rows, segment_means
from .token_clusters import cluster_means, token_clusters


def chunk_layout(bounds, c: int, *, sink_tokens: int, halo: int, causal: bool) -> tuple[int, int]:
    """(a, b) of chunk c: verbatim rows [c0, a) and [b, c1), summary rows over [a, b)."""
    c0, c1 = bounds[c]
    first = halo if (not causal and c > 0) else 0
    last = halo if c < len(bounds) - 1 else 0
    a = max(c0, min(c1, max(sink_tokens, c0 + first)))
    b = max(a, c1 - last)
    return a, b


def summary_count(bounds, c: int, segment_size: int, *, window=None, heavy: float = 0.0,
                  **layout) -> tuple[int, int]:
    """(verbatim rows, summary rows) chunk c sends (with a sliding window: those some reader sees;
    with `heavy`, the heavy_fraction lever: its picked tokens' rows, then the segments')."""
    c0, c1 = bounds[c]
    a, b = chunk_layout(bounds, c, **layout)
    exact, summary = (a - c0) + (c1 - b), heavy_rows_count(b - a, segment_size, heavy)
    if window is None:
        return exact, summary
    if heavy:
        raise ValueError(f"heavy_fraction={heavy} with window={window}: picked tokens leave segments with gaps, "
                         "which a sliding window cannot place; use heavy_fraction=0 on a windowed model")
    keep = reached_rows(bounds, c, segment_size, window=window, **layout)
    return int(keep[:exact].sum()), int(keep[exact:].sum())


def chunk_clusters(k, keep, a: int, b: int, segment_size: int, iters: int):
    """Key-cluster assignment `[B, b - a]` of the summarised tokens, or None for segments.

    k `[B, Hkv, n, D]` are the chunk's keys; a, b are relative to the chunk.
    """
    S = num_summary_rows(b - a, segment_size)
    if not iters or S == 0:
        return None
    B = k.shape[0]
    keys = k[:, :, a:b].transpose(1, 2).reshape(B, b - a, -1)
    return token_clusters(keys, S, keep[:, a:b], iters)


def summary_rows(x, keep, a: int, b: int, segment_size: int, assign=None, backend="auto", picked=None):
    """Chunk rows before any rounding: (exact `[B, H, E, C]`, exact counts `[B, E]`,
    means `[B, H, S, C]`, counts `[B, S]`); a, b relative to the chunk. picked `[B, b - a]`
    (the heavy_fraction lever, `heavy_rows`): those tokens' own rows lead the summary rows."""
    n = x.shape[2]
    ex = torch.cat([torch.arange(a), torch.arange(b, n)]).to(x.device)
    exact, exact_counts = x[:, :, ex], keep[:, ex].to(torch.int32)
    if picked is not None:
        return (exact, exact_counts, *heavy_summary(x[:, :, a:b], keep[:, a:b], picked, segment_size, backend))
    S = num_summary_rows(b - a, segment_size)
    if assign is not None:
        means, counts = cluster_means(x[:, :, a:b], assign, S, keep[:, a:b])
    else:
        means, counts = segment_means(x[:, :, a:b], segment_size, valid=keep[:, a:b], backend=backend)
    return exact, exact_counts, means, counts


def visible_chunks(p: int, num_chunks: int, causal: bool, *, bounds=None, window=None) -> list[int]:
    """Chunks whose rows rank p attends to: every other one, or only earlier ones when causal.

    With a sliding window (a query at t sees keys at distance < window) and the bounds, a chunk
    wholly outside the window of every query of chunk p is left out: it is never sent to p.
    """
    out = [c for c in range(num_chunks) if c != p and (c < p or not causal)]
    if window is None:
        return out
    (p0, p1) = bounds[p]
    # The nearest pair of positions of two disjoint ranges: p's first query and c's last key
    # (c before p), or c's first key and p's last query (c after p).
    return [c for c in out if (p0 - (bounds[c][1] - 1) if c < p else bounds[c][0] - (p1 - 1)) < window]


def row_spans(bounds, c: int, segment_size: int, **layout) -> torch.Tensor:
    """`[R, 2]` int64 (start, end) positions of chunk c's rows, in `summary_rows` order: its exact
    rows (one token each), then its segments over [a, b) (a last one may be shorter)."""
    c0, c1 = bounds[c]
    a, b = chunk_layout(bounds, c, **layout)
    exact = torch.cat([torch.arange(c0, a), torch.arange(b, c1)])
    starts = torch.arange(a, b, segment_size)
    ends = torch.clamp(starts + segment_size, max=b)
    return torch.cat([torch.stack([exact, exact + 1], 1), torch.stack([starts, ends], 1)]).to(torch.int64)


def reached_rows(bounds, c: int, segment_size: int, *, sink_tokens: int, halo: int, causal: bool,
                 window) -> torch.Tensor:
    """`[R]` bool over chunk c's rows (`row_spans` order): True for a row whose whole span some
    query of some reader sees under the sliding window (so it is sent), False for one no reader's
    window ever holds whole (left out of the payload: it would be masked everywhere).

    A reader after c sees a row over [a, b) iff its first query t0 has t0 - a < window; a reader
    before c iff (b - 1) - t1 < window for its last query t1 (the nearest queries; causal
    readers are only after c).
    """
    spans = row_spans(bounds, c, segment_size, sink_tokens=sink_tokens, halo=halo, causal=causal)
    keep = torch.zeros(spans.shape[0], dtype=torch.bool)
    for p in range(len(bounds)):
        if c not in visible_chunks(p, len(bounds), causal):
            continue
        p0, p1 = bounds[p]
        keep |= (p0 - spans[:, 0] < window) if p > c else (spans[:, 1] - p1 < window)
    return keep


def visible_spans(bounds, p: int, segment_size: int, *, sink_tokens: int, halo: int, causal: bool,
                  window=None) -> torch.Tensor:
    """`[S, 2]` spans of the rows `visible_rows` gives rank p, in the same order (with a window,
    only the rows each chunk sends: `reached_rows`)."""
    layout = dict(sink_tokens=sink_tokens, halo=halo, causal=causal)
    spans = []
    for c in visible_chunks(p, len(bounds), causal, bounds=bounds, window=window):
        s = row_spans(bounds, c, segment_size, **layout)
        spans.append(s if window is None else s[reached_rows(bounds, c, segment_size, window=window, **layout)])
    return torch.cat(spans) if spans else torch.zeros((0, 2), dtype=torch.int64)


def trim_rows(rows, bounds, c: int, segment_size: int, *, window, **layout):
    """(exact, exact_counts, means, counts) of chunk c (as `summary_rows` gives them) cut to the
    rows it sends under a sliding window (`reached_rows`); unchanged without one. Means are cut
    before any rounding, so the rounding scales are those of the rows sent."""
    if window is None:
        return rows
    exact, exact_counts, means, counts = rows
    keep = reached_rows(bounds, c, segment_size, window=window, **layout).to(exact.device)
    E = exact.shape[2]
    ke, ks = keep[:E], keep[E:]
    return exact[:, :, ke], exact_counts[:, ke], means[:, :, ks], counts[:, ks]


def visible_rows(rows, p: int, causal: bool, *, bounds=None, window=None):
    """(k_sum, v_sum, counts) rank p attends to, from rows[c] = (kv `[B, Hkv, R_c, 2D]`,
    counts `[B, R_c]`) of every chunk (None for a chunk p does not see); (None, None, None) when
    it sees none. With window and bounds, chunks outside every query's window are left out."""
    seen = [rows[c] for c in visible_chunks(p, len(rows), causal, bounds=bounds, window=window)
            if rows[c][1].shape[1]]
    if not seen:
        return None, None, None
    kv = torch.cat([r[0] for r in seen], dim=2)
    D = kv.shape[-1] // 2
    return kv[..., :D], kv[..., D:], torch.cat([r[1] for r in seen], dim=1)
