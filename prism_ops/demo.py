"""Demo: PRISM attention inside a real pretrained encoder (all-MiniLM-L6-v2), against exact.

Cuts CPython's own documentation text into passages, embeds each with the exact model (SDPA)
and with every attention layer run as PRISM over P simulated ranks, and prints how close the
sentence embeddings stay, with the share of per-layer traffic each setting sends. A few rows of
what `prism-eval` measures in full.

    prism-demo [--partitions 4] [--tokens 256] [--passages 16]       (prism_ops.cli.demo)
"""

from __future__ import annotations

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


def run_demo(partitions: int = 4, tokens: int = 256, passages: int = 16) -> None:
    """Print one row per setting of SETTINGS: traffic against full exchange and embedding cosines."""
    task = tasks.minilm(passages, tokens)
    shape = tasks.shape_of(task)
    print(f"all-MiniLM-L6-v2, {passages} passages x {task.tokens} tokens of pydoc text, "
          f"{partitions} simulated ranks")
    print(f"{'segment_size':>12} {'levers':>24} {'exchange':>8} {'bytes vs full':>13} {'mean cos':>9} "
          f"{'min cos':>8}")
    for segment_size, levers in SETTINGS:
        config = hf.configure(task.model, num_partitions=partitions, segment_size=segment_size, **levers).config
        m = task.evaluate()
        tasks.use_exact_attention(task.model)
        traffic = cost.traffic_ratio(shape, task.tokens, config)
        label = ", ".join(f"{k}={v}" for k, v in levers.items()) or "-"
        print(f"{config.segment_size:>12} {label:>24} {config.exchange:>8} {traffic:>13.1%} "
              f"{m['cos_mean']:>9.4f} {m['cos_min']:>8.4f}")
    print("segment_size 1 at full precision is exact attention: its error is fp32 rounding.")
