"""One rank's per-layer payload as bytes: what `Communicator.iallgatherv` carries.

A chunk's payload (see `prism_ops.ops.chunk_summary`) is, in this order:

    exact rows      [B, H, E, C]  model dtype
    summary rows    [B, H, S, C]  model dtype, or with summary_bits:
                        codes     ceil(B*H*S*C * bits / 8) bytes, bit-packed
                        lo, step  [B, H, 1, C] float16 each
    counts          [B, S] uint16, only for key clusters (segment counts follow from the
                    padding mask every rank has)

H, C are (Hkv, 2D) for K/V exchange and (1, d) for hidden-feature exchange. Every rank knows
every chunk's layout, so sizes never travel. For B = 1 the size is exactly what
`prism_ops.cost.bytes_per_layer` counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prism_ops.ops.quantize_rows import dequantize_codes


@dataclass(frozen=True)
class PayloadLayout:
    B: int
    H: int
    C: int
    E: int  # exact rows
    S: int  # summary rows
    dtype: torch.dtype
    bits: int = 0
    clusters: bool = False

    def parts(self) -> list[tuple[str, int]]:
        """(name, bytes) in wire order."""
        B, H, C, E, S = self.B, self.H, self.C, self.E, self.S
        size = torch.finfo(self.dtype).bits // 8
        out = [("exact", B * H * E * C * size)]
        if self.bits and S:
            out += [("codes", math.ceil(B * H * S * C * self.bits / 8)), ("lo", B * H * C * 2), ("step", B * H * C * 2)]
        else:
            out.append(("means", B * H * S * C * size))
        if self.clusters:
            out.append(("counts", B * S * 2))
        return out

    @property
    def nbytes(self) -> int:
        return sum(n for _, n in self.parts())


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes < 2**bits, any shape -> ceil(n * bits / 8) bytes (little-endian bit order)."""
    flat = codes.flatten().to(torch.uint8)
    if bits == 8:
        return flat
    shifts = torch.arange(bits, device=flat.device, dtype=torch.uint8)
    stream = ((flat[:, None] >> shifts) & 1).flatten()  # bits of each code, low bit first
    pad = (-stream.numel()) % 8
    stream = torch.cat([stream, stream.new_zeros(pad)]).view(-1, 8)
    return (stream << torch.arange(8, device=flat.device, dtype=torch.uint8)).sum(1, dtype=torch.uint8)


def unpack_codes(data: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of pack_codes: n uint8 codes."""
    if bits == 8:
        return data[:n]
    stream = ((data[:, None] >> torch.arange(8, device=data.device, dtype=torch.uint8)) & 1).flatten()
    stream = stream[: n * bits].view(n, bits)
    return (stream << torch.arange(bits, device=data.device, dtype=torch.uint8)).sum(1, dtype=torch.uint8)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().flatten().view(torch.uint8)


def encode(layout: PayloadLayout, exact, means=None, codes=None, lo=None, step=None, counts=None) -> torch.Tensor:
    """The payload's bytes (uint8, on the tensors' device)."""
    pieces = {"exact": _bytes(exact.to(layout.dtype))}
    if layout.bits and layout.S:
        pieces.update(codes=pack_codes(codes, layout.bits), lo=_bytes(lo), step=_bytes(step))
    else:
        pieces["means"] = _bytes(means.to(layout.dtype))
    if layout.clusters:
        pieces["counts"] = _bytes(counts.to(torch.int32).to(torch.uint16))
    out = torch.cat([pieces[name] for name, _ in layout.parts()])
    if out.numel() != layout.nbytes:
        raise AssertionError(f"payload is {out.numel()} bytes, its layout says {layout.nbytes}")
    return out


def decode(layout: PayloadLayout, data: torch.Tensor):
    """(exact `[B, H, E, C]`, means `[B, H, S, C]` in layout.dtype, counts `[B, S]` int32 or None)."""
    B, H, C, E, S = layout.B, layout.H, layout.C, layout.E, layout.S
    got, off = {}, 0
    for name, n in layout.parts():
        got[name] = data[off : off + n]
        off += n

    def view(name, dtype, shape):
        return got[name].clone().view(dtype).view(shape)

    exact = view("exact", layout.dtype, (B, H, E, C))
    if layout.bits and S:
        codes = unpack_codes(got["codes"], layout.bits, B * H * S * C).view(B, H, S, C)
        lo, step = view("lo", torch.float16, (B, H, 1, C)), view("step", torch.float16, (B, H, 1, C))
        means = dequantize_codes(codes, lo, step, dtype=layout.dtype)
    else:
        means = view("means", layout.dtype, (B, H, S, C))
    counts = view("counts", torch.uint16, (B, S)).to(torch.int32) if layout.clusters else None
    return exact, means, counts
