"""S2M3 placement: how often greedy finds the optimum, against the exact solver (branch and bound).

    python bench/bench_s2m3_placement.py [--instances 200]

Two families of random instances, each solved by `greedy` and by `branch_and_bound`:
- "suite": 3-5 models drawn from the 12-model suite (shared modules placed once), with the
  module costs prism-place measured on this machine (MODULE_COSTS below), on 2-3 devices whose
  total memory is 1.1-2.5x what the drawn modules need (each device 15-100% of the largest
  module... so that placement is forced to spread), speeds 0.3-1.5, links 10-1000 Mbit/s with
  1-10 ms latency, and real input sizes (a 224x224 image, 64 tokens, 30 s of log-mel audio).
- "synthetic": `prism_ops.s2m3.placement.random_instance`, tighter and more uneven.
Reports, over the feasible instances, the share where greedy is optimal, within 1% and 5%, and
the worst gap; infeasible instances (no placement fits) are counted apart.
Paper (S2M3): greedy optimal in 89 of 95 instances (93.7%). Target (issue 5): >= 95%.
"""

import argparse
import random

from prism_ops.s2m3.placement import (Device, Instance, Link, ModuleCost, PlacementError, Task, branch_and_bound,
                                      greedy, objective, random_instance)
from prism_ops.s2m3.suite import MODELS, SUITE

# From `prism-place --devices examples/devices.yaml --tasks examples/tasks.yaml` on this 2-core
# machine (1 thread): part -> (MB, compute s, output bytes).
MODULE_COSTS = {"whisper-tiny": (32.8, 0.537, 1536), "vit-b16": (343.2, 0.409, 3072), "vit-s16": (86.7, 0.151, 1536),
                "minilm": (90.9, 0.033, 1536), "similarity": (0.0, 0.0003, 4),
                "decoder-small": (20.9, 0.049, 64)}  # 8 greedy tokens
INPUT_BYTES = {"image": 3 * 224 * 224 * 4, "text": 64 * 8, "audio": 80 * 3000 * 4}


def part_cost(part):
    if part in MODULE_COSTS:
        return MODULE_COSTS[part]
    d_in, d_out = (int(x) for x in part.split(":")[1].split("x"))
    return ((d_in + 1) * d_out * 4 / 1e6, 1e-4, d_out * 4)


def suite_instance(rng):
    names = rng.sample(sorted(SUITE), rng.randint(3, 5))
    modules, tasks = {}, []
    for n in names:
        nodes = MODELS[n][1]
        for node, (part, _) in nodes.items():
            mb, s, out = part_cost(part)
            modules[part] = ModuleCost(part, mb * 1e6, s, out)
        inputs = {nodes[node][0]: tuple(x if x.startswith("input:") else nodes[x][0] for x in srcs)
                  for node, (_, srcs) in nodes.items()}
        mods = {x[6:] for srcs in inputs.values() for x in srcs if x.startswith("input:")}
        tasks.append(Task(n, inputs, {m: INPUT_BYTES[m] for m in mods}, 4e3))
    need = sum(m.memory for m in modules.values())
    big = max(m.memory for m in modules.values())
    k = rng.randint(2, 3)
    share = [rng.uniform(0.5, 1.5) for _ in range(k)]
    total = need * rng.uniform(1.1, 2.5)
    devices = [Device(f"d{i}", max(big * rng.uniform(0.15, 1.0), total * w / sum(share)), rng.uniform(0.3, 1.5))
               for i, w in enumerate(share)]
    links = {(a.name, b.name): Link(rng.uniform(10, 1000) * 1e6 / 8, rng.uniform(1e-3, 10e-3))
             for i, a in enumerate(devices) for b in devices[i + 1:]}
    return Instance(devices, modules, tasks, links)


def study(make, n, seed):
    rng = random.Random(seed)
    rows, infeasible, attempts = [], 0, 0
    while len(rows) + infeasible < n:
        attempts += 1
        try:
            inst = make(rng)
        except PlacementError:
            continue
        best, opt = branch_and_bound(inst)
        if best is None:
            infeasible += 1
            continue
        g = greedy(inst)
        rows.append(float("inf") if g is None else objective(inst, g) / opt - 1)
    ok = len(rows)
    return dict(feasible=ok, infeasible=infeasible, optimal=sum(r <= 1e-9 for r in rows) / ok,
                within_1=sum(r <= 0.01 for r in rows) / ok, within_5=sum(r <= 0.05 for r in rows) / ok,
                no_placement=sum(r == float("inf") for r in rows), worst=max(r for r in rows if r != float("inf")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("| instances | feasible | infeasible | greedy optimal | within 1% | within 5% | greedy found none | worst gap |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, make in (("suite", suite_instance), ("synthetic", random_instance)):
        r = study(make, args.instances, args.seed)
        print(f"| {label} | {r['feasible']} | {r['infeasible']} | {r['optimal']:.1%} | {r['within_1']:.1%} | "
              f"{r['within_5']:.1%} | {r['no_placement']} | {r['worst']:.1%} |", flush=True)


if __name__ == "__main__":
    main()
