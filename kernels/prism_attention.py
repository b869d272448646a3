"""Triton kernel for `prism_ops.prism_attention`: fused forward, FlashAttention-2 style.

One program per (block of BLOCK_M queries, batch*head). It keeps a running max, running sum
and fp32 accumulator (online softmax, in log2 units) and streams three key ranges:
  1. local key blocks every query of the block may see (no mask work at all),
  2. the remaining local blocks up to the causal diagonal (bounds + causal mask); blocks
     above the diagonal are never visited,
  3. the summary rows, each logit + log2(count) (count 0 = masked).
GQA reads the kv head h // (H // Hkv) in place, so K/V are never copied or concatenated, and no
[Tq, Tk] mask exists in memory. Head dims that are not powers of two are padded inside the
kernel (masked loads). Writes out `[B, H, Tq, D]` and lse `[B, H, Tq]` (natural log).

Tiles are picked by `triton.autotune` (`tuned_kernel`): a few (BLOCK_M, BLOCK_N, warps, stages)
per padded head dim, keyed on the head dim, causal, whether there are summary rows and their
count (as a power-of-two bucket) and the input dtype; configs that need more shared memory than
the GPU has (an Orin's is small) are pruned before timing. Under Triton's interpreter there is one
small config, so nothing is timed.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _dot(a, b, TF32X3: tl.constexpr, DOT_FP32: tl.constexpr):
    # DOT_FP32: the interpreter's bf16 dot is wrong, so it upcasts (same rounding of inputs).
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    elif TF32X3:
        # fp32 input: three TF32 tensor-core products (hi*hi + hi*lo + lo*hi), close to fp32
        # accuracy. "ieee" would run on the FMA units: 20-30 s of ptxas per tile and heavy spills.
        return tl.dot(a, b, input_precision="tf32x3")
    else:
        return tl.dot(a, b)


@triton.jit
def _softmax_step(acc, l_i, m_i, s, v, TF32X3: tl.constexpr, DOT_FP32: tl.constexpr):
    """Fold one block of logits s [M, N] (log2 units, -inf = masked) and values v [N, D] in."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen nothing yet
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, TF32X3, DOT_FP32)
    return acc, l_i, m_new


