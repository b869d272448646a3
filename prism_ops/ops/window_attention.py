"""PRISM attention with a sliding window and/or logit soft-capping, on token positions.

The same one softmax as `prism_attention` (exact local keys plus summary rows weighed by
+ln(count)), for the models whose attention is not plain causal-or-bidirectional:

    window   a query at position t sees a key at position s iff |t - s| < window (and s <= t
             when causal): transformers' sliding-window masks (Mistral, Qwen2, Gemma 2/3 local
             layers: causal; ModernBERT local layers: bidirectional, where the module's
             `sliding_window` is already the +1 of that convention).
    softcap  logits become softcap * tanh(logit / softcap) (Gemma 2).

What a summary row means under them (a row standing for `count` tokens over positions [a, b)):
- window: the row is visible to query t only when its WHOLE span is: every position of
  [a, b) within the window of t (and not after t when causal). A row partly inside is dropped,
  never partly weighed: at segment size 1 (spans of one token) this is the exact mask.
- softcap: the cap applies to the row's own logit q·mean * scale, BEFORE the +ln(count) term:
  the row stands for `count` copies of its mean key, each capped as a real key would be. At
  count 1 this is the exact capped logit.

Shapes: q `[B, H, Tq, D]`, k, v `[B, Hkv, Tk, D]`, k_sum, v_sum `[B, Hkv, S, D]`, sum_counts
`[B, S]` or `[S]`, q_pos `[Tq]`, k_pos `[Tk]`, sum_spans `[S, 2]` (start, end) positions, int64.
Returns out `[B, H, Tq, D]` (and lse `[B, H, Tq]`, natural log, fp32 or fp64 for fp64 input; -inf
with zero output for a query that sees nothing).

Plain torch in fp32 (fp64 for fp64 input), chunked over queries: the Triton kernel has no window
or cap, so backend="triton" is refused here by name.
"""

from __future__ import annotations

import math

import torch

from .._backend import check_backend
from .._checks import check_bool, check_qkv, check_real, check_tensor
from .prism_attention import softmax_values

# Largest number of logits held at once, per call (as prism_attention's explicit path).
_CHUNK_ELEMS = 1 << 26


def check_window(window, name: str = "window") -> None:
    """None, or an int >= 1 (a query sees keys at distance < window)."""
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"{name} must be None or an int >= 1 (a query sees keys at distance < {name}), "
                         f"got {window!r}")


def check_softcap(softcap, name: str = "softcap") -> None:
    if softcap is not None:
        check_real(softcap, name, "None or a finite number > 0 (logits become softcap * tanh(logit / softcap))")


def span_visible(q_pos, start, end, *, causal: bool, window):
    """`[Tq, R]` bool: every position of [start, end) (each `[R]`) is visible to each query."""
    t = q_pos[:, None]
    ok = torch.ones((q_pos.shape[0], start.shape[0]), dtype=torch.bool, device=q_pos.device)
    last = end[None, :] - 1
    if causal:
        ok = ok & (last <= t)
    if window is not None:
        ok = ok & (t - start[None, :] < window) & (last - t < window)
    return ok


