"""prism-place's input files: read a YAML or JSON file, and check a devices file and a tasks file.

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
    burst: {imagenet-vitb16: 2, sentiment-minilm: 1}   # optional: requests of each model at once
    rates: {imagenet-vitb16: 0.5}      # or optional: steady arrivals, requests/s of each model
With a burst or rates the plan minimises the mean latency of a request under that load
(`prism_ops.s2m3.load`); without, the sum of the tasks' latencies, each alone.

Everything is checked (unknown models or parts, a module larger than every device, cyclic or
dangling task graphs) before any model is built; every problem is a PlacementError whose message
names the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from .placement import Device, Link, PlacementError
from .suite import BUILTIN, MODALITIES, Catalog


def read_file(path: str) -> dict:
    """The mapping a .yaml/.yml or JSON file holds; PlacementError when it cannot be read or parsed."""
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


def parse_devices(data: dict, path: str = "devices") -> tuple[list[Device], dict, Link]:
    """(devices, links {(a, b): Link}, default link) of a devices file."""
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


@dataclass(frozen=True)
class TaskSpec:
    """A checked tasks file: which models, from which catalog, at which size, with which costs."""

    catalog: Catalog  # the suite plus the file's custom models
    models: list  # model names, as the file lists them
    custom: dict = field(default_factory=dict)  # the file's custom models, as written
    size: str = "full"
    input_bytes: dict = field(default_factory=dict)  # modality -> bytes the caller sends
    compute_s: dict = field(default_factory=dict)  # part -> given compute time (s)
    burst: dict = field(default_factory=dict)  # model -> requests at once (empty: no burst)
    rates: dict = field(default_factory=dict)  # model -> requests/s (empty: no steady arrivals)


def _number(value, where: str, low: float = 0.0, strict: bool = False, whole: bool = False) -> float:
    """`value` checked to be a finite number >= low (> low when strict; whole when asked)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and (not whole or float(value).is_integer())
    if not ok:
        kind = "a whole number" if whole else "a finite number"
        raise PlacementError(f"{where} must be {kind} {'>' if strict else '>='} {low:g}, got {value!r}")
    return int(value) if whole else float(value)


def _mapping(data: dict, key: str, path: str) -> dict:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise PlacementError(f"{path}: {key} must be a mapping, got {value!r}")
    return value


def check_tasks(data: dict, path: str = "tasks") -> TaskSpec:
    """A tasks file checked against the suite and its own custom models."""
    try:
        catalog = BUILTIN.with_custom(data.get("custom"))
    except ValueError as e:
        raise PlacementError(f"{path}: {e}") from None
    known = catalog.models
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise PlacementError(f"{path}: models must be a non-empty list of names from {sorted(known)}")
    unknown = [m for m in models if m not in known]
    if unknown:
        raise PlacementError(f"{path}: unknown model(s) {unknown}; known: {sorted(known)}")
    parts = {p for m in models for p, _ in catalog.nodes(m).values()}
    compute_s = {k: _number(v, f"{path}: compute_s[{k!r}]") for k, v in _mapping(data, "compute_s", path).items()}
    input_bytes = {}
    for k, v in _mapping(data, "input_bytes", path).items():
        if k not in MODALITIES:
            raise PlacementError(f"{path}: input_bytes names unknown modality {k!r}; modalities are {MODALITIES}")
        input_bytes[k] = _number(v, f"{path}: input_bytes[{k!r}]")
    load = {}
    for key in ("burst", "rates"):
        load[key] = {}
        for m, v in _mapping(data, key, path).items():
            if m not in models:
                raise PlacementError(f"{path}: {key} names {m!r}, which is not in models")
            load[key][m] = _number(v, f"{path}: {key}[{m!r}]", strict=key == "rates", whole=key == "burst")
    if load["burst"] and load["rates"]:
        raise PlacementError(f"{path}: give burst or rates, not both")
    if "burst" in data and not any(load["burst"].values()):
        raise PlacementError(f"{path}: burst must ask for at least one request")
    extra = sorted(set(compute_s) - parts)
    if extra:
        raise PlacementError(f"{path}: compute_s names unknown part(s) {extra}; the models use {sorted(parts)}")
    if data.get("size", "full") not in ("full", "tiny"):
        raise PlacementError(f"{path}: size must be full or tiny, got {data['size']!r}")
    return TaskSpec(catalog, models, data.get("custom") or {}, data.get("size", "full"), input_bytes, compute_s,
                    load["burst"], load["rates"])


def check_memory(spec: TaskSpec, devices) -> None:
    """Refuse, before any weights load, a module larger than every device (sizes from configs)."""
    largest = max(d.memory for d in devices)
    for part, nbytes in spec.catalog.part_bytes(spec.models, spec.size).items():
        if nbytes > largest:
            raise PlacementError(f"module {part!r} needs {nbytes / 1e6:.1f} MB, more than any device has "
                                 f"(largest: {largest / 1e6:.1f} MB)")
