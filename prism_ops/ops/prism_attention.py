"""PRISM attention: exact attention to the local tokens plus summary rows, one softmax.

    logits = [ q·k_local * scale (+ causal / padding mask) | q·k_sum * scale + ln(count) ]

q `[B, H, Tq, D]`; k, v `[B, Hkv, Tk, D]` (H a multiple of Hkv: grouped-query attention);
k_sum, v_sum `[B, Hkv, S, D]` with sum_counts `[B, S]` or `[S]`. A summary row standing for m
tokens gets +ln(m) so the softmax weighs it like m copies of its mean key; count-0 rows are
ignored. `causal` masks the local block only, bottom-right aligned (query i sees local key j
iff j <= i + Tk - Tq, as with a KV cache); every summary row passed in is visible to every
query. Returns out `[B, H, Tq, D]` and, with return_lse, lse `[B, H, Tq]` (natural log; fp32,
fp64 for fp64 input; -inf for a row that sees nothing; such rows output zeros).

It is the `torch.library` custom op `prism_ops::prism_attention` (out and lse, with a fake
implementation, so `torch.compile(fullgraph=True)` traces it without a graph break). It is
differentiable in q, k, v, k_sum and v_sum on every backend (not in the counts): the backward is
plain torch, recomputing the [Tq, Tk + S] probabilities (memory O(Tq * (Tk + S)) per head).

Checks, and where they run: shapes, dtypes, devices and flags in `prism_attention`, before the op
(metadata only: no tensor data is read, nothing waits for a GPU); the count values (finite,
>= 0) inside the op, for CPU tensors only, since on a GPU reading them is a host sync per call
(set PRISM_OPS_CHECK_VALUES=1 to check device tensors too). backend="auto" takes the Triton
kernel for fp16/bf16 CUDA tensors and torch otherwise (fp32 included: the kernel's fp32 dots are
TF32x3, near but not exactly fp32; backend="triton" still runs them).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from .._backend import check_backend, interpreting, resolve_backend
from .._checks import check_bool, check_mask, check_qkv, check_real, check_same, check_tensor, shape_str
from .merge_attention import merge_attention_torch

# Largest number of fp32 logits the explicit (lse) path holds at once, per call.
_LSE_CHUNK_ELEMS = 1 << 26


def _padding_bias(k_valid, dtype):
    """0 for a real key, -inf for padding: `[B, 1, 1, Tk]`."""
    bias = torch.zeros(k_valid.shape, dtype=dtype, device=k_valid.device)
    return bias.masked_fill(~k_valid, float("-inf"))[:, None, None, :]


def _count_bias(sum_counts, log_count_bias, dtype):
    """Summary-row logit bias `[B|1, 1, 1, S]`: ln(count), or 0; count 0 gives -inf (row dropped)."""
    c = sum_counts.to(dtype).view(-1, 1, 1, sum_counts.shape[-1])
    # log(0) = -inf drops empty rows; log(1) = 0 leaves verbatim rows (count 1) unchanged.
    return torch.log(c) if log_count_bias else torch.zeros_like(c).masked_fill(c == 0, float("-inf"))


def _bias(q, k, sum_counts, causal, log_count_bias, k_valid, dtype):
    """Additive logit bias broadcastable to [B, H, Tq, Tk + S]; None when nothing is masked."""
    Tq, Tk = q.shape[2], k.shape[2]
    parts = []
    local = torch.zeros((1, 1, 1, Tk), dtype=dtype, device=q.device)
    if k_valid is not None:
        local = _padding_bias(k_valid, dtype)
    if causal:
        i = torch.arange(Tq, device=q.device)[:, None]
        j = torch.arange(Tk, device=q.device)[None, :]
        future = torch.zeros((Tq, Tk), dtype=dtype, device=q.device).masked_fill(j > i + (Tk - Tq), float("-inf"))
        local = local + future  # (…, Tq, Tk)
    parts.append(local)
    if sum_counts is not None and sum_counts.shape[-1] > 0:
        parts.append(_count_bias(sum_counts, log_count_bias, dtype))
    if len(parts) == 1 and k_valid is None and not causal:
        return None
    lead = max(p.shape[0] for p in parts)
    rows = max(p.shape[2] for p in parts)
    parts = [p.expand(lead, 1, rows, p.shape[3]) for p in parts]
    return torch.cat(parts, dim=3)


def _explicit_attention(q, keys, vals, bias, scale):
    """Softmax attention with lse, computed in fp32 (fp64 for fp64 input), chunked over Tq."""
    B, H, Tq, D = q.shape
    Hkv, Tk = keys.shape[1], keys.shape[2]
    G = H // Hkv
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qg = q.to(acc).reshape(B, Hkv, G, Tq, D)  # (B, Hkv, G, Tq, D): GQA without copying K/V
    kf = keys.to(acc)[:, :, None]  # (B, Hkv, 1, Tk, D)
    vf = vals.to(acc)[:, :, None]
    if bias is not None:
        bias = bias.to(acc)[:, :, None]  # (B|1, 1, 1, Tq|1, Tk)
    out = torch.empty((B, Hkv, G, Tq, vals.shape[-1]), dtype=acc, device=q.device)
    lse = torch.empty((B, Hkv, G, Tq), dtype=acc, device=q.device)
    step = max(1, _LSE_CHUNK_ELEMS // max(1, B * H * Tk))
    for t0 in range(0, Tq, step):
        sl = slice(t0, t0 + step)
        s = (qg[:, :, :, sl] @ kf.transpose(-1, -2)) * scale  # (B, Hkv, G, t, Tk)
        if bias is not None:
            s = s + (bias[:, :, :, sl] if bias.shape[3] > 1 else bias)
        out[:, :, :, sl], lse[:, :, :, sl] = softmax_values(s, vf)
    lse = lse.reshape(B, H, Tq)
    return out.reshape(B, H, Tq, -1).to(q.dtype), lse if acc == torch.float64 else lse.float()


_cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _flash_cpu(q, k, v, causal, mask, scale, seen):
    """torch's fused CPU attention with lse; rows where `seen` is False get zeros and -inf."""
    G = q.shape[1] // k.shape[1]
    if G > 1:  # the CPU kernel wants equal head counts
        k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    out, lse = _cpu_flash(q, k, v, 0.0, causal, attn_mask=mask, scale=scale)[:2]
    if seen is not None:  # the kernel's report of a fully masked row is not trusted: lse 0
        lse = lse.masked_fill(~seen, float("-inf"))
        out = out.masked_fill(~seen[..., None], 0.0)
    return out, lse


