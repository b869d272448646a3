"""`register` and `configure`: run every attention layer of a transformers model as PRISM.

`configure` checks the model and the settings before any model work (every keyword a module
passes its attention function: `prism_ops.hf.attention_calls`), then gives each attention module
one `PrismLayer` (`prism_ops.strategy`) with the partition strategy: `SimulatedPartitions`, or
`RankPartition` with `comm=`.
"""

from __future__ import annotations

import logging
import weakref

import torch

from prism_ops.config import PrismConfig
from prism_ops.cost import ModelShape
from prism_ops.ops.codebook_rows import load_codebooks
from prism_ops.ops.delta_rows import load_delta_codes
from prism_ops.strategy import LAYER_ATTR, PrismLayer, RankPartition, SimulatedPartitions, attached_layers

from .attention_calls import REFUSED, call_keywords, is_set, module_features
from .delta_cache import cached_delta_codes
from .dense_layers import load_dense_layers
from .forward import capture_hidden, prism_attention_forward
from .model import embed_tokens, kv_params, kv_weight, model_fingerprint, model_kind
from .runner import NAME, HFRunner

log = logging.getLogger("prism_ops")


def attention_modules(model) -> list:
    """The modules of `model` whose forward calls transformers' attention interface, in order:
    the ones `configure` runs as PRISM (numbered 0.. in this order)."""
    return [m for m in model.modules() if call_keywords(type(m)) is not None]


def _layer_features(model, module):
    """(window, softcap) of one attention module, or raise naming the feature and the model:
    what its attention call passes (`prism_ops.hf.attention_calls`), checked before any forward."""
    name = f"{type(model).__name__} ({type(module).__name__})"
    try:
        feats = module_features(module)
    except NotImplementedError as e:
        raise NotImplementedError(f"model {name}: {e}") from None
    for key, what in REFUSED.items():
        if is_set(feats.get(key)):
            raise NotImplementedError(f"model {name} uses {what}, which prism attention does not implement; "
                                      "use attn_implementation='sdpa' or 'eager' for it")
    dropout = feats.get("dropout")
    if isinstance(dropout, (int, float)) and dropout > 0:
        raise ValueError(f"model {name} applies attention dropout {dropout} (training mode): prism attention is for "
                         "inference; call model.eval() before configure")
    window, softcap = feats.get("sliding_window"), feats.get("softcap")
    if window is not None:
        positions = getattr(model.config, "max_position_embeddings", None)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"model {name} has sliding_window={window!r}; expected None or an int >= 1")
        if isinstance(positions, int) and window > positions:
            raise ValueError(f"model {name} has sliding_window={window} larger than its max_position_embeddings="
                             f"{positions}; set the config's sliding_window to at most {positions} (or None)")
    if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or softcap <= 0):
        raise ValueError(f"model {name} has softcap={softcap!r}; expected None or a number > 0")
    return window, None if softcap is None else float(softcap)


def _resolve_exchange(model, wanted, attention):
    """"kv" or "hidden" for this model: hidden needs K and V to depend on the hidden features
    only (no rotary embeddings) and a known projection layout in every attention module."""
    if wanted == "kv":
        return "kv"
    unknown = sorted({type(m).__name__ for m in attention if kv_weight(m) is None})
    why = None
    if getattr(model.config, "rope_parameters", None):
        why = "the model uses rotary position embeddings (K depends on position, not only on the hidden features)"
    elif unknown:
        why = (f"{', '.join(unknown)} has no known key/value projection layout (known: BERT key/value, k_proj/v_proj, "
               "k_lin/v_lin, GPT-2 c_attn, qkv_proj, Wqkv, query_key_value)")
    if why is None:
        return "hidden"
    if wanted == "hidden":
        raise ValueError(f"exchange='hidden' is not possible here: {why}; use exchange='kv' or 'auto'")
    log.info("prism_ops: exchange='auto' exchanges K/V rows for %s: %s", type(model).__name__, why)
    return "kv"


