"""One PRISM attention layer for P ranks, simulated in one process on full-sequence q/k/v.

T is cut into `num_partitions` contiguous chunks (`partition_bounds`). Chunk p attends exactly
to its own tokens and to summary rows standing for the other chunks (only earlier chunks when
causal): each other chunk's segment means on its own fixed segment grid, as that rank would
send them. Two levers make some tokens exact rows (count 1) for chunk p:
- sink_tokens: the first `sink_tokens` tokens of the sequence, for every chunk;
- halo: the `halo` tokens on each side of chunk p's boundaries (the preceding side only when
  causal).
A token that is exact for chunk p is left out of the segment means chunk p uses, so nothing is
counted twice. (A real rank can do that on receipt: it knows each segment's sum = mean * count
and the exact tokens it was sent.) Padding (`valid` False) is excluded everywhere.
Two more levers change what a summary row is, not how many there are:
- cluster_iters: rows are means of key clusters (`token_clusters`) instead of positional
  segments, computed once per chunk as its rank would;
- summary_bits: rows travel quantized (`quantize_rows`), per channel over the chunk's rows.
  With `hidden` and `kv_weight` the rows are the hidden features that feed attention (the
  paper's exchange): their quantization error reaches K and V through the receiver's
  projection. Without them the K/V rows themselves are quantized.

Shapes: q `[B, H, T, D]`, k and v `[B, Hkv, T, D]`, valid `[B, T]`, hidden `[B, T, d]`,
kv_weight two `[Hkv * D, d]` matrices; returns `[B, H, T, D]`.
"""

from __future__ import annotations

import torch

from .._checks import check_int, check_mask, check_same, check_tensor, check_weights
from .prism_attention import prism_attention
from .quantize_rows import check_bits, quantize_rows
from .segment_means import num_summary_rows, segment_means
from .token_clusters import cluster_means, token_clusters


def partition_bounds(T: int, num_partitions: int, weights=None) -> list[tuple[int, int]]:
    """[start, end) of each chunk of T tokens.

    Without weights the sizes differ by at most one, earlier chunks larger. With weights
    (e.g. relative device speeds) sizes are proportional to them (largest remainders), each
    chunk at least one token.
    """
    check_int(num_partitions, "num_partitions", 1, max(T, 1), f" (at most T={T} tokens)")
    P = num_partitions
    if weights is None:
        base, extra = divmod(T, P)
        sizes = [base + (1 if p < extra else 0) for p in range(P)]
    else:
        w = check_weights(weights, P)
        ideal = [T * x / sum(w) for x in w]
        sizes = [max(1, int(x)) for x in ideal]
        # Hand out what flooring left over by largest remainder; take back what the
        # one-token minimum overshot from the largest chunks.
        by_rem = sorted(range(P), key=lambda p: ideal[p] - int(ideal[p]), reverse=True)
        for p in by_rem[: max(0, T - sum(sizes))]:
            sizes[p] += 1
        while sum(sizes) > T:
            sizes[max(range(P), key=lambda p: sizes[p])] -= 1
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


def _exact_tokens(T, start, end, sink_tokens, halo, causal, device):
    """Bool [T]: tokens chunk [start, end) sees exactly (own, sinks, halo)."""
    idx = torch.arange(T, device=device)
    exact = (idx >= start) & (idx < end)
    exact |= idx < sink_tokens
    exact |= (idx >= start - halo) & (idx < start)
    if not causal:
        exact |= (idx >= end) & (idx < end + halo)
    else:
        exact &= idx < end  # nothing from the future, even a sink
    return exact


