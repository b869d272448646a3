"""PRISM's settings: one frozen, typed `PrismConfig`, validated once where it is built, and named presets.

Every lever is off by default; with all of them off the method is the paper's (segment means
with the +ln(count) bias):

    num_partitions  P, the ranks (or simulated partitions) the sequence is cut into
    segment_size    tokens per summary row (the compression rate); any int >= 1: one larger than
                    a rank's tokens makes one row of them, at no more cost than that
    sink_tokens     first tokens of the sequence sent exact to every rank
    halo            tokens next to each boundary sent exact (see `prism_ops.ops.chunk_summary`)
    log_count_bias  the +ln(count) logit correction (False: ablation)
    weights         partition sizes proportional to these (e.g. device speeds)
    cluster_iters   summary rows from key clusters instead of positional segments (Lloyd
                    iterations, at most 100)
    summary_bits    summaries sent as 2/3/4/8-bit integers (per-channel scales)
    heavy_fraction  this share of each chunk's summarised tokens sent as rows of their own: the
                    ones its own queries attend to most (`ops.heavy_rows`); the rest averaged in
                    segments of segment_size. 0 = off
    verbatim_bits   0: verbatim rows (sinks, halo) travel in the model's dtype; 16: as float16
                    when the model is wider (`quantize_rows.round_verbatim`)
    dense_layers    attention layers (indices from 0) that send every summarised token as its own
                    row (segment size 1, no picks): the few a calibration finds most hurt by
                    summarising (`calibrate.dense_layers`); "auto": this model's calibrated ones,
                    resolved by `prism_ops.hf.configure`
    min_chunk_tokens  summarise only where a rank's mean share of a request (N / P) has at least this
                    many tokens; a shorter request sends every token as its own row, as a dense layer
                    does (`PrismConfig.for_tokens`): there summaries save few bytes and lose most. 0 = off
    summary_codebook  the path of a calibration file (`prism-calibrate`): summaries sent as
                    product-quantization codes of its per-layer codebooks (`ops.codebook_rows`)
    delta_codebook  the path of a delta calibration file (`prism-calibrate --delta-codes`), or "auto":
                    this model's, from the cache, for the short requests of min_chunk_tokens (resolved
                    by `prism_ops.hf.configure`; None for a decoder, a model with K/V exchange, or
                    without min_chunk_tokens). Every token its own row, sent as codes of
                    its change from a prediction made from the row its readers decoded at the layer
                    before; layer 0's rows as token ids and positions (`ops.delta_rows`). Encoders with
                    hidden-feature exchange. With min_chunk_tokens, only the short requests that send
                    every token use it (`PrismConfig.for_tokens`); else it is the whole setting
    delta_max_partitions  with min_chunk_tokens: delta codes only up to this many partitions (0: any);
                    beyond, short requests send accurate's rows (most of a rank's keys are remote there,
                    where the codes lose most)
    exchange        "kv" (K/V means), "hidden" (the paper's hidden-feature means), or "auto"
                    (hidden where the model allows it; `prism_ops.hf.configure` resolves it)
    backend         "auto", "torch" or "triton" for the ops

Everything above `ops/` (the Hugging Face drop-in, the MPI runtime, the cost model, prism-run's
handshake and report) takes a `PrismConfig` as an argument; nothing re-checks it.

    >>> PrismConfig.from_preset(4, "edge")
    PrismConfig(num_partitions=4, segment_size=1, ..., summary_bits=4, exchange='auto', backend='auto')
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ._backend import check_backend
from ._checks import check_bool, check_int, check_weights
from .ops.codebook_rows import codebook_geometry
from .ops.delta_rows import delta_geometry
from .ops.heavy_rows import check_heavy_fraction
from .ops.quantize_rows import check_bits, check_verbatim_bits
from .ops.token_clusters import check_cluster_iters

EXCHANGES = ("kv", "hidden")  # what travels: K/V rows or the hidden features that feed them
EXCHANGE_SETTINGS = EXCHANGES + ("auto",)  # what a config may ask for; prism_ops.hf resolves "auto" per model

# Named settings, each with its quality budget, measured on the real models at 2 ranks (SmolLM2
# at N = 2048: perplexity over exact; MiniLM at N = 512: mean / min cosine of sentence embeddings;
# docs/FRONTIER.md) and at 4 partitions (docs/EVAL.md):
#   exact     every K/V row at full precision (segment size 1): the exact model within float error.
#   accurate  segment size 1, 4-bit summaries, the first 4 tokens (attention sinks) exact, hidden
#             exchange where the model allows it: within 1% (SmolLM2 1.004x, MiniLM 0.9998 / 0.9997).
#   edge      as accurate without the sinks: within 1% on MiniLM (0.9992 / 0.9990) and 3% on
#             SmolLM2 (1.030x; 1.028x at 4 partitions N = 1024), at <= 15% of full-exchange traffic.
#   fast      as accurate at 3 bits: within 0.2% on MiniLM (0.9990 / 0.9986), 5% on SmolLM2
#             (1.041x), at about 3/4 of accurate's bytes.
#   lean      a quarter of edge's bytes or less: the first 4 tokens exact, a fifth of each chunk's
#             tokens (those its own last queries attend to most, `ops.heavy_rows`) as 4-bit rows of
#             their own, the rest as 4-bit means of up to 128 tokens; the sinks as float16 for a
#             float32 model. SmolLM2 1.026x at N = 2048 and 2 ranks (23% of edge's bytes); outside
#             its 3% budget at 4 and 8 ranks and on MiniLM (docs/EVAL.md gives every cell). Not for
#             sliding-window models.
#   tuned     lean with a tenth of each chunk's tokens picked, and the model's dense layers (a tenth
#             of its layers, the ones a calibration finds summaries move most: `calibrate.dense_layers`,
#             once per model, cached) sending every token as a 4-bit row. SmolLM2 1.016x at N = 2048,
#             P = 2 (22% of edge's bytes) and 1.026x at N = 8192, P = 4 (20%). A request under 1024
#             tokens per rank sends every token (accurate's rows, sinks as float16: min_chunk_tokens),
#             where summaries lose most and save least; on an encoder with hidden exchange (MiniLM)
#             up to 4 partitions as delta codes instead (`delta_codebook="auto"`: 10-bit codes of each
#             row's change from a prediction made from the layer before, layer 0 as token ids; the
#             model's codes fitted once, cached): MiniLM 0.9919 / 0.9879 at P = 4, 25% of edge's bytes
#             (bench/bench_delta.py). Within 3% in every cell of docs/EVAL.md but N = 4096, P = 4
#             (1.037x) and N = 8192, P = 8 (1.071x).
#   paper     the published method (segment means of 16): a large loss (MiniLM mean cos 0.85,
#             SmolLM2 perplexity 1.65x at 4 partitions); for comparison.
PRESETS = {
    "exact": {"segment_size": 1},
    "accurate": {"segment_size": 1, "summary_bits": 4, "sink_tokens": 4, "exchange": "auto"},
    "edge": {"segment_size": 1, "summary_bits": 4, "exchange": "auto"},
    "fast": {"segment_size": 1, "summary_bits": 3, "sink_tokens": 4, "exchange": "auto"},
    "lean": {"segment_size": 128, "summary_bits": 4, "sink_tokens": 4, "heavy_fraction": 0.2, "verbatim_bits": 16,
             "exchange": "auto"},
    "tuned": {"segment_size": 128, "summary_bits": 4, "sink_tokens": 4, "heavy_fraction": 0.1, "verbatim_bits": 16,
              "dense_layers": "auto", "min_chunk_tokens": 1024, "exchange": "auto", "delta_codebook": "auto",
              "delta_max_partitions": 4},
    "paper": {},
}
# Each budgeted preset's stated quality budget (`prism-eval --budgets` checks it in every cell of
# N and P, docs/EVAL.md): perplexity over exact at most "ppl" (decoders), sentence-embedding
# cosine to exact at least "cos_mean" on average and "cos_min" on every passage (encoders).
PRESET_BUDGETS = {
    "accurate": {"ppl": 1.01, "cos_mean": 0.99, "cos_min": 0.97},
    "edge": {"ppl": 1.03, "cos_mean": 0.99, "cos_min": 0.97},
    "fast": {"ppl": 1.05, "cos_mean": 0.99, "cos_min": 0.97},
    "lean": {"ppl": 1.03, "cos_mean": 0.99, "cos_min": 0.97},
    "tuned": {"ppl": 1.03, "cos_mean": 0.99, "cos_min": 0.97},
}
# The presets with a budget, from the most accurate: `prism-run --auto` may switch from one to any
# before it (never leaving the asked budget). "paper" has none: --auto keeps it as asked.
PRESET_ORDER = ("exact", "accurate", "edge", "fast", "lean")
# What prism-run uses when neither --preset nor --segment-size is given: within 1% of exact on
# MiniLM (mean cos 0.998) and 3% on SmolLM2 (perplexity 1.028x) at 4 partitions (docs/EVAL.md).
DEFAULT_PRESET = "edge"


@dataclass(frozen=True)
class PrismConfig:
    """One PRISM setting. Raises ValueError naming the field, the value and what is allowed when a
    field is bad (type, range, finiteness), here rather than at the first forward."""

    num_partitions: int
    segment_size: int
    sink_tokens: int = 0
    halo: int = 0
    log_count_bias: bool = True
    weights: tuple[float, ...] | None = None
    cluster_iters: int = 0
    summary_bits: int = 0
    exchange: str = "kv"
    backend: str = "auto"
    summary_codebook: str | None = None
    heavy_fraction: float = 0.0
    verbatim_bits: int = 0
    dense_layers: tuple[int, ...] | str = ()
    min_chunk_tokens: int = 0
    delta_codebook: str | None = None
    delta_max_partitions: int = 0

    def __post_init__(self):
        check_int(self.num_partitions, "num_partitions", 1)
        check_int(self.min_chunk_tokens, "min_chunk_tokens", 0)
        check_int(self.segment_size, "segment_size", 1)
        check_int(self.sink_tokens, "sink_tokens", 0)
        check_int(self.halo, "halo", 0)
        check_cluster_iters(self.cluster_iters)
        check_bits(self.summary_bits)
        check_verbatim_bits(self.verbatim_bits)
        check_bool(self.log_count_bias, "log_count_bias")
        if not isinstance(self.exchange, str) or self.exchange not in EXCHANGE_SETTINGS:
            raise ValueError(f"exchange must be one of {EXCHANGE_SETTINGS}, got {self.exchange!r}")
        check_backend(self.backend)
        object.__setattr__(self, "heavy_fraction", check_heavy_fraction(self.heavy_fraction))
        if self.heavy_fraction and (self.cluster_iters or self.summary_codebook is not None):
            other = f"cluster_iters={self.cluster_iters}" if self.cluster_iters else "summary_codebook"
            raise ValueError(f"heavy_fraction={self.heavy_fraction} picks tokens on the segment grid; it does not "
                             f"combine with {other}: set one of them")
        if self.summary_codebook is not None:
            if self.summary_bits:
                raise ValueError(f"summary_codebook and summary_bits={self.summary_bits} both set how summaries are "
                                 "rounded; set summary_bits=0 with a codebook")
            codebook_geometry(self.summary_codebook)  # the file must exist and be well formed
            object.__setattr__(self, "summary_codebook", os.fspath(self.summary_codebook))  # JSON-ready
        object.__setattr__(self, "dense_layers", _checked_dense_layers(self.dense_layers))
        check_int(self.delta_max_partitions, "delta_max_partitions", 0)
        if self.delta_codebook is not None:
            self._check_delta()
        if self.weights is not None:
            # A tuple of floats, so the config stays hashable and prints the same everywhere.
            object.__setattr__(self, "weights", tuple(check_weights(self.weights, self.num_partitions)))

    def _check_delta(self) -> None:
        """delta_codebook codes every token's hidden row in every layer, and nothing else (with
        min_chunk_tokens: in the short requests, the other levers being the long ones')."""
        if self.delta_codebook == "auto":  # configure resolves it: a path for an encoder's short requests, else None
            return
        if self.exchange == "kv":
            raise ValueError("delta_codebook codes hidden-feature rows: set exchange='hidden' or 'auto', not 'kv'")
        if not self.min_chunk_tokens:  # the whole setting (with min_chunk_tokens, the other levers are the long requests')
            others = {"segment_size": (self.segment_size, 1), "sink_tokens": (self.sink_tokens, 0),
                      "halo": (self.halo, 0), "cluster_iters": (self.cluster_iters, 0),
                      "summary_bits": (self.summary_bits, 0), "summary_codebook": (self.summary_codebook, None),
                      "heavy_fraction": (self.heavy_fraction, 0.0), "verbatim_bits": (self.verbatim_bits, 0),
                      "dense_layers": (self.dense_layers, ())}
            bad = [f"{name}={got!r} (needs {want!r})" for name, (got, want) in others.items() if got != want]
            if bad:
                raise ValueError(f"delta_codebook sends every token of every layer as its own coded row; it does not "
                                 f"combine with {', '.join(bad)}")
        delta_geometry(self.delta_codebook)  # the file must exist and be well formed
        object.__setattr__(self, "delta_codebook", os.fspath(self.delta_codebook))  # JSON-ready

    @classmethod
    def from_preset(cls, num_partitions: int, preset: str | None = None, segment_size: int | None = None,
                    **levers) -> "PrismConfig":
        """The preset's values, overridden by explicit arguments (unknown names are refused)."""
        base = {}
        if preset is not None:
            if not isinstance(preset, str) or preset not in PRESETS:
                raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
            base = dict(PRESETS[preset])
        known = {f.name for f in dataclasses.fields(cls)} - {"num_partitions"}
        unknown = sorted(set(levers) - known)
        if unknown:
            raise ValueError(f"unknown lever(s) {unknown}; known levers: {sorted(known - {'segment_size'})}")
        if segment_size is not None:
            base["segment_size"] = segment_size
        if "segment_size" not in base:
            raise ValueError("segment_size is required (an int >= 1) unless the preset sets it")
        return cls(num_partitions=num_partitions, **(base | levers))

    def for_layer(self, index: int) -> "PrismConfig":
        """The setting attention layer `index` runs: every summarised token its own row in a dense
        layer (segment size 1, no picks), this config elsewhere."""
        if isinstance(self.dense_layers, str):
            raise ValueError("dense_layers='auto' is resolved by prism_ops.hf.configure for a model first")
        if index not in self.dense_layers:
            return self
        # Every token a row; min_chunk_tokens stays, so a short request resolves this layer (for_tokens)
        # exactly as every other layer: delta codes need every layer of the forward in the chain.
        return self.replace(segment_size=1, heavy_fraction=0.0, dense_layers=())

    def for_tokens(self, num_tokens: int) -> "PrismConfig":
        """The setting a request of num_tokens (padding included) runs: every summarised token its own
        row (segment size 1, no picks, no dense layers to tell apart) when its mean share per rank is
        under min_chunk_tokens, this config otherwise. The ranks, the simulation, the wire layouts
        and the cost model all resolve it from N and P alike."""
        if not self.min_chunk_tokens or num_tokens >= self.min_chunk_tokens * self.num_partitions:
            return self
        return self._every_token()

    @property
    def delta_rows(self) -> str | None:
        """The delta calibration file this setting's rows are coded with, or None: delta_codebook where
        it is the whole setting (no min_chunk_tokens; a short request's `for_tokens`)."""
        return None if self.min_chunk_tokens else self.delta_codebook

    def _every_token(self) -> "PrismConfig":
        """This config with every summarised token sent as its own row (segment size 1, no picks), in
        every layer and at any length: what a short request runs, as delta codes where the config has
        them (within delta_max_partitions)."""
        every = dict(segment_size=1, heavy_fraction=0.0, dense_layers=(), min_chunk_tokens=0)
        cap = self.delta_max_partitions
        if not (self.delta_codebook and (not cap or self.num_partitions <= cap)):
            return self.replace(**every, delta_codebook=None, delta_max_partitions=0)
        if self.delta_codebook == "auto":
            raise ValueError("delta_codebook='auto' is resolved by prism_ops.hf.configure for a model first")
        return self.replace(**every, sink_tokens=0, halo=0, cluster_iters=0, summary_bits=0, summary_codebook=None,
                            verbatim_bits=0, delta_max_partitions=0)

    def replace(self, **changes) -> "PrismConfig":
        """A copy with some fields changed, checked again."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """Every field, JSON-ready (the handshake compares these, the report prints them)."""
        out = dataclasses.asdict(self)
        out["weights"] = None if self.weights is None else list(self.weights)
        out["dense_layers"] = self.dense_layers if isinstance(self.dense_layers, str) else list(self.dense_layers)
        return out


def _checked_dense_layers(value) -> tuple[int, ...] | str:
    """"auto", or distinct layer indices >= 0 as a sorted tuple (hashable, printed the same everywhere)."""
    if value == "auto":
        return value
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"dense_layers must be 'auto' or layer indices (ints >= 0), got {value!r}")
    out = tuple(value)
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in out) or len(set(out)) != len(out):
        raise ValueError(f"dense_layers must be 'auto' or distinct layer indices (ints >= 0), got {value!r}")
    return tuple(sorted(out))
