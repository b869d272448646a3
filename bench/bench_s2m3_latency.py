"""S2M3 routing: a burst of one request per model, served by 2 MPI ranks with parallel routing,
against the same requests run one after another on one rank.

    mpiexec -n 2 python bench/bench_s2m3_latency.py            # full-size suite, 1 thread per rank

The plan comes from `greedy` placement over two equal devices of 0.45 GB each with a 1 Gbit/s
link (memory, not the latency objective, makes it spread the encoders: the objective does not
model devices busy with other requests) (on this machine the ranks share memory; the link only shapes the plan). Latency of a
request = from the burst's start until its result is back on rank 0. The sequential baseline is
rank 0 running each model (modules shared) in the same order, with the other rank idle.
"""

import argparse
import json
import statistics
import time

import torch

from prism_ops.distributed import Communicator
from prism_ops.s2m3.modules import Registry
from prism_ops.distributed.control import bcast_json
from prism_ops.s2m3.placement import Device, Instance, Link, greedy
from prism_ops.s2m3.plan import check_plan
from prism_ops.s2m3.profiler import profile_modules
from prism_ops.s2m3.server import Server
from prism_ops.s2m3.suite import SUITE, Model, example_inputs

torch.set_num_threads(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=("full", "tiny"), default="full")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    comm = Communicator(timeout_s=600)
    models = list(SUITE)
    plan = None
    if comm.rank == 0:
        reg, costs, part_of, tasks = profile_modules(models, args.size, {},
                                                     {"image": 602112, "text": 512, "audio": 960000})
        devs = [Device(f"dev{i}", 0.45e9 if args.size == "full" else 4e5) for i in range(comm.size)]
        inst = Instance(devs, costs, tasks, default_link=Link(125e6, 1e-3))
        place = greedy(inst)
        plan = {"devices": [d.name for d in devs], "size": args.size, "models": models,
                "plan": {part_of[k]: devs[v].name for k, v in place.items()}}
    plan = bcast_json(comm, plan)
    server = Server(comm, check_plan(plan, comm.size))
    reqs = [{"id": i, "model": m, "seed": i} for i, m in enumerate(models)]
    runs = []
    for _ in range(args.repeats):
        comm.barrier()  # every rank serving before the clock starts
        done = server.serve(reqs if comm.rank == 0 else None)
        if comm.rank == 0:
            runs.append({r["model"]: done[json.dumps(r["id"])][1] for r in reqs})
    seq = []
    if comm.rank == 0:
        reg = Registry()
        local = [Model(m, args.size, reg) for m in models]
        inputs = [example_inputs(args.size, seed=r["seed"]) for r in reqs]
        for _ in range(args.repeats):
            t0, lat = time.perf_counter(), {}
            for model, x in zip(local, inputs):
                model(x)
                lat[model.name] = time.perf_counter() - t0
            seq.append(lat)
    comm.barrier()
    if comm.rank != 0:
        return
    print("placement: " + ", ".join(f"{p}->{d}" for p, d in sorted(plan["plan"].items()) if ":" not in p))
    print("| model | parallel routing, 2 ranks (s) | one rank, one after another (s) | ratio |")
    print("| --- | --- | --- | --- |")
    for m in models:
        a, b = statistics.median(r[m] for r in runs), statistics.median(r[m] for r in seq)
        print(f"| {m} | {a:.3f} | {b:.3f} | {b / a:.2f}x |")
    a = statistics.median(max(r.values()) for r in runs)
    b = statistics.median(max(r.values()) for r in seq)
    print(f"| whole burst | {a:.3f} | {b:.3f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