def _split_attention_cpu(q, k, v, k_sum, v_sum, sum_counts, causal, scale, log_count_bias, k_valid):
    """Local block and summary rows as two fused CPU attentions, merged exactly by lse.

    Keeps the local block on torch's fast (causal-skipping) path instead of feeding SDPA a dense
    [Tq, Tk + S] float mask. Needs Tq == Tk when causal (the kernel's mask is top-left aligned).
    """
    parts = []
    if k.shape[2] > 0:
        mask = seen = None
        if k_valid is not None:
            mask = _padding_bias(k_valid, q.dtype)  # (B, 1, 1, Tk)
            if causal:  # query i sees a key iff some real key sits at or before i
                seen = (k_valid.cumsum(1) > 0)[:, None, :]  # (B, 1, Tq)
            else:
                seen = k_valid.any(1)[:, None, None]  # (B, 1, 1)
        parts.append(_flash_cpu(q, k, v, causal, mask, scale, seen))
    if k_sum is not None and k_sum.shape[2] > 0:
        bias = _count_bias(sum_counts, log_count_bias, q.dtype)  # (B|1, 1, 1, S)
        seen = (sum_counts > 0).any(-1).view(-1, 1, 1)  # (B|1, 1, 1)
        parts.append(_flash_cpu(q, k_sum, v_sum, False, bias, scale, seen))
    if len(parts) == 2:
        return merge_attention_torch(*parts[0], *parts[1])
    return parts[0]


def softmax_values(s: torch.Tensor, vf: torch.Tensor):
    """One chunk of query rows: softmax(s) @ vf and the rows' log-sum-exp.

    s: logits `[..., t, N]` (masked keys at -inf); vf: values `[..., N, Dv]` broadcastable with s.
    A row that sees no key gives 0 and lse -inf. Returns (`[..., t, Dv]`, `[..., t]`).
    """
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows that see nothing
    p = torch.exp(s - m)
    l = p.sum(-1, keepdim=True)
    return (p @ vf) / l.clamp(min=torch.finfo(s.dtype).tiny), (m + torch.log(l)).squeeze(-1)


