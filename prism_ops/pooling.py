"""Sentence embeddings as sentence-transformers computes them, from hidden states split over ranks.

    pooling = read_folder(folder)        # modules.json + the pooling config, or Pooling() (mean)
    part = local_part(h, valid, c0, pooling)       # on each rank: `[B, K]` float64
    emb = combine([part_0, ..., part_P-1], pooling) # on rank 0: `[B, D]` float32

A model folder with a sentence-transformers config (`modules.json` listing Transformer, Pooling
and optionally Normalize; `1_Pooling/config.json`) gives its pooling: "cls", "max", "mean",
"mean_sqrt_len_tokens", "lasttoken" (several are concatenated in that order, as
sentence-transformers does), then L2 normalisation if `Normalize` follows. A folder without it
gets mean pooling over the real tokens and no normalisation. What sentence-transformers has and
this does not (Dense layers, "weightedmean", `include_prompt: false`) is refused by name.

Each rank sends only what the pooling needs of its own tokens `h [B, n, d]` (columns c0..):
the sum over real tokens and their count (mean, mean_sqrt_len_tokens), the elementwise max
(max), the first column's vector (cls: the first token, held by the rank whose chunk starts at
0), and its last real token's vector with that token's column (lasttoken). Rank 0 combines them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken")  # sentence-transformers' order
# sentence-transformers' older configs: one boolean per mode.
LEGACY_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
               "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
               "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


@dataclass(frozen=True)
class Pooling:
    """How token vectors become one sentence vector. source: "sentence-transformers" when read
    from the folder's config, "default" otherwise."""

    modes: tuple = ("mean",)
    normalize: bool = False
    source: str = "default"

    def __post_init__(self):
        bad = [m for m in self.modes if m not in MODES]
        if not self.modes or bad:
            raise ValueError(f"pooling modes must be a non-empty subset of {MODES}, got {list(self.modes)}")

    def to_json(self) -> dict:
        return {"modes": list(self.modes), "normalize": self.normalize, "source": self.source}

    @classmethod
    def from_json(cls, obj: dict | None) -> Pooling:
        return cls() if obj is None else cls(tuple(obj["modes"]), bool(obj["normalize"]), obj["source"])

    def describe(self) -> str:
        norm = ", then L2-normalised" if self.normalize else ""
        return f"{' + '.join(self.modes)} pooling{norm} ({self.source})"


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"the sentence-transformers config {path!r} could not be read: {e}") from None


def read_folder(folder: str) -> Pooling:
    """The pooling a model folder's sentence-transformers config gives (Pooling() without one);
    ValueError naming the file and the module or option for what is not supported."""
    path = os.path.join(folder, "modules.json")
    if not os.path.isfile(path):
        return Pooling()
    modules = _read_json(path)
    if not isinstance(modules, list):
        raise ValueError(f"{path}: expected a list of modules")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if not kinds or kinds[0] != "Transformer":
        raise ValueError(f"{path}: the first module must be a Transformer, got {kinds[:1]}")
    modes, normalize = ("mean",), False
    for m, kind in zip(modules[1:], kinds[1:]):
        if kind == "Pooling":
            modes = _pooling_modes(os.path.join(folder, m.get("path", ""), "config.json"))
        elif kind == "Normalize" and m is modules[-1]:
            normalize = True
        else:
            raise ValueError(f"{path}: the module {m.get('type')!r} ({m.get('path')!r}) is not supported here "
                             "(supported: Transformer, Pooling, then Normalize last)")
    return Pooling(modes, normalize, "sentence-transformers")


def _pooling_modes(path: str) -> tuple:
    cfg = _read_json(path)
    if cfg.get("include_prompt", True) is not True:
        raise ValueError(f"{path}: include_prompt={cfg['include_prompt']!r} is not supported here")
    if "pooling_mode" in cfg:
        mode = cfg["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(mode for key, mode in LEGACY_KEYS.items() if cfg.get(key, False)) or ("mean",)
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"{path}: pooling mode {bad[0]!r} is not supported here (supported: {', '.join(MODES)})")
    return modes


