"""s2m3-serve's inputs: a plan (written by `s2m3-place --json`) checked against the job's
ranks, and the request lines; `read_inputs` reads and checks them all in one pass.

`check_plan` returns a `CheckedPlan`, which the `Server` takes as is. Every field is checked
(types, names, ranges, unknown fields, the custom models' graphs and wiring, the PRISM settings
as a `PrismConfig`) before any model loads; an error is an InputError (a PlacementError when the
plan does not fit the job) with one line naming the file and the field. Limits: files 1 MiB, request lines 4 KiB, all requests 16 MiB (`checks`).

A `prism` entry `{devices, preset?, segment_size?, <lever>?...}` means exactly what
`PrismConfig.from_preset(len(devices), preset, segment_size, **levers)` gives: the preset's
values, and any segment size or lever given beside it wins over the preset's (`"preset": "edge",
"summary_bits": 8` is edge at 8 bits). With neither a preset nor a segment size the entry runs at
`DEFAULT_SEGMENT_SIZE` (the paper's segment means). `prism_config` resolves an entry; the checked
plan holds the resolved `PrismConfig`, which every rank of the group builds its attention from.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

from ..config import PRESETS, PrismConfig
from .checks import (MAX_REQUESTS_BYTES, check_readable, choice, fail, mapping, names, number, only, read_lines,
                     read_text, shown)
from .files import MAX_DEVICES, parse_devices, parse_text, read_file
from .messages import request_key
from .placement import InputError, PlacementError
from .suite import BUILTIN, SUITE_VERSION, Catalog, encoder_tokens

PLAN_FIELDS = ("devices", "size", "models", "custom", "plan", "prism", "suite_version",
               "objective_s", "optimal_s", "burst", "rates", "load_objective_s")  # the last four: figures only
DEFAULT_SEGMENT_SIZE = 16  # a prism entry with neither a preset nor a segment size: the paper's setting
MAX_SEGMENT = 4096  # no encoder of the suite reads more than 197 tokens; a larger segment is one segment
REQUEST_FIELDS = ("id", "model", "seed")
MAX_ID = 256  # characters of a string id


@dataclass(frozen=True)
class CheckedPlan:
    """A plan that fits the job: rank i holds the parts placed on the plan's device i."""

    devices: list  # device names; rank i is devices[i]
    model_size: str  # "full" or "tiny" (the plan's "size"): the models' size, not a count
    models: list  # model names
    rank: dict  # part -> the rank that runs it (a spread part: its group's lead)
    spread: dict  # part -> ([ranks of its group], its PrismConfig): encoders run with PRISM
    catalog: Catalog  # the suite plus the plan's custom models


