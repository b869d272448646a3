"""Hugging Face drop-in: `attn_implementation="prism"` for transformers models.

    prism_ops.hf.register()
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa")
    prism_ops.hf.configure(model, num_partitions=4, segment_size=16)

After `configure`, every attention module holds one `PrismLayer` (config, index, head dim,
projections, partition strategy: `prism_ops.strategy`). Simulated, each layer runs
`partitioned_attention`: the sequence is cut into `num_partitions` chunks, as if each ran on its
own rank, and each chunk sees the others through segment means. With `comm=` this process is one
MPI rank (`prism_ops.distributed`). The settings are one `PrismConfig` (`prism_ops.config`), or
its fields and a preset name as keywords. The SDPA mask builder is registered with the
attention function, so causal models stay causal and tokenizer padding masks are honoured.
transformers hands the attention function q `[B, H, T, D]` and k, v `[B, Hkv, T, D]`.
"""

from __future__ import annotations

import contextvars
import hashlib
import weakref

import torch

from .config import PrismConfig
from .cost import ModelShape
from .distributed.attention import RankPartition
from .ops.codebook_rows import load_codebooks
from .ops.prism_attention import prism_attention
from .strategy import LAYER_ATTR, SimulatedPartitions, attached_layers, current_state

NAME = "prism"

# The attention input of the layer running now, for hidden-feature exchange: set by the layer's
# forward pre-hook and taken by its attention call, so nothing outlives the call.
_HIDDEN: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("prism_hidden", default=None)


class PrismLayer:
    """What one attention module needs to run PRISM: the config, its index among the model's
    attention layers, its head dim, its key/value projections (read live from the module, so
    `model.half()` after configure is seen) and the partition strategy."""

    def __init__(self, module, config: PrismConfig, index: int, head_dim: int, strategy):
        self.config, self.index, self.head_dim, self.strategy = config, index, head_dim, strategy
        self._module = weakref.ref(module)
        self.hook = None  # the forward pre-hook that captures the attention input (hidden exchange)
        self.codebook = None  # this layer's [H, M, K, g] codebook with summary_codebook

    def kv_weight(self):
        """(w_k, w_v), each `[Hkv * D, d]`."""
        return kv_weight(self._module())

    def kv_bias(self):
        """(b_k, b_v), each `[Hkv * D]` or None."""
        return kv_bias(self._module())

    def detach(self) -> None:
        if self.hook is not None:
            self.hook.remove()
            self.hook = None


def _padding_from_mask(attention_mask, T):
    """Key padding `[B, T]` (True = real token) from the 4-D mask transformers built, or None."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 4:
        raise ValueError(f"attention_mask must be the 4-D mask built by transformers, got {attention_mask.dim()}-D")
    last = attention_mask[:, 0, -1, -T:]  # the last query row sees every real key (causal or not)
    return last if last.dtype == torch.bool else last == 0


def prism_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                            is_causal=None, **kwargs):
    """The function transformers calls per attention layer; returns ([B, T, H, D], None)."""
    layer = getattr(module, LAYER_ATTR, None)
    if layer is None:
        raise ValueError("attn_implementation='prism' needs prism_ops.hf.configure(model, ...) first")
    if dropout and module.training:
        raise ValueError("prism attention is for inference: call model.eval() (attention dropout is not applied)")
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", False))
    hidden = None
    if layer.hook is not None:  # only a hooked layer is handed its input (and torch.compile cannot trace a ContextVar)
        hidden = _HIDDEN.get()
        _HIDDEN.set(None)
        if hidden is not None and hidden[0] is not layer:
            hidden = None
    state = current_state()
    T = query.shape[2]
    if key.shape[2] != T:
        out = _decode_step(layer, state, query, key, value, scaling, causal)
        return out.transpose(1, 2).contiguous(), None
    out, rows = layer.strategy.attend(layer, query, key, value, valid=_padding_from_mask(attention_mask, T),
                                      hidden=None if hidden is None else hidden[1], scale=scaling, causal=causal,
                                      state=state)
    if rows is not None and state is not None:
        state.rows[layer.index] = rows
    return out.transpose(1, 2).contiguous(), None


def _decode_step(layer, state, query, key, value, scale, causal):
    """New tokens of a decoder (a KV cache longer than the queries): the last partition decodes
    with its exact KV cache (from `start`) plus the rows it cached at prefill. Simulated or on
    the last MPI rank alike."""
    rows = None if state is None else state.rows.get(layer.index)
    if not causal or rows is None:
        raise ValueError(
            f"prism attention got {query.shape[2]} queries for {key.shape[2]} keys (a KV cache): only a causal "
            "model decodes, after a prefill through prism attention in the same prism_ops.request_scope()"
        )
    start, k_sum, v_sum, counts = rows
    cfg = layer.config
    return prism_attention(query, key[:, :, start:], value[:, :, start:], k_sum, v_sum, counts, causal=True,
                           scale=scale, log_count_bias=cfg.log_count_bias, backend=cfg.backend)


def kv_weight(module):
    """(w_k, w_v), each `[Hkv * D, d]`, of an attention module that projects its input, or None.

    Known layouts: BERT (`key`, `value`), ViT and Llama-style (`k_proj`, `v_proj`), GPT-2
    (`c_attn`, a Conv1D holding [q | k | v] as `[d, 3d]`).
    """
    return _kv_params(module, "weight")


def kv_bias(module):
    """(b_k, b_v), each `[Hkv * D]` or None, matching `kv_weight`."""
    return _kv_params(module, "bias")


def _kv_params(module, name):
    """The key and value projections' `name` ("weight" or "bias") in one of the known layouts."""
    for k, v in (("key", "value"), ("k_proj", "v_proj")):
        if isinstance(getattr(module, k, None), torch.nn.Linear):
            return getattr(getattr(module, k), name), getattr(getattr(module, v), name)
    c_attn = getattr(module, "c_attn", None)
    if c_attn is not None and getattr(module, "split_size", None) and c_attn.weight.shape[1] == 3 * module.split_size:
        d = module.split_size
        t = c_attn.weight.T if name == "weight" else c_attn.bias  # (3d, d) or (3d,)
        return t[d : 2 * d], t[2 * d :]
    return None


