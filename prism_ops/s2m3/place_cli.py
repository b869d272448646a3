"""prism-place: place the suite's shared modules on devices and predict each task's latency.

    prism-place --devices devices.yaml --tasks tasks.yaml [--exact] [--json plan.json]

devices.yaml (or .json):
    devices: [{name: jetson0, memory_gb: 8, speed: 1.0}, {name: jetson1, memory_gb: 4, speed: 0.5}]
    links: [{a: jetson0, b: jetson1, mbit: 100, latency_ms: 2}]      # others: default_link
    default_link: {mbit: 100, latency_ms: 2}
tasks.yaml:
    models: [imagenet-vitb16, sentiment-minilm, my-model, ...]        # the suite's, or custom
    custom: {my-model: {task: audio tagging, nodes: {whisper-tiny: [whisper-tiny, [input:audio]],
             cls: [classifier:384x50:seed7, [whisper-tiny]]}}}
    size: full                                                         # or tiny
    input_bytes: {image: 602112, text: 256, audio: 960000}
    compute_s: {vit-b16: 0.2}          # optional, per part; the rest is profiled on this machine

Requests arrive at the first device. Everything is checked (unknown models or parts, a module
larger than every device, cyclic or dangling task graphs) before any model is built.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from .placement import (Device, Instance, Link, ModuleCost, PlacementError, branch_and_bound, greedy, objective,
                        task_latency)


def read_file(path: str) -> dict:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise PlacementError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the file's fault
        raise PlacementError(f"{path}: not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: {e}") from None
    if not isinstance(data, dict):
        raise PlacementError(f"{path}: expected a mapping at the top level")
    return data


def _link(spec, where) -> Link:
    try:
        return Link(bandwidth=float(spec["mbit"]) * 1e6 / 8, latency=float(spec.get("latency_ms", 0)) / 1e3)
    except (KeyError, TypeError, ValueError):
        raise PlacementError(f"{where}: a link needs mbit (and optionally latency_ms), got {spec!r}") from None


def parse_devices(data: dict, path: str = "devices"):
    try:
        devices = [Device(str(d["name"]), float(d["memory_gb"]) * 1e9, float(d.get("speed", 1.0)))
                   for d in data["devices"]]
    except (KeyError, TypeError, ValueError):
        raise PlacementError(f"{path}: devices must be a list of {{name, memory_gb, speed}}") from None
    if not devices:
        raise PlacementError(f"{path}: devices is empty")
    names = {d.name for d in devices}
    links = {}
    for spec in data.get("links", []):
        if spec.get("a") not in names or spec.get("b") not in names:
            raise PlacementError(f"{path}: link {spec!r} names a device that is not in devices {sorted(names)}")
        links[(spec["a"], spec["b"])] = _link(spec, path)
    default = _link(data["default_link"], path) if "default_link" in data else Link(12.5e6, 2e-3)
    return devices, links, default


def check_tasks(data: dict, path: str = "tasks"):
    from .suite import MODELS, add_models

    try:
        add_models(data.get("custom"))
    except ValueError as e:
        raise PlacementError(f"{path}: {e}") from None
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise PlacementError(f"{path}: models must be a non-empty list of names from {sorted(MODELS)}")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise PlacementError(f"{path}: unknown model(s) {unknown}; known: {sorted(MODELS)}")
    parts = {p for m in models for p, _ in MODELS[m][1].values()}
    extra = sorted(set(data.get("compute_s", {})) - parts)
    if extra:
        raise PlacementError(f"{path}: compute_s names unknown part(s) {extra}; the models use {sorted(parts)}")
    if data.get("size", "full") not in ("full", "tiny"):
        raise PlacementError(f"{path}: size must be full or tiny, got {data['size']!r}")
    return models


def check_memory(models, size, devices) -> None:
    """Refuse, before any weights load, a module larger than every device (sizes from configs)."""
    from .suite import model_part_bytes

    largest = max(d.memory for d in devices)
    for part, nbytes in model_part_bytes(models, size).items():
        if nbytes > largest:
            raise PlacementError(f"module {part!r} needs {nbytes / 1e6:.1f} MB, more than any device has "
                                 f"(largest: {largest / 1e6:.1f} MB)")


def profile(models, size, given, inputs_bytes):
    """Build the models with sharing; time every unique module once on example inputs."""
    from .modules import Registry
    from .suite import MODELS, Model, example_inputs

    reg = Registry()
    built = [Model(m, size, reg) for m in models]
    x = example_inputs(size)
    slots, part_of, seen = {}, {}, {}
    for model in built:
        outs = {}
        for node in model.task_order():
            mod = model.modules[node]
            args = [x[s[6:]] if s.startswith("input:") else outs[s] for s in model.dag[node]]
            # A shared module fed the very same tensors as in an earlier model: reuse its output.
            call = (mod.hash, tuple(id(a) for a in args))
            if call not in seen:
                t0 = time.perf_counter()
                seen[call] = (mod(*args), time.perf_counter() - t0)
            outs[node], took = seen[call]
            key = mod.hash[:12]
            part = part_of[key] = MODELS[model.name][1][node][0]
            if key not in slots:
                out = outs[node]
                slots[key] = ModuleCost(key, mod.nbytes, given.get(part, took), out.numel() * out.element_size())
    tasks = [m.task({k: float(v) for k, v in inputs_bytes.items()}) for m in built]
    return reg, slots, part_of, tasks


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="prism-place", description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", required=True)
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--exact", action="store_true", help="also solve exactly (small instances)")
    ap.add_argument("--json", help="write the plan here")
    args = ap.parse_args(argv)
    try:
        devices, links, default = parse_devices(read_file(args.devices), args.devices)
        tdata = read_file(args.tasks)
        models = check_tasks(tdata, args.tasks)
        check_memory(models, tdata.get("size", "full"), devices)
        torch.set_num_threads(1)
        reg, slots, part_of, tasks = profile(models, tdata.get("size", "full"), tdata.get("compute_s", {}),
                                             tdata.get("input_bytes", {}))
        inst = Instance(devices, slots, tasks, links, default)
        plan = greedy(inst)
        if plan is None:
            raise PlacementError("no placement fits: greedy found no device with room for some module"
                                 + (f" (exact: {'none either' if branch_and_bound(inst)[0] is None else 'one exists'})"
                                    if args.exact else ""))
    except PlacementError as e:
        print(f"prism-place: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"prism-place: {len(models)} models, {len(slots)} unique modules on {len(devices)} devices")
    print("| module | device | MB | compute (s) |")
    print("| --- | --- | --- | --- |")
    for key in inst.used_modules():
        s = slots[key]
        print(f"| {part_of[key]} | {devices[plan[key]].name} | {s.memory / 1e6:.1f} | {s.compute:.4f} |")
    print("memory per device: " + ", ".join(
        f"{d.name} {sum(slots[k].memory for k, v in plan.items() if v == i) / 1e6:.1f} / {d.memory / 1e6:.0f} MB"
        for i, d in enumerate(devices)))
    r = reg.memory_report()
    print(f"memory total: {r['bytes_shared'] / 1e6:.1f} MB shared, {r['bytes_one_copy_per_model'] / 1e6:.1f} MB "
          f"with one copy per model ({r['saved']:.1%} saved)")
    for t in tasks:
        print(f"predicted latency {t.name}: {task_latency(inst, t, plan):.4f} s")
    out = {"devices": [d.name for d in devices], "size": tdata.get("size", "full"), "models": models,
           "custom": tdata.get("custom") or {},
           "plan": {part_of[k]: devices[v].name for k, v in plan.items()}, "objective_s": objective(inst, plan)}
    if args.exact:
        best, opt = branch_and_bound(inst)
        out["optimal_s"] = opt
        print(f"objective: greedy {out['objective_s']:.4f} s, exact {opt:.4f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
