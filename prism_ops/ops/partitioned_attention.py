"""One PRISM attention layer for P ranks, simulated in one process on full-sequence q/k/v.

T is cut into `num_partitions` contiguous chunks (`partition_bounds`). Chunk p attends exactly
to its own tokens and to the rows the other chunks send (only earlier chunks when causal),
built by `chunk_summary` exactly as each rank builds its all-gather payload: segment means on
the chunk's own fixed grid, plus verbatim rows (count 1) from two levers:
- sink_tokens: the first `sink_tokens` tokens of the sequence;
- halo: each chunk's `halo` tokens next to its boundaries (only the last ones when causal:
  nobody earlier may see the first ones). They are left out of the chunk's segment means.
Padding (`valid` False) is excluded everywhere.
With a sliding `window` or a logit `softcap` (`window_attention`: a summary row is seen by a query
only when its whole span is inside the query's window; the cap applies before +ln(count)), a
chunk sends only the rows some reader's window holds whole (`chunk_summary.reached_rows`), and
none to a rank whose queries it is wholly out of reach of.
Two more levers change what a summary row is, not how many there are:
- cluster_iters: rows are means of key clusters (`token_clusters`) instead of positional
  segments, computed once per chunk as its rank would;
- summary_bits: rows travel quantized (`quantize_rows`), per channel over the chunk's rows;
  or `round_rows`, any other rounding (`codebook_attention` codes them with a codebook).
  With `hidden` and `kv_weight` the rows are the hidden features that feed attention (the
  paper's exchange): their rounding error reaches K and V through the receiver's
  projection. Without them the K/V rows themselves are rounded.

Shapes: q `[B, H, T, D]`, k and v `[B, Hkv, T, D]`, valid `[B, T]`, hidden `[B, T, d]`,
kv_weight two `[Hkv * D, d]` matrices; returns `[B, H, T, D]`.
"""

from __future__ import annotations

import torch

from .._backend import check_backend
from .._checks import check_bool, check_float, check_int, check_mask, check_qkv, check_real, check_same, check_tensor, check_weights
from .prism_attention import prism_attention
from .heavy_rows import check_heavy_fraction, heavy_scores, pick_heavy
from .chunk_summary import chunk_clusters, chunk_layout, summary_rows, trim_rows, visible_rows, visible_spans
from .token_clusters import check_cluster_iters
from .quantize_rows import check_bits, quantize_rows, round_verbatim
from .window_attention import check_softcap, check_window, windowed_prism_attention


def partition_bounds(T: int, num_partitions: int, weights=None) -> list[tuple[int, int]]:
    """[start, end) of each chunk of T tokens.

    Without weights the sizes differ by at most one, earlier chunks larger. With weights
    (e.g. relative device speeds) sizes are proportional to them (largest remainders), each
    chunk at least one token.
    """
    check_int(T, "T", 0)
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