def register() -> None:
    """Register `attn_implementation="prism"` (attention and mask functions) with transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, prism_attention_forward)
    # Without a mask function transformers would build no mask: causal models would silently
    # turn bidirectional and padding would be attended to.
    AttentionMaskInterface.register(NAME, sdpa_mask)


def configure(model, config: PrismConfig | None = None, *, comm=None, num_partitions=None, segment_size=None,
              preset=None, **levers):
    """Run every attention layer of `model` as PRISM.

    Args:
        config: a `PrismConfig`; or build one from num_partitions, segment_size, preset and the
            levers (`PrismConfig.from_preset`; explicit arguments override the preset).
        comm: None simulates all partitions in this process; a
            `prism_ops.distributed.comm.Communicator` makes this process one rank of
            config.num_partitions (= comm.size); run it through `prism_ops.distributed.runtime.run_distributed`.

    Returns the model's `HFRunner` (`.model`, `.config`: the config in use, with `exchange`
    resolved to "kv" or "hidden" for this model; `.partition`: the strategy its layers run), what
    `prism_ops.distributed.runtime.run_distributed` and `prism_ops.in_process` take.

    Raises TypeError for a model that is not a transformers model, a config that is not a
    PrismConfig or a comm without an int `size`; ValueError for bad settings (named by field), a
    model with no attention module that calls transformers' attention interface, or a bad window;
    NotImplementedError for an attention feature prism attention does not implement (attention
    sinks, position biases, an unknown keyword; `prism_ops.hf.attention_calls`). All before any model work.
    """
    config = _checked_config(model, config, comm, num_partitions, segment_size, preset, levers)
    attention = _attention_or_refuse(model)
    features = [_layer_features(model, m) for m in attention]
    _check_windowed(model, config, features)
    exchange = _resolve_exchange(model, config.exchange, attention)
    if config.delta_codebook == "auto":  # this encoder's cached codes; no codes for other models
        takes = config.min_chunk_tokens and _takes_delta(model, exchange, features)
        config = config.replace(delta_codebook=cached_delta_codes(model) if takes else None)
    if config.delta_codebook and exchange != "hidden":
        raise ValueError(f"delta_codebook={config.delta_codebook!r} codes hidden-feature rows, but model "
                         f"{type(model).__name__} exchanges {exchange} rows (rotary embeddings or another position "
                         "scheme that needs K/V rows): use summary_bits or summary_codebook")
    config = config.replace(exchange=exchange,
                            dense_layers=_resolve_dense_layers(model, config.dense_layers, len(attention)))
    register()
    for old in attached_layers(model):
        old.detach()
    for m in model.modules():
        if getattr(m, LAYER_ATTR, None) is not None:
            delattr(m, LAYER_ATTR)
    books = _codebooks(model, config) if config.summary_codebook else None
    deltas = _delta_codes(model, config, len(attention)) if config.delta_codebook else None
    strategy = SimulatedPartitions() if comm is None else RankPartition(comm)
    head_dim = ModelShape.from_config(model.config).head_dim
    for index, m in enumerate(attention):
        window, softcap = features[index]
        # A dense layer runs its own setting (`PrismConfig.for_layer`); the model's stays on model_config.
        layer = PrismLayer(m, config.for_layer(index), index, head_dim, strategy, kv_params=kv_params, window=window,
                           softcap=softcap)
        layer.model_config = config
        layer.codebook = None if books is None else books[index]
        if deltas is not None:
            layer.delta, layer.delta_last = deltas[index], index == len(attention) - 1
            layer.embed = _Embedder(model) if index == 0 else None
        if strategy.needs_hidden(config):
            layer.hook = m.register_forward_pre_hook(capture_hidden(layer), with_kwargs=True)
        setattr(m, LAYER_ATTR, layer)
    model.set_attn_implementation(NAME)
    return HFRunner(model, config, strategy, len(attention))


def _checked_config(model, config, comm, num_partitions, segment_size, preset, levers) -> PrismConfig:
    """configure's arguments checked (TypeError, ValueError naming them), as one PrismConfig."""
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "set_attn_implementation") \
            or not hasattr(model, "config"):
        raise TypeError(f"model must be a Hugging Face transformers model (a PreTrainedModel, e.g. from "
                        f"AutoModel.from_pretrained), got {type(model).__name__}")
    if config is not None and not isinstance(config, PrismConfig):
        raise TypeError(f"config must be a prism_ops.PrismConfig (or leave it None and pass num_partitions=...), "
                        f"got {type(config).__name__}")
    if config is None:
        if num_partitions is None:
            raise ValueError("configure needs a PrismConfig or num_partitions (and segment_size or a preset)")
        config = PrismConfig.from_preset(num_partitions, preset, segment_size, **levers)
    elif num_partitions is not None or segment_size is not None or preset is not None or levers:
        raise ValueError("give configure either a PrismConfig or keyword settings, not both")
    size = getattr(comm, "size", None)
    if comm is not None and (isinstance(size, bool) or not isinstance(size, int)):
        raise TypeError(f"comm must be a prism_ops.distributed.comm.Communicator (or None to simulate), "
                        f"got {type(comm).__name__}")
    if comm is not None and comm.size != config.num_partitions:
        raise ValueError(f"num_partitions must equal the number of ranks comm.size={comm.size}, "
                         f"got {config.num_partitions}")
    return config


def _attention_or_refuse(model) -> list:
    """The model's attention modules that call transformers' attention interface, or ValueError /
    NotImplementedError for a model prism attention cannot run (none, or an ALiBi bias)."""
    attention = attention_modules(model)
    if not attention:  # nothing would run as PRISM, and every forward would fail later
        own = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith("Attention")})
        itself = f" ({', '.join(own)} computes attention itself)" if own else ""
        raise ValueError(f"model {type(model).__name__} has no attention module that calls transformers' attention "
                         f"interface (attn_implementation){itself}: prism attention cannot run it")
    if getattr(model.config, "alibi", False) is True:  # Falcon-RW: the bias rides in the attention mask
        raise NotImplementedError(f"model {type(model).__name__} uses an ALiBi position bias (config.alibi), which "
                                  "prism attention does not implement; use attn_implementation='sdpa' or 'eager' "
                                  "for this model")
    return attention


