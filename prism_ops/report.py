"""prism-run's report: the result, the bytes every layer sent against full exchange, the time per
phase, and (with --json) the same as one JSON object on the last line.

    obj = build_report(result, model_name=..., model=model, tokenizer=tok, config=config, ...)
    print_report(obj, file=sys.stdout, json_line=True)
"""

from __future__ import annotations

import json
import sys

import torch

from . import cost
from .config import PrismConfig
from .request_types import Result
from .hf import model_kind


def build_report(res: Result, *, model_name: str, model, tokenizer, config: PrismConfig, num_partitions: int,
                 output: str, dtype: torch.dtype, seconds: dict, simulated: bool) -> dict:
    """The JSON object of one request (`output`, `bytes`, `seconds`, ...) plus what the human
    report prints (under keys starting with an underscore, dropped from the JSON line)."""
    N = res.bounds[-1][1]
    config = config.for_tokens(N)  # what this request ran: every token a row under min_chunk_tokens per rank
    shape = cost.ModelShape.from_config(model.config)
    full = sum(cost.full_exchange_bytes_per_layer(shape, N, num_partitions, dtype=dtype))
    sent = res.bytes_per_layer
    if res.token_ids is not None:
        out = {"text": tokenizer.decode(res.token_ids[0], skip_special_tokens=True), "token_ids": res.token_ids[0]}
    else:
        out = res.output[0].tolist()
    return {"model": model_name, "partitions": num_partitions, "segment_size": config.segment_size,
            "dense_layers": list(config.dense_layers), "output": out,
            "bytes": {"sent_per_layer": sent, "full_exchange_per_layer": [full] * len(sent)}, "seconds": seconds,
            "_kind": model_kind(model), "_exchange": config.exchange, "_tokens": N, "_simulated": simulated,
            "_output_name": output, "_vector": None if res.token_ids is not None else res.output[0].flatten(),
            "_shape": None if res.token_ids is not None else list(res.output[0].shape),
            "_seconds_per_rank": res.seconds_per_rank}


def print_report(obj: dict, file=sys.stdout, json_line: bool = False, verbose: bool = False) -> None:
    """The human report; the per-layer byte table only with verbose (else one summary line)."""
    where = "simulated in one process" if obj["_simulated"] else "MPI ranks"
    dense = f" (dense layers {', '.join(map(str, obj['dense_layers']))}: segment size 1)" if obj["dense_layers"] else ""
    print(f"prism-run: {obj['model']} ({obj['_kind']}), {obj['partitions']} partitions ({where}), "
          f"segment size {obj['segment_size']}{dense}, {obj['_exchange']} exchange, {obj['_tokens']} tokens", file=file)
    vec = obj["_vector"]
    if vec is None:
        out = obj["output"]
        print(f"generated {len(out['token_ids'])} tokens: {out['text']!r}", file=file)
    else:
        print(f"{obj['_output_name']} {obj['_shape']}: " + " ".join(f"{x:.4f}" for x in vec[:6].tolist())
              + f" ... (norm {vec.norm():.4f})", file=file)
    sent, full = obj["bytes"]["sent_per_layer"], obj["bytes"]["full_exchange_per_layer"]
    label = "sent (cost model)" if obj["_simulated"] else "sent (counted)"
    if verbose:
        print(f"{'layer':>5} {label:>18} {'full exchange':>14} {'ratio':>7}", file=file)
        for i, (b, f) in enumerate(zip(sent, full)):
            print(f"{i:>5} {b:>18,} {f:>14,} {b / f:>7.2%}", file=file)
        print(f"{'all':>5} {sum(sent):>18,} {sum(full):>14,} {sum(sent) / max(1, sum(full)):>7.2%}", file=file)
    else:
        print(f"bytes {label.removeprefix('sent ')}: {sum(sent):,} sent over {len(sent)} layers, "
              f"{sum(sent) / max(1, sum(full)):.2%} of full exchange's {sum(full):,} (--verbose: per layer)",
              file=file)
    print("seconds: " + "  ".join(f"{k} {v:.3f}" for k, v in obj["seconds"].items()), file=file)
    if verbose and obj.get("_seconds_per_rank"):
        print_seconds_per_rank(obj["_seconds_per_rank"], file)
    if json_line:
        print(json.dumps({k: v for k, v in obj.items() if not k.startswith("_")}), file=file)
    file.flush()


PHASES = ("scatter", "forward", "attention payload", "attention local", "attention wait", "attention remote",
          "decode", "gather", "total")


def print_seconds_per_rank(every: list, file=sys.stdout) -> None:
    """Each rank's seconds per phase (--verbose): where the time between the compute ceiling and
    the run goes. The attention phases are part of forward; forward less them is the rest of the
    model (projections, MLP, norms) and Python."""
    cols = [k for k in PHASES if any(k in t for t in every)]
    names = [k.removeprefix("attention ") for k in cols]
    print("rank " + " ".join(f"{n:>9}" for n in names) + "   (payload, local, wait, remote: inside forward)", file=file)
    for r, t in enumerate(every):
        print(f"{r:>4} " + " ".join(f"{t.get(k, 0.0):>9.3f}" for k in cols), file=file)
