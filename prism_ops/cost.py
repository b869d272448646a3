"""Analytic traffic and compute model of one PRISM layer, per rank.

What a rank sends per layer (its all-gather payload) against
full position-wise exchange (Voltage: every rank all-gathers its n_p hidden features of d
values), and what a rank computes per layer against one device running all N tokens.

Every function takes the setting as one `PrismConfig` (exchange already "kv" or "hidden").
Rows a rank p with n_p tokens sends per layer (`prism_ops.ops.chunk_summary`; the bytes are
those of its payload layout, `prism_ops.wire`, so the runtime and this model cannot disagree):
- verbatim: its sink tokens (those among the first `sink_tokens` of the sequence) and its halo
  tokens (the last `halo` unless it is the last rank; the first `halo` unless it is the first
  rank or the model is causal);
- summary: ceil(rest / segment_size) rows for the rest.
A row holds 2 * Hkv * D values (K/V exchange) or d values (hidden-feature exchange, the
paper's). Verbatim rows travel at the model's precision; summary rows too, or as `summary_bits`
integers plus a float16 (minimum, step) pair per channel (`quantize_rows`), or as codebook
codes (`summary_codebook`: log2(K) bits per group of g channels, `codebook_rows`). Key clusters
add a 2-byte count per summary row (positional segments have implied counts). A chunk that no
rank reads sends nothing: in a causal model the last rank sends 0 bytes (`prism_ops.wire`). A
causal model's chunk goes point to point to the later ranks only, the ones that read it
(`prism_ops.distributed.attention`); the bytes count each payload once. A sliding-window layer (`window`) sends nothing
from a chunk that is wholly outside the window of every other rank's queries, and a rank
attends only to the chunks within reach.

Compute counts multiply-accumulates of matrix products, doubled to FLOPs: projections and MLP
per owned token, scores and weighted values per visible key, and for hidden-feature exchange
the receiver's projection of every received row to K and V. Softmax, norms and the means
themselves are left out (O(n d), under 0.1% here).

With BERT-base, 2 ranks, N = 256 and segment size 128 under hidden exchange this gives the
paper's two headline figures: 99.2% less traffic and 51.24% less compute per device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import EXCHANGES, PrismConfig
from .ops.chunk_summary import summary_count, visible_chunks
from .ops.partitioned_attention import partition_bounds
from .wire import chunk_options, payload_layouts

# Model families whose MLP has three matrices (gate, up, down).
GATED_MLP = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "olmo", "olmo2"}


@dataclass(frozen=True)
class ModelShape:
    """The sizes the cost model needs: d, H, Hkv, D, MLP width, MLP matrices, layers."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    mlp_matrices: int = 2
    num_layers: int = 1

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        """From a transformers config (BERT, GPT-2, ViT, Llama and kin)."""
        d = config.hidden_size
        H = config.num_attention_heads
        ffn = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d
        return cls(
            hidden_size=d, num_heads=H,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or H,
            head_dim=getattr(config, "head_dim", None) or d // H,
            ffn_size=ffn,
            mlp_matrices=3 if getattr(config, "model_type", "") in GATED_MLP else 2,
            num_layers=config.num_hidden_layers,
        )

    def row_shape(self, exchange: str) -> tuple[int, int]:
        """(heads, channels) of the exchanged rows: (Hkv, 2D) for K/V, (1, d) for hidden features."""
        if exchange not in EXCHANGES:
            raise ValueError(f"exchange must be one of {EXCHANGES} (resolve 'auto' with prism_ops.hf.configure), "
                             f"got {exchange!r}")
        return (self.num_kv_heads, 2 * self.head_dim) if exchange == "kv" else (1, self.hidden_size)

    def row_values(self, exchange: str) -> int:
        """Values in one exchanged row."""
        heads, channels = self.row_shape(exchange)
        return heads * channels

    def linear_macs_per_token(self) -> int:
        d, H, Hkv, D = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        return d * H * D + 2 * d * Hkv * D + H * D * d + self.mlp_matrices * d * self.ffn_size


BERT_BASE = ModelShape(hidden_size=768, num_heads=12, num_kv_heads=12, head_dim=64, ffn_size=3072, num_layers=12)


def bytes_per_layer(shape: ModelShape, num_tokens: int, config: PrismConfig, *, causal: bool = False,
                    dtype: torch.dtype = torch.float32, window: int | None = None) -> list:
    """Bytes each rank sends per layer: the `nbytes` of its payload layout (`prism_ops.wire`), batch 1
    (for a sliding-window layer, `window`: a chunk no other rank's query reaches sends 0). With
    dense layers (`PrismConfig.dense_layers`), the mean over the model's layers (floats;
    `layer_bytes` gives each layer's). A request under config.min_chunk_tokens per rank sends every
    token (`PrismConfig.for_tokens`)."""
    config = config.for_tokens(num_tokens)
    if config.dense_layers:  # two settings: the dense layers' and the others'
        L, n = shape.num_layers, len(config.dense_layers)
        dense, rest = (bytes_per_layer(shape, num_tokens, c, causal=causal, dtype=dtype, window=window)
                       for c in (config.for_layer(config.dense_layers[0]), config.replace(dense_layers=())))
        return [(n * d + (L - n) * r) / L for d, r in zip(dense, rest)]
    if config.delta_rows:  # layer 0 sends token ids, the others codes
        L = shape.num_layers
        first, rest = (_layer_payloads(shape, num_tokens, config, causal, dtype, window, i) for i in (0, 1))
        return [(f + (L - 1) * r) / L for f, r in zip(first, rest)]
    return _layer_payloads(shape, num_tokens, config, causal, dtype, window)