@triton.jit
def prism_attention_kernel(
    Q, K, V, KS, VS, C, KVALID, Out, Lse,
    qk_scale,  # scale * log2(e)
    Tq, Tk, S, H, GROUP, S_BUCKET, TQ_BUCKET,  # the buckets: autotune key only
    sqb, sqh, sqt, sqd,
    skb, skh, skt, skd,
    svb, svh, svt, svd,
    sksb, sksh, skss, sksd,
    svsb, svsh, svss, svsd,
    scb, scs,
    skvb, skvt,
    sob, soh, sot, sod,
    slb, slh, slt,
    D: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, LOG_COUNT_BIAS: tl.constexpr, HAS_SUM: tl.constexpr,
    HAS_KVALID: tl.constexpr, STORE_LSE: tl.constexpr, TF32X3: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,  # last: set by the autotuner's config
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    hk = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D

    q = tl.load(
        Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :] * sqd,
        mask=(offs_m[:, None] < Tq) & mask_d[None, :], other=0.0,
    )
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    diag = Tk - Tq  # query i sees local key j iff j <= i + diag (bottom-right aligned)
    if CAUSAL:
        hi = tl.maximum(tl.minimum(Tk, start_m + BLOCK_M + diag), 0)
        full_end = tl.maximum(tl.minimum(start_m + diag + 1, Tk), 0) // BLOCK_N * BLOCK_N
    else:
        hi = Tk
        full_end = Tk // BLOCK_N * BLOCK_N

    # 1. local blocks visible to every query of this block: no bounds or causal mask.
    for start_n in range(0, full_end, BLOCK_N):
        cols = start_n + offs_n
        kt = tl.load(k_base + cols[None, :] * skt + offs_d[:, None] * skd, mask=mask_d[:, None], other=0.0)
        v = tl.load(v_base + cols[:, None] * svt + offs_d[None, :] * svd, mask=mask_d[None, :], other=0.0)
        s = _dot(q, kt, TF32X3, DOT_FP32) * qk_scale
        if HAS_KVALID:
            keep = tl.load(KVALID + b * skvb + cols * skvt) != 0
            s = tl.where(keep[None, :], s, float("-inf"))
        acc, l_i, m_i = _softmax_step(acc, l_i, m_i, s, v, TF32X3, DOT_FP32)

    # 2. the rest of the local block up to the diagonal: bounds and causal mask.
    for start_n in range(full_end, hi, BLOCK_N):
        cols = start_n + offs_n
        in_k = cols < Tk
        kt = tl.load(k_base + cols[None, :] * skt + offs_d[:, None] * skd,
                     mask=in_k[None, :] & mask_d[:, None], other=0.0)
        v = tl.load(v_base + cols[:, None] * svt + offs_d[None, :] * svd,
                    mask=in_k[:, None] & mask_d[None, :], other=0.0)
        s = _dot(q, kt, TF32X3, DOT_FP32) * qk_scale
        keep = in_k[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
        if HAS_KVALID:
            keep = keep & (tl.load(KVALID + b * skvb + cols * skvt, mask=in_k, other=0) != 0)[None, :]
        s = tl.where(keep, s, float("-inf"))
        acc, l_i, m_i = _softmax_step(acc, l_i, m_i, s, v, TF32X3, DOT_FP32)

    # 3. summary rows: visible to every query, logit + log2(count); count 0 = not there.
    if HAS_SUM:
        ks_base = KS + b * sksb + hk * sksh
        vs_base = VS + b * svsb + hk * svsh
        for start_s in range(0, S, BLOCK_N):
            rows = start_s + offs_n
            in_s = rows < S
            kt = tl.load(ks_base + rows[None, :] * skss + offs_d[:, None] * sksd,
                         mask=in_s[None, :] & mask_d[:, None], other=0.0)
            v = tl.load(vs_base + rows[:, None] * svss + offs_d[None, :] * svsd,
                        mask=in_s[:, None] & mask_d[None, :], other=0.0)
            cnt = tl.load(C + b * scb + rows * scs, mask=in_s, other=0).to(tl.float32)
            if LOG_COUNT_BIAS:
                bias = tl.where(cnt > 0, tl.math.log2(tl.maximum(cnt, 1.0)), float("-inf"))
            else:
                bias = tl.where(cnt > 0, 0.0, float("-inf"))
            s = _dot(q, kt, TF32X3, DOT_FP32) * qk_scale + bias[None, :]
            acc, l_i, m_i = _softmax_step(acc, l_i, m_i, s, v, TF32X3, DOT_FP32)

    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]  # rows that saw nothing: acc is 0 -> zeros
    in_m = offs_m < Tq
    tl.store(
        Out + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :] * sod,
        out.to(Out.dtype.element_ty), mask=in_m[:, None] & mask_d[None, :],
    )
    if STORE_LSE:
        lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
        tl.store(Lse + b * slb + h * slh + offs_m * slt, lse, mask=in_m)


# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried on a GPU, per padded head dim (16 and 32 take
# the 64 list). fp16/bf16 prefill:
_GPU_TILES = {
    64: [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4), (64, 32, 2, 3)],
    128: [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (128, 128, 8, 2), (64, 32, 4, 2)],
    256: [(64, 32, 4, 2), (64, 64, 8, 2), (32, 32, 4, 2), (128, 32, 8, 2)],
}
# fp32 (TF32x3 dots: q and the K/V tiles are split into high and low TF32 parts): smaller tiles,
# so the accumulator and the split operands fit in registers (tests/kernels/test_kernels_compile.py: a few
# seconds of ptxas per tile and at most a few dozen bytes of spills, where IEEE fp32 dots took
# 20-30 s and spilled tens of KB).
_FP32_TILES = {
    64: [(64, 32, 4, 3), (32, 32, 4, 2)],  # (64, 64, 4, 2) spills 1 KB on sm_87
    128: [(32, 32, 4, 2), (16, 64, 4, 2)],
    256: [(16, 16, 4, 1), (16, 32, 4, 1)],
}
# Decode (Tq <= DECODE_MAX_TQ): one 16-row tile holds every query; wide key blocks.
_DECODE_TILES = {
    64: [(16, 64, 4, 3), (16, 128, 4, 2)],
    128: [(16, 64, 4, 3), (16, 128, 8, 2)],
    256: [(16, 32, 4, 2), (16, 64, 4, 2)],
}
_FP32_DECODE_TILE = (16, 32, 4, 2)
DECODE_MAX_TQ = 16
_INTERPRETER_TILE = (16, 16, 1, 1)  # small tiles: small test shapes still cross several blocks
# dtypes join the key by themselves (Triton's autotuner adds every tensor argument's dtype).
AUTOTUNE_KEY = ["D", "CAUSAL", "HAS_SUM", "S_BUCKET", "TQ_BUCKET"]


