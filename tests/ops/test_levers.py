"""The levers beyond plain segment means inside partitioned attention (key clusters, quantized
summaries, hidden exchange) and the PrismConfig that holds them. The ops behind two of them have
their own files: tests/ops/test_quantize_rows.py and tests/ops/test_token_clusters.py."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from prism_ops import PrismConfig, partitioned_attention, prism_attention, segment_means
from test_quantize_rows import loop_quantize


def two_key_groups(T=24, P=2):
    """Every chunk's keys alternate between two values; values are all different."""
    torch.manual_seed(0)
    q = torch.randn(1, 2, T, 16, dtype=torch.float64)
    a, b = torch.randn(2, 1, 2, 1, 16, dtype=torch.float64)
    k = torch.where(torch.arange(T)[None, None, :, None] % 2 == 0, a, b)
    v = torch.randn(1, 2, T, 16, dtype=torch.float64)
    return q, k, v


def test_key_clusters_are_exact_when_keys_repeat():
    """Equal keys in a row make the summary exact whatever the values: clustering finds them,
    positional segments (which mix the two keys) do not."""
    q, k, v = two_key_groups()
    ref = F.scaled_dot_product_attention(q, k, v)
    kw = dict(num_partitions=2, segment_size=6)  # 12 tokens per chunk -> 2 rows
    clustered = partitioned_attention(q, k, v, cluster_iters=2, **kw)
    torch.testing.assert_close(clustered, ref, rtol=0, atol=1e-12)
    assert (partitioned_attention(q, k, v, **kw) - ref).abs().max() > 1e-3


def test_key_clusters_respect_padding_and_sinks():
    q, k, v = two_key_groups(T=25, P=3)
    valid = torch.ones(1, 25, dtype=torch.bool)
    valid[0, [3, 10, 20]] = False
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
    got = partitioned_attention(q, k, v, num_partitions=3, segment_size=4, cluster_iters=3, sink_tokens=1,
                                valid=valid)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


def test_summary_bits_on_kv_rows():
    """P=2, full attention: chunk 0 sees chunk 1's segment means, quantized per channel."""
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 2, 20, 8), torch.randn(1, 1, 20, 8), torch.randn(1, 1, 20, 8)
    got = partitioned_attention(q, k, v, num_partitions=2, segment_size=3, summary_bits=4)
    kv, counts = segment_means(torch.cat([k, v], -1)[:, :, 10:], 3)
    kv = loop_quantize(kv[0, 0], 4)[None, None]
    ref0 = prism_attention(q[:, :, :10], k[:, :, :10], v[:, :, :10], kv[..., :8], kv[..., 8:], counts)
    torch.testing.assert_close(got[:, :, :10], ref0, rtol=1e-6, atol=1e-6)
    plain = partitioned_attention(q, k, v, num_partitions=2, segment_size=3)
    assert 1e-5 < (got - plain).abs().max() < 0.1


def linear_model_qkv(T=18, d=12, Hkv=2, D=4):
    torch.manual_seed(2)
    h = torch.randn(1, T, d, dtype=torch.float64)
    w_k, w_v = torch.randn(2, Hkv * D, d, dtype=torch.float64)
    b_k, b_v = torch.randn(2, Hkv * D, dtype=torch.float64)
    split = lambda x: x.view(1, T, Hkv, D).transpose(1, 2)  # noqa: E731
    q = torch.randn(1, 2 * Hkv, T, D, dtype=torch.float64)
    return q, split(h @ w_k.T + b_k), split(h @ w_v.T + b_v), h, (w_k, w_v), (b_k, b_v)


