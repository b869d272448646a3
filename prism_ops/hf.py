"""Hugging Face drop-in: `attn_implementation="prism"` for transformers models.

    prism_ops.hf.register()
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa")
    prism_ops.hf.configure(model, num_partitions=4, segment_size=16)

After `configure`, every attention layer of the model runs `partitioned_attention`: the
sequence is cut into `num_partitions` chunks, as if each ran on its own rank, and each chunk
sees the others through segment means. The levers (`prism_ops.levers`) and named presets are
keyword arguments of `configure`. The SDPA mask builder is registered with the
attention function, so causal models stay causal and tokenizer padding masks are honoured.
transformers hands the attention function q `[B, H, T, D]` and k, v `[B, Hkv, T, D]`.
"""

from __future__ import annotations

import torch

from .levers import DEFAULTS, resolve
from .ops.partitioned_attention import partition_bounds, partitioned_attention
from .ops.prism_attention import prism_attention

NAME = "prism"
# The settings partitioned_attention takes (the rest: exchange, comm, backend bookkeeping).
SIMULATED = ("num_partitions", "segment_size", "backend") + tuple(k for k in DEFAULTS if k != "exchange")


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
    settings = getattr(module, "_prism_settings", None)
    if settings is None:
        raise ValueError("attn_implementation='prism' needs prism_ops.hf.configure(model, ...) first")
    if dropout and module.training:
        raise ValueError("prism attention is for inference: call model.eval() (attention dropout is not applied)")
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", False))
    T = query.shape[2]
    if key.shape[2] != T:
        out = _decode_step(module, query, key, value, settings, scaling, causal)
        return out.transpose(1, 2).contiguous(), None
    if settings["comm"] is not None:
        from .distributed.attention import rank_attention

        out = rank_attention(module, query, key, value, settings, scale=scaling, causal=causal)
        return out.transpose(1, 2).contiguous(), None
    kw = {k: settings[k] for k in SIMULATED}
    if settings["exchange"] == "hidden" and settings["summary_bits"]:
        kw.update(hidden=module._prism_hidden, kv_weight=kv_weight(module))
    out = partitioned_attention(
        query, key, value, causal=causal and T > 1, scale=scaling,
        valid=_padding_from_mask(attention_mask, T), return_rows=causal, **kw,
    )
    if causal:
        # What the last partition attended to: its rank would decode with these cached rows.
        out, rows = out
        start = partition_bounds(T, settings["num_partitions"], settings["weights"])[-1][0]
        module._prism_rows = (start, *rows[-1])
    return out.transpose(1, 2).contiguous(), None


def _decode_step(module, query, key, value, settings, scale, causal):
    """New tokens of a decoder (a KV cache longer than the queries): the last partition decodes
    with its exact KV cache (from `start`) plus the rows it cached at prefill. Simulated or on
    the last MPI rank alike."""
    rows = getattr(module, "_prism_rows", None)
    if not causal or rows is None:
        raise ValueError(
            f"prism attention got {query.shape[2]} queries for {key.shape[2]} keys (a KV cache): only a causal "
            "model decodes, after a prefill through prism attention"
        )
    start, k_sum, v_sum, counts = rows
    return prism_attention(query, key[:, :, start:], value[:, :, start:], k_sum, v_sum, counts, causal=True,
                           scale=scale, log_count_bias=settings["log_count_bias"], backend=settings["backend"])


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


def _store_hidden(module, args, kwargs):
    """Forward pre-hook: keep the attention input, which hidden-feature exchange averages."""
    module._prism_hidden = args[0] if args else kwargs["hidden_states"]


def _resolve_exchange(model, wanted, attention_modules):
    rope = bool(getattr(model.config, "rope_parameters", None))
    if wanted == "kv":
        return "kv"
    why = None
    if rope:
        why = "the model uses rotary position embeddings (K depends on position, not only on the hidden features)"
    elif not attention_modules:
        why = f"no attention module of {type(model).__name__} has a known key/value projection layout"
    if why is None:
        return "hidden"
    if wanted == "hidden":
        raise ValueError(f"exchange='hidden' is not possible here: {why}; use exchange='kv' or 'auto'")
    return "kv"


def register() -> None:
    """Register `attn_implementation="prism"` (attention and mask functions) with transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, prism_attention_forward)
    # Without a mask function transformers would build no mask: causal models would silently
    # turn bidirectional and padding would be attended to.
    AttentionMaskInterface.register(NAME, sdpa_mask)


def configure(model, *, num_partitions, segment_size=None, preset=None, comm=None, backend="auto", **levers):
    """Run every attention layer of `model` as PRISM over `num_partitions` simulated ranks.

    Args:
        num_partitions, segment_size: P and the compression rate.
        preset: a name from `prism_ops.levers.PRESETS`; explicit arguments override it.
        comm: None simulates all partitions in this process; a
            `prism_ops.distributed.Communicator` makes this process one rank of num_partitions
            (= comm.size); run it through `prism_ops.distributed.runtime`.
        backend: "auto", "torch" or "triton".
        **levers: sink_tokens, halo, log_count_bias, weights, cluster_iters, summary_bits,
            exchange (see `prism_ops.levers`).

    Returns the model. The resolved settings are on `model._prism_settings`.
    """
    settings = resolve(num_partitions, segment_size, preset, **levers)
    if comm is not None and comm.size != num_partitions:
        raise ValueError(f"num_partitions must equal the number of ranks comm.size={comm.size}, got {num_partitions}")
    attention = [m for m in model.modules() if kv_weight(m) is not None]
    settings["exchange"] = _resolve_exchange(model, settings["exchange"], attention)
    settings["backend"] = backend
    settings["comm"] = comm
    settings["context"] = None  # set per request by prism_ops.distributed.runtime
    register()
    for m in model.modules():
        m._prism_settings = settings
        handle = getattr(m, "_prism_hook", None)
        if handle is not None:
            handle.remove()
            m._prism_hook = None
    # The simulation needs the attention input only to round it; a rank sends it.
    if settings["exchange"] == "hidden" and (settings["summary_bits"] or comm is not None):
        for m in attention:
            m._prism_hook = m.register_forward_pre_hook(_store_hidden, with_kwargs=True)
    model.set_attn_implementation(NAME)
    return model
