"""Exact merge of two partial attentions over disjoint key sets, by log-sum-exp.

If out_a, lse_a is softmax attention over key set A and out_b, lse_b over B (A and B
disjoint), the attention over A ∪ B is

    lse = logaddexp(lse_a, lse_b)
    out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b

A side with lse = -inf (it saw no key) gets weight 0; both -inf gives zeros and -inf.
Shapes: out `[B, H, T, D]`, lse `[B, H, T]` (natural log).

It is the `torch.library` custom op `prism_ops::merge_attention` (with a fake implementation,
for `torch.compile(fullgraph=True)`), differentiable in all four inputs.
"""

from __future__ import annotations

import torch

from .._checks import check_float, check_same, check_tensor, shape_str


def merge_attention(out_a, lse_a, out_b, lse_b):
    """Merge two partial attentions; returns (out `[B, H, T, D]` in out_a's dtype, lse fp32,
    fp64 for fp64 out_a).

    The custom op `torch.ops.prism_ops.merge_attention`: traced by torch.compile without a graph
    break; differentiable in all four inputs.
    """
    check_tensor(out_a, "out_a", "[B, H, T, D]", 4)
    check_tensor(out_b, "out_b", "[B, H, T, D]", 4)
    check_tensor(lse_a, "lse_a", "[B, H, T]", 3)
    check_tensor(lse_b, "lse_b", "[B, H, T]", 3)
    if out_b.shape != out_a.shape:
        raise ValueError(f"out_b must have the shape of out_a {shape_str(out_a)}, got {shape_str(out_b)}")
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        if lse.shape != out_a.shape[:3]:
            raise ValueError(f"{name} must have shape [B, H, T] = {list(out_a.shape[:3])}, got {shape_str(lse)}")
    check_float(out_a, "out_a")
    check_same(out_b, out_a, "out_b", "out_a")
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        if lse.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"{name} must be float32 or float64 (as prism_attention returns it), got {lse.dtype}")
        if lse.device != out_a.device:
            raise ValueError(f"{name} is on {lse.device} but out_a is on {out_a.device}; they must match")
    return tuple(_merge_attention_op(out_a, lse_a, out_b, lse_b))


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _weights(la, lb, lse):
    """exp(la - lse), exp(lb - lse) `[B, H, T, 1]`; 0 where both sides saw nothing."""
    finite = torch.isfinite(lse)  # where both are -inf the differences are nan: weight 0 instead
    wa = torch.where(finite, torch.exp(la - lse), torch.zeros_like(lse))[..., None]
    wb = torch.where(finite, torch.exp(lb - lse), torch.zeros_like(lse))[..., None]
    return wa, wb


def merge_attention_torch(out_a, lse_a, out_b, lse_b):
    """Plain-torch merge (inputs already checked); same contract as `merge_attention`."""
    acc = _acc(out_a.dtype)
    la, lb = lse_a.to(acc), lse_b.to(acc)
    lse = torch.logaddexp(la, lb)
    wa, wb = _weights(la, lb, lse)
    out = wa * out_a.to(acc) + wb * out_b.to(acc)
    return out.to(out_a.dtype), lse.to(torch.float32) if acc == torch.float32 else lse


@torch.library.custom_op(
    "prism_ops::merge_attention", mutates_args=(),
    schema="(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b) -> (Tensor, Tensor)",
)
def _merge_attention_op(out_a, lse_a, out_b, lse_b):
    out, lse = merge_attention_torch(out_a, lse_a, out_b, lse_b)
    return out.contiguous(), lse.contiguous()


@_merge_attention_op.register_fake
def _(out_a, lse_a, out_b, lse_b):
    return out_a.new_empty(out_a.shape), lse_a.new_empty(lse_a.shape, dtype=_acc(out_a.dtype))


def _setup_backward(ctx, inputs, output):
    ctx.save_for_backward(*inputs)
    ctx.dtypes = [t.dtype for t in inputs]


def _backward(ctx, grad_out, grad_lse):
    """d out_a = wa * g, d lse_a = wa * (g_lse + sum_D g * (out_a - out)); the same for b."""
    out_a, lse_a, out_b, lse_b = ctx.saved_tensors
    acc = _acc(out_a.dtype)
    la, lb = lse_a.to(acc), lse_b.to(acc)
    lse = torch.logaddexp(la, lb)
    wa, wb = _weights(la, lb, lse)
    oa, ob = out_a.to(acc), out_b.to(acc)
    merged = wa * oa + wb * ob  # recomputed in acc, not the rounded output
    g = torch.zeros_like(merged) if grad_out is None else grad_out.to(acc)
    g_lse = torch.zeros_like(lse) if grad_lse is None else grad_lse.to(acc)
    d_la = wa[..., 0] * (g_lse + (g * (oa - merged)).sum(-1))
    d_lb = wb[..., 0] * (g_lse + (g * (ob - merged)).sum(-1))
    grads = (wa * g, d_la, wb * g, d_lb)
    return tuple(d.to(dt) for d, dt in zip(grads, ctx.dtypes))


_merge_attention_op.register_autograd(_backward, setup_context=_setup_backward)
