"""S2M3 module profiler: build models with sharing and measure what placement needs of each
unique module (memory, compute time on this machine, output bytes).

`profile_modules` is s2m3-place's measuring step; bench/bench_s2m3_latency.py uses it too.
"""

from __future__ import annotations

import statistics
import time

from .modules import Registry
from .placement import ModuleCost, Task
from .suite import BUILTIN, Catalog, Model, example_inputs


def _one_round(built, x, catalog) -> dict:
    """Run every model's nodes once, in task order: {module key: (part, module, seconds, output)}
    of each module's first call. A shared module fed the very same tensors as in an earlier
    model is not run again (its output is reused)."""
    took, seen = {}, {}
    for model in built:
        outs = {}
        for node in model.task_order():
            mod = model.modules[node]
            args = [x[s[6:]] if s.startswith("input:") else outs[s] for s in model.dag[node]]
            call = (mod.hash, tuple(id(a) for a in args))
            if call not in seen:
                t0 = time.perf_counter()
                seen[call] = mod(*args)
                took.setdefault(mod.hash[:12], (catalog.part(model.name, node), mod, time.perf_counter() - t0,
                                                seen[call]))
            outs[node] = seen[call]
    return took


def profile_modules(models, size: str, given: dict, input_bytes: dict, catalog: Catalog = BUILTIN,
                    repeats: int = 1) -> tuple[Registry, dict[str, ModuleCost], dict[str, str], list[Task]]:
    """Build the models with sharing; time every unique module on example inputs.

    Returns (registry, {module key: ModuleCost}, {module key: part name}, [Task per model]); a
    module key is the first 12 hex digits of its content hash; `given` ({part: s}) replaces
    measured compute times, `input_bytes` ({modality: bytes}) is what the caller sends. With
    `repeats` > 1 one round over all the models warms up, and a module's time is its median over
    `repeats` more rounds. Rounds, not a module's calls back to back, because serving interleaves
    the modules: a small module (whisper-tiny's encoder is about the size of a 32 MB L3) called
    back to back keeps its weights in cache and times faster than it runs among the others.
    """
    reg = Registry()
    built = [Model(m, size, reg, catalog) for m in models]
    x = example_inputs(size)
    rounds = [_one_round(built, x, catalog) for _ in range(repeats + (repeats > 1))][repeats > 1:]
    costs, part_of = {}, {}
    for key, (part, mod, _, out) in rounds[0].items():
        part_of[key] = part
        took = statistics.median_low(r[key][2] for r in rounds)
        costs[key] = ModuleCost(key, mod.nbytes, given.get(part, took), out.numel() * out.element_size())
    tasks = [m.task({k: float(v) for k, v in input_bytes.items()}) for m in built]
    return reg, costs, part_of, tasks
