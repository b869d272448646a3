"""codebook_rows: summary rows sent as product-quantization codes of offline codebooks (a lever).

Below 4 bits per value, per-channel integer rounding (`quantize_rows`) loses too much; a codebook
calibrated offline on a little text keeps the shape of the data instead. Each head's C channels
are cut into M = C / g groups of g consecutive channels; a group travels as the index of its
nearest centroid among K (log2(K) bits), so a row costs M * log2(K) bits, log2(K) / g bits per
value, and nothing per chunk (the receiver holds the same codebook). With g dividing the head
dim D, no group straddles K and V in a K|V row, so keys and values have codebooks of their own.

Shapes: rows x `[B, H, S, C]` (H heads of C channels: (Hkv, 2D) for K/V exchange, (1, d) for
hidden features); codebook `[H, M, K, g]` (one per layer); codes `[B, H, S, M]`, uint8 for K <= 256,
int16 above (`code_dtype`).

`kmeans` builds a codebook (plain Lloyd iterations, no training); `codebook_codes` and
`codebook_decode` are the two ends of the wire; `codebook_rows` is the round trip the simulation
applies. A codebook whose centroids include every row reproduces the rows exactly.

A calibration file (`save_codebooks`, `load_codebooks`; written by `prism-calibrate`) holds one
codebook per attention layer, the exchange they were fitted for, and the fingerprint of the
model they belong to (`prism_ops.hf.model_fingerprint`), which `prism_ops.hf.configure` checks.
"""

from __future__ import annotations

import functools
import math
import os

import torch

from .._checks import check_int, check_tensor

MAX_CENTROIDS = 4096  # codes travel in at most 12 bits (bit-packed: `strategy.payload.pack_codes`)


def code_dtype(K: int) -> torch.dtype:
    """The dtype codes of a K-centroid codebook are held in: uint8 up to 256 centroids, else int16."""
    return torch.uint8 if K <= 256 else torch.int16


def check_codebook(codebook: torch.Tensor, name: str = "codebook") -> tuple[int, int, int, int]:
    """(H, M, K, g) of a `[H, M, K, g]` float codebook with 2 <= K <= MAX_CENTROIDS, K a power of two."""
    check_tensor(codebook, name, "[H, M, K, g]", 4)
    if not codebook.is_floating_point():
        raise ValueError(f"{name} must be a float tensor, got {codebook.dtype}")
    H, M, K, g = codebook.shape
    if K < 2 or K > MAX_CENTROIDS or K & (K - 1):
        raise ValueError(f"{name} must have a power-of-two K in [2, {MAX_CENTROIDS}] centroids, got K={K}")
    return H, M, K, g


def code_bits(codebook: torch.Tensor) -> int:
    """Bits one code takes on the wire: log2(K)."""
    return int(math.log2(codebook.shape[2]))


