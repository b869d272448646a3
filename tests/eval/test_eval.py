"""prism-eval: metrics on hand-computed cases, the whole tool end to end on tiny random models,
and bad settings refused before any model is loaded."""

import json
import math

import pytest
import torch

pytest.importorskip("transformers")

from prism_ops import PrismConfig, cost  # noqa: E402
from prism_ops.cli import eval as cli  # noqa: E402
from prism_ops.eval import grid, metrics, report, tasks  # noqa: E402
from prism_ops.hf.delta_cache import delta_codes_path  # noqa: E402


def test_metrics_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    mean, low = metrics.cosine_stats(a, b)
    assert mean == pytest.approx((1 + 1 / math.sqrt(2)) / 2) and low == pytest.approx(1 / math.sqrt(2))
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    docs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert metrics.recall_at_1(q, docs) == pytest.approx(2 / 3)  # query 2 finds doc 0
    ref = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # best docs (0, 2, 0) against (0, 1, 0)
    assert metrics.top1_agreement(q, docs, ref) == pytest.approx(2 / 3)
    pooled = metrics.mean_pool(torch.tensor([[[3.0, 0.0], [0.0, 4.0], [9.0, 9.0]]]), torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(pooled, torch.tensor([[0.6, 0.8]]))
    # Uniform logits over V tokens: perplexity V.
    s, n = metrics.next_token_nll(torch.zeros(2, 5, 7), torch.randint(0, 7, (2, 5)))
    assert n == 8 and metrics.perplexity(s, n) == pytest.approx(7.0)
    with pytest.raises(ValueError, match="num_predicted must be > 0"):
        metrics.perplexity(0.0, 0)


def test_windows():
    assert tasks.windows(list(range(10)), 3, 2, 1) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    with pytest.raises(ValueError, match="fewer than 4 windows x 3 tokens"):
        tasks.windows(list(range(10)), 4, 2, 1)


def test_best_within_target():
    rows = [dict(partitions=4, bytes=0.1, quality=0.9), dict(partitions=4, bytes=0.2, quality=0.99),
            dict(partitions=2, bytes=0.1, quality=0.995), dict(partitions=4, bytes=0.15, quality=0.95)]
    assert report.best_within_target(rows, "mean cos")["quality"] == 0.95
    assert report.best_within_target(rows, "ppl / exact")["quality"] == 0.9
    assert report.meets("mean cos", 0.98) and not report.meets("ppl / exact", 1.2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    results = cli.run(["--tiny", "--out", str(out)])
    return out, results


def test_tiny_end_to_end(tiny_run):
    out, results = tiny_run
    assert {p.name for p in out.iterdir()} == {"EVAL.md", "eval.json", "eval_tiny-encoder.png",
                                               "eval_tiny-decoder.png"}
    saved = json.loads((out / "eval.json").read_text())
    assert saved["command"] == "prism-eval --tiny --out " + str(out)
    text = (out / "EVAL.md").read_text()
    assert "| paper | 4 | 16 |" in text and "preset edge without summary_bits" in text
    expected_rows = grid.build([2, 4], [1, 4, 16])
    for res in results:
        hidden_ok = res["key"] == "tiny-encoder"  # the tiny decoder uses rotary embeddings
        assert len(res["rows"]) == sum(hidden_ok or not grid.needs_hidden(s) for s in expected_rows)
        assert bool(res["skipped"]) != hidden_ok
        shape = tasks.shape_of(tasks.LOADERS[res["key"]](1, 64))
        causal = res["key"] == "tiny-decoder"
        for r in res["rows"]:
            # Segment size 1 at full precision is exact attention.
            if r["segment_size"] == 1 and "summary_bits" not in r["levers"]:
                assert r["quality"] == pytest.approx(1.0, abs=1e-5), r
            if r["method"] == "paper":
                config = PrismConfig(num_partitions=r["partitions"], segment_size=r["segment_size"])
                assert r["bytes"] == pytest.approx(cost.traffic_ratio(shape, 64, config, causal=causal))
        compressed = [r for r in res["rows"] if r["method"] == "paper" and r["segment_size"] == 16]
        assert all(r["quality"] != 1.0 for r in compressed)  # compression does change the outputs


@pytest.mark.parametrize("argv,message", [
    (["--segment-sizes", "0,4"], "segment_size must be >= 1, got 0"),
    (["--partitions", "2,100"], "num_partitions=100 is more than the 64 tokens per sequence"),
    (["--models", "bert-huge"], "unknown model 'bert-huge'"),
    (["--passages", "0"], "--passages must be >= 1"),
    (["--partitions", "two"], "expected comma-separated integers"),
])
def test_bad_settings_fail_before_any_model_loads(argv, message, monkeypatch, capsys):
    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(tasks, "LOADERS", {k: no_loading for k in tasks.LOADERS})
    with pytest.raises(SystemExit) as e:
        cli.main(["--tiny", *argv])
    assert message in str(e.value.code) + capsys.readouterr().err


def test_unknown_lever_is_refused():
    with pytest.raises(ValueError, match=r"unknown lever\(s\) \['sink'\]"):
        grid.check_all([grid.Setting("typo", 4, 16, {"sink": 4})], 64)


def test_budgets_table_end_to_end_on_tiny_models(tmp_path, monkeypatch):
    from prism_ops.config import PRESET_BUDGETS
    from prism_ops.eval import budgets
    from prism_ops.hf.dense_layers import load_dense_layers

    monkeypatch.setenv("PRISM_OPS_CACHE", str(tmp_path / "cache"))  # tuned calibrates each model on first use
    (tmp_path / "EVAL.md").write_text("# the grid's report\n")
    rows = cli.run(["--budgets", "--tiny", "--out", str(tmp_path), "--budget-tokens", "256", "--passages", "4"])
    # tiny-encoder at --tokens (64), tiny-decoder at 64 and 128; P = 2, 4; every budgeted preset.
    assert len(rows) == (1 + 2) * 2 * len(PRESET_BUDGETS)
    assert {r["preset"] for r in rows} == set(PRESET_BUDGETS) == {"accurate", "edge", "fast", "lean", "tuned"}
    for key in ("tiny-encoder", "tiny-decoder"):  # the calibration each model's tuned rows ran with, now cached
        layers = load_dense_layers(tasks.LOADERS[key](1, 64).model)
        assert len(layers) == 1 and [r["dense_layers"] for r in rows if r["key"] == key and r["preset"] == "tuned"] \
            == [list(layers)] * (4 if key == "tiny-decoder" else 2)
        assert all(r["dense_layers"] == [] for r in rows if r["key"] == key and r["preset"] != "tuned")
    for r in rows:
        assert r["within"] == budgets.within(r["metrics"], r["budget"])
        if r["preset"] == "edge":
            assert r["of_edge"] == 1.0
        shape = tasks.shape_of(tasks.LOADERS[r["key"]](1, 64))
        codes = delta_codes_path(tasks.LOADERS[r["key"]](1, 64).model) if r["delta_codes"] else None
        config = PrismConfig.from_preset(r["partitions"], r["preset"], exchange=r["exchange"],
                                         dense_layers=r["dense_layers"], delta_codebook=codes)
        causal = r["key"] == "tiny-decoder"
        assert r["bytes"] == sum(cost.bytes_per_layer(shape, r["tokens"], config, causal=causal, dtype=torch.float16))
    assert {r["sequences"] for r in rows if r["key"] == "tiny-decoder"} == {4, 2}  # 256 tokens in windows of N
    text = (tmp_path / "EVAL.md").read_text()
    assert text.startswith("# the grid's report") and budgets.MARKER in text
    assert "| lean | 128 | 4 |" in text and "| tuned | 128 | 4 |" in text and "Outside the budget:" in text
    assert text.count("Dense layers (calibrated, `prism-calibrate --dense-layers`): ") == 2
    saved = json.loads((tmp_path / "budgets.json").read_text())
    assert saved["command"].startswith("prism-eval --budgets --tiny") and len(saved["rows"]) == len(rows)
    # The grid's report, written again, keeps the budgets table below its marker.
    report.write([], tmp_path, "prism-eval --tiny")
    again = (tmp_path / "EVAL.md").read_text()
    assert again.count(budgets.MARKER) == 1 and "| lean | 128 | 4 |" in again


def test_within_reads_the_budget_of_each_kind():
    from prism_ops.eval.budgets import within

    budget = {"ppl": 1.03, "cos_mean": 0.99, "cos_min": 0.97}
    assert within({"quality": 1.03, "ppl": 9.0}, budget) and not within({"quality": 1.031, "ppl": 9.0}, budget)
    assert within({"quality": 0.99, "cos_mean": 0.99, "cos_min": 0.97}, budget)
    assert not within({"quality": 0.995, "cos_mean": 0.995, "cos_min": 0.96}, budget)


def test_budgets_refuse_more_ranks_than_tokens(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--budgets", "--tiny", "--partitions", "2,100"])
    assert "--partitions must be between 1 and N = 64 tokens, got [2, 100]" in str(e.value.code)
