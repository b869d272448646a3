"""min_chunk_tokens (`PrismConfig.for_tokens`, the `tuned` preset): a request whose share per rank
is under the threshold sends every token as its own row; a longer one runs the config as given.

Checks: the lever's values and the boundary (N = P x threshold summarises, one token less does
not); a configured model's output and bytes on either side equal those of the setting it should
resolve to, for a decoder and an encoder; the cost model, the wire layouts and the split planner
resolve it alike; 2 ranks under mpiexec send the bytes of the resolved setting and match the
simulation; prism-run's report names the setting a request ran.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

from prism_ops import PrismConfig, cost
from prism_ops.config import PRESETS
from prism_ops.ops.partitioned_attention import partition_bounds
from prism_ops.split import Device, predict, uniform_links
from prism_ops.wire import payload_layouts

transformers = pytest.importorskip("transformers")

from prism_ops import hf  # noqa: E402
from prism_ops.in_process import run_simulated  # noqa: E402
from prism_ops.request_types import Request  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "mpi"))
from check_run import build  # noqa: E402

LEAN = dict(segment_size=8, summary_bits=4, sink_tokens=2, heavy_fraction=0.25, exchange="kv")
WHOLE = dict(LEAN, segment_size=1, heavy_fraction=0.0)  # what a short request runs


def test_the_lever_names_bad_values_and_resolves_at_the_boundary():
    assert PRESETS["tuned"]["min_chunk_tokens"] == 1024 and "min_chunk_tokens" not in PRESETS["lean"]
    for bad in (-1, 1.5, "8", True, None):
        with pytest.raises(ValueError, match="min_chunk_tokens"):
            PrismConfig(2, 8, min_chunk_tokens=bad)
    cfg = PrismConfig(3, min_chunk_tokens=16, dense_layers=(1,), **LEAN)
    assert cfg.for_tokens(48) is cfg and cfg.for_tokens(10_000) is cfg  # 16 tokens per rank: summarised
    assert cfg.for_tokens(47) == PrismConfig(3, **WHOLE)  # under 16 per rank: every token, no layer apart
    assert cfg.for_tokens(47).for_tokens(1) == cfg.for_tokens(47)  # resolving twice changes nothing
    off = PrismConfig(3, **LEAN)
    assert off.for_tokens(3) is off  # 0: always the config as given
    assert cfg.as_dict()["min_chunk_tokens"] == 16


@pytest.mark.parametrize("name,N", [("gpt2", 45), ("vit", None)])
def test_a_model_runs_the_resolved_setting_on_either_side(name, N):
    """The simulated model under the lever gives exactly the output and bytes of the setting it
    resolves to: every token under the threshold, the summaries from it on."""
    model = build(name)
    if name == "gpt2":
        req = Request(ids=torch.randint(0, 300, (1, N), generator=torch.Generator().manual_seed(3)), output="hidden")
    else:  # ViT: 64 patches and the class token
        req = Request(pixel_values=torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)),
                      output="hidden")
        N = 65
    P = 3
    sent = {}
    for threshold, want in ((N // P + 1, WHOLE), (N // P, LEAN)):
        hf.configure(model, PrismConfig(P, min_chunk_tokens=threshold, **LEAN))
        got = run_simulated(model, req, P)
        hf.configure(model, PrismConfig(P, **want))
        ref = run_simulated(model, req, P)
        assert torch.equal(got.output, ref.output) and got.bytes_per_layer == ref.bytes_per_layer, threshold
        sent[threshold] = sum(got.bytes_per_layer)
    assert sent[N // P] < sent[N // P + 1]  # the summaries send less than every token


def test_cost_wire_and_planner_resolve_it_alike():
    shape = cost.ModelShape(hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64, ffn_size=1536, mlp_matrices=3,
                            num_layers=30)
    tuned = PrismConfig(2, min_chunk_tokens=1024, dense_layers=(7, 18, 20), **dict(LEAN, segment_size=128))
    whole = PrismConfig(2, **dict(WHOLE))
    link, core = uniform_links(2, 2e7, latency_s=0.001), Device(4e10, 2e10)
    for N, want in ((2047, whole), (2048, tuned)):
        assert cost.bytes_per_layer(shape, N, tuned, causal=True) == cost.bytes_per_layer(shape, N, want, causal=True)
        assert cost.layer_bytes(shape, N, tuned, causal=True) == cost.layer_bytes(shape, N, want, causal=True)
        assert cost.flops_per_layer(shape, N, tuned, causal=True) == cost.flops_per_layer(shape, N, want, causal=True)
        bounds = partition_bounds(N, 2)
        lay = dict(causal=True, batch=1, heads=3, channels=128, dtype=torch.float32)
        assert payload_layouts(tuned, bounds, **lay) == payload_layouts(want.replace(dense_layers=()), bounds, **lay)
        assert predict(bounds, [core, core], link, shape, tuned, causal=True) == \
            predict(bounds, [core, core], link, shape, want, causal=True)
    # Every token costs more than the summaries: the threshold is where the bytes jump.
    assert sum(cost.bytes_per_layer(shape, 2047, tuned, causal=True)) > \
        2 * sum(cost.bytes_per_layer(shape, 2048, tuned, causal=True))


def test_mpiexec_2_ranks_send_the_resolved_settings_bytes_and_equal_the_simulation():
    pytest.importorskip("mpi4py")
    from launch import MPIEXEC, check_run

    if MPIEXEC is None:
        pytest.skip("needs mpiexec (pip install mpich)")
    levers = {"summary_bits": 4, "sink_tokens": 2, "heavy_fraction": 0.25, "min_chunk_tokens": 31}
    model = build("gpt2")
    shape = cost.ModelShape.from_config(model.config)
    for tokens, segment in ((61, 1), (62, 8)):  # 61 < 2 x 31: every token; 62: the summaries
        r = check_run(2, model="gpt2", tokens=tokens, segment_size=8, levers=json.loads(json.dumps(levers)))
        want = PrismConfig(2, segment_size=segment, summary_bits=4, sink_tokens=2,
                           heavy_fraction=0.25 if segment > 1 else 0.0)
        assert r["bytes"] == [sum(cost.bytes_per_layer(shape, tokens, want, causal=True))] * 2, r
        assert r["err_sim"] <= 1e-5 * max(1.0, r["scale"]) * 2 + r["err_step"], r  # as assert_matches_simulation


def test_prism_run_reports_the_setting_the_request_ran(tmp_path):
    import os
    import subprocess

    from tiny_model import TEXT, write_tiny_gpt2

    folder = write_tiny_gpt2(tmp_path / "gpt2")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    base = [str(Path(sys.executable).parent / "prism-run"), "--simulate", "2", "--model", str(folder), "--preset",
            "lean", "--output", "hidden", "--json", "--input", TEXT]
    seen = {}
    for threshold in ("100000", "0"):  # the short text under the threshold, and the lever off
        p = subprocess.run(base + ["--min-chunk-tokens", threshold], capture_output=True, text=True, timeout=300,
                           env=env)
        assert p.returncode == 0, p.stderr[-3000:]
        seen[threshold] = json.loads(p.stdout.strip().splitlines()[-1])
        assert f"segment size {seen[threshold]['segment_size']}, " in p.stdout
    assert seen["100000"]["segment_size"] == 1 and seen["0"]["segment_size"] == 128
    assert sum(seen["100000"]["bytes"]["sent_per_layer"]) > sum(seen["0"]["bytes"]["sent_per_layer"])
