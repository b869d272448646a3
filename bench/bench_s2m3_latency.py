"""S2M3 routing under load: a burst of 12 mixed requests, and steady Poisson arrivals, served by 2
MPI ranks with a load-aware plan, against one rank running everything, in the same mpiexec run.

    mpiexec -n 2 python bench/bench_s2m3_latency.py [--repeats 3] [--arrivals 40] [--load 0.7]

Rank 0 profiles the suite's modules (full size, 1 thread, median of 3 after a warm-up) and plans for two equal devices with room
for everything (2 GB each) and a 1 Gbit/s link: for the burst with `solver.plan` under the
burst (one request of each of the 12 models, `load.Load(counts=...)`), for the steady arrivals
under their rates. The one-rank baseline is the plan with every module on rank 0, served by the
same scheduler (`Server`) while rank 1 idles. Latency of a request = from its arrival until its
result is back on rank 0. Steady arrivals: `--arrivals` Poisson arrivals of a uniform mix of the 12
models at `--load` times one rank's capacity (1 / the mean compute of a request); the same
arrival times for both plans.
Predictions, beside every measured row, from the profiled costs: the discrete-event simulation of
the plan (`load.simulate`), and for steady arrivals also the M/G/1 estimate (`load.steady_latencies`).
Targets (issue 12): the burst >= 1.6x sooner on 2 ranks; steady mean latency on 2 ranks <= 0.5x.
"""

import argparse
import json
import statistics

import torch

from prism_ops.distributed import Communicator
from prism_ops.distributed.control import bcast_json
from prism_ops.s2m3.load import Load, burst_order, load_objective, poisson_arrivals, simulate
from prism_ops.s2m3.placement import Device, Instance, Link
from prism_ops.s2m3.plan import check_plan
from prism_ops.s2m3.profiler import profile_modules
from prism_ops.s2m3.server import Server
from prism_ops.s2m3.solver import plan as solve
from prism_ops.s2m3.suite import SUITE, SUITE_VERSION

torch.set_num_threads(1)


def plan_dict(devs, models, size, part_of, place):
    return {"devices": [d.name for d in devs], "size": size, "models": models, "suite_version": SUITE_VERSION,
            "plan": {part_of[k]: devs[v].name for k, v in place.items()}}


