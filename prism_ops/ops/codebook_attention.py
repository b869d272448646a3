"""PRISM attention simulated in one process with codebook-coded summary rows (`codebook_rows`).

The same P-chunk simulation as `partitioned_attention`, which it runs, except that each chunk's
summary rows travel as codebook codes instead of per-channel integers (its `round_rows` hook).
With hidden-feature exchange (`hidden`, `kv_weight`) the hidden rows are coded and their error
reaches K and V through the receiver's projection; otherwise the K|V rows are coded. Exact rows
(sinks, halo) are not coded. Padding (`valid` False) is ignored everywhere.

Shapes: q `[B, H, T, D]`, k and v `[B, Hkv, T, D]`, valid `[B, T]`, hidden `[B, T, d]`,
kv_weight two `[Hkv * D, d]` matrices, codebook `[Hkv, M, K, g]` with M * g = 2D (K/V rows) or
`[1, M, K, g]` with M * g = d (hidden rows); returns `[B, H, T, D]`.
"""

from __future__ import annotations

from .._checks import check_tensor
from .codebook_rows import check_codebook, codebook_rows
from .partitioned_attention import partitioned_attention


def codebook_partitioned_attention(q, k, v, codebook, *, hidden=None, **kwargs):
    """What P ranks compute when summaries travel as `codebook` codes; the other arguments as in
    `partitioned_attention` (but summary_bits: the codebook is the rounding).

    A codebook whose centroids include every summary row gives `partitioned_attention` with
    summary_bits=0 exactly.
    """
    check_tensor(q, "q", "[B, H, T, D]", 4)
    check_tensor(k, "k", "[B, Hkv, T, D]", 4)
    H, M, K, g = check_codebook(codebook)
    Hkv, D = k.shape[1], k.shape[3]
    want = (1, hidden.shape[2]) if hidden is not None else (Hkv, 2 * D)
    if (H, M * g) != want:
        raise ValueError(f"codebook must code rows of {want[0]} heads x {want[1]} channels, got [{H}, {M}, {K}, {g}]")

    def round_rows(rows, sent):
        return codebook_rows(rows, codebook, sent)

    return partitioned_attention(q, k, v, hidden=hidden, round_rows=round_rows, **kwargs)