def tile_group(head_dim: int) -> int:
    """The key of the tile tables for a head dim (padded to a power of two: 16 and 32 take 64's)."""
    return min(max(triton.next_power_of_2(head_dim), 64), 256)


def candidate_tiles(block_d: int, elem_size: int, decode: bool) -> list[tuple[int, int, int, int]]:
    """The tiles tried for one padded head dim, input element size (4 = fp32) and query bucket."""
    g = tile_group(block_d)
    if elem_size == 4:
        return ([t for t in _FP32_TILES[g] if t[0] == 16] or [_FP32_DECODE_TILE]) if decode else list(_FP32_TILES[g])
    return list(_DECODE_TILES[g] if decode else _GPU_TILES[g])


def shared_memory_estimate(tile, block_d: int, elem_size: int) -> int:
    """Bytes of shared memory a tile needs: the q tile (twice for fp32, whose TF32x3 dots keep a
    high and a low part) plus num_stages K and V tiles. What Triton allocates for the fp16/bf16
    tiles of 64 rows and more, an upper bound otherwise (smaller tiles keep q in registers);
    tests/kernels/test_kernels_compile.py checks it against the compiler for sm_87 and sm_90."""
    m, n, _, stages = tile
    q_tiles = 2 if elem_size == 4 else 1
    return elem_size * block_d * (q_tiles * m + 2 * n * stages)


def select_tiles(block_d: int, elem_size: int, decode: bool, shared_memory: int | None,
                 capability: tuple[int, int] | None, pinned: bool = False):
    """The tiles the autotuner times for these inputs on a GPU with `shared_memory` bytes per block
    and compute `capability` (None: unknown, nothing pruned for it).

    Pruned: tiles that overflow shared memory (the smallest is kept if none fits) and, on Hopper
    (sm_90), 8-warp tiles under 128x128, as Triton's attention tutorial does (they never win there
    and only cost autotune time). pinned: the first survivor only, so nothing is timed.
    """
    tiles = candidate_tiles(block_d, elem_size, decode)
    if capability is not None and capability[0] == 9:
        tiles = [t for t in tiles if not (t[2] == 8 and t[0] * t[1] < 128 * 128)] or tiles
    if shared_memory is not None:
        need = lambda t: shared_memory_estimate(t, block_d, elem_size)  # noqa: E731
        tiles = [t for t in tiles if need(t) <= shared_memory] or [min(tiles, key=need)]
    return tiles[:1] if pinned else tiles


def _config(tile):
    m, n, warps, stages = tile
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages)


def _tile(config):
    return (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages)


def _gpu_configs():
    tables = (_GPU_TILES, _FP32_TILES, _DECODE_TILES)
    tiles = sorted({t for table in tables for ts in table.values() for t in ts} | {_FP32_DECODE_TILE})
    return [_config(t) for t in tiles]


