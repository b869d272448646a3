"""prism-calibrate: fit a model's summary codebooks, or find its dense layers, on the shipped calibration text.

    prism-calibrate --model smollm2 --out smollm2.codebook [--group 4 --centroids 256]
    prism-run --model smollm2 --summary-codebook smollm2.codebook ...

    prism-calibrate --model minilm --delta-codes [--out minilm.delta] [--group 8 --centroids 1024]
    prism-run --model minilm --preset tuned ...      # the cached codes (prism-run also fits them on first use)
    prism-run --model minilm --segment-size 1 --delta-codebook minilm.delta ...

    prism-calibrate --model smollm2 --dense-layers [--count 3]   # once per model, cached
    prism-run --model smollm2 --preset tuned ...                  # (prism-run also does it on first use)

The files (`prism_ops.calibrate`) record the model's fingerprint; PrismConfig(summary_codebook=...)
, PrismConfig(delta_codebook=...) and dense_layers="auto" refuse them for any other model. Bad arguments exit with code 2 and a message.
"""

from __future__ import annotations

import argparse
import sys

import torch

from .. import calibrate, models


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="prism-calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm", help="minilm, smollm2 or a local Hugging Face folder")
    ap.add_argument("--out", help="the codebook file to write")
    ap.add_argument("--dense-layers", action="store_true",
                    help="instead of codebooks: the layers the tuned preset sends in full, into the cache")
    ap.add_argument("--count", type=int, help="with --dense-layers: how many (default a tenth of the layers)")
    ap.add_argument("--delta-codes", action="store_true",
                    help="with --out: a predictor and a residual codebook per layer (delta_codebook) instead of codebooks")
    ap.add_argument("--group", type=int, help="channels per code (default 4; 8 with --delta-codes)")
    ap.add_argument("--centroids", type=int,
                    help=f"centroids per group, a power of two <= {calibrate.MAX_CENTROIDS} (default 256; 1024 with "
                         "--delta-codes)")
    ap.add_argument("--exchange", choices=("kv", "hidden", "auto"), default="auto")
    ap.add_argument("--iters", type=int, help="k-means iterations (default 8; 20 with --delta-codes)")
    args = ap.parse_args(argv)
    defaults = (8, 1024, 20) if args.delta_codes else (4, 256, 8)
    for name, value in zip(("group", "centroids", "iters"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.delta_codes and args.dense_layers:
        ap.error("--delta-codes and --dense-layers are two calibrations: give one")
    if args.iters < 0:
        ap.error(f"--iters must be >= 0, got {args.iters}")
    if args.dense_layers == (args.out is not None) and not args.delta_codes:
        ap.error("give --out FILE (codebooks) or --dense-layers, one of them")
    if args.count is not None and not args.dense_layers:
        ap.error("--count goes with --dense-layers")
    torch.manual_seed(0)
    if args.dense_layers:
        try:
            tok, model = models.load(args.model)
            info = calibrate.dense_layers(model, tok, count=args.count)
        except ValueError as e:
            print(f"prism-calibrate: error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {info['path']}: dense layers {info['dense_layers']} of {len(info['errors'])} (relative attention "
              f"error of the tuned preset per layer: {info['errors']})")
        return 0
    try:
        tok, model = models.load(args.model)
        if args.delta_codes and args.out is None:  # into the cache, where the tuned preset finds them
            args.out = calibrate.delta_codes_path(model)
            if args.out is None:
                raise ValueError("the cache is off (PRISM_OPS_CACHE=off): give --out FILE")
            args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.delta_codes:
            info = calibrate.calibrate_delta(model, tok, args.out, group=args.group, centroids=args.centroids,
                                             iters=args.iters)
        else:
            info = calibrate.calibrate(model, tok, args.out, group=args.group, centroids=args.centroids,
                                       exchange=args.exchange, iters=args.iters)
    except ValueError as e:
        print(f"prism-calibrate: error: {e}", file=sys.stderr)
        return 2
    bits = info["centroids"].bit_length() - 1
    kind = "delta codes: " if args.delta_codes else ""
    print(f"wrote {args.out}: {kind}{info['layers']} layers, {info['exchange']} rows, {info['group']} channels per "
          f"{bits}-bit code ({bits / info['group']:g} bits per value), fitted on {info['rows']} rows per layer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
