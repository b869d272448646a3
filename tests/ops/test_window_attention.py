"""Sliding-window and soft-capped PRISM attention (`prism_ops.ops.window_attention`) against a
float64 oracle written from the definitions, simulated at several partitions; the chunks a window
never reaches are not sent (wire layout, cost model).

Oracle: one dense softmax over [every local key | every summary row] with the visibility of the
docstring (a key at s is seen by the query at t iff |t - s| < window, s <= t when causal; a row
over [a, b) iff every position of it is) and logits softcap * tanh(q·k * scale / softcap), plus
ln(count) for rows after the cap. In float64 both sides agree to ~1e-15; the bound is 1e-12.
"""

import math

import pytest
import torch

from prism_ops import PrismConfig, cost
from prism_ops.ops.chunk_summary import row_spans, visible_chunks
from prism_ops.ops.partitioned_attention import partition_bounds, partitioned_attention
from prism_ops.ops.window_attention import windowed_prism_attention
from prism_ops.wire import payload_layouts

F64 = torch.float64


def qkv(B=2, H=4, Hkv=2, T=37, D=16, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, T, D, generator=g, dtype=dtype) for h in (H, Hkv, Hkv)]


def oracle(q, k, v, *, causal, window, softcap, num_partitions=1, segment_size=1, valid=None):
    """Dense float64 reference of P partitions: each attends to its own keys and to the segment
    means (counts over real tokens) of the chunks it may see, under the documented visibility."""
    B, H, T, D = q.shape
    G = H // k.shape[1]
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    valid = torch.ones(B, T, dtype=torch.bool) if valid is None else valid
    out = torch.zeros_like(q)
    bounds = partition_bounds(T, num_partitions)

    def visible(t, a, b):
        ok = (not causal or b - 1 <= t)
        if window is not None:
            ok = ok and t - a < window and (b - 1) - t < window
        return ok

    for p, (p0, p1) in enumerate(bounds):
        keys, vals, bias, spans = [], [], [], []
        for s in range(p0, p1):
            keys.append(k[:, :, s]), vals.append(v[:, :, s])
            bias.append(torch.where(valid[:, s], 0.0, -math.inf).to(F64)), spans.append((s, s + 1))
        for c, (c0, c1) in enumerate(bounds):
            if c == p or (causal and c > p):
                continue
            for a in range(c0, c1, segment_size):
                b = min(a + segment_size, c1)
                w = valid[:, a:b].to(F64)  # (B, n)
                n = w.sum(1)
                mean = lambda x: (x[:, :, a:b] * w[:, None, :, None]).sum(2) / n.clamp(min=1)[:, None, None]  # noqa
                keys.append(mean(k)), vals.append(mean(v))
                bias.append(torch.where(n > 0, torch.log(n.clamp(min=1)), -math.inf)), spans.append((a, b))
        K, V = torch.stack(keys, 2), torch.stack(vals, 2)  # (B, H, N, D)
        for t in range(p0, p1):
            s = (q[:, :, t, None] @ K.transpose(-1, -2))[:, :, 0] / math.sqrt(D)  # (B, H, N)
            if softcap is not None:
                s = softcap * torch.tanh(s / softcap)
            s = s + torch.stack(bias, 1)[:, None]
            seen = torch.tensor([visible(t, a, b) for a, b in spans])
            s = s.masked_fill(~seen, -math.inf)
            out[:, :, t] = (torch.softmax(s, -1)[..., None] * V).sum(2)
    return out


CASES = [  # (causal, window, softcap, partitions, segment size)
    (True, 5, None, 3, 1), (False, 7, None, 4, 1), (True, 9, 3.0, 2, 1), (False, None, 2.0, 3, 1),
    (True, 6, None, 3, 4), (False, 5, None, 3, 3), (True, 11, 1.5, 4, 5), (False, 40, 2.5, 2, 6),
]


@pytest.mark.parametrize("causal,window,softcap,P,seg", CASES,
                         ids=[f"{'causal' if c[0] else 'bidir'}-w{c[1]}-cap{c[2]}-P{c[3]}-s{c[4]}" for c in CASES])
def test_partitioned_window_and_softcap_equal_the_oracle(causal, window, softcap, P, seg):
    q, k, v = qkv()
    valid = torch.ones(2, 37, dtype=torch.bool)
    valid[1, :4] = False  # padding, left out of keys, means and counts
    got = partitioned_attention(q, k, v, num_partitions=P, segment_size=seg, causal=causal, window=window,
                                softcap=softcap, valid=valid)
    want = oracle(q, k, v, causal=causal, window=window, softcap=softcap, num_partitions=P, segment_size=seg,
                  valid=valid)
    rows = valid[:, None, :, None].expand_as(got)
    assert (got - want)[rows].abs().max().item() <= 1e-12


@pytest.mark.parametrize("causal", [True, False])
def test_segment_size_1_is_exact_attention_with_the_window(causal):
    q, k, v = qkv(T=29)
    want = oracle(q, k, v, causal=causal, window=6, softcap=None)  # one partition: plain windowed attention
    for P in (1, 2, 5):
        got = partitioned_attention(q, k, v, num_partitions=P, segment_size=1, causal=causal, window=6)
        assert (got - want).abs().max().item() <= 1e-12


