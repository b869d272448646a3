"""prism-serve: S2M3 requests routed through shared modules spread over MPI ranks.

    prism-place --devices devices.yaml --tasks tasks.yaml --json plan.json
    mpirun -n 3 prism-serve --plan plan.json --requests requests.jsonl [--devices devices.yaml]

One rank per device of the plan. Output: one JSON line per request, in request order:
`{"id", "model", "output", "latency_s"}`. A bad plan or request file exits with code 2: so does a
plan made for another suite version, one whose devices differ from `--devices` (rank i is device
i), or one whose PRISM-spread encoders have overlapping rank groups. The
serving itself: `prism_ops.s2m3.server`.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from prism_ops.distributed import Communicator, guarded
from prism_ops.s2m3.server import serve_requests


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="prism-serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", required=True, help="a plan written by prism-place --json")
    ap.add_argument("--requests", help="JSON lines {id, model, seed}; default: standard input")
    ap.add_argument("--devices", help="the devices file, in rank order: the plan must name the same devices")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    comm = Communicator()

    def run():
        for line in serve_requests(comm, args.plan, args.requests, args.devices) or []:
            print(json.dumps(line))
        sys.stdout.flush()

    sys.exit(guarded(comm, run, prog="prism-serve"))


if __name__ == "__main__":
    main()
