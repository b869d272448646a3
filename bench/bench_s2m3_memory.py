"""S2M3 memory: the suite's models loaded with module sharing against one copy per model.

    python bench/bench_s2m3_memory.py            # full-size suite (ViT-B/16, ViT-S/16, MiniLM, Whisper-tiny)

Single task: the models of one task share (e.g. the 4 image classifiers). Multi-task: all 10
models share. Bytes are parameters plus buffers (`prism_ops.s2m3.modules.module_bytes`).
Paper (S2M3): -50% single-task, -62% multi-task, on its own suite.
"""

import argparse
import json

from prism_ops.s2m3.modules import Registry
from prism_ops.s2m3.suite import MODELS, SUITE, TASKS, Model


def report(names, size):
    reg = Registry()
    for n in names:
        Model(n, size, reg)
    return reg.memory_report()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=("full", "tiny"), default="full")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = {}
    print("| models | loaded / asked | one copy per model (MB) | shared (MB) | saved |")
    print("| --- | --- | --- | --- | --- |")
    for label, names in [*[(t, [m for m, (task, _) in MODELS.items() if task == t]) for t in TASKS],
                         (f"all {len(SUITE)} models, {len(TASKS)} tasks", list(SUITE))]:
        r = rows[label] = report(names, args.size)
        print(f"| {label} ({len(names)}) | {r['modules_loaded']} / {r['modules_requested']} | "
              f"{r['bytes_one_copy_per_model'] / 1e6:.1f} | {r['bytes_shared'] / 1e6:.1f} | {r['saved']:.1%} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