def _capture_hidden(layer):
    """Forward pre-hook: hand the attention input, which hidden-feature exchange averages, to the
    attention call that follows."""

    def hook(module, args, kwargs):
        _HIDDEN.set((layer, args[0] if args else kwargs["hidden_states"]))

    return hook


def _resolve_exchange(model, wanted):
    """"kv" or "hidden" for this model (its attention modules have a known projection layout)."""
    if wanted == "kv":
        return "kv"
    if not getattr(model.config, "rope_parameters", None):
        return "hidden"
    if wanted == "hidden":
        raise ValueError("exchange='hidden' is not possible here: the model uses rotary position embeddings "
                         "(K depends on position, not only on the hidden features); use exchange='kv' or 'auto'")
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
            `prism_ops.distributed.Communicator` makes this process one rank of
            config.num_partitions (= comm.size); run it through `prism_ops.distributed.run_distributed`.

    Returns the model. `config_of(model)` gives the config in use, with `exchange` resolved to
    "kv" or "hidden" for this model.

    Raises TypeError for a model that is not a transformers model, a config that is not a
    PrismConfig or a comm without an int `size`; ValueError for bad settings (named by field) or a
    model with no attention module of a known layout. All before any model work.
    """
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
        raise TypeError(f"comm must be a prism_ops.distributed.Communicator (or None to simulate), "
                        f"got {type(comm).__name__}")
    if comm is not None and comm.size != config.num_partitions:
        raise ValueError(f"num_partitions must equal the number of ranks comm.size={comm.size}, "
                         f"got {config.num_partitions}")
    attention = [m for m in model.modules() if kv_weight(m) is not None]
    if not attention:  # nothing would run as PRISM, and every forward would fail later
        raise ValueError(f"model {type(model).__name__} has no attention module with a known key/value projection "
                         "layout (BERT key/value, k_proj/v_proj, GPT-2 c_attn)")
    config = config.replace(exchange=_resolve_exchange(model, config.exchange))
    register()
    for old in attached_layers(model):
        old.detach()
    for m in model.modules():
        if getattr(m, LAYER_ATTR, None) is not None:
            delattr(m, LAYER_ATTR)
    books = _codebooks(model, config) if config.summary_codebook else None
    strategy = SimulatedPartitions() if comm is None else RankPartition(comm, config, num_layers=len(attention))
    head_dim = ModelShape.from_config(model.config).head_dim
    for index, m in enumerate(attention):
        layer = PrismLayer(m, config, index, head_dim, strategy)
        layer.codebook = None if books is None else books[index]
        # The simulation needs the attention input only to round it; a rank sends it.
        rounds = config.summary_bits or config.summary_codebook
        if config.exchange == "hidden" and (rounds or comm is not None):
            layer.hook = m.register_forward_pre_hook(_capture_hidden(layer), with_kwargs=True)
        setattr(m, LAYER_ATTR, layer)
    model.set_attn_implementation(NAME)
    return model


def model_fingerprint(model) -> dict:
    """What a calibration file must have been made on: architecture, sizes and a weight digest."""
    shape = ModelShape.from_config(model.config)
    archs = getattr(model.config, "architectures", None) or [type(model).__name__]
    return {"architecture": archs[0], "layers": shape.num_layers, "hidden_size": shape.hidden_size,
            "heads": shape.num_heads, "kv_heads": shape.num_kv_heads, "head_dim": shape.head_dim,
            "weights": sampled_weights_digest(model)}


def sampled_weights_digest(model) -> str:
    """A digest of 256 evenly strided values of every weight tensor, exactly as stored.

    No arithmetic on the values (unlike a sum, which changes with the thread count), so the same
    weights give the same digest in any process. A weight change that misses every sampled value
    goes unnoticed; it only guards against a file made for another checkpoint or dtype.
    """
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            flat = p.detach().flatten()
            h.update(f"{name}:{list(p.shape)}:{p.dtype}".encode())
            h.update(flat[:: max(1, flat.numel() // 256)].cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _codebooks(model, config: PrismConfig) -> list:
    """The per-layer codebooks of config.summary_codebook, refused unless made for this model
    and this exchange (before any forward)."""
    path = config.summary_codebook
    data = load_codebooks(path)
    mine, theirs = model_fingerprint(model), data["fingerprint"]
    differ = sorted(k for k in mine if theirs.get(k) != mine[k])
    if differ:
        got = ", ".join(f"{k} {theirs.get(k)!r} (this model: {mine[k]!r})" for k in differ)
        raise ValueError(f"summary_codebook={path!r} was calibrated for another model: {got}; "
                         "calibrate this one with prism-calibrate")
    if data["exchange"] != config.exchange:
        raise ValueError(f"summary_codebook={path!r} codes {data['exchange']} rows but this model exchanges "
                         f"{config.exchange} rows; calibrate with --exchange {config.exchange} or set "
                         f"exchange={data['exchange']!r}")
    return data["codebooks"]


def config_of(model) -> PrismConfig:
    """The PrismConfig a model was configured with (exchange resolved)."""
    layers = attached_layers(model)
    if not layers:
        raise ValueError("the model is not configured: call prism_ops.hf.configure(model, ...) first")
    return layers[0].config
