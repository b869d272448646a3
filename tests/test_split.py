"""balanced_split (`prism_ops/split.py`) on plain numbers: partition bounds from measured rates.

SmolLM2's shape (30 layers, d 576, 9/3 heads, gated MLP 1536), N = 2048, the `edge` setting with
K/V rows (what a rotary model exchanges). Rates are round numbers near one CPU core's; a free
link is 1e15 bytes/s. Each case says what the split must do and checks it against the equal
split's prediction, not against figures copied from a run.
"""

import pytest
import torch

from prism_ops import PrismConfig
from prism_ops.cost import ModelShape
from prism_ops.ops.partitioned_attention import partition_bounds
from prism_ops.wire import payload_layouts
from prism_ops.split import Device, Link, balanced_split, one_device_seconds, predict, uniform_links

SMOLLM2 = ModelShape(hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64, ffn_size=1536, mlp_matrices=3,
                     num_layers=30)
EDGE = PrismConfig.from_preset(2, "edge", exchange="kv")
CORE = Device(linear_flops_s=4e10, attention_flops_s=2e10)
FREE = uniform_links(2, 1e15)
N = 2048


def sizes(bounds):
    return [e - s for s, e in bounds]


def test_equal_devices_encoder_free_link_split_equally_and_near_2x():
    plan = balanced_split(N, [CORE, CORE], FREE, SMOLLM2, EDGE, causal=False)
    assert abs(sizes(plan.bounds)[0] - N // 2) <= 2
    assert plan.distribute and 1.9 < plan.one_device_s / plan.seconds <= 2.0 + 1e-9


def test_causal_gives_the_earlier_rank_more_tokens_and_beats_the_equal_split():
    plan = balanced_split(N, [CORE, CORE], FREE, SMOLLM2, EDGE, causal=True)
    equal = max(predict(partition_bounds(N, 2), [CORE, CORE], FREE, SMOLLM2, EDGE, causal=True))
    assert sizes(plan.bounds)[0] > N // 2 + 50  # the later rank attends to every earlier key
    assert plan.seconds < equal
    assert abs(plan.per_rank[0] - plan.per_rank[1]) < 0.02 * plan.seconds  # balanced


def test_a_device_twice_as_fast_gets_about_two_thirds():
    fast = Device(2 * CORE.linear_flops_s, 2 * CORE.attention_flops_s)
    plan = balanced_split(N, [fast, CORE], FREE, SMOLLM2, EDGE, causal=False)
    assert abs(sizes(plan.bounds)[0] - 2 * N / 3) < 0.03 * N
    assert plan.fastest == 0 and plan.order == [0, 1]  # either order: an encoder's chunks cost alike
    # Its prediction beats the equal split by the slow rank's lost half.
    equal = max(predict(partition_bounds(N, 2), [fast, CORE], FREE, SMOLLM2, EDGE, causal=False))
    assert plan.seconds < 0.8 * equal


def test_a_slow_link_gives_the_sending_rank_fewer_tokens():
    """Causal: rank 0 sends what it holds, so on a slow link it holds less than on a free one."""
    free = balanced_split(N, [CORE, CORE], FREE, SMOLLM2, EDGE, causal=True)
    # A link budget B = 3 MB: the bytes the link moves while one device computes the whole request
    # (edge sends about 6 MB per forward at an equal split: the link binds).
    slow = uniform_links(2, bytes_s=3e6 / free.one_device_s, latency_s=1e-3)
    plan = balanced_split(N, [CORE, CORE], slow, SMOLLM2, EDGE, causal=True)
    assert sizes(plan.bounds)[0] < sizes(free.bounds)[0] - 100
    assert plan.seconds <= max(predict(free.bounds, [CORE, CORE], slow, SMOLLM2, EDGE, causal=True))


def test_a_link_too_slow_keeps_the_request_on_the_fastest_device():
    slow_device = Device(CORE.linear_flops_s / 4, CORE.attention_flops_s / 4)
    crawl = uniform_links(2, bytes_s=1e3, latency_s=0.01)
    plan = balanced_split(N, [slow_device, CORE], crawl, SMOLLM2, EDGE, causal=True)
    assert not plan.distribute and plan.fastest == 1 and plan.seconds > plan.one_device_s


@pytest.mark.parametrize("kw,message", [
    (dict(N=1), r"N \(the request's tokens\) must be an int >= the 2 devices"),
    (dict(devices=[CORE, Device(0, 1e10)]), r"devices\[1\].linear_flops_s must be a finite rate > 0"),
    (dict(devices=[CORE, Device(1e10, float("nan"))]), r"devices\[1\].attention_flops_s must be a finite rate"),
    (dict(links=[[None, Link(1e6)]]), r"links must be a \[2\]\[2\] table"),
    (dict(links=[[None, Link(0)], [Link(1e6), None]]), r"links\[0\]\[1\] must be a Link with bytes_s > 0"),
    (dict(config=PrismConfig(3, 1)), r"config.num_partitions=3 must equal the 2 devices"),
])
def test_bad_input_is_refused_naming_it(kw, message):
    args = dict(N=N, devices=[CORE, CORE], links=FREE, shape=SMOLLM2, config=EDGE)
    args.update(kw)
    with pytest.raises(ValueError, match=message):
        balanced_split(args["N"], args["devices"], args["links"], args["shape"], args["config"], causal=True)


def test_a_decoder_puts_the_slow_device_first_and_the_fast_one_last_to_decode():
    """The last chunk decodes: with the slow device at rank 1 the split moves it to the first
    chunk, and balances the prefill as well as keeping it in rank order would."""
    slow = Device(CORE.linear_flops_s / 2, CORE.attention_flops_s / 2)
    plan = balanced_split(N, [CORE, slow], FREE, SMOLLM2, EDGE, causal=True)
    assert plan.order == [1, 0] and plan.rank_bounds() == [plan.bounds[1], plan.bounds[0]]
    kept = balanced_split(N, [CORE, slow], FREE, SMOLLM2, EDGE, causal=True, orders=[[0, 1]])
    assert kept.order == [0, 1] and plan.seconds < 1.01 * kept.seconds
    assert 1.4 < plan.one_device_s / plan.seconds <= 1.5 + 1e-9  # ideal: 1 + 1/2
    with pytest.raises(ValueError, match=r"orders: each must be a permutation of the 2 ranks, got \[0, 0\]"):
        balanced_split(N, [CORE, slow], FREE, SMOLLM2, EDGE, causal=True, orders=[[0, 0]])


def test_a_slow_uplink_queues_the_payloads_of_later_layers():
    """The pipeline: rank 0 runs ahead, its payloads queue on the link; the reader waits for the
    last layer's payload at the latest when the link carries the whole forward's bytes."""
    bounds = partition_bounds(N, 2)
    per_layer = predict(bounds, [CORE, CORE], FREE, SMOLLM2, EDGE, causal=True)
    nbytes = payload_layouts(EDGE, bounds, causal=True, batch=1, heads=3, channels=128, dtype=torch.float32)[0].nbytes
    rate = 30 * nbytes / (2 * per_layer[1])  # the link needs twice the reader's compute for all layers
    slow = predict(bounds, [CORE, CORE], uniform_links(2, rate), SMOLLM2, EDGE, causal=True)
    assert slow[0] == pytest.approx(per_layer[0])  # the sender never waits
    remote_last = per_layer[1] / 30  # at most one layer's work after the last payload
    assert 30 * nbytes / rate < slow[1] <= 30 * nbytes / rate + remote_last + 1e-9


def test_a_slower_causal_block_and_the_logits_sent_back_are_counted():
    bounds = partition_bounds(N, 2)
    base = predict(bounds, [CORE, CORE], FREE, SMOLLM2, EDGE, causal=True)
    slow_causal = Device(CORE.linear_flops_s, CORE.attention_flops_s, causal_flops_s=CORE.attention_flops_s / 2)
    got = predict(bounds, [slow_causal, slow_causal], FREE, SMOLLM2, EDGE, causal=True)
    n = N // 2
    extra = 30 * 4 * 9 * 64 * (n * (n + 1) // 2) / CORE.attention_flops_s  # the causal block's FLOPs at half the rate
    assert got == pytest.approx([b + extra for b in base])
    # An encoder has no causal block: the rate is not used.
    assert predict(bounds, [slow_causal] * 2, FREE, SMOLLM2, EDGE, causal=False) == \
        predict(bounds, [CORE] * 2, FREE, SMOLLM2, EDGE, causal=False)
    link = uniform_links(2, 1e6, latency_s=0.01)
    plain = predict(bounds, [CORE, CORE], link, SMOLLM2, EDGE, causal=True)
    back = predict(bounds, [CORE, CORE], link, SMOLLM2, EDGE, causal=True, result_bytes=4 * 49152)
    assert back[0] == plain[0] and back[1] == pytest.approx(plain[1] + 0.01 + 4 * 49152 / 1e6)
    assert one_device_seconds(N, slow_causal, SMOLLM2, causal=True) > one_device_seconds(N, CORE, SMOLLM2, causal=True)


def test_dense_layers_are_timed_with_their_own_rows_and_bytes():
    """A dense layer (`PrismConfig.dense_layers`) sends and reads every token as a row: predict
    times it with that setting, the other layers with the config's own."""
    lean = PrismConfig.from_preset(2, "lean", exchange="kv")
    bounds = partition_bounds(N, 2)
    link = uniform_links(2, 2e7, latency_s=0.001)

    def times(config):
        return predict(bounds, [CORE, CORE], link, SMOLLM2, config, causal=True)

    every = lean.replace(dense_layers=tuple(range(30)))
    assert times(every) == times(lean.replace(segment_size=1, heavy_fraction=0.0))  # every layer dense
    assert times(lean.replace(dense_layers=())) == times(lean)
    some = times(lean.replace(dense_layers=(7, 18, 20)))
    assert times(lean)[1] < some[1] < times(every)[1]  # the reader waits on more bytes in 3 layers of 30
    with pytest.raises(ValueError, match="dense_layers='auto' is resolved by prism_ops.hf.configure"):
        times(lean.replace(dense_layers="auto"))
