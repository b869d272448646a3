"""prism-place: place the suite's shared modules on devices and predict each task's latency.

    prism-place --devices devices.yaml --tasks tasks.yaml [--exact] [--json plan.json]

The files' formats: `prism_ops.s2m3.files`. Requests arrive at the first device. Everything is
checked (unknown models or parts, a module larger than every device, cyclic or dangling task
graphs) before any model is built; a bad file exits with code 2. The planning itself:
`prism_ops.s2m3.planner.make_plan`.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from prism_ops.s2m3.placement import PlacementError
from prism_ops.s2m3.planner import PlanReport, make_plan


def print_report(r: PlanReport) -> None:
    print(f"prism-place: {r.num_models} models, {len(r.modules)} unique modules on {len(r.devices)} devices")
    print("| module | device | MB | compute (s) |")
    print("| --- | --- | --- | --- |")
    for part, device, nbytes, compute in r.modules:
        print(f"| {part} | {device} | {nbytes / 1e6:.1f} | {compute:.4f} |")
    print("memory per device: " + ", ".join(f"{name} {used / 1e6:.1f} / {has / 1e6:.0f} MB"
                                            for name, used, has in r.device_memory))
    m = r.memory
    print(f"memory total: {m['bytes_shared'] / 1e6:.1f} MB shared, {m['bytes_one_copy_per_model'] / 1e6:.1f} MB "
          f"with one copy per model ({m['saved']:.1%} saved)")
    for name, latency in r.latency:
        print(f"predicted latency {name}: {latency:.4f} s")
    if "optimal_s" in r.plan:
        print(f"objective: greedy {r.plan['objective_s']:.4f} s, exact {r.plan['optimal_s']:.4f} s")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="prism-place", description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", required=True)
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--exact", action="store_true", help="also solve exactly (small instances)")
    ap.add_argument("--json", help="write the plan here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # modules are profiled on one thread
    try:
        report = make_plan(args.devices, args.tasks, exact=args.exact)
    except PlacementError as e:
        print(f"prism-place: error: {e}", file=sys.stderr)
        sys.exit(2)
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.plan, f, indent=1)


if __name__ == "__main__":
    main()
