"""quantize_rows: the low-bit round trip a summary takes over the wire (a lever).

A rank sends its summary rows as `bits`-bit integers with one (minimum, step) pair per channel,
taken over the rows it sends: asymmetric per-channel quantization, as KIVI does for keys. The
pair travels as two float16 values per channel. The receiver dequantizes. This module simulates
that round trip; `quantize_codes` and `dequantize_codes` are its two ends, which the MPI
runtime puts on either side of the wire; `prism_ops.cost` counts its bytes.

Shape: x `[..., S, C]` (S rows of C channels); the statistics are taken over S for each
channel (and each leading index). Returns x's shape and dtype.

No gradient: a forward under grad mode runs as usual, but a backward through quantized rows
raises a ValueError (rounding is piecewise constant; see the README's gradient section).

Verbatim rows (sinks, halo) are not quantized; with `verbatim_bits=16` a model wider than 16 bits
sends them as float16 (`verbatim_wire_dtype`, `round_verbatim`): 3 KB less per layer for SmolLM2's
4 sinks in float32, at float16's rounding (2^-11 relative), far below the 4-bit summaries' error.
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (2, 3, 4, 8)
VERBATIM_BITS = (0, 16)  # 0: verbatim rows in the model's dtype; 16: in float16 (a 16-bit model's own)


def check_bits(bits, name: str = "summary_bits") -> int:
    """0 (send at full precision) or one of SUPPORTED_BITS."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in (0, *SUPPORTED_BITS):
        raise ValueError(f"{name} must be 0 (full precision) or one of {SUPPORTED_BITS}, got {bits!r}")
    return bits


def check_verbatim_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in VERBATIM_BITS:
        raise ValueError(f"verbatim_bits must be 0 (verbatim rows in the model's dtype) or 16 (float16), got {bits!r}")
    return bits


def verbatim_wire_dtype(bits: int, dtype: torch.dtype) -> torch.dtype:
    """The dtype verbatim rows travel in: float16 with bits=16 for a model wider than 16 bits,
    else the model's own (a bfloat16 model keeps its range)."""
    return torch.float16 if bits == 16 and torch.finfo(dtype).bits > 16 else dtype


def round_verbatim(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x as the wire carries its verbatim rows: cast to dtype. A finite value beyond float16's
    range would arrive as inf: a ValueError names the lever instead."""
    y = x.to(dtype)
    if dtype != x.dtype and not bool(torch.isfinite(y).all()) and bool(torch.isfinite(x).all()):
        big = x.abs().max().item()
        raise ValueError(f"verbatim_bits=16: a sink or halo row holds {big:.4g}, beyond {dtype}'s range "
                         f"(+-{torch.finfo(dtype).max:g}); use verbatim_bits=0 for this model")
    return y


class _NoGradient(torch.autograd.Function):
    """Identity forward; a backward that refuses. Rounding to a few bits is piecewise constant:
    autograd would return the gradient of the range statistics only, which is no useful
    gradient, so asking for one is an error rather than a silently wrong number."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise ValueError(
            "summary_bits > 0 (quantized summaries) has no gradient: rounding is piecewise constant. "
            "Use summary_bits=0 to train or differentiate, or run the forward under torch.no_grad()"
        )


def quantize_codes(x: torch.Tensor, bits: int, valid: torch.Tensor | None = None):
    """What travels: (codes uint8 `[..., S, C]` in [0, 2**bits), lo and step float16 `[..., 1, C]`).

    valid: optional bool broadcastable to `[..., S, 1]`; rows that are False (e.g. count 0)
    do not set the range (their codes are meaningless).
    """
    check_bits(bits)
    if bits == 0:
        raise ValueError("summary_bits=0 sends rows at full precision: nothing to quantize")
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if valid is None:
        lo, hi = xf.amin(-2, keepdim=True), xf.amax(-2, keepdim=True)
    else:
        big = torch.finfo(xf.dtype).max
        lo = xf.masked_fill(~valid, big).amin(-2, keepdim=True)
        hi = xf.masked_fill(~valid, -big).amax(-2, keepdim=True)
        lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)  # a channel with no valid row
    lo16 = lo.to(torch.float16)
    step16 = ((hi - lo16.to(xf.dtype)) / (2**bits - 1)).to(torch.float16)
    lo, step = lo16.to(xf.dtype), step16.to(xf.dtype)  # as the receiver sees them
    safe = torch.where(step > 0, step, torch.ones_like(step))
    codes = torch.clamp(torch.round((xf - lo) / safe), 0, 2**bits - 1).to(torch.uint8)
    return codes, lo16, step16


def dequantize_codes(codes: torch.Tensor, lo: torch.Tensor, step: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """The receiver's rows `[..., S, C]` from `quantize_codes`' output."""
    acc = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    lo, step = lo.to(acc), step.to(acc)
    return torch.where(step > 0, lo + codes.to(acc) * step, lo).to(dtype)


def quantize_rows(x: torch.Tensor, bits: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize-dequantize x `[..., S, C]` per channel over its S rows; bits 0 returns x.

    valid: optional bool broadcastable to `[..., S, 1]`; rows that are False (e.g. count 0)
    neither set the range nor change (they are not sent).
    """
    check_bits(bits)
    if bits == 0 or x.shape[-2] == 0:
        return x
    out = dequantize_codes(*quantize_codes(x, bits, valid), dtype=x.dtype)
    out = out if valid is None else torch.where(valid, out, x)
    if torch.is_grad_enabled() and out.requires_grad:
        out = _NoGradient.apply(out)  # forward as usual; only a backward through it is refused
    return out
