"""Checks shared by S2M3's input files (devices, tasks, plans, requests): reading with a size
limit (`prism_ops._files`, worded for these files), and field checks whose errors are one line
naming the file, the field, the value and what is allowed.

    text = read_text("devices.yaml")           # missing, a directory, a FIFO, over 1 MiB, not UTF-8:
                                               # InputError
    mem = number(spec.get("memory_gb"), "devices.yaml: devices[2].memory_gb", low=0, strict=True, high=1e6)
    # -> InputError("devices.yaml: devices[2].memory_gb must be a finite number > 0 and <= 1e+06, got nan")

Field paths read like Python: `devices[2].memory_gb`, `compute_s['vit-b16']`,
`custom['tagger'].nodes['cls']`. Every error is an `InputError` (a ValueError), so the
commands turn it into exit code 2 and the one line.
"""

from __future__ import annotations

import json
import math
import re
from typing import NoReturn

from .._files import FileRefused, read_bounded, regular_file_size
from .placement import InputError

MAX_FILE_BYTES = 1 << 20  # a devices, tasks or plan file
MAX_LINE_BYTES = 4096  # one request line
MAX_REQUESTS_BYTES = 16 << 20  # all request lines together (a file or standard input)


def shown(value, limit: int = 80) -> str:
    """repr(value) on one line, cut to about `limit` characters (a bad value may be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def fail(where: str, allowed: str, value, note: str = "") -> NoReturn:
    """Raise the one-line error: `where` must be `allowed`, got the value (and a note)."""
    raise InputError(f"{where} must be {allowed}, got {shown(value)}{note}")


def check_readable(path, label: str | None = None, limit: int = MAX_FILE_BYTES) -> int:
    """The size of a regular file at `path` no larger than `limit` bytes; InputError names it
    (as `label`, default the path) when it is missing, a directory, a FIFO or device (reading one
    could block or never end), or too large. Nothing is opened."""
    label = label or repr(path)
    if not isinstance(path, str) or not path:
        raise InputError(f"{label}: expected a file name, got {shown(path)}")
    try:
        size = regular_file_size(path)
    except FileRefused as e:
        raise refused(e, label, limit) from None
    if size > limit:
        raise InputError(f"{label}: is {size} bytes; files are limited to {limit} bytes")
    return size


def refused(e: FileRefused, label: str, limit: int) -> InputError:
    """The one-line error for a file `_files` refused."""
    return InputError(label + {
        "unreadable": f": cannot be read ({e.detail})", "directory": ": is a directory; give a file",
        "special": ": is not a regular file (a FIFO, socket or device); give a file",
        "too_large": f": is over {limit} bytes; files are limited to {limit} bytes"}[e.reason])


def decode(data: bytes, label: str) -> str:
    """UTF-8 text (a leading byte-order mark is dropped); InputError names the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{label}: is not UTF-8 text (byte {e.start} is {data[e.start]:#04x})") from None


def read_text(path: str, label: str | None = None, limit: int = MAX_FILE_BYTES) -> str:
    """A UTF-8 text file of at most `limit` bytes, checked before and while reading."""
    label = label or str(path)
    check_readable(path, label, limit)
    try:
        data = read_bounded(path, limit)  # the file may have grown since it was checked
    except FileRefused as e:
        raise refused(e, label, limit) from None
    return decode(data, label)


def read_lines(stream, label: str, line_limit: int = MAX_LINE_BYTES,
               total_limit: int = MAX_REQUESTS_BYTES) -> list[str]:
    """The UTF-8 lines of a binary stream (a file or standard input), each at most `line_limit`
    bytes and all together at most `total_limit`: checked while reading, so an endless or huge
    input stops at the first line over a limit."""
    lines, total = [], 0
    while raw := stream.readline(line_limit + 2):  # room for "\r\n": a longer line comes back cut
        total += len(raw)
        where = f"{label}: line {len(lines) + 1}"
        if total > total_limit:
            raise InputError(f"{where}: the input is over {total_limit} bytes; requests are limited to that")
        body = raw.rstrip(b"\r\n")
        if len(body) > line_limit:
            raise InputError(f"{where}: is longer than {line_limit} bytes; request lines are limited to that")
        lines.append(decode(body, where))
    return lines


def parse(text: str, label: str, yaml_syntax: bool) -> dict:
    """The mapping a YAML or JSON text holds. YAML aliases are refused: `*name` can make a small
    file stand for an enormous structure."""
    kind = "YAML" if yaml_syntax else "JSON"
    try:
        if yaml_syntax:
            import yaml

            if any(isinstance(ev, yaml.AliasEvent) for ev in yaml.parse(text, Loader=yaml.SafeLoader)):
                raise InputError(f"{label}: YAML aliases (*name) are not allowed")
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse error (or a nesting too deep) is the file's fault
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{label}: not valid {kind}: {first}") from None
    if not isinstance(data, dict):
        raise InputError(f"{label}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def number(value, where: str, low: float = 0.0, high: float = math.inf, strict: bool = False,
           whole: bool = False, finite: bool = True) -> float | int:
    """`value` checked to be a number (not a bool) in range: >= low (> low when strict) and <= high,
    finite unless told otherwise, a whole number when asked; an int when whole."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        try:
            x = float(value)
        except OverflowError:  # an int beyond any float (JSON allows those)
            x = math.inf if value > 0 else -math.inf
        ok = not math.isnan(x) and (math.isfinite(x) or not finite) and (x > low if strict else x >= low)
        ok = ok and x <= high and (not whole or x.is_integer())
    if not ok:
        kind = "a whole number" if whole else "a finite number" if finite else "a number"
        bounds = f"{'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if high < math.inf else "")
        fail(where, f"{kind} {bounds}", value, _quoted(value))
    return int(value) if whole else x


def _quoted(value) -> str:
    """A note when a number came as text; YAML reads 1e-3 (no dot) as text."""
    if not isinstance(value, str):
        return ""
    if re.fullmatch(r"[-+]?[0-9]+[eE][-+]?[0-9]+", value.strip()):
        return f" (text: YAML reads {value.strip()} as text; write {float(value):.1e})"
    try:
        float(value)
    except ValueError:
        return ""
    return " (quoted text, not a number)"


def name(value, where: str, limit: int = 200) -> str:
    """A non-empty string of at most `limit` characters."""
    if not isinstance(value, str) or not value or len(value) > limit:
        fail(where, f"a non-empty string of at most {limit} characters", value)
    return value


def mapping(value, where: str, required: bool = False) -> dict:
    """A mapping (an absent or null optional field is an empty one)."""
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        fail(where, "a mapping", value)
    return value


def items(value, where: str, required: bool = False, limit: int = 1000) -> list:
    """A list of at most `limit` items (an absent or null optional field is an empty one; a
    required one must not be empty)."""
    if value is None and not required:
        return []
    if not isinstance(value, list) or (required and not value) or len(value) > limit:
        fail(where, f"a {'non-empty ' if required else ''}list of at most {limit} items", value)
    return value


def mappings(value, where: str, required: bool = False, limit: int = 1000) -> list[dict]:
    """A list of mappings (`items`)."""
    return [mapping(v, f"{where}[{i}]", required=True) for i, v in enumerate(items(value, where, required, limit))]


def names(value, where: str, required: bool = True, limit: int = 1000) -> list[str]:
    """A list of distinct names."""
    out = [name(v, f"{where}[{i}]") for i, v in enumerate(items(value, where, required, limit))]
    twice = sorted({v for v in out if out.count(v) > 1})
    if twice:
        raise InputError(f"{where} must list each name once, got {shown(twice)} more than once")
    return out


def only(data: dict, allowed, where: str) -> None:
    """Refuse keys outside `allowed` (a misspelt field would otherwise be ignored)."""
    extra = [k for k in data if k not in allowed]
    if extra:
        raise InputError(f"{where} has unknown field {shown(extra[0])}; allowed: {', '.join(allowed)}")


def choice(value, where: str, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        fail(where, f"one of {', '.join(allowed)}", value)
    return value
