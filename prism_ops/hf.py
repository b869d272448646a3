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

Every keyword a module passes its attention function is handled or refused at `configure`, before
any forward (`prism_ops.hf_attention`): sliding windows and logit soft-capping run exactly at
segment size 1 (`prism_ops.ops.window_attention` says what they mean for summary rows); sinks,
position biases, packed sequences and unknown keywords are refused, naming the feature and the
model. The 4-D mask must be what causal-or-bidirectional attention, padding and the layer's window
give; any other mask is refused at the call.
"""

from __future__ import annotations

import contextvars
import logging
import weakref

import torch

from .config import PrismConfig
from .cost import ModelShape
from .distributed.attention import RankPartition
from .distributed.handshake import weights_digest
from .hf_attention import REFUSED, call_keywords, check_call_kwargs, is_set, module_features
from .ops.codebook_rows import load_codebooks
from .ops.prism_attention import prism_attention
from .ops.window_attention import windowed_prism_attention
from .strategy import LAYER_ATTR, SimulatedPartitions, attached_layers, current_state

log = logging.getLogger("prism_ops")

NAME = "prism"

# The attention input of the layer running now, for hidden-feature exchange: set by the layer's
# forward pre-hook and taken by its attention call, so nothing outlives the call.
_HIDDEN: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("prism_hidden", default=None)


class PrismLayer:
    """What one attention module needs to run PRISM: the config, its index among the model's
    attention layers, its head dim, its key/value projections (read live from the module, so
    `model.half()` after configure is seen) and the partition strategy."""

    def __init__(self, module, config: PrismConfig, index: int, head_dim: int, strategy, *, window=None,
                 softcap=None):
        self.config, self.index, self.head_dim, self.strategy = config, index, head_dim, strategy
        self.window, self.softcap = window, softcap  # the layer's sliding window and logit cap, or None
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


def _padding_from_mask(attention_mask, T, causal=False, window=None):
    """Key padding `[B, T]` (True = real token) from the 4-D mask transformers built, or None.

    A real key is seen by its own query (causal or not, any window), a padding key by none: the
    padding is the mask's columns that some query sees. The mask must then be exactly what causal
    (or bidirectional) attention, that padding and `window` give; anything else (packed sequences,
    a prefix-LM, chunked attention, a window other than the layer's) is refused, never misread.
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() != 4:
        raise ValueError(f"attention_mask must be the 4-D mask built by transformers, got {attention_mask.dim()}-D")
    m = attention_mask[:, :, -T:, -T:]
    seen = m if m.dtype == torch.bool else m == 0
    valid = seen.any(dim=2).all(dim=1)  # (B, T): the columns some query sees (in every head)
    if torch.compiler.is_compiling():  # the check reads data (a graph break): eager forwards make it
        return valid
    i = torch.arange(T, device=m.device)
    want = torch.ones((T, T), dtype=torch.bool, device=m.device)
    if causal:
        want = want & (i[None, :] <= i[:, None])
    if window is not None:
        want = want & ((i[:, None] - i[None, :]).abs() < window)
    want = want[None, None] & valid[:, None, None, :]
    # A float mask must hold 0 (seen) and large negatives (masked) only: any other value is a bias.
    biased = m.dtype != torch.bool and not bool(((m == 0) | (m <= torch.finfo(m.dtype).min / 2)).all())
    if biased or not bool((seen == want).all()):
        kind = ("causal" if causal else "bidirectional") + (f" with a sliding window of {window}" if window else "")
        raise ValueError(f"attention_mask is not {kind} attention plus key padding (e.g. packed sequences, a "
                         "prefix-LM, chunked attention or a position bias): prism attention cannot run it")
    return valid


def prism_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                            is_causal=None, sliding_window=None, softcap=None, **kwargs):
    """The function transformers calls per attention layer; returns ([B, T, H, D], None)."""
    layer = getattr(module, LAYER_ATTR, None)
    if layer is None:
        raise ValueError("attn_implementation='prism' needs prism_ops.hf.configure(model, ...) first")
    if dropout and module.training:
        raise ValueError("prism attention is for inference: call model.eval() (attention dropout is not applied)")
    check_call_kwargs(module, kwargs)
    if sliding_window != layer.window or softcap != layer.softcap:
        raise ValueError(f"{type(module).__name__} passed sliding_window={sliding_window}, softcap={softcap} but was "
                         f"configured with {layer.window}, {layer.softcap}: call prism_ops.hf.configure again")
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
    out, rows = layer.strategy.attend(layer, query, key, value,
                                      valid=_padding_from_mask(attention_mask, T, causal, layer.window),
                                      hidden=None if hidden is None else hidden[1], scale=scaling, causal=causal,
                                      state=state)
    if rows is not None and state is not None:
        state.rows[layer.index] = rows
    return out.transpose(1, 2).contiguous(), None


