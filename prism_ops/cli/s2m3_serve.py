"""s2m3-serve: S2M3 requests routed through shared modules spread over MPI ranks (not the
OpenAI-style HTTP service, which is `prism-run --serve`).

    s2m3-place --devices devices.yaml --tasks tasks.yaml --json plan.json
    mpirun -n 3 s2m3-serve --plan plan.json --requests requests.jsonl [--devices devices.yaml]

One rank per device of the plan. Output: one JSON line per request, in request order:
`{"id", "model", "output", "latency_s"}`. A bad plan or request file exits with code 2: so does a
plan made for another suite version, one whose devices differ from `--devices` (rank i is device
i), or one whose PRISM-spread encoders have overlapping rank groups. The
serving itself: `prism_ops.s2m3.server`.

A plan's `prism` entry `{"devices": [...], "preset": "edge", ...}` runs exactly what
`PrismConfig.from_preset` gives for its preset, segment size and levers: a segment size or lever
given beside a preset wins over the preset's value; with neither a preset nor a segment size the
entry runs at segment size 16 (`prism_ops.s2m3.plan.DEFAULT_SEGMENT_SIZE`).

Rank 0 reads and checks every input before any model loads (every field: types, names, ranges,
unknown fields) and tells the other ranks, so all ranks stop together: exit code 2 and one line
naming the flag or file, the field, the value and what is allowed (`--debug` adds the
traceback). Limits: plan and devices files 1 MiB, UTF-8; request lines 4 KiB, all requests 16
MiB; an id is a string of at most 256 characters or a whole number, a seed a whole number in
[0, 2^63).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback

import torch

from prism_ops.distributed.comm import DEFAULT_TIMEOUT_S, Communicator
from prism_ops.distributed.faults import BadInput, guarded
from prism_ops.s2m3.server import serve_requests


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="s2m3-serve", description=__doc__.split("\n\n")[0],
                                 epilog="Limits: plan and devices files 1 MiB (UTF-8 YAML or JSON); request "
                                        "lines 4 KiB each, 16 MiB in all.")
    ap.add_argument("--plan", required=True, help="a plan written by s2m3-place --json")
    ap.add_argument("--requests", help="JSON lines {id, model, seed}; default: standard input")
    ap.add_argument("--devices", help="the devices file, in rank order: the plan must name the same devices")
    ap.add_argument("--debug", action="store_true", help="print the traceback of a bad input's error too")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                    help=f"seconds a rank may go unheard before the job ends, naming it (default "
                         f"{DEFAULT_TIMEOUT_S:g}); long work never times out")
    args = ap.parse_args(argv)
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        ap.error(f"--timeout must be a finite number of seconds > 0, got {args.timeout}")
    torch.set_num_threads(1)
    comm = Communicator(timeout_s=args.timeout)

    def run():
        try:
            lines = serve_requests(comm, args.plan, args.requests, args.devices) or []
        except BadInput as e:
            if args.debug and e.__cause__ is not None:  # rank 0, where the input was read
                traceback.print_exception(e.__cause__, file=sys.stderr)
            raise
        for line in lines:
            print(json.dumps(line))
        sys.stdout.flush()

    sys.exit(guarded(comm, run, prog="s2m3-serve"))


if __name__ == "__main__":
    main()
