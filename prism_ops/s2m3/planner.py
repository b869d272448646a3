"""S2M3 planning: from a devices file and a tasks file to a plan (which device holds each part)
and the figures s2m3-place reports about it.

`make_plan` checks both files (`files`), profiles the modules (`profiler`), places them (the
default planner `solver.optimal_placement`, or `placement.greedy` on request; `branch_and_bound` as a
certificate) and returns a `PlanReport`; the plan dict it holds is what `s2m3-place --json`
writes and s2m3-serve reads (`plan.check_plan`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .files import check_memory, check_tasks, parse_devices, read_file
from .load import Load, burst_latencies, busy, load_objective, steady_latencies, steady_simulated
from .plan import check_plan
from .placement import Device, Instance, PlacementError, branch_and_bound, greedy, objective, task_latency
from .profiler import profile_modules
from .solver import optimal_placement
from .suite import SUITE_VERSION

PLANNERS = ("optimal", "greedy")


@dataclass(frozen=True)
class PlanReport:
    """A plan and what it predicts."""

    plan: dict  # {devices, size, models, custom, plan: {part: device}, objective_s, suite_version[, optimal_s]
    #             [, burst | rates, load_objective_s]}
    num_models: int
    devices: list[Device]
    modules: list[tuple[str, str, float, float]]  # (part, device, bytes, compute s), costliest first
    device_memory: list[tuple[str, float, float]]  # (device, bytes placed on it, bytes it has)
    memory: dict  # Registry.memory_report(): bytes with sharing against one copy per model
    latency: list[tuple[str, float]]  # (model, predicted latency s, alone), in the tasks file's order
    planner: str = "optimal"
    solve_s: float = 0.0  # the planner's time
    branch_and_bound_s: float | None = None  # branch and bound's time (with branch_and_bound)
    load: str | None = None  # "burst" or "rates"
    load_latency: list = ()  # (model, predicted mean latency s under the load[, its M/G/1 estimate])
    burst_s: float | None = None  # a burst: when its last request is answered
    device_busy: list = ()  # (device, busy s for a burst / busy share for rates)
    candidates: tuple = ()  # under a load (default planner): (plan compared, its load objective s)
    chosen: str = ""  # which candidate won
    prism: list = ()  # (part, [devices of its group], the resolved PrismConfig) of the tasks file's prism


def make_plan(devices_path: str, tasks_path: str, with_branch_and_bound: bool = False,
              planner: str = "optimal") -> PlanReport:
    """Check both files, profile the modules, place them with `planner` ("optimal": the default
    planner, `solver.optimal_placement`; "greedy": `placement.greedy`), and with_branch_and_bound also by branch and
    bound (the plan then has `optimal_s`). PlacementError names the first problem."""
    if planner not in PLANNERS:
        raise PlacementError(f"planner must be one of {PLANNERS}, got {planner!r}")
    devices, links, default = parse_devices(read_file(devices_path, f"--devices {devices_path}"), devices_path)
    spec = check_tasks(read_file(tasks_path, f"--tasks {tasks_path}"), tasks_path)
    check_memory(spec, devices)
    reg, costs, part_of, tasks = profile_modules(spec.models, spec.model_size, spec.compute_s, spec.input_bytes,
                                                 spec.catalog)
    inst = Instance(devices, costs, tasks, links, default)
    load = None
    if spec.burst:
        load = Load(counts=tuple(spec.burst.get(m, 0) for m in spec.models))
    elif spec.rates:
        load = Load(rates=tuple(spec.rates.get(m, 0.0) for m in spec.models))
    t0 = time.perf_counter()
    candidates, chosen = (), ""
    if planner == "greedy":
        where = greedy(inst)
        why = "greedy found no device with room for some module (the default planner may find one)"
    else:
        sol = optimal_placement(inst, load)
        where, candidates, chosen = sol.place, sol.candidates, sol.chosen
        why = "no placement of the modules fits the devices' memory"
    solve_s = time.perf_counter() - t0
    branch_and_bound_s = best = None
    if with_branch_and_bound:
        t0 = time.perf_counter()
        best = branch_and_bound(inst)
        branch_and_bound_s = time.perf_counter() - t0
    if where is None:
        raise PlacementError(f"no placement fits: {why}"
                             + (f" (branch and bound: {'none either' if best[0] is None else 'one exists'})"
                                if with_branch_and_bound else ""))
    plan = {"devices": [d.name for d in devices], "size": spec.model_size, "models": spec.models, "custom": spec.custom,
            "plan": {part_of[k]: devices[v].name for k, v in where.items()}, "objective_s": objective(inst, where)}
    if with_branch_and_bound:
        plan["optimal_s"] = best[1]
    plan["suite_version"] = SUITE_VERSION
    extra = {}
    if spec.prism:  # checked, and resolved, as s2m3-serve will (`plan.check_plan`)
        plan["prism"] = spec.prism
        spread = check_plan(plan, len(devices), path=tasks_path).spread
        extra["prism"] = [(part, [devices[r].name for r in ranks], cfg) for part, (ranks, cfg) in sorted(spread.items())]
    if load is not None:
        plan[load.kind] = spec.burst if load.kind == "burst" else spec.rates
        plan["load_objective_s"] = load_objective(inst, where, load)
        extra.update(_load_report(inst, where, load, spec, devices, candidates, chosen))
    return PlanReport(
        plan=plan, num_models=len(spec.models), devices=devices,
        modules=[(part_of[k], devices[where[k]].name, costs[k].memory, costs[k].compute) for k in inst.used_modules()],
        device_memory=[(d.name, sum(costs[k].memory for k, v in where.items() if v == i), d.memory)
                       for i, d in enumerate(devices)],
        memory=reg.memory_report(), latency=[(t.name, task_latency(inst, t, where)) for t in tasks],
        planner=planner, solve_s=solve_s, branch_and_bound_s=branch_and_bound_s, **extra)


def _load_report(inst, where, load, spec, devices, candidates, chosen) -> dict:
    """What a plan made for a load adds to its report: each model's latency under it (a burst's
    mean, or the steady state simulated and estimated), the candidates weighed, and device use."""
    weights = load.counts or load.rates
    extra = {}
    if load.kind == "burst":
        lat = burst_latencies(inst, where, load.counts)
        per = [(m, sum(x for i, x in lat if i == ti) / n) for ti, (m, n) in enumerate(zip(spec.models, weights)) if n]
        extra["burst_s"] = max(x for _, x in lat)
    else:
        per = [(m, x, g) for m, x, g, r in zip(spec.models, steady_simulated(inst, where, load.rates),
                                               steady_latencies(inst, where, load.rates), weights) if r]
    extra.update(load=load.kind, load_latency=per, candidates=candidates, chosen=chosen,
                 device_busy=list(zip([d.name for d in devices], busy(inst, where, weights))))
    return extra
