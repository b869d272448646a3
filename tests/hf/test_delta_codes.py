"""The delta_codebook lever on a Hugging Face encoder (simulated partitions): every token's hidden
row sent as codes of its change from a prediction made from the row its readers decoded at the
layer before; layer 0's rows as token ids.

Each layer's output against a float64 oracle given the same rows (the codes are discrete, so the
oracle takes the decoded rows the forward made, and the chain that made them is checked apart,
op by op); the bytes against the layouts; every refusal before any forward, by name.
"""

import copy
import math
import sys

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

from prism_ops import PrismConfig, cost, hf, partition_bounds
from prism_ops.calibrate import calibrate_delta
from prism_ops.cost import ModelShape
from prism_ops.eval.tasks import byte_tokenizer
from prism_ops.hf.model import model_fingerprint
from prism_ops.ops.delta_rows import delta_codes, save_delta_codes
from prism_ops.strategy import simulated

from launch import MPI_SCRIPTS  # noqa: E402


@pytest.fixture(scope="module")
def encoder_and_codes(tmp_path_factory):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=512)
    model = BertModel(cfg, add_pooling_layer=False).eval()
    path = tmp_path_factory.mktemp("delta") / "tiny.delta"
    info = calibrate_delta(model, byte_tokenizer, path, group=8, centroids=64, iters=4)
    assert info["rows"] == 8192 and info["layers"] == 3
    return model, path


def _layer64(layer, hq, hkv, key_ok):
    """One BERT layer in float64: queries of rows hq `[n, d]` over keys and values of rows hkv `[m, d]`."""
    sa = layer.attention.self
    H, D = sa.num_attention_heads, sa.attention_head_size
    q = sa.query(hq).view(-1, H, D).transpose(0, 1)
    k = sa.key(hkv).view(-1, H, D).transpose(0, 1)
    v = sa.value(hkv).view(-1, H, D).transpose(0, 1)
    logits = (q @ k.transpose(1, 2) / math.sqrt(D)).masked_fill(~key_ok, float("-inf"))
    ctx = (torch.softmax(logits, -1) @ v).transpose(0, 1).reshape(hq.shape[0], H * D)
    att = layer.attention.output(ctx, hq)
    return layer.output(layer.intermediate(att), att)


def test_each_layer_matches_a_float64_oracle_on_the_rows_the_chain_decoded(encoder_and_codes, monkeypatch):
    model, path = encoder_and_codes
    P, N = 3, 61  # partitions of 21, 20, 20 tokens
    ids = torch.randint(0, 256, (2, N), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, N, dtype=torch.long)
    mask[1, -9:] = 0  # the second text is padded
    seen = []
    decode = simulated.decoded_rows

    def record(layer, hidden):
        sent = decode(layer, hidden)
        seen.append((layer, hidden.clone(), sent.clone()))
        return sent

    monkeypatch.setattr(simulated, "decoded_rows", record)
    hf.configure(model, PrismConfig(P, 1, exchange="auto", delta_codebook=path))
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    finally:
        model.set_attn_implementation("sdpa")
    assert [layer.index for layer, _, _ in seen] == [0, 1, 2]
    # The chain, op by op: layer 0's rows exact (token ids), each later layer coded from the last.
    assert torch.equal(seen[0][2], seen[0][1])
    for (layer, hidden, sent), (_, _, before) in zip(seen[1:], seen):
        assert torch.equal(sent, delta_codes(hidden, before, *layer.delta)[1])
        assert not torch.equal(sent, hidden)  # the codes are lossy: the check above is not vacuous
    # Each layer against the oracle: own rows exact, the other chunks' rows as decoded.
    m64 = copy.deepcopy(model).double()
    bounds = partition_bounds(N, P)
    nexts = [h for _, h, _ in seen[1:]] + [out]
    for (layer, hidden, sent), got in zip(seen, nexts):
        for b in range(2):
            for c0, c1 in bounds:
                kv = sent[b].double().clone()
                kv[c0:c1] = hidden[b, c0:c1].double()
                want = _layer64(m64.encoder.layer[layer.index], hidden[b, c0:c1].double(), kv, mask[b].bool())
                real = mask[b, c0:c1].bool()
                assert torch.allclose(got[b, c0:c1][real].double(), want[real], atol=1e-4, rtol=1e-4)


