"""A rank's payload as bytes (prism_ops/wire.py, prism_ops/strategy/payload.py) and the --auto choice, without MPI."""

import pytest
import torch

from prism_ops.strategy.payload import decode, encode, pack_codes, unpack_codes
from prism_ops.ops.quantize_rows import quantize_codes, quantize_rows
from prism_ops.wire import PayloadLayout


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("n", [1, 7, 8, 13])
def test_pack_unpack_round_trip(bits, n):
    codes = torch.randint(0, 2**bits, (n,), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.numel() == -(-n * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, n), codes)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7])
def test_packed_bits_are_the_codes_low_bit_first(bits):
    """The wire's bit order, whichever path packs it: bit k of code i is bit (i * bits + k) of the
    stream, bytes filled from their low bit."""
    codes = torch.randint(0, 2**bits, (37,), generator=torch.Generator().manual_seed(bits), dtype=torch.uint8)
    stream = [(int(c) >> k) & 1 for c in codes for k in range(bits)]
    stream += [0] * (-len(stream) % 8)
    want = [sum(stream[8 * i + j] << j for j in range(8)) for i in range(len(stream) // 8)]
    assert pack_codes(codes, bits).tolist() == want


@pytest.mark.parametrize("bits", [0, 3, 4])
@pytest.mark.parametrize("clusters", [False, True])
def test_encode_decode_gives_what_the_simulation_uses(bits, clusters):
    B, H, C, E, S = 2, 3, 8, 2, 5
    exact, means = torch.randn(B, H, E, C), torch.randn(B, H, S, C)
    counts = torch.randint(0, 4, (B, S), dtype=torch.int32)
    lay = PayloadLayout(B, H, C, E, S, torch.float32, bits, clusters)
    sent = (counts > 0)[:, None, :, None]
    quant = {}
    if bits:
        codes, lo, step = quantize_codes(means, bits, sent)
        quant = dict(codes=codes, lo=lo, step=step)
    data = encode(lay, exact, means=means, counts=counts, **quant)
    assert data.dtype == torch.uint8 and data.numel() == lay.nbytes
    ex, got, cnt = decode(lay, data)
    assert torch.equal(ex, exact)
    want = quantize_rows(means, bits, sent)
    assert torch.equal(torch.where(sent, got, want), want)  # bitwise, on the rows that count
    assert (cnt is None) == (not clusters) and (cnt is None or torch.equal(cnt, counts))
