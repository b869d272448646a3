"""prism-eval: run the quality grid on each model and write docs/EVAL.md, eval.json and the plots;
with --budgets, every budgeted preset at every N and P against its stated budget (the table
below the grid in docs/EVAL.md, and budgets.json).

This file parses the arguments and checks every setting before any model loads; the work is
`prism_ops.eval.evaluate.evaluate`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from ..config import PRESET_BUDGETS
from ..eval import budgets, grid, tasks
from ..eval.evaluate import evaluate


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


FULL = dict(models="minilm,smollm2", partitions=[2, 4, 8], segment_sizes=[1, 4, 16, 64, 128], passages=64,
            tokens=256, windows=4, window_tokens=1024)
TINY = dict(models="tiny-encoder,tiny-decoder", partitions=[2, 4], segment_sizes=[1, 4, 16], passages=8,
            tokens=64, windows=2, window_tokens=64)


def parse(argv):
    ap = argparse.ArgumentParser(prog="prism-eval", description=__doc__)
    ap.add_argument("--models", help=f"comma-separated, from {sorted(tasks.LOADERS)} (default: minilm,smollm2)")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny random models and a small grid by default (seconds; for tests)")
    ap.add_argument("--partitions", type=_ints, help="default 2,4,8 (tiny: 2,4)")
    ap.add_argument("--segment-sizes", type=_ints, help="default 1,4,16,64,128 (tiny: 1,4,16)")
    ap.add_argument("--passages", type=int, help="encoder passages (default 64)")
    ap.add_argument("--tokens", type=int, help="tokens per encoder passage (default 256)")
    ap.add_argument("--windows", type=int, help="decoder perplexity windows (default 4)")
    ap.add_argument("--window-tokens", type=int, help="tokens per decoder window (default 1024)")
    ap.add_argument("--no-curves", action="store_true", help="only the paper's grid and the presets")
    ap.add_argument("--out", type=Path, default=Path("docs"), help="where EVAL.md, eval.json and the plots go")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--budgets", action="store_true",
                    help="every budgeted preset at every --lengths and --partitions against its budget")
    ap.add_argument("--lengths", type=_ints,
                    help="--budgets: decoder sequence lengths (default 512,2048,4096,8192; tiny: 64,128); "
                         "encoders run at --tokens")
    ap.add_argument("--budget-tokens", type=int, default=8192,
                    help="--budgets: decoder tokens per cell (windows of N tokens, at least one; default 8192)")
    args = ap.parse_args(argv)
    defaults = TINY if args.tiny else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.models = [m for m in args.models.split(",") if m]
    for m in args.models:
        if m not in tasks.LOADERS:
            ap.error(f"--models: unknown model {m!r}; choose from {sorted(tasks.LOADERS)}")
    if args.lengths is None:
        args.lengths = [64, 128] if args.tiny else [512, 2048, 4096, 8192]
    for name in ("passages", "tokens", "windows", "window_tokens", "budget_tokens"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def _sizes(args, model_name):
    if model_name in ("minilm", "tiny-encoder"):
        return args.passages, args.tokens
    return args.windows, args.window_tokens


def run(argv=None) -> list[dict]:
    """Run the evaluation; returns one result dict per model (also written to --out)."""
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "prism-eval " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    if args.budgets:
        return _budgets(args, command)
    rows = grid.build(args.partitions, args.segment_sizes, curves=not args.no_curves)
    sizes = {m: _sizes(args, m) for m in args.models}
    # Every setting is checked before a model is loaded.
    try:
        for m in args.models:
            grid.check_all(rows, sizes[m][1])
    except ValueError as e:
        sys.exit(f"prism-eval: {e}")
    return evaluate(sizes, rows, args.out, command)


def _budgets(args, command) -> list[dict]:
    encoders = ("minilm", "tiny-encoder")
    lengths = {m: [args.tokens] if m in encoders else args.lengths for m in args.models}
    for m, Ns in lengths.items():
        for N in Ns:
            if min(args.partitions) < 1 or max(args.partitions) > N:
                sys.exit(f"prism-eval: --partitions must be between 1 and N = {N} tokens, got {args.partitions}")
    rows = budgets.run(args.models, lengths, args.partitions, list(PRESET_BUDGETS), tokens=args.budget_tokens,
                       passages=args.passages)
    paths = budgets.write(rows, args.out, command)
    missed = [r for r in rows if not r["within"]]
    print(f"{len(rows)} runs, {len(missed)} outside their budget; wrote " + ", ".join(str(p) for p in paths))
    return rows


def main(argv=None) -> None:
    """Console entry point (`prism-eval`): exit status 0 on success."""
    run(argv)


if __name__ == "__main__":
    main()
