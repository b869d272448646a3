"""S2M3 placement: which device holds each shared module, so that tasks finish soonest.

A cluster is devices (memory in bytes, relative speed) joined by links (bytes/s, one-way
latency in s); requests arrive at and return to the first device. A module has a memory
footprint, a compute time (s on a speed-1 device) and the bytes of its output. A task is a
small DAG of modules: each node lists its inputs, either other modules of the task or a
modality ("input:image", with the bytes the caller sends); its one sink sends
`reply_bytes` back to the caller.

A task's latency, for a placement, is its sink's finish time plus the reply: a node starts
when its last input has arrived (inputs travel in parallel) and runs for compute / speed.
The objective is the sum of the tasks' latencies. Identical modules are shared, so every
module name is placed once, whatever number of tasks use it.

`greedy` takes modules in decreasing compute cost and puts each on the device with room that
raises the objective (over the modules placed so far) least. `branch_and_bound` (the exact
solver) searches all placements depth-first in the same order, pruning a branch once its
partial objective, which can only grow, reaches the best complete one.

The default planner is `prism_ops.s2m3.solver.optimal_placement` (a MILP, optimal for this objective); greedy
is S2M3's, kept for comparison and `s2m3-place --planner greedy`. The objective runs a task's
parallel branches in parallel even when they share a device, and sees no other requests; the
load-aware objective (`prism_ops.s2m3.load`) simulates both.

Pure logic with plain numbers: no files, no torch (`prism_ops.s2m3.profiler` measures the
module costs, `prism_ops.s2m3.planner` reads the files and writes the plan).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class InputError(ValueError):
    """A bad S2M3 input: a file that cannot be read or parsed, a field, a request line, a flag or
    an output path. The commands exit with code 2 and its one line."""


class PlacementError(InputError):
    """A bad cluster, task or plan description, or an instance with no feasible placement."""


@dataclass(frozen=True)
class Device:
    name: str
    memory: float  # bytes
    speed: float = 1.0  # relative to the machine the compute times were profiled on


@dataclass(frozen=True)
class Link:
    bandwidth: float  # bytes/s
    latency: float = 0.0  # s


@dataclass(frozen=True)
class ModuleCost:
    """What placement knows of one module: its memory, compute time and output size."""

    name: str
    memory: float  # bytes (parameters and buffers)
    compute: float  # s on a speed-1 device
    output_bytes: float = 0.0


@dataclass(frozen=True)
class Task:
    name: str
    inputs: dict  # node -> tuple of its inputs: module names or "input:<modality>"
    input_bytes: dict = field(default_factory=dict)  # modality -> bytes the caller sends
    reply_bytes: float = 0.0

    def order(self) -> list[str]:
        """The task's modules in dependency order; PlacementError on a cycle or a dangling input."""
        seen, done, out = set(), set(), []

        def visit(node, path):
            if node in done:
                return
            if node in seen:
                raise PlacementError(f"task {self.name!r}: cyclic graph through {' -> '.join(path + [node])}")
            seen.add(node)
            for src in self.inputs[node]:
                if src.startswith("input:"):
                    if src[6:] not in self.input_bytes:
                        raise PlacementError(f"task {self.name!r}: {node!r} reads {src!r}, which has no input_bytes")
                    continue
                if src not in self.inputs:
                    raise PlacementError(f"task {self.name!r}: {node!r} reads unknown node {src!r}")
                visit(src, path + [node])
            done.add(node)
            out.append(node)

        for node in self.inputs:
            visit(node, [])
        return out

    def sink(self) -> str:
        used = {s for srcs in self.inputs.values() for s in srcs}
        sinks = [n for n in self.inputs if n not in used]
        if len(sinks) != 1:
            raise PlacementError(f"task {self.name!r} must have exactly one output node, has {sinks}")
        return sinks[0]


@dataclass
class Instance:
    devices: list[Device]
    modules: dict[str, ModuleCost]
    tasks: list[Task]
    links: dict = field(default_factory=dict)  # (a, b) -> Link, either order
    default_link: Link = Link(bandwidth=12.5e6, latency=1e-3)  # 100 Mbit/s

    def __post_init__(self):
        if not self.devices:
            raise PlacementError("devices: at least one device is needed")
        for t in self.tasks:
            for node in t.order():
                if node not in self.modules:
                    raise PlacementError(f"task {t.name!r} uses unknown module {node!r}")
            t.sink()
        big = [m for m in self.modules.values() if m.memory > max(d.memory for d in self.devices)]
        if big:
            raise PlacementError(f"module {big[0].name!r} ({big[0].memory:.3g} bytes) fits on no device "
                                 f"(largest: {max(d.memory for d in self.devices):.3g} bytes)")

    def link(self, a: int, b: int) -> Link:
        key = (self.devices[a].name, self.devices[b].name)
        return self.links.get(key) or self.links.get(key[::-1]) or self.default_link

    def transfer(self, a: int, b: int, nbytes: float) -> float:
        if a == b:
            return 0.0
        lk = self.link(a, b)
        return lk.latency + nbytes / lk.bandwidth

    def used_modules(self) -> list[str]:
        return sorted({n for t in self.tasks for n in t.inputs}, key=lambda n: (-self.modules[n].compute, n))