def prism_attention_torch(
    q, k, v, k_sum=None, v_sum=None, sum_counts=None, *,
    causal=False, scale=None, log_count_bias=True, return_lse=False, k_valid=None,
):
    """Plain-torch PRISM attention (CPU fallback); same contract as `prism_attention`."""
    B, H, Tq, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    has_sum = k_sum is not None and k_sum.shape[2] > 0
    if k.shape[2] == 0 and not has_sum:  # nothing to attend to
        out = q.new_zeros(B, H, Tq, v.shape[-1])
        lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        lse = torch.full((B, H, Tq), float("-inf"), dtype=lse_dtype, device=q.device)
        return (out, lse) if return_lse else out
    # Causal or lse on CPU: two fused kernels merged by lse (the causal local block keeps torch's
    # fast path). Otherwise one SDPA call over [local | summaries] with a per-key bias is cheapest.
    split = causal or return_lse
    if split and _cpu_flash is not None and q.device.type == "cpu" and not (causal and Tq != k.shape[2]):
        out, lse = _split_attention_cpu(q, k, v, k_sum, v_sum, sum_counts, causal, scale, log_count_bias, k_valid)
        return (out, lse) if return_lse else out
    keys, vals = (torch.cat([k, k_sum], 2), torch.cat([v, v_sum], 2)) if has_sum else (k, v)
    bias_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    if return_lse:
        bias = _bias(q, k, sum_counts, causal, log_count_bias, k_valid, bias_dtype)
        return _explicit_attention(q, keys, vals, bias, scale)
    bias = _bias(q, k, sum_counts, causal, log_count_bias, k_valid, q.dtype)
    out = F.scaled_dot_product_attention(
        q, keys, vals, attn_mask=bias, scale=scale, enable_gqa=keys.shape[1] != H
    )
    if bias is not None:
        seen = torch.isfinite(bias).any(-1, keepdim=True)  # (B|1, 1, Tq|1, 1)
        if q.device.type != "cpu" or not bool(seen.all()):  # no host sync on a GPU: always mask there
            out = out.masked_fill(~seen, 0.0)  # a row with nothing visible returns zeros
    return out


def _check_inputs(q, k, v, k_sum, v_sum, sum_counts, k_valid):
    check_qkv(q, k, v)
    B, H, Tq, D = q.shape
    Hkv = k.shape[1]
    if (k_sum is None) != (v_sum is None) or (k_sum is not None and sum_counts is None):
        raise ValueError("k_sum, v_sum and sum_counts must be given together (or all left None)")
    if k_sum is None and sum_counts is not None:
        raise ValueError("sum_counts was given without k_sum and v_sum")
    if k_sum is not None:
        for name, t in (("k_sum", k_sum), ("v_sum", v_sum)):
            check_tensor(t, name, f"[B, Hkv, S, D] = [{B}, {Hkv}, S, {D}]", 4)
            check_same(t, q, name, "q")
            if t.shape[0] != B or t.shape[1] != Hkv or t.shape[3] != D:
                raise ValueError(
                    f"{name} must have shape [B, Hkv, S, D] = [{B}, {Hkv}, S, {D}], got {shape_str(t)}"
                )
        if v_sum.shape != k_sum.shape:
            raise ValueError(f"v_sum must have the shape of k_sum {shape_str(k_sum)}, got {shape_str(v_sum)}")
        S = k_sum.shape[2]
        if not isinstance(sum_counts, torch.Tensor) or sum_counts.shape not in ((B, S), (S,)):
            got = shape_str(sum_counts) if isinstance(sum_counts, torch.Tensor) else type(sum_counts).__name__
            raise ValueError(f"sum_counts must have shape [B, S] = [{B}, {S}] or [S] = [{S}], got {got}")
        if sum_counts.device != q.device:
            raise ValueError(f"sum_counts is on {sum_counts.device} but q is on {q.device}")
        if sum_counts.dtype == torch.bool or sum_counts.is_complex():
            raise ValueError(f"sum_counts must hold integer or float token counts, got {sum_counts.dtype}")
    if k_valid is not None:
        check_mask(k_valid, "k_valid", B, k.shape[2], q.device)


