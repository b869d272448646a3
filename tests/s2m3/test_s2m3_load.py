"""S2M3 under load: the discrete-event simulation by hand, the M/G/1 estimate against it, the
load-aware planner, and bad loads refused."""

import math
import random

import pytest

from prism_ops.s2m3.load import (Load, burst_latencies, burst_order, busy, load_objective, poisson_arrivals, simulate,
                                 steady_latencies, steady_simulated)
from prism_ops.s2m3.placement import Device, Instance, Link, ModuleCost, PlacementError, Task, random_instance
from prism_ops.s2m3.placement import task_latency
from prism_ops.s2m3.solver import local_search, optimal_placement
from test_placement import draw_feasible


def one_device(computes=(1.0,)):
    modules = {f"m{i}": ModuleCost(f"m{i}", 1, c) for i, c in enumerate(computes)}
    tasks = [Task(f"t{i}", {f"m{i}": ("input:x",)}, {"x": 0}) for i in range(len(computes))]
    return Instance([Device("only", 10)], modules, tasks)


def two_devices():
    """Tasks A (e1 -> h) and B (e2 -> h) sharing the head; e2 on the fast device b."""
    devices = [Device("a", 10, speed=1.0), Device("b", 10, speed=2.0)]
    modules = {"e1": ModuleCost("e1", 1, 1.0), "e2": ModuleCost("e2", 1, 2.0), "h": ModuleCost("h", 1, 0.5)}
    tasks = [Task("A", {"e1": ("input:x",), "h": ("e1",)}, {"x": 0}),
             Task("B", {"e2": ("input:y",), "h": ("e2",)}, {"y": 0})]
    return Instance(devices, modules, tasks, default_link=Link(1e9, 0.1)), {"e1": 0, "e2": 1, "h": 0}


def test_burst_on_one_device_queues():
    inst = one_device()
    assert burst_latencies(inst, {"m0": 0}, [3]) == [(0, 1.0), (0, 2.0), (0, 3.0)]
    assert load_objective(inst, {"m0": 0}, Load(counts=(3,))) == pytest.approx(2.0)


def test_burst_by_hand_on_two_devices():
    inst, place = two_devices()
    # A: e1 on a 0-1, h on a 1-1.5. B: input reaches b at 0.1, e2 runs 0.1-1.1, its output reaches
    # a at 1.2, where h is busy with A until 1.5: B's h runs 1.5-2.0.
    assert burst_latencies(inst, place, [1, 1]) == [(0, pytest.approx(1.5)), (1, pytest.approx(2.0))]
    # Alone, B would take 0.1 + 1 + 0.1 + 0.5.
    assert task_latency(inst, inst.tasks[1], place) == pytest.approx(1.7)
    assert burst_order([2, 1, 3]) == [0, 1, 2, 0, 2, 2]
    assert busy(inst, place, [1, 1]) == pytest.approx([2.0, 1.0])
    # Requests arriving later wait behind the one running (no preemption); among ready nodes the
    # earliest request goes first: at 1.0 A0's head (1-1.5), then A1's encoder (1.5-2.5), its head
    # (2.5-3.0: A1 is earlier than A2), then A2 (3.0-4.5).
    assert simulate(inst, place, [(0.0, 0), (0.5, 0), (0.5, 0)]) == pytest.approx([1.5, 2.5, 4.0])


def test_the_caller_dispatches_at_once_or_between_its_own_nodes():
    """Device 0 is s2m3-serve's rank 0. Its dispatch thread sends a request out when it arrives
    and takes its result in when it is back; a caller in one thread (caller_holds) does both only
    when its running node is done."""
    devices = [Device("a", 10), Device("b", 10)]
    modules = {"e1": ModuleCost("e1", 1, 1.0), "e3": ModuleCost("e3", 1, 0.1)}
    tasks = [Task("A", {"e1": ("input:x",)}, {"x": 0}), Task("C", {"e3": ("input:x",)}, {"x": 0})]
    inst = Instance(devices, modules, tasks, default_link=Link(1e9, 0.1))
    place = {"e1": 0, "e3": 1}
    # C arrives at 0.5, leaves at 1.0, reaches b at 1.1, runs to 1.2, is back at 1.3.
    assert simulate(inst, place, [(0.0, 0), (0.5, 1)], caller_holds=True) == pytest.approx([1.0, 0.8])
    # C at 0: out at once, back at 0.3, while a computes A until 1.0: taken in at 1.0.
    assert simulate(inst, place, [(0.0, 0), (0.0, 1)], caller_holds=True) == pytest.approx([1.0, 1.0])
    # With the dispatch thread C goes out at 0.5 and is back at 0.8, whatever a computes.
    assert simulate(inst, place, [(0.0, 0), (0.5, 1)]) == pytest.approx([1.0, 0.3])
    assert simulate(inst, place, [(0.0, 0), (0.0, 1)]) == pytest.approx([1.0, 0.3])


