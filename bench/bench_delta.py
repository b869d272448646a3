"""Delta codes (`PrismConfig.delta_codebook`, issue: summaries at a quarter of `edge`'s bytes) on
all-MiniLM-L6-v2: mean / least cosine of sentence embeddings to exact, and bytes against `edge`,
at N = 512 and P = 2, 4, 8, on passages of the evaluation text (the calibration slice left out).

    python bench/bench_delta.py [--passages 16] [--json FILE]

Rows: `edge`; every token as delta codes (the model's cached codes, fitted first when the cache
has none: `prism-calibrate --model minilm --delta-codes`, about 2 minutes on 2 cores); and the
`tuned` preset, which takes them up to 4 partitions. Simulated partitions (the MPI ranks send the
same rows: tests/hf/test_delta_codes.py); bytes are all ranks' payloads per layer, averaged over
the layers, with an fp16 model (`prism_ops.cost`), as a share of `edge`'s in the same cell.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from prism_ops import calibrate, cost, hf
from prism_ops.config import PrismConfig
from prism_ops.eval import tasks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=16)
    ap.add_argument("--partitions", default="2,4,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    task = tasks.minilm(args.passages, 512, calibrate.evaluation_text())
    codes = tasks.calibrated_delta_codes(task, "minilm")
    tasks.calibrated_dense_layers(task, "minilm")  # tuned's (its short requests send every layer alike)
    shape = tasks.shape_of(task)
    rows = []
    print("| P | setting | bytes/layer | of edge | mean cos | min cos |\n| --- | --- | --- | --- | --- | --- |")
    for P in (int(p) for p in args.partitions.split(",")):
        edge = None
        for label, config in [("edge", PrismConfig.from_preset(P, "edge")),
                              ("delta codes", PrismConfig(P, 1, exchange="auto", delta_codebook=codes)),
                              ("tuned", PrismConfig.from_preset(P, "tuned"))]:
            config = hf.configure(task.model, config).config
            try:
                m = task.evaluate()
            finally:
                tasks.use_exact_attention(task.model)
            sent = sum(cost.bytes_per_layer(shape, 512, config, dtype=torch.float16))
            edge = edge or sent
            rows.append(dict(P=P, setting=label, bytes=sent, of_edge=sent / edge, cos_mean=m["cos_mean"],
                             cos_min=m["cos_min"]))
            print(f"| {P} | {label} | {sent:,.0f} | {100 * sent / edge:.1f}% | {m['cos_mean']:.4f} | "
                  f"{m['cos_min']:.4f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
