"""Offline calibration on shipped text: summary codebooks (`prism_ops.ops.codebook_rows`) and a
model's dense layers (`PrismConfig.dense_layers`, the `tuned` preset).

The exact model runs over `calibration_ids`: the last CALIBRATION_CHARS characters of
`prism_ops.models.pydoc_text()`, a slice the evaluation must leave out (`evaluation_text`). Every
attention layer's exchanged rows are recorded as they would travel: K|V rows after rotary
embeddings (`[Hkv, N, 2D]`) for K/V exchange, the attention input (`[1, N, d]`) for hidden
exchange. One k-means per layer, head and channel group then gives the layer's codebook.

Dense layers (`dense_layers`): the exact model runs over DENSE_TOKENS tokens of the same text,
and in every attention layer the preset's PRISM attention (`partitioned_attention` on DENSE_PARTITIONS
simulated partitions) is set against exact attention on the same q, k, v. The layers where it
moves the output most, relatively, a tenth of them (at least one), send every token as its own row.
Measured on SmolLM2 (`bench/bench_lean.py`): its three are the layers whose own full rows lower
perplexity most, one at a time, at N = 8192 and 4 ranks.
"""

from __future__ import annotations

import os
import sys

import torch

from .config import PrismConfig
from .cost import ModelShape
from .hf import attention_modules, configure, max_positions, model_fingerprint, model_kind
from .hf.delta_cache import cached_delta_codes, delta_codes_path
from .hf.dense_layers import load_dense_layers, save_dense_layers
from .models import pydoc_text
from .ops.codebook_rows import MAX_CENTROIDS, fit_codebook, save_codebooks
from .ops.delta_rows import fit_delta_codes, save_delta_codes
from .ops.partitioned_attention import partitioned_attention
from .ops.quantize_rows import verbatim_wire_dtype

DENSE_TOKENS = 8192  # calibration tokens for dense layers (fewer if the model's context or the text is shorter)
DENSE_PARTITIONS = 4
DENSE_SHARE = 0.1  # the share of a model's layers that run dense
CALIBRATION_CHARS = 40_000  # about 9,000 tokens of the ~465,000-character text
CALIBRATION_ROWS = 2048  # token rows per layer the codebooks are fitted on
DELTA_ROWS = 8192  # token rows per layer delta codes are fitted on (1024 centroids need many more than 256)
RECORDER = "prism_calibrate"  # the attention implementation that records K/V rows


def evaluation_text() -> str:
    """The shipped text without its calibration slice: what quality is measured on."""
    text = pydoc_text()
    return text[: len(text) - CALIBRATION_CHARS]


def calibration_text() -> str:
    """The slice codebooks are fitted on (disjoint from `evaluation_text`)."""
    text = pydoc_text()
    return text[len(text) - CALIBRATION_CHARS:]


def calibration_windows(tokenizer, num_windows: int, tokens: int | None) -> torch.Tensor:
    """`[num_windows, tokens]` consecutive token ids of the calibration text (no special tokens);
    tokens=None: one window of the whole text."""
    ids = tokenizer(calibration_text(), add_special_tokens=False)["input_ids"]
    if tokens is None:
        num_windows, tokens = 1, len(ids)
    if len(ids) < num_windows * tokens:
        raise ValueError(f"the calibration text has {len(ids)} tokens, fewer than {num_windows} x {tokens}")
    return torch.tensor(ids[: num_windows * tokens]).view(num_windows, tokens)


def record_rows(model, windows: torch.Tensor, exchange: str) -> list[torch.Tensor]:
    """Every attention layer's exchanged rows over the windows: `[H, N, C]` per layer, in the
    order `prism_ops.hf.configure` numbers the layers."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    attention = attention_modules(model)
    index = {id(m): i for i, m in enumerate(attention)}
    seen: list[list[torch.Tensor]] = [[] for _ in attention]

    def record_kv(module, query, key, value, *args, **kwargs):
        seen[index[id(module)]].append(torch.cat([key, value], -1)[0])  # [Hkv, T, 2D]
        return sdpa_attention_forward(module, query, key, value, *args, **kwargs)

    def record_hidden(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        seen[index[id(module)]].append(h[0][None])  # [1, T, d]

    hooks = []
    if exchange == "kv":
        AttentionInterface.register(RECORDER, record_kv)
        AttentionMaskInterface.register(RECORDER, sdpa_mask)
        model.set_attn_implementation(RECORDER)
    elif exchange == "hidden":
        model.set_attn_implementation("sdpa")
        hooks = [m.register_forward_pre_hook(record_hidden, with_kwargs=True) for m in attention]
    else:
        raise ValueError(f"exchange must be 'kv' or 'hidden', got {exchange!r}")
    try:
        with torch.no_grad():
            for w in windows:
                model(input_ids=w[None])
    finally:
        for h in hooks:
            h.remove()
        model.set_attn_implementation("sdpa")
    return [torch.cat(rows, 1) for rows in seen]


def fit_codebooks(rows: list[torch.Tensor], group: int, centroids: int, iters: int = 20,
                  seed: int = 0) -> list[torch.Tensor]:
    """One `[H, M, K, g]` codebook per layer from `record_rows`' output."""
    return [fit_codebook(r, group, centroids, iters, seed) for r in rows]


