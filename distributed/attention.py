"""PRISM attention on one MPI rank: what `attn_implementation="prism"` runs with a communicator.

Rank p holds the queries, keys and values of its own chunk only: q `[B, H, n_p, D]`, k and v
`[B, Hkv, n_p, D]` (and, for hidden-feature exchange, the attention input `[B, n_p, d]`).
Per layer it
  1. builds its payload (`prism_ops.ops.chunk_summary`: exact sink/halo rows and segment
     means, rounded to `summary_bits` if set) and starts the all-gather,
  2. attends to its own block while the payloads travel (log-sum-exp kept),
  3. decodes the payloads of the chunks it may see (hidden features are projected to K and V
     with the layer's own weights), attends to those rows, and merges the two partial
     attentions exactly (`merge_attention`).
The last rank of a decoder keeps the rows it attended to, per layer, and decodes new tokens
with its own KV cache plus those rows: no communication per generated token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prism_ops.ops.chunk_summary import chunk_clusters, chunk_layout, summary_count, summary_rows, visible_chunks, visible_rows
from prism_ops.ops.merge_attention import merge_attention
from prism_ops.ops.prism_attention import prism_attention
from prism_ops.ops.quantize_rows import quantize_codes

from .payload import PayloadLayout, decode, encode


@dataclass
class RankContext:
    """What one request's forward needs on every layer: bounds and the padding mask `[B, N]`."""

    bounds: list
    valid: torch.Tensor
    layer: int = 0  # attention calls so far in this forward (the byte counter's key)

    @property
    def num_tokens(self) -> int:
        return self.bounds[-1][1]


def segment_counts(keep: torch.Tensor, segment_size: int) -> torch.Tensor:
    """Real tokens per segment `[B, S]` int32 of keep `[B, n]`, as segment_means counts them."""
    B, n = keep.shape
    S = -(-n // segment_size)
    padded = F.pad(keep.to(torch.int32), (0, S * segment_size - n))
    return padded.view(B, S, segment_size).sum(-1, dtype=torch.int32)


def _layouts(settings, ctx, causal, B, H, C, dtype):
    lay = dict(sink_tokens=settings["sink_tokens"], halo=settings["halo"], causal=causal)
    out = []
    for c in range(len(ctx.bounds)):
        E, S = summary_count(ctx.bounds, c, settings["segment_size"], **lay)
        out.append(PayloadLayout(B, H, C, E, S, dtype, settings["summary_bits"], bool(settings["cluster_iters"])))
    return out, lay


def _project(module, h):
    """K|V rows `[B, Hkv, R, 2D]` from hidden-feature rows h `[B, 1, R, d]` (the receiver's projection)."""
    from prism_ops.hf import kv_bias, kv_weight

    B, _, R, _ = h.shape
    parts = []
    for w, b in zip(kv_weight(module), kv_bias(module)):
        y = F.linear(h[:, 0].to(w.dtype), w, b)  # (B, R, Hkv * D)
        parts.append(y.view(B, R, -1, module._prism_head_dim).transpose(1, 2))
    return torch.cat(parts, -1)


def rank_attention(module, q, k, v, settings, *, scale=None, causal=False):
    """This rank's attention output `[B, H, n_p, D]` for one layer."""
    ctx = settings["context"]
    if ctx is None:
        raise ValueError("a model configured with comm= runs through prism_ops.distributed.runtime (it sets the bounds)")
    comm = settings["comm"]
    p, P = comm.rank, comm.size
    c0, c1 = ctx.bounds[p]
    if q.shape[2] != c1 - c0:
        raise ValueError(f"rank {p} owns tokens [{c0}, {c1}) but its layer got {q.shape[2]} queries")
    B, Hkv, n, D = k.shape
    cs, hidden_mode = settings["segment_size"], settings["exchange"] == "hidden"
    if hidden_mode:
        x, module._prism_head_dim = module._prism_hidden[:, None], D
    else:
        x = torch.cat([k, v], -1)
    layouts, lay = _layouts(settings, ctx, causal, B, x.shape[1], x.shape[3], x.dtype)

    # 1. This rank's payload, on its way while the local block is computed.
    a, b = (i - c0 for i in chunk_layout(ctx.bounds, p, **lay))
    keep = ctx.valid[:, c0:c1]
    assign = chunk_clusters(k, keep, a, b, cs, settings["cluster_iters"])
    exact, _, means, counts = summary_rows(x, keep, a, b, cs, assign, settings["backend"])
    quant = {}
    if settings["summary_bits"] and means.shape[2]:
        codes, lo, step = quantize_codes(means, settings["summary_bits"], (counts > 0)[:, None, :, None])
        quant = dict(codes=codes, lo=lo, step=step)
    payload = encode(layouts[p], exact, means=means, counts=counts, **quant)
    pending = comm.iallgatherv(payload, [lay_.nbytes for lay_ in layouts], key=ctx.layer)
    ctx.layer += 1

    # 2. The local block, exact.
    k_valid = None if bool(keep.all()) else keep
    out, lse = prism_attention(q, k, v, None, None, None, causal=causal, scale=scale, k_valid=k_valid,
                               backend=settings["backend"], return_lse=True)

    # 3. The rows of the chunks this rank may see.
    parts = pending.wait()
    rows = [None] * P
    for c in visible_chunks(p, P, causal):
        d0, d1 = ctx.bounds[c]
        ca, cb = chunk_layout(ctx.bounds, c, **lay)
        ex_c, means_c, counts_c = decode(layouts[c], parts[c])
        valid_c = ctx.valid[:, d0:d1]
        if counts_c is None:
            counts_c = segment_counts(valid_c[:, ca - d0 : cb - d0], cs)
        ex_counts = torch.cat([valid_c[:, : ca - d0], valid_c[:, cb - d0 :]], 1).to(torch.int32)
        r = torch.cat([ex_c, means_c], 2)
        rows[c] = (_project(module, r) if hidden_mode else r, torch.cat([ex_counts, counts_c], 1))
    k_sum, v_sum, sum_counts = visible_rows(rows, p, causal)
    if causal and p == P - 1:
        module._prism_rows = (0, k_sum, v_sum, sum_counts)
    if k_sum is None:
        return out
    out_s, lse_s = prism_attention(q, k[:, :, :0], v[:, :, :0], k_sum, v_sum, sum_counts, scale=scale,
                                   log_count_bias=settings["log_count_bias"], backend=settings["backend"],
                                   return_lse=True)
    return merge_attention(out, lse, out_s, lse_s)[0]
