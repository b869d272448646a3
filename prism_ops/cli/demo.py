"""prism-demo: PRISM attention inside the real all-MiniLM-L6-v2 encoder, against exact attention.

    prism-demo [--partitions 4] [--tokens 256] [--passages 16]
"""

from __future__ import annotations

import argparse

from ..demo import run_demo


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="prism-demo", description=__doc__.split("\n")[0])
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--passages", type=int, default=16)
    args = ap.parse_args(argv)
    run_demo(args.partitions, args.tokens, args.passages)


if __name__ == "__main__":
    main()
