"""The files prism-run is given, read bounded and checked before any model loads.

    text = read_text_file("story.txt", "--input-file", MAX_INPUT_BYTES)
    prof = read_profile("p.json", "--auto", partitions=2)   # the checked profile dict (--auto reads it once)
    check_output_path("p.json", "--profile")

Every error is a ValueError naming the flag, the file and what is allowed. A file must be a
regular file (a FIFO would block the reader, /dev/zero never ends) and is read up to its
limit plus one byte, so an oversized file is refused without being read whole.
"""

from __future__ import annotations

import json
import math
import os
import stat

from .config import PrismConfig

MAX_INPUT_BYTES = 4 * 2**20  # --input-file; after loading, the model's positions bound it further
MAX_PROFILE_BYTES = 2**20  # --auto


def read_bytes(path: str, flag: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most max_bytes."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"{flag} {path!r} cannot be read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ValueError(f"{flag} {path!r} is {kind}; give a regular file")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ValueError(f"{flag} {path!r} cannot be read: {e.strerror}") from None
    if len(data) > max_bytes:
        raise ValueError(f"{flag} {path!r} has more than {max_bytes:,} bytes, the most allowed")
    return data


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
    if not path:
        raise ValueError(f"{flag} {path!r} is empty; give a file name to write")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a directory; give a file name to write")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {path!r}: the folder {folder!r} is not writable")
