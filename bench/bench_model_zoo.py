"""How far prism attention's exact preset is from each family's own attention, and what a
sliding window saves on the wire.

    PYTHONPATH=.:tests python bench/bench_model_zoo.py

1. For every supported family of tests/model_zoo.py (tiny random weights, T = 40, a padded batch
   of 2): max |prism - reference| / max |reference| of the output (logits for decoders), with
   `hf.configure(model, num_partitions=2, preset="exact")` against SDPA (eager for Gemma 2).
2. The cost model's bytes per layer (`prism_ops.cost.bytes_per_layer`) of a Mistral-7B-shaped
   decoder at 4 ranks, with and without its 4096-token window, for the `edge` preset.
"""

from __future__ import annotations

import torch

from prism_ops import PrismConfig, cost, hf

from model_zoo import FAMILIES, inputs


def relative_errors() -> list[tuple[str, float]]:
    out = []
    for f in FAMILIES:
        if f.refused:
            continue
        model = f.build()
        batch = inputs(f)
        with torch.no_grad():
            ref = model(**batch)
            hf.configure(model, num_partitions=2, preset="exact")
            got = model(**batch)
        ref, got = (x.logits if f.kind == "decoder" else x.last_hidden_state for x in (ref, got))
        rows = batch["attention_mask"].bool() if "attention_mask" in batch else slice(None)
        out.append((f.id, ((got - ref)[rows].abs().max() / ref[rows].abs().max()).item()))
    return out


def window_traffic(num_tokens: int, window: int = 4096, ranks: int = 4) -> tuple[int, int]:
    shape = cost.ModelShape(hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128, ffn_size=14336,
                            mlp_matrices=3, num_layers=32)
    config = PrismConfig.from_preset(ranks, "edge").replace(exchange="kv")
    full = sum(cost.bytes_per_layer(shape, num_tokens, config, causal=True))
    windowed = sum(cost.bytes_per_layer(shape, num_tokens, config, causal=True, window=window))
    return full, windowed


def main():
    print("| family | max rel. difference, exact preset at 2 partitions |")
    print("| --- | --- |")
    for name, err in relative_errors():
        print(f"| {name} | {err:.1e} |")
    print()
    print("| N | bytes/layer, no window | with window 4096 | ratio |")
    print("| --- | --- | --- | --- |")
    for n in (8192, 16384, 32768, 65536):
        full, windowed = window_traffic(n)
        print(f"| {n} | {full} | {windowed} | {windowed / full:.3f} |")


if __name__ == "__main__":
    main()
