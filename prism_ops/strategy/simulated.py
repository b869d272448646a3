"""`SimulatedPartitions`: all P partitions of a layer in this process (`partitioned_attention`).

What `prism_ops.hf.configure(model, ...)` without `comm=` gives every attention layer: the
sequence is cut into `config.num_partitions` chunks, as if each ran on its own rank, and each
chunk sees the others through their summary rows. A layer with a sliding window or a logit cap
(`layer.window`, `layer.softcap`) runs `window_attention` on token positions.

With delta codes (`PrismConfig.delta_codebook`, `ops.delta_rows`) a layer's rows depend on what
the readers decoded at the layer before: the decoded rows `[B, T, d]` pass from one layer's call
to the next within a forward (`_CHAIN`, per thread and context; the last layer drops them).
"""

from __future__ import annotations

import contextvars

from prism_ops.config import PrismConfig
from prism_ops.ops.chunk_summary import visible_spans
from prism_ops.ops.codebook_attention import codebook_partitioned_attention
from prism_ops.ops.delta_rows import delta_codes
from prism_ops.ops.partitioned_attention import partition_bounds, partitioned_attention
from prism_ops.ops.quantize_rows import verbatim_wire_dtype

from .base import CachedRows, PartitionStrategy

# (index of the layer that ran last, the rows its readers decoded `[B, T, d]`): delta codes' chain.
_CHAIN: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("prism_delta_chain", default=None)


def decoded_rows(layer, hidden):
    """The rows `[B, T, d]` the readers of this layer decode under delta codes: layer 0's exact (they
    embed the token ids), a later layer's from its codes and the rows of the layer before."""
    if layer.index == 0:
        sent = hidden
    else:
        chain = _CHAIN.get()
        if chain is None or chain[0] != layer.index - 1 or chain[1].shape != hidden.shape:
            ran = "no layer" if chain is None else f"layer {chain[0]} on {list(chain[1].shape)}"
            raise ValueError(f"delta codes code layer {layer.index} from the rows of layer {layer.index - 1} of the "
                             f"same forward, but {ran} ran before it (shape {list(hidden.shape)}): run the model's "
                             "layers in order, one forward at a time per thread")
        sent = delta_codes(hidden, chain[1], *layer.delta)[1]
    _CHAIN.set(None if layer.delta_last else (layer.index, sent))
    return sent


class SimulatedPartitions(PartitionStrategy):
    """All `config.num_partitions` partitions in this process, on the full sequence."""

    def needs_hidden(self, config: PrismConfig) -> bool:
        # Averaging commutes with the projection; only rounding needs the hidden features.
        return config.exchange == "hidden" and bool(config.summary_bits or config.summary_codebook
                                                    or config.verbatim_bits or config.delta_codebook)

    def attend(self, layer, q, k, v, *, valid, hidden, scale, causal, state):
        cfg = layer.config.for_tokens(q.shape[2])  # every token a row under min_chunk_tokens per partition
        kw = {}
        if self.needs_hidden(cfg):
            kw.update(hidden=hidden, kv_weight=layer.kv_weight())
        if cfg.delta_rows:
            kw.update(hidden_sent=decoded_rows(layer, hidden))
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