def windowed_prism_attention(
    q, k, v, k_sum=None, v_sum=None, sum_counts=None, *, q_pos, k_pos, sum_spans=None, causal=False,
    window=None, softcap=None, scale=None, log_count_bias=True, k_valid=None, return_lse=False, backend="auto",
):
    """Attention of queries at q_pos to [local keys at k_pos | summary rows over sum_spans].

    See the module docstring for what window and softcap mean, for keys and for summary rows.
    k_valid `[B, Tk]` bool masks padding keys; count-0 summary rows are ignored.
    """
    check_qkv(q, k, v)
    check_window(window)
    check_softcap(softcap)
    for name, flag in (("causal", causal), ("log_count_bias", log_count_bias), ("return_lse", return_lse)):
        check_bool(flag, name)
    check_backend(backend)
    if backend == "triton":
        raise ValueError("backend='triton' has no sliding window or logit soft-capping; use backend='auto' or "
                         "'torch' for this layer (window attention runs in torch)")
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    check_tensor(q_pos, "q_pos", f"[Tq] = [{Tq}] positions", 1)
    check_tensor(k_pos, "k_pos", f"[Tk] = [{Tk}] positions", 1)
    if q_pos.shape[0] != Tq or k_pos.shape[0] != Tk:
        raise ValueError(f"q_pos and k_pos must have Tq={Tq} and Tk={Tk} positions, got {q_pos.shape[0]} and "
                         f"{k_pos.shape[0]}")
    S = 0 if k_sum is None else k_sum.shape[2]
    if S and (sum_spans is None or tuple(sum_spans.shape) != (S, 2)):
        got = None if sum_spans is None else list(sum_spans.shape)
        raise ValueError(f"sum_spans must be [S, 2] = [{S}, 2] (start, end) positions with k_sum, got {got}")
    scale = 1.0 / math.sqrt(D) if scale is None else check_real(scale, "scale", "None or a finite number > 0")
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32

    seen, bias, keys, vals = _visible_keys(k, v, k_sum, v_sum, sum_counts, q_pos=q_pos, k_pos=k_pos,
                                           sum_spans=sum_spans, causal=causal, window=window, k_valid=k_valid,
                                           log_count_bias=log_count_bias, acc=acc)
    G = H // Hkv
    qg = q.to(acc).reshape(B, Hkv, G, Tq, D)
    kf, vf = keys.to(acc)[:, :, None], vals.to(acc)[:, :, None]  # (B, Hkv, 1, N, D)
    seen = seen[:, None, None]  # (B|1, 1, 1, Tq, N)
    if bias is not None:
        bias = bias[:, None, None]  # (B|1, 1, 1, 1, N)
    out = torch.empty((B, Hkv, G, Tq, vals.shape[-1]), dtype=acc, device=q.device)
    lse = torch.empty((B, Hkv, G, Tq), dtype=acc, device=q.device)
    step = max(1, _CHUNK_ELEMS // max(1, B * H * keys.shape[2]))
    for t0 in range(0, Tq, step):
        sl = slice(t0, t0 + step)
        s = (qg[:, :, :, sl] @ kf.transpose(-1, -2)) * scale  # (B, Hkv, G, t, N)
        if softcap is not None:
            s = torch.tanh(s / softcap) * softcap  # before the count bias: each copy capped as a key
        if bias is not None:
            s = s + bias
        s = s.masked_fill(~seen[:, :, :, sl], float("-inf"))
        out[:, :, :, sl], lse[:, :, :, sl] = softmax_values(s, vf)
    out = out.reshape(B, H, Tq, -1).to(q.dtype)
    return (out, lse.reshape(B, H, Tq)) if return_lse else out


def _visible_keys(k, v, k_sum, v_sum, sum_counts, *, q_pos, k_pos, sum_spans, causal, window, k_valid,
                  log_count_bias, acc):
    """(seen `[B|1, Tq, Tk + S]` bool, the additive count bias `[B|1, 1, Tk + S]` or None, keys,
    values): local keys then summary rows, each row seen by a query whose window holds its whole span."""
    Tk = k.shape[2]
    S = 0 if k_sum is None else k_sum.shape[2]
    seen = span_visible(q_pos, k_pos, k_pos + 1, causal=causal, window=window)[None]
    if k_valid is not None:
        seen = seen & k_valid[:, None, :]
    if not S:
        return seen, None, k, v
    counts = sum_counts.to(acc).view(-1, 1, S)
    row_seen = span_visible(q_pos, sum_spans[:, 0], sum_spans[:, 1], causal=causal, window=window)[None]
    row_seen = row_seen & (counts > 0)
    rows = max(seen.shape[0], row_seen.shape[0])
    seen = torch.cat([seen.expand(rows, -1, -1), row_seen.expand(rows, -1, -1)], 2)
    c = counts.clamp(min=1)
    row_bias = torch.log(c) if log_count_bias else torch.zeros_like(c)
    bias = torch.cat([torch.zeros((row_bias.shape[0], 1, Tk), dtype=acc, device=k.device), row_bias], 2)
    return seen, bias, torch.cat([k, k_sum], 2), torch.cat([v, v_sum], 2)