def prism_attention(
    q, k, v, k_sum=None, v_sum=None, sum_counts=None, *,
    causal=False, scale=None, log_count_bias=True, return_lse=False, k_valid=None, backend="auto",
):
    """Attention of local queries to [local K/V exactly | summary rows], in one softmax.

    Args:
        q: `[B, H, Tq, D]` local queries.
        k, v: `[B, Hkv, Tk, D]` local keys and values; H must be a multiple of Hkv.
        k_sum, v_sum: optional `[B, Hkv, S, D]` summary rows (segment means of other ranks).
        sum_counts: `[B, S]` or `[S]` tokens each summary row stands for; 0 = ignore the row.
        causal: lower-triangular mask on the local block, bottom-right aligned when Tq < Tk.
        scale: logit scale, default 1/sqrt(D).
        log_count_bias: add ln(count) to summary logits (the scaling-aware correction).
        return_lse: also return the log-sum-exp `[B, H, Tq]` (natural log; fp32, fp64 for fp64 input).
        k_valid: optional bool `[B, Tk]`; False masks a padding key of the local block.
        backend: "auto" (Triton for fp16/bf16 CUDA tensors, else torch), "torch" or "triton".

    Returns:
        out `[B, H, Tq, D]` in q's dtype, and lse `[B, H, Tq]` when return_lse.

    The custom op `torch.ops.prism_ops.prism_attention` (returning out and lse, lse empty without
    return_lse): traced by torch.compile without a graph break; differentiable in q, k, v, k_sum
    and v_sum on both backends (a plain-torch backward that recomputes the probabilities, memory
    O(Tq * (Tk + S)) per head); the counts get no gradient.

    Example:
        >>> q = k = v = torch.randn(1, 2, 8, 16)
        >>> means, counts = prism_ops.segment_means(k, 4)
        >>> out = prism_attention(q, k, v, means, means, counts)
    """
    _check_inputs(q, k, v, k_sum, v_sum, sum_counts, k_valid)
    for name, flag in (("causal", causal), ("log_count_bias", log_count_bias), ("return_lse", return_lse)):
        check_bool(flag, name)
    check_backend(backend)
    scale = None if scale is None else check_real(scale, "scale", "None (1/sqrt(D)) or a finite number > 0")
    out, lse = _prism_attention_op(q, k, v, k_sum, v_sum, sum_counts, causal, scale, log_count_bias, return_lse,
                                   k_valid, backend)
    return (out, lse) if return_lse else out


def device_values_checked() -> bool:
    """PRISM_OPS_CHECK_VALUES=1: also check the values of device tensors (a host sync per call)."""
    return os.environ.get("PRISM_OPS_CHECK_VALUES", "0") not in ("", "0")


def _check_count_values(sum_counts):
    """sum_counts finite and >= 0. Reading values is a host sync on a GPU (the CPU waits for the
    queue, the GPU then idles while Python runs), so it runs for CPU tensors, and for device
    tensors only under PRISM_OPS_CHECK_VALUES=1. Unchecked on a GPU, the kernel drops a row whose
    count is <= 0 or NaN (as a count 0); an infinite count gives NaN outputs."""
    bad = sum_counts < 0
    if sum_counts.is_floating_point():
        bad = bad | ~torch.isfinite(sum_counts)
    if bool(bad.any()):
        value = sum_counts[bad].flatten()[0].item()
        raise ValueError(f"sum_counts must be finite and >= 0 (tokens per summary row), got {value}")


def _lse_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op(
    "prism_ops::prism_attention", mutates_args=(),
    schema="(Tensor q, Tensor k, Tensor v, Tensor? k_sum, Tensor? v_sum, Tensor? sum_counts, bool causal, "
           "float? scale, bool log_count_bias, bool return_lse, Tensor? k_valid, str backend) -> (Tensor, Tensor)",
)
def _prism_attention_op(q, k, v, k_sum, v_sum, sum_counts, causal, scale, log_count_bias, return_lse, k_valid,
                        backend):
    """The op behind `prism_attention` (inputs already checked): (out, lse), lse empty `[0]`
    without return_lse. The check that reads tensor data runs here, not while tracing, and only
    where it costs no device sync (see `_check_count_values`)."""
    if sum_counts is not None and sum_counts.numel() and (sum_counts.device.type == "cpu" or device_values_checked()):
        _check_count_values(sum_counts)
    kwargs = dict(causal=causal, scale=scale, log_count_bias=log_count_bias, return_lse=return_lse, k_valid=k_valid)
    if _backend_for(q, backend) == "triton":
        from prism_ops.kernels.prism_attention import prism_attention_triton

        res = prism_attention_triton(q, k, v, k_sum, v_sum, sum_counts, interpret=interpreting(), **kwargs)
    else:
        res = prism_attention_torch(q, k, v, k_sum, v_sum, sum_counts, **kwargs)
    if not return_lse:
        return res.contiguous(), q.new_empty((0,), dtype=_lse_dtype(q.dtype))
    out, lse = res
    # lse keeps the layout its route gives (the fused CPU kernel stores it as [B, Tq, H]): the fake
    # traces the same route, and the CPU loops that merge it round exactly as before.
    return out.contiguous(), lse.to(_lse_dtype(q.dtype))