def partitioned_attention(
    q, k, v, *, num_partitions, segment_size, causal=False, scale=None, log_count_bias=True,
    sink_tokens=0, halo=0, valid=None, weights=None, cluster_iters=0, summary_bits=0, hidden=None,
    kv_weight=None, backend="auto",
):
    """PRISM attention over `num_partitions` contiguous chunks of T, in one process.

    Args:
        q: `[B, H, T, D]`; k, v: `[B, Hkv, T, D]` (H a multiple of Hkv).
        num_partitions: P, number of ranks simulated, 1 <= P <= T.
        segment_size: tokens per summary row (the compression rate), >= 1.
        causal: decoder mask: lower-triangular locally, earlier chunks' summaries only.
        scale, log_count_bias: as in `prism_attention`.
        sink_tokens: first tokens of the sequence kept exact for every chunk.
        halo: tokens next to each chunk boundary kept exact for the neighbouring chunk.
        valid: optional bool `[B, T]`, False = padding (ignored as key and in summaries).
        weights: optional relative chunk sizes (e.g. device speeds), see `partition_bounds`.
        cluster_iters: 0 for positional segments (the paper); k > 0 for k Lloyd iterations of
            key clustering per chunk (same number of rows).
        summary_bits: 0 to send summaries at full precision, or 2, 3, 4, 8.
        hidden, kv_weight: the attention input `[B, T, d]` and the receiver's key and value
            projections (w_k, w_v), each `[Hkv * D, d]`: hidden-feature exchange. They matter
            only with summary_bits (averaging commutes with the affine projection).
        backend: "auto", "torch" or "triton".

    Returns:
        `[B, H, T, D]`: what the P ranks would compute, concatenated along T.
        segment_size=1 or num_partitions=1 give exact attention.
    """
    check_tensor(q, "q", "[B, H, T, D]", 4)
    check_tensor(k, "k", "[B, Hkv, T, D]", 4)
    T = q.shape[2]
    if k.shape[2] != T:
        raise ValueError(f"k must cover the same T={T} tokens as q (shape [B, Hkv, T, D]), got T={k.shape[2]}")
    check_int(segment_size, "segment_size", 1)
    check_int(sink_tokens, "sink_tokens", 0)
    check_int(halo, "halo", 0)
    check_int(cluster_iters, "cluster_iters", 0)
    check_bits(summary_bits)
    bounds = partition_bounds(T, num_partitions, weights)
    B = q.shape[0]
    if valid is not None:
        check_mask(valid, "valid", B, T, q.device)
    if hidden is not None:
        _check_hidden(hidden, kv_weight, k)
    valid_bt = valid if valid is not None else torch.ones((B, T), dtype=torch.bool, device=q.device)
    kv = torch.cat([k, v], dim=-1)  # keys and values are averaged together
    D = k.shape[-1]

    # What each chunk's rank sends, whoever receives it: its tokens after the global sinks
    # (those travel exact), grouped into S rows by position or by key cluster.
    groups = []
    for c0, c1 in bounds:
        s0 = min(max(sink_tokens, c0), c1)
        S = num_summary_rows(c1 - s0, segment_size)
        assign = None
        if cluster_iters and S:
            keys = k[:, :, s0:c1].transpose(1, 2).reshape(B, c1 - s0, -1)
            assign = token_clusters(keys, S, valid_bt[:, s0:c1], cluster_iters)
        groups.append((s0, S, assign))

    outs, shared = [], {}
    for p, (start, end) in enumerate(bounds):
        exact = _exact_tokens(T, start, end, sink_tokens, halo, causal, q.device)
        own = torch.zeros(T, dtype=torch.bool, device=q.device)
        own[start:end] = True
        rows, counts = [], []
        # Exact rows from outside the chunk (sinks, halo): count 1, or 0 for padding.
        extra = torch.nonzero(exact & ~own).flatten()
        if extra.numel():
            rows.append(kv[:, :, extra])
            counts.append(valid_bt[:, extra].to(torch.int32))
        # Summaries of every other chunk it may see, with its exact tokens left out.
        for c, (c0, c1) in enumerate(bounds):
            s0, S, assign = groups[c]
            if c == p or (causal and c > p) or S == 0:
                continue
            # Only halo tokens make a chunk's summary depend on who receives it; without them
            # every receiver gets the same rows, computed once.
            personal = bool(exact[s0:c1].any())
            if personal or c not in shared:
                keep = valid_bt[:, s0:c1] & ~exact[s0:c1]
                summary = _summary(kv[:, :, s0:c1], None if hidden is None else hidden[:, None, s0:c1],
                                   segment_size, keep, assign, S, summary_bits, kv_weight, backend)
                if not personal:
                    shared[c] = summary
            means, cnt = summary if personal else shared[c]
            rows.append(means)
            counts.append(cnt)
        k_sum = v_sum = sum_counts = None
        if rows:
            summary = torch.cat(rows, dim=2)  # (B, Hkv, S, 2D)
            k_sum, v_sum = summary[..., :D], summary[..., D:]
            sum_counts = torch.cat(counts, dim=1)
        outs.append(
            prism_attention(
                q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], k_sum, v_sum, sum_counts,
                causal=causal, scale=scale, log_count_bias=log_count_bias,
                k_valid=None if valid is None else valid[:, start:end], backend=backend,
            )
        )
    return torch.cat(outs, dim=2)


def _summary(kv, hidden, segment_size, keep, assign, S, bits, kv_weight, backend):
    """The K/V rows `[B, Hkv, S, 2D]` and counts `[B, S]` one chunk sends, after quantization."""
    means, cnt = _group_means(kv, segment_size, keep, assign, S, backend)
    if bits:
        sent = (cnt > 0)[:, None, :, None]
        if hidden is None:
            means = quantize_rows(means, bits, sent)
        else:
            means = means + _projected_error(hidden, segment_size, keep, assign, S, bits, sent, kv_weight,
                                             kv.shape[1], backend)
    return means, cnt


def _group_means(x, segment_size, keep, assign, S, backend):
    """Rows of x `[B, H, n, C]` for one chunk: segment means, or cluster means when assigned."""
    if assign is None:
        return segment_means(x, segment_size, valid=keep, backend=backend)
    return cluster_means(x, assign, S, keep)


def _projected_error(hidden, segment_size, keep, assign, S, bits, sent, kv_weight, Hkv, backend):
    """What quantizing the hidden-feature rows changes in the K/V rows: `[B, Hkv, S, 2D]`."""
    h_means, _ = _group_means(hidden, segment_size, keep, assign, S, backend)  # (B, 1, S, d)
    err = (quantize_rows(h_means, bits, sent) - h_means)[:, 0]  # (B, S, d)
    B = err.shape[0]
    # w_k, w_v: (Hkv * D, d). The projection is affine, so its bias cancels in a difference.
    parts = [(err.to(w.dtype) @ w.T).view(B, S, Hkv, -1).transpose(1, 2) for w in kv_weight]
    return torch.cat(parts, -1).to(hidden.dtype)


def _check_hidden(hidden, kv_weight, k):
    B, Hkv, T, D = k.shape
    check_tensor(hidden, "hidden", f"[B, T, d] = [{B}, {T}, d]", 3)
    if tuple(hidden.shape[:2]) != (B, T):
        raise ValueError(f"hidden must have shape [B, T, d] = [{B}, {T}, d], got {list(hidden.shape)}")
    if kv_weight is None or len(kv_weight) != 2:
        raise ValueError("kv_weight must be (w_k, w_v), the key and value projections, with hidden")
    for w, name in zip(kv_weight, ("kv_weight[0]", "kv_weight[1]")):
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != (Hkv * D, hidden.shape[2]):
            shape = list(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"{name} must be a [Hkv * D, d] = [{Hkv * D}, {hidden.shape[2]}] tensor, got {shape}")
        check_same(w, hidden, name, "hidden")
