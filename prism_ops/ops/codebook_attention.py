"""PRISM attention simulated in one process with codebook-coded summary rows (`codebook_rows`).

The same P-chunk simulation as `partitioned_attention`, built from the same `chunk_summary`
pieces, except that each chunk's summary rows travel as codebook codes instead of per-channel
integers. With hidden-feature exchange (`hidden`, `kv_weight`) the hidden rows are coded and
their error reaches K and V through the receiver's projection; otherwise the K|V rows are coded.
Exact rows (sinks, halo) are not coded. Padding (`valid` False) is ignored everywhere.

Shapes: q `[B, H, T, D]`, k and v `[B, Hkv, T, D]`, valid `[B, T]`, hidden `[B, T, d]`,
kv_weight two `[Hkv * D, d]` matrices, codebook `[Hkv, M, K, g]` with M * g = 2D (K/V rows) or
`[1, M, K, g]` with M * g = d (hidden rows); returns `[B, H, T, D]`.
"""

from __future__ import annotations

import torch

from .._checks import check_tensor
from .chunk_summary import chunk_clusters, chunk_layout, summary_rows, visible_rows
from .codebook_rows import check_codebook, codebook_rows
from .partitioned_attention import partition_bounds
from .prism_attention import prism_attention


def codebook_partitioned_attention(q, k, v, codebook, *, num_partitions, segment_size, causal=False, scale=None,
                                   log_count_bias=True, sink_tokens=0, halo=0, valid=None, weights=None,
                                   cluster_iters=0, hidden=None, kv_weight=None, backend="auto", return_rows=False):
    """What P ranks compute when summaries travel as `codebook` codes; arguments as in
    `partitioned_attention` (its checks apply to the PrismConfig the callers hold).

    A codebook whose centroids include every summary row gives `partitioned_attention` with
    summary_bits=0 exactly.
    """
    check_tensor(q, "q", "[B, H, T, D]", 4)
    check_tensor(k, "k", "[B, Hkv, T, D]", 4)
    H, M, K, g = check_codebook(codebook)
    B, Hkv, T, D = k.shape
    want = (1, hidden.shape[2]) if hidden is not None else (Hkv, 2 * D)
    if (H, M * g) != want:
        raise ValueError(f"codebook must code rows of {want[0]} heads x {want[1]} channels, got [{H}, {M}, {K}, {g}]")
    bounds = partition_bounds(T, num_partitions, weights)
    valid_bt = valid if valid is not None else torch.ones((B, T), dtype=torch.bool, device=q.device)
    kv = torch.cat([k, v], dim=-1)

    rows = []
    for c, (c0, c1) in enumerate(bounds):
        a, b = chunk_layout(bounds, c, sink_tokens=sink_tokens, halo=halo, causal=causal)
        a, b, keep = a - c0, b - c0, valid_bt[:, c0:c1]
        assign = chunk_clusters(k[:, :, c0:c1], keep, a, b, segment_size, cluster_iters)
        exact, exact_counts, means, counts = summary_rows(kv[:, :, c0:c1], keep, a, b, segment_size, assign, backend)
        sent = (counts > 0)[:, None, :, None]
        if hidden is None:
            means = codebook_rows(means, codebook, sent)
        else:
            h_means = summary_rows(hidden[:, None, c0:c1], keep, a, b, segment_size, assign, backend)[2]
            err = (codebook_rows(h_means, codebook, sent) - h_means)[:, 0]  # (B, S, d)
            # The projection is affine: its bias cancels in a difference.
            parts = [(err.to(w.dtype) @ w.T).view(B, err.shape[1], Hkv, D).transpose(1, 2) for w in kv_weight]
            means = means + torch.cat(parts, -1).to(means.dtype)
        rows.append((torch.cat([exact, means], 2), torch.cat([exact_counts, counts], 1)))

    outs, seen = [], []
    for p, (start, end) in enumerate(bounds):
        k_sum, v_sum, sum_counts = visible_rows(rows, p, causal)
        seen.append((k_sum, v_sum, sum_counts))
        outs.append(prism_attention(
            q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], k_sum, v_sum, sum_counts, causal=causal,
            scale=scale, log_count_bias=log_count_bias, k_valid=None if valid is None else valid[:, start:end],
            backend=backend))
    out = torch.cat(outs, dim=2)
    return (out, seen) if return_rows else out
