"""Analytic traffic and compute model of one PRISM layer, per rank.

What a rank sends per layer (its all-gather payload) against
full position-wise exchange (Voltage: every rank all-gathers its n_p hidden features of d
values), and what a rank computes per layer against one device running all N tokens.

Rows a rank p with n_p tokens sends per layer (`prism_ops.ops.chunk_summary`):
- exact: its sink tokens (those among the first `sink_tokens` of the sequence) and its halo
  tokens (the last `halo` unless it is the last rank; the first `halo` unless it is the first
  rank or the model is causal);
- summary: ceil(rest / segment_size) rows for the rest.
A row holds 2 * Hkv * D values (K/V exchange) or d values (hidden-feature exchange, the
paper's). Exact rows travel at the model's precision; summary rows too, or as `summary_bits`
integers plus a float16 (minimum, step) pair per channel (`quantize_rows`). Key clusters add a
2-byte count per summary row (positional segments have implied counts). Causal models are
counted the same way (the last rank's summaries are sent although no later rank reads them),
so the figures are an upper bound for decoders.

Compute counts multiply-accumulates of matrix products, doubled to FLOPs: projections and MLP
per owned token, scores and weighted values per visible key, and for hidden-feature exchange
the receiver's projection of every received row to K and V. Softmax, norms and the means
themselves are left out (O(n d), under 0.1% here).

With BERT-base, 2 ranks, N = 256 and segment size 128 under hidden exchange this gives the
paper's two headline figures: 99.2% less traffic and 51.24% less compute per device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._checks import check_int
from .ops.partitioned_attention import partition_bounds
from .ops.chunk_summary import summary_count, visible_chunks
from .ops.quantize_rows import check_bits

EXCHANGES = ("kv", "hidden")

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

    def row_values(self, exchange: str) -> int:
        """Values in one exchanged row."""
        if exchange not in EXCHANGES:
            raise ValueError(f"exchange must be one of {EXCHANGES}, got {exchange!r}")
        return 2 * self.num_kv_heads * self.head_dim if exchange == "kv" else self.hidden_size

    def linear_macs_per_token(self) -> int:
        d, H, Hkv, D = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        return d * H * D + 2 * d * Hkv * D + H * D * d + self.mlp_matrices * d * self.ffn_size


BERT_BASE = ModelShape(hidden_size=768, num_heads=12, num_kv_heads=12, head_dim=64, ffn_size=3072, num_layers=12)


def _sent_rows(num_tokens, num_partitions, segment_size, sink_tokens, halo, causal, weights):
    """Per rank: (exact rows, summary rows), and the bounds."""
    bounds = partition_bounds(num_tokens, num_partitions, weights)
    layout = dict(sink_tokens=sink_tokens, halo=halo, causal=causal)
    return [summary_count(bounds, c, segment_size, **layout) for c in range(num_partitions)], bounds


def _check(shape, num_tokens, num_partitions, segment_size, exchange, sink_tokens, halo, summary_bits):
    check_int(num_tokens, "num_tokens", 1)
    check_int(num_partitions, "num_partitions", 1, num_tokens, f" (at most num_tokens={num_tokens})")
    check_int(segment_size, "segment_size", 1)
    check_int(sink_tokens, "sink_tokens", 0)
    check_int(halo, "halo", 0)
    check_bits(summary_bits)
    shape.row_values(exchange)


def bytes_per_layer(shape: ModelShape, num_tokens: int, num_partitions: int, segment_size: int, *,
                    exchange: str = "kv", sink_tokens: int = 0, halo: int = 0, causal: bool = False,
                    summary_bits: int = 0, cluster_iters: int = 0, dtype_bytes: int = 4,
                    weights=None) -> list[int]:
    """Bytes each rank sends per layer."""
    _check(shape, num_tokens, num_partitions, segment_size, exchange, sink_tokens, halo, summary_bits)
    width = shape.row_values(exchange)
    sent = []
    for exact, summary in _sent_rows(num_tokens, num_partitions, segment_size, sink_tokens, halo, causal,
                                     weights)[0]:
        b = exact * width * dtype_bytes
        if summary_bits and summary:
            b += math.ceil(summary * width * summary_bits / 8) + width * 2 * 2  # + float16 (min, step)
        else:
            b += summary * width * dtype_bytes
        if cluster_iters:
            b += 2 * summary
        sent.append(b)
    return sent


def full_exchange_bytes_per_layer(shape: ModelShape, num_tokens: int, num_partitions: int, *,
                                  dtype_bytes: int = 4, weights=None) -> list[int]:
    """Bytes each rank sends per layer under full position-wise exchange: n_p * d values."""
    bounds = partition_bounds(num_tokens, num_partitions, weights)
    return [(end - start) * shape.hidden_size * dtype_bytes for start, end in bounds]


def traffic_ratio(shape: ModelShape, num_tokens: int, num_partitions: int, segment_size: int, **kw) -> float:
    """Bytes all ranks send per layer, over full exchange's (1 - this = the traffic cut)."""
    full_kw = {k: kw[k] for k in ("dtype_bytes", "weights") if k in kw}
    return sum(bytes_per_layer(shape, num_tokens, num_partitions, segment_size, **kw)) / sum(
        full_exchange_bytes_per_layer(shape, num_tokens, num_partitions, **full_kw))


