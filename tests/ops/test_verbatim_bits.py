"""verbatim_bits (`prism_ops.ops.quantize_rows.round_verbatim`, the `lean` preset): a float32
model's verbatim rows (sinks, halo) travel as float16.

The oracle: the same attention where the verbatim rows' keys and values are float16-rounded by
hand for the readers only; the sender's own block keeps them exact. Bytes: the layout's verbatim
part at 2 bytes a value, equal to what `encode` writes. Bad values and a row beyond float16's
range are refused by name.
"""

import json

import pytest
import torch

from prism_ops import PrismConfig, cost
from prism_ops.cli.run import parse_args
from prism_ops.ops.partitioned_attention import partition_bounds, partitioned_attention
from prism_ops.ops.quantize_rows import check_verbatim_bits, round_verbatim, verbatim_wire_dtype
from prism_ops.strategy.payload import decode, encode
from prism_ops.wire import payload_layouts

SMOLLM2 = cost.ModelShape(576, 9, 3, 64, 1536, 3, 30)


def qkv(B, H, Hkv, T, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, T, D, generator=g, dtype=torch.float64).to(dtype) for h in (H, Hkv, Hkv)]


def _rounded_sinks(x, sinks):
    y = x.clone()
    y[:, :, :sinks] = x[:, :, :sinks].half().float()
    return y


@pytest.mark.parametrize("causal", [False, True])
def test_readers_see_the_sinks_rounded_to_float16_and_the_sender_keeps_them_exact(causal):
    q, k, v = qkv(2, 4, 2, 37, 8, dtype=torch.float64)
    k[:, :, :3] *= 40  # sinks of large norm: their rounding shows in the logits
    kw = dict(num_partitions=3, segment_size=4, causal=causal, sink_tokens=3)
    got = partitioned_attention(q.float(), k.float(), v.float(), verbatim_dtype=torch.float16, **kw).double()
    plain = partitioned_attention(q, k, v, **kw)
    rounded = partitioned_attention(q, _rounded_sinks(k.float(), 3).double(), _rounded_sinks(v.float(), 3).double(),
                                    **kw)
    (s0, e0), rest = partition_bounds(37, 3)[0], partition_bounds(37, 3)[1:]
    # Chunk 0 holds the sinks: its own block is exact. Later chunks read the float16 rows (for a
    # non-causal model chunk 0 also reads the others', which have no sinks: unchanged).
    assert torch.allclose(got[:, :, s0:e0], plain[:, :, s0:e0], atol=1e-5)
    for s, e in rest:
        assert torch.allclose(got[:, :, s:e], rounded[:, :, s:e], atol=1e-5)
        assert not torch.allclose(got[:, :, s:e], plain[:, :, s:e], atol=1e-5)  # the rounding is visible


def test_a_configured_model_rounds_its_sinks_for_the_readers_only():
    """The simulation (hf.configure without comm) rounds the verbatim rows as the ranks' wire does:
    a decoder's first chunk, which reads no other, is unchanged; the chunks after it are not."""
    pytest.importorskip("transformers")
    from prism_ops import hf
    from prism_ops.in_process import run_simulated
    from prism_ops.request_types import Request
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=100)).eval()
    req = Request(ids=torch.randint(0, 100, (1, 40), generator=torch.Generator().manual_seed(3)), output="hidden")
    out = {}
    for bits in (0, 16):
        hf.configure(model, PrismConfig(3, 4, sink_tokens=3, verbatim_bits=bits))
        out[bits] = run_simulated(model, req, 3).output
    end0 = partition_bounds(40, 3)[0][1]
    assert torch.equal(out[16][:, :end0], out[0][:, :end0])
    assert not torch.equal(out[16][:, end0:], out[0][:, end0:])
    assert torch.allclose(out[16], out[0], atol=1e-2)  # float16's rounding: small


def test_a_float16_model_is_unchanged_and_bfloat16_keeps_its_own_dtype():
    assert verbatim_wire_dtype(16, torch.float32) == torch.float16
    assert verbatim_wire_dtype(16, torch.float16) == torch.float16
    assert verbatim_wire_dtype(16, torch.bfloat16) == torch.bfloat16  # float16 would shrink its range
    assert verbatim_wire_dtype(0, torch.float32) == torch.float32
    q, k, v = qkv(1, 2, 2, 20, 8, dtype=torch.float16)
    kw = dict(num_partitions=2, segment_size=4, sink_tokens=2)
    assert torch.equal(partitioned_attention(q, k, v, verbatim_dtype=torch.float16, **kw),
                       partitioned_attention(q, k, v, **kw))


