"""S2M3 placement: the latency model by hand, branch and bound and the default planner (MILP)
against brute force, greedy, bad input."""

import itertools
import random
import time

import pytest

from prism_ops.s2m3.placement import (Device, Instance, Link, ModuleCost, PlacementError, Task, branch_and_bound,
                                      greedy, objective, random_instance, task_latency)
from prism_ops.s2m3.solver import milp_placement, optimal_placement
from prism_ops.s2m3.suite import MODELS

MB = 1e6


def two_device_instance(memory0=10 * MB):
    devices = [Device("caller", memory0, speed=1.0), Device("fast", 10 * MB, speed=2.0)]
    modules = {"enc": ModuleCost("enc", 4 * MB, compute=1.0, output_bytes=1 * MB),
               "head": ModuleCost("head", 4 * MB, compute=0.5, output_bytes=0)}
    task = Task("t", {"enc": ("input:img",), "head": ("enc",)}, {"img": 2 * MB}, reply_bytes=0.5 * MB)
    links = {("caller", "fast"): Link(bandwidth=1 * MB, latency=0.1)}
    return Instance(devices, modules, [task], links)


def test_latency_by_hand():
    inst = two_device_instance()
    t = inst.tasks[0]
    assert task_latency(inst, t, {"enc": 0, "head": 0}) == pytest.approx(1.5)
    # enc on the fast device: 0.1 + 2 s to send the image, 0.5 s compute, 0.1 + 1 s features back,
    # 0.5 s head on the caller, no reply transfer.
    assert task_latency(inst, t, {"enc": 1, "head": 0}) == pytest.approx(2.1 + 0.5 + 1.1 + 0.5)
    # both on the fast device: 2.1 + 0.5 + 0.25 + reply 0.1 + 0.5.
    assert task_latency(inst, t, {"enc": 1, "head": 1}) == pytest.approx(2.1 + 0.75 + 0.6)


def test_parallel_branches_take_the_slowest():
    devices = [Device("a", 100 * MB), Device("b", 100 * MB)]
    modules = {"e1": ModuleCost("e1", 1, 1.0, 0), "e2": ModuleCost("e2", 1, 3.0, 0), "h": ModuleCost("h", 1, 0.5, 0)}
    task = Task("t", {"e1": ("input:x",), "e2": ("input:y",), "h": ("e1", "e2")}, {"x": 0, "y": 0})
    inst = Instance(devices, modules, [task], default_link=Link(1e9, 0.0))
    assert task_latency(inst, task, {"e1": 0, "e2": 1, "h": 0}) == pytest.approx(3.5)


def brute_force(inst):
    names = inst.used_modules()
    best = (None, float("inf"))
    for devs in itertools.product(range(len(inst.devices)), repeat=len(names)):
        load = [0.0] * len(inst.devices)
        for n, d in zip(names, devs):
            load[d] += inst.modules[n].memory
        if any(load[d] > inst.devices[d].memory for d in range(len(inst.devices))):
            continue
        place = dict(zip(names, devs))
        c = objective(inst, place)
        if c < best[1]:
            best = (place, c)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_branch_and_bound_equals_brute_force_and_greedy_is_feasible(seed):
    rng = random.Random(seed)
    inst = draw_feasible(rng)
    place, cost = branch_and_bound(inst)
    ref_place, ref = brute_force(inst)
    assert (place is None) == (ref_place is None)
    if place is None:
        return
    assert cost == pytest.approx(ref)
    g = greedy(inst)
    if g is not None:
        load = [0.0] * len(inst.devices)
        for n, d in g.items():
            load[d] += inst.modules[n].memory
        assert all(load[d] <= inst.devices[d].memory for d in range(len(inst.devices)))
        assert objective(inst, g) >= cost - 1e-12


def test_shared_modules_are_placed_once():
    inst = two_device_instance()
    t2 = Task("t2", {"enc": ("input:img",), "head": ("enc",)}, {"img": 1 * MB})
    inst = Instance(inst.devices, inst.modules, inst.tasks + [t2], inst.links)
    assert inst.used_modules() == ["enc", "head"]
    assert set(greedy(inst)) == {"enc", "head"}


def test_infeasible_memory_is_reported():
    inst = two_device_instance()
    small = [Device("caller", 5 * MB), Device("fast", 5 * MB)]
    inst = Instance(small, inst.modules, inst.tasks, inst.links)  # each fits alone, not both on one
    assert branch_and_bound(inst)[0] is not None
    tiny = Instance([Device("only", 5 * MB)], inst.modules, inst.tasks)
    assert branch_and_bound(tiny) == (None, float("inf")) and greedy(tiny) is None