def _decode_step(layer, state, query, key, value, scale, causal):
    """New tokens of a decoder (a KV cache longer than the queries): the last partition decodes
    with its exact KV cache (from `start`) plus the rows it cached at prefill. Simulated or on
    the last MPI rank alike. A sliding-window or soft-capped layer goes by positions: its cache
    may hold only the window's last tokens, and cached rows drop out as the window moves on."""
    rows = None if state is None else state.rows.get(layer.index)
    if not causal or rows is None:
        raise ValueError(
            f"prism attention got {query.shape[2]} queries for {key.shape[2]} keys (a KV cache): only a causal "
            "model decodes, after a prefill through prism attention in the same prism_ops.request_scope()"
        )
    cfg = layer.config
    if layer.window is None and layer.softcap is None:
        return prism_attention(query, key[:, :, rows.start:], value[:, :, rows.start:], rows.k_sum, rows.v_sum,
                               rows.counts, causal=True, scale=scale, log_count_bias=cfg.log_count_bias,
                               backend=cfg.backend)
    Tq, Tk = query.shape[2], key.shape[2]
    rows.end += Tq
    k_pos = torch.arange(rows.end - Tk, rows.end, device=query.device)
    first = int((k_pos < rows.pos0 + rows.start).sum())  # earlier partitions' keys: seen as rows only
    spans = None if rows.k_sum is None else rows.spans.to(query.device)
    return windowed_prism_attention(
        query, key[:, :, first:], value[:, :, first:], rows.k_sum, rows.v_sum, rows.counts, q_pos=k_pos[Tk - Tq:],
        k_pos=k_pos[first:], sum_spans=spans, causal=True, window=layer.window, softcap=layer.softcap, scale=scale,
        log_count_bias=cfg.log_count_bias, backend=cfg.backend)


def kv_weight(module):
    """(w_k, w_v), each `[Hkv * D, d]`, of an attention module that projects its input, or None.

    Known layouts: BERT (`key`, `value`), ViT, CLIP, Whisper and Llama-style (`k_proj`, `v_proj`),
    DistilBERT (`k_lin`, `v_lin`), GPT-2 (`c_attn`, a Conv1D holding [q | k | v] as `[d, 3d]`) and
    the fused Linear layers: Phi-3 `qkv_proj` ([q | k | v] with Hkv key/value heads), ModernBERT
    `Wqkv` ([q | k | v]), GPT-NeoX `query_key_value` ([q_h | k_h | v_h] per head h).
    """
    return _kv_params(module, "weight")


def kv_bias(module):
    """(b_k, b_v), each `[Hkv * D]` or None, matching `kv_weight`."""
    return _kv_params(module, "bias")


def _heads(module):
    """(H, Hkv, D) of an attention module with a fused projection, from its config."""
    cfg = getattr(module, "config", None)
    H = getattr(cfg, "num_attention_heads", None)
    D = getattr(module, "head_dim", None) or getattr(module, "head_size", None)
    Hkv = getattr(module, "num_key_value_heads", None) or getattr(cfg, "num_key_value_heads", None) or H
    return H, Hkv, D


