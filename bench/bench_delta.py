"""Delta codes (`PrismConfig.delta_codebook`, issue: summaries at a quarter of `edge`'s bytes) on
all-MiniLM-L6-v2: mean / least cosine of sentence embeddings to exact, and bytes against `edge`,
at N = 512 and P = 2, 4, 8, on passages of the evaluation text (the calibration slice left out).

    python bench/bench_delta.py [--codes bench/out/minilm.delta] [--passages 16] [--json FILE]

The codes are calibrated first when the file is missing (`prism-calibrate --model minilm
--delta-codes --out FILE`, about 2 minutes on 2 cores). Simulated partitions (the MPI ranks do
not send delta codes yet); bytes are all ranks' payloads per layer, averaged over the layers,
with an fp16 model (`prism_ops.cost`), as a share of `edge`'s in the same cell.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from prism_ops import calibrate, cost, hf
from prism_ops.config import PrismConfig
from prism_ops.eval import tasks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codes", type=Path, default=Path("bench/out/minilm.delta"))
    ap.add_argument("--passages", type=int, default=16)
    ap.add_argument("--partitions", default="2,4,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    task = tasks.minilm(args.passages, 512, calibrate.evaluation_text())
    if not args.codes.is_file():
        args.codes.parent.mkdir(parents=True, exist_ok=True)
        print(f"calibrating {args.codes} (prism-calibrate --model minilm --delta-codes)", file=sys.stderr)
        calibrate.calibrate_delta(task.model, task.tokenizer, args.codes)
        tasks.use_exact_attention(task.model)
    shape = tasks.shape_of(task)
    rows = []
    print("| P | setting | bytes/layer | of edge | mean cos | min cos |\n| --- | --- | --- | --- | --- | --- |")
    for P in (int(p) for p in args.partitions.split(",")):
        edge = None
        for label, config in [("edge", PrismConfig.from_preset(P, "edge")),
                              ("delta codes", PrismConfig(P, 1, exchange="auto", delta_codebook=args.codes))]:
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
