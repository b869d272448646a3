"""prism_attention: torch path and Triton kernel against the fp64 oracle, limits, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TRITON_DEVICE, assert_within_budget, gpu, needs_triton, to_triton
from oracle import oracle_prism_attention

from prism_ops import prism_attention
from prism_ops.ops import prism_attention as torch_ops
from prism_ops.ops.prism_attention import prism_attention_torch

# (B, H, Hkv, Tq, Tk, S, D): GQA 9/3, awkward lengths, Tq < Tk (cache), Tq > Tk, T = 1, no summaries.
CASES = [
    (2, 4, 4, 33, 33, 7, 64),
    (1, 9, 3, 17, 29, 5, 40),
    (2, 2, 1, 1, 1, 3, 59),
    (1, 2, 2, 20, 12, 4, 16),
    (1, 4, 2, 31, 31, 0, 128),
    (2, 3, 3, 5, 40, 11, 32),
]
IDS = [f"B{b}-H{h}-Hkv{hk}-Tq{tq}-Tk{tk}-S{s}-D{d}" for b, h, hk, tq, tk, s, d in CASES]


def make_inputs(B, H, Hkv, Tq, Tk, S, D, dtype=torch.float32, padded=False):
    q = torch.randn(B, H, Tq, D)
    k, v = torch.randn(B, Hkv, Tk, D), torch.randn(B, Hkv, Tk, D)
    k_sum, v_sum = torch.randn(B, Hkv, S, D), torch.randn(B, Hkv, S, D)
    counts = torch.randint(0, 20, (B, S))  # includes 0 (ignored) and 1 (exact) rows
    k_valid = None
    if padded:
        k_valid = torch.rand(B, Tk) > 0.25
        k_valid[:, -1] = True
    cast = lambda t: t.to(dtype)  # noqa: E731
    return cast(q), cast(k), cast(v), cast(k_sum), cast(v_sum), counts, k_valid


@pytest.fixture(params=["cpu-fused", "sdpa-mask"])
def torch_path(request, monkeypatch):
    """The torch backend's two paths: fused CPU kernels merged by lse, and SDPA with a bias mask
    (what CUDA tensors take)."""
    if request.param == "sdpa-mask":
        monkeypatch.setattr(torch_ops, "_cpu_flash", None)
    return request.param


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("log_count_bias", [True, False], ids=["lnbias", "nobias"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_torch_matches_oracle(case, causal, log_count_bias, padded, torch_path):
    q, k, v, ks, vs, c, kval = make_inputs(*case, dtype=torch.float64, padded=padded)
    ref, ref_lse = oracle_prism_attention(q, k, v, ks, vs, c, causal, None, log_count_bias, kval)
    kw = dict(causal=causal, log_count_bias=log_count_bias, k_valid=kval, backend="torch")
    out = prism_attention(q, k, v, ks, vs, c, **kw)
    out2, lse = prism_attention(q, k, v, ks, vs, c, return_lse=True, **kw)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(out2, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_torch_low_precision_within_budget(dtype):
    # The torch path in low precision is the yardstick for the kernel; check it is sane itself.
    q, k, v, ks, vs, c, kval = make_inputs(2, 4, 2, 40, 40, 9, 64, dtype=dtype, padded=True)
    ref, _ = oracle_prism_attention(q, k, v, ks, vs, c, True, None, True, kval)
    out = prism_attention(q, k, v, ks, vs, c, causal=True, k_valid=kval, backend="torch")
    assert out.dtype == dtype
    assert (out.double() - ref).abs().max() < 64 * torch.finfo(dtype).eps


def test_exact_without_summaries_equals_sdpa():
    q, k, v = torch.randn(2, 6, 50, 64), torch.randn(2, 2, 50, 64), torch.randn(2, 2, 50, 64)
    for causal in (False, True):
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        torch.testing.assert_close(prism_attention(q, k, v, causal=causal), ref)


def test_count_m_row_equals_m_copies():
    """+ln(m) makes one summary row weigh exactly like m identical keys (the scaling-aware correction)."""
    q, k, v = torch.randn(1, 2, 8, 16, dtype=torch.float64), torch.randn(1, 2, 5, 16, dtype=torch.float64), torch.randn(1, 2, 5, 16, dtype=torch.float64)
    key, val = torch.randn(1, 2, 1, 16, dtype=torch.float64), torch.randn(1, 2, 1, 16, dtype=torch.float64)
    m = 6
    ref = F.scaled_dot_product_attention(q, torch.cat([k, key.expand(-1, -1, m, -1)], 2), torch.cat([v, val.expand(-1, -1, m, -1)], 2))
    got = prism_attention(q, k, v, key, val, torch.tensor([m]))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    off = prism_attention(q, k, v, key, val, torch.tensor([m]), log_count_bias=False)
    assert (off - ref).abs().max() > 1e-3  # the switch really switches


def test_rows_that_see_nothing_return_zeros_not_nan(torch_path):
    q = torch.randn(1, 2, 6, 16)
    k, v = torch.randn(1, 2, 3, 16), torch.randn(1, 2, 3, 16)
    ks, vs = torch.randn(1, 2, 2, 16), torch.randn(1, 2, 2, 16)
    zero = torch.zeros(2, dtype=torch.int64)
    # Causal with Tq > Tk: the first Tq - Tk queries see no local key and no summary counts.
    for return_lse in (False, True):
        res = prism_attention(q, k, v, ks, vs, zero, causal=True, return_lse=return_lse)
        out = res[0] if return_lse else res
        assert not out.isnan().any()
        assert torch.equal(out[:, :, :3], torch.zeros_like(out[:, :, :3]))
        if return_lse:
            assert torch.isinf(res[1][:, :, :3]).all() and torch.isfinite(res[1][:, :, 3:]).all()
    # No key at all.
    empty = torch.randn(1, 2, 0, 16)
    assert torch.equal(prism_attention(q, empty, empty), torch.zeros_like(q))


def test_scale_is_used():
    q, k, v = torch.randn(1, 1, 4, 16), torch.randn(1, 1, 4, 16), torch.randn(1, 1, 4, 16)
    ref = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(prism_attention(q, k, v, scale=0.3), ref)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", CASES[:5], ids=IDS[:5])
def test_triton_within_budget(case, causal, dtype):
    padded = case[0] == 2
    q, k, v, ks, vs, c, kval = make_inputs(*case, dtype=dtype, padded=padded)
    ref, ref_lse = oracle_prism_attention(q, k, v, ks, vs, c, causal, None, True, kval)
    yard, _ = prism_attention_torch(q, k, v, ks, vs, c, causal=causal, k_valid=kval, return_lse=True) if dtype == torch.float32 else (
        prism_attention_torch(q, k, v, ks, vs, c, causal=causal, k_valid=kval), None)
    out, lse = prism_attention(*map(to_triton, (q, k, v, ks, vs, c)), causal=causal, k_valid=to_triton(kval),
                               return_lse=True, backend="triton")
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert not out.isnan().any()
    what = f"{case} causal={causal} {dtype}"
    assert_within_budget(out.cpu(), yard, ref, dtype, what)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse.cpu()), finite)
    torch.testing.assert_close(lse.cpu().double()[finite], ref_lse[finite], rtol=0, atol=1e-2 if dtype != torch.float32 else 1e-5)


@needs_triton
def test_triton_rows_that_see_nothing_and_count_vector():
    q = torch.randn(1, 2, 20, 16).to(TRITON_DEVICE)
    k, v = torch.randn(1, 1, 6, 16).to(TRITON_DEVICE), torch.randn(1, 1, 6, 16).to(TRITON_DEVICE)
    ks, vs = torch.randn(1, 1, 3, 16).to(TRITON_DEVICE), torch.randn(1, 1, 3, 16).to(TRITON_DEVICE)
    for counts in (torch.zeros(3, dtype=torch.int32), torch.tensor([2.0, 0.0, 5.0])):
        counts = counts.to(TRITON_DEVICE)
        got, lse = prism_attention(q, k, v, ks, vs, counts, causal=True, return_lse=True, backend="triton")
        ref, ref_lse = prism_attention(q, k, v, ks, vs, counts, causal=True, return_lse=True, backend="torch")
        assert not got.isnan().any()
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
        assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))


@needs_triton
def test_triton_block_boundaries():
    """Block sizes forced small so Tq, Tk and S each span several blocks plus a ragged tail."""
    from prism_ops.kernels.prism_attention import prism_attention_triton

    q, k, v, ks, vs, c, kval = make_inputs(1, 2, 1, 45, 53, 19, 24, padded=True)
    ref, _ = oracle_prism_attention(q, k, v, ks, vs, c, True, 0.2, True, kval)
    out = prism_attention_triton(*map(to_triton, (q, k, v, ks, vs, c)), causal=True, scale=0.2, k_valid=to_triton(kval),
                                 block_m=16, block_n=32, interpret=TRITON_DEVICE == "cpu")
    torch.testing.assert_close(out.cpu().double(), ref, rtol=0, atol=1e-5)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("D", [64, 96, 128, 256])
@pytest.mark.parametrize("Tq,Tk,S", [(1000, 1000, 113), (2048, 4096, 256), (113, 203, 17)])
def test_triton_large_gpu(Tq, Tk, S, D, causal, dtype):
    q = torch.randn(2, 8, Tq, D, device="cuda", dtype=dtype)
    k, v = torch.randn(2, 2, Tk, D, device="cuda", dtype=dtype), torch.randn(2, 2, Tk, D, device="cuda", dtype=dtype)
    ks, vs = torch.randn(2, 2, S, D, device="cuda", dtype=dtype), torch.randn(2, 2, S, D, device="cuda", dtype=dtype)
    c = torch.randint(0, 64, (2, S), device="cuda")
    ref = prism_attention_torch(*(t.double() for t in (q, k, v, ks, vs)), c, causal=causal)
    yard = prism_attention_torch(q, k, v, ks, vs, c, causal=causal)
    out = prism_attention(q, k, v, ks, vs, c, causal=causal, backend="triton")
    assert_within_budget(out, yard, ref, dtype, f"Tq{Tq} Tk{Tk} D{D}")


def t(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


BAD = [
    (lambda: prism_attention(t(2, 4, 8), t(2, 4, 8, 16), t(2, 4, 8, 16)), r"q must be 4-D \[B, H, Tq, D\]"),
    (lambda: prism_attention(t(2, 4, 8, 16), t(3, 4, 8, 16), t(3, 4, 8, 16)), r"k must have shape \[B, Hkv, Tk, D\] with B=2"),
    (lambda: prism_attention(t(2, 4, 8, 16), t(2, 4, 8, 32), t(2, 4, 8, 32)), "with B=2 and D=16"),
    (lambda: prism_attention(t(2, 4, 8, 16), t(2, 4, 8, 16), t(2, 4, 7, 16)), "v must have the shape of k"),
    (lambda: prism_attention(t(2, 6, 8, 16), t(2, 4, 8, 16), t(2, 4, 8, 16)), "H=6 must be a multiple of k's head count Hkv=4"),
    (lambda: prism_attention(t(1, 2, 8, 16), t(1, 2, 8, 16, dtype=torch.float64), t(1, 2, 8, 16)), "k has dtype torch.float64 but q has torch.float32"),
    (lambda: prism_attention(t(1, 2, 8, 16), t(1, 2, 8, 16), t(1, 2, 8, 16).to(torch.float16)), "v has dtype"),
    (lambda: prism_attention(t(1, 2, 8, 16), t(1, 2, 8, 16), t(1, 2, 8, 16), t(1, 2, 3, 16), t(1, 2, 3, 16), torch.tensor([1, -2, 3])), "sum_counts must be finite and >= 0"),
    (lambda: prism_attention(t(1, 2, 8, 16), t(1, 2, 8, 16), t(1, 2, 8, 16), t(1, 2, 3, 16), t(1, 2, 3, 16), torch.ones(1, 4)), r"sum_counts must have shape \[B, S\] = \[1, 3\] or \[S\] = \[3\]"),
    (lambda: prism_attention(t(1, 2, 8, 16), t(1, 2, 8, 16), t(1, 2, 8, 16), t(1, 2, 3, 16), None, torch.ones(3)), "must be given together"),
    (lambda: prism_attention(t(1, 2, 8, 16), t(1, 2, 8, 16), t(1, 2, 8, 16), t(1, 1, 3, 16), t(1, 1, 3, 16), torch.ones(3)), r"k_sum must have shape \[B, Hkv, S, D\] = \[1, 2, S, 16\]"),
    (lambda: prism_attention(t(1, 2, 8, 16), t(1, 2, 8, 16), t(1, 2, 8, 16), k_valid=torch.ones(1, 9, dtype=torch.bool)), r"k_valid must have shape \[B, T\] = \[1, 8\]"),
    (lambda: prism_attention(t(1, 2, 8, 16).to(torch.int32), t(1, 2, 8, 16), t(1, 2, 8, 16)), "q must be float16, bfloat16, float32 or float64"),
    (lambda: prism_attention(t(1, 2, 8, 16), t(1, 2, 8, 16), t(1, 2, 8, 16), backend="cuda"), "backend must be one of"),
    (lambda: prism_attention(t(1, 2, 8, 8), t(1, 2, 8, 8), t(1, 2, 8, 8), backend="triton"), "does not support head dim D=8"),
]


@pytest.mark.parametrize("call,message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device type")
def test_device_mismatch():
    with pytest.raises(ValueError, match="k is on cuda"):
        prism_attention(t(1, 2, 8, 16), t(1, 2, 8, 16).cuda(), t(1, 2, 8, 16))


def test_device_mismatch_meta():
    # Without a GPU, the meta device stands in for "another device".
    with pytest.raises(ValueError, match="k is on meta:?0? but q is on cpu|k is on meta but q is on cpu"):
        prism_attention(t(1, 2, 8, 16), torch.empty(1, 2, 8, 16, device="meta"), t(1, 2, 8, 16))


def test_lse_is_natural_log():
    q, k, v = t(1, 1, 3, 16, dtype=torch.float64), t(1, 1, 5, 16, dtype=torch.float64), t(1, 1, 5, 16, dtype=torch.float64)
    _, lse = prism_attention(q, k, v, return_lse=True)
    ref = torch.logsumexp(q @ k.transpose(-1, -2) / math.sqrt(16), -1)
    torch.testing.assert_close(lse, ref)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_batch_row_with_only_padding_and_empty_summaries(causal, torch_path):
    q, k, v = torch.randn(2, 2, 5, 16), torch.randn(2, 2, 5, 16), torch.randn(2, 2, 5, 16)
    ks, vs = torch.randn(2, 2, 3, 16), torch.randn(2, 2, 3, 16)
    k_valid = torch.tensor([[False] * 5, [False, True, True, True, True]])
    counts = torch.tensor([[0, 0, 0], [0, 2, 0]])
    out, lse = prism_attention(q, k, v, ks, vs, counts, causal=causal, k_valid=k_valid, return_lse=True)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.isinf(lse[0]).all()
    assert torch.isfinite(lse[1]).all() and not out[1].isnan().any()
    ref, ref_lse = oracle_prism_attention(q, k, v, ks, vs, counts, causal, None, True, k_valid)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)


def test_custom_op_opcheck():
    """prism_ops::prism_attention: schema, fake (meta) implementation, autograd registration, AOT;
    the full check once (causal, lse, summaries, padding), the cheap ones on the other variants."""
    from prism_ops.ops.prism_attention import _prism_attention_op

    q, k, v, ks, vs, c, kval = make_inputs(2, 4, 2, 9, 9, 3, 16, padded=True)
    for t in (q, k, v, ks, vs):
        t.requires_grad_()
    torch.library.opcheck(_prism_attention_op, (q, k, v, ks, vs, c, True, None, True, True, kval, "torch"))
    cheap = ("test_schema", "test_faketensor")
    for causal, lse in ((False, False), (True, False), (False, True)):
        torch.library.opcheck(_prism_attention_op, (q, k, v, ks, vs, c[0], causal, 0.3, False, lse, None, "torch"),
                              test_utils=cheap)
    torch.library.opcheck(_prism_attention_op, (q, k, v, None, None, None, True, None, True, True, None, "torch"),
                          test_utils=cheap)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gradcheck(causal):
    """The registered backward, out and lse, GQA, padding, a count-0 row."""
    d = dict(dtype=torch.float64, requires_grad=True)
    q, k, v = torch.randn(1, 2, 5, 8, **d), torch.randn(1, 1, 5, 8, **d), torch.randn(1, 1, 5, 8, **d)
    ks, vs = torch.randn(1, 1, 3, 8, **d), torch.randn(1, 1, 3, 8, **d)
    c = torch.tensor([[4, 0, 2]])
    kval = torch.tensor([[True, False, True, True, True]])
    f = lambda *t: prism_attention(*t, c, causal=causal, k_valid=kval, return_lse=True)  # noqa: E731
    assert torch.autograd.gradcheck(f, (q, k, v, ks, vs))


@needs_triton
def test_triton_backward_equals_torch_backward():
    q, k, v, ks, vs, c, kval = make_inputs(1, 2, 1, 20, 20, 5, 16, padded=True)
    grads = []
    for backend, dev in (("torch", "cpu"), ("triton", TRITON_DEVICE)):
        ins = [t.to(dev).requires_grad_() for t in (q, k, v, ks, vs)]
        out = prism_attention(*ins, c.to(dev), causal=True, k_valid=kval.to(dev), backend=backend)
        out.square().sum().backward()
        grads.append([t.grad.cpu() for t in ins])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@needs_triton
def test_autotune_configs():
    """The GPU configs (not run here): keyed on kernel arguments (a decode/prefill query bucket
    among them), one set per head dim, dtype class and query bucket, pruned to what fits a small
    GPU's shared memory. Under the interpreter there is a single config."""
    from prism_ops.kernels import prism_attention as kern

    assert set(kern.AUTOTUNE_KEY) <= set(kern.prism_attention_kernel.arg_names)
    assert "TQ_BUCKET" in kern.AUTOTUNE_KEY
    assert len(kern.tuned_kernel(True).configs) == 1
    configs = kern.tuned_kernel(False).configs
    prune = kern._pruner(False)
    for dtype, tables in ((torch.float16, (kern._GPU_TILES, kern._DECODE_TILES)), (torch.float32, (kern._FP32_TILES,))):
        for block_d in (64, 128, 256):
            for Tq, table in zip((64, 1), tables):
                mine = prune(configs, {"Q": torch.empty(1, 1, Tq, block_d, dtype=dtype)})
                assert {kern._tile(c) for c in mine} == set(table[block_d]), (dtype, block_d, Tq)
                small = kern.fitting(mine, block_d, 2, 64 * 1024)  # e.g. 64 KiB of shared memory
                assert len(small) == 1 or all(
                    kern.shared_memory_estimate(kern._tile(c), block_d, 2) <= 64 * 1024 for c in small)
    assert [kern._tile(c) for c in kern._pruner(True)(configs, {"Q": torch.empty(1, 1, 64, 128)})] == [
        kern._FP32_TILES[128][0]]  # pinned: the first tile only, so nothing is timed


