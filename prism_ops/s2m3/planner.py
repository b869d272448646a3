"""S2M3 planning: from a devices file and a tasks file to a plan (which device holds each part)
and the figures prism-place reports about it.

`make_plan` checks both files (`files`), profiles the modules (`profiler`), places them
(`placement.greedy`, and `branch_and_bound` on request) and returns a `PlanReport`; the plan dict
it holds is what `prism-place --json` writes and prism-serve reads (`plan.check_plan`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .files import check_memory, check_tasks, parse_devices, read_file
from .placement import Device, Instance, PlacementError, branch_and_bound, greedy, objective, task_latency
from .profiler import profile_modules


@dataclass(frozen=True)
class PlanReport:
    """A plan and what it predicts."""

    plan: dict  # {devices, size, models, custom, plan: {part: device}, objective_s[, optimal_s]}
    num_models: int
    devices: list[Device]
    modules: list[tuple[str, str, float, float]]  # (part, device, bytes, compute s), costliest first
    device_memory: list[tuple[str, float, float]]  # (device, bytes placed on it, bytes it has)
    memory: dict  # Registry.memory_report(): bytes with sharing against one copy per model
    latency: list[tuple[str, float]]  # (model, predicted latency s), in the tasks file's order


def make_plan(devices_path: str, tasks_path: str, exact: bool = False) -> PlanReport:
    """Check both files, profile the modules, place them greedily (and, with `exact`, also by
    branch and bound: the plan then has `optimal_s`). PlacementError names the first problem."""
    devices, links, default = parse_devices(read_file(devices_path), devices_path)
    spec = check_tasks(read_file(tasks_path), tasks_path)
    check_memory(spec, devices)
    reg, costs, part_of, tasks = profile_modules(spec.models, spec.size, spec.compute_s, spec.input_bytes,
                                                 spec.catalog)
    inst = Instance(devices, costs, tasks, links, default)
    where = greedy(inst)
    if where is None:
        raise PlacementError("no placement fits: greedy found no device with room for some module"
                             + (f" (exact: {'none either' if branch_and_bound(inst)[0] is None else 'one exists'})"
                                if exact else ""))
    plan = {"devices": [d.name for d in devices], "size": spec.size, "models": spec.models, "custom": spec.custom,
            "plan": {part_of[k]: devices[v].name for k, v in where.items()}, "objective_s": objective(inst, where)}
    if exact:
        plan["optimal_s"] = branch_and_bound(inst)[1]
    return PlanReport(
        plan=plan, num_models=len(spec.models), devices=devices,
        modules=[(part_of[k], devices[where[k]].name, costs[k].memory, costs[k].compute) for k in inst.used_modules()],
        device_memory=[(d.name, sum(costs[k].memory for k, v in where.items() if v == i), d.memory)
                       for i, d in enumerate(devices)],
        memory=reg.memory_report(), latency=[(t.name, task_latency(inst, t, where)) for t in tasks])
