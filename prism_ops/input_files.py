"""The files prism-run is given, read bounded and checked before any model loads.

    text = read_text_file("story.txt", "--input-file", MAX_INPUT_BYTES)
    prof = read_profile("p.json", "--auto", partitions=2)   # the checked profile dict (--auto reads it once)
    check_output_path("p.json", "--profile")

Every error is a ValueError naming the flag, the file and what is allowed. The reading and
the path check are `prism_ops._files`' (regular files only, read up to the limit plus one byte).
"""

from __future__ import annotations

import json
import math

from ._files import FileRefused, read_bounded, unwritable
from .config import PrismConfig

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


def read_profile(path: str, flag: str, partitions: int) -> dict:
    """A link profile written by `prism-run --profile`, measured on this many ranks."""
    text = read_text_file(path, flag, MAX_PROFILE_BYTES)
    what = f"{flag} {path!r} is not a profile written by prism-run --profile"
    try:
        prof = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{what}: not JSON ({e})") from None
    if not isinstance(prof, dict):
        raise ValueError(f"{what}: a JSON object was expected, got {type(prof).__name__}")
    rows = prof.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{what}: 'rows' must be a non-empty list, got {rows!r:.60}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{what}: rows[{i}] must be an object, got {row!r:.60}")
        if not (isinstance(row.get("tokens"), int) and not isinstance(row["tokens"], bool) and row["tokens"] >= 1):
            raise ValueError(f"{what}: rows[{i}].tokens must be an integer >= 1, got {row.get('tokens')!r:.60}")
        for key in ("local_s", "distributed_s"):
            if not _positive(row.get(key)):
                raise ValueError(f"{what}: rows[{i}].{key} must be a finite number of seconds > 0, "
                                 f"got {row.get(key)!r:.60}")
    for key in ("link_mbit", "link_latency_ms"):
        value = prof.get(key)
        if value is not None and not (_positive(value) or (key == "link_latency_ms" and value == 0)):
            raise ValueError(f"{what}: {key} must be a finite number > 0 (or null), got {value!r:.60}")
    config = prof.get("config")
    if config is not None:  # the setting the profile was measured with (--auto scales its predictions by it)
        if not isinstance(config, dict):
            raise ValueError(f"{what}: config must be an object, got {config!r:.60}")
        try:
            weights = config.get("weights")
            PrismConfig(**{**config, "weights": tuple(weights) if isinstance(weights, list) else weights})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what}: config: {e}") from None
    if prof.get("partitions") != partitions:
        raise ValueError(f"{flag}: the profile {path!r} was measured on {prof.get('partitions')!r:.60} ranks, this job "
                         f"has {partitions}; measure it again with --profile")
    return prof


def check_output_path(path: str, flag: str) -> None:
    """A file path that can be written: an existing, writable folder and not a folder itself."""
    why = unwritable(path)
    if why is not None:
        raise ValueError(f"{flag} {path!r}{why}")
