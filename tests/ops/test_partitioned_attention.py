"""partitioned_attention: exact limits, causality, the oracle with every lever, awkward shapes."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from conftest import allocated_bytes, needs_triton, to_triton
from oracle import oracle_partitioned_attention

from prism_ops import partition_bounds, partitioned_attention


def qkv(B, H, Hkv, T, D, dtype=torch.float64):
    return torch.randn(B, H, T, D, dtype=dtype), torch.randn(B, Hkv, T, D, dtype=dtype), torch.randn(B, Hkv, T, D, dtype=dtype)


def exact(q, k, v, causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("P,segment_size", [(1, 16), (3, 1), (4, 1), (1, 1)], ids=lambda x: str(x))
def test_exact_limits_segment_size_1_or_one_partition(P, segment_size, causal):
    q, k, v = qkv(2, 9, 3, 37, 40)
    got = partitioned_attention(q, k, v, num_partitions=P, segment_size=segment_size, causal=causal)
    torch.testing.assert_close(got, exact(q, k, v, causal), rtol=0, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("T,P,segment_size", [(48, 3, 4), (37, 4, 3), (10, 3, 8)])
def test_exact_limit_identical_tokens_in_each_segment(T, P, segment_size, causal):
    """Every segment of every chunk holds one repeated key/value: segment means lose nothing."""
    q, k, v = qkv(2, 4, 2, T, 32)
    for start, end in partition_bounds(T, P):
        for s0 in range(start, end, segment_size):
            s1 = min(s0 + segment_size, end)
            k[:, :, s0:s1] = k[:, :, s0:s0 + 1]
            v[:, :, s0:s1] = v[:, :, s0:s0 + 1]
    got = partitioned_attention(q, k, v, num_partitions=P, segment_size=segment_size, causal=causal)
    torch.testing.assert_close(got, exact(q, k, v, causal), rtol=0, atol=1e-12)
    plain = partitioned_attention(q, k, v, num_partitions=P, segment_size=segment_size, causal=causal, log_count_bias=False)
    assert (plain - got).abs().max() > 1e-3  # without +ln(count) the limit is not exact


# (B, H, Hkv, T, D, P, segment_size, sinks, halo): T not divisible by P or segment_size, T < P*segment_size, GQA 9/3.
CASES = [
    (2, 4, 2, 29, 16, 3, 4, 0, 0),
    (1, 9, 3, 23, 40, 4, 3, 2, 0),
    (2, 2, 2, 17, 59, 2, 4, 0, 3),
    (1, 2, 1, 13, 16, 4, 5, 3, 2),
    (2, 2, 2, 9, 16, 3, 8, 0, 0),
    (1, 3, 3, 20, 24, 8, 2, 7, 5),
]
IDS = [f"B{b}-H{h}-Hkv{hk}-T{t}-D{d}-P{p}-segment_size{c}-sink{s}-halo{w}" for b, h, hk, t, d, p, c, s, w in CASES]


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_oracle(case, causal, padded):
    B, H, Hkv, T, D, P, segment_size, sinks, halo = case
    q, k, v = qkv(B, H, Hkv, T, D)
    valid = None
    if padded:
        valid = torch.rand(B, T) > 0.3
        valid[:, 0] = True
        valid[-1, : T // 3] = False  # left padding on the last row
    kw = dict(segment_size=segment_size, causal=causal, sink_tokens=sinks, halo=halo, valid=valid)
    got = partitioned_attention(q, k, v, num_partitions=P, **kw)
    ref = oracle_partitioned_attention(q, k, v, partition_bounds(T, P), **kw)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


def test_uneven_weights_match_oracle():
    q, k, v = qkv(1, 2, 2, 30, 16)
    bounds = partition_bounds(30, 3, weights=[1, 2, 3])
    assert [e - s for s, e in bounds] == [5, 10, 15]
    got = partitioned_attention(q, k, v, num_partitions=3, segment_size=4, weights=[1, 2, 3], causal=True)
    ref = oracle_partitioned_attention(q, k, v, bounds, 4, causal=True)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


def test_partition_bounds():
    assert partition_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]  # earlier chunks larger
    assert partition_bounds(3, 3) == [(0, 1), (1, 2), (2, 3)]
    for T in (1, 7, 64, 101):
        for P in range(1, min(T, 9) + 1):
            sizes = [e - s for s, e in partition_bounds(T, P)]
            assert sum(sizes) == T and max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    sizes = [e - s for s, e in partition_bounds(7, 3, weights=[100, 1, 1])]
    assert sum(sizes) == 7 and min(sizes) >= 1


@pytest.mark.parametrize("sinks,halo", [(0, 0), (3, 2)])
def test_causality_later_tokens_never_change_earlier_outputs(sinks, halo):
    """Perturb every token from position t on: outputs before t stay bitwise equal."""
    T, P = 41, 4
    q, k, v = qkv(1, 4, 2, T, 32, dtype=torch.float32)
    kw = dict(num_partitions=P, segment_size=4, causal=True, sink_tokens=sinks, halo=halo)
    base = partitioned_attention(q, k, v, **kw)
    for t in (1, 10, 11, 20, 33, 40):  # inside chunks and at chunk starts (0, 11, 21, 31)
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for x in (q2, k2, v2):
            x[:, :, t:] += torch.randn_like(x[:, :, t:])
        out = partitioned_attention(q2, k2, v2, **kw)
        assert torch.equal(out[:, :, :t], base[:, :, :t]), f"perturbing t>={t} changed earlier outputs"
        assert not torch.equal(out[:, :, t:], base[:, :, t:])


def test_earlier_partitions_are_seen_only_through_their_segment_means():
    T, P, segment_size = 40, 2, 4  # chunks [0, 20) and [20, 40)
    q, k, v = qkv(1, 2, 2, T, 16)
    base = partitioned_attention(q, k, v, num_partitions=P, segment_size=segment_size, causal=True)
    # Move two tokens of one segment in opposite directions: the segment's mean is unchanged.
    k2, v2 = k.clone(), v.clone()
    delta = torch.randn(1, 2, 1, 16, dtype=torch.float64)
    for x in (k2, v2):
        x[:, :, 4:5] += delta
        x[:, :, 5:6] -= delta
    out = partitioned_attention(q, k2, v2, num_partitions=P, segment_size=segment_size, causal=True)
    torch.testing.assert_close(out[:, :, 20:], base[:, :, 20:], rtol=0, atol=1e-12)  # only means cross
    assert (out[:, :, :20] - base[:, :, :20]).abs().max() > 1e-3  # chunk 0 sees them exactly
    # A change that moves the mean does reach the later partition.
    k2[:, :, 4:5] += delta
    out = partitioned_attention(q, k2, v, num_partitions=P, segment_size=segment_size, causal=True)
    assert (out[:, :, 20:] - base[:, :, 20:]).abs().max() > 1e-6


def test_T_equals_one_and_P_equals_T():
    q, k, v = qkv(1, 2, 2, 1, 16)
    torch.testing.assert_close(partitioned_attention(q, k, v, num_partitions=1, segment_size=4), v.expand_as(q))
    q, k, v = qkv(1, 2, 2, 5, 16)
    got = partitioned_attention(q, k, v, num_partitions=5, segment_size=3)
    torch.testing.assert_close(got, exact(q, k, v, False), rtol=0, atol=1e-12)  # one token per chunk: exact


@pytest.mark.parametrize("huge", [10**6, 10**11])
@pytest.mark.parametrize("levers", [{}, dict(sink_tokens=2, halo=1), dict(cluster_iters=2)], ids=["plain", "sinks-halo", "clusters"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_segment_larger_than_the_sequence(huge, levers, causal):
    """11 tokens on 2 partitions with a segment size of 10**6 or 10**11: the output of
    segment_size = 11 (one summary row per chunk), with the same bytes allocated (10**11 used to
    try 12.8 TB, 10**6 took 3.5 GB per rank in prism-run)."""
    q, k, v = qkv(1, 2, 1, 11, 8, dtype=torch.float32)
    kw = dict(num_partitions=2, causal=causal, **levers)
    ref = partitioned_attention(q, k, v, segment_size=11, **kw)
    assert torch.equal(partitioned_attention(q, k, v, segment_size=huge, **kw), ref)
    assert (allocated_bytes(lambda: partitioned_attention(q, k, v, segment_size=huge, **kw))
            == allocated_bytes(lambda: partitioned_attention(q, k, v, segment_size=11, **kw)))


def test_prism_config_with_a_huge_segment_size_runs_like_one_segment():
    transformers = pytest.importorskip("transformers")
    from prism_ops import PrismConfig, hf

    model = transformers.GPT2Model(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=32,
                                                           vocab_size=50, bos_token_id=0, eos_token_id=0)).eval()
    ids = torch.randint(0, 50, (1, 11))
    outs = []
    for segment_size in (11, 10**11):
        hf.configure(model, PrismConfig(num_partitions=2, segment_size=segment_size))
        with torch.no_grad():
            outs.append(model(input_ids=ids).last_hidden_state)
    assert torch.equal(outs[0], outs[1])


@needs_triton
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_triton_backend_matches_torch(causal):
    q, k, v = qkv(1, 4, 2, 27, 32, dtype=torch.float32)
    valid = torch.rand(1, 27) > 0.2
    kw = dict(num_partitions=3, segment_size=4, causal=causal, sink_tokens=2, halo=2)
    ref = partitioned_attention(q, k, v, valid=valid, backend="torch", **kw)
    got = partitioned_attention(to_triton(q), to_triton(k), to_triton(v), valid=to_triton(valid), backend="triton", **kw)
    torch.testing.assert_close(got.cpu(), ref, rtol=0, atol=2e-5)


BAD = [
    (dict(num_partitions=0), "num_partitions must be in \\[1, 10\\]"),
    (dict(num_partitions=11), "num_partitions must be in \\[1, 10\\] \\(at most T=10 tokens\\), got 11"),
    (dict(segment_size=0), "segment_size must be >= 1, got 0"),
    (dict(halo=-1), "halo must be >= 0"),
    (dict(sink_tokens=-2), "sink_tokens must be >= 0"),
    (dict(weights=[1, 0]), r"weights must be a list of 2 finite numbers > 0 \(one per partition\), got weights\[1\] = 0 in \[1, 0\]"),
    (dict(valid=torch.ones(1, 9, dtype=torch.bool)), r"valid must have shape \[B, T\] = \[1, 10\]"),
]


@pytest.mark.parametrize("override,message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input(override, message):
    q, k, v = qkv(1, 2, 2, 10, 16)
    kw = dict(num_partitions=2, segment_size=4) | override
    with pytest.raises(ValueError, match=message):
        partitioned_attention(q, k, v, **kw)


def test_bad_lengths():
    q, k, v = qkv(1, 2, 2, 10, 16)
    with pytest.raises(ValueError, match="k must cover the same T=10 tokens as q"):
        partitioned_attention(q, k[:, :, :9], v[:, :, :9], num_partitions=2, segment_size=4)


class _Below64(TorchDispatchMode):
    """Records every op that produces a floating tensor of less than float64."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64:
                self.found.append(f"{func} -> {t.dtype}")
        return out


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_float64_runs_in_float64_throughout(causal):
    """No step of an fp64 forward rounds to a lower precision: not the counts, ln(count), masks,
    lse, merge weights or the key clustering. (summary_bits is left out: its wire format carries
    float16 scales by design.)"""
    q, k, v = qkv(2, 4, 2, 30, 16)
    valid = torch.rand(2, 30) > 0.2
    valid[:, 0] = True
    kw = dict(num_partitions=3, segment_size=4, causal=causal, valid=valid, sink_tokens=2, halo=2, weights=[1, 2, 2])
    for extra in ({}, {"cluster_iters": 2}):
        with _Below64() as mode:
            partitioned_attention(q, k, v, **kw, **extra)
        assert not mode.found, mode.found


@pytest.mark.parametrize("path", ["cpu-fused", "sdpa-mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_float64_exact_to_1e12_relative(causal, path, monkeypatch):
    """Larger logits (scaled inputs) and both torch paths: fp64 agrees with the fp64 oracle to ~1e-12 relative."""
    from prism_ops.ops import prism_attention as torch_ops

    if path == "sdpa-mask":  # what CUDA tensors take
        monkeypatch.setattr(torch_ops, "_cpu_flash", None)
    q, k, v = qkv(1, 4, 2, 48, 32)
    q, k = 3 * q, 3 * k
    valid = torch.rand(1, 48) > 0.2
    valid[:, 0] = True
    kw = dict(segment_size=4, causal=causal, sink_tokens=1, halo=2, valid=valid)
    got = partitioned_attention(q, k, v, num_partitions=3, **kw)
    ref = oracle_partitioned_attention(q, k, v, partition_bounds(48, 3), **kw)
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-12
