"""The start-up handshake: every rank must run the same model, weights, settings and versions.

    handshake(comm, fingerprint(runner, model_name="minilm", dtype="float32"))   # runner: hf.configure's

raises HandshakeError on every rank, naming each field that differs
(`segment_size: rank 0 has 16, rank 1 has 8`), so all of them stop cleanly with exit code 3.
"""

from __future__ import annotations

import hashlib

import torch

from prism_ops import __version__

from .control import allgather_json
from .faults import HandshakeError


def fingerprint(runner, *, model_name: str, dtype: str, **extra) -> dict:
    """What must match on every rank: versions, model, weights, dtype, every field of the runner's
    config and any extra JSON-able fields (prism-run adds its mode: run, auto, profile or serve).
    runner: a `prism_ops.request_types.ModelRunner` (what `prism_ops.hf.configure` returns)."""
    config = runner.config
    out = {"prism_ops": __version__, "torch": torch.__version__, **runner.identity(),
           "model": model_name, "dtype": dtype, **config.as_dict(), **extra}
    for lever in ("summary_codebook", "delta_codebook"):  # the same path may hold different files on different machines
        path = getattr(config, lever)
        if path:
            with open(path, "rb") as f:
                out[f"{lever}_digest"] = hashlib.sha256(f.read()).hexdigest()[:16]
    return out


def handshake(comm, fingerprint: dict) -> None:
    """Refuse to start unless every rank has the same fingerprint."""
    every = allgather_json(comm, fingerprint, key="handshake")
    diffs = []
    for r, fp in enumerate(every[1:], start=1):
        for k in sorted(set(fp) | set(every[0])):
            if fp.get(k) != every[0].get(k):
                diffs.append(f"{k}: rank 0 has {every[0].get(k)!r}, rank {r} has {fp.get(k)!r}")
    if diffs:
        raise HandshakeError("ranks were started with different settings; " + "; ".join(diffs))