def test_hidden_exchange_quantizes_the_hidden_rows():
    q, k, v, h, (w_k, w_v), (b_k, b_v) = linear_model_qkv()
    kw = dict(num_partitions=2, segment_size=4)
    # Without quantization, hidden-feature and K/V exchange are the same computation.
    torch.testing.assert_close(partitioned_attention(q, k, v, hidden=h, kv_weight=(w_k, w_v), **kw),
                               partitioned_attention(q, k, v, **kw), rtol=0, atol=0)
    got = partitioned_attention(q, k, v, hidden=h, kv_weight=(w_k, w_v), summary_bits=3, **kw)
    # Reference for chunk 0: chunk 1's hidden means, quantized, then projected (with the bias).
    hm, counts = segment_means(h[:, None, 9:], 4)
    hq = loop_quantize(hm[0, 0], 3)
    ks = (hq @ w_k.T + b_k).view(1, 3, 2, 4).transpose(1, 2)
    vs = (hq @ w_v.T + b_v).view(1, 3, 2, 4).transpose(1, 2)
    ref0 = prism_attention(q[:, :, :9], k[:, :, :9], v[:, :, :9], ks, vs, counts)
    torch.testing.assert_close(got[:, :, :9], ref0, rtol=0, atol=1e-10)


def test_hidden_exchange_bad_input():
    q, k, v, h, (w_k, w_v), _ = linear_model_qkv()
    kw = dict(num_partitions=2, segment_size=4, summary_bits=4)
    with pytest.raises(ValueError, match=r"hidden must have shape \[B, T, d\] = \[1, 18, d >= 1\], got \[1, 5, 12\]"):
        partitioned_attention(q, k, v, hidden=h[:, :5], kv_weight=(w_k, w_v), **kw)
    with pytest.raises(ValueError, match="kv_weight must be \\(w_k, w_v\\)"):
        partitioned_attention(q, k, v, hidden=h, **kw)
    with pytest.raises(ValueError, match=r"kv_weight\[1\] must be a \[Hkv \* D, d\] = \[8, 12\] tensor"):
        partitioned_attention(q, k, v, hidden=h, kv_weight=(w_k, w_v[:, :3]), **kw)
    with pytest.raises(ValueError, match=r"cluster_iters must be in \[0, 100\] \(0 = positional segments\), got -1"):
        partitioned_attention(q, k, v, num_partitions=2, segment_size=4, cluster_iters=-1)


def test_config_levers_and_presets():
    c = PrismConfig.from_preset(4, segment_size=16)
    assert c == PrismConfig(num_partitions=4, segment_size=16)
    assert (c.sink_tokens, c.halo, c.log_count_bias, c.weights, c.summary_bits, c.exchange) == (0, 0, True, None, 0, "kv")
    edge = PrismConfig.from_preset(4, "edge")
    assert (edge.segment_size, edge.summary_bits, edge.exchange) == (1, 4, "auto")
    assert PrismConfig.from_preset(4, "edge", 8, summary_bits=8).segment_size == 8  # explicit wins
    assert PrismConfig.from_preset(4, "paper", 16) == c
    w = PrismConfig(num_partitions=2, segment_size=4, weights=[2, 1])
    assert w.weights == (2.0, 1.0) and hash(w) == hash(w.replace())  # frozen, hashable, normalised
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.segment_size = 8
    with pytest.raises(ValueError, match="segment_size must be >= 1, got 0"):
        c.replace(segment_size=0)  # a changed copy is checked again


@pytest.mark.parametrize("args,kw,message", [
    ((4, None, 16), dict(sinks=4), r"unknown lever\(s\) \['sinks'\]; known levers: \["),
    ((4, None, 0), {}, "segment_size must be >= 1, got 0"),
    ((4, None, None), {}, "segment_size is required"),
    ((0, None, 4), {}, "num_partitions must be >= 1"),
    ((4, "fastest", 4), {}, "preset must be one of"),
    ((4, None, 4), dict(exchange="qkv"), "exchange must be one of"),
    ((4, None, 4), dict(log_count_bias="yes"), "log_count_bias must be True or False"),
    ((2, None, 4), dict(weights=[1, 2, 3]), r"weights must be a list of 2 finite numbers > 0 \(one per partition\), got 3"),
    ((2, None, 4), dict(summary_bits=16), r"summary_bits must be 0 \(full precision\) or one of \(2, 3, 4, 8\), got 16"),
    ((2, None, 4), dict(backend="cuda"), "backend must be one of"),
    ((2, None, 4), dict(halo=-1), "halo must be >= 0"),
])
def test_config_bad_settings(args, kw, message):
    with pytest.raises(ValueError, match=message):
        PrismConfig.from_preset(*args, **kw)