def partitioned_attention(
    q, k, v, *, num_partitions, segment_size, causal=False, scale=None, log_count_bias=True,
    sink_tokens=0, halo=0, valid=None, weights=None, cluster_iters=0, summary_bits=0, hidden=None,
    kv_weight=None, backend="auto", return_rows=False, window=None, softcap=None, round_rows=None,
    heavy_fraction=0.0, verbatim_dtype=None, hidden_sent=None,
):
    """PRISM attention over `num_partitions` contiguous chunks of T, in one process.

    Args:
        q: `[B, H, T, D]`; k, v: `[B, Hkv, T, D]` (H a multiple of Hkv).
        num_partitions: P, number of ranks simulated, 1 <= P <= T.
        segment_size: tokens per summary row (the compression rate), >= 1.
        causal: decoder mask: lower-triangular locally, earlier chunks' rows only.
        scale, log_count_bias: as in `prism_attention`.
        sink_tokens: first tokens of the sequence sent exact by their chunk.
        halo: tokens next to each chunk boundary sent exact (see `chunk_summary`).
        valid: optional bool `[B, T]`, False = padding (ignored as key and in summaries).
        weights: optional relative chunk sizes (e.g. device speeds), see `partition_bounds`.
        cluster_iters: 0 for positional segments (the paper); k > 0 for k Lloyd iterations of
            key clustering per chunk (same number of rows).
        summary_bits: 0 to send summaries at full precision, or 2, 3, 4, 8.
        hidden, kv_weight: the attention input `[B, T, d]` and the receiver's key and value
            projections (w_k, w_v), each `[Hkv * D, d]`: hidden-feature exchange. They matter
            only when rows are rounded (summary_bits or round_rows): averaging commutes with
            the affine projection.
        backend: "auto", "torch" or "triton".
        return_rows: also return, per chunk p, the (k_sum, v_sum, counts) it attended to
            (what a decoding rank caches).
        window: None, or a sliding window: a query at t sees keys at distance < window (see
            `window_attention` for summary rows); key clusters have no span and are refused.
        softcap: None, or a logit soft-cap (before +ln(count) for summary rows).
        round_rows: None, or how summary rows are rounded on the wire instead of summary_bits:
            a function (rows `[B, Hr, S, C]`, sent `[B, 1, S, 1]` bool) -> the rows as the
            receiver decodes them (`codebook_attention` passes codebook coding).
        heavy_fraction: 0, or this share of each chunk's summarised tokens sent as rows of their
            own, picked by the attention of the chunk's own queries (`heavy_rows`); the rest
            are averaged in segments. Not with key clusters or a window.
        verbatim_dtype: None, or the dtype the verbatim rows (sinks, halo) travel in
            (`quantize_rows.verbatim_wire_dtype`): they are rounded to it (`round_verbatim`).
        hidden_sent: None, or `[B, T, d]`: every token's hidden row as its readers decode it (delta
            codes, `delta_rows`; made across layers, so the caller keeps the chain). With hidden
            and kv_weight, segment_size 1 and no other rounding, sinks, halo or picks.

    Returns:
        `[B, H, T, D]`: what the P ranks would compute, concatenated along T (and the rows).
        segment_size=1 or num_partitions=1 give exact attention.
    """
    check_qkv(q, k, v)
    T = q.shape[2]
    if k.shape[2] != T:
        raise ValueError(f"k must cover the same T={T} tokens as q (shape [B, Hkv, T, D]), got T={k.shape[2]}")
    round_rows = _checked_levers(segment_size, sink_tokens, halo, cluster_iters, summary_bits, round_rows, window,
                                 softcap)
    heavy_fraction = check_heavy_fraction(heavy_fraction)
    if heavy_fraction and (cluster_iters or window is not None):
        other = f"cluster_iters={cluster_iters}" if cluster_iters else f"window={window}"
        raise ValueError(f"heavy_fraction={heavy_fraction} does not combine with {other}: picked tokens leave gaps in "
                         "the segment grid; set heavy_fraction=0")
    for name, flag in (("causal", causal), ("log_count_bias", log_count_bias), ("return_rows", return_rows)):
        check_bool(flag, name)
    if scale is not None:
        check_real(scale, "scale", "None (1/sqrt(D)) or a finite number > 0")
    check_backend(backend)
    bounds = partition_bounds(T, num_partitions, weights)
    B = q.shape[0]
    if valid is not None:
        check_mask(valid, "valid", B, T, q.device)
    if hidden is not None:
        _check_hidden(hidden, kv_weight, k)
    if hidden_sent is not None:
        _check_sent(hidden_sent, hidden, segment_size, sink_tokens, halo, round_rows, heavy_fraction)
    valid_bt = valid if valid is not None else torch.ones((B, T), dtype=torch.bool, device=q.device)
    kv = torch.cat([k, v], dim=-1)  # keys and values are averaged together
    layout = dict(sink_tokens=sink_tokens, halo=halo, causal=causal)
    picks = [_picks(q, k, valid_bt, bounds, c, heavy_fraction, layout) for c in range(len(bounds))]
    rows = [_sent_rows(bounds, c, k, kv, valid_bt, hidden, kv_weight, segment_size, cluster_iters, window,
                       round_rows if hidden_sent is None else _decoded_as(hidden_sent, bounds[c]),
                       backend, layout, picks[c], verbatim_dtype) for c in range(len(bounds))]

    opts = dict(causal=causal, scale=scale, log_count_bias=log_count_bias, backend=backend)
    outs, seen = _attend_chunks(q, k, v, rows, bounds, valid, window=window, softcap=softcap,
                                spans=dict(segment_size=segment_size, sink_tokens=sink_tokens, halo=halo), **opts)
    out = torch.cat(outs, dim=2)
    return (out, seen) if return_rows else out