def test_bytes_are_token_ids_in_layer_0_and_codes_after(encoder_and_codes):
    model, path = encoder_and_codes
    config = hf.configure(model, PrismConfig(4, 1, exchange="auto", delta_codebook=path)).config
    model.set_attn_implementation("sdpa")
    shape, N = ModelShape.from_config(model.config), 130
    sizes = [c1 - c0 for c0, c1 in partition_bounds(N, 4)]
    per_layer = cost.layer_bytes(shape, N, config, dtype=torch.float16)
    assert per_layer[0] == sum(2 * 2 * n for n in sizes)  # a vocabulary of 256: 2-byte ids and positions
    assert per_layer[1:] == [sum(math.ceil(n * 4 * 6 / 8) for n in sizes)] * 2  # 4 groups of 6-bit codes
    assert sum(cost.bytes_per_layer(shape, N, config)) == pytest.approx(sum(per_layer) / 3)


def test_settings_that_do_not_fit_are_refused_by_name(encoder_and_codes, tmp_path):
    model, path = encoder_and_codes
    with pytest.raises(ValueError, match=r"segment_size=2 \(needs 1\)"):
        PrismConfig(2, 2, exchange="auto", delta_codebook=path)
    with pytest.raises(ValueError, match=r"sink_tokens=4 \(needs 0\)"):
        PrismConfig(2, 1, exchange="auto", sink_tokens=4, delta_codebook=path)
    with pytest.raises(ValueError, match="set exchange='hidden' or 'auto'"):
        PrismConfig(2, 1, delta_codebook=path)
    with pytest.raises(ValueError, match="no readable calibration file"):
        PrismConfig(2, 1, exchange="auto", delta_codebook=tmp_path / "missing")
    torch.manual_seed(1)
    other = BertModel(model.config, add_pooling_layer=False).eval()
    with pytest.raises(ValueError, match="calibrated for another model.*prism-calibrate --delta-codes"):
        hf.configure(other, PrismConfig(2, 1, exchange="auto", delta_codebook=path))
    llama = LlamaModel(LlamaConfig(vocab_size=256, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=64)).eval()
    data = torch.load(path, weights_only=True)
    save_delta_codes(tmp_path / "llama.delta", data["predictors"], data["codebooks"], 256, model_fingerprint(llama))
    with pytest.raises(ValueError, match="exchanges kv rows"):
        hf.configure(llama, PrismConfig(2, 1, exchange="auto", delta_codebook=tmp_path / "llama.delta"))


def test_a_layer_run_out_of_order_is_refused(encoder_and_codes):
    model, path = encoder_and_codes
    hf.configure(model, PrismConfig(2, 1, exchange="auto", delta_codebook=path))
    try:
        h = torch.randn(1, 16, 32)
        with torch.no_grad(), pytest.raises(ValueError, match="run the model's layers in order"):
            model.encoder.layer[1](h)
    finally:
        model.set_attn_implementation("sdpa")


def test_prism_calibrate_delta_codes_bad_arguments_exit_2(capsys, tmp_path):
    from prism_ops.cli.calibrate import main

    with pytest.raises(SystemExit) as e:
        main(["--delta-codes", "--out", str(tmp_path / "x"), "--dense-layers"])
    assert e.value.code == 2 and "--delta-codes and --dense-layers are two calibrations" in capsys.readouterr().err
    # delta codes are for encoders: a decoder is refused with the reason, before any fitting
    from tiny_model import write_tiny_gpt2

    folder = write_tiny_gpt2(tmp_path / "tiny")
    capsys.readouterr()
    assert main(["--model", str(folder), "--delta-codes", "--out", str(tmp_path / "g.delta")]) == 2
    assert "delta codes are for encoders so far" in capsys.readouterr().err
    assert not (tmp_path / "g.delta").exists()


@pytest.mark.parametrize("family,P,pad", [("bert", 2, 0), ("roberta", 3, 5)])
def test_mpiexec_ranks_equal_the_simulation_and_send_what_the_layouts_say(tmp_path, family, P, pad):
    pytest.importorskip("mpi4py")
    sys.path.insert(0, str(MPI_SCRIPTS))
    from check_run import build
    from launch import MPIEXEC, check_run

    if MPIEXEC is None:
        pytest.skip("needs mpiexec (pip install mpich)")
    model = build(family)  # the seeded model every rank of check_run.py builds
    path = tmp_path / f"{family}.delta"
    vocab = model.config.vocab_size

    def tokenizer(text, add_special_tokens=False):  # bytes folded into the small model's vocabulary
        return {"input_ids": [b % vocab for b in byte_tokenizer(text)["input_ids"]]}

    calibrate_delta(model, tokenizer, path, group=8, centroids=32, iters=4)
    r = check_run(P, model=family, tokens=41, batch=2, pad=pad, segment_size=1,
                  levers={"exchange": "auto", "delta_codebook": str(path)})
    assert r["exchange"] == "hidden"
    assert r["err_sim"] <= 1e-5 * max(1.0, r["scale"]) * 2, r  # see launch.assert_matches_simulation
    assert r["err_exact"] > 1e-4  # the codes did change the rows
    assert r["bytes"] == r["layer_bytes"] and r["bytes"][0] < r["bytes"][1]  # layer 0: ids and positions


