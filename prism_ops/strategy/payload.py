"""One rank's per-layer payload as bytes: what `Communicator.iallgatherv` carries.

`encode` and `decode` follow a `prism_ops.wire.PayloadLayout` (the one wire format: the same
layout gives `prism_ops.cost` its byte counts), so the bytes sent are the layout's `nbytes`.
"""

from __future__ import annotations

import torch

from prism_ops.ops.codebook_rows import codebook_decode
from prism_ops.ops.quantize_rows import dequantize_codes, round_verbatim
from prism_ops.wire import PayloadLayout


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes < 2**bits (bits <= 15; uint8, or int16 above 8 bits), any shape -> ceil(n * bits / 8)
    bytes (little-endian bit order)."""
    wide = bits > 8
    flat = codes.flatten().to(torch.int32 if wide else torch.uint8)
    if bits == 8:
        return flat
    if 8 % bits == 0:  # 1, 2, 4 bits: whole codes per byte, code j of a byte at bit bits * j
        per = 8 // bits
        flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % per)]).view(-1, per)
        out = flat[:, 0].clone()
        for j in range(1, per):  # an OR per code of a byte: cheaper than a sum over a short axis
            out |= flat[:, j] << (bits * j)
        return out
    shifts = torch.arange(bits, device=flat.device, dtype=flat.dtype)
    stream = ((flat[:, None] >> shifts) & 1).flatten().to(torch.uint8)  # bits of each code, low bit first
    pad = (-stream.numel()) % 8
    stream = torch.cat([stream, stream.new_zeros(pad)]).view(-1, 8)
    return (stream << torch.arange(8, device=flat.device, dtype=torch.uint8)).sum(1, dtype=torch.uint8)


def unpack_codes(data: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of pack_codes: n codes, uint8 (int16 above 8 bits)."""
    if bits == 8:
        return data[:n]
    if 8 % bits == 0:
        shifts = torch.arange(0, 8, bits, device=data.device, dtype=torch.uint8)
        return ((data[:, None] >> shifts) & (2**bits - 1)).flatten()[:n]
    stream = ((data[:, None] >> torch.arange(8, device=data.device, dtype=torch.uint8)) & 1).flatten()
    dtype = torch.int32 if bits > 8 else torch.uint8
    stream = stream[: n * bits].view(n, bits).to(dtype)
    out = (stream << torch.arange(bits, device=data.device, dtype=dtype)).sum(1, dtype=dtype)
    return out.to(torch.int16) if bits > 8 else out


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes as a flat uint8 tensor (on its device)."""
    return t.contiguous().flatten().view(torch.uint8)


def encode(layout: PayloadLayout, verbatim, means=None, codes=None, lo=None, step=None, counts=None,
           picks=None) -> torch.Tensor:
    """The payload's bytes (uint8, on the tensors' device). picks `[B, m]` bool: the heavy_fraction
    lever's bitmap."""
    pieces = {"verbatim": as_bytes(round_verbatim(verbatim.to(layout.dtype), layout.wire_verbatim_dtype))}
    if layout.picks:
        pieces["picks"] = pack_codes(picks, 1)
    if layout.code_bits and layout.S:
        pieces["codes"] = pack_codes(codes, layout.code_bits)
    elif layout.bits and layout.S:
        pieces.update(codes=pack_codes(codes, layout.bits), lo=as_bytes(lo), step=as_bytes(step))
    else:
        pieces["means"] = as_bytes(means.to(layout.dtype))
    if layout.clusters:
        pieces["counts"] = as_bytes(counts.to(torch.int32).to(torch.uint16))
    out = torch.cat([pieces[name] for name, _ in layout.parts()])
    if out.numel() != layout.nbytes:
        raise AssertionError(f"payload is {out.numel()} bytes, its layout says {layout.nbytes}")
    return out


