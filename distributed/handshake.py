"""The start-up handshake: every rank must run the same model, weights, settings and versions.

    handshake(comm, fingerprint(model, config, model_name="minilm", dtype="float32"))

raises HandshakeError on every rank, naming each field that differs
(`segment_size: rank 0 has 16, rank 1 has 8`), so all of them stop cleanly with exit code 3.
"""

from __future__ import annotations

import hashlib

import torch

from prism_ops import __version__
from prism_ops.config import PrismConfig
from prism_ops.hf import sampled_weights_digest, transformers_version

from .control import allgather_json
from .faults import HandshakeError


def fingerprint(model, config: PrismConfig, *, model_name: str, dtype: str, **extra) -> dict:
    """What must match on every rank: versions, model, weights, dtype, every config field and
    any extra JSON-able fields (prism-run adds its mode: run, auto, profile or serve)."""
    out = {"prism_ops": __version__, "torch": torch.__version__, "transformers": transformers_version(),
           "model": model_name, "weights": sampled_weights_digest(model), "dtype": dtype, **config.as_dict(), **extra}
    if config.summary_codebook:  # the same path may hold different files on different machines
        with open(config.summary_codebook, "rb") as f:
            out["summary_codebook_digest"] = hashlib.sha256(f.read()).hexdigest()[:16]
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