def _checked_levers(segment_size, sink_tokens, halo, cluster_iters, summary_bits, round_rows, window, softcap):
    """The levers checked (ValueError naming each); returns how summary rows are rounded (or None)."""
    check_int(segment_size, "segment_size", 1)
    check_int(sink_tokens, "sink_tokens", 0)
    check_int(halo, "halo", 0)
    check_cluster_iters(cluster_iters)
    check_bits(summary_bits)
    check_window(window)
    check_softcap(softcap)
    if window is not None and cluster_iters:
        raise ValueError(f"cluster_iters={cluster_iters} with window={window}: a key-cluster row has no contiguous "
                         "span to test against the window; use positional segments (cluster_iters=0)")
    if summary_bits and round_rows is not None:
        raise ValueError(f"summary_bits={summary_bits} and round_rows both round the summary rows; give one")
    if summary_bits:
        def round_rows(rows, sent):
            return quantize_rows(rows, summary_bits, sent)
    return round_rows


def _check_sent(hidden_sent, hidden, segment_size, sink_tokens, halo, round_rows, heavy_fraction):
    if hidden is None:
        raise ValueError("hidden_sent needs hidden and kv_weight (hidden-feature exchange)")
    if not isinstance(hidden_sent, torch.Tensor) or hidden_sent.shape != hidden.shape:
        got = list(hidden_sent.shape) if isinstance(hidden_sent, torch.Tensor) else type(hidden_sent).__name__
        raise ValueError(f"hidden_sent must have the shape of hidden {list(hidden.shape)}, got {got}")
    levers = dict(segment_size=(segment_size, 1), sink_tokens=(sink_tokens, 0), halo=(halo, 0),
                  heavy_fraction=(heavy_fraction, 0.0))
    bad = [f"{n}={got!r}" for n, (got, want) in levers.items() if got != want]
    if round_rows is not None:
        bad.append("summary_bits or round_rows")
    if bad:
        raise ValueError(f"hidden_sent gives every token's row as decoded; it does not combine with {', '.join(bad)}")


def _decoded_as(hidden_sent, bound):
    """round_rows for delta codes: chunk [c0, c1)'s rows, with segment size 1 its tokens' hidden
    rows `[B, 1, c1 - c0, d]` in order, as hidden_sent decodes them (padding rows stay)."""
    c0, c1 = bound

    def round_rows(rows, sent):
        return torch.where(sent, hidden_sent[:, None, c0:c1].to(rows.dtype), rows)

    return round_rows


def _attend_chunks(q, k, v, rows, bounds, valid, *, window, softcap, spans, causal, scale, log_count_bias, backend):
    """Each chunk's queries against its own keys and the rows it sees: (outputs per chunk, the
    (k_sum, v_sum, counts) each chunk saw). spans: segment_size, sink_tokens and halo (the spans
    of summary rows, for a sliding window)."""
    outs, seen = [], []
    windowed = window is not None or softcap is not None
    pos = torch.arange(q.shape[2], device=q.device)
    for p, (start, end) in enumerate(bounds):
        k_sum, v_sum, sum_counts = visible_rows(rows, p, causal, bounds=bounds, window=window)
        seen.append((k_sum, v_sum, sum_counts))
        mine = (q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], k_sum, v_sum, sum_counts)
        k_valid = None if valid is None else valid[:, start:end]
        if windowed:
            sum_spans = visible_spans(bounds, p, spans["segment_size"], sink_tokens=spans["sink_tokens"],
                                      halo=spans["halo"], causal=causal, window=window).to(q.device)
            outs.append(windowed_prism_attention(
                *mine, q_pos=pos[start:end], k_pos=pos[start:end], sum_spans=sum_spans if k_sum is not None else None,
                causal=causal, window=window, softcap=softcap, scale=scale, log_count_bias=log_count_bias,
                k_valid=k_valid, backend=backend))
        else:
            outs.append(prism_attention(*mine, causal=causal, scale=scale, log_count_bias=log_count_bias,
                                        k_valid=k_valid, backend=backend))
    return outs, seen


def _picks(q, k, valid_bt, bounds, c, heavy_fraction, layout):
    """Chunk c's picked tokens `[B, b - a]` (heavy_fraction), or None."""
    if not heavy_fraction:
        return None
    c0, c1 = bounds[c]
    a, b = chunk_layout(bounds, c, **layout)
    keep = valid_bt[:, c0:c1]
    scores = heavy_scores(q[:, :, c0:c1], k[:, :, c0:c1], keep, layout["causal"])
    return pick_heavy(scores, a - c0, b - c0, heavy_fraction)