def check_plan(plan: dict, num_ranks: int, device_names: list | None = None, path: str = "plan") -> CheckedPlan:
    """The plan checked against the job's ranks (and, when given, the devices the ranks stand for,
    in rank order); PlacementError names the file (`path`), the field and what is wrong."""
    plan = mapping(plan, path, required=True)
    if any(k not in plan for k in ("devices", "size", "models", "plan")):
        raise PlacementError(f"{path}: a plan must have devices, size, models and plan (write it with "
                             f"s2m3-place --json), got fields {sorted(map(str, plan))}")
    if plan.get("suite_version") != SUITE_VERSION:
        raise PlacementError(f"{path}: written for suite version {shown(plan.get('suite_version'))}, this is "
                             f"{SUITE_VERSION!r}; write it again with s2m3-place --json")
    only(plan, PLAN_FIELDS, path)
    devices = names(plan["devices"], f"{path}: devices", limit=MAX_DEVICES)
    if len(devices) != num_ranks:
        raise PlacementError(f"{path}: the plan has {len(devices)} devices but the job has {num_ranks} ranks "
                             "(one per device)")
    if device_names is not None and list(device_names) != devices:
        raise PlacementError(f"{path}: its devices {devices} do not match the ranks' devices {list(device_names)} "
                             "(rank i runs the plan's device i)")
    size = choice(plan["size"], f"{path}: size", ("full", "tiny"))
    catalog = BUILTIN.with_custom(plan.get("custom"), size, f"{path}: custom")
    models = names(plan["models"], f"{path}: models", limit=100)
    unknown = [m for m in models if m not in catalog]
    if unknown:
        raise PlacementError(f"{path}: models names unknown model(s) {unknown}; known: {sorted(catalog.models)}")
    where = mapping(plan["plan"], f"{path}: plan", required=True)
    for part, dev in where.items():
        if not isinstance(dev, str) or dev not in devices:
            fail(f"{path}: plan[{part!r}]", f"a device of the plan {devices}", dev)
    rank = {}
    for m in models:
        for part, _ in catalog.nodes(m).values():
            if part not in where:
                raise PlacementError(f"{path}: part {part!r} of {m!r} is not placed on a device of the plan")
            rank[part] = devices.index(where[part])
    for key in ("objective_s", "optimal_s", "load_objective_s"):  # figures s2m3-place wrote; unused here
        if key in plan:
            number(plan[key], f"{path}: {key}", finite=False)
    for key in ("burst", "rates"):
        for m, v in mapping(plan.get(key), f"{path}: {key}").items():
            number(v, f"{path}: {key}[{m!r}]")
    spread = {}
    for part, spec in mapping(plan.get("prism"), f"{path}: prism").items():
        spread[part] = _spread(part, spec, devices, rank, size, f"{path}: prism[{part!r}]")
        rank[part] = spread[part][0][0]  # the group's first rank leads: inputs in, output out
    # Two spread encoders whose groups share a rank could each wait in a collective for the other.
    for (a, (ga, _)), (b, (gb, _)) in itertools.combinations(sorted(spread.items()), 2):
        both = sorted(set(ga) & set(gb))
        if both:
            raise PlacementError(f"{path}: prism groups of {a!r} and {b!r} share device(s) "
                                 f"{[devices[r] for r in both]}; spread encoders need disjoint groups "
                                 "(overlapping ones can deadlock)")
    return CheckedPlan(devices, size, models, rank, spread, catalog)


def _spread(part, spec, devices: list, rank: dict, size: str, at: str) -> tuple[list, dict]:
    """([ranks of the group], settings) of one prism entry; its settings are checked by building
    the PrismConfig that `hf.configure` will build from them."""
    if part not in rank:
        raise PlacementError(f"{at}: prism names part {part!r}, which no model of the plan uses")
    if not (part.startswith("vit") or part == "minilm"):
        raise PlacementError(f"{at}: prism spreads transformer encoders (vit-*, minilm), not {part!r}")
    spec = mapping(spec, at, required=True)
    group = spec.get("devices")
    if not (isinstance(group, list) and len(group) >= 2 and all(isinstance(d, str) and d in devices for d in group)
            and len(set(group)) == len(group)):
        raise PlacementError(f"{at}.devices: prism {part!r} needs 2 or more distinct devices of the plan "
                             f"{devices}, got {shown(group)}")
    if len(group) > encoder_tokens(part, size):  # every rank of the group owns at least one token
        raise PlacementError(f"{at}.devices: {len(group)} devices, but {part!r} reads only "
                             f"{encoder_tokens(part, size)} tokens at size {size} (one device per token at most)")
    return [devices.index(d) for d in group], prism_config(len(group), spec, at)