@pytest.mark.parametrize("seed", range(6))
def test_one_request_alone_is_the_objective(seed):
    rng = random.Random(seed)
    inst = draw_feasible(rng)
    place = {m: rng.randrange(len(inst.devices)) for m in inst.used_modules()}
    for i, t in enumerate(inst.tasks):
        (alone,) = simulate(inst, place, [(0.0, i)])
        # The objective runs a task's parallel branches in parallel even on one device; the
        # simulation (like s2m3-serve) runs one node at a time there.
        encoders = [place[v] for v, srcs in t.inputs.items() if all(s.startswith("input:") for s in srcs)]
        if len(set(encoders)) == len(encoders):
            assert alone == pytest.approx(task_latency(inst, t, place))
        else:
            assert alone >= task_latency(inst, t, place) - 1e-12


def test_mg1_by_hand_and_against_the_simulation():
    inst = one_device((0.2, 0.1))
    place, rates = {"m0": 0, "m1": 0}, (2.0, 1.0)
    # rho = 0.5, sum(rate s^2) = 0.09, W = 0.09 / (2 (1 - 0.5)) = 0.09.
    assert busy(inst, place, rates) == pytest.approx([0.5])
    assert steady_latencies(inst, place, rates) == pytest.approx([0.29, 0.19])
    want = (2 * 0.29 + 0.19) / 3
    assert load_objective(inst, place, Load(rates=rates), "mg1") == pytest.approx(want)
    arrivals = poisson_arrivals(rates, 30000, seed=1)
    got = simulate(inst, place, arrivals)
    assert sum(got) / len(got) == pytest.approx(want, rel=0.04)
    # The planner's objective: 2 x 1500 simulated arrivals (sampling error a few %).
    assert load_objective(inst, place, Load(rates=rates)) == pytest.approx(want, rel=0.08)
    assert steady_latencies(inst, place, (5.0, 1.0)) == [math.inf, math.inf]  # rho = 1.1
    assert steady_simulated(inst, place, (5.0, 1.0)) == [math.inf, math.inf]
    with pytest.raises(ValueError, match="estimate must be 'simulation' or 'mg1'"):
        load_objective(inst, place, Load(rates=rates), "mm1")


def test_mg1_counts_one_wait_per_device_a_request_visits():
    """A chain m0 -> m1 on one device: earliest-request-first serves a request's second node before
    newer requests, so the device is one FIFO queue of whole requests (S = 0.3 s at 2/s:
    rho 0.6, W = 2 * 0.09 / (2 * 0.4) = 0.225 s), not two queues of nodes."""
    modules = {"m0": ModuleCost("m0", 1, 0.2), "m1": ModuleCost("m1", 1, 0.1)}
    inst = Instance([Device("only", 10)], modules, [Task("t", {"m0": ("input:x",), "m1": ("m0",)}, {"x": 0})])
    place = {"m0": 0, "m1": 0}
    assert steady_latencies(inst, place, (2.0,)) == pytest.approx([0.525])
    got = simulate(inst, place, poisson_arrivals((2.0,), 20000, seed=2))
    assert sum(got) / len(got) == pytest.approx(0.525, rel=0.05)