def _sent_rows(bounds, c, k, kv, valid_bt, hidden, kv_weight, segment_size, cluster_iters, window, round_rows,
               backend, layout, picked=None, verbatim_dtype=None):
    """(K|V rows `[B, Hkv, R, 2D]`, counts `[B, R]`) chunk c sends, as its receivers decode them
    (the same for every receiver): its verbatim rows (rounded to verbatim_dtype if given), then
    its summary rows, rounded by round_rows. kv is k and v side by side, `[B, Hkv, T, 2D]`.
    With hidden, the rounding is the hidden rows' (what travels), projected onto K|V."""
    c0, c1 = bounds[c]
    a, b = chunk_layout(bounds, c, **layout)
    a, b, keep = a - c0, b - c0, valid_bt[:, c0:c1]
    assign = chunk_clusters(k[:, :, c0:c1], keep, a, b, segment_size, cluster_iters)
    exact, exact_counts, means, counts = trim_rows(
        summary_rows(kv[:, :, c0:c1], keep, a, b, segment_size, assign, backend, picked), bounds, c, segment_size,
        window=window, **layout)
    rounds_exact = verbatim_dtype is not None and verbatim_dtype != kv.dtype and exact.shape[2] > 0
    h_exact = h_means = None
    if hidden is not None and (round_rows is not None or rounds_exact):
        h_rows = summary_rows(hidden[:, None, c0:c1], keep, a, b, segment_size, assign, backend, picked)
        h_exact, _, h_means, _ = trim_rows(h_rows, bounds, c, segment_size, window=window, **layout)
    if round_rows is not None:
        sent = (counts > 0)[:, None, :, None]
        if hidden is None:
            means = round_rows(means, sent)
        else:
            means = means + _projected_error(h_means, round_rows, sent, kv_weight, k.shape[1])
    if rounds_exact:
        def to_wire(rows, sent=None):
            return round_verbatim(rows, verbatim_dtype).to(rows.dtype)

        exact = to_wire(exact) if hidden is None else exact + _projected_error(h_exact, to_wire, None, kv_weight,
                                                                                 k.shape[1])
    return torch.cat([exact, means], 2), torch.cat([exact_counts, counts], 1)


def _projected_error(h_means, round_rows, sent, kv_weight, Hkv):
    """What rounding the hidden-feature rows `[B, 1, S, d]` changes in the K/V rows: `[B, Hkv, S, 2D]`."""
    err = (round_rows(h_means, sent) - h_means)[:, 0]  # (B, S, d)
    B, S = err.shape[:2]
    # w_k, w_v: (Hkv * D, d). The projection is affine, so its bias cancels in a difference.
    # (the head width spelled out: a chunk of sink tokens only has S = 0 rows, where -1 is ambiguous)
    parts = [(err.to(w.dtype) @ w.T).view(B, S, Hkv, w.shape[0] // Hkv).transpose(1, 2) for w in kv_weight]
    return torch.cat(parts, -1).to(h_means.dtype)


def _check_hidden(hidden, kv_weight, k):
    B, Hkv, T, D = k.shape
    check_tensor(hidden, "hidden", f"[B, T, d] = [{B}, {T}, d]", 3)
    check_float(hidden, "hidden")
    if hidden.device != k.device:
        raise ValueError(f"hidden is on {hidden.device} but q is on {k.device}; they must match")
    if tuple(hidden.shape[:2]) != (B, T) or hidden.shape[2] == 0:
        raise ValueError(f"hidden must have shape [B, T, d] = [{B}, {T}, d >= 1], got {list(hidden.shape)}")
    if not isinstance(kv_weight, (list, tuple)) or len(kv_weight) != 2:
        got = f"{len(kv_weight)} items" if isinstance(kv_weight, (list, tuple)) else type(kv_weight).__name__
        raise ValueError(f"kv_weight must be (w_k, w_v), the key and value projections, with hidden; got {got}")
    for w, name in zip(kv_weight, ("kv_weight[0]", "kv_weight[1]")):
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != (Hkv * D, hidden.shape[2]):
            shape = list(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"{name} must be a [Hkv * D, d] = [{Hkv * D}, {hidden.shape[2]}] tensor, got {shape}")
        check_same(w, hidden, name, "hidden")
