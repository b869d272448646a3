"""S2M3 modules: encoders, projectors and heads that multi-task models are built from, and
sharing of identical modules.

A Module wraps one torch module behind one call, `features = module(x)`:

    text encoder   ids `[B, T]`            -> mean-pooled last hidden state `[B, d]`
    vision encoder pixels `[B, 3, H, W]`   -> CLS vector `[B, d]`
    audio encoder  log-mel `[B, 80, 2*S]`  -> mean over frames `[B, d]`
    projector      `[B, d_in]`             -> `[B, d_out]` (a linear map)
    classifier     `[B, d]`                -> logits `[B, classes]`
    similarity     two `[B, d]`            -> cosine `[B]` (a retrieval head; no weights)
    decoder        prefix `[B, d]`         -> greedy token ids `[B, 8]` (a small causal LM fed
                                              the projected features as its first embedding)

A model is a named list of modules and how they connect (a `Task` DAG of module names).
Two modules are the same module when their content hash is equal: the hash covers the
wrapper kind, the torch class, the config and every parameter and buffer byte, so only truly
identical modules are shared and sharing cannot change an output. `Registry.add` returns the
already loaded copy of an identical module, which every model then uses.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch

from ..hf.model import cache_keyword, cache_of

KINDS = ("text", "vision", "audio", "projector", "classifier", "similarity", "decoder")
DECODE_TOKENS = 8  # tokens a decoder head generates


def content_hash(kind: str, net: torch.nn.Module | None, config: dict | None = None) -> str:
    """sha256 over the kind, the class, the config and all parameter and buffer bytes."""
    h = hashlib.sha256(kind.encode())
    if net is None:
        return h.hexdigest()
    h.update(type(net).__qualname__.encode())
    h.update(json.dumps(config or {}, sort_keys=True, default=str).encode())
    for name, t in list(net.named_parameters()) + list(net.named_buffers()):
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def module_bytes(net: torch.nn.Module | None) -> int:
    """Parameters plus buffers, in bytes."""
    if net is None:
        return 0
    tensors = list(net.parameters()) + list(net.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(eq=False)
class Module:
    """One encoder, projector or head; `name` is what tasks refer to."""

    name: str
    kind: str
    net: torch.nn.Module | None
    config: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.net is not None:
            self.net.eval()
        self.hash = content_hash(self.kind, self.net, self.config)
        self.nbytes = module_bytes(self.net)

    @torch.no_grad()
    def __call__(self, *xs):
        if self.kind == "similarity":
            a, b = xs
            return torch.nn.functional.cosine_similarity(a, b, dim=-1)
        (x,) = xs
        if self.kind == "text":
            h = self.net(input_ids=x).last_hidden_state
            return h.mean(1)
        if self.kind == "vision":
            return self.net(pixel_values=x).last_hidden_state[:, 0]
        if self.kind == "audio":
            return self.net(x).last_hidden_state.mean(1)
        if self.kind == "decoder":
            out = self.net(inputs_embeds=x[:, None], use_cache=True)
            ids, cache_arg = [], cache_keyword(self.net)
            for _ in range(DECODE_TOKENS):
                ids.append(out.logits[:, -1].argmax(-1))
                out = self.net(input_ids=ids[-1][:, None], use_cache=True, **{cache_arg: cache_of(out)})
            return torch.stack(ids, 1)
        return self.net(x)  # projector, classifier


class Registry:
    """Loaded modules by content hash: identical modules are loaded once and shared."""

    def __init__(self):
        self.by_hash: dict[str, Module] = {}
        self.requested = 0  # modules asked for, counting every model's copy
        self.requested_bytes = 0

    def add(self, module: Module) -> Module:
        """The shared copy of `module` (itself if it is new)."""
        self.requested += 1
        self.requested_bytes += module.nbytes
        return self.by_hash.setdefault(module.hash, module)

    @property
    def unique_bytes(self) -> int:
        return sum(m.nbytes for m in self.by_hash.values())

    def memory_report(self) -> dict:
        """Bytes with sharing against one copy of every module per model."""
        return {"modules_requested": self.requested, "modules_loaded": len(self.by_hash),
                "bytes_one_copy_per_model": self.requested_bytes, "bytes_shared": self.unique_bytes,
                "saved": 1 - self.unique_bytes / max(1, self.requested_bytes)}
