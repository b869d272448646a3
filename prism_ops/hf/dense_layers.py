"""The cache of a model's calibrated dense layers (`PrismConfig.dense_layers="auto"`, the `tuned` preset).

    save_dense_layers(model, [7, 18, 20], info)   # prism-calibrate --dense-layers (prism_ops.calibrate)
    load_dense_layers(model)                      # (7, 18, 20), or a ValueError naming the command

One JSON file per model in the package's cache folder (`_files.cache_root`), named by a digest of
the model's fingerprint (architecture, sizes, sampled weights: `model.model_fingerprint`), which
the file also holds and which must match in full: another checkpoint or dtype never reads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .model import cache_file, model_fingerprint

COMMAND = "prism-calibrate --model MODEL --dense-layers"


def dense_layers_path(model) -> Path | None:
    """The model's calibration file (None when the cache is off: PRISM_OPS_CACHE=off)."""
    return cache_file(model, "dense-layers", ".json")


def load_dense_layers(model) -> tuple[int, ...]:
    """The model's calibrated dense layers; ValueError (naming the command) when not calibrated."""
    path = dense_layers_path(model)
    if path is None or not path.is_file():
        where = "the cache is off (PRISM_OPS_CACHE=off)" if path is None else f"no file {path}"
        raise ValueError(f"dense_layers='auto' (the tuned preset) needs this model's calibration, once: run "
                         f"`{COMMAND}` ({where})")
    data = json.loads(path.read_text())
    if data.get("fingerprint") != model_fingerprint(model):
        raise ValueError(f"{path} was calibrated for another model ({data.get('fingerprint')}); run `{COMMAND}` again")
    return tuple(data["dense_layers"])


def save_dense_layers(model, layers: list[int], info: dict) -> Path:
    """Write the model's calibration (whole or not at all); returns its path."""
    path = dense_layers_path(model)
    if path is None:
        raise ValueError("the cache is off (PRISM_OPS_CACHE=off): the calibration has nowhere to go")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"dense_layers": sorted(layers), "fingerprint": model_fingerprint(model), **info},
                              indent=1))
    os.replace(tmp, path)
    return path
