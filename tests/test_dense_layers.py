"""dense_layers (`PrismConfig.for_layer`, `calibrate.dense_layers`, `hf.dense_layers`, the `tuned`
preset): a few attention layers send every summarised token as its own row.

Checks: the lever's values and per-layer setting; a model's dense layers run the dense setting
(the same output as a model configured with it everywhere) and the others the model's; bytes per
layer from the cost model and from 2 ranks under mpiexec, layer by layer; the calibration's
per-layer errors against errors computed here from each layer's recorded q, k, v and a float64
exact attention; the cache (written, read back, refused for another model, missing named with
the command); bad counts and arguments.
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from prism_ops import PrismConfig, cost
from prism_ops.config import PRESETS

transformers = pytest.importorskip("transformers")

from prism_ops import calibrate, hf  # noqa: E402
from prism_ops.eval.tasks import byte_tokenizer  # noqa: E402
from prism_ops.hf.dense_layers import dense_layers_path, load_dense_layers, save_dense_layers  # noqa: E402
from prism_ops.in_process import run_simulated  # noqa: E402
from prism_ops.ops.partitioned_attention import partitioned_attention  # noqa: E402
from prism_ops.request_types import Request  # noqa: E402
from prism_ops.strategy import attached_layers  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "mpi"))
from check_run import build  # noqa: E402

LEAN = dict(segment_size=8, summary_bits=4, sink_tokens=2, heavy_fraction=0.25)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_OPS_CACHE", str(tmp_path))
    return tmp_path


def test_the_lever_names_bad_values_and_sorts_layers():
    assert PrismConfig(2, 8, dense_layers=[5, 1]).dense_layers == (1, 5)
    assert PrismConfig(2, 8, dense_layers="auto").as_dict()["dense_layers"] == "auto"
    assert PRESETS["tuned"]["dense_layers"] == "auto"
    for bad in ([1, 1], [-1], [1.0], "all", 3, [True]):
        with pytest.raises(ValueError, match="dense_layers must be 'auto' or"):
            PrismConfig(2, 8, dense_layers=bad)
    cfg = PrismConfig(2, dense_layers=(1,), **LEAN)
    assert cfg.for_layer(0) is cfg
    assert cfg.for_layer(1) == PrismConfig(2, **dict(LEAN, segment_size=1, heavy_fraction=0.0))
    with pytest.raises(ValueError, match="resolved by prism_ops.hf.configure"):
        PrismConfig(2, 8, dense_layers="auto").for_layer(0)


def test_dense_layers_run_the_dense_setting_and_the_others_the_models():
    model = build("gpt2")
    req = Request(ids=torch.randint(0, 300, (1, 45), generator=torch.Generator().manual_seed(2)), output="hidden")
    cfg = PrismConfig(3, dense_layers=(0, 1), **LEAN)
    runner = hf.configure(model, cfg)
    assert runner.config == cfg and hf.config_of(model) == cfg
    assert [layer.config for layer in attached_layers(model)] == [cfg.for_layer(0)] * 2
    got = run_simulated(model, req, 3)
    hf.configure(model, cfg.for_layer(0))  # the dense setting on every layer: the same computation
    want = run_simulated(model, req, 3)
    assert torch.equal(got.output, want.output) and got.bytes_per_layer == want.bytes_per_layer
    hf.configure(model, cfg.replace(dense_layers=(1,)))
    mixed = run_simulated(model, req, 3)
    shape = cost.ModelShape.from_config(model.config)
    one = [sum(cost.bytes_per_layer(shape, 45, c, causal=True)) for c in (cfg.replace(dense_layers=()),
                                                                         cfg.for_layer(0))]
    assert mixed.bytes_per_layer == one and one[0] < one[1]
    # The mean per rank, for the planner and tables, over the model's layers.
    mean = cost.bytes_per_layer(shape, 45, cfg.replace(dense_layers=(1,)), causal=True)
    assert sum(mean) == pytest.approx(sum(one) / 2)
    with pytest.raises(ValueError, match=r"dense_layers \[2\] are not among model GPT2LMHeadModel's 2 attention"):
        hf.configure(model, cfg.replace(dense_layers=(0, 2)))


def test_mpiexec_2_ranks_send_each_layers_own_bytes_and_equal_the_simulation():
    pytest.importorskip("mpi4py")
    from launch import MPIEXEC, check_run

    if MPIEXEC is None:
        pytest.skip("needs mpiexec (pip install mpich)")
    levers = {"dense_layers": [1], "summary_bits": 4, "sink_tokens": 2, "heavy_fraction": 0.25}
    r = check_run(2, model="gpt2", tokens=61, segment_size=8, levers=json.loads(json.dumps(levers)))
    assert r["bytes"] == r["layer_bytes"] and r["layer_bytes"][0] < r["layer_bytes"][1], r
    assert r["err_sim"] <= 1e-5 * max(1.0, r["scale"]) * 2 + r["err_step"], r  # as assert_matches_simulation


def _errors_here(model, config, tokens):
    """Each layer's relative error, from its own q, k, v recorded on the exact model."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    seen = []

    def record(module, q, k, v, *args, **kwargs):
        seen.append((q, k, v, kwargs.get("scaling")))
        return sdpa_attention_forward(module, q, k, v, *args, **kwargs)

    AttentionInterface.register("test_record", record)
    AttentionMaskInterface.register("test_record", sdpa_mask)
    model.set_attn_implementation("test_record")
    with torch.no_grad():
        model(input_ids=torch.tensor([list(calibrate.calibration_text().encode())[:tokens]]))
    model.set_attn_implementation("sdpa")
    out = []
    for q, k, v, scale in seen:
        q64, k64, v64 = (t.double() for t in (q, k, v))
        rep = q.shape[1] // k.shape[1]
        w = (q64 @ k64.repeat_interleave(rep, 1).transpose(-1, -2)) * scale
        w = w.masked_fill(torch.ones_like(w, dtype=torch.bool).triu(1), -math.inf).softmax(-1)
        exact = w @ v64.repeat_interleave(rep, 1)
        got = partitioned_attention(q, k, v, num_partitions=config.num_partitions, segment_size=config.segment_size,
                                    causal=True, scale=scale, sink_tokens=config.sink_tokens,
                                    summary_bits=config.summary_bits, heavy_fraction=config.heavy_fraction).double()
        out.append(((got - exact).norm() / exact.norm()).item())
    return out