def pack_ints(x: torch.Tensor, nbytes: int) -> torch.Tensor:
    """Non-negative ints < 256**nbytes, any shape -> their nbytes low bytes each (little-endian)."""
    flat = x.flatten().to(torch.int64)
    if bool((flat < 0).any()) or bool((flat >= 256**nbytes).any()):
        raise ValueError(f"ints must be in [0, {256**nbytes}) to travel in {nbytes} bytes, got "
                         f"[{int(flat.min())}, {int(flat.max())}]")
    shifts = 8 * torch.arange(nbytes, device=x.device)
    return ((flat[:, None] >> shifts) & 255).to(torch.uint8).flatten()


def unpack_ints(data: torch.Tensor, nbytes: int, n: int) -> torch.Tensor:
    """Inverse of pack_ints: n int64."""
    parts = data[: n * nbytes].view(n, nbytes).to(torch.int64)
    return (parts << (8 * torch.arange(nbytes, device=data.device))).sum(1)


def encode_delta(layout: PayloadLayout, codes=None, ids=None, positions=None) -> torch.Tensor:
    """Delta codes' payload (`ops.delta_rows`): codes `[B, 1, S, M]`, or in layer 0 ids and positions `[B, S]`."""
    if layout.id_bytes:
        out = torch.cat([pack_ints(ids, layout.id_bytes), pack_ints(positions, layout.id_bytes)])
    else:
        out = pack_codes(codes, layout.code_bits)
    if out.numel() != layout.nbytes:
        raise AssertionError(f"payload is {out.numel()} bytes, its layout says {layout.nbytes}")
    return out


def decode_delta(layout: PayloadLayout, data: torch.Tensor):
    """(codes `[B, 1, S, M]`, None, None), or in layer 0 (None, ids `[B, S]`, positions `[B, S]`)."""
    B, S = layout.B, layout.S
    if layout.id_bytes:
        n = B * S
        ints = unpack_ints(data, layout.id_bytes, 2 * n)
        return None, ints[:n].view(B, S), ints[n:].view(B, S)
    codes = unpack_codes(data, layout.code_bits, B * S * layout.code_groups)
    return codes.view(B, 1, S, layout.code_groups), None, None


def _part(layout: PayloadLayout, data: torch.Tensor, name: str) -> torch.Tensor:
    off = 0
    for part, n in layout.parts():
        if part == name:
            return data[off : off + n]
        off += n
    raise KeyError(name)


def decode_picks(layout: PayloadLayout, data: torch.Tensor) -> torch.Tensor | None:
    """The heavy_fraction lever's picks `[B, m]` bool from a payload, or None without it."""
    if not layout.picks:
        return None
    return unpack_codes(_part(layout, data, "picks"), 1, layout.B * layout.picks).view(layout.B, layout.picks).bool()


def decode(layout: PayloadLayout, data: torch.Tensor, codebook=None):
    """(verbatim `[B, H, E, C]`, means `[B, H, S, C]` in layout.dtype, counts `[B, S]` int32 or None).

    codebook: the layer's `[H, M, K, g]` codebook when the layout carries codebook codes."""
    B, H, C, E, S = layout.B, layout.H, layout.C, layout.E, layout.S
    got, off = {}, 0
    for name, n in layout.parts():
        got[name] = data[off : off + n]
        off += n

    def view(name, dtype, shape):
        return got[name].clone().view(dtype).view(shape)

    verbatim = view("verbatim", layout.wire_verbatim_dtype, (B, H, E, C)).to(layout.dtype)
    if layout.code_bits and S:
        M = layout.code_groups
        codes = unpack_codes(got["codes"], layout.code_bits, B * H * S * M).view(B, H, S, M)
        means = codebook_decode(codes, codebook, dtype=layout.dtype)
    elif layout.bits and S:
        codes = unpack_codes(got["codes"], layout.bits, B * H * S * C).view(B, H, S, C)
        lo, step = view("lo", torch.float16, (B, H, 1, C)), view("step", torch.float16, (B, H, 1, C))
        means = dequantize_codes(codes, lo, step, dtype=layout.dtype)
    else:
        means = view("means", layout.dtype, (B, H, S, C))
    counts = view("counts", torch.uint16, (B, S)).to(torch.int32) if layout.clusters else None
    return verbatim, means, counts
