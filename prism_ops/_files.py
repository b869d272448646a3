"""The file checks that prism-run (`input_files`) and S2M3 (`s2m3.checks`, s2m3-place) share:
reading a regular file with a size limit, and whether a path can be written.

    data = read_bounded("story.txt", 4 * 2**20)    # FileRefused("too_large") past the limit
    why = unwritable("out/plan.json")              # None, or why not

Each command words its own errors (its flag or file, its error class), so reading raises
`FileRefused` with a reason, not a message. A file must be a regular file (a FIFO would block
the reader, /dev/zero never ends) and is read up to its limit plus one byte, so an oversized
file is refused without being read whole.
"""

from __future__ import annotations

import os
import stat


def cache_root() -> str | None:
    """Where the package keeps what it makes once per model (a converted checkpoint, a
    calibration): $PRISM_OPS_CACHE, else $XDG_CACHE_HOME/prism-ops or ~/.cache/prism-ops; None
    when PRISM_OPS_CACHE=off."""
    root = os.environ.get("PRISM_OPS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "prism-ops")
    return None if root == "off" else root


class FileRefused(Exception):
    """Why a path cannot be read: `reason` is "unreadable" (`detail`: the system's strerror),
    "directory", "special" (a FIFO, socket or device) or "too_large"."""

    def __init__(self, reason: str, detail: str | None = None):
        super().__init__(reason if detail is None else f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def regular_file_size(path: str) -> int:
    """The size of the regular file at `path`; nothing is opened."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise FileRefused("unreadable", e.strerror) from None
    if stat.S_ISDIR(st.st_mode):
        raise FileRefused("directory")
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused("special")
    return st.st_size


def read_bounded(path: str, limit: int) -> bytes:
    """The bytes of the regular file at `path`, at most `limit` of them."""
    regular_file_size(path)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # one more byte tells a file over the limit (it may have grown)
    except OSError as e:
        raise FileRefused("unreadable", e.strerror) from None
    if len(data) > limit:
        raise FileRefused("too_large")
    return data


def unwritable(path: str) -> str | None:
    """None when a file can be written at `path` (an existing, writable folder, and not a folder
    itself); else why not, as the end of an error message that names the path."""
    if not path:
        return " is empty; give a file name to write"
    if os.path.isdir(path):
        return " is a directory; give a file name to write"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f": the folder {folder!r} does not exist"
    if not os.access(folder, os.W_OK):
        return f": the folder {folder!r} is not writable"
    return None
