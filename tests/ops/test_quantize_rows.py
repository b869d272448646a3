"""quantize_rows: per-channel asymmetric 2/3/4/8-bit rounding of summary rows, against a loop reference."""

import pytest
import torch

from prism_ops.strategy.payload import decode, encode
from prism_ops.ops.quantize_rows import dequantize_codes, quantize_codes, quantize_rows
from prism_ops.wire import PayloadLayout


def loop_quantize(x, bits):
    """Reference: per channel over rows, asymmetric, (min, step) rounded to float16; loops only."""
    out = torch.empty_like(x)
    S, C = x.shape
    for c in range(C):
        col = [float(x[s, c]) for s in range(S)]
        lo = float(torch.tensor(min(col)).half())
        step = float(torch.tensor((max(col) - lo) / (2**bits - 1)).half())
        for s in range(S):
            level = 0 if step == 0 else min(max(round((col[s] - lo) / step), 0), 2**bits - 1)
            out[s, c] = lo + level * step
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantize_rows_matches_loop_reference(bits):
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64) * 3
    got = quantize_rows(x, bits)
    for b in range(2):
        for h in range(3):
            torch.testing.assert_close(got[b, h], loop_quantize(x[b, h], bits), rtol=0, atol=1e-12)
    # Error budget: half a step per value (plus the float16 rounding of the range).
    span = x.amax(-2, keepdim=True) - x.amin(-2, keepdim=True)
    assert ((got - x).abs() <= span / (2**bits - 1) / 2 * 1.01 + 1e-2 * span).all()


def test_quantize_rows_edges():
    x = torch.randn(1, 1, 6, 4)
    assert quantize_rows(x, 0) is x
    const = torch.full((1, 1, 5, 3), 0.25)  # a constant channel (0.25 is exact in fp16) is kept
    assert torch.equal(quantize_rows(const, 4), const)
    # Rows not sent (count 0) neither set the range nor change.
    y = x.clone()
    y[..., 2, :] = 1e6
    sent = torch.ones(1, 1, 6, 1, dtype=torch.bool)
    sent[..., 2, :] = False
    got = quantize_rows(y, 8, sent)
    assert got[..., 2, :].eq(1e6).all()
    torch.testing.assert_close(got[..., [0, 1, 3, 4, 5], :], quantize_rows(x[..., [0, 1, 3, 4, 5], :], 8))
    for dtype in (torch.float16, torch.bfloat16):
        assert quantize_rows(x.to(dtype), 4).dtype == dtype
    with pytest.raises(ValueError, match=r"summary_bits must be 0 \(full precision\) or one of"):
        quantize_rows(x, 5)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_codes_round_trip_equals_quantize_rows(bits):
    """What travels (codes, float16 min and step) decodes to exactly what the simulation uses."""
    x = torch.randn(2, 3, 9, 4)
    sent = torch.rand(2, 1, 9, 1) > 0.2
    codes, lo, step = quantize_codes(x, bits, sent)
    assert codes.dtype == torch.uint8 and int(codes.max()) < 2**bits
    assert lo.dtype == step.dtype == torch.float16 and tuple(lo.shape) == (2, 3, 1, 4)
    want = quantize_rows(x, bits, sent)
    got = dequantize_codes(codes, lo, step, dtype=x.dtype)
    assert torch.equal(torch.where(sent, got, want), want)
    lay = PayloadLayout(2, 3, 4, 0, 9, torch.float32, bits)
    _, means, _ = decode(lay, encode(lay, x[:, :, :0], codes=codes, lo=lo, step=step))
    assert torch.equal(torch.where(sent, means, want), want)