def task_latency(inst: Instance, task: Task, place: dict, wait=None) -> float:
    """Latency of one task; modules not in `place` yet are skipped (a partial objective). `wait`
    ({node: s}, optional) delays a node before it runs (queueing under load)."""
    finish = {}
    for node in task.order():
        if node not in place:
            continue
        dev = place[node]
        start = 0.0
        for src in task.inputs[node]:
            if src.startswith("input:"):
                arrive = inst.transfer(0, dev, task.input_bytes[src[6:]])
            elif src in finish:
                arrive = finish[src] + inst.transfer(place[src], dev, inst.modules[src].output_bytes)
            else:
                continue
            start = max(start, arrive)
        finish[node] = start + (wait.get(node, 0.0) if wait else 0.0) + inst.modules[node].compute / inst.devices[dev].speed
    sink = task.sink()
    if sink not in finish:
        return max(finish.values(), default=0.0)
    return finish[sink] + inst.transfer(place[sink], 0, task.reply_bytes)


def objective(inst: Instance, place: dict) -> float:
    return sum(task_latency(inst, t, place) for t in inst.tasks)


def greedy(inst: Instance) -> dict | None:
    """Greedy placement {module: device index}, or None when a module finds no device with room."""
    place, free = {}, [d.memory for d in inst.devices]
    for name in inst.used_modules():
        need, best = inst.modules[name].memory, None
        for dev in range(len(inst.devices)):
            if need > free[dev]:
                continue
            cost = objective(inst, {**place, name: dev})
            if best is None or cost < best[0] - 1e-12:
                best = (cost, dev)
        if best is None:
            return None
        place[name] = best[1]
        free[best[1]] -= need
    return place


def branch_and_bound(inst: Instance) -> tuple[dict | None, float]:
    """An optimal placement and its objective (None, inf when none fits), by branch and bound."""
    names = inst.used_modules()
    free = [d.memory for d in inst.devices]
    best = [None, float("inf")]

    def search(i, place):
        partial = objective(inst, place)
        if partial >= best[1] - 1e-12:
            return  # the objective only grows as modules are added
        if i == len(names):
            best[0], best[1] = dict(place), partial
            return
        need = inst.modules[names[i]].memory
        for dev in range(len(inst.devices)):
            if need <= free[dev]:
                free[dev] -= need
                place[names[i]] = dev
                search(i + 1, place)
                del place[names[i]]
                free[dev] += need

    search(0, {})
    return best[0], best[1]


def random_instance(rng, num_devices=3, num_encoders=4, num_heads=3, num_tasks=4) -> Instance:
    """A random small instance (memory in GB-scale bytes, links 1-100 MB/s): for the study of greedy
    against branch and bound."""
    GB = 1e9
    devices = [Device(f"d{i}", memory=rng.uniform(0.6, 2.0) * GB, speed=rng.uniform(0.5, 2.0))
               for i in range(num_devices)]
    links = {}
    for a in range(num_devices):
        for b in range(a + 1, num_devices):
            links[(devices[a].name, devices[b].name)] = Link(rng.uniform(1e6, 100e6), rng.uniform(1e-3, 10e-3))
    modules = {}
    for i in range(num_encoders):
        modules[f"enc{i}"] = ModuleCost(f"enc{i}", rng.uniform(0.1, 0.9) * GB, rng.uniform(0.01, 0.2),
                                        rng.uniform(1e4, 2e6))
    for i in range(num_heads):
        modules[f"head{i}"] = ModuleCost(f"head{i}", rng.uniform(0.05, 0.8) * GB, rng.uniform(0.005, 0.3),
                                         rng.uniform(1e2, 1e4))
    tasks = []
    for t in range(num_tasks):
        encs = rng.sample(sorted(k for k in modules if k.startswith("enc")), rng.randint(1, 2))
        head = rng.choice(sorted(k for k in modules if k.startswith("head")))
        inputs = {e: (f"input:{e}",) for e in encs}
        inputs[head] = tuple(encs)
        tasks.append(Task(f"task{t}", inputs, {e: rng.uniform(1e4, 1e6) for e in encs}, rng.uniform(1e2, 1e4)))
    used = {n for t in tasks for n in t.inputs}
    return Instance(devices, {k: v for k, v in modules.items() if k in used}, tasks, links)