def _layer_payloads(shape, num_tokens, config, causal, dtype, window, layer=None) -> list[int]:
    """Each rank's payload bytes in one layer (`layer`: its index, for delta codes)."""
    heads, channels = shape.row_shape(config.exchange)
    bounds = partition_bounds(num_tokens, config.num_partitions, config.weights)
    layouts = payload_layouts(config, bounds, causal=causal, batch=1, heads=heads, channels=channels, dtype=dtype,
                              window=window, layer=layer)
    return [lay.nbytes for lay in layouts]


def layer_bytes(shape: ModelShape, num_tokens: int, config: PrismConfig, *, causal: bool = False,
                dtype: torch.dtype = torch.float32) -> list[int]:
    """Bytes all ranks send in each of the model's layers (dense layers their own; with delta codes,
    layer 0 its token ids)."""
    config = config.for_tokens(num_tokens)
    if config.delta_rows:
        return [sum(_layer_payloads(shape, num_tokens, config, causal, dtype, None, min(i, 1)))
                for i in range(shape.num_layers)]
    rest = sum(bytes_per_layer(shape, num_tokens, config.replace(dense_layers=()), causal=causal, dtype=dtype))
    dense = sum(bytes_per_layer(shape, num_tokens, config.for_layer(config.dense_layers[0]), causal=causal,
                                dtype=dtype)) if config.dense_layers else rest
    return [dense if i in config.dense_layers else rest for i in range(shape.num_layers)]


def full_exchange_bytes_per_layer(shape: ModelShape, num_tokens: int, num_partitions: int, *,
                                  dtype: torch.dtype = torch.float32, weights=None) -> list[int]:
    """Bytes each rank sends per layer under full position-wise exchange: n_p * d values."""
    size = torch.finfo(dtype).bits // 8
    return [(end - start) * shape.hidden_size * size for start, end in partition_bounds(num_tokens, num_partitions,
                                                                                          weights)]


def traffic_ratio(shape: ModelShape, num_tokens: int, config: PrismConfig, *, causal: bool = False,
                  dtype: torch.dtype = torch.float32) -> float:
    """Bytes all ranks send per layer, over full exchange's (1 - this = the traffic cut)."""
    sent = bytes_per_layer(shape, num_tokens, config, causal=causal, dtype=dtype)
    full = full_exchange_bytes_per_layer(shape, num_tokens, config.num_partitions, dtype=dtype, weights=config.weights)
    return sum(sent) / sum(full)


def flops_per_layer(shape: ModelShape, num_tokens: int, config: PrismConfig, *, causal: bool = False,
                    window: int | None = None) -> list[int]:
    """FLOPs each rank spends per layer (matrix products only; see the module docstring). With a
    sliding `window` only the chunks within reach are received (the local block is counted whole)."""
    config = config.for_tokens(num_tokens)
    shape.row_shape(config.exchange)
    P = config.num_partitions
    bounds = partition_bounds(num_tokens, P, config.weights)
    opts = chunk_options(config, causal)
    rows = [sum(summary_count(bounds, c, config.segment_size, window=window, heavy=config.heavy_fraction, **opts)) for c in range(P)]
    H, Hkv, D, d = shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.hidden_size
    out = []
    for p, (start, end) in enumerate(bounds):
        n = end - start
        received = sum(rows[c] for c in visible_chunks(p, P, causal, bounds=bounds, window=window))
        local_scores = n * (n + 1) // 2 if causal else n * n
        macs = n * shape.linear_macs_per_token() + 2 * H * D * (local_scores + n * received)
        if config.exchange == "hidden":
            macs += received * 2 * d * Hkv * D  # the receiver projects each row to K and V
        out.append(2 * macs)
    return out


def one_device_flops_per_layer(shape: ModelShape, num_tokens: int, *, causal: bool = False) -> int:
    """FLOPs per layer of one device running all N tokens with exact attention."""
    N = num_tokens
    scores = N * (N + 1) // 2 if causal else N * N
    return 2 * (N * shape.linear_macs_per_token() + 2 * shape.num_heads * shape.head_dim * scores)


def compute_ratio(shape: ModelShape, num_tokens: int, config: PrismConfig, *, causal: bool = False) -> float:
    """The busiest rank's FLOPs over one device's (1 - this = the per-device compute cut)."""
    per_rank = flops_per_layer(shape, num_tokens, config, causal=causal)
    return max(per_rank) / one_device_flops_per_layer(shape, num_tokens, causal=causal)
