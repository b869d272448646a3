"""Demo: PRISM attention inside a real pretrained encoder (all-MiniLM-L6-v2), against exact.

Cuts CPython's own documentation text into passages, embeds each with the exact model (SDPA)
and with every attention layer run as PRISM over P simulated ranks, and prints how close the
sentence embeddings stay, with the share of per-layer traffic each setting sends. A few rows of
what `prism-eval` measures in full.

    prism-demo [--partitions 4] [--tokens 256] [--passages 16]
"""

from __future__ import annotations

import argparse

from . import cost, hf
from .eval import tasks

# (segment_size, levers): exact, the paper's method, sinks, and the "edge" preset.
SETTINGS = [
    (1, {}),
    (4, {}),
    (16, {}),
    (64, {}),
    (16, {"sink_tokens": 4}),
    (None, {"preset": "edge"}),
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--passages", type=int, default=16)
    args = ap.parse_args(argv)
    task = tasks.minilm(args.passages, args.tokens)
    shape = tasks.shape_of(task)
    print(f"all-MiniLM-L6-v2, {args.passages} passages x {task.tokens} tokens of pydoc text, "
          f"{args.partitions} simulated ranks")
    print(f"{'segment_size':>12} {'levers':>24} {'exchange':>8} {'bytes vs full':>13} {'mean cos':>9} "
          f"{'min cos':>8}")
    for cs, levers in SETTINGS:
        hf.configure(task.model, num_partitions=args.partitions, segment_size=cs, **levers)
        s = task.model._prism_settings
        m = task.evaluate()
        tasks.exact(task.model)
        traffic, _ = cost.settings_ratios(shape, task.tokens, s)
        label = ", ".join(f"{k}={v}" for k, v in levers.items()) or "-"
        print(f"{s['segment_size']:>12} {label:>24} {s['exchange']:>8} {traffic:>13.1%} "
              f"{m['cos_mean']:>9.4f} {m['cos_min']:>8.4f}")
    print("segment_size 1 at full precision is exact attention: its error is fp32 rounding.")


if __name__ == "__main__":
    main()