def test_a_row_partly_inside_the_window_is_dropped_and_the_cap_comes_before_the_count():
    """One query at position 10, one summary row over [4, 8) standing for 4 tokens."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 1, 1, 16, generator=g, dtype=F64) for _ in range(3))
    ks, vs = torch.randn(1, 1, 1, 16, generator=g, dtype=F64), torch.randn(1, 1, 1, 16, generator=g, dtype=F64)
    common = dict(q_pos=torch.tensor([10]), k_pos=torch.tensor([10]), sum_spans=torch.tensor([[4, 8]]), causal=True)
    counts = torch.tensor([4.0], dtype=F64)
    inside = windowed_prism_attention(q, k, v, ks, vs, counts, window=7, **common)  # 10 - 4 < 7
    partly = windowed_prism_attention(q, k, v, ks, vs, counts, window=6, **common)  # position 4 is outside
    torch.testing.assert_close(partly, v, rtol=0, atol=1e-14)  # only the query's own key is left
    s_row = 3.0 * math.tanh((q * ks).sum().item() / 4 / 3.0) + math.log(4)
    s_own = 3.0 * math.tanh((q * k).sum().item() / 4 / 3.0)
    w = torch.softmax(torch.tensor([s_own, s_row], dtype=F64), 0)
    capped = windowed_prism_attention(q, k, v, ks, vs, counts, window=7, softcap=3.0, **common)
    torch.testing.assert_close(capped, w[0] * v + w[1] * vs, rtol=0, atol=1e-14)
    assert not torch.allclose(inside, capped)


def test_bad_window_softcap_and_triton_are_refused_by_name():
    q, k, v = qkv(T=8)
    pos = torch.arange(8)
    with pytest.raises(ValueError, match="window must be None or an int >= 1"):
        windowed_prism_attention(q, k, v, q_pos=pos, k_pos=pos, window=0)
    with pytest.raises(ValueError, match="softcap must be"):
        windowed_prism_attention(q, k, v, q_pos=pos, k_pos=pos, softcap=-1.0)
    with pytest.raises(ValueError, match="backend='triton' has no sliding window"):
        windowed_prism_attention(q, k, v, q_pos=pos, k_pos=pos, window=3, backend="triton")
    with pytest.raises(ValueError, match="cluster_iters=2 with window=3"):
        partitioned_attention(q, k, v, num_partitions=2, segment_size=2, window=3, cluster_iters=2)


def test_row_spans_follow_the_chunk_layout():
    bounds = partition_bounds(20, 2)
    spans = row_spans(bounds, 0, 4, sink_tokens=2, halo=1, causal=False)
    assert spans.tolist() == [[0, 1], [1, 2], [9, 10], [2, 6], [6, 9]]


def test_a_chunk_no_window_reaches_is_not_sent():
    """At 4 partitions of 64 tokens (16 each) and a causal window of 16, rank p reads chunk p - 1
    only: chunk c reaches no query of rank c + 2 and beyond."""
    bounds = partition_bounds(64, 4)
    assert visible_chunks(3, 4, True, bounds=bounds, window=16) == [2]
    assert visible_chunks(3, 4, True, bounds=bounds, window=18) == [1, 2]  # 48 - 31 = 17 < 18
    assert visible_chunks(1, 4, False, bounds=bounds, window=16) == [0, 2]
    cfg = PrismConfig(num_partitions=4, segment_size=4)
    shape = cost.ModelShape(hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, ffn_size=128)
    full = cost.bytes_per_layer(shape, 64, cfg)
    # Non-causal: every chunk has a neighbour within reach on both sides (the middle ones) or one
    # side (the ends), so each sends the rows a neighbour holds whole: 3 of 4 at the ends.
    assert cost.bytes_per_layer(shape, 64, cfg, window=16) == [full[0] * 3 // 4, full[1], full[2], full[3] * 3 // 4]
    causal = cost.bytes_per_layer(shape, 64, cfg, causal=True)
    assert causal[-1] == 0 and all(causal[:-1])
    # Causal: chunk c is read by rank c + 1 only, whose first query (c's end) holds whole every
    # segment but the first ([c0, c0 + 4) reaches back 16): 3 of 4 rows are sent. The cost model
    # and the wire layout agree, and the receiver computes less.
    windowed = cost.bytes_per_layer(shape, 64, cfg, causal=True, window=16)
    lays = payload_layouts(cfg, bounds, causal=True, batch=1, heads=2, channels=32, dtype=torch.float32, window=16)
    assert windowed == [lay.nbytes for lay in lays] == [c * 3 // 4 for c in causal]
    assert [lay.S for lay in lays] == [3, 3, 3, 0]
    flops = cost.flops_per_layer(shape, 64, cfg, causal=True, window=16)
    assert flops[3] < cost.flops_per_layer(shape, 64, cfg, causal=True)[3]
    # A window of 1 (each token sees itself only): no chunk is read by anyone, nothing is sent.
    assert cost.bytes_per_layer(shape, 64, cfg, window=1) == [0, 0, 0, 0]
