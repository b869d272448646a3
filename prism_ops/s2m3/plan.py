"""prism-serve's inputs: a plan (written by `prism-place --json`) checked against the job's
ranks, and the request lines.

`check_plan` runs once per rank and returns a `CheckedPlan`, which the `Server` takes as is.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

from .placement import PlacementError
from .suite import BUILTIN, SUITE_VERSION, Catalog


@dataclass(frozen=True)
class CheckedPlan:
    """A plan that fits the job: rank i holds the parts placed on the plan's device i."""

    devices: list  # device names; rank i is devices[i]
    size: str  # "full" or "tiny"
    models: list  # model names
    rank: dict  # part -> the rank that runs it (a spread part: its group's lead)
    spread: dict  # part -> ([ranks of its group], its prism settings): encoders run with PRISM
    catalog: Catalog  # the suite plus the plan's custom models


def check_plan(plan: dict, num_ranks: int, device_names: list | None = None) -> CheckedPlan:
    """The plan checked against the job's ranks (and, when given, the devices the ranks stand for,
    in rank order); PlacementError names what is wrong."""
    try:
        devices, size, models, where = plan["devices"], plan["size"], plan["models"], plan["plan"]
    except (KeyError, TypeError):
        raise PlacementError("plan must have devices, size, models and plan (write it with prism-place --json)") from None
    if plan.get("suite_version") != SUITE_VERSION:
        raise PlacementError(f"plan: written for suite version {plan.get('suite_version')!r}, this is {SUITE_VERSION!r}; "
                             "write it again with prism-place --json")
    try:
        catalog = BUILTIN.with_custom(plan.get("custom"))
    except ValueError as e:
        raise PlacementError(f"plan: {e}") from None
    if not isinstance(devices, list) or len(devices) != num_ranks:
        raise PlacementError(f"the plan has {len(devices)} devices but the job has {num_ranks} ranks (one per device)")
    if device_names is not None and list(device_names) != list(devices):
        raise PlacementError(f"plan: its devices {devices} do not match the ranks' devices {list(device_names)} "
                             "(rank i runs the plan's device i)")
    unknown = [m for m in models if m not in catalog]
    if unknown:
        raise PlacementError(f"plan: unknown model(s) {unknown}")
    rank = {}
    for m in models:
        for part, _ in catalog.nodes(m).values():
            if part not in where or where[part] not in devices:
                raise PlacementError(f"plan: part {part!r} of {m!r} is not placed on a device of the plan")
            rank[part] = devices.index(where[part])
    spread = {}
    for part, spec in (plan.get("prism") or {}).items():
        if part not in rank:
            raise PlacementError(f"plan: prism names part {part!r}, which no model of the plan uses")
        if not (part.startswith("vit") or part == "minilm"):
            raise PlacementError(f"plan: prism spreads transformer encoders (vit-*, minilm), not {part!r}")
        group = spec.get("devices", [])
        if len(group) < 2 or any(d not in devices for d in group) or len(set(group)) != len(group):
            raise PlacementError(f"plan: prism {part!r} needs 2 or more distinct devices of the plan, got {group!r}")
        rank[part] = devices.index(group[0])  # the group's first rank leads: inputs in, output out
        spread[part] = ([devices.index(d) for d in group], spec)
    # Two spread encoders whose groups share a rank could each wait in a collective for the other.
    for (a, (ga, _)), (b, (gb, _)) in itertools.combinations(sorted(spread.items()), 2):
        both = sorted(set(ga) & set(gb))
        if both:
            raise PlacementError(f"plan: prism groups of {a!r} and {b!r} share device(s) {[devices[r] for r in both]}; "
                                 "spread encoders need disjoint groups (overlapping ones can deadlock)")
    return CheckedPlan(devices, size, models, rank, spread, catalog)


def read_requests(lines, models) -> list[dict]:
    """Requests {id, model, seed} from JSON lines (blank lines skipped); PlacementError names the bad line."""
    reqs, ids = [], set()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            rid, model, seed = r["id"], r["model"], int(r.get("seed", 0))
        except (ValueError, KeyError, TypeError):
            raise PlacementError(f"request line {i}: expected {{\"id\", \"model\", \"seed\"}}, got {line.strip()!r}") from None
        if model not in models:
            raise PlacementError(f"request line {i}: model {model!r} is not in the plan {models}")
        if rid in ids:
            raise PlacementError(f"request line {i}: id {rid!r} is used twice")
        ids.add(rid)
        reqs.append({"id": rid, "model": model, "seed": seed})
    return reqs