def test_bytes_half_the_verbatim_part_and_encode_writes_the_layout():
    config = PrismConfig.from_preset(2, "lean", exchange="kv")
    assert config.verbatim_bits == 16
    bounds = partition_bounds(2048, 2)
    wide = payload_layouts(config.replace(verbatim_bits=0), bounds, causal=True, batch=1, heads=3, channels=128,
                           dtype=torch.float32)
    lays = payload_layouts(config, bounds, causal=True, batch=1, heads=3, channels=128, dtype=torch.float32)
    # Rank 0's 4 sinks x 3 heads x 128 channels: 4 bytes a value in float32, 2 in float16.
    assert dict(wide[0].parts())["verbatim"] == 6144 and dict(lays[0].parts())["verbatim"] == 3072
    assert lays[0].nbytes == wide[0].nbytes - 3072
    fp32 = cost.bytes_per_layer(SMOLLM2, 2048, config, causal=True, dtype=torch.float32)
    fp16 = cost.bytes_per_layer(SMOLLM2, 2048, config, causal=True, dtype=torch.float16)
    assert fp32 == fp16 == [lays[0].nbytes, 0]  # the verbatim rows are float16 either way
    lay = lays[0]
    exact = torch.randn(1, 3, lay.E, 128)
    codes = torch.randint(0, 16, (1, 3, lay.S, 128), dtype=torch.uint8)
    data = encode(lay, exact, codes=codes, lo=torch.zeros(1, 3, 1, 128, dtype=torch.float16),
                  step=torch.ones(1, 3, 1, 128, dtype=torch.float16), picks=torch.zeros(1, lay.picks, dtype=torch.bool))
    assert data.numel() == lay.nbytes
    got, _, _ = decode(lay, data)
    assert got.dtype == torch.float32 and torch.equal(got, exact.half().float())


@pytest.mark.parametrize("value", [8, 32, 1, -16, True, 16.0, "16", None])
def test_bad_values_name_the_lever(value):
    with pytest.raises(ValueError, match=r"verbatim_bits must be 0 .* or 16"):
        PrismConfig(2, 8, verbatim_bits=value)
    with pytest.raises(ValueError, match=r"verbatim_bits must be"):
        check_verbatim_bits(value)
    with pytest.raises(SystemExit):
        parse_args(["--verbatim-bits", "8"])


def test_a_row_beyond_float16s_range_is_refused_not_sent_as_inf():
    x = torch.tensor([[1.0, 7.0e4]])
    with pytest.raises(ValueError, match=r"verbatim_bits=16: a sink or halo row holds 7e\+04.*verbatim_bits=0"):
        round_verbatim(x, torch.float16)
    assert torch.equal(round_verbatim(torch.tensor([6.0e4]), torch.float16), torch.tensor([6.0e4]).half())
    q, k, v = qkv(1, 2, 2, 16, 4)
    k[:, :, 0] = 1e5
    with pytest.raises(ValueError, match=r"verbatim_bits=16"):
        partitioned_attention(q, k, v, num_partitions=2, segment_size=4, sink_tokens=1, verbatim_dtype=torch.float16)


# The ranks' payloads have the layout's bytes (float16 verbatim rows; encode refuses any other
# size) and their answers equal the simulation's. The rounding's own effect on these small models
# is below float32 noise: test_readers_see_the_sinks_rounded... checks the simulation's semantics.
@pytest.mark.parametrize("model,ranks,levers", [
    ("gpt2", 3, {"sink_tokens": 2, "halo": 2, "verbatim_bits": 16}),  # K/V rows
    ("gpt2", 2, {"sink_tokens": 3, "exchange": "hidden", "verbatim_bits": 16}),  # hidden rows
    ("gpt2", 2, {"sink_tokens": 2, "summary_bits": 4, "heavy_fraction": 0.25, "verbatim_bits": 16}),  # lean's levers
])
def test_mpiexec_equals_the_simulation(model, ranks, levers):
    pytest.importorskip("mpi4py")
    from launch import MPIEXEC, assert_matches_simulation, check_run

    if MPIEXEC is None:
        pytest.skip("needs mpiexec (pip install mpich)")
    r = check_run(ranks, model=model, tokens=45, segment_size=4, levers=json.loads(json.dumps(levers)))
    assert_matches_simulation(r, 2)


def test_hidden_exchange_with_a_chunk_of_sinks_only():
    """A chunk whose tokens are all sinks has no summary rows: its empty rounding error still has
    the heads' shape (a 4-token text at 2 ranks with 4 sinks once crashed here)."""
    q, k, v = qkv(1, 4, 2, 4, 8)
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(1, 4, 16, generator=g)
    kv_weight = [torch.randn(16, 16, generator=g) for _ in range(2)]
    got = partitioned_attention(q, k, v, num_partitions=2, segment_size=128, sink_tokens=4, summary_bits=4,
                                hidden=hidden, kv_weight=kv_weight, verbatim_dtype=torch.float16)
    want = partitioned_attention(q, k, v, num_partitions=2, segment_size=1)  # every key a row of its own
    # chunk 0 (two sinks) sees chunk 1's two tokens as one 4-bit mean; chunk 1 sees the sinks rounded to fp16
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert torch.allclose(got[:, :, 2:], want[:, :, 2:], atol=1e-2)