def _kv_params(module, name):
    """The key and value projections' `name` ("weight" or "bias") in one of the known layouts."""
    for k, v in (("key", "value"), ("k_proj", "v_proj"), ("k_lin", "v_lin")):
        if isinstance(getattr(module, k, None), torch.nn.Linear):
            return getattr(getattr(module, k), name), getattr(getattr(module, v), name)
    c_attn = getattr(module, "c_attn", None)
    if c_attn is not None and getattr(module, "split_size", None) and c_attn.weight.shape[1] == 3 * module.split_size:
        d = module.split_size
        t = c_attn.weight.T if name == "weight" else c_attn.bias  # (3d, d) or (3d,)
        return t[d : 2 * d], t[2 * d :]
    for attr in ("qkv_proj", "Wqkv", "query_key_value"):
        lin = getattr(module, attr, None)
        if not isinstance(lin, torch.nn.Linear):
            continue
        H, Hkv, D = _heads(module)
        if not (H and Hkv and D) or lin.out_features != (H + 2 * Hkv) * D:
            return None
        t = getattr(lin, name)
        if t is None:
            return None, None
        if attr == "query_key_value":  # per head [q | k | v]: (H, 3, D, ...)
            t = t.view(H, 3, D, *t.shape[1:])
            return t[:, 1].reshape(H * D, *t.shape[3:]), t[:, 2].reshape(H * D, *t.shape[3:])
        return t[H * D : (H + Hkv) * D], t[(H + Hkv) * D :]
    return None


def attention_modules(model) -> list:
    """The modules of `model` whose forward calls transformers' attention interface, in order:
    the ones `configure` runs as PRISM (numbered 0.. in this order)."""
    return [m for m in model.modules() if call_keywords(type(m)) is not None]


def _layer_features(model, module):
    """(window, softcap) of one attention module, or raise naming the feature and the model:
    what its attention call passes (`prism_ops.hf_attention`), checked before any forward."""
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


def _capture_hidden(layer):
    """Forward pre-hook: hand the attention input, which hidden-feature exchange averages, to the
    attention call that follows."""

    def hook(module, args, kwargs):
        _HIDDEN.set((layer, args[0] if args else kwargs["hidden_states"]))

    return hook


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
            `prism_ops.distributed.Communicator` makes this process one rank of
            config.num_partitions (= comm.size); run it through `prism_ops.distributed.run_distributed`.

    Returns the model. `config_of(model)` gives the config in use, with `exchange` resolved to
    "kv" or "hidden" for this model.

    Raises TypeError for a model that is not a transformers model, a config that is not a
    PrismConfig or a comm without an int `size`; ValueError for bad settings (named by field), a
    model with no attention module that calls transformers' attention interface, or a bad window;
    NotImplementedError for an attention feature prism attention does not implement (attention
    sinks, position biases, an unknown keyword; `prism_ops.hf_attention`). All before any model work.
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
    attention = attention_modules(model)
    if not attention:  # nothing would run as PRISM, and every forward would fail later
        own = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith("Attention")})
        itself = f" ({', '.join(own)} computes attention itself)" if own else ""
        raise ValueError(f"model {type(model).__name__} has no attention module that calls transformers' attention "
                         f"interface (attn_implementation){itself}: prism attention cannot run it")
    features = [_layer_features(model, m) for m in attention]
    windowed = [i for i, (w, c) in enumerate(features) if w is not None or c is not None]
    if windowed:
        what = "sliding-window or soft-capped attention"
        if config.cluster_iters:
            raise ValueError(f"cluster_iters={config.cluster_iters}: model {type(model).__name__} has {what} "
                             f"(layers {windowed}), where a key-cluster row has no span; use cluster_iters=0")
        if config.summary_codebook:
            raise NotImplementedError(f"summary_codebook with {what} (model {type(model).__name__}) is not "
                                      "implemented; use summary_bits instead")
        if config.backend == "triton":
            raise ValueError(f"backend='triton' has no {what} (model {type(model).__name__}); use backend='auto' or "
                             "'torch'")
    config = config.replace(exchange=_resolve_exchange(model, config.exchange, attention))
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
        window, softcap = features[index]
        layer = PrismLayer(m, config, index, head_dim, strategy, window=window, softcap=softcap)
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
            "weights": weights_digest(model)}


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