def test_device_0_holds_dispatch_in_the_estimate():
    """A caller in one thread (caller_holds): work on device 0 delays the requests it sends
    elsewhere by the rest of its running node."""
    inst, _ = two_devices()
    on = {"e1": 0, "e2": 1, "h": 1}
    # Device 1 (speed 2): A's h 0.25 s, B's e2 + h 1.25 s at 0.2/s each: rho 0.3, sum(rate S^2)
    # 0.325, W = 0.325 / 1.4. B alone: 0.1 in, 1.0 e2, 0.25 h, 0.1 back. Device 0 runs A's e1
    # (1 s at 0.2/s): a hold of 0.2 * 1 / 2 = 0.1 s on B's dispatch and again on its result.
    assert steady_latencies(inst, on, (0.2, 0.2), caller_holds=True)[1] == pytest.approx(1.45 + 0.325 / 1.4 + 2 * 0.1)
    # s2m3-serve's dispatch thread: no hold.
    assert steady_latencies(inst, on, (0.2, 0.2))[1] == pytest.approx(1.45 + 0.325 / 1.4)
    # With nothing on device 0 there is no hold.
    off = {"e1": 1, "e2": 1, "h": 1}
    rho, second = 0.2 * 0.75 + 0.2 * 1.25, 0.2 * 0.75 ** 2 + 0.2 * 1.25 ** 2
    assert steady_latencies(inst, off, (0.2, 0.2))[1] == pytest.approx(1.45 + second / (2 * (1 - rho)))


@pytest.mark.parametrize("seed", range(2))
def test_steady_planner_never_worse_than_a_candidate(seed):
    """On random instances the plan returned is the best, by its own simulation, of every plan it
    compared, and those always include the one-device plans and the burst plan."""
    rng = random.Random(seed)
    inst = draw_feasible(rng)
    inst.devices = [Device(d.name, 1e12, d.speed) for d in inst.devices]  # every device can hold everything
    place = {m: 0 for m in inst.used_modules()}
    rates = tuple(0.6 / sum(busy(inst, place, [1] * len(inst.tasks))) for _ in inst.tasks)
    sol = optimal_placement(inst, Load(rates=rates), time_limit=0.3)
    names = [n for n, _ in sol.candidates]
    assert "burst plan" in names and all(f"all on {d.name}" in names for d in inst.devices)
    assert sol.cost <= min(c for _, c in sol.candidates) + 1e-12
    assert sol.cost == pytest.approx(load_objective(inst, sol.place, Load(rates=rates)), rel=1e-12)
    assert sol.cost <= load_objective(inst, place, Load(rates=rates)) + 1e-12  # never worse than one device


def test_load_aware_planner_spreads_a_burst():
    """Two equal devices, two tasks of 1 s each: alone, both fit best on the caller (no transfer);
    in a burst, the second waits 1 s there, more than the 0.2 s round trip to the other device."""
    devices = [Device("a", 10), Device("b", 10)]
    modules = {"e1": ModuleCost("e1", 1, 1.0), "e2": ModuleCost("e2", 1, 1.0)}
    tasks = [Task("A", {"e1": ("input:x",)}, {"x": 0}), Task("B", {"e2": ("input:x",)}, {"x": 0})]
    inst = Instance(devices, modules, tasks, default_link=Link(1e9, 0.1))
    assert optimal_placement(inst).place == {"e1": 0, "e2": 0}
    sol = optimal_placement(inst, Load(counts=(1, 1)))
    assert sorted(sol.place.values()) == [0, 1] and sol.cost == pytest.approx((1.0 + 1.2) / 2)
    steady = optimal_placement(inst, Load(rates=(0.6, 0.6)))  # 1.2 s of work per s: one device cannot keep up
    assert sorted(steady.place.values()) == [0, 1] and math.isfinite(steady.cost)


def test_local_search_never_worsens():
    rng = random.Random(3)
    inst = random_instance(rng, num_devices=3)
    load = Load(counts=tuple(1 + i % 2 for i in range(len(inst.tasks))))
    start = optimal_placement(inst).place
    if start is None:
        pytest.skip("infeasible draw")
    _, cost = local_search(inst, start, lambda i, p: load_objective(i, p, load))
    assert cost <= load_objective(inst, start, load) + 1e-12


@pytest.mark.parametrize("kw,message", [
    ({}, "either counts"), ({"counts": (1,), "rates": (1.0,)}, "either counts"),
    ({"counts": (-1,)}, "finite and >= 0"), ({"rates": (math.nan,)}, "finite and >= 0"),
    ({"counts": (0, 0)}, "all zero"),
])
def test_bad_loads(kw, message):
    with pytest.raises(PlacementError, match=message):
        Load(**kw)
