"""Hugging Face drop-in: `attn_implementation="prism"` for transformers models.

    prism_ops.hf.register()
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa")
    prism_ops.hf.configure(model, num_partitions=4, segment_size=16)

After `configure`, every attention layer of the model runs `partitioned_attention`: the
sequence is cut into `num_partitions` chunks, as if each ran on its own rank, and each chunk
sees the others through segment means. The SDPA mask builder is registered with the
attention function, so causal models stay causal and tokenizer padding masks are honoured.
transformers hands the attention function q `[B, H, T, D]` and k, v `[B, Hkv, T, D]`.
"""

from __future__ import annotations

import torch

from ._checks import check_int
from .ops.partitioned_attention import partitioned_attention

NAME = "prism"


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
    T = query.shape[2]
    if key.shape[2] != T:
        raise ValueError(
            f"prism attention runs a whole sequence at once (prefill); got {T} queries for {key.shape[2]} keys "
            "(a KV cache): decode with the distributed runtime"
        )
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    out = partitioned_attention(
        query, key, value, causal=bool(causal) and T > 1, scale=scaling,
        valid=_padding_from_mask(attention_mask, T), **settings,
    )
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register `attn_implementation="prism"` (attention and mask functions) with transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, prism_attention_forward)
    # Without a mask function transformers would build no mask: causal models would silently
    # turn bidirectional and padding would be attended to.
    AttentionMaskInterface.register(NAME, sdpa_mask)


def configure(model, *, num_partitions, segment_size, sink_tokens=0, halo=0, log_count_bias=True,
              comm=None, weights=None, backend="auto"):
    """Run every attention layer of `model` as PRISM over `num_partitions` simulated ranks.

    comm=None simulates all partitions in this process.
    """
    if comm is not None:
        raise ValueError("comm: the MPI runtime is not part of this release; pass comm=None to simulate")
    check_int(num_partitions, "num_partitions", 1)
    check_int(segment_size, "segment_size", 1)
    check_int(sink_tokens, "sink_tokens", 0)
    check_int(halo, "halo", 0)
    register()
    settings = dict(num_partitions=num_partitions, segment_size=segment_size, sink_tokens=sink_tokens,
                    halo=halo, log_count_bias=log_count_bias, weights=weights, backend=backend)
    for m in model.modules():
        m._prism_settings = settings
    model.set_attn_implementation(NAME)
    return model