def _groups(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """x `[B, H, S, C]` as `[B, H, S, M, g]`, after checking it fits the codebook."""
    H, M, K, g = check_codebook(codebook)
    check_tensor(x, "x", "[B, H, S, C]", 4)
    if x.shape[1] != H or x.shape[3] != M * g:
        raise ValueError(f"x must have shape [B, {H}, S, {M * g}] for a [{H}, {M}, {K}, {g}] codebook, "
                         f"got {list(x.shape)}")
    return x.reshape(*x.shape[:3], M, g)


def codebook_codes(x: torch.Tensor, codebook: torch.Tensor, rows_per_step: int | None = None) -> torch.Tensor:
    """What travels: the nearest centroid of every channel group, `[B, H, S, M]` (`code_dtype`)."""
    xg = _groups(x, codebook).float()
    dtype = code_dtype(codebook.shape[2])
    cb = codebook.to(device=x.device, dtype=torch.float32)  # [H, M, K, g]
    c2 = (cb * cb).sum(-1)  # [H, M, K]
    out = []
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 does not change the argmin. Rows in steps
    # bound the [B, H, s, M, K] distance tensor: about a million distances a step, which stays in
    # cache (with 1024 centroids a step of 256 rows wrote and reread tens of megabytes).
    if rows_per_step is None:
        H, M, K = codebook.shape[:3]
        rows_per_step = max(1, 2**20 // (x.shape[0] * H * M * K))
    for part in xg.split(rows_per_step, dim=2):
        dist = c2[None, :, None] - 2 * torch.einsum("bhsmg,hmkg->bhsmk", part, cb)
        out.append(dist.argmin(-1).to(dtype))
    return torch.cat(out, 2) if out else xg.new_zeros((*xg.shape[:4],), dtype=dtype)


def codebook_decode(codes: torch.Tensor, codebook: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """The receiver's rows `[B, H, S, M * g]` from codes `[B, H, S, M]`."""
    H, M, K, g = check_codebook(codebook)
    B, _, S, _ = codes.shape
    cb = codebook.to(codes.device)
    heads = torch.arange(H, device=codes.device)[:, None, None]  # broadcasts over [B, H, S, M]
    groups = torch.arange(M, device=codes.device)
    rows = cb[heads, groups, codes.long()]  # [B, H, S, M, g]
    return rows.reshape(B, H, S, M * g).to(dtype)


def codebook_rows(x: torch.Tensor, codebook: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Encode-decode x `[B, H, S, C]` with the codebook; rows with valid False `[..., S, 1]` stay."""
    if x.shape[-2] == 0:
        return x
    out = codebook_decode(codebook_codes(x, codebook), codebook, dtype=x.dtype)
    return out if valid is None else torch.where(valid, out, x)


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0, groups_per_step: int = 32) -> torch.Tensor:
    """k centroids of each of G point sets: x `[G, N, g]` -> `[G, k, g]` float32 (Lloyd's method).

    Starts from k distinct points of each set (a seeded permutation); a centroid that loses all
    its points keeps its place. Needs N >= k.
    """
    check_tensor(x, "x", "[G, N, g]", 3)
    G, N, g = x.shape
    check_int(k, "k", 1, N, f" (at most the N={N} points)")
    check_int(iters, "iters", 0)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for part in x.float().split(groups_per_step):
        pick = torch.stack([torch.randperm(N, generator=gen)[:k] for _ in range(part.shape[0])]).to(x.device)
        cent = torch.gather(part, 1, pick[..., None].expand(-1, -1, g))
        for _ in range(iters):
            # argmin of ||c||^2 - 2 x.c (||x||^2 is the same for every centroid)
            assign = torch.baddbmm((cent * cent).sum(-1)[:, None], part, cent.transpose(1, 2), alpha=-2).argmin(-1)
            sums = torch.zeros_like(cent).scatter_add_(1, assign[..., None].expand(-1, -1, g), part)
            counts = torch.zeros(cent.shape[:2], device=x.device).scatter_add_(1, assign, torch.ones_like(assign,
                                                                                                      dtype=torch.float))
            cent = torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], cent)
        out.append(cent)
    return torch.cat(out)


def fit_codebook(rows: torch.Tensor, group: int, centroids: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """A `[H, M, K, g]` codebook for calibration rows `[H, N, C]` (N rows of each head)."""
    check_tensor(rows, "rows", "[H, N, C]", 3)
    H, N, C = rows.shape
    check_int(group, "group", 1)
    if C % group:
        raise ValueError(f"group must divide the {C} channels of a row, got {group}")
    M = C // group
    pts = rows.float().reshape(H, N, M, group).permute(0, 2, 1, 3).reshape(H * M, N, group)
    return kmeans(pts, centroids, iters, seed).view(H, M, centroids, group)


FORMAT = "prism-codebook/1"


def save_codebooks(path, codebooks: list[torch.Tensor], exchange: str, fingerprint: dict) -> None:
    """Write one `[H, M, K, g]` codebook per layer, the exchange and the model's fingerprint."""
    for i, cb in enumerate(codebooks):
        check_codebook(cb, f"codebooks[{i}]")
    torch.save({"format": FORMAT, "exchange": exchange, "fingerprint": dict(fingerprint),
                "codebooks": [cb.float().contiguous() for cb in codebooks]}, path)


def read_calibration(path, name: str, fmt: str, command: str, check) -> dict:
    """A calibration file of format `fmt` (written by `command`), its contents checked by
    check(data, name, path), which raises ValueError for a corrupt one. Raises ValueError naming the
    setting `name` and the path for a missing, unreadable or malformed file. Read and checked once
    per (path, size, mtime): the layouts ask for a file's geometry in every layer of every request."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{name} must be the path of a calibration file ({command}), got {path!r}")
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"{name}={str(path)!r}: no readable calibration file there ({e.strerror}); "
                         f"write one with {command}") from None
    return _read(os.fspath(path), st.st_size, st.st_mtime_ns, name, fmt, command, check)


@functools.lru_cache(maxsize=16)
def _read(path: str, size: int, mtime: int, name: str, fmt: str, command: str, check) -> dict:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a file that is not its format
        raise ValueError(f"{name}={path!r} is not a calibration file written by prism-calibrate "
                         f"({type(e).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ValueError(f"{name}={path!r} is not a {fmt} file written by {command}")
    check(data, name, path)
    return data


def load_codebooks(path, name: str = "summary_codebook") -> dict:
    """A calibration file's contents, checked: {"exchange", "fingerprint", "codebooks"} (`read_calibration`)."""
    return read_calibration(path, name, FORMAT, "prism-calibrate", _check_codebooks)


def _check_codebooks(data: dict, name: str, path: str) -> None:
    books = data.get("codebooks")
    if not isinstance(books, list) or not books or not isinstance(data.get("fingerprint"), dict) \
            or data.get("exchange") not in ("kv", "hidden"):
        raise ValueError(f"{name}={path!r} is a corrupt calibration file: it needs codebooks, exchange, fingerprint")
    shapes = set()
    for i, cb in enumerate(books):
        try:
            check_codebook(cb, f"{name} layer {i}")
        except ValueError as e:
            raise ValueError(f"{name}={path!r} is a corrupt calibration file: {e}") from None
        shapes.add(tuple(cb.shape))
    if len(shapes) != 1:
        raise ValueError(f"{name}={path!r} is a corrupt calibration file: layers have codebooks of shapes {sorted(shapes)}")


def codebook_geometry(path, name: str = "summary_codebook") -> tuple[int, int]:
    """(channel groups M per head, bits per code) of a calibration file: what its codes cost."""
    cb = load_codebooks(path, name)["codebooks"][0]
    return cb.shape[1], code_bits(cb)
