"""prism-eval's work: every setting of the grid on each model, then the report and the plots.

    results = evaluate({"minilm": (64, 256)}, grid.build([4], [16]), Path("docs"), "prism-eval ...")
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm

from .. import cost, hf
from . import report, tasks


def run_task(task, rows, progress) -> dict:
    """Every setting on one task: quality, and bytes and FLOPs from the cost model."""
    shape = tasks.shape_of(task)
    results, skipped = [], []
    for s in rows:
        try:
            config = hf.configure(task.model, s.config()).config  # exchange "auto" resolved to "kv" or "hidden"
        except ValueError as e:  # e.g. hidden-feature exchange on a rotary-embedding model
            skipped.append(f"{s.method} ({e})")
            progress.update(1)
            continue
        metrics = task.evaluate()
        tasks.use_exact_attention(task.model)
        traffic = cost.traffic_ratio(shape, task.tokens, config, causal=task.causal)
        flops = cost.compute_ratio(shape, task.tokens, config, causal=task.causal)
        results.append({
            "method": s.method, "partitions": s.num_partitions, "segment_size": s.segment_size,
            "levers": s.label(), "exchange": config.exchange, "quality": metrics["quality"],
            "metrics": metrics, "bytes": traffic, "flops": flops,
        })
        progress.update(1)
    return {"rows": results, "skipped": sorted(set(skipped))}


def evaluate(sizes: dict, rows: list, out: Path, command: str) -> list[dict]:
    """Run `rows` on each model of sizes {model: (sequences, tokens)}; write the report to `out`."""
    results = []
    t0 = time.perf_counter()
    for m, (n, length) in sizes.items():
        print(f"loading {m} ...", file=sys.stderr)
        task = tasks.LOADERS[m](n, length)
        describe = (f"{len(task.docs)} passages x {task.tokens} tokens; exact model's retrieval recall@1 "
                    f"{task.ref['recall@1']:.3f}" if hasattr(task, "docs") else
                    f"{len(task.windows)} windows x {task.tokens} tokens; exact perplexity {task.ref['ppl']:.3f}")
        with tqdm(total=len(rows), desc=m, unit="setting", file=sys.stderr) as bar:
            res = run_task(task, rows, bar)
        res.update(model=task.name, key=m, metric=task.metric, tokens=task.tokens, describe=describe)
        results.append(res)
    paths = report.write(results, out, command)
    print(f"{sum(len(r['rows']) for r in results)} settings in {time.perf_counter() - t0:.0f}s; wrote "
          + ", ".join(str(p) for p in paths))
    for res in results:
        best = report.best_within_target(res["rows"], res["metric"])
        if best:
            print(f"{res['model']}: best at 4 partitions within 15% bytes: {best['method']} "
                  f"(segment size {best['segment_size']}) {res['metric']} {best['quality']:.4f} "
                  f"at {100 * best['bytes']:.1f}% bytes")
    return results
