"""heavy_fraction (`prism_ops.ops.heavy_rows`, the `lean` preset): a chunk's most-attended tokens as
rows of their own, the rest as segment means. Against a float64 oracle that picks the tokens and
builds every row by hand; the limits (every token picked = exact rows; a planted key is picked;
padding never); the wire (bitmap round trip, bytes equal to the cost model's, a quarter of edge's
at the issue's cells); bad settings; and 2 ranks under real mpiexec against the simulation."""

import json
import math

import pytest
import torch

from oracle import oracle_heavy_picks, oracle_partitioned_attention
from prism_ops import PrismConfig, cost, partition_bounds
from prism_ops.ops.chunk_summary import chunk_layout
from prism_ops.ops.heavy_rows import (check_heavy_fraction, heavy_count, heavy_scores, heavy_summary, pick_heavy,
                                      picked_counts)
from prism_ops.ops.partitioned_attention import partitioned_attention
from prism_ops.strategy.payload import decode_picks, encode
from prism_ops.wire import payload_layouts

SMOLLM2 = cost.ModelShape(576, 9, 3, 64, 1536, 3, 30)


def qkv(B, H, Hkv, T, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, T, D, generator=g, dtype=torch.float64) for h in (H, Hkv, Hkv)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T,P,segment_size,fraction,sinks,halo", [
    (40, 2, 4, 0.25, 0, 0),
    (41, 3, 3, 0.3, 2, 1),
    (300, 2, 16, 0.1, 4, 0),  # chunks of 150: an encoder scores with its first and last 64 queries
])
def test_equals_the_float64_oracle(causal, T, P, segment_size, fraction, sinks, halo):
    q, k, v = qkv(1, 4, 2, T, 8)
    bounds = partition_bounds(T, P)
    heavy = set()
    for c, (c0, c1) in enumerate(bounds):
        a, b = chunk_layout(bounds, c, sink_tokens=sinks, halo=halo, causal=causal)
        heavy |= oracle_heavy_picks(q, k, c0, c1, a, b, fraction, causal)
    want = oracle_partitioned_attention(q, k, v, bounds, segment_size, causal=causal, sink_tokens=sinks, halo=halo,
                                        heavy=heavy)
    got = partitioned_attention(q, k, v, num_partitions=P, segment_size=segment_size, causal=causal,
                                sink_tokens=sinks, halo=halo, heavy_fraction=fraction)
    assert torch.allclose(got, want, atol=1e-10, rtol=0)
    plain = partitioned_attention(q, k, v, num_partitions=P, segment_size=segment_size, causal=causal,
                                  sink_tokens=sinks, halo=halo)
    assert (got - plain).abs().max() > 1e-3  # the picks did change the rows