def flops_per_layer(shape: ModelShape, num_tokens: int, num_partitions: int, segment_size: int, *,
                    exchange: str = "kv", sink_tokens: int = 0, halo: int = 0, causal: bool = False,
                    weights=None) -> list[int]:
    """FLOPs each rank spends per layer (matrix products only; see the module docstring)."""
    _check(shape, num_tokens, num_partitions, segment_size, exchange, sink_tokens, halo, 0)
    rows, bounds = _sent_rows(num_tokens, num_partitions, segment_size, sink_tokens, halo, causal, weights)
    H, Hkv, D, d = shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.hidden_size
    out = []
    for p, (start, end) in enumerate(bounds):
        n = end - start
        received = sum(sum(rows[c]) for c in visible_chunks(p, num_partitions, causal))
        local_scores = n * (n + 1) // 2 if causal else n * n
        macs = n * shape.linear_macs_per_token() + 2 * H * D * (local_scores + n * received)
        if exchange == "hidden":
            macs += received * 2 * d * Hkv * D  # the receiver projects each row to K and V
        out.append(2 * macs)
    return out


def one_device_flops_per_layer(shape: ModelShape, num_tokens: int, *, causal: bool = False) -> int:
    """FLOPs per layer of one device running all N tokens with exact attention."""
    N = num_tokens
    scores = N * (N + 1) // 2 if causal else N * N
    return 2 * (N * shape.linear_macs_per_token() + 2 * shape.num_heads * shape.head_dim * scores)


def compute_ratio(shape: ModelShape, num_tokens: int, num_partitions: int, segment_size: int, **kw) -> float:
    """The busiest rank's FLOPs over one device's (1 - this = the per-device compute cut)."""
    kw = {k: v for k, v in kw.items() if k not in ("summary_bits", "cluster_iters", "dtype_bytes")}
    per_rank = flops_per_layer(shape, num_tokens, num_partitions, segment_size, **kw)
    return max(per_rank) / one_device_flops_per_layer(shape, num_tokens, causal=kw.get("causal", False))


def _settings_kw(settings: dict, causal: bool) -> dict:
    return dict(exchange=settings["exchange"], sink_tokens=settings["sink_tokens"], halo=settings["halo"],
                causal=causal, weights=settings["weights"])


def settings_bytes_per_layer(shape: ModelShape, num_tokens: int, settings: dict, *, causal: bool = False,
                             dtype_bytes: int = 4) -> list[int]:
    """`bytes_per_layer` of a resolved settings dict (exchange already "kv" or "hidden")."""
    return bytes_per_layer(shape, num_tokens, settings["num_partitions"], settings["segment_size"],
                           summary_bits=settings["summary_bits"], cluster_iters=settings["cluster_iters"],
                           dtype_bytes=dtype_bytes, **_settings_kw(settings, causal))


def settings_ratios(shape: ModelShape, num_tokens: int, settings: dict, *, causal: bool = False) -> tuple[float, float]:
    """(traffic_ratio, compute_ratio) of a resolved settings dict (`prism_ops.levers.resolve`,
    with `exchange` already "kv" or "hidden", as `prism_ops.hf.configure` leaves it)."""
    P, cs = settings["num_partitions"], settings["segment_size"]
    kw = _settings_kw(settings, causal)
    traffic = traffic_ratio(shape, num_tokens, P, cs, summary_bits=settings["summary_bits"],
                            cluster_iters=settings["cluster_iters"], **kw)
    return traffic, compute_ratio(shape, num_tokens, P, cs, **kw)