def check_geometry(model, exchange: str, group, centroids) -> None:
    """group must divide the head dim (K/V rows; a group never mixes K and V) or the hidden
    size; centroids a power of two in [2, MAX_CENTROIDS]. Raises ValueError naming the argument."""
    shape = ModelShape.from_config(model.config)
    width, what = (shape.head_dim, "head dim") if exchange == "kv" else (shape.hidden_size, "hidden size")
    if isinstance(group, bool) or not isinstance(group, int) or group < 1 or width % group:
        raise ValueError(f"group must be an int that divides the model's {what} {width}, got {group!r}")
    if isinstance(centroids, bool) or not isinstance(centroids, int) or not 2 <= centroids <= MAX_CENTROIDS \
            or centroids & (centroids - 1):
        raise ValueError(f"centroids must be a power of two in [2, {MAX_CENTROIDS}], got {centroids!r}")


def resolve_exchange(model, exchange: str) -> str:
    """"kv" or "hidden": what `prism_ops.hf.configure` makes of `exchange` for this model."""
    return configure(model, PrismConfig(1, 1, exchange=exchange)).config.exchange


def calibration_rows(model, tokenizer, exchange: str) -> list[torch.Tensor]:
    """CALIBRATION_ROWS rows `[H, N, C]` per layer from the calibration text (exchange resolved)."""
    tokens = min(CALIBRATION_ROWS, getattr(model.config, "max_position_embeddings", None) or CALIBRATION_ROWS)
    ids = calibration_windows(tokenizer, -(-CALIBRATION_ROWS // tokens), tokens)
    return record_rows(model, ids, exchange)


def calibrate(model, tokenizer, out, *, group: int = 4, centroids: int = 256, exchange: str = "auto",
              iters: int = 8, seed: int = 0, rows: list | None = None) -> dict:
    """Fit and write the model's summary codebooks to `out`; returns what was written (no tensors).

    exchange: "kv", "hidden" or "auto" (resolved for this model as `prism_ops.hf.configure` does;
    the file is only accepted with the same exchange). rows: `calibration_rows` already recorded
    for this exchange (several geometries from one recording).
    """
    exchange = resolve_exchange(model, exchange)
    check_geometry(model, exchange, group, centroids)
    rows = calibration_rows(model, tokenizer, exchange) if rows is None else rows
    books = fit_codebooks(rows, group, centroids, iters, seed)
    fingerprint = model_fingerprint(model)
    save_codebooks(out, books, exchange, fingerprint)
    return {"exchange": exchange, "group": group, "centroids": centroids, "rows": rows[0].shape[1],
            "layers": len(books), "fingerprint": fingerprint}


def calibrate_delta(model, tokenizer, out, *, group: int = 8, centroids: int = 1024, iters: int = 20,
                    seed: int = 0) -> dict:
    """Fit and write the model's delta codes (`ops.delta_rows`: a predictor and a residual codebook
    per layer, the `delta_codebook` lever) to `out`, from DELTA_ROWS rows of the calibration text
    per layer; returns what was written (no tensors). Hidden-feature exchange only."""
    if model_kind(model) != "encoder":
        raise ValueError(f"delta codes are for encoders so far; model {type(model).__name__} is a {model_kind(model)}")
    if resolve_exchange(model, "auto") != "hidden":
        raise ValueError(f"delta codes code hidden-feature rows, but model {type(model).__name__} exchanges K/V rows "
                         "(rotary embeddings): calibrate a summary codebook instead")
    check_geometry(model, "hidden", group, centroids)
    tokens = min(DELTA_ROWS, max_positions(model) or DELTA_ROWS)
    # Plain text windows, no special tokens: fitted with [CLS] and [SEP] rows, MiniLM's codes did worse
    # (a throwaway comparison on the bench_delta cell).
    rows = record_rows(model, calibration_windows(tokenizer, DELTA_ROWS // tokens, tokens), "hidden")
    predictors, books = fit_delta_codes([r[0] for r in rows], group, centroids, iters, seed)
    fingerprint = model_fingerprint(model)
    save_delta_codes(out, predictors, books, model.config.vocab_size, fingerprint)
    return {"exchange": "hidden", "group": group, "centroids": centroids, "rows": rows[0].shape[1],
            "layers": len(books), "fingerprint": fingerprint}


def layer_errors(model, tokenizer, config: PrismConfig) -> list[float]:
    """Per attention layer, ||PRISM - exact|| / ||exact|| of the layer's attention output under
    config (no dense layers; picks, segments, sinks and rounding of K/V rows) on the calibration
    text, each layer given the exact model's own q, k, v."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if config.dense_layers:
        raise ValueError("layer_errors takes the setting without dense layers")
    ids = calibration_windows(tokenizer, 1, None)[:, :min(DENSE_TOKENS, max_positions(model) or DENSE_TOKENS)]
    attention = attention_modules(model)
    index = {id(m): i for i, m in enumerate(attention)}
    causal = model_kind(model) == "decoder"
    errors = [0.0] * len(attention)

    def measure(module, query, key, value, *args, **kwargs):
        out = sdpa_attention_forward(module, query, key, value, *args, **kwargs)
        exact = out[0].transpose(1, 2)  # [B, H, T, D], as partitioned_attention returns it
        got = partitioned_attention(query, key, value, num_partitions=config.num_partitions,
                                    segment_size=config.segment_size, causal=causal, scale=kwargs.get("scaling"),
                                    sink_tokens=config.sink_tokens, halo=config.halo,
                                    summary_bits=config.summary_bits, heavy_fraction=config.heavy_fraction,
                                    verbatim_dtype=verbatim_wire_dtype(config.verbatim_bits, key.dtype))
        errors[index[id(module)]] = ((got - exact).norm() / exact.norm()).item()
        return out

    AttentionInterface.register(RECORDER, measure)
    AttentionMaskInterface.register(RECORDER, sdpa_mask)
    model.set_attn_implementation(RECORDER)
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        model.set_attn_implementation("sdpa")
    return errors


def dense_layers(model, tokenizer, preset: str = "tuned", count: int | None = None) -> dict:
    """The model's dense layers for preset (a tenth of its layers, at least one, unless count),
    found by `layer_errors` at DENSE_PARTITIONS partitions, and written to the cache
    (`hf.dense_layers`) where dense_layers="auto" finds them. Returns what was written."""
    config = PrismConfig.from_preset(DENSE_PARTITIONS, preset).replace(dense_layers=(), exchange="kv",
                                                                       delta_codebook=None)
    errors = layer_errors(model, tokenizer, config)
    if count is None:
        count = max(1, round(DENSE_SHARE * len(errors)))
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(errors):
        raise ValueError(f"count must be an int in [1, {len(errors)}] (the model's layers), got {count!r}")
    layers = sorted(sorted(range(len(errors)), key=lambda i: -errors[i])[:count])
    info = {"preset": preset, "partitions": DENSE_PARTITIONS, "errors": [round(e, 5) for e in errors]}
    path = save_dense_layers(model, layers, info)
    return {"dense_layers": layers, "path": str(path), **info}


def takes_delta_codes(model) -> bool:
    """Whether delta_codebook="auto" (the tuned preset) gives this model delta codes: an encoder with
    hidden-feature exchange (`prism_ops.hf.configure` decides the same)."""
    return model_kind(model) == "encoder" and resolve_exchange(model, "auto") == "hidden"


def delta_codes_on_first_use(model, tokenizer, name: str) -> str | None:
    """The path of the model's cached delta codes (`hf.delta_cache`), calibrated now (once, then
    cached) when there are none: what `delta_codebook="auto"` finds afterwards. None for a model
    that takes none (`takes_delta_codes`)."""
    if not takes_delta_codes(model):
        return None
    try:
        return cached_delta_codes(model)
    except ValueError:
        path = delta_codes_path(model)
        if path is None:
            raise
        print(f"fitting {name}'s delta codes for the tuned preset, once (prism-calibrate --model {name} "
              "--delta-codes; cached)", file=sys.stderr, flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        calibrate_delta(model, tokenizer, tmp)
        os.replace(tmp, path)  # whole or not at all
        return str(path)


def dense_layers_on_first_use(model, tokenizer, name: str) -> tuple[int, ...]:
    """The model's calibrated dense layers (`hf.dense_layers`), calibrated now (once, then cached) when
    the cache has none for it: what `dense_layers="auto"` finds afterwards."""
    try:
        return load_dense_layers(model)
    except ValueError:
        print(f"finding {name}'s dense layers for the tuned preset, once (prism-calibrate --model {name} "
              "--dense-layers; cached)", file=sys.stderr, flush=True)
        return tuple(dense_layers(model, tokenizer)["dense_layers"])