def test_the_calibration_picks_the_layers_prism_moves_most_and_caches_them(cache):
    model = build("gpt2")
    config = PrismConfig.from_preset(calibrate.DENSE_PARTITIONS, "tuned").replace(dense_layers=(), exchange="kv")
    errors = calibrate.layer_errors(model, byte_tokenizer, config)
    want = _errors_here(model, config, 256)  # the tiny model's context
    assert errors == pytest.approx(want, rel=1e-3) and errors[0] != errors[1]
    info = calibrate.dense_layers(model, byte_tokenizer)
    assert info["dense_layers"] == [max(range(2), key=errors.__getitem__)]  # a tenth of 2 layers: 1
    assert Path(info["path"]) == dense_layers_path(model) and dense_layers_path(model).parent.parent == cache
    assert load_dense_layers(model) == tuple(info["dense_layers"])
    runner = hf.configure(model, PrismConfig.from_preset(2, "tuned"))
    assert runner.config.dense_layers == tuple(info["dense_layers"])
    assert calibrate.dense_layers(model, byte_tokenizer, count=2)["dense_layers"] == [0, 1]
    for bad in (0, 3, 1.5, True):
        with pytest.raises(ValueError, match=r"count must be an int in \[1, 2\]"):
            calibrate.dense_layers(model, byte_tokenizer, count=bad)


def test_a_missing_or_foreign_calibration_is_a_clear_error(cache, monkeypatch):
    model = build("gpt2")
    with pytest.raises(ValueError, match=r"needs this model's calibration, once: run `prism-calibrate --model MODEL "
                                         r"--dense-layers` \(no file .*dense-layers"):
        hf.configure(model, PrismConfig.from_preset(2, "tuned"))
    path = save_dense_layers(model, [1], {})
    data = json.loads(path.read_text())
    path.write_text(json.dumps(dict(data, fingerprint=dict(data["fingerprint"], weights="0" * 16))))
    with pytest.raises(ValueError, match="was calibrated for another model"):
        hf.configure(model, PrismConfig.from_preset(2, "tuned"))
    monkeypatch.setenv("PRISM_OPS_CACHE", "off")
    with pytest.raises(ValueError, match=r"the cache is off \(PRISM_OPS_CACHE=off\)"):
        hf.configure(model, PrismConfig.from_preset(2, "tuned"))


def test_prism_calibrate_takes_out_or_dense_layers(capsys):
    from prism_ops.cli.calibrate import main

    assert_exit = [(["--model", "minilm"], "give --out FILE"), (["--out", "x", "--dense-layers"], "give --out FILE"),
                   (["--out", "x", "--count", "2"], "--count goes with --dense-layers")]
    for argv, message in assert_exit:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_prism_run_calibrates_on_first_use_then_reads_the_cache(tmp_path):
    """--preset tuned: the first run finds the model's dense layers (and says so), the next reads them."""
    import os
    import subprocess

    from tiny_model import TEXT, write_tiny_gpt2

    folder = write_tiny_gpt2(tmp_path / "gpt2")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PRISM_OPS_CACHE=str(tmp_path / "cache"))
    cmd = [str(Path(sys.executable).parent / "prism-run"), "--simulate", "2", "--model", str(folder), "--preset",
           "tuned", "--min-chunk-tokens", "0", "--output", "hidden", "--input", TEXT]  # a short text: summarised still
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "finding" in first.stderr and "dense layers for the tuned preset, once" in first.stderr
    files = list((tmp_path / "cache" / "dense-layers").glob("*.json"))
    layers = json.loads(files[0].read_text())["dense_layers"]
    assert len(layers) == 1  # a tenth of 2 layers
    assert f"segment size 128 (dense layers {layers[0]}: segment size 1)," in first.stdout  # the report names them
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "finding" not in again.stderr, again.stderr[-3000:]
    def answer(out):  # the report without its timings
        return [line for line in out.splitlines() if not line.startswith("seconds:")]

    assert answer(again.stdout) == answer(first.stdout)