def _check_windowed(model, config: PrismConfig, features: list) -> None:
    """Levers that have no meaning, or no implementation, on sliding-window or soft-capped layers."""
    windowed = [i for i, (w, c) in enumerate(features) if w is not None or c is not None]
    if not windowed:
        return
    what = "sliding-window or soft-capped attention"
    if config.cluster_iters:
        raise ValueError(f"cluster_iters={config.cluster_iters}: model {type(model).__name__} has {what} "
                         f"(layers {windowed}), where a key-cluster row has no span; use cluster_iters=0")
    if config.heavy_fraction:
        raise NotImplementedError(f"heavy_fraction (the lean preset) with {what} (model {type(model).__name__}, "
                                  f"layers {windowed}) is not implemented; use the edge or fast preset")
    if config.summary_codebook:
        raise NotImplementedError(f"summary_codebook with {what} (model {type(model).__name__}) is not "
                                  "implemented; use summary_bits instead")
    if config.delta_codebook and config.delta_codebook != "auto":
        raise NotImplementedError(f"delta_codebook with {what} (model {type(model).__name__}) is not implemented")
    if config.backend == "triton":
        raise ValueError(f"backend='triton' has no {what} (model {type(model).__name__}); use backend='auto' or "
                         "'torch'")


def _codebooks(model, config: PrismConfig) -> list:
    """The per-layer codebooks of config.summary_codebook, refused unless made for this model
    and this exchange (before any forward)."""
    path = config.summary_codebook
    data = load_codebooks(path)
    _check_fingerprint(model, data, f"summary_codebook={path!r}", "prism-calibrate")
    if data["exchange"] != config.exchange:
        raise ValueError(f"summary_codebook={path!r} codes {data['exchange']} rows but this model exchanges "
                         f"{config.exchange} rows; calibrate with --exchange {config.exchange} or set "
                         f"exchange={data['exchange']!r}")
    return data["codebooks"]


class _Embedder:
    """Delta codes' layer 0 on a rank: the embeddings of other ranks' token ids (`embed_tokens`), on
    the model's device. Holds the model weakly (the model holds its layers)."""

    def __init__(self, model):
        self._model = weakref.ref(model)

    def __call__(self, ids, positions):
        model = self._model()
        dev = next(model.parameters()).device
        return embed_tokens(model, ids.to(dev), positions.to(dev))


def _check_fingerprint(model, data: dict, what: str, command: str) -> None:
    """ValueError unless the calibration file's fingerprint is this model's."""
    mine, theirs = model_fingerprint(model), data["fingerprint"]
    differ = sorted(k for k in mine if theirs.get(k) != mine[k])
    if differ:
        got = ", ".join(f"{k} {theirs.get(k)!r} (this model: {mine[k]!r})" for k in differ)
        raise ValueError(f"{what} was calibrated for another model: {got}; calibrate this one with {command}")


def _takes_delta(model, exchange: str, features: list) -> bool:
    """Whether delta_codebook="auto" gives this model delta codes: an encoder with hidden-feature
    exchange and no sliding window or logit cap."""
    plain = all(w is None and c is None for w, c in features)
    return model_kind(model) == "encoder" and exchange == "hidden" and plain


def _delta_codes(model, config: PrismConfig, num_layers: int) -> list:
    """(predictor, codebook) of each attention layer from config.delta_codebook, refused unless made
    for this model and its layers (before any forward; its exchange is checked before)."""
    path = config.delta_codebook
    if model_kind(model) != "encoder":
        raise NotImplementedError(f"delta_codebook={path!r} is for encoders so far; model {type(model).__name__} is a "
                                  f"{model_kind(model)}")
    data = load_delta_codes(path)
    _check_fingerprint(model, data, f"delta_codebook={path!r}", "prism-calibrate --delta-codes")
    if len(data["predictors"]) != num_layers or data["vocab_size"] != getattr(model.config, "vocab_size", None):
        raise ValueError(f"delta_codebook={path!r} has {len(data['predictors'])} layers and a vocabulary of "
                         f"{data['vocab_size']}; model {type(model).__name__} has {num_layers} attention layers and "
                         f"{getattr(model.config, 'vocab_size', None)}: calibrate this one with prism-calibrate "
                         "--delta-codes")
    return list(zip(data["predictors"], data["codebooks"]))


def _resolve_dense_layers(model, dense_layers, num_layers: int) -> tuple:
    """The layer indices dense_layers names, checked against the model's attention layers; "auto":
    this model's calibrated ones (`dense_layers.load_dense_layers`: a clear error when missing)."""
    if dense_layers == "auto":
        dense_layers = load_dense_layers(model)
    bad = [i for i in dense_layers if i >= num_layers]
    if bad:
        raise ValueError(f"dense_layers {bad} are not among model {type(model).__name__}'s {num_layers} attention "
                         f"layers (0 to {num_layers - 1})")
    return dense_layers


def config_of(model) -> PrismConfig:
    """The PrismConfig a model was configured with (exchange resolved)."""
    layers = attached_layers(model)
    if not layers:
        raise ValueError("the model is not configured: call prism_ops.hf.configure(model, ...) first")
    return layers[0].model_config
