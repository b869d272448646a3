"""s2m3-place: place the suite's shared modules on devices and predict each task's latency.

    s2m3-place --devices devices.yaml --tasks tasks.yaml [--planner optimal|greedy] [--branch-and-bound]
        [--json plan.json]

The files' formats: `prism_ops.s2m3.files`. Requests arrive at the first device. Everything is
checked (unknown models or parts, a module larger than every device, cyclic or dangling task
graphs, bad numbers) before any model is built; a bad file exits with code 2. The default
planner is optimal for the latency objective (a MILP, `prism_ops.s2m3.solver`); a tasks file's
`burst` or `rates` makes it minimise the mean latency under that load (simulated, `prism_ops.s2m3.load`),
and s2m3-place then prints the predicted latency of each task and of the whole burst, how busy
each device is and every plan it compared (the one-device plans among them). A tasks file's
`prism` entries go into the plan; s2m3-place prints the setting each resolves to.
`--branch-and-bound` also runs branch and bound (small instances) as a certificate. The planning itself:
`prism_ops.s2m3.planner.make_plan`.

Every field of both files is checked first (types, ranges, finiteness, unknown fields, names);
files over 1 MiB, not UTF-8, directories and FIFOs are refused. A bad file or flag exits with
code 2 and one line naming the file, the field, the value and what is allowed; `--debug` adds
the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

import torch

from prism_ops._files import unwritable
from prism_ops.s2m3.placement import InputError
from prism_ops.s2m3.planner import PLANNERS, PlanReport, make_plan


def print_report(r: PlanReport) -> None:
    print(f"s2m3-place: {r.num_models} models, {len(r.modules)} unique modules on {len(r.devices)} devices")
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
    print(f"objective ({r.planner}): {r.plan['objective_s']:.4f} s, solved in {r.solve_s:.3f} s")
    if "optimal_s" in r.plan:
        gap = r.plan["objective_s"] / r.plan["optimal_s"] - 1 if r.plan["optimal_s"] > 0 else 0.0
        print(f"branch and bound: {r.plan['optimal_s']:.4f} s in {r.branch_and_bound_s:.3f} s; gap {gap:.2%}")
    for part, group, cfg in r.prism:  # what every rank of the group will run (preset resolved)
        levers = ", ".join(f"{k}={v}" for k, v in cfg.as_dict().items() if k != "num_partitions")
        print(f"prism {part} over {', '.join(group)}: {levers}")
    if r.load == "burst":
        for name, latency in r.load_latency:
            print(f"predicted burst latency {name}: {latency:.4f} s (mean of its requests)")
        print(f"predicted whole burst: {r.burst_s:.4f} s; mean latency {r.plan['load_objective_s']:.4f} s")
        total = sum(b for _, b in r.device_busy) or 1.0
        print("busy per device: " + ", ".join(f"{name} {b:.4f} s ({b / total:.0%})" for name, b in r.device_busy))
    elif r.load == "rates":
        for name, latency, guess in r.load_latency:
            print(f"predicted steady latency {name}: {latency:.4f} s (simulated; M/G/1 estimate {guess:.4f} s)")
        print(f"predicted mean latency: {r.plan['load_objective_s']:.4f} s")
        print("busy share per device: " + ", ".join(f"{name} {b:.0%}" for name, b in r.device_busy))
    if r.candidates:
        print(f"plans compared (mean latency under the load): chose {r.chosen}; "
              + ", ".join(f"{name} {c:.4f} s" for name, c in r.candidates))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="s2m3-place", description=__doc__.split("\n\n")[0],
                                 epilog="Files: YAML (.yaml, .yml) or JSON, UTF-8, at most 1 MiB each.")
    ap.add_argument("--devices", required=True, help="devices file: devices, links, default_link")
    ap.add_argument("--tasks", required=True, help="tasks file: models, custom, size, input_bytes, compute_s, "
                                                    "burst or rates")
    ap.add_argument("--planner", choices=PLANNERS, default="optimal",
                    help="optimal (default: MILP, then local search under a load) or greedy")
    ap.add_argument("--branch-and-bound", action="store_true",
                    help="also solve by branch and bound (small instances), as a certificate")
    ap.add_argument("--json", help="write the plan here")
    ap.add_argument("--debug", action="store_true", help="print the traceback of an error too")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # modules are profiled on one thread
    try:
        if args.json is not None:
            check_writable(args.json)
        report = make_plan(args.devices, args.tasks, with_branch_and_bound=args.branch_and_bound,
                           planner=args.planner)
        print_report(report)
        if args.json is not None:
            write_plan(args.json, report.plan)
    except InputError as e:  # a PlacementError too
        fail(e, args.debug, 2)
    except Exception as e:  # noqa: BLE001 - a bug: one line, unless --debug asks for the traceback
        fail(e, args.debug, 1, f"internal error ({type(e).__name__}): ")


def fail(e: BaseException, debug: bool, code: int, what: str = "") -> None:
    """Exit with `code` and one line (the traceback first with --debug)."""
    if debug:
        traceback.print_exception(e, file=sys.stderr)
    print(f"s2m3-place: error: {what}{e}", file=sys.stderr)
    sys.exit(code)


def check_writable(path: str) -> None:
    """Refuse a --json path that cannot be written, before the planning's work."""
    if not path or unwritable(path) is not None:
        raise InputError(f"--json {path!r}: cannot be written (give a file in an existing, writable folder)")


def write_plan(path: str, plan: dict) -> None:
    try:
        with open(path, "w") as f:
            json.dump(plan, f, indent=1)
    except OSError as e:
        raise InputError(f"--json {path!r}: cannot be written ({e.strerror})") from None


if __name__ == "__main__":
    main()
