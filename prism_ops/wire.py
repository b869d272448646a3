"""The wire format of one layer: what each rank's all-gather payload holds, and its size in bytes.

A chunk's payload (its rows are built by `prism_ops.ops.chunk_summary`) is, in this order:

    verbatim rows   [B, H, E, C]  model dtype, or float16 with verbatim_bits=16 (a wider model)
    picks           ceil(B * m / 8) bytes, only with heavy_fraction: a bit per summarised token
                    (m of them), set for those sent as their own rows (`ops.heavy_rows`)
    summary rows    [B, H, S, C]  model dtype, or with summary_bits:
                        codes     ceil(B*H*S*C * bits / 8) bytes, bit-packed
                        lo, step  [B, H, 1, C] float16 each
                    or with summary_codebook (M channel groups, K centroids per group):
                        codes     ceil(B*H*S*M * log2(K) / 8) bytes, bit-packed
    counts          [B, S] uint16, only for key clusters (segment counts follow from the
                    padding mask every rank has)

With delta_codebook (`ops.delta_rows`) every token is a summary row: its codes, M of log2(K)
bits each; in layer 0 its token id and position instead (`ids`: B * S ids, then B * S
positions, 2 bytes each for a vocabulary of at most 65,536, else 4).

Verbatim rows are the chunk's sink and halo tokens, sent as they are (count 1, not summarised;
"exact" names a preset). H, C are (Hkv, 2D) for K/V exchange and (1, d) for hidden-feature exchange. Every rank derives
every chunk's layout from the bounds and the config, so sizes never travel. A chunk that no
rank reads sends nothing: in a causal model the last rank's rows are seen by no later rank, so
its payload is empty (at 2 ranks this halves a decoder's traffic). Nor does a chunk wholly outside
a sliding-window layer's window for every query of every other rank (`visible_chunks`).

This one layout is used twice: `prism_ops.strategy.payload` encodes and decodes the bytes
the runtime sends, and `prism_ops.cost` predicts the traffic from the same `nbytes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import PrismConfig
from .ops.chunk_summary import chunk_layout, summary_count, visible_chunks
from .ops.codebook_rows import codebook_geometry
from .ops.delta_rows import delta_geometry
from .ops.quantize_rows import verbatim_wire_dtype


@dataclass(frozen=True)
class PayloadLayout:
    """One chunk's payload: batch B, H heads of C channels, E verbatim and S summary rows."""

    B: int
    H: int
    C: int
    E: int
    S: int
    dtype: torch.dtype
    bits: int = 0
    clusters: bool = False
    code_groups: int = 0  # with a codebook: M codes of code_bits each per head and row
    code_bits: int = 0
    picks: int = 0  # with heavy_fraction: the summarised tokens the picks bitmap covers
    verbatim_dtype: torch.dtype | None = None  # the verbatim rows' dtype on the wire (None: dtype)
    id_bytes: int = 0  # delta codes' layer 0: the rows travel as token ids and positions of this many bytes

    @property
    def wire_verbatim_dtype(self) -> torch.dtype:
        return self.verbatim_dtype or self.dtype

    def parts(self) -> list[tuple[str, int]]:
        """(name, bytes) in wire order."""
        B, H, C, E, S = self.B, self.H, self.C, self.E, self.S
        size = torch.finfo(self.dtype).bits // 8
        out = [("verbatim", B * H * E * C * torch.finfo(self.wire_verbatim_dtype).bits // 8)]
        if self.picks:
            out.append(("picks", math.ceil(B * self.picks / 8)))
        if self.id_bytes and S:
            out.append(("ids", 2 * B * S * self.id_bytes))
        elif self.code_bits and S:
            out.append(("codes", math.ceil(B * H * S * self.code_groups * self.code_bits / 8)))
        elif self.bits and S:
            out += [("codes", math.ceil(B * H * S * C * self.bits / 8)), ("lo", B * H * C * 2), ("step", B * H * C * 2)]
        else:
            out.append(("means", B * H * S * C * size))
        if self.clusters:
            out.append(("counts", B * S * 2))
        return out

    @property
    def nbytes(self) -> int:
        return sum(n for _, n in self.parts())


def chunk_options(config: PrismConfig, causal: bool) -> dict:
    """The keywords `chunk_summary.chunk_layout` takes, from a config."""
    return dict(sink_tokens=config.sink_tokens, halo=config.halo, causal=causal)


def readers(c: int, num_chunks: int, causal: bool, *, bounds=None, window=None) -> list[int]:
    """The ranks that attend to chunk c's rows: every other one, or only later ones when causal
    (with a sliding window, only those with a query within reach of the chunk)."""
    return [p for p in range(num_chunks) if c in visible_chunks(p, num_chunks, causal, bounds=bounds, window=window)]


def payload_layouts(config: PrismConfig, bounds, *, causal: bool, batch: int, heads: int, channels: int,
                    dtype: torch.dtype, window=None, layer: int | None = None) -> list[PayloadLayout]:
    """The layout of every chunk's payload for one layer, in rank order.

    layer: the attention layer's index, which matters only with delta_codebook (layer 0 sends
    token ids; None: any later layer).

    A chunk no rank reads (the last one of a causal model, or one outside a sliding `window` of
    every other rank's queries) sends nothing: its layout has no rows. A request under
    config.min_chunk_tokens per rank sends every token (`PrismConfig.for_tokens`).
    """
    config = config.for_tokens(bounds[-1][1])
    opts = chunk_options(config, causal)
    groups, code_bits, ids = 0, 0, 0
    if config.summary_codebook:
        groups, code_bits = codebook_geometry(config.summary_codebook)
    elif config.delta_rows:
        groups, code_bits, ids = delta_geometry(config.delta_rows)
        groups, code_bits, ids = (0, 0, ids) if layer == 0 else (groups, code_bits, 0)
    out = []
    for c in range(len(bounds)):
        verbatim, summary = summary_count(bounds, c, config.segment_size, window=window, heavy=config.heavy_fraction,
                                          **opts)
        a, b = chunk_layout(bounds, c, **opts)
        picks = b - a if config.heavy_fraction and summary else 0
        if not readers(c, len(bounds), causal, bounds=bounds, window=window):
            verbatim, summary, picks = 0, 0, 0
        out.append(PayloadLayout(batch, heads, channels, verbatim, summary, dtype, config.summary_bits,
                                 bool(config.cluster_iters), groups, code_bits, picks,
                                 verbatim_wire_dtype(config.verbatim_bits, dtype), ids))
    return out
