"""A rank's payload as bytes (prism_ops/wire.py, prism_ops/strategy/payload.py) and the --auto choice, without MPI."""

import json

import pytest
import torch

from prism_ops import PrismConfig, partition_bounds
from prism_ops.strategy.payload import decode, encode, pack_codes, unpack_codes
from prism_ops.input_files import read_profile
from prism_ops.link_profile import choose
from prism_ops.ops.quantize_rows import quantize_codes, quantize_rows
from prism_ops.wire import PayloadLayout, payload_layouts


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("n", [1, 7, 8, 13])
def test_pack_unpack_round_trip(bits, n):
    codes = torch.randint(0, 2**bits, (n,), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.numel() == -(-n * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, n), codes)


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


def test_payload_layouts_hand_computed():
    # 23 tokens on 3 ranks: (8, 8, 7); segment size 3, 2 sinks, halo 1, not causal.
    config = PrismConfig(num_partitions=3, segment_size=3, sink_tokens=2, halo=1, summary_bits=4)
    bounds = partition_bounds(23, 3)
    lays = payload_layouts(config, bounds, causal=False, batch=2, heads=2, channels=8, dtype=torch.float16)
    # Rank 0: 2 sinks + 1 halo exact, 5 summarised -> 2 rows. Rank 1: 2 halo, 6 -> 2. Rank 2: 1 halo, 6 -> 2.
    assert [(x.E, x.S) for x in lays] == [(3, 2), (2, 2), (1, 2)]
    # Rank 0: exact 2*2*3*8 fp16 = 192 bytes; codes ceil(2*2*2*8 * 4 / 8) = 32; lo and step 2*2*8 fp16 each.
    assert lays[0].parts() == [("verbatim", 192), ("codes", 32), ("lo", 64), ("step", 64)]
    causal = payload_layouts(config, bounds, causal=True, batch=1, heads=1, channels=4, dtype=torch.float32)
    # Causal: halo only to the next rank; the last chunk is read by no rank and sends nothing.
    assert [(x.E, x.S) for x in causal] == [(3, 2), (1, 3), (0, 0)] and causal[2].nbytes == 0
    clusters = payload_layouts(config.replace(cluster_iters=2, summary_bits=0), bounds, causal=False, batch=1,
                               heads=1, channels=4, dtype=torch.float32)
    assert clusters[1].parts() == [("verbatim", 32), ("means", 32), ("counts", 4)]


def test_auto_picks_the_faster_mode(tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"partitions": 2, "rows": [
        {"tokens": 128, "local_s": 0.1, "distributed_s": 0.2},
        {"tokens": 1024, "local_s": 1.0, "distributed_s": 0.6}]}))
    checked = read_profile(str(prof), "--auto", 2)
    assert choose(checked, 64) == "local"
    assert choose(checked, 2048) == "distributed"
    # Linear in between: the two cross at 307 tokens.
    assert choose(checked, 250) == "local"
    assert choose(checked, 400) == "distributed"
    with pytest.raises(ValueError, match="measured on 2 ranks, this job has 4"):
        read_profile(str(prof), "--auto", 4)
    with pytest.raises(ValueError, match="cannot be read"):
        read_profile(str(tmp_path / "missing.json"), "--auto", 2)
