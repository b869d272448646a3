"""s2m3-place's input files: read a YAML or JSON file, and check a devices file and a tasks file.

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
    prism: {vit-b16: {devices: [jetson0, jetson1], preset: edge}}    # optional: spread an encoder
                                       # with PRISM (copied into the plan; `plan.prism_config`)
With a burst or rates the plan minimises the mean latency of a request under that load
(`prism_ops.s2m3.load`); without, the sum of the tasks' latencies, each alone.

Every field is checked before any model is built: types, ranges (the constants below),
finiteness, unknown fields, repeated names, unknown models or parts, cyclic, dangling or
miswired task graphs (`suite.check_wiring`), a module larger than every device. A file over
1 MiB, not UTF-8, a directory or a FIFO is refused while reading (`checks`). Every problem is an
InputError (a PlacementError when the cluster or tasks are wrong as a whole) with one line that
names the file, the field, the value and what is allowed:

    devices.yaml: devices[2].memory_gb must be a finite number > 0 and <= 1e+06, got nan
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .checks import choice, fail, mapping, mappings, name, names, number, only, parse, read_text, shown
from .placement import Device, Link, PlacementError
from .suite import BUILTIN, MODALITIES, Catalog

# Ranges: wide enough for any real box, link or load, narrow enough that the planner's
# arithmetic (bytes / bandwidth, compute / speed, a simulated burst) stays finite and quick.
MAX_DEVICES = 32  # the placement program grows with the square of the devices
MEMORY_GB = 1e6
SPEED = (1e-6, 1e6)
MBIT = (1e-6, 1e9)
LATENCY_MS = 1e6
COMPUTE_S = 1e6
INPUT_BYTES = 1e12
BURST = 1000  # requests of a burst, all models together: the simulation runs each one
RATE = 1e6  # requests/s
DEFAULT_LINK = Link(12.5e6, 2e-3)  # 100 Mbit/s, 2 ms


def read_file(path: str, label: str | None = None) -> dict:
    """The mapping a .yaml/.yml or JSON file holds, read within the size limit (`checks`);
    InputError names the file (as `label`, default its path) when it cannot be read or parsed."""
    return parse_text(read_text(path, label), path, label)


def parse_text(text: str, path: str, label: str | None = None) -> dict:
    """The mapping the text of file `path` holds (YAML for .yaml/.yml, else JSON); errors name
    it as `label` (default the path)."""
    return parse(text, label or str(path), str(path).endswith((".yaml", ".yml")))


def _link(spec, where: str, fields=("mbit", "latency_ms")) -> Link:
    spec = mapping(spec, where, required=True)
    only(spec, fields, where)
    mbit = number(spec.get("mbit"), f"{where}.mbit", low=MBIT[0], high=MBIT[1])
    latency = number(spec.get("latency_ms", 0), f"{where}.latency_ms", high=LATENCY_MS)
    return Link(bandwidth=mbit * 1e6 / 8, latency=latency / 1e3)


def parse_devices(data: dict, path: str = "devices") -> tuple[list[Device], dict, Link]:
    """(devices, links {(a, b): Link}, default link) of a devices file, every field checked."""
    only(data, ("devices", "links", "default_link"), path)
    specs = data.get("devices")
    if specs == []:
        raise PlacementError(f"{path}: devices is empty; list at least one device")
    devices = []
    for i, d in enumerate(mappings(specs, f"{path}: devices", required=True, limit=MAX_DEVICES)):
        at = f"{path}: devices[{i}]"
        only(d, ("name", "memory_gb", "speed"), at)
        devices.append(Device(name(d.get("name"), f"{at}.name"),
                              number(d.get("memory_gb"), f"{at}.memory_gb", strict=True, high=MEMORY_GB) * 1e9,
                              number(d.get("speed", 1.0), f"{at}.speed", low=SPEED[0], high=SPEED[1])))
    known = names([d.name for d in devices], f"{path}: devices' names")
    links = {}
    for i, spec in enumerate(mappings(data.get("links"), f"{path}: links")):
        at = f"{path}: links[{i}]"
        ends = tuple(spec.get(k) for k in ("a", "b"))
        for k, end in zip("ab", ends):
            if not isinstance(end, str) or end not in known:
                fail(f"{at}.{k}", f"the name of a device in devices ({', '.join(known)})", end)
        if ends[0] == ends[1]:
            raise PlacementError(f"{at} joins {ends[0]!r} to itself; a link joins two different devices")
        if ends in links or ends[::-1] in links:
            raise PlacementError(f"{at}: a second link between {ends[0]!r} and {ends[1]!r}")
        links[ends] = _link(spec, at, ("a", "b", "mbit", "latency_ms"))
    default = DEFAULT_LINK
    if data.get("default_link") is not None:
        default = _link(data["default_link"], f"{path}: default_link")
    return devices, links, default



@dataclass(frozen=True)
class TaskSpec:
    """A checked tasks file: which models, from which catalog, at which size, with which costs."""

    catalog: Catalog  # the suite plus the file's custom models
    models: list  # model names, as the file lists them
    custom: dict = field(default_factory=dict)  # the file's custom models, as written
    model_size: str = "full"  # "full" or "tiny" (the file's "size")
    input_bytes: dict = field(default_factory=dict)  # modality -> bytes the caller sends
    compute_s: dict = field(default_factory=dict)  # part -> given compute time (s)
    burst: dict = field(default_factory=dict)  # model -> requests at once (empty: no burst)
    rates: dict = field(default_factory=dict)  # model -> requests/s (empty: no steady arrivals)
    prism: dict = field(default_factory=dict)  # part -> prism entry, as written (checked with the plan)


def check_tasks(data: dict, path: str = "tasks") -> TaskSpec:
    """A tasks file checked, every field, against the suite and its own custom models."""
    only(data, ("models", "custom", "size", "input_bytes", "compute_s", "burst", "rates", "prism"), path)
    size = choice(data.get("size", "full"), f"{path}: size", ("full", "tiny"))
    catalog = BUILTIN.with_custom(data.get("custom"), size, f"{path}: custom")
    known = catalog.models
    if not isinstance(data.get("models"), list) or not data["models"]:
        raise PlacementError(f"{path}: models must be a non-empty list of names from {sorted(known)}, "
                             f"got {shown(data.get('models'))}")
    models = names(data["models"], f"{path}: models", limit=100)
    unknown = [m for m in models if m not in known]
    if unknown:
        raise PlacementError(f"{path}: models names unknown model(s) {unknown}; known: {sorted(known)}")
    parts = {p for m in models for p, _ in catalog.nodes(m).values()}
    compute_s = {}
    for k, v in mapping(data.get("compute_s"), f"{path}: compute_s").items():
        if k not in parts:
            raise PlacementError(f"{path}: compute_s names unknown part(s) {[k]}; the models use {sorted(parts)}")
        compute_s[k] = number(v, f"{path}: compute_s[{k!r}]", high=COMPUTE_S)
    input_bytes = {}
    for k, v in mapping(data.get("input_bytes"), f"{path}: input_bytes").items():
        if k not in MODALITIES:
            raise PlacementError(f"{path}: input_bytes names unknown modality {k!r}; modalities are {MODALITIES}")
        input_bytes[k] = number(v, f"{path}: input_bytes[{k!r}]", high=INPUT_BYTES, whole=True)
    load = {}
    for key in ("burst", "rates"):
        load[key] = {}
        for m, v in mapping(data.get(key), f"{path}: {key}").items():
            if m not in models:
                raise PlacementError(f"{path}: {key} names {m!r}, which is not in models")
            where = f"{path}: {key}[{m!r}]"
            load[key][m] = (number(v, where, high=BURST, whole=True) if key == "burst"
                            else number(v, where, strict=True, high=RATE))
    if load["burst"] and load["rates"]:
        raise PlacementError(f"{path}: give burst or rates, not both")
    if "burst" in data and not any(load["burst"].values()):
        raise PlacementError(f"{path}: burst must ask for at least one request")
    if sum(load["burst"].values()) > BURST:
        raise PlacementError(f"{path}: burst asks for {sum(load['burst'].values())} requests; at most {BURST} "
                             "in all are allowed")
    return TaskSpec(catalog, models, mapping(data.get("custom"), "custom"), size, input_bytes, compute_s,
                    load["burst"], load["rates"], mapping(data.get("prism"), f"{path}: prism"))


def check_memory(spec: TaskSpec, devices) -> None:
    """Refuse, before any weights load, a module larger than every device (sizes from configs)."""
    largest = max(d.memory for d in devices)
    for part, nbytes in spec.catalog.part_bytes(spec.models, spec.model_size).items():
        if nbytes > largest:
            raise PlacementError(f"module {part!r} needs {nbytes / 1e6:.1f} MB, more than any device has "
                                 f"(largest: {largest / 1e6:.1f} MB)")
