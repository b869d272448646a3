"""The files prism-run is given, read bounded and checked before any model loads.

    text = read_text_file("story.txt", "--input-file", MAX_INPUT_BYTES)
    prof = read_profile("p.json", "--auto", partitions=2, model="smollm2")   # checked (--auto reads it once)
    check_output_path("p.json", "--profile")

Every error is a ValueError naming the flag, the file and what is allowed. The reading and
the path check are `prism_ops._files`' (regular files only, read up to the limit plus one byte).
"""

from __future__ import annotations

import dataclasses
import json
import math

from ._files import FileRefused, read_bounded, unwritable
from .config import PrismConfig
from .cost import ModelShape

SHAPE_FIELDS = tuple(f.name for f in dataclasses.fields(ModelShape))  # a profile's model shape

MAX_INPUT_BYTES = 4 * 2**20  # --input-file; after loading, the model's positions bound it further
MAX_PROFILE_BYTES = 2**20  # --auto


def read_bytes(path: str, flag: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most max_bytes."""
    try:
        return read_bounded(path, max_bytes)
    except FileRefused as e:
        why = {"unreadable": f"cannot be read: {e.detail}", "directory": "is a directory; give a regular file",
               "special": "is not a regular file; give a regular file",
               "too_large": f"has more than {max_bytes:,} bytes, the most allowed"}[e.reason]
        raise ValueError(f"{flag} {path!r} {why}") from None


def read_text_file(path: str, flag: str, max_bytes: int = MAX_INPUT_BYTES) -> str:
    """A UTF-8 text file of at most max_bytes."""
    data = read_bytes(path, flag, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{flag} {path!r} is not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r})") from None


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _check_rates(what: str, name: str, obj, keys) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{what}: {name} must be an object, got {obj!r:.60}")
    for key in keys:
        value = obj.get(key)
        if not (_positive(value) or (key == "latency_s" and value == 0)):
            raise ValueError(f"{what}: {name}.{key} must be a finite number > 0, got {value!r:.60}")


def read_profile(path: str, flag: str, partitions: int, model: str | None = None) -> dict:
    """A profile written by `prism-run --profile` (format 2, `prism_ops.link_profile`), measured on
    this many ranks (and for this model, when given). Its hosts and the model's shape are matched
    once the model has loaded (`link_profile.check_profile`)."""
    text = read_text_file(path, flag, MAX_PROFILE_BYTES)
    what = f"{flag} {path!r} is not a profile written by prism-run --profile"
    try:
        prof = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{what}: not JSON ({e})") from None
    if not isinstance(prof, dict):
        raise ValueError(f"{what}: a JSON object was expected, got {type(prof).__name__}")
    if prof.get("format") != 2:
        raise ValueError(f"{what} of this version (format 2), got format {prof.get('format')!r:.60}; "
                         "measure it again with --profile")
    if prof.get("partitions") != partitions:
        raise ValueError(f"{flag}: the profile {path!r} was measured on {prof.get('partitions')!r:.60} ranks, this job "
                         f"has {partitions}; measure it again with --profile")
    if model is not None and prof.get("model") != model:
        raise ValueError(f"{flag}: the profile {path!r} was measured for model {prof.get('model')!r:.60}, this job "
                         f"runs {model!r}; measure it again with --profile")
    shape = prof.get("shape")
    if not isinstance(shape, dict) or not all(isinstance(shape.get(k), int) and not isinstance(shape.get(k), bool)
                                              and shape.get(k) > 0 for k in SHAPE_FIELDS):
        raise ValueError(f"{what}: shape must be an object of positive integers {list(SHAPE_FIELDS)}, "
                         f"got {shape!r:.80}")
    hosts = prof.get("hosts")
    if not isinstance(hosts, list) or len(hosts) != partitions or not all(isinstance(h, str) for h in hosts):
        raise ValueError(f"{what}: hosts must be a list of {partitions} host names, got {hosts!r:.60}")
    devices = prof.get("devices")
    if not isinstance(devices, list) or len(devices) != partitions:
        raise ValueError(f"{what}: devices must be a list of {partitions} objects, got {devices!r:.60}")
    for r, d in enumerate(devices):
        _check_rates(what, f"devices[{r}]", d, ("linear_flops_s", "attention_flops_s")
                     + tuple(k for k in ("causal_flops_s", "prism_factor") if k in d))
    links = prof.get("links")
    if not isinstance(links, list) or len(links) != partitions or not all(
            isinstance(row, list) and len(row) == partitions for row in links):
        raise ValueError(f"{what}: links must be a [{partitions}][{partitions}] table, got {links!r:.60}")
    for a in range(partitions):
        for b in range(partitions):
            if a == b:
                if links[a][b] is not None:
                    raise ValueError(f"{what}: links[{a}][{a}] must be null (a rank has no link to itself)")
            else:
                _check_rates(what, f"links[{a}][{b}]", links[a][b], ("bytes_s", "latency_s"))
    config = prof.get("config")
    if config is not None:  # the setting asked when the profile was measured (for the record)
        if not isinstance(config, dict):
            raise ValueError(f"{what}: config must be an object, got {config!r:.60}")
        try:
            weights = config.get("weights")
            PrismConfig(**{**config, "weights": tuple(weights) if isinstance(weights, list) else weights})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what}: config: {e}") from None
    return prof


def check_output_path(path: str, flag: str) -> None:
    """A file path that can be written: an existing, writable folder and not a folder itself."""
    why = unwritable(path)
    if why is not None:
        raise ValueError(f"{flag} {path!r}{why}")
