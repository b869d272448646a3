"""The cache of a model's delta codes (`PrismConfig.delta_codebook="auto"`, the `tuned` preset).

    delta_codes_path(model)     # where prism-calibrate --delta-codes (no --out) writes them
    cached_delta_codes(model)   # that path, or a ValueError naming the command

One file per model in the package's cache folder (`_files.cache_root`), named by a digest of the
model's fingerprint (as the dense layers' cache), which the file also holds and `configure` checks.
"""

from __future__ import annotations

from pathlib import Path

from .model import cache_file

COMMAND = "prism-calibrate --model MODEL --delta-codes"


def delta_codes_path(model) -> Path | None:
    """The model's delta codes file (None when the cache is off: PRISM_OPS_CACHE=off)."""
    return cache_file(model, "delta-codes", ".delta")


def cached_delta_codes(model) -> str:
    """The path of the model's cached delta codes; ValueError (naming the command) when there are none."""
    path = delta_codes_path(model)
    if path is None or not path.is_file():
        where = "the cache is off (PRISM_OPS_CACHE=off)" if path is None else f"no file {path}"
        raise ValueError(f"delta_codebook='auto' (the tuned preset on an encoder) needs this model's delta codes, "
                         f"once: run `{COMMAND}` ({where})")
    return str(path)
