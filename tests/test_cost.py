"""The analytic traffic/compute model: the paper's two headline figures and hand-computed cases."""

import pytest
import torch

from prism_ops import PrismConfig, cost, wire
from prism_ops.cost import BERT_BASE, ModelShape

# d=8, H=2, Hkv=1, D=4, MLP 16 wide: K/V rows are 2*1*4 = 8 values, hidden rows 8 values.
SMALL = ModelShape(hidden_size=8, num_heads=2, num_kv_heads=1, head_dim=4, ffn_size=16)


def cfg(num_partitions, segment_size, **levers):
    return PrismConfig(num_partitions=num_partitions, segment_size=segment_size, **levers)


def test_paper_headline_figures():
    """BERT-base, 2 devices, N=256, CR=128, hidden-feature exchange: -99.2% traffic, -51.24% compute."""
    c = cfg(2, 128, exchange="hidden")
    assert round(100 * (1 - cost.traffic_ratio(BERT_BASE, 256, c)), 1) == 99.2
    assert round(100 * (1 - cost.compute_ratio(BERT_BASE, 256, c)), 2) == 51.24


def test_bytes_hand_computed():
    # N=10, P=2: 5 tokens each; segment_size=3: ceil(5/3) = 2 rows of 8 fp32 values = 64 bytes per rank.
    assert cost.bytes_per_layer(SMALL, 10, cfg(2, 3)) == [64, 64]
    assert cost.full_exchange_bytes_per_layer(SMALL, 10, 2) == [160, 160]
    assert cost.traffic_ratio(SMALL, 10, cfg(2, 3)) == pytest.approx(0.4)
    # 2 sinks: rank 0 sends them exact and ceil(3/3) = 1 mean: 3 rows.
    assert cost.bytes_per_layer(SMALL, 10, cfg(2, 3, sink_tokens=2)) == [96, 64]
    # halo 1: one exact row to each neighbour; causal: to the next rank only, and the last rank,
    # whose rows no rank reads, sends nothing.
    assert cost.bytes_per_layer(SMALL, 10, cfg(2, 3, halo=1)) == [96, 96]
    assert cost.bytes_per_layer(SMALL, 10, cfg(2, 3, halo=1), causal=True) == [96, 0]
    # 4-bit summaries: ceil(2 rows * 8 values * 4 bits / 8) = 8 bytes + 8 channels * (min, step) fp16 = 32.
    assert cost.bytes_per_layer(SMALL, 10, cfg(2, 3, summary_bits=4)) == [40, 40]
    # Key clusters carry a 2-byte count per summary row.
    assert cost.bytes_per_layer(SMALL, 10, cfg(2, 3, cluster_iters=3)) == [68, 68]
    # fp16 model: everything halves, full exchange too.
    assert cost.bytes_per_layer(SMALL, 10, cfg(2, 3), dtype=torch.float16) == [32, 32]
    assert cost.full_exchange_bytes_per_layer(SMALL, 10, 2, dtype=torch.float16) == [80, 80]
    # Uneven partitions (weights 4:1): 8 and 2 tokens, ceil(8/3) = 3 and 1 rows.
    assert cost.bytes_per_layer(SMALL, 10, cfg(2, 3, weights=(4, 1))) == [96, 32]


def test_kv_rows_cost_twice_hidden_rows_for_multi_head_attention():
    assert BERT_BASE.row_values("kv") == 2 * BERT_BASE.row_values("hidden")
    r_kv = cost.traffic_ratio(BERT_BASE, 256, cfg(2, 128, exchange="kv"))
    assert r_kv == pytest.approx(2 / 128)


def test_flops_hand_computed():
    # Per token: q 8*8 + k,v 2*8*4 + o 8*8 + MLP 2*8*16 = 448 MACs.
    assert SMALL.linear_macs_per_token() == 448
    # One device, N=10: 10*448 + 2*H*D*N^2 = 4480 + 16*100; FLOPs = 2 * MACs.
    assert cost.one_device_flops_per_layer(SMALL, 10) == 2 * (4480 + 1600)
    assert cost.one_device_flops_per_layer(SMALL, 10, causal=True) == 2 * (4480 + 16 * 55)
    # P=2, segment_size=3: each rank 5 tokens, 2 received rows: 5*448 + 16*(25 + 5*2).
    assert cost.flops_per_layer(SMALL, 10, cfg(2, 3)) == [2 * (2240 + 16 * 35)] * 2
    # Causal: rank 0 sees 15 local scores and nothing else; rank 1 also 2 rows from rank 0.
    assert cost.flops_per_layer(SMALL, 10, cfg(2, 3), causal=True) == [2 * (2240 + 16 * 15), 2 * (2240 + 16 * 25)]
    # Hidden exchange: the receiver projects each received row to K and V: 2*d*Hkv*D = 64 MACs.
    assert cost.flops_per_layer(SMALL, 10, cfg(2, 3, exchange="hidden")) == [2 * (2240 + 16 * 35 + 2 * 64)] * 2


def test_one_partition_sends_nothing_more_than_one_device():
    assert cost.compute_ratio(SMALL, 10, cfg(1, 3)) == 1.0


def test_from_config():
    transformers = pytest.importorskip("transformers")
    bert = ModelShape.from_config(transformers.BertConfig())
    assert bert == BERT_BASE
    llama = ModelShape.from_config(transformers.LlamaConfig(hidden_size=576, num_attention_heads=9,
                                                            num_key_value_heads=3, intermediate_size=1536,
                                                            num_hidden_layers=30))
    assert (llama.num_kv_heads, llama.head_dim, llama.mlp_matrices, llama.row_values("kv")) == (3, 64, 3, 384)
    gpt2 = ModelShape.from_config(transformers.GPT2Config(n_layer=2))
    assert (gpt2.hidden_size, gpt2.ffn_size, gpt2.num_layers) == (768, 3072, 2)


@pytest.mark.parametrize("kw,message", [
    (dict(exchange="auto"), "exchange must be one of \\('kv', 'hidden'\\) \\(resolve 'auto'"),
    (dict(num_partitions=11), "num_partitions must be in \\[1, 10\\]"),
])
def test_bad_settings(kw, message):
    args = dict(num_partitions=2, segment_size=3) | kw
    with pytest.raises(ValueError, match=message):
        cost.bytes_per_layer(SMALL, 10, cfg(**args))
    with pytest.raises(ValueError, match=message):
        cost.flops_per_layer(SMALL, 10, cfg(**args))


def test_causal_chunks_are_sent_only_where_read():
    # Causal: chunk c is read by the later ranks only, so the last rank's payload is empty; at 2
    # ranks a decoder sends half of what an encoder sends.
    assert wire.readers(0, 3, causal=True) == [1, 2] and wire.readers(2, 3, causal=True) == []
    assert wire.readers(2, 3, causal=False) == [0, 1]
    assert cost.bytes_per_layer(SMALL, 12, cfg(3, 2), causal=True) == [64, 64, 0]
    assert cost.bytes_per_layer(SMALL, 12, cfg(3, 2)) == [64, 64, 64]
    enc, dec = (sum(cost.bytes_per_layer(SMALL, 10, cfg(2, 1), causal=c)) for c in (False, True))
    assert dec * 2 == enc

