"""Accuracy targets on real models (issue: quality at compression), checked with prism-eval.

At 4 partitions and at most 15% of full-exchange traffic:
- all-MiniLM-L6-v2, 64 passages x 256 tokens: mean cosine of sentence embeddings >= 0.98;
- SmolLM2-135M, 4 windows x 1024 tokens: perplexity <= 1.10x exact.
Runs the paper's method at segment size 16 and the "edge" preset with its ablations, and
writes bench/out/quality/EVAL.md. The full grid and plots: `bash tools/eval.sh` (docs/EVAL.md).

    .venv-eval/bin/python -m pytest bench/bench_quality.py -s
"""

from pathlib import Path

import pytest

pytest.importorskip("transformers")
from prism_ops.cli import eval as cli  # noqa: E402
from prism_ops.eval import report  # noqa: E402

OUT = Path(__file__).parent / "out" / "quality"


@pytest.fixture(scope="module")
def results():
    return {r["key"]: r for r in cli.run(["--partitions", "4", "--segment-sizes", "16", "--no-curves",
                                           "--out", str(OUT)])}


@pytest.mark.parametrize("model", ["minilm", "smollm2"])
def test_edge_preset_meets_the_target(results, model):
    res = results[model]
    edge = next(r for r in res["rows"] if r["method"] == "preset edge" and r["partitions"] == 4)
    paper = next(r for r in res["rows"] if r["method"] == "paper" and r["segment_size"] == 16)
    print(f"\n{res['model']}: paper cs16 {res['metric']} {paper['quality']:.4f} at {100 * paper['bytes']:.1f}% bytes; "
          f"edge {edge['quality']:.4f} at {100 * edge['bytes']:.1f}% bytes")
    assert edge["bytes"] <= report.TRAFFIC_TARGET
    assert report.meets(res["metric"], edge["quality"]), edge
