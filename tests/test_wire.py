"""The wire format of one layer (`prism_ops/wire.py`): each chunk's payload layout, by hand, and the
bytes `strategy.payload.encode` writes, which are exactly the layout's `nbytes` (what the cost
model predicts and the runtime counts)."""

import pytest
import torch

from prism_ops import PrismConfig, partition_bounds
from prism_ops.ops.quantize_rows import quantize_codes
from prism_ops.strategy.payload import decode, encode
from prism_ops.wire import payload_layouts


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


@pytest.mark.parametrize("config,causal", [
    (PrismConfig(3, 4), False),
    (PrismConfig(3, 3, sink_tokens=2, halo=1, summary_bits=3), True),
    (PrismConfig(4, 1, summary_bits=4), False),
    (PrismConfig(2, 5, cluster_iters=2), False),
])
def test_every_layout_encodes_to_its_nbytes_and_decodes_to_its_shapes(config, causal):
    B, H, C = 2, 3, 8
    for lay in payload_layouts(config, partition_bounds(29, config.num_partitions), causal=causal, batch=B, heads=H,
                               channels=C, dtype=torch.float16):
        verbatim, means = torch.randn(B, H, lay.E, C), torch.randn(B, H, lay.S, C)
        quant = {}
        if lay.bits and lay.S:
            codes, lo, step = quantize_codes(means, lay.bits, torch.ones(B, 1, lay.S, 1, dtype=torch.bool))
            quant = dict(codes=codes, lo=lo, step=step)
        data = encode(lay, verbatim, means=means, counts=torch.ones(B, lay.S, dtype=torch.int32), **quant)
        assert data.numel() == lay.nbytes == sum(n for _, n in lay.parts())
        ex, rows, counts = decode(lay, data)
        assert ex.shape == (B, H, lay.E, C) and torch.equal(ex, verbatim.half())
        assert rows.shape == (B, H, lay.S, C)
        assert (counts is None) == (not lay.clusters)