def setup(args, num_ranks):
    """Rank 0: profile, plan, predict. Returns what every rank needs (JSON)."""
    models = list(SUITE)
    _, costs, part_of, tasks = profile_modules(models, args.size, {}, {"image": 602112, "text": 512, "audio": 960000},
                                           repeats=3)
    devs = [Device(f"dev{i}", 2e9) for i in range(num_ranks)]
    inst = Instance(devs, costs, tasks, default_link=Link(125e6, 1e-3))
    one = {k: 0 for k in costs}
    burst = Load(counts=(1,) * len(models))
    work = sum(c.compute for t in tasks for c in (costs[v] for v in t.inputs)) / len(models)  # s per request
    rates = (args.load / work / len(models),) * len(models)
    spread_burst = solve(inst, burst).place
    spread_steady = solve(inst, Load(rates=rates)).place
    arrivals = poisson_arrivals(rates, args.arrivals, seed=args.seed)
    order = burst_order(burst.counts)
    pred = {}
    for name, place in (("two_burst", spread_burst), ("one_burst", one)):
        pred[name] = simulate(inst, place, [(0.0, i) for i in order])
    for name, place in (("two_steady", spread_steady), ("one_steady", one)):
        pred[name] = simulate(inst, place, arrivals)
        pred[name + "_mg1"] = load_objective(inst, place, Load(rates=rates))
    return {"models": models, "order": order, "arrivals": arrivals, "rate": sum(rates), "work": work, "pred": pred,
            "plans": {"two_burst": plan_dict(devs, models, args.size, part_of, spread_burst),
                      "two_steady": plan_dict(devs, models, args.size, part_of, spread_steady),
                      "one": plan_dict(devs, models, args.size, part_of, one)}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=("full", "tiny"), default="full")
    ap.add_argument("--repeats", type=int, default=3, help="bursts per plan (medians)")
    ap.add_argument("--arrivals", type=int, default=40, help="steady arrivals per plan")
    ap.add_argument("--load", type=float, default=0.7, help="arrival rate, as a share of one rank's capacity")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    comm = Communicator(timeout_s=900)
    info = bcast_json(comm, setup(args, comm.size) if comm.rank == 0 else None)
    models, order = info["models"], info["order"]
    servers = {k: Server(comm, check_plan(p, comm.size)) for k, p in sorted(info["plans"].items())}
    burst_reqs = [{"id": i, "model": models[t], "seed": i} for i, t in enumerate(order)]
    steady_reqs = [{"id": i, "model": models[t], "seed": i} for i, (_, t) in enumerate(info["arrivals"])]
    at = [a for a, _ in info["arrivals"]]
    measured = {}
    for key, server in (("two_burst", servers["two_burst"]), ("one_burst", servers["one"])):
        runs = []
        for _ in range(args.repeats):
            comm.barrier()
            done = server.serve(burst_reqs if comm.rank == 0 else None)
            if comm.rank == 0:
                runs.append([done[json.dumps(r["id"])][1] for r in burst_reqs])
        measured[key] = runs
    for key, server in (("two_steady", servers["two_steady"]), ("one_steady", servers["one"])):
        comm.barrier()
        done = server.serve(steady_reqs if comm.rank == 0 else None, at if comm.rank == 0 else None)
        if comm.rank == 0:
            measured[key] = [done[json.dumps(r["id"])][1] for r in steady_reqs]
    comm.barrier()
    if comm.rank != 0:
        return
    pred = info["pred"]
    for key in ("two_burst", "two_steady"):
        print(f"plan {key}: " + ", ".join(f"{p}->{d}" for p, d in sorted(info["plans"][key]["plan"].items())
                                          if ":" not in p))
    print()
    print("| model | 2 ranks (s) | predicted | 1 rank (s) | predicted | 1 rank / 2 ranks |")
    print("| --- | --- | --- | --- | --- | --- |")
    med = {k: [statistics.median(r[i] for r in measured[k]) for i in range(len(order))]
           for k in ("two_burst", "one_burst")}
    for i, t in enumerate(order):
        a, b = med["two_burst"][i], med["one_burst"][i]
        print(f"| {models[t]} | {a:.3f} | {pred['two_burst'][i]:.3f} | {b:.3f} | {pred['one_burst'][i]:.3f} | "
              f"{b / a:.2f}x |")
    for label, f in (("mean of the burst", statistics.mean), ("whole burst", max)):
        a = statistics.median(f(r) for r in measured["two_burst"])
        b = statistics.median(f(r) for r in measured["one_burst"])
        print(f"| **{label}** | {a:.3f} | {f(pred['two_burst']):.3f} | {b:.3f} | {f(pred['one_burst']):.3f} | "
              f"**{b / a:.2f}x** |")
    print()
    print(f"steady arrivals: {len(at)} Poisson arrivals at {info['rate']:.3f} req/s ({args.load:.0%} of one rank's "
          f"capacity: {info['work']:.3f} s of compute per request), uniform over the 12 models")
    print("| ranks | mean latency (s) | predicted: simulation | predicted: M/G/1 | p90 (s) | predicted p90 |")
    print("| --- | --- | --- | --- | --- | --- |")

    def p90(xs):
        return sorted(xs)[int(0.9 * (len(xs) - 1))]

    for label, key in (("2 ranks", "two_steady"), ("1 rank", "one_steady")):
        m = measured[key]
        print(f"| {label} | {statistics.mean(m):.3f} | {statistics.mean(pred[key]):.3f} | {pred[key + '_mg1']:.3f} | "
              f"{p90(m):.3f} | {p90(pred[key]):.3f} |")
    a, b = statistics.mean(measured["two_steady"]), statistics.mean(measured["one_steady"])
    print(f"| **2 ranks / 1 rank** | **{a / b:.2f}x** | {statistics.mean(pred['two_steady']) / statistics.mean(pred['one_steady']):.2f}x | "
          f"{pred['two_steady_mg1'] / pred['one_steady_mg1']:.2f}x | | |")


if __name__ == "__main__":
    main()