def _backend_for(q, backend):
    """"torch" or "triton" for these inputs (raises for a forced backend that cannot run them)."""
    if backend == "auto" and q.dtype == torch.float32:
        # fp32 stays exact fp32 (torch) unless the kernel is asked for: its fp32 dots are TF32x3
        # (three TF32 tensor-core products), fast to compile and near fp32, but not IEEE fp32.
        return "torch"
    unsupported = None
    D = q.shape[-1]
    if q.dtype == torch.float64:
        unsupported = "float64 input"
    elif not 16 <= D <= 256:
        unsupported = f"head dim D={D} (the kernel takes 16 to 256)"
    elif q.numel() == 0:
        unsupported = "empty input"
    return resolve_backend(backend, q.device, unsupported)


@_prism_attention_op.register_fake
def _(q, k, v, k_sum, v_sum, sum_counts, causal, scale, log_count_bias, return_lse, k_valid, backend):
    B, H, Tq, _ = q.shape
    out = q.new_empty((B, H, Tq, v.shape[-1]))
    if not return_lse:
        return out, q.new_empty((0,), dtype=_lse_dtype(q.dtype))
    if _backend_for(q, backend) == "triton":
        return out, q.new_empty((B, H, Tq), dtype=torch.float32)
    # The torch route decides lse's strides: run it on the fake inputs (no data is read).
    _, lse = prism_attention_torch(q, k, v, k_sum, v_sum, sum_counts, causal=causal, scale=scale,
                                   log_count_bias=log_count_bias, return_lse=True, k_valid=k_valid)
    return out, lse.to(_lse_dtype(q.dtype))


def _setup_backward(ctx, inputs, output):
    q, k, v, k_sum, v_sum, sum_counts, causal, scale, log_count_bias, return_lse, k_valid, backend = inputs
    ctx.causal, ctx.scale, ctx.log_count_bias, ctx.return_lse = causal, scale, log_count_bias, return_lse
    ctx.save_for_backward(q, k, v, k_sum, v_sum, sum_counts, k_valid)


def _backward(ctx, grad_out, grad_lse):
    """FlashAttention's backward in plain torch, in fp32 (fp64 for fp64 input), over
    [local keys | summary rows]: P = softmax(S), dS = P * (dP - rowsum(dO * O) + dlse)."""
    q, k, v, k_sum, v_sum, sum_counts, k_valid = ctx.saved_tensors
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    G = H // Hkv
    acc = _lse_dtype(q.dtype)
    scale = 1.0 / math.sqrt(D) if ctx.scale is None else ctx.scale
    has_sum = k_sum is not None and k_sum.shape[2] > 0
    keys, vals = (torch.cat([k, k_sum], 2), torch.cat([v, v_sum], 2)) if has_sum else (k, v)
    bias = _bias(q, k, sum_counts if has_sum else None, ctx.causal, ctx.log_count_bias, k_valid, acc)
    qg = q.to(acc).reshape(B, Hkv, G, Tq, D)  # (B, Hkv, G, Tq, D)
    kf, vf = keys.to(acc)[:, :, None], vals.to(acc)[:, :, None]  # (B, Hkv, 1, N, D)
    s = (qg @ kf.transpose(-1, -2)) * scale  # (B, Hkv, G, Tq, N)
    if bias is not None:
        s = s + bias[:, :, None]
    lse = torch.logsumexp(s, -1, keepdim=True)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))  # rows that see nothing: P = 0
    p = torch.exp(s - lse)
    go = torch.zeros((B, Hkv, G, Tq, vals.shape[-1]), dtype=acc, device=q.device) if grad_out is None else (
        grad_out.to(acc).reshape(B, Hkv, G, Tq, -1))
    dp = go @ vf.transpose(-1, -2)  # (B, Hkv, G, Tq, N)
    delta = (go * (p @ vf)).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    if ctx.return_lse and grad_lse is not None and grad_lse.numel():
        ds = ds + p * grad_lse.to(acc).reshape(B, Hkv, G, Tq, 1)
    dq = (ds @ kf).reshape(B, H, Tq, D) * scale
    dkeys = (ds.transpose(-1, -2) @ qg).sum(2) * scale  # (B, Hkv, N, D)
    dvals = (p.transpose(-1, -2) @ go).sum(2)
    dk, dv = dkeys[:, :, :Tk].to(k.dtype), dvals[:, :, :Tk].to(v.dtype)
    dks = dvs = None
    if k_sum is not None:
        dks, dvs = dkeys[:, :, Tk:].to(k_sum.dtype), dvals[:, :, Tk:].to(v_sum.dtype)
    return dq.to(q.dtype), dk, dv, dks, dvs, None, None, None, None, None, None, None


_prism_attention_op.register_autograd(_backward, setup_context=_setup_backward)
