"""`SimulatedPartitions`: all P partitions of a layer in this process (`partitioned_attention`).

What `prism_ops.hf.configure(model, ...)` without `comm=` gives every attention layer: the
sequence is cut into `config.num_partitions` chunks, as if each ran on its own rank, and each
chunk sees the others through their summary rows. A layer with a sliding window or a logit cap
(`layer.window`, `layer.softcap`) runs `window_attention` on token positions.
"""

from __future__ import annotations

from prism_ops.config import PrismConfig
from prism_ops.ops.chunk_summary import visible_spans
from prism_ops.ops.codebook_attention import codebook_partitioned_attention
from prism_ops.ops.partitioned_attention import partition_bounds, partitioned_attention
from prism_ops.ops.quantize_rows import verbatim_wire_dtype

from .base import CachedRows, PartitionStrategy


class SimulatedPartitions(PartitionStrategy):
    """All `config.num_partitions` partitions in this process, on the full sequence."""

    def needs_hidden(self, config: PrismConfig) -> bool:
        # Averaging commutes with the projection; only rounding needs the hidden features.
        return config.exchange == "hidden" and bool(config.summary_bits or config.summary_codebook
                                                    or config.verbatim_bits)

    def attend(self, layer, q, k, v, *, valid, hidden, scale, causal, state):
        cfg = layer.config.for_tokens(q.shape[2])  # every token a row under min_chunk_tokens per partition
        kw = {}
        if self.needs_hidden(cfg):
            kw.update(hidden=hidden, kv_weight=layer.kv_weight())
        common = dict(num_partitions=cfg.num_partitions, segment_size=cfg.segment_size,
                      causal=causal and q.shape[2] > 1, scale=scale, log_count_bias=cfg.log_count_bias,
                      sink_tokens=cfg.sink_tokens, halo=cfg.halo, valid=valid, weights=cfg.weights,
                      cluster_iters=cfg.cluster_iters, backend=cfg.backend, return_rows=causal,
                      heavy_fraction=cfg.heavy_fraction,
                      verbatim_dtype=verbatim_wire_dtype(cfg.verbatim_bits, k.dtype), **kw)
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
