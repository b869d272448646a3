"""A rank's payload as bytes (distributed/payload.py) and the --auto choice, without MPI."""

import json

import pytest
import torch

from prism_ops import cost
from prism_ops.distributed.attention import segment_counts
from prism_ops.distributed.payload import PayloadLayout, decode, encode, pack_codes, unpack_codes
from prism_ops.ops.quantize_rows import quantize_codes, quantize_rows
from prism_ops.ops.segment_means import segment_means
from prism_ops.profile import choose
from prism_ops.distributed.runtime import RequestError


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


@pytest.mark.parametrize("bits,clusters", [(0, False), (4, False), (3, True)])
def test_layout_bytes_equal_the_cost_model(bits, clusters):
    shape = cost.ModelShape(hidden_size=16, num_heads=4, num_kv_heads=2, head_dim=4, ffn_size=32)
    # 23 tokens on 2 ranks (12, 11), segment size 5: 3 rows each; K/V rows of 2*2*4 values.
    lay = [PayloadLayout(1, 2, 8, 0, 3, torch.float32, bits, clusters)] * 2
    assert [x.nbytes for x in lay] == cost.bytes_per_layer(shape, 23, 2, 5, summary_bits=bits,
                                                            cluster_iters=3 if clusters else 0)


def test_segment_counts_match_segment_means():
    keep = torch.rand(3, 11) > 0.3
    _, counts = segment_means(torch.randn(3, 1, 11, 2), 4, valid=keep)
    assert torch.equal(segment_counts(keep, 4), counts)


def test_auto_picks_the_faster_mode(tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"partitions": 2, "rows": [
        {"tokens": 128, "local_s": 0.1, "distributed_s": 0.2},
        {"tokens": 1024, "local_s": 1.0, "distributed_s": 0.6}]}))
    assert choose(str(prof), 64, 2) == "local"
    assert choose(str(prof), 2048, 2) == "distributed"
    # Linear in between: the two cross at 307 tokens.
    assert choose(str(prof), 250, 2) == "local"
    assert choose(str(prof), 400, 2) == "distributed"
    with pytest.raises(RequestError, match="measured on 2 ranks, this job has 4"):
        choose(str(prof), 500, 4)
    with pytest.raises(RequestError, match="not a profile"):
        choose(str(tmp_path / "missing.json"), 500, 2)