@pytest.mark.parametrize("inputs,message", [
    ({"a": ("b",), "b": ("a",), "h": ("a",)}, "cyclic graph"),
    ({"enc": ("input:img",), "head": ("nope",)}, "unknown node 'nope'"),
    ({"enc": ("input:audio",), "head": ("enc",)}, "has no input_bytes"),
    ({"enc": ("input:img",), "head": ("enc",), "other": ("input:img",)}, "exactly one output node"),
])
def test_bad_tasks_are_refused(inputs, message):
    modules = {n: ModuleCost(n, 1, 1.0) for n in ("a", "b", "h", "enc", "head", "other")}
    with pytest.raises(PlacementError, match=message):
        Instance([Device("d", 10)], modules, [Task("t", inputs, {"img": 1})])


def test_unknown_module_and_module_too_large():
    with pytest.raises(PlacementError, match="unknown module 'head'"):
        Instance([Device("d", 10)], {"enc": ModuleCost("enc", 1, 1.0)},
                 [Task("t", {"enc": ("input:img",), "head": ("enc",)}, {"img": 1})])
    with pytest.raises(PlacementError, match="'enc' .* fits on no device"):
        Instance([Device("d", 10)], {"enc": ModuleCost("enc", 11, 1.0)},
                 [Task("t", {"enc": ("input:img",)}, {"img": 1})])


def draw_feasible(rng, **kw):
    """The first random instance of `rng` whose every module fits some device."""
    while True:
        try:
            return random_instance(rng, **kw)
        except PlacementError:
            continue


def feasible_draws(seed, count, **kw):
    rng = random.Random(seed)
    return [draw_feasible(rng, **kw) for _ in range(count)]


@pytest.mark.parametrize("seed", range(4))
def test_planner_equals_brute_force(seed):
    """The default planner reaches the optimum, and finds a placement whenever one fits, on random
    small instances (2-4 devices, uneven memory, slow links)."""
    for inst in feasible_draws(100 + seed, 6, num_devices=2 + seed % 3, num_encoders=3, num_heads=2, num_tasks=3):
        ref_place, ref = brute_force(inst)
        sol = optimal_placement(inst)
        assert (sol.place is None) == (ref_place is None)
        if ref_place is None:
            assert sol.proven
            continue
        assert sol.proven and sol.cost == pytest.approx(ref, rel=1e-9)
        assert objective(inst, sol.place) == pytest.approx(ref, rel=1e-9)
        load = [0.0] * len(inst.devices)
        for n, d in sol.place.items():
            load[d] += inst.modules[n].memory
        assert all(load[d] <= inst.devices[d].memory for d in range(len(inst.devices)))


def test_planner_finds_a_placement_greedy_misses():
    """Greedy fills the caller with A and B (no transfers); then C fits nowhere. C and B on the
    caller and A on the other device fit."""
    devices = [Device("caller", 7), Device("other", 3)]
    modules = {"A": ModuleCost("A", 3, 2.0), "B": ModuleCost("B", 3, 1.0), "C": ModuleCost("C", 4, 0.5)}
    tasks = [Task(n, {n: ("input:x",)}, {"x": 0}) for n in modules]
    inst = Instance(devices, modules, tasks, default_link=Link(1e9, 0.1))
    assert greedy(inst) is None
    sol = optimal_placement(inst)
    assert sol.place == {"A": 1, "B": 0, "C": 0} and sol.cost == pytest.approx(2.2 + 1.0 + 0.5)
    assert milp_placement(Instance([Device("d", 5)], modules, tasks)) == (None, True)


def test_planner_is_fast_on_the_whole_suite():
    """12 models (20 unique modules) on 4 devices in well under 2 s, proven optimal."""
    rng = random.Random(0)
    modules, tasks = {}, []
    for name, (_, nodes) in MODELS.items():
        for part, _ in nodes.values():
            modules[part] = ModuleCost(part, rng.uniform(1, 300) * MB, rng.uniform(1e-4, 0.5), rng.uniform(4, 3e3))
        inputs = {nodes[n][0]: tuple(x if x.startswith("input:") else nodes[x][0] for x in srcs)
                  for n, (_, srcs) in nodes.items()}
        mods = {x[6:] for srcs in inputs.values() for x in srcs if x.startswith("input:")}
        tasks.append(Task(name, inputs, {m: 6e5 for m in mods}, 4e3))
    assert len(modules) == 20
    devices = [Device(f"d{i}", 700 * MB, speed=s) for i, s in enumerate((1.0, 0.5, 2.0, 0.3))]
    links = {("d0", "d1"): Link(10e6 / 8, 5e-3), ("d0", "d2"): Link(1e9 / 8, 1e-3)}
    inst = Instance(devices, modules, tasks, links)
    t0 = time.perf_counter()
    sol = optimal_placement(inst)
    assert time.perf_counter() - t0 < 2.0 and sol.proven
    g = greedy(inst)
    assert g is None or objective(inst, g) >= sol.cost - 1e-9
