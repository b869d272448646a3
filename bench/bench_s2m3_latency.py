"""S2M3 routing under load: 2 MPI ranks with the planner's load-aware plans against one rank running
everything, in the same mpiexec run: a burst of 12 mixed requests, and steady Poisson arrivals at
40%, 70% and 90% of one rank's capacity, for an equal pair of devices (speeds 1 and 1) and an
unequal one (speeds 1 and 0.5).

    OMP_NUM_THREADS=1 mpiexec -n 2 python bench/bench_s2m3_latency.py [--quick] [--repeats 5]
        [--arrivals 60] [--warmup 0.2] [--loads 0.4 0.7 0.9]

Rank 0 profiles the suite's modules in this run (full size, 1 thread, median of 3 rounds over
all the modules after a warm-up round) and plans with `solver.optimal_placement` for two devices with room for everything (2 GB each) and a
1 Gbit/s link: for the burst (one request of each of the 12 models) and for each steady load.
The slower device of the unequal pair is rank 1 made half as fast by sleeping, after each node,
as long as the node ran (`Server(slowdown=2)`): stated as emulated, it holds no core meanwhile.
The one-rank baseline is every module on rank 0 (speed 1), served by the same scheduler
(`Server`) while rank 1 idles; it is the same for both pairs. Latency of a request = from its
arrival until its result is back on rank 0. Steady arrivals: `--arrivals` Poisson arrivals of a
uniform mix of the 12 models at the load times one rank's capacity (1 / the mean compute of a
request), drawn afresh for every run (the same draws for every plan at that load); a run's mean
leaves out its first `--warmup` share of requests, which arrive at idle devices, so that runs
estimate the steady state the planner plans for.

Every row (a plan under a load) runs `--repeats` times, the rows interleaved (row 1, row 2, ...,
then again), and prints the median of the runs' mean latencies and their spread (min-max), beside
the predictions from the profiled costs: the planner's objective (the long-run mean it chose the
plan by; for a burst its simulated mean), the discrete-event simulation of the very arrivals
measured (`load.simulate`, warm-up left out the same way, median over the runs), the same with
rank 0 dispatching only between its own nodes (`caller_holds=True`: what the dispatch thread
saves; `--no-dispatch-thread` serves that way), and the M/G/1 first guess. `--quick` (2 repeats of 12 arrivals) is for a busy machine; the
figures in docs/RESULTS.md name the command and the machine's load average, which this prints.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

from prism_ops.distributed.comm import Communicator
from prism_ops.distributed.control import bcast_json
from prism_ops.s2m3.load import Load, burst_order, load_objective, poisson_arrivals, simulate
from prism_ops.s2m3.placement import Device, Instance, Link
from prism_ops.s2m3.plan import check_plan
from prism_ops.s2m3.profiler import profile_modules
from prism_ops.s2m3.server import Server
from prism_ops.s2m3.solver import optimal_placement
from prism_ops.s2m3.suite import SUITE, SUITE_VERSION

torch.set_num_threads(1)
PAIRS = {"equal": (1.0, 1.0), "unequal": (1.0, 0.5)}  # device speeds, rank 0 first
INPUT_BYTES = {"image": 602112, "text": 512, "audio": 960000}


def plan_dict(devs, models, size, part_of, place):
    return {"devices": [d.name for d in devs], "size": size, "models": models, "suite_version": SUITE_VERSION,
            "plan": {part_of[k]: devs[v].name for k, v in place.items()}}


def mean(xs):
    return sum(xs) / len(xs)


def setup(args):
    """Rank 0: profile, plan, predict. Returns the rows every rank runs (JSON)."""
    models = list(SUITE)
    _, costs, part_of, tasks = profile_modules(models, args.size, {}, INPUT_BYTES, repeats=3)
    insts = {pair: Instance([Device(f"dev{i}", 2e9, s) for i, s in enumerate(speeds)], costs, tasks,
                            default_link=Link(125e6, 1e-3)) for pair, speeds in PAIRS.items()}
    one = {k: 0 for k in costs}
    work = sum(costs[v].compute for t in tasks for v in t.inputs) / len(models)  # s per request, speed 1
    plans, rows = {"one": plan_dict(insts["equal"].devices, models, args.size, part_of, one)}, []

    def row(name, pair, key, place, inst, load, draws, objective, chosen):
        """`draws`: the arrivals of each run (a burst's are the same every run)."""
        burst = load.kind == "burst"
        skip = 0 if burst else int(args.warmup * args.arrivals)
        pred = [simulate(inst, place, a) for a in draws]
        held = [simulate(inst, place, a, caller_holds=True) for a in draws]
        rows.append({"name": name, "pair": pair, "plan": key, "load": "burst" if burst else load_share,
                     "arrivals": draws, "skip": skip, "objective": objective, "chosen": chosen,
                     "sim": statistics.median(mean(p[skip:]) for p in pred),
                     "sim_held": statistics.median(mean(p[skip:]) for p in held), "sim_max": max(pred[0]),
                     "mg1": None if burst else load_objective(inst, place, load, "mg1")})

    burst = Load(counts=(1,) * len(models))
    order = burst_order(burst.counts)
    at0 = [[(0.0, i) for i in order]] * args.repeats
    load_share = None
    for pair, inst in insts.items():
        sol = optimal_placement(inst, burst)
        plans[f"{pair}:burst"] = plan_dict(inst.devices, models, args.size, part_of, sol.place)
        row(f"burst, 2 ranks {pair}", pair, f"{pair}:burst", sol.place, inst, burst, at0, sol.cost, sol.chosen)
    row("burst, 1 rank", "equal", "one", one, insts["equal"], burst, at0, load_objective(insts["equal"], one, burst),
        "all on dev0")
    for i, load_share in enumerate(args.loads):
        rates = (load_share / work / len(models),) * len(models)
        load = Load(rates=rates)
        arrivals = [poisson_arrivals(rates, args.arrivals, seed=args.seed + 1000 * i + rep)
                    for rep in range(args.repeats)]
        for pair, inst in insts.items():
            sol = optimal_placement(inst, load)
            key = f"{pair}:{load_share}"
            plans[key] = plan_dict(inst.devices, models, args.size, part_of, sol.place)
            row(f"{load_share:.0%}, 2 ranks {pair}", pair, key, sol.place, inst, load, arrivals, sol.cost, sol.chosen)
        row(f"{load_share:.0%}, 1 rank", "equal", "one", one, insts["equal"], load, arrivals,
            load_objective(insts["equal"], one, load), "all on dev0")
    return {"models": models, "work": work, "rows": rows, "plans": plans,
            "compute": {part_of[k]: c.compute for k, c in costs.items()}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=("full", "tiny"), default="full")
    ap.add_argument("--repeats", type=int, default=5, help="runs of every row, interleaved (medians)")
    ap.add_argument("--arrivals", type=int, default=60, help="steady arrivals per run")
    ap.add_argument("--warmup", type=float, default=0.2,
                    help="share of a steady run's first requests left out of its mean")
    ap.add_argument("--loads", type=float, nargs="+", default=[0.4, 0.7, 0.9],
                    help="steady arrival rates, as shares of one rank's capacity")
    ap.add_argument("--quick", action="store_true", help="2 repeats of 12 arrivals (a busy machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-dispatch-thread", dest="dispatch_thread", action="store_false",
                    help="rank 0 dispatches between its own nodes (the predictions then still assume the thread)")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.arrivals = 2, 12
    comm = Communicator(timeout_s=1800)
    t_start, load_start = time.time(), os.getloadavg()
    info = bcast_json(comm, setup(args) if comm.rank == 0 else None)
    models, rows = info["models"], info["rows"]
    loaded = {}  # modules built once per rank, shared by every plan's Server
    servers = {}
    for key, p in sorted(info["plans"].items()):
        pair = key.split(":")[0] if ":" in key else "equal"
        slow = 1.0 / PAIRS[pair][comm.rank] if comm.rank < 2 else 1.0
        servers[key] = Server(comm, check_plan(p, comm.size), slowdown=slow, loaded=loaded,
                              dispatch_thread=args.dispatch_thread)
    runs = [[] for _ in rows]  # per row: (mean latency, last answer) of each run
    for rep in range(args.repeats):
        for i, r in enumerate(rows):
            reqs = [{"id": j, "model": models[t], "seed": j} for j, (_, t) in enumerate(r["arrivals"][rep])]
            at = [a for a, _ in r["arrivals"][rep]]
            comm.barrier()
            done = servers[r["plan"]].serve(reqs if comm.rank == 0 else None, at if comm.rank == 0 else None)
            if comm.rank == 0:
                lat = [done[json.dumps(q["id"])][1] for q in reqs]
                runs[i].append((mean(lat[r["skip"]:]), max(lat)))
                print(f"run {rep + 1}/{args.repeats} {r['name']}: mean {mean(lat):.3f} s (load average "
                      f"{os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    comm.barrier()
    if comm.rank != 0:
        return
    report(args, info, runs, t_start, load_start)


def report(args, info, runs, t_start, load_start):
    rows = info["rows"]
    print(f"machine: {os.cpu_count()} cores, load average {load_start[0]:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end; {time.time() - t_start:.0f} s in all")
    print("profiled compute (s, speed 1): " + ", ".join(f"{p} {c:.3f}" for p, c in
                                                        sorted(info["compute"].items(), key=lambda x: -x[1]) if c > 1e-3))
    print(f"one request: {info['work']:.3f} s of compute on average; {args.repeats} runs per row, interleaved; "
          f"steady rows: {args.arrivals} Poisson arrivals per run, a fresh draw each run, the first "
          f"{int(args.warmup * args.arrivals)} left out of its mean")
    for key, p in sorted(info["plans"].items()):
        if key != "one":
            on1 = sorted(part for part, d in p["plan"].items() if d == "dev1" and ":" not in part)
            print(f"plan {key}: on dev1 {on1 or 'nothing'} (+ heads as placed)")
    print()
    print("| row | plan (chosen from the candidates) | measured mean (s), median | spread | planner objective | "
          "sim. of these arrivals | sim., dispatch between rank 0's nodes | M/G/1 | 1 rank / this |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    med = [statistics.median(m for m, _ in rs) for rs in runs]
    base = {r["load"]: med[i] for i, r in enumerate(rows) if r["plan"] == "one"}
    for i, (r, rs) in enumerate(zip(rows, runs)):
        ms = [m for m, _ in rs]
        mg1 = "" if r["mg1"] is None else f"{r['mg1']:.3f} ({r['mg1'] / med[i]:.2f})"
        print(f"| {r['name']} | {r['chosen']} | {med[i]:.3f} | {min(ms):.3f}-{max(ms):.3f} | "
              f"{r['objective']:.3f} ({r['objective'] / med[i]:.2f}) | {r['sim']:.3f} ({r['sim'] / med[i]:.2f}) | "
              f"{r['sim_held']:.3f} | {mg1} | {base[r['load']] / med[i]:.2f}x |")
    print("(predicted figures: the value, then predicted / measured)")
    whole = {r["name"]: statistics.median(x for _, x in rs) for r, rs in zip(rows, runs) if r["load"] == "burst"}
    one = whole["burst, 1 rank"]
    for pair in PAIRS:
        r = next(x for x in rows if x["name"] == f"burst, 2 ranks {pair}")
        print(f"whole burst, {pair} pair: {whole[r['name']]:.3f} s against one rank's {one:.3f} s: "
              f"{one / whole[r['name']]:.2f}x sooner (predicted {r['sim_max']:.3f} s)")


if __name__ == "__main__":
    main()