def _device_limits(device_index: int):
    """(shared memory bytes per block, compute capability) of a GPU; None where Triton or torch
    cannot say (older or other drivers: nothing is pruned, the autotuner skips what fails)."""
    try:
        shared = int(triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"])
    except Exception:
        shared = None
    try:
        capability = tuple(torch.cuda.get_device_capability(device_index))
    except Exception:
        capability = None
    return shared, capability


def _pruner(pinned: bool):
    def prune(configs, named_args, **kwargs):
        """The configs of these inputs' head dim, dtype and query bucket that fit the GPU."""
        q = named_args["Q"]  # positional, so every Triton version passes it here (keywords only some)
        block_d = max(16, triton.next_power_of_2(q.shape[-1]))
        decode = q.shape[2] <= DECODE_MAX_TQ
        shared, capability = _device_limits(q.device.index) if q.is_cuda else (None, None)
        wanted = select_tiles(block_d, q.element_size(), decode, shared, capability, pinned)
        by_tile = {_tile(c): c for c in configs}
        return [by_tile[t] for t in wanted]

    return prune


def fitting(configs, block_d: int, elem_size: int, shared_memory: int | None):
    """The configs whose shared-memory estimate fits in `shared_memory` bytes (all of them when it
    is unknown; the smallest one when none fits)."""
    if shared_memory is None:
        return list(configs)
    need = lambda c: shared_memory_estimate(_tile(c), block_d, elem_size)  # noqa: E731
    return [c for c in configs if need(c) <= shared_memory] or [min(configs, key=need)]


@functools.lru_cache(maxsize=4)
def tuned_kernel(interpret: bool, pinned: bool = False):
    """`prism_attention_kernel` under triton.autotune: one config under the interpreter; `pinned`
    (PRISM_OPS_PIN_TILES=1): the first fitting tile per key, so nothing is timed (quick checks)."""
    if interpret:
        return triton.autotune([_config(_INTERPRETER_TILE)], key=AUTOTUNE_KEY)(prism_attention_kernel)
    return triton.autotune(_gpu_configs(), key=AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _pruner(pinned)})(
        prism_attention_kernel)


def pinned_tiles() -> bool:
    """PRISM_OPS_PIN_TILES=1: no autotuning, each key takes its first fitting tile."""
    return os.environ.get("PRISM_OPS_PIN_TILES", "0") not in ("", "0")


def prism_attention_triton(
    q, k, v, k_sum=None, v_sum=None, sum_counts=None, *,
    causal=False, scale=None, log_count_bias=True, return_lse=False, k_valid=None,
    interpret=False, block_m=None, block_n=None,
):
    """Launch `prism_attention_kernel`; same contract as `prism_ops.prism_attention`."""
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((B, H, Tq), dtype=torch.float32, device=q.device) if return_lse else out
    has_sum = k_sum is not None and k_sum.shape[2] > 0
    if has_sum:
        S = k_sum.shape[2]
        counts = sum_counts
        sc = (0, counts.stride(0)) if counts.dim() == 1 else counts.stride()
        sum_args = (k_sum, v_sum, counts)
        sum_strides = (*k_sum.stride(), *v_sum.stride(), *sc)
    else:
        S = 0
        sum_args = (k, v, q)  # unused pointers
        sum_strides = (0,) * 10
    if k_valid is not None:
        kv = k_valid.to(torch.int8)
        kv_strides = kv.stride()
    else:
        kv, kv_strides = q, (0, 0)
    BLOCK_D = max(16, triton.next_power_of_2(D))
    args = (
        q, k, v, *sum_args, kv, out, lse,
        scale * LOG2E,
        Tq, Tk, S, H, H // Hkv, triton.next_power_of_2(S) if S else 0, int(Tq <= DECODE_MAX_TQ),
        *q.stride(), *k.stride(), *v.stride(), *sum_strides, *kv_strides,
        *out.stride(), *(lse.stride() if return_lse else (0, 0, 0)),
    )
    flags = dict(
        D=D, BLOCK_D=BLOCK_D, CAUSAL=bool(causal), LOG_COUNT_BIAS=bool(log_count_bias), HAS_SUM=has_sum,
        HAS_KVALID=k_valid is not None, STORE_LSE=bool(return_lse),
        TF32X3=q.dtype == torch.float32, DOT_FP32=interpret and q.dtype == torch.bfloat16,
    )
    if block_m or block_n:  # fixed tiles (tests): no autotuning
        m, n, warps, stages = _INTERPRETER_TILE if interpret else candidate_tiles(
            BLOCK_D, q.element_size(), Tq <= DECODE_MAX_TQ)[0]
        m, n = block_m or m, block_n or n
        prism_attention_kernel[(triton.cdiv(Tq, m), B * H)](*args, **flags, BLOCK_M=m, BLOCK_N=n,
                                                             num_warps=warps, num_stages=stages)
    else:
        grid = lambda meta: (triton.cdiv(Tq, meta["BLOCK_M"]), B * H)  # noqa: E731
        tuned_kernel(interpret, pinned_tiles())[grid](*args, **flags)
    return (out, lse) if return_lse else out