def prism_config(num_partitions: int, spec: dict, at: str = "prism") -> PrismConfig:
    """The PrismConfig a prism entry (without its devices) stands for: `from_preset` of its preset,
    segment size and levers, explicit ones winning over the preset's; `DEFAULT_SEGMENT_SIZE` only
    when neither a preset nor a segment size is given. PlacementError names `at` and the field."""
    levers = {k: v for k, v in spec.items() if k not in ("devices", "preset", "segment_size")}
    preset, segment = spec.get("preset"), None
    if "preset" in spec and not (isinstance(preset, str) and preset in PRESETS):
        fail(f"{at}.preset", f"one of {', '.join(PRESETS)}", preset)
    if "segment_size" in spec:  # a null one too is checked (and refused), not taken for absent
        segment = number(spec["segment_size"], f"{at}.segment_size", low=1, high=MAX_SEGMENT, whole=True)
    elif preset is None:
        segment = DEFAULT_SEGMENT_SIZE
    try:
        config = PrismConfig.from_preset(num_partitions, preset, segment, **levers)
    except (ValueError, TypeError) as e:
        raise PlacementError(f"{at}: {e}") from None
    if config.dense_layers == "auto":
        raise PlacementError(f"{at}: dense_layers 'auto' (the tuned preset) are a model's calibrated layers, which "
                             "placement does not load; give them as dense_layers: [...] or use another preset")
    return config


def read_requests(lines, models, source: str = "requests") -> list[dict]:
    """Requests {id, model, seed} from JSON lines (blank lines skipped); InputError names the
    source, the line and the field. An id is a string (at most 256 characters) or a whole number,
    used once; the model one of the plan's; the seed (default 0) a whole number in [0, 2^63)."""
    reqs, ids = [], set()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        at = f"{source}: line {i}"
        try:
            r = json.loads(line)
        except (ValueError, RecursionError):
            r = None
        if not isinstance(r, dict):
            raise InputError(f"{at}: expected a JSON object {{\"id\", \"model\", \"seed\"}}, got "
                                 f"{shown(line.strip())}")
        only(r, REQUEST_FIELDS, at)
        rid = r.get("id")
        if not (isinstance(rid, str) and len(rid) <= MAX_ID or isinstance(rid, int) and not isinstance(rid, bool)):
            fail(f"{at}: id", f"a string of at most {MAX_ID} characters or a whole number", rid)
        model = r.get("model")
        if not isinstance(model, str) or model not in models:
            raise InputError(f"{at}: model {shown(model)} is not in the plan {models}")
        seed = number(r.get("seed", 0), f"{at}: seed", high=2**63 - 1, whole=True)
        if request_key(rid) in ids:
            raise InputError(f"{at}: id {shown(rid)} is used twice")
        ids.add(request_key(rid))
        reqs.append({"id": rid, "model": model, "seed": seed})
    return reqs


def read_inputs(plan_path: str, num_ranks: int, requests_path: str | None = None, devices_path: str | None = None,
                stdin=None) -> tuple[CheckedPlan, list[dict], str, list | None]:
    """s2m3-serve's inputs, read and checked in one pass before anything loads: the devices file
    (when given), the plan against `num_ranks` (and those devices, in rank order), and the requests
    (the file, else `stdin`, a binary stream), within the size limits. Returns (the checked plan,
    the requests, the plan file's text, the device names or None); InputError (PlacementError for
    the plan) names the flag or file and the field."""
    device_names = None
    if devices_path is not None:
        data = read_file(devices_path, f"--devices {devices_path}")
        device_names = [d.name for d in parse_devices(data, devices_path)[0]]
    text = read_text(plan_path, f"--plan {plan_path}")
    plan = check_plan(parse_text(text, plan_path, f"--plan {plan_path}"), num_ranks, device_names, plan_path)
    if requests_path is None:
        lines = read_lines(stdin, "stdin")
    else:
        label = f"--requests {requests_path}"
        check_readable(requests_path, label, MAX_REQUESTS_BYTES)
        try:
            with open(requests_path, "rb") as f:
                lines = read_lines(f, requests_path)
        except OSError as e:
            raise InputError(f"{label}: cannot be read ({e.strerror})") from None
    return plan, read_requests(lines, plan.models, requests_path or "stdin"), text, device_names
