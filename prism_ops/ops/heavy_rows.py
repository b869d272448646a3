"""heavy_rows: a chunk's most-attended tokens sent as rows of their own, the rest as segment means.

The `heavy_fraction` lever (the `lean` preset). Of the tokens a chunk summarises (`[a, b)` in
`chunk_summary`), the sender picks the `heavy_count` it expects other ranks to attend to most,
and sends each as a row of its own (count 1). The rest ("light" tokens) are averaged on the
segment grid as before, each segment over its light tokens only, with +ln(count). Summaries
then cost about `heavy_fraction + 1 / segment_size` rows per token instead of one.

Which tokens: the attention the chunk's own queries pay them (heavy hitters, as H2O and SnapKV
score a KV cache), summed over all heads, so one pick serves every head and the counts stay
`[B, R]`. A decoder's chunk is read by later ranks only, so its last `SCORE_QUERIES` queries
score (the queries nearest to its readers); an encoder's chunk is read on both sides, so its
first and last `SCORE_QUERIES` do. Padding is never picked while real tokens are left.

The picks travel as a bitmap over `[a, b)` (`prism_ops.wire`: B * (b - a) bits); every receiver
derives every row's count from it and the padding mask (`picked_counts`), so nothing else
travels.

Shapes: q `[B, H, n, D]`, k `[B, Hkv, n, D]` (a chunk's n tokens; H a multiple of Hkv), keep
`[B, n]` (True = real token), x `[B, Hr, n, C]` rows of any kind, picked `[B, b - a]` bool.
"""

from __future__ import annotations

import math

import torch

from .segment_means import num_summary_rows, segment_means

# Queries that score a chunk's tokens. 64 beat 16, 32, 256 and all of a 1024-token chunk on
# SmolLM2's perplexity (docs/LOWBIT.md): nearer queries predict what the next rank reads.
SCORE_QUERIES = 64


def check_heavy_fraction(fraction, name: str = "heavy_fraction") -> float:
    """0 (off) or a fraction in (0, 1): the share of summarised tokens sent as their own rows."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
        raise ValueError(f"{name} must be a number in [0, 1) (0 = off), got {fraction!r}")
    if not 0 <= fraction < 1:
        raise ValueError(f"{name} must be in [0, 1) (0 = off; 1 would send every token: use segment_size=1), "
                         f"got {fraction!r}")
    return float(fraction)


def heavy_count(tokens: int, fraction: float) -> int:
    """How many of `tokens` summarised tokens are sent as their own rows."""
    return min(tokens, math.ceil(tokens * fraction)) if fraction else 0


def heavy_rows_count(tokens: int, segment_size: int, fraction: float) -> int:
    """Summary rows of `tokens` summarised tokens: the picked ones, then one per segment."""
    return heavy_count(tokens, fraction) + num_summary_rows(tokens, segment_size)


def heavy_scores(q, k, keep, causal: bool):
    """`[B, n]` float32 (float64 for float64 q): the attention the chunk's scoring queries pay each of its tokens, summed
    over heads and queries (softmax over the chunk's own keys, causal for a decoder). Padding
    keys score -inf; padding queries pay nothing."""
    B, H, n, D = q.shape
    G = H // k.shape[1]
    if causal or n <= 2 * SCORE_QUERIES:
        rows = torch.arange(max(0, n - SCORE_QUERIES), n) if causal else torch.arange(n)
    else:
        rows = torch.cat([torch.arange(SCORE_QUERIES), torch.arange(n - SCORE_QUERIES, n)])
    rows = rows.to(q.device)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qs, kf = q[:, :, rows].to(acc), k.to(acc).repeat_interleave(G, 1)
    logits = (qs @ kf.transpose(-1, -2)) * D**-0.5  # (B, H, W, n); the scale only sharpens, a fixed one will do
    hide = ~keep[:, None, None, :]
    if causal:
        hide = hide | (torch.arange(n, device=q.device)[None, :] > rows[:, None])
    logits = logits.masked_fill(hide, float("-inf"))
    probs = torch.nan_to_num(logits.softmax(-1), nan=0.0)  # a query with no visible key pays nothing
    probs = probs * keep[:, None, rows, None]
    scores = probs.sum((1, 2))
    return scores.masked_fill(~keep, float("-inf"))


def pick_heavy(scores, a: int, b: int, fraction: float):
    """`[B, b - a]` bool: the `heavy_count(b - a, fraction)` best-scored tokens of `[a, b)`."""
    B = scores.shape[0]
    count = heavy_count(b - a, fraction)
    picked = torch.zeros((B, b - a), dtype=torch.bool, device=scores.device)
    if count:
        picked.scatter_(1, scores[:, a:b].topk(count, dim=1).indices, True)
    return picked


def _picked_index(picked):
    """`[B, K]` positions of the picked tokens, in order (every batch row picks the same count K)."""
    B = picked.shape[0]
    K = int(picked[0].sum()) if B else 0
    return picked.nonzero()[:, 1].view(B, K)


def heavy_summary(x, keep, picked, segment_size: int, backend="auto"):
    """(rows `[B, Hr, K + S, C]`, counts `[B, K + S]` int32) of summarised tokens x `[B, Hr, m, C]`:
    the K picked tokens in order, then the light tokens' segment means (S segments)."""
    B, Hr, m, C = x.shape
    idx = _picked_index(picked)
    heavy = x.gather(2, idx[:, None, :, None].expand(B, Hr, idx.shape[1], C))
    light = keep & ~picked
    means, counts = segment_means(x, segment_size, valid=light, backend=backend)
    return torch.cat([heavy, means], 2), torch.cat([keep.gather(1, idx).to(torch.int32), counts], 1)


def picked_counts(keep, picked, segment_size: int):
    """`[B, K + S]` int32: the counts of `heavy_summary`'s rows, from the picks and the padding
    mask alone (what a receiver knows)."""
    idx = _picked_index(picked)
    light = keep & ~picked
    counts = segment_means(light[:, None, :, None].float(), segment_size, valid=light, backend="torch")[1]
    return torch.cat([keep.gather(1, idx).to(torch.int32), counts], 1)
