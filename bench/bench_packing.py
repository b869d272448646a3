"""Whole texts packed end to end against a padded batch: milliseconds a text, MiniLM, one thread.

    .venv-test/bin/python bench/bench_packing.py [--repeats 20]

The service runs embedding texts under `--split-min-tokens` whole on one rank; several of them
go through the exact model either right-padded to the longest (`serving.batching.padded_request`,
sorted by length as `deal` hands them out) or packed into one sequence under a block-diagonal
mask (`hf.model.packed_hidden`, the default where the model packs). The texts are bench_serve's
short ones (5 to 21 tokens), 8 to 64 of them. Both are timed in this process, taking turns, and
the figure that matters is packed / padded per row. From about 256 tokens packed the dense
attention under the mask starts to cost more than the padding saved (`engine.PACK_TOKENS`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import SHORT  # noqa: E402

from prism_ops.hf.model import packed_hidden  # noqa: E402
from prism_ops.models import load  # noqa: E402


def per_text_ms(f, n_texts: int, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(3):
            f()
        t0 = time.perf_counter()
        for _ in range(repeats):
            f()
    return 1000 * (time.perf_counter() - t0) / repeats / n_texts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok, model = load("minilm")
    print("| texts | tokens | padded (ms a text) | packed (ms a text) | packed / padded |\n| --- | --- | --- | --- | --- |")
    for k in (1, 2, 4, 8):
        texts = sorted(SHORT * k, key=lambda t: len(tok(t)["input_ids"]))
        rows = [tok(t)["input_ids"] for t in texts]
        padded = tok(texts, padding=True, return_tensors="pt")
        a, b = float("inf"), float("inf")
        for _ in range(2):  # taking turns; the faster of two for each
            a = min(a, per_text_ms(lambda: model(**padded), len(rows), args.repeats))
            b = min(b, per_text_ms(lambda: packed_hidden(model, rows), len(rows), args.repeats))
        print(f"| {len(rows)} | {sum(map(len, rows))} | {a:.2f} | {b:.2f} | {b / a:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