def test_short_requests_take_the_codes_long_ones_and_wide_splits_do_not(encoder_and_codes):
    _, path = encoder_and_codes
    tuned = PrismConfig.from_preset(4, "tuned", dense_layers=(1,), delta_codebook=path)
    assert tuned.delta_rows is None  # a long request's setting: tuned's summaries
    short = tuned.for_tokens(512)
    assert short.delta_rows == str(path) and short.segment_size == 1
    assert (short.sink_tokens, short.summary_bits, short.verbatim_bits, short.heavy_fraction) == (0, 0, 0, 0.0)
    assert tuned.for_tokens(4 * 1024).delta_rows is None
    # a dense layer resolves a short request as every other layer (the chain needs them all) ...
    assert tuned.for_layer(1).for_tokens(512) == short
    assert tuned.for_layer(1).for_tokens(4 * 1024).delta_rows is None
    # ... and past delta_max_partitions a short request sends accurate's rows instead
    wide = PrismConfig.from_preset(8, "tuned", dense_layers=(), delta_codebook=path).for_tokens(512)
    assert wide.delta_rows is None and wide.summary_bits == 4 and wide.sink_tokens == 4
    with pytest.raises(ValueError, match="delta_codebook='auto' is resolved by prism_ops.hf.configure"):
        PrismConfig.from_preset(4, "tuned", dense_layers=()).for_tokens(512)


def test_tuned_finds_an_encoders_cached_codes_and_runs_them(encoder_and_codes, tmp_path, monkeypatch):
    from prism_ops.calibrate import delta_codes_on_first_use

    model, _ = encoder_and_codes
    monkeypatch.setenv("PRISM_OPS_CACHE", str(tmp_path))
    config = PrismConfig.from_preset(4, "tuned", dense_layers=())
    with pytest.raises(ValueError, match="needs this model's delta codes, once: run `prism-calibrate --model MODEL "
                                         "--delta-codes`"):
        hf.configure(model, config)
    path = delta_codes_on_first_use(model, byte_tokenizer, "tiny")
    assert path.startswith(str(tmp_path)) and delta_codes_on_first_use(model, byte_tokenizer, "tiny") == path
    resolved = hf.configure(model, config).config
    try:
        assert resolved.delta_codebook == path and resolved.for_tokens(60).delta_rows == path
        seen = []
        decode = simulated.decoded_rows
        monkeypatch.setattr(simulated, "decoded_rows", lambda layer, h: seen.append(layer.index) or decode(layer, h))
        with torch.no_grad():
            model(input_ids=torch.randint(0, 256, (1, 60)))
        assert seen == [0, 1, 2]  # every layer through the chain
    finally:
        model.set_attn_implementation("sdpa")
    # a decoder takes no codes: tuned stays as it was
    llama = LlamaModel(LlamaConfig(vocab_size=256, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=64)).eval()
    assert delta_codes_on_first_use(llama, byte_tokenizer, "llama") is None
    assert hf.configure(llama, PrismConfig.from_preset(2, "tuned", dense_layers=())).config.delta_codebook is None


def test_rank0s_cached_codes_reach_a_rank_that_lacks_them_once(tmp_path, monkeypatch):
    """prism-run --preset tuned on several hosts: rank 0 fits (or has) the codes; a rank whose cache
    lacks that file gets rank 0's bytes, and a rank that has them is sent nothing."""
    import threading

    from fake_comm import fake_comms, run_ranks
    from prism_ops.jobs import base

    src = tmp_path / "host0" / "m.delta"
    src.parent.mkdir()
    src.write_bytes(bytes(range(256)) * 40)
    where, local = {0: src, 1: tmp_path / "host1" / "m.delta"}, threading.local()
    monkeypatch.setattr(base, "delta_codes_path", lambda model: where[local.rank])

    def job(comm):
        local.rank = comm.rank
        base._share_delta_codes(comm, None, str(src) if comm.rank == 0 else None)
        return comm.bytes_sent(["request"])[0]

    first = run_ranks(fake_comms(2), job)
    assert where[1].read_bytes() == src.read_bytes() and first[0] > src.stat().st_size
    again = run_ranks(fake_comms(2), job)
    assert again[0] < 200  # the digest only: both hosts have the file
    assert run_ranks(fake_comms(2), lambda comm: base._share_delta_codes(comm, None, None)) == [None, None]
