"""prism-eval --budgets: every budgeted preset at every sequence length N and rank count P, against
its stated budget (`config.PRESET_BUDGETS`), on the real models.

A cell is (model, N, P). SmolLM2 runs as many windows of N tokens as fit in `tokens` (at least
one) and reports perplexity over the exact model's on the same windows; MiniLM runs `passages`
passages of N tokens (N at most 512, its context) of `calibrate.evaluation_text()` (the slice the
tuned preset's delta codes are fitted on left out) and reports the mean and least cosine of the
sentence embeddings to exact. Bytes are what all ranks send per layer with an fp16 model
(`prism_ops.cost`), also as a share of `edge`'s in the same cell.

The table goes into docs/EVAL.md after `report.MARKER` (the grid's report keeps it), the rows into
budgets.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .. import cost, hf
from ..calibrate import evaluation_text
from ..config import PRESET_BUDGETS, PRESETS, PrismConfig
from . import tasks
from .report import MARKER



def within(metrics: dict, budget: dict) -> bool:
    if "ppl" in metrics:
        return metrics["quality"] <= budget["ppl"]
    return metrics["cos_mean"] >= budget["cos_mean"] and metrics["cos_min"] >= budget["cos_min"]


def _task(model: str, N: int, tokens: int, passages: int):
    if model == "minilm":  # the tuned preset's codes are fitted on the calibration slice: leave it out
        return tasks.minilm(passages, N, evaluation_text())
    if model == "tiny-encoder":
        return tasks.LOADERS[model](passages, N)
    return tasks.LOADERS[model](max(1, tokens // N), N)


def run(models, lengths, partitions, presets, *, tokens: int, passages: int, progress=True) -> list[dict]:
    """One row per (model, N, P, preset): quality, budget, bytes."""
    rows = []
    cells = [(m, N) for m in models for N in lengths[m]]
    bar = tqdm(total=len(cells) * len(partitions) * len(presets), desc="budgets", unit="run", file=sys.stderr,
               disable=not progress)
    for model, N in cells:
        task = _task(model, N, tokens, passages)
        shape = tasks.shape_of(task)
        if any(PRESETS[p].get("dense_layers") == "auto" for p in presets):
            tasks.calibrated_dense_layers(task, model)  # tuned's layers: calibrated once per model, cached
        if any(PRESETS[p].get("delta_codebook") == "auto" for p in presets):
            tasks.calibrated_delta_codes(task, model)  # tuned's codes for an encoder's short requests, cached
        for P in partitions:
            cell = []
            for preset in presets:
                t0 = time.perf_counter()
                config = hf.configure(task.model, PrismConfig.from_preset(P, preset)).config
                metrics = task.evaluate()
                tasks.use_exact_attention(task.model)
                sent = sum(cost.bytes_per_layer(shape, N, config, causal=task.causal, dtype=torch.float16))
                cell.append({"model": task.name, "key": model, "tokens": N, "partitions": P, "preset": preset,
                             "exchange": config.exchange, "dense_layers": list(config.dense_layers),
                             "delta_codes": config.for_tokens(N).delta_rows is not None,
                             "metrics": metrics, "budget": PRESET_BUDGETS[preset],
                             "within": within(metrics, PRESET_BUDGETS[preset]), "bytes": sent,
                             "sequences": len(task.windows) if hasattr(task, "windows") else len(task.docs),
                             "seconds": time.perf_counter() - t0})
                bar.update(1)
            edge = next((r["bytes"] for r in cell if r["preset"] == "edge"), None)
            for r in cell:
                if edge:
                    r["of_edge"] = r["bytes"] / edge
            rows += cell
    bar.close()
    return rows


def markdown(rows: list[dict], command: str) -> str:
    out = [MARKER, "", "## Preset budgets at every N and P", "", f"Command: `{command}`", "",
           "Each budgeted preset against its stated budget (`prism_ops.config.PRESET_BUDGETS`): SmolLM2 "
           "perplexity over exact on the same windows, MiniLM mean / least cosine of sentence embeddings to "
           "exact. bytes: all ranks' payloads per layer with an fp16 model (`prism_ops.cost`); of edge: the "
           "same over edge's in the cell. Simulated partitions in one process (the rows the MPI runtime sends).",
           ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        ppl = "ppl" in mine[0]["metrics"]
        out += [f"### {model}", "",
                f"{'windows' if ppl else 'passages'} per cell: " + ", ".join(
                    f"N = {N}: {next(r['sequences'] for r in mine if r['tokens'] == N)}"
                    for N in dict.fromkeys(r["tokens"] for r in mine)), ""]
        dense = next((r["dense_layers"] for r in mine if r["dense_layers"]), None)
        if dense:
            out += [f"Dense layers (calibrated, `prism-calibrate --dense-layers`): {', '.join(map(str, dense))}.", ""]
        head = "ppl / exact | budget" if ppl else "mean cos | min cos | budget"
        out += [f"| preset | N | P | {head} | within | bytes/layer | of edge |",
                "|" + " --- |" * (8 if ppl else 9)]
        for r in mine:
            m, b = r["metrics"], r["budget"]
            q = (f"{m['quality']:.4f} | <= {b['ppl']}" if ppl else
                 f"{m['cos_mean']:.4f} | {m['cos_min']:.4f} | >= {b['cos_mean']} / {b['cos_min']}")
            out.append(f"| {r['preset']} | {r['tokens']} | {r['partitions']} | {q} | "
                       f"{'yes' if r['within'] else '**no**'} | {r['bytes']:,.0f} | {100 * r.get('of_edge', 0):.1f}% |")
        missed = [r for r in mine if not r["within"]]
        out += ["", "Outside the budget: " + ("; ".join(f"{r['preset']} at N = {r['tokens']}, P = {r['partitions']}"
                                                      for r in missed) if missed else "none") + ".", ""]
    return "\n".join(out)


def write(rows: list[dict], out_dir: Path, command: str) -> list[Path]:
    """The table into EVAL.md after MARKER (the grid's part above it kept), the rows into budgets.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "EVAL.md", out_dir / "budgets.json"
    head = md.read_text().split(MARKER)[0].rstrip() + "\n\n" if md.exists() else "# PRISM quality on real models\n\n"
    md.write_text(head + markdown(rows, command))
    js.write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    return [md, js]
