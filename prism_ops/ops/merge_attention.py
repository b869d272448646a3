"""Exact merge of two partial attentions over disjoint key sets, by log-sum-exp.

If out_a, lse_a is softmax attention over key set A and out_b, lse_b over B (A and B
disjoint), the attention over A ∪ B is

    lse = logaddexp(lse_a, lse_b)
    out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b

A side with lse = -inf (it saw no key) gets weight 0; both -inf gives zeros and -inf.
Shapes: out `[B, H, T, D]`, lse `[B, H, T]` (natural log).
"""

from __future__ import annotations

import torch

from .._checks import check_tensor, shape_str


def merge_attention(out_a, lse_a, out_b, lse_b):
    """Merge two partial attentions; returns (out `[B, H, T, D]` in out_a's dtype, lse fp32)."""
    check_tensor(out_a, "out_a", "[B, H, T, D]", 4)
    check_tensor(out_b, "out_b", "[B, H, T, D]", 4)
    check_tensor(lse_a, "lse_a", "[B, H, T]", 3)
    check_tensor(lse_b, "lse_b", "[B, H, T]", 3)
    if out_b.shape != out_a.shape:
        raise ValueError(f"out_b must have the shape of out_a {shape_str(out_a)}, got {shape_str(out_b)}")
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        if lse.shape != out_a.shape[:3]:
            raise ValueError(f"{name} must have shape [B, H, T] = {list(out_a.shape[:3])}, got {shape_str(lse)}")
    acc = torch.float64 if out_a.dtype == torch.float64 else torch.float32
    la, lb = lse_a.to(acc), lse_b.to(acc)
    lse = torch.logaddexp(la, lb)
    # Where both are -inf, lse is -inf and the differences are nan: use weight 0 instead.
    finite = torch.isfinite(lse)
    wa = torch.where(finite, torch.exp(la - lse), torch.zeros_like(lse))[..., None]
    wb = torch.where(finite, torch.exp(lb - lse), torch.zeros_like(lse))[..., None]
    out = wa * out_a.to(acc) + wb * out_b.to(acc)
    return out.to(out_a.dtype), lse.to(torch.float32) if acc == torch.float32 else lse
