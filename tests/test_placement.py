"""S2M3 placement: the latency model by hand, branch and bound against brute force, greedy, bad input."""

import itertools
import random

import pytest

from prism_ops.s2m3.placement import (Device, Instance, Link, ModuleCost, PlacementError, Task, branch_and_bound,
                                      greedy, objective, random_instance, task_latency)

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
    while True:
        try:
            inst = random_instance(rng)
            break
        except PlacementError:
            continue
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
