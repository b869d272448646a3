"""The levers behind the `lean` preset (issue: summaries at a quarter of `edge`'s bytes), on real
models and real text, in the cells the issue names: SmolLM2-135M at N = 2048, P = 2 and at
N = 8192, P = 4 (perplexity over exact), all-MiniLM-L6-v2 at N = 512, P = 4 (mean / least
cosine of sentence embeddings to exact).

    python bench/bench_lean.py [--windows 2] [--passages 16] [--only tuned,lean:] [--out docs/LEAN.md]

The tuned rows use each model's calibrated dense layers (`prism-calibrate --dense-layers`),
calibrated here first when the cache has none; the preset sends every token for a request under
1024 tokens per rank (`min_chunk_tokens`: every MiniLM cell), the row after it summarises anyway.

Every setting is a `PrismConfig` of the package (simulated partitions: the rows the MPI runtime
sends); bytes are what all ranks send per layer with an fp16 model (`prism_ops.cost`), also as a
share of edge's in the same cell. "score queries" sweeps `heavy_rows.SCORE_QUERIES`, the number
of a chunk's own queries that pick its heavy tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from prism_ops import calibrate, cost, hf
from prism_ops.config import PRESETS, PrismConfig
from prism_ops.eval import tasks
from prism_ops.ops import heavy_rows

LEAN = dict(segment_size=128, summary_bits=4, sink_tokens=4, heavy_fraction=0.2, verbatim_bits=16, exchange="auto")
# label, levers, score queries (None: the default)
SETTINGS = [
    ("edge (reference)", dict(segment_size=1, summary_bits=4, exchange="auto"), None),
    ("accurate (reference)", dict(segment_size=1, summary_bits=4, sink_tokens=4, exchange="auto"), None),
    ("segment 4, 4-bit, sinks 4 (plain segment means)", dict(LEAN, segment_size=4, heavy_fraction=0.0), None),
    ("lean: heavy 0.2, segment 128, 4-bit, sinks 4", LEAN, None),
    ("lean, heavy 0.1", dict(LEAN, heavy_fraction=0.1), None),
    ("lean, heavy 0.35", dict(LEAN, heavy_fraction=0.35), None),
    ("lean, heavy 0.6", dict(LEAN, heavy_fraction=0.6), None),
    ("lean, segment 16", dict(LEAN, segment_size=16), None),
    ("lean, 8-bit", dict(LEAN, summary_bits=8), None),
    ("lean, no sinks", dict(LEAN, sink_tokens=0), None),
    ("lean, 16 score queries", LEAN, 16),
    ("lean, 256 score queries", LEAN, 256),
    ("tuned (the preset): heavy 0.1, calibrated dense layers, every token under 1024 a rank", PRESETS["tuned"], None),
    ("tuned, summarising every request (min_chunk_tokens 0)", dict(PRESETS["tuned"], min_chunk_tokens=0), None),
    ("lean with tuned's dense layers", dict(LEAN, dense_layers="auto"), None),
]
CELLS = [("smollm2", 2048, 2), ("smollm2", 8192, 4), ("minilm", 512, 4)]


def run_cell(model, N, P, count, settings):
    # MiniLM's passages leave out the calibration slice (tuned's delta codes are fitted on it)
    task = tasks.minilm(count, N, calibrate.evaluation_text()) if model == "minilm" else tasks.LOADERS[model](count, N)
    shape = tasks.shape_of(task)
    if any(levers.get("dense_layers") == "auto" for _, levers, _ in settings):
        tasks.calibrated_dense_layers(task, model)  # once, as prism-calibrate --dense-layers does
    if any(levers.get("delta_codebook") == "auto" for _, levers, _ in settings):
        tasks.calibrated_delta_codes(task, model)  # once, as prism-calibrate --delta-codes does
    rows, edge = [], None
    default = heavy_rows.SCORE_QUERIES
    for label, levers, queries in settings:
        t0 = time.perf_counter()
        heavy_rows.SCORE_QUERIES = queries or default
        try:
            config = hf.configure(task.model, PrismConfig(P, **levers)).config
            metrics = task.evaluate()
        finally:
            heavy_rows.SCORE_QUERIES = default
            tasks.use_exact_attention(task.model)
        sent = sum(cost.bytes_per_layer(shape, N, config, causal=task.causal, dtype=torch.float16))
        edge = edge or (sent if label.startswith("edge") else None)
        rows.append(dict(setting=label, bytes=sent, of_edge=sent / edge if edge else None, metrics=metrics))
        print(f"  {model} N={N} P={P} {label}: {sent:,.0f} B {metrics['quality']:.4f} "
              f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    return task, rows


def table(task, rows) -> str:
    if task.causal:
        out = ["| setting | bytes/layer | of edge | ppl / exact |", "| --- | --- | --- | --- |"]
        out += [f"| {r['setting']} | {r['bytes']:,.0f} | {100 * r['of_edge']:.1f}% | {r['metrics']['quality']:.4f} |"
                for r in rows]
    else:
        out = ["| setting | bytes/layer | of edge | mean cos | min cos |", "| --- | --- | --- | --- | --- |"]
        out += [f"| {r['setting']} | {r['bytes']:,.0f} | {100 * r['of_edge']:.1f}% | {r['metrics']['cos_mean']:.4f} | "
                f"{r['metrics']['cos_min']:.4f} |" for r in rows]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=2, help="SmolLM2 windows per cell (at N = 8192: half, at least 1)")
    ap.add_argument("--passages", type=int, default=16, help="MiniLM passages of 512 tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", help="comma-separated label prefixes: only those settings (and edge, the reference)")
    ap.add_argument("--out", type=Path, default=None, help="write the tables (markdown) here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = SETTINGS
    if args.only:
        prefixes = tuple(x for x in args.only.split(",") if x)
        settings = [s for s in SETTINGS if s[0].startswith(("edge",) + prefixes)]
    parts = []
    for model, N, P in CELLS:
        count = args.passages if model == "minilm" else max(1, args.windows * 2048 // N)
        task, rows = run_cell(model, N, P, count, settings)
        what = (f"{count} windows of {N} tokens, exact perplexity {task.ref['ppl']:.3f}" if task.causal else
                f"{count} passages of {N} tokens")
        parts.append(f"### {task.name}, N = {N}, P = {P}\n\n{what}\n\n{table(task, rows)}\n")
    text = "\n".join(parts)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
