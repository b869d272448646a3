"""The attention function transformers calls per layer once a model runs `attn_implementation="prism"`.

transformers hands it q `[B, H, T, D]` and k, v `[B, Hkv, T, D]` and the 4-D mask its SDPA mask
builder made. A full-sequence call goes to the layer's partition strategy (`prism_ops.strategy`);
a decoding step (a KV cache longer than the queries) decodes with the rows the prefill cached.
The 4-D mask must be what causal-or-bidirectional attention, padding and the layer's window give;
any other mask is refused at the call.
"""

from __future__ import annotations

import contextvars

import torch

from prism_ops.ops.prism_attention import prism_attention
from prism_ops.ops.window_attention import windowed_prism_attention
from prism_ops.strategy import LAYER_ATTR, current_state

from .attention_calls import check_call_kwargs

# The attention input of the layer running now, for hidden-feature exchange: set by the layer's
# forward pre-hook and taken by its attention call, so nothing outlives the call.
_HIDDEN: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("prism_hidden", default=None)


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


def capture_hidden(layer):
    """Forward pre-hook: hand the attention input, which hidden-feature exchange averages, to the
    attention call that follows."""

    def hook(module, args, kwargs):
        _HIDDEN.set((layer, args[0] if args else kwargs["hidden_states"]))

    return hook
