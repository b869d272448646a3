"""segment_means: torch path against the fp64 oracle, Triton kernel against both, bad input."""

import pytest
import torch
from conftest import FLOOR, TRITON_DEVICE, allocated_bytes, gpu, needs_triton, to_triton
from oracle import oracle_segment_means

import prism_ops
from prism_ops import num_summary_rows, segment_means

# (B, H, T, D, segment_size, sink_tokens): T divisible or not, T < segment_size, T = 1, sinks > T.
SHAPES = [
    (2, 3, 16, 64, 4, 0),
    (2, 3, 37, 40, 5, 0),
    (1, 2, 7, 59, 16, 0),
    (1, 1, 1, 16, 3, 0),
    (2, 2, 23, 32, 4, 3),
    (1, 2, 5, 16, 2, 9),
    (3, 1, 40, 128, 1, 2),
]
IDS = [f"B{b}-H{h}-T{t}-D{d}-segment_size{c}-sink{s}" for b, h, t, d, c, s in SHAPES]


def make_valid(B, T):
    valid = torch.rand(B, T) > 0.3
    valid[0] = True  # one row without padding
    if B > 1:
        valid[1, : T // 2] = False  # left padding, possibly whole segments
    return valid


@pytest.mark.parametrize("with_valid", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("B,H,T,D,segment_size,sinks", SHAPES, ids=IDS)
def test_torch_matches_oracle(B, H, T, D, segment_size, sinks, with_valid):
    x = torch.randn(B, H, T, D, dtype=torch.float64)
    valid = make_valid(B, T) if with_valid else None
    means, counts = segment_means(x, segment_size, valid=valid, sink_tokens=sinks, backend="torch")
    ref_means, ref_counts = oracle_segment_means(x, segment_size, valid, sinks)
    S = num_summary_rows(T, segment_size, sinks)
    assert means.shape == (B, H, S, D) and means.dtype == x.dtype
    assert counts.dtype == torch.int32
    if valid is None:
        assert counts.shape == (S,)
        assert torch.equal(counts.expand(B, S).long(), ref_counts)
    else:
        assert counts.shape == (B, S)
        assert torch.equal(counts.long(), ref_counts)
    torch.testing.assert_close(means, ref_means, rtol=0, atol=1e-12)


def test_docstring_example_and_zero_count_rows():
    x = torch.arange(5.0).view(1, 1, 5, 1)
    means, counts = segment_means(x, 2)
    assert means.flatten().tolist() == [0.5, 2.5, 4.0] and counts.tolist() == [2, 2, 1]
    valid = torch.tensor([[False, False, True, True, True]])
    means, counts = segment_means(x, 2, valid=valid)
    assert counts.tolist() == [[0, 2, 1]]
    assert means.flatten().tolist() == [0.0, 2.5, 4.0]  # all-padding row: count 0, zero mean


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_accumulates_in_fp32(dtype):
    # 4096 copies of a value whose running sum in fp16/bf16 would stall far below the truth.
    x = torch.full((1, 1, 4096, 16), 1.0 + 2**-7, dtype=dtype)
    means, _ = segment_means(x, 4096, backend="torch")
    assert means.dtype == dtype
    assert torch.equal(means, x[:, :, :1])


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("with_valid", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("B,H,T,D,segment_size,sinks", SHAPES[:6], ids=IDS[:6])
def test_triton_matches_oracle(B, H, T, D, segment_size, sinks, with_valid, dtype):
    x = torch.randn(B, H, T, D).to(dtype)
    valid = make_valid(B, T) if with_valid else None
    xd, vd = to_triton(x), to_triton(valid)
    means, counts = segment_means(xd, segment_size, valid=vd, sink_tokens=sinks, backend="triton")
    ref_means, ref_counts = oracle_segment_means(x, segment_size, valid, sinks)
    got_counts = counts.cpu().long()
    assert torch.equal(got_counts if valid is not None else got_counts.expand(B, -1), ref_counts)
    # fp32 accumulation, one rounding to dtype at the end: half an ulp of the result.
    atol = FLOOR[dtype] * ref_means.abs().max().item()
    torch.testing.assert_close(means.cpu().double(), ref_means, rtol=0, atol=atol)


@pytest.mark.parametrize("huge", [10**7, 10**11])
@pytest.mark.parametrize("kw", [{}, {"sink_tokens": 3}, {"valid": True}], ids=["plain", "sinks", "padded"])
def test_segment_larger_than_the_sequence_is_one_segment(huge, kw):
    """A segment_size beyond the tokens left after the sinks gives exactly the rows of
    segment_size = those tokens, allocating the same bytes (10**7 used to try 30.7 GB)."""
    x = torch.randn(1, 12, 512, 64)
    if kw.get("valid"):
        kw = {"valid": make_valid(1, 512)}
    length = 512 - kw.get("sink_tokens", 0)
    ref_means, ref_counts = segment_means(x, length, **kw)
    means, counts = segment_means(x, huge, **kw)
    assert torch.equal(means, ref_means) and torch.equal(counts, ref_counts)
    assert means.shape[2] == 1 + kw.get("sink_tokens", 0)
    assert allocated_bytes(lambda: segment_means(x, huge, **kw)) == allocated_bytes(lambda: segment_means(x, length, **kw))


@needs_triton
def test_triton_segment_larger_than_the_sequence():
    x = torch.randn(1, 2, 9, 16)
    valid = make_valid(1, 9)
    for length, kw in ((9, {}), (7, {"valid": valid, "sink_tokens": 2})):
        got = segment_means(to_triton(x), 10**11, backend="triton", sink_tokens=kw.get("sink_tokens", 0),
                            valid=to_triton(kw.get("valid")))
        ref = segment_means(x, length, **kw)
        torch.testing.assert_close(got[0].cpu(), ref[0], rtol=0, atol=1e-6)
        assert torch.equal(got[1].cpu(), ref[1])


@needs_triton
def test_triton_non_contiguous_input():
    x = torch.randn(2, 30, 8, 32).to(TRITON_DEVICE).transpose(1, 2)  # [B, H, T, D], [B, T, H, D] memory
    assert not x.is_contiguous()
    got, _ = segment_means(x, 7, backend="triton")
    ref, _ = segment_means(x.contiguous(), 7, backend="torch")
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("T,segment_size", [(4096, 16), (8191, 128), (16384, 1)])
def test_triton_large_gpu(T, segment_size, dtype):
    x = torch.randn(2, 8, T, 128, device="cuda", dtype=dtype)
    valid = torch.rand(2, T, device="cuda") > 0.1
    got, got_c = segment_means(x, segment_size, valid=valid, backend="triton")
    ref, ref_c = segment_means(x.double(), segment_size, valid=valid, backend="torch")
    assert torch.equal(got_c, ref_c)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=FLOOR[dtype] * ref.abs().max().item())


BAD = [
    (lambda: segment_means(torch.randn(2, 8, 3), 2), "x must be 4-D"),
    (lambda: segment_means(torch.randn(1, 1, 8, 4), 0), "segment_size must be >= 1"),
    (lambda: segment_means(torch.randn(1, 1, 8, 4), 2.0), "segment_size must be an int"),
    (lambda: segment_means(torch.randn(1, 1, 8, 4), 2, sink_tokens=-1), "sink_tokens must be >= 0"),
    (lambda: segment_means(torch.randn(1, 1, 8, 4), 2, valid=torch.ones(1, 7, dtype=torch.bool)), r"valid must have shape \[B, T\] = \[1, 8\]"),
    (lambda: segment_means(torch.randn(1, 1, 8, 4), 2, valid=torch.ones(1, 8)), "valid must be a bool tensor"),
    (lambda: segment_means(torch.ones(1, 1, 8, 4, dtype=torch.int64), 2), "x must be float16, bfloat16, float32 or float64"),
    (lambda: segment_means(torch.randn(1, 1, 8, 4), 2, backend="cuda"), "backend must be one of"),
]


@pytest.mark.parametrize("call,message", BAD, ids=[m.split(" ")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if not prism_ops._backend.triton_available():
        pytest.skip("triton is not installed")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        segment_means(torch.randn(1, 1, 8, 16), 2, backend="triton")


def test_custom_op_opcheck():
    """prism_ops::segment_means: schema, fake (meta) implementation, autograd registration, AOT."""
    from prism_ops.ops.segment_means import _segment_means_op

    x = torch.randn(2, 3, 11, 16, requires_grad=True)
    valid = make_valid(2, 11)
    torch.library.opcheck(_segment_means_op, (x, 4, valid, 2, "torch"))
    torch.library.opcheck(_segment_means_op, (x.detach(), 3, None, 0, "torch"), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("with_valid", [False, True], ids=["dense", "padded"])
def test_gradcheck(with_valid):
    x = torch.randn(2, 2, 11, 8, dtype=torch.float64, requires_grad=True)
    valid = make_valid(2, 11) if with_valid else None
    assert torch.autograd.gradcheck(lambda x: segment_means(x, 4, valid=valid, sink_tokens=2)[0], (x,))


@needs_triton
def test_autotune_configs():
    from prism_ops.kernels import segment_means as kern

    assert set(kern.AUTOTUNE_KEY) <= set(kern.segment_means_kernel.arg_names)
    assert [c.kwargs["ROWS"] for c in kern.tuned_kernel(True).configs] == [2]  # the multi-row path, one config
    assert len(kern.tuned_kernel(False).configs) > 1
    # The key holds a power-of-two bucket of the clamped segment size, not the raw size: growing
    # chunks (whose clamped size grows with them) retune a handful of times, not on every call.
    assert "segment_size" not in kern.AUTOTUNE_KEY and "SEG_BUCKET" in kern.AUTOTUNE_KEY
    assert [kern.seg_bucket(s) for s in (1, 3, 16, 17, 1000, 5000, 10**6)] == [1, 4, 16, 32, 1024, 1024, 1024]
    assert len({kern.seg_bucket(T) for T in range(1, 5000)}) == 11