def _tf32(x):
    """fp32 rounded to TF32 (10 mantissa bits, to nearest, ties away: PTX cvt.rna.tf32.f32)."""
    return ((x.contiguous().view(torch.int32) + 0x1000) & ~0x1FFF).view(torch.float32)


def _tf32x3_matmul(a, b):
    """Triton's input_precision="tf32x3" dot: hi*hi + hi*lo + lo*hi of the TF32 splits."""
    ah, bh = _tf32(a), _tf32(b)
    return _tf32(a - ah) @ bh + ah @ _tf32(b - bh) + ah @ bh


@pytest.mark.parametrize("case", CASES[:5], ids=IDS[:5])
def test_tf32x3_dots_stay_within_the_fp32_budget(case):
    """The kernel's fp32 path on a GPU uses TF32x3 dots, which the interpreter runs as fp32: this
    emulates them (both products of attention) and holds them to the budget the GPU test applies
    to the kernel's fp32 output, so that budget is known to fit TF32x3 (plain TF32 does not)."""
    q, k, v, ks, vs, c, _ = make_inputs(*case)
    ref, _ = oracle_prism_attention(*(t.double() for t in (q, k, v, ks, vs)), c, False, None, True, None)
    keys, vals = torch.cat([k, ks], 2), torch.cat([v, vs], 2)
    bias = torch.cat([torch.zeros(c.shape[0], 1, 1, k.shape[2]), torch.log(c.float())[:, None, None, :]], -1)
    G = q.shape[1] // k.shape[1]
    keys, vals = keys.repeat_interleave(G, 1), vals.repeat_interleave(G, 1)

    def attention(matmul):
        s = matmul(q, keys.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + bias
        p = torch.exp(s - s.amax(-1, keepdim=True).clamp(min=-1e30))
        return matmul(p, vals) / p.sum(-1, keepdim=True).clamp(min=1e-30)

    yard = prism_attention_torch(q, k, v, ks, vs, c)
    assert_within_budget(attention(_tf32x3_matmul), yard, ref, torch.float32, f"tf32x3 {case}")
    with pytest.raises(AssertionError):  # the check can tell: one TF32 product is far outside
        assert_within_budget(attention(lambda a, b: _tf32(a) @ _tf32(b)), yard, ref, torch.float32, "tf32")
