"""S2M3 under load: a plan's latency when devices are busy with other requests.

A `Load` is either a burst (how many requests of each task arrive at once) or steady arrivals
(requests/s of each task). `simulate` is a discrete-event simulation of a plan, scheduled the way
s2m3-serve schedules it (`prism_ops.s2m3.server`): every device runs one node at a time, its
ready nodes earliest request first (ties: the one that became ready first); inputs travel in
parallel (links are not shared), a node starts when its last input is in, and at any instant a
device sees everything that has arrived by then before it picks its next node. Device 0 is also
the caller, which s2m3-serve runs in a thread of its own: it sends a request's inputs out when
the request arrives and takes a result in when it comes back. `caller_holds=True` models a
caller that does both only between its own nodes (`Server(dispatch_thread=False)`).

- A burst's requests are numbered round-robin over the tasks in their order (one of each task
  that still has requests left, then again); its objective is the mean latency of its requests,
  from the simulation itself (`burst_latencies`).
- Steady arrivals are Poisson; their objective is the mean latency of a request in a long
  simulated run (`steady_simulated`: `STEADY_ARRIVALS` arrivals per seed of `STEADY_SEEDS`, the
  first tenth left out as warm-up), the same arrivals for every plan compared.
- `steady_latencies` is a quick M/G/1 estimate, the planner's first guess: a request waits once
  at each device it visits, W_d = sum(rate * S^2) / (2 (1 - rho_d)) (Pollaczek-Khinchine; S is
  all of the request's run time on d, since earliest-request-first lets a request's later nodes
  there go before newer requests), and with `caller_holds` device 0 holds a request's dispatch,
  and its result, for the rest of the node it is running. A wait per node (the earlier estimate) counted a request
  with five nodes on one device as queueing five times: 3x the measured latency on one rank.
  The estimate knows nothing of a request's branches waiting on each other, so the simulation
  decides (bench/bench_s2m3_latency.py prints both against what the ranks measure).

Pure logic with plain numbers, like `placement`.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass

from .placement import Instance, PlacementError, task_latency


@dataclass(frozen=True)
class Load:
    """A burst (`counts`: requests of each task at once) or steady arrivals (`rates`: requests/s of
    each task), one entry per task of the instance, in its order."""

    counts: tuple = ()
    rates: tuple = ()

    def __post_init__(self):
        if bool(self.counts) == bool(self.rates):
            raise PlacementError("load: give either counts (a burst) or rates (steady arrivals)")
        for what, xs in (("counts", self.counts), ("rates", self.rates)):
            for x in xs:
                if not (isinstance(x, (int, float)) and math.isfinite(x) and x >= 0):
                    raise PlacementError(f"load: {what} must be finite and >= 0, got {x!r}")
            if xs and sum(xs) <= 0:
                raise PlacementError(f"load: {what} are all zero")

    @property
    def kind(self) -> str:
        return "burst" if self.counts else "rates"


def burst_order(counts) -> list[int]:
    """The task index of each request of a burst, round-robin over the tasks."""
    left, out = list(counts), []
    while any(left):
        for i, n in enumerate(left):
            if n:
                out.append(i)
                left[i] -= 1
    return out


def simulate(inst: Instance, place: dict, arrivals, caller_holds: bool = False) -> list[float]:
    """Latency of each request [(arrival time s, task index)] under `place`, in the given order
    (which is also the order a device serves them in).

    Device 0 is also the caller (s2m3-serve's rank 0): it sends out a request's inputs when it
    arrives and takes in a result when it is back (its dispatch thread). With `caller_holds`
    it does so only between two of its own nodes (one thread), so a request that arrives (or a
    result that comes back) while it computes waits until that node is done."""
    tasks = inst.tasks
    readers = [{u: [v for v, srcs in t.inputs.items() if u in srcs] for u in t.inputs} for t in tasks]
    sinks = [t.sink() for t in tasks]
    tie = itertools.count()
    events = [(t0, next(tie), "arrive", req, None) for req, (t0, _) in enumerate(arrivals)]
    heapq.heapify(events)  # (time, tie, kind, req, node)
    need = {(req, v): len(srcs) for req, (_, ti) in enumerate(arrivals) for v, srcs in tasks[ti].inputs.items()}
    ready = [[] for _ in inst.devices]
    idle = [True] * len(inst.devices)
    latency = [math.nan] * len(arrivals)
    held = []  # (kind, req) waiting for the caller to be between nodes

    def caller(now, kind, req):
        ti = arrivals[req][1]
        if kind == "result":
            latency[req] = now - arrivals[req][0]
            return
        task = tasks[ti]
        for v, srcs in task.inputs.items():
            for s in srcs:
                if s.startswith("input:"):
                    at = now + inst.transfer(0, place[v], task.input_bytes[s[6:]])
                    heapq.heappush(events, (at, next(tie), "in", req, v))

    while events:
        now = events[0][0]
        while events and events[0][0] <= now:
            _, _, kind, req, v = heapq.heappop(events)
            if kind in ("arrive", "result"):
                if idle[0] or not caller_holds:
                    caller(now, kind, req)
                else:
                    held.append((kind, req))
                continue
            dev, ti = place[v], arrivals[req][1]
            if kind == "in":
                need[(req, v)] -= 1
                if need[(req, v)] == 0:
                    heapq.heappush(ready[dev], (req, next(tie), v))
                continue
            idle[dev] = True
            for r in readers[ti][v]:
                at = now + inst.transfer(dev, place[r], inst.modules[v].output_bytes)
                heapq.heappush(events, (at, next(tie), "in", req, r))
            if v == sinks[ti]:
                heapq.heappush(events, (now + inst.transfer(dev, 0, tasks[ti].reply_bytes), next(tie), "result", req, None))
            if dev == 0:
                for kind_, req_ in held:
                    caller(now, kind_, req_)
                held = []
        for dev, queue in enumerate(ready):
            if idle[dev] and queue:
                req, _, v = heapq.heappop(queue)
                idle[dev] = False
                done = now + inst.modules[v].compute / inst.devices[dev].speed
                heapq.heappush(events, (done, next(tie), "done", req, v))
    return latency


def burst_latencies(inst: Instance, place: dict, counts) -> list[tuple[int, float]]:
    """(task index, latency) of every request of a burst, in request order."""
    order = burst_order(counts)
    return list(zip(order, simulate(inst, place, [(0.0, i) for i in order])))


def busy(inst: Instance, place: dict, weights) -> list[float]:
    """Seconds each device computes for `weights` requests of each task (counts, or rates: then
    the device's busy share, rho)."""
    out = [0.0] * len(inst.devices)
    for t, w in zip(inst.tasks, weights):
        for v in t.inputs:
            out[place[v]] += w * inst.modules[v].compute / inst.devices[place[v]].speed
    return out


def _visits(inst: Instance, place: dict) -> list[dict]:
    """{device: the task's run time there (s)} for each task."""
    out = []
    for t in inst.tasks:
        on = {}
        for v in t.inputs:
            on[place[v]] = on.get(place[v], 0.0) + inst.modules[v].compute / inst.devices[place[v]].speed
        out.append(on)
    return out


def steady_latencies(inst: Instance, place: dict, rates, caller_holds: bool = False) -> list[float]:
    """Mean latency of each task under Poisson arrivals at `rates`, by the M/G/1 estimate (see the
    module's docstring); inf when a device is busy more than all the time."""
    visits = _visits(inst, place)
    nd = len(inst.devices)
    rho, second = [0.0] * nd, [0.0] * nd
    for on, r in zip(visits, rates):
        for d, s in on.items():
            rho[d] += r * s
            second[d] += r * s * s
    if any(p >= 1.0 for p in rho):
        return [math.inf] * len(inst.tasks)
    wait = [s / (2 * (1 - p)) for s, p in zip(second, rho)]
    # With caller_holds, device 0 dispatches between its own nodes: the mean rest of the node it runs.
    node0 = sum(r * (inst.modules[v].compute / inst.devices[0].speed) ** 2
                for t, r in zip(inst.tasks, rates) for v in t.inputs if place[v] == 0)
    hold = node0 / 2 if caller_holds else 0.0
    out = []
    for t, on in zip(inst.tasks, visits):
        first = {}
        for v in t.order():
            first.setdefault(place[v], v)
        lat = task_latency(inst, t, place, {v: wait[d] for d, v in first.items()})
        away = [d for d in on if d != 0]
        out.append(lat + (hold if away else 0.0) + (hold if place[t.sink()] != 0 else 0.0))
    return out


STEADY_ARRIVALS = 1500  # simulated arrivals per seed for a steady load's objective
STEADY_SEEDS = (0, 1)


def steady_simulated(inst: Instance, place: dict, rates, num: int = STEADY_ARRIVALS,
                     seeds=STEADY_SEEDS) -> list[float]:
    """Mean latency of each task under Poisson arrivals at `rates`, from `simulate` over `num`
    arrivals per seed (the first tenth, a warm-up from idle, left out); inf when a device is busy
    more than all the time (no steady state). A task with a rate but no arrival drawn: its M/G/1
    estimate."""
    if any(p >= 1.0 for p in busy(inst, place, rates)):
        return [math.inf] * len(inst.tasks)
    total, count = [0.0] * len(inst.tasks), [0] * len(inst.tasks)
    for seed in seeds:
        arrivals = poisson_arrivals(rates, num, seed)
        for (_, ti), x in list(zip(arrivals, simulate(inst, place, arrivals)))[num // 10:]:
            total[ti] += x
            count[ti] += 1
    guess = None
    out = []
    for ti, (x, n) in enumerate(zip(total, count)):
        if n:
            out.append(x / n)
        else:
            guess = guess or steady_latencies(inst, place, rates)
            out.append(guess[ti])
    return out


def load_objective(inst: Instance, place: dict, load: Load, estimate: str = "simulation", **sim) -> float:
    """Mean latency of a request under the load (inf when some device cannot keep up): a burst's
    from its simulation; steady arrivals' from `steady_simulated` (`sim`: its num and seeds), or
    with estimate="mg1" from `steady_latencies`, rate-weighted."""
    if load.kind == "burst":
        lat = [x for _, x in burst_latencies(inst, place, load.counts)]
        return sum(lat) / len(lat)
    if estimate not in ("simulation", "mg1"):
        raise ValueError(f"estimate must be 'simulation' or 'mg1', got {estimate!r}")
    lat = (steady_simulated(inst, place, load.rates, **sim) if estimate == "simulation"
           else steady_latencies(inst, place, load.rates))
    return sum(r * x for r, x in zip(load.rates, lat) if r) / sum(load.rates)


def poisson_arrivals(rates, num: int, seed: int = 0) -> list[tuple[float, int]]:
    """`num` Poisson arrivals [(time, task index)] of the merged streams at `rates` (requests/s)."""
    rng, total, t, out = random.Random(seed), sum(rates), 0.0, []
    for _ in range(num):
        t += rng.expovariate(total)
        out.append((t, rng.choices(range(len(rates)), weights=rates)[0]))
    return out
