"""S2M3's default planner: the latency objective solved as a mixed-integer program (HiGHS through
`scipy.optimize.milp`), then local search (move one module, swap two) for the load-aware
objective of `prism_ops.s2m3.load`, and a pick among candidates that always holds the one-device
plans (and, for steady rates, the burst plan) by that objective.

The program, for modules m, devices d, tasks t and their nodes v (`placement` defines the
objective it encodes exactly):
- x[m, d] in {0, 1}: m is on d; each module on one device; the bytes on a device fit its memory;
- y[u, v, a, b] >= 0 for every edge u -> v of some task: u on a and v on b. Its sums over b give
  x[u, a] and over a give x[v, b], so for integer x it is exactly x[u, a] x[v, b];
- f[t, v] >= 0: when node v of task t finishes. It is at least the arrival of each of its inputs
  (the caller's bytes sent from device 0, or f[t, u] plus the transfer on the edge, from y) plus
  its compute time on its device;
- minimise the sum over tasks of f[t, sink] plus the reply back to device 0.
At the optimum every f sits on its largest input (the max of `task_latency`), so the program's
optimum is the objective's. HiGHS proves infeasibility too: `optimal_placement` never reports
"no placement" when one fits (a time limit without any solution falls back on greedy and first-fit).

`bench/bench_s2m3_placement.py` compares it with greedy and branch and bound.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from .load import Load, load_objective
from .placement import Instance, greedy, objective


@dataclass(frozen=True)
class Solution:
    """A placement {module: device index} (None: none fits), its objective and how it was found."""

    place: dict | None
    cost: float  # the objective it was chosen by: `placement.objective`, or `load.load_objective`
    proven: bool  # the MILP proved the no-load part optimal (or proved that nothing fits)
    seconds: float
    candidates: tuple = ()  # under a load: (name, load objective) of every plan compared
    chosen: str = ""  # the name of the candidate returned


def milp_placement(inst: Instance, time_limit: float = 10.0) -> tuple[dict | None, bool]:
    """(a placement minimising `placement.objective`, proven optimal?) by HiGHS; (None, True) when
    nothing fits, (None, False) when the time ran out before any placement was found."""
    names, nd = inst.used_modules(), len(inst.devices)
    col = itertools.count()
    x = {(m, d): next(col) for m in names for d in range(nd)}
    edges = sorted({(u, v) for t in inst.tasks for v, srcs in t.inputs.items() for u in srcs
                    if not u.startswith("input:")})
    y = {(e, a, b): next(col) for e in edges for a in range(nd) for b in range(nd)}
    f = {(ti, v): next(col) for ti, t in enumerate(inst.tasks) for v in t.inputs}
    n = next(col)
    rows, cols, vals, lo, hi = [], [], [], [], []

    def row(entries, lb, ub):
        r = len(lo)
        for c, v in entries:
            rows.append(r)
            cols.append(c)
            vals.append(v)
        lo.append(lb)
        hi.append(ub)

    for m in names:
        row([(x[m, d], 1.0) for d in range(nd)], 1.0, 1.0)
    for d, dev in enumerate(inst.devices):  # in shares of the device's memory: bytes are ~1e9, HiGHS needs ~1
        row([(x[m, d], inst.modules[m].memory / dev.memory) for m in names], -np.inf, 1.0)
    for e in edges:
        for a in range(nd):
            row([(y[e, a, b], 1.0) for b in range(nd)] + [(x[e[0], a], -1.0)], 0.0, 0.0)
            row([(y[e, b, a], 1.0) for b in range(nd)] + [(x[e[1], a], -1.0)], 0.0, 0.0)

    def run(v):
        return [(x[v, d], -inst.modules[v].compute / inst.devices[d].speed) for d in range(nd)]

    for ti, t in enumerate(inst.tasks):
        for v, srcs in t.inputs.items():
            if not srcs:
                row([(f[ti, v], 1.0)] + run(v), 0.0, np.inf)
            for s in srcs:
                if s.startswith("input:"):
                    nbytes = t.input_bytes[s[6:]]
                    row([(f[ti, v], 1.0)] + [(c, w - inst.transfer(0, d, nbytes)) for d, (c, w) in enumerate(run(v))],
                        0.0, np.inf)
                else:
                    out = inst.modules[s].output_bytes
                    move = [(y[(s, v), a, b], -inst.transfer(a, b, out)) for a in range(nd) for b in range(nd) if a != b]
                    row([(f[ti, v], 1.0), (f[ti, s], -1.0)] + move + run(v), 0.0, np.inf)
    c = np.zeros(n)
    for ti, t in enumerate(inst.tasks):
        sink = t.sink()
        c[f[ti, sink]] += 1.0
        for d in range(nd):
            c[x[sink, d]] += inst.transfer(d, 0, t.reply_bytes)
    integrality = np.zeros(n)
    integrality[[x[k] for k in x]] = 1
    upper = np.full(n, np.inf)
    upper[[x[k] for k in x]] = 1.0
    upper[[y[k] for k in y]] = 1.0
    A = coo_matrix((vals, (rows, cols)), shape=(len(lo), n)).tocsr()
    res = milp(c, integrality=integrality, bounds=Bounds(np.zeros(n), upper),
               constraints=LinearConstraint(A, np.array(lo), np.array(hi)),
               options={"time_limit": float(time_limit), "mip_rel_gap": 1e-9})
    if res.x is None:
        return None, res.status == 2
    return {m: int(np.argmax([res.x[x[m, d]] for d in range(nd)])) for m in names}, res.status == 0


def _fits(inst: Instance, place: dict) -> bool:
    used = [0.0] * len(inst.devices)
    for m, d in place.items():
        used[d] += inst.modules[m].memory
    return all(u <= dev.memory for u, dev in zip(used, inst.devices))


def local_search(inst: Instance, place: dict, cost, deadline: float = math.inf) -> tuple[dict, float]:
    """Improve a feasible placement by moving one module or swapping two (on different devices)
    while `cost(inst, place)` drops; (placement, its cost)."""
    place, names, nd = dict(place), sorted(place), len(inst.devices)
    best = cost(inst, place)
    free = [dev.memory for dev in inst.devices]
    for m, d in place.items():
        free[d] -= inst.modules[m].memory

    def better(c):
        return c < best - 1e-12 * max(1.0, abs(best))

    improved = True
    while improved and time.perf_counter() < deadline:
        improved = False
        for m in names:
            need, here = inst.modules[m].memory, place[m]
            for d in range(nd):
                if d == here or need > free[d]:
                    continue
                place[m] = d
                c = cost(inst, place)
                if better(c):
                    best, improved = c, True
                    free[d] -= need
                    free[here] += need
                    here = d
                else:
                    place[m] = here
        for m1, m2 in itertools.combinations(names, 2):
            a, b = place[m1], place[m2]
            n1, n2 = inst.modules[m1].memory, inst.modules[m2].memory
            if a == b or free[a] + n1 < n2 or free[b] + n2 < n1:
                continue
            place[m1], place[m2] = b, a
            c = cost(inst, place)
            if better(c):
                best, improved = c, True
                free[a] += n1 - n2
                free[b] += n2 - n1
            else:
                place[m1], place[m2] = a, b
    return place, best


def _first_fit(inst: Instance) -> dict | None:
    """Any placement that fits: largest module first, on the device with most room left."""
    free, place = [d.memory for d in inst.devices], {}
    for m in sorted(inst.used_modules(), key=lambda m: -inst.modules[m].memory):
        d = max(range(len(free)), key=lambda i: free[i])
        if inst.modules[m].memory > free[d]:
            return None
        place[m] = d
        free[d] -= inst.modules[m].memory
    return place


def _balanced(inst: Instance, load: Load) -> dict | None:
    """A start for the load-aware search: modules by busy time under the load, each on the
    device that would then be least busy (and has room)."""
    weights = load.counts or load.rates
    work = {m: 0.0 for m in inst.used_modules()}
    for t, w in zip(inst.tasks, weights):
        for v in t.inputs:
            work[v] += w * inst.modules[v].compute
    free, busy, place = [d.memory for d in inst.devices], [0.0] * len(inst.devices), {}
    for m in sorted(work, key=lambda m: (-work[m], m)):
        fits = [d for d in range(len(free)) if inst.modules[m].memory <= free[d]]
        if not fits:
            return None
        d = min(fits, key=lambda d: busy[d] + work[m] / inst.devices[d].speed)
        place[m], free[d], busy[d] = d, free[d] - inst.modules[m].memory, busy[d] + work[m] / inst.devices[d].speed
    return place


def one_device(inst: Instance) -> list[tuple[int, dict]]:
    """(device, every module on it) for each device with room for all of them."""
    names = inst.used_modules()
    need = sum(inst.modules[m].memory for m in names)
    return [(d, {m: d for m in names}) for d, dev in enumerate(inst.devices) if need <= dev.memory]


SEARCH_ARRIVALS = 300  # simulated arrivals per step of the steady-load search (the final pick: STEADY_ARRIVALS x seeds)


def optimal_placement(inst: Instance, load: Load | None = None, time_limit: float = 1.5) -> Solution:
    """The default planner: the MILP optimum of `placement.objective` (polished by local search if
    HiGHS stopped at its time limit). With a `load`, the best by `load.load_objective` of these
    candidates: every one-device plan that fits, the MILP optimum, greedy, a busy-time-balanced
    plan, local search from each of them, and for steady rates the burst plan (one request of each
    task with a rate). Steady rates search first on the M/G/1 estimate (quick), then on short
    simulations from the two best, and pick by the full simulation; so the plan returned is never
    one its own simulation finds worse than another candidate (`Solution.candidates`)."""
    t0 = time.perf_counter()
    deadline = t0 + time_limit
    place, proven = milp_placement(inst, time_limit)
    if place is not None and not _fits(inst, place):  # over by HiGHS's feasibility tolerance
        place, proven = None, False
    if place is None and proven:
        return Solution(None, math.inf, True, time.perf_counter() - t0)
    named = [(n, p) for n, p in (("latency optimum" if proven else "MILP", place), ("greedy", greedy(inst)))
             if p is not None] or [("first fit", p) for p in (_first_fit(inst),) if p]
    starts = [p for _, p in named]
    if not starts:
        return Solution(None, math.inf, False, time.perf_counter() - t0)
    if load is None:
        if proven:
            return Solution(place, objective(inst, place), True, time.perf_counter() - t0)
        best = min((local_search(inst, p, objective, deadline) for p in starts), key=lambda r: r[1])
        return Solution(best[0], best[1], False, time.perf_counter() - t0)
    b = _balanced(inst, load)
    named += [("balanced", b)] if b is not None else []
    lo = deadline + 2 * time_limit  # the load-aware search gets its own time

    def final(i, p):
        return load_objective(i, p, load)

    if load.kind == "burst":
        found = [(f"{n} + search", local_search(inst, p, final, lo)[0]) for n, p in named]
    else:
        def guess(i, p):
            return load_objective(i, p, load, "mg1")

        def short(i, p):
            return load_objective(i, p, load, num=SEARCH_ARRIVALS, seeds=(0,))

        found = [(f"{n} + M/G/1 search", local_search(inst, p, guess, lo)[0]) for n, p in named]
        counts = tuple(1 if r else 0 for r in load.rates)
        named += [("burst plan", p) for p in (optimal_placement(inst, Load(counts=counts), time_limit).place,) if p is not None]
        pool = named + found + [(f"all on {inst.devices[d].name}", p) for d, p in one_device(inst)]
        ranked = sorted(pool, key=lambda np_: short(inst, np_[1]))
        sim_deadline = time.perf_counter() + 2 * time_limit
        found += [(f"{n} + simulated search", local_search(inst, p, short, sim_deadline)[0]) for n, p in ranked[:2]]
    pool = [(f"all on {inst.devices[d].name}", p) for d, p in one_device(inst)] + named + found
    scored = [(n, p, final(inst, p)) for n, p in pool]
    name, where, cost = min(scored, key=lambda x: x[2])
    return Solution(where, cost, proven, time.perf_counter() - t0, tuple((n, c) for n, _, c in scored), name)