def test_padding_is_left_out_like_the_oracle():
    q, k, v = qkv(1, 4, 2, 37, 8, seed=3)
    valid = torch.ones(1, 37, dtype=torch.bool)
    valid[0, 5:9] = False
    valid[0, 30:] = False
    bounds = partition_bounds(37, 2)
    heavy = set()
    for c, (c0, c1) in enumerate(bounds):
        heavy |= oracle_heavy_picks(q, k, c0, c1, c0, c1, 0.25, True, valid)
    want = oracle_partitioned_attention(q, k, v, bounds, 4, causal=True, valid=valid, heavy=heavy)
    got = partitioned_attention(q, k, v, num_partitions=2, segment_size=4, causal=True, valid=valid,
                                heavy_fraction=0.25)
    keep = valid[0]
    assert torch.allclose(got[..., keep, :], want[..., keep, :], atol=1e-10, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_every_token_picked_gives_exact_rows(causal):
    q, k, v = qkv(2, 4, 2, 33, 8)
    # ceil(0.99 * m) = m for every chunk of fewer than 100 tokens: every token goes as its own row.
    got = partitioned_attention(q, k, v, num_partitions=3, segment_size=5, causal=causal, heavy_fraction=0.99)
    exact = partitioned_attention(q, k, v, num_partitions=3, segment_size=1, causal=causal)
    assert torch.allclose(got, exact, atol=1e-12, rtol=0)


def test_a_planted_key_is_picked_and_padding_never():
    q, k, _ = qkv(1, 4, 2, 64, 8)
    q[..., 0] += 3
    k[0, :, 17, 0] = 6  # every query attends to token 17
    keep = torch.ones(1, 64, dtype=torch.bool)
    keep[0, 40:50] = False
    scores = heavy_scores(q, k, keep, causal=True)
    picked = pick_heavy(scores, 0, 64, 0.1)
    assert picked[0, 17] and not picked[0, 40:50].any() and int(picked.sum()) == heavy_count(64, 0.1) == 7
    # More picks than real tokens: every real token is picked (padding fills the rest, count 0).
    keep[0, 8:] = False
    rows, counts = heavy_summary(torch.randn(1, 2, 64, 3), keep, pick_heavy(heavy_scores(q, k, keep, True), 0, 64, 0.5),
                                 8)
    assert int(counts.sum()) == 8 and int(counts[0, :32].sum()) == 8


def test_receiver_counts_equal_the_senders():
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(3, 50, generator=g) > 0.2
    picked = pick_heavy(torch.rand(3, 50, generator=g).masked_fill(~keep, -math.inf), 0, 50, 0.3)
    _, counts = heavy_summary(torch.randn(3, 2, 50, 4, generator=g), keep, picked, 7)
    assert torch.equal(picked_counts(keep, picked, 7), counts)
    assert int(counts.sum()) == int(keep.sum())  # every real token counted once


def test_picks_travel_as_a_bitmap_and_bytes_equal_the_layout():
    config = PrismConfig(2, 8, summary_bits=4, sink_tokens=2, heavy_fraction=0.25)
    bounds = partition_bounds(45, 2)
    lays = payload_layouts(config, bounds, causal=False, batch=2, heads=3, channels=8, dtype=torch.float16)
    # Rank 0: 2 sinks, 21 summarised -> 6 picked + 3 segments; the bitmap: ceil(2 * 21 / 8) = 6 bytes;
    # codes 2 x 3 x 9 rows x 8 channels x 4 bits = 216 bytes; lo and step 2 x 3 x 8 fp16 each.
    assert (lays[0].E, lays[0].S, lays[0].picks) == (2, 9, 21)
    assert lays[0].parts() == [("verbatim", 192), ("picks", 6), ("codes", 216), ("lo", 96), ("step", 96)]
    picked = pick_heavy(torch.rand(2, 21), 0, 21, 0.25)
    lay = lays[0]
    codes = torch.randint(0, 16, (2, 3, 9, 8), dtype=torch.uint8)
    data = encode(lay, torch.randn(2, 3, 2, 8), codes=codes, lo=torch.zeros(2, 3, 1, 8, dtype=torch.float16),
                  step=torch.ones(2, 3, 1, 8, dtype=torch.float16), picks=picked)
    assert data.numel() == lay.nbytes and torch.equal(decode_picks(lay, data), picked)
    # The cost model counts the same bytes; the causal last chunk sends nothing.
    causal = payload_layouts(config, bounds, causal=True, batch=1, heads=1, channels=4, dtype=torch.float32)
    assert causal[1].nbytes == 0 and causal[0].picks == 21


@pytest.mark.parametrize("shape,N,P,exchange,causal", [
    (SMOLLM2, 2048, 2, "kv", True), (SMOLLM2, 8192, 4, "kv", True), (SMOLLM2, 8192, 8, "kv", True),
])
def test_lean_sends_at_most_a_quarter_of_edges_bytes(shape, N, P, exchange, causal):
    sent = {preset: sum(cost.bytes_per_layer(shape, N, PrismConfig.from_preset(P, preset, exchange=exchange),
                                             causal=causal, dtype=torch.float16)) for preset in ("lean", "edge")}
    assert sent["lean"] <= 0.25 * sent["edge"], sent


def test_smollm2_cell_hand_computed():
    # Rank 0 of 2, N = 2048, fp16: 4 sinks x 3 heads x 128 channels x 2 bytes = 3072; a bitmap of the
    # 1020 summarised tokens, 128 bytes; 204 picked + 8 segments of 128 = 212 rows of 4-bit codes,
    # 3 x 212 x 128 / 2 = 40704; a (min, step) fp16 pair per channel, 1536. Rank 1 sends nothing.
    got = cost.bytes_per_layer(SMOLLM2, 2048, PrismConfig.from_preset(2, "lean", exchange="kv"), causal=True,
                               dtype=torch.float16)
    assert got == [3072 + 128 + 40704 + 1536, 0]


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), float("inf"), True, "0.2", None])
def test_bad_fractions_name_the_lever(value):
    with pytest.raises(ValueError, match=r"heavy_fraction must be"):
        PrismConfig(2, 8, heavy_fraction=value)
    with pytest.raises(ValueError, match=r"heavy_fraction must be"):
        check_heavy_fraction(value)


def test_levers_it_does_not_combine_with_are_refused():
    with pytest.raises(ValueError, match=r"heavy_fraction=0.2 .* cluster_iters=2"):
        PrismConfig(2, 8, heavy_fraction=0.2, cluster_iters=2)
    q, k, v = qkv(1, 2, 2, 20, 4)
    with pytest.raises(ValueError, match=r"heavy_fraction=0.2 does not combine with window=8"):
        partitioned_attention(q, k, v, num_partitions=2, segment_size=4, heavy_fraction=0.2, window=8)


def test_mpiexec_2_ranks_equal_the_simulation():
    pytest.importorskip("mpi4py")
    from launch import MPIEXEC, assert_matches_simulation, check_run

    if MPIEXEC is None:
        pytest.skip("needs mpiexec (pip install mpich)")
    levers = {"heavy_fraction": 0.25, "summary_bits": 4, "sink_tokens": 2}
    r = check_run(2, model="gpt2", tokens=61, segment_size=8, levers=json.loads(json.dumps(levers)))
    assert_matches_simulation(r, 2)
    assert r["err_exact"] > 1e-4
