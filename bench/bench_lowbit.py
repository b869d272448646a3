"""Summary bytes below 4 bits per value: integer rounding, coarser segments, sinks/halo, and
product-quantization codebooks calibrated offline, on real models at 2 partitions (one process).

    python bench/bench_lowbit.py [--windows 2] [--passages 16] [--out docs/LOWBIT.md]

SmolLM2-135M: perplexity over exact on `--windows` windows of 2048 tokens. all-MiniLM-L6-v2:
mean and min cosine of mean-pooled embeddings to exact on `--passages` passages of 512 tokens.
Both on `prism_ops.calibrate.evaluation_text()`; codebooks are fitted on the disjoint
`calibration_text()` (2048 rows per layer). Bytes per layer are what rank 0 sends with an fp16
model (`prism_ops.cost`), against fp16 full exchange (every rank sends n_p x d fp16 values).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from prism_ops import calibrate, cost, hf, models
from prism_ops.config import PrismConfig
from prism_ops.eval.tasks import QUERY_TOKENS, EmbeddingTask, PerplexityTask, use_exact_attention, windows

P = 2
ITERS = 8  # Lloyd iterations per codebook (the 2-core machine this ran on is slow)
# name, config levers, codebook (group g, centroids K) or None
SETTINGS = [
    ("edge: segment 1, 4-bit", dict(segment_size=1, summary_bits=4), None),
    ("segment 1, 3-bit", dict(segment_size=1, summary_bits=3), None),
    ("segment 1, 2-bit", dict(segment_size=1, summary_bits=2), None),
    ("segment 1, 2-bit, sinks 4, halo 16", dict(segment_size=1, summary_bits=2, sink_tokens=4, halo=16), None),
    ("segment 2, 4-bit", dict(segment_size=2, summary_bits=4), None),
    ("segment 4, 4-bit", dict(segment_size=4, summary_bits=4), None),
    ("segment 4, 4-bit, sinks 4, halo 16", dict(segment_size=4, summary_bits=4, sink_tokens=4, halo=16), None),
    ("codebook g=2 K=16 (2 bit/value)", dict(segment_size=1), (2, 16)),
    ("codebook g=4 K=256 (2 bit/value)", dict(segment_size=1), (4, 256)),
    ("codebook g=4 K=256, sinks 4, halo 16", dict(segment_size=1, sink_tokens=4, halo=16), (4, 256)),
    ("codebook g=8 K=256 (1 bit/value)", dict(segment_size=1), (8, 256)),
    ("codebook g=4 K=16 (1 bit/value)", dict(segment_size=1), (4, 16)),
    ("segment 1, 3-bit, sinks 4", dict(segment_size=1, summary_bits=3, sink_tokens=4), None),
    ("codebook g=2 K=16, sinks 4", dict(segment_size=1, sink_tokens=4), (2, 16)),
    ("codebook g=4 K=256, sinks 4", dict(segment_size=1, sink_tokens=4), (4, 256)),
]


def load_task(name, n, tokens):
    tok, model = models.load(name)
    tok.model_max_length = 10**9
    ids = tok(calibrate.evaluation_text(), add_special_tokens=False)["input_ids"]
    if name == "smollm2":
        return tok, PerplexityTask("SmolLM2-135M", model, torch.tensor(windows(ids, n, tokens)))
    body = tokens - 2
    wins = windows(ids, n, body, QUERY_TOKENS)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    docs = torch.tensor([[cls] + w[:body] + [sep] for w in wins])
    queries = torch.tensor([[cls] + w[body:] + [sep] for w in wins])
    return tok, EmbeddingTask("all-MiniLM-L6-v2", model, docs, queries)


def run_model(name, n, tokens, folder, settings):
    t0 = time.perf_counter()
    tok, task = load_task(name, n, tokens)
    shape = cost.ModelShape.from_config(task.model.config)
    exchange = calibrate.resolve_exchange(task.model, "auto")
    rows = calibrate.calibration_rows(task.model, tok, exchange)
    print(f"{name}: exact and calibration rows in {time.perf_counter() - t0:.0f}s "
          f"({rows[0].shape[1]} rows per layer, exchange {exchange})", file=sys.stderr)
    files = {}
    full = cost.full_exchange_bytes_per_layer(shape, tokens, P, dtype=torch.float16)
    out = []
    for label, levers, cb in settings:
        t1 = time.perf_counter()
        if cb is not None and cb not in files:
            files[cb] = str(Path(folder) / f"{name}-g{cb[0]}-k{cb[1]}.codebook")
            calibrate.calibrate(task.model, tok, files[cb], group=cb[0], centroids=cb[1], exchange=exchange,
                                iters=ITERS, rows=rows)
        config = PrismConfig(P, exchange="auto", **levers, **({"summary_codebook": files[cb]} if cb else {}))
        hf.configure(task.model, config)
        config = hf.config_of(task.model)
        try:
            metrics = task.evaluate()
        finally:
            use_exact_attention(task.model)
        sent = cost.bytes_per_layer(shape, tokens, config, causal=task.causal, dtype=torch.float16)
        out.append(dict(setting=label, exchange=config.exchange, bytes=sent[0], frac=sum(sent) / sum(full),
                        metrics=metrics))
        print(f"  {label}: {sent[0]} B, {metrics} ({time.perf_counter() - t1:.0f}s)", file=sys.stderr)
    return task, out


def table(task, rows) -> str:
    if task.causal:
        head = "| setting | exchange | bytes/layer (rank 0) | of fp16 full exchange | ppl / exact |\n| --- | --- | --- | --- | --- |"
        body = [f"| {r['setting']} | {r['exchange']} | {r['bytes']:,} | {100 * r['frac']:.1f}% | "
                f"{r['metrics']['quality']:.4f} |" for r in rows]
    else:
        head = ("| setting | exchange | bytes/layer (rank 0) | of fp16 full exchange | mean cos | min cos |\n"
                "| --- | --- | --- | --- | --- | --- |")
        body = [f"| {r['setting']} | {r['exchange']} | {r['bytes']:,} | {100 * r['frac']:.1f}% | "
                f"{r['metrics']['cos_mean']:.4f} | {r['metrics']['cos_min']:.4f} |" for r in rows]
    return "\n".join([head, *body])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=2, help="SmolLM2 windows of 2048 tokens")
    ap.add_argument("--passages", type=int, default=16, help="MiniLM passages of 512 tokens")
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--only", help="comma-separated indices into SETTINGS (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="write the tables (markdown) here")
    args = ap.parse_args(argv)
    settings = SETTINGS if not args.only else [SETTINGS[int(i)] for i in args.only.split(",")]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sizes = {"smollm2": (args.windows, 2048), "minilm": (args.passages, 512)}
    parts = []
    folder = tempfile.mkdtemp(prefix="prism-lowbit-")
    for name in args.models.split(","):
        n, tokens = sizes[name]
        task, rows = run_model(name, n, tokens, folder, settings)
        what = (f"{n} windows x {tokens} tokens, exact perplexity {task.ref['ppl']:.3f}" if task.causal else
                f"{n} passages x {tokens} tokens")
        parts.append(f"## {task.name}, {P} partitions, N = {tokens}\n\n{what}\n\n{table(task, rows)}\n")
    text = "\n".join(parts)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