def _layout(pooling: Pooling, d: int) -> dict:
    """name -> (start, end) of each piece in a rank's part (count always, at column 0)."""
    names = ["count"]
    if {"mean", "mean_sqrt_len_tokens"} & set(pooling.modes):
        names.append("sum")
    for m, piece in (("max", "max"), ("cls", "cls"), ("lasttoken", "last_col")):
        if m in pooling.modes:
            names.append(piece)
    if "lasttoken" in pooling.modes:
        names.append("last")
    out, at = {}, 0
    for n in names:
        w = 1 if n in ("count", "last_col") else d
        out[n] = (at, at + w)
        at += w
    return out


def local_part(h: torch.Tensor, valid: torch.Tensor, c0: int, pooling: Pooling) -> torch.Tensor:
    """What one rank sends: `[B, K]` float64 from its hidden states h `[B, n, d]`, valid `[B, n]`
    (True = real token) and c0, the column its chunk starts at; on h's device."""
    B, n, d = h.shape
    dev = h.device
    valid = valid.to(dev).bool()  # once, on h's device: every piece below reads it there
    hd, w = h.double(), valid.to(torch.float64)[..., None]
    pieces = {"count": w.sum((1, 2))[:, None]}
    lay = _layout(pooling, d)
    if "sum" in lay:
        pieces["sum"] = (hd * w).sum(1)
    if "max" in lay:
        # No real token here: -inf, which the max over ranks drops.
        pieces["max"] = hd.masked_fill(~valid[..., None], float("-inf")).amax(1) if n else \
            torch.full((B, d), float("-inf"), dtype=torch.float64, device=dev)
    if "cls" in lay:
        pieces["cls"] = hd[:, 0] if c0 == 0 and n else torch.zeros(B, d, dtype=torch.float64, device=dev)
    if "last" in lay:
        cols = torch.arange(n, dtype=torch.float64, device=dev).expand(B, n)
        cols = torch.where(valid, cols, torch.full_like(cols, -1.0))
        j = cols.argmax(1) if n else torch.zeros(B, dtype=torch.long, device=dev)
        has = cols.amax(1) >= 0 if n else torch.zeros(B, dtype=torch.bool, device=dev)
        pieces["last_col"] = torch.where(has, c0 + j.double(), torch.full_like(j, -1, dtype=torch.float64))[:, None]
        pieces["last"] = hd[torch.arange(B, device=dev), j] if n else torch.zeros(B, d, dtype=torch.float64, device=dev)
    return torch.cat([pieces[name] for name in lay], 1)


def combine(parts: list, pooling: Pooling) -> torch.Tensor:
    """Rank 0: the sentence vectors `[B, D]` float32 from every rank's part `[B, K]` (rank order)."""
    stack = torch.stack(parts)  # [P, B, K]
    one = _layout(pooling, 1)  # K = scalars + pieces of width d
    scalars = sum(1 for n in one if n in ("count", "last_col"))
    lay = _layout(pooling, (stack.shape[2] - scalars) // (len(one) - scalars))

    def piece(name):
        a, b = lay[name]
        return stack[:, :, a:b]

    count = piece("count").sum(0).clamp(min=1e-9)
    out = []
    for mode in pooling.modes:
        if mode == "mean":
            out.append(piece("sum").sum(0) / count)
        elif mode == "mean_sqrt_len_tokens":
            out.append(piece("sum").sum(0) / count.sqrt())
        elif mode == "max":
            out.append(piece("max").amax(0))
        elif mode == "cls":
            out.append(piece("cls").sum(0))
        else:  # lasttoken: the rank holding the last real column
            rank = piece("last_col")[:, :, 0].argmax(0)  # [B]
            out.append(piece("last")[rank, torch.arange(stack.shape[1])])
    emb = torch.cat(out, 1)
    if pooling.normalize:
        emb = torch.nn.functional.normalize(emb, p=2, dim=1)
    return emb.float()
