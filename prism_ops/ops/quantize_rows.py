"""quantize_rows: the low-bit round trip a summary takes over the wire (a lever).

A rank sends its summary rows as `bits`-bit integers with one (minimum, step) pair per channel,
taken over the rows it sends: asymmetric per-channel quantization, as KIVI does for keys. The
pair travels as two float16 values per channel. The receiver dequantizes. This module simulates
that round trip; `prism_ops.cost` counts its bytes.

Shape: x `[..., S, C]` (S rows of C channels); the statistics are taken over S for each
channel (and each leading index). Returns x's shape and dtype.
"""

from __future__ import annotations

import torch

from .._checks import check_int

SUPPORTED_BITS = (2, 3, 4, 8)


def check_bits(bits, name: str = "summary_bits") -> int:
    """0 (send at full precision) or one of SUPPORTED_BITS."""
    if bits != 0:
        check_int(bits, name, 2, 8)
        if bits not in SUPPORTED_BITS:
            raise ValueError(f"{name} must be 0 (full precision) or one of {SUPPORTED_BITS}, got {bits}")
    return bits


def quantize_rows(x: torch.Tensor, bits: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize-dequantize x `[..., S, C]` per channel over its S rows; bits 0 returns x.

    valid: optional bool broadcastable to `[..., S, 1]`; rows that are False (e.g. count 0)
    neither set the range nor change (they are not sent).
    """
    check_bits(bits)
    if bits == 0 or x.shape[-2] == 0:
        return x
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if valid is None:
        lo, hi = xf.amin(-2, keepdim=True), xf.amax(-2, keepdim=True)
    else:
        big = torch.finfo(xf.dtype).max
        lo = xf.masked_fill(~valid, big).amin(-2, keepdim=True)
        hi = xf.masked_fill(~valid, -big).amax(-2, keepdim=True)
        lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)  # a channel with no valid row
    # The pair is sent as float16: round it the same way the receiver sees it.
    lo = lo.to(torch.float16).to(xf.dtype)
    step = ((hi - lo) / (2**bits - 1)).to(torch.float16).to(xf.dtype)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    levels = torch.clamp(torch.round((xf - lo) / safe), 0, 2**bits - 1)
    out = torch.where(step > 0, lo + levels * step, lo)
    if valid is not None:
        out = torch.where(valid, out, xf)
    return out.to(x.dtype)
