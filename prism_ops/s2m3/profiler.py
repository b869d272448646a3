"""S2M3 module profiler: build models with sharing and measure what placement needs of each
unique module (memory, compute time on this machine, output bytes).

`profile_modules` is s2m3-place's measuring step; bench/bench_s2m3_latency.py uses it too.
"""

from __future__ import annotations

import time

from .modules import Registry
from .placement import ModuleCost, Task
from .suite import BUILTIN, Catalog, Model, example_inputs


def profile_modules(models, size: str, given: dict, input_bytes: dict, catalog: Catalog = BUILTIN,
                    repeats: int = 1) -> tuple[Registry, dict[str, ModuleCost], dict[str, str], list[Task]]:
    """Build the models with sharing; time every unique module once on example inputs.

    Returns (registry, {module key: ModuleCost}, {module key: part name}, [Task per model]); a
    module key is the first 12 hex digits of its content hash; `given` ({part: s}) replaces
    measured compute times, `input_bytes` ({modality: bytes}) is what the caller sends; with
    `repeats` > 1 a module is called once to warm up, and its time is the median of `repeats`.
    """
    reg = Registry()
    built = [Model(m, size, reg, catalog) for m in models]
    x = example_inputs(size)
    costs, part_of, seen = {}, {}, {}
    for model in built:
        outs = {}
        for node in model.task_order():
            mod = model.modules[node]
            args = [x[s[6:]] if s.startswith("input:") else outs[s] for s in model.dag[node]]
            # A shared module fed the very same tensors as in an earlier model: reuse its output.
            call = (mod.hash, tuple(id(a) for a in args))
            if call not in seen:
                took = []
                for _ in range(repeats + (repeats > 1)):  # with repeats, one warm-up call first
                    t0 = time.perf_counter()
                    out = mod(*args)
                    took.append(time.perf_counter() - t0)
                seen[call] = (out, sorted(took[repeats > 1:])[(repeats - 1) // 2])
            outs[node], took = seen[call]
            key = mod.hash[:12]
            part = part_of[key] = catalog.part(model.name, node)
            if key not in costs:
                out = outs[node]
                costs[key] = ModuleCost(key, mod.nbytes, given.get(part, took), out.numel() * out.element_size())
    tasks = [m.task({k: float(v) for k, v in input_bytes.items()}) for m in built]
    return reg, costs, part_of, tasks
