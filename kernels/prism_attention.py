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

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _dot(a, b, IEEE: tl.constexpr, DOT_FP32: tl.constexpr):
    # DOT_FP32: the interpreter's bf16 dot is wrong, so it upcasts (same rounding of inputs).
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    elif IEEE:
        return tl.dot(a, b, input_precision="ieee")  # fp32 input: no silent TF32
    else:
        return tl.dot(a, b)


@triton.jit
def _softmax_step(acc, l_i, m_i, s, v, IEEE: tl.constexpr, DOT_FP32: tl.constexpr):
    """Fold one block of logits s [M, N] (log2 units, -inf = masked) and values v [N, D] in."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen nothing yet
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE, DOT_FP32)
    return acc, l_i, m_new


@triton.jit
def prism_attention_kernel(
    Q, K, V, KS, VS, C, KVALID, Out, Lse,
    qk_scale,  # scale * log2(e)
    Tq, Tk, S, H, GROUP, S_BUCKET,  # S_BUCKET: autotune key only
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
    HAS_KVALID: tl.constexpr, STORE_LSE: tl.constexpr, IEEE: tl.constexpr, DOT_FP32: tl.constexpr,
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
        s = _dot(q, kt, IEEE, DOT_FP32) * qk_scale
        if HAS_KVALID:
            keep = tl.load(KVALID + b * skvb + cols * skvt) != 0
            s = tl.where(keep[None, :], s, float("-inf"))
        acc, l_i, m_i = _softmax_step(acc, l_i, m_i, s, v, IEEE, DOT_FP32)

    # 2. the rest of the local block up to the diagonal: bounds and causal mask.
    for start_n in range(full_end, hi, BLOCK_N):
        cols = start_n + offs_n
        in_k = cols < Tk
        kt = tl.load(k_base + cols[None, :] * skt + offs_d[:, None] * skd,
                     mask=in_k[None, :] & mask_d[:, None], other=0.0)
        v = tl.load(v_base + cols[:, None] * svt + offs_d[None, :] * svd,
                    mask=in_k[:, None] & mask_d[None, :], other=0.0)
        s = _dot(q, kt, IEEE, DOT_FP32) * qk_scale
        keep = in_k[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
        if HAS_KVALID:
            keep = keep & (tl.load(KVALID + b * skvb + cols * skvt, mask=in_k, other=0) != 0)[None, :]
        s = tl.where(keep, s, float("-inf"))
        acc, l_i, m_i = _softmax_step(acc, l_i, m_i, s, v, IEEE, DOT_FP32)

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
            s = _dot(q, kt, IEEE, DOT_FP32) * qk_scale + bias[None, :]
            acc, l_i, m_i = _softmax_step(acc, l_i, m_i, s, v, IEEE, DOT_FP32)

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


# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried per padded head dim on a GPU.
_GPU_TILES = {
    64: [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4), (64, 32, 2, 3)],
    128: [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (128, 128, 8, 2), (64, 32, 4, 2)],
    256: [(64, 32, 4, 2), (64, 64, 8, 2), (32, 32, 4, 2), (128, 32, 8, 2)],
}
_INTERPRETER_TILE = (16, 16, 1, 1)  # small tiles: small test shapes still cross several blocks
AUTOTUNE_KEY = ["D", "CAUSAL", "HAS_SUM", "S_BUCKET"]


def _config(tile):
    m, n, warps, stages = tile
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages)


def _gpu_configs():
    tiles = sorted({t for ts in _GPU_TILES.values() for t in ts})
    return [_config(t) for t in tiles]


def _shared_memory(device_index: int) -> int | None:
    """Bytes of shared memory one block may use on this GPU, or None if Triton cannot say."""
    try:
        return int(triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"])
    except Exception:  # older or other drivers: keep every config, the autotuner skips what fails
        return None


def _prune(configs, named_args, **kwargs):
    """The configs of this head dim that fit the GPU's shared memory (at least one)."""
    q = named_args["Q"]  # positional, so every Triton version passes it here (keywords only some)
    block_d = max(16, triton.next_power_of_2(q.shape[-1]))
    wanted = set(_GPU_TILES[min(max(block_d, 64), 256)])
    mine = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in wanted]
    return fitting(mine, block_d, q.element_size(), _shared_memory(q.device.index) if q.is_cuda else None)


def fitting(configs, block_d: int, elem_size: int, shared_memory: int | None):
    """The configs whose q tile and num_stages K and V tiles fit in `shared_memory` bytes (all of
    them when it is unknown; the smallest one when none fits)."""
    if shared_memory is None:
        return list(configs)

    def need(c):
        return elem_size * block_d * (c.kwargs["BLOCK_M"] + 2 * c.kwargs["BLOCK_N"] * c.num_stages)

    return [c for c in configs if need(c) <= shared_memory] or [min(configs, key=need)]


@functools.lru_cache(maxsize=2)
def tuned_kernel(interpret: bool):
    """`prism_attention_kernel` under triton.autotune: one config under the interpreter."""
    if interpret:
        return triton.autotune([_config(_INTERPRETER_TILE)], key=AUTOTUNE_KEY)(prism_attention_kernel)
    return triton.autotune(_gpu_configs(), key=AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune})(
        prism_attention_kernel)


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
        Tq, Tk, S, H, H // Hkv, triton.next_power_of_2(S) if S else 0,
        *q.stride(), *k.stride(), *v.stride(), *sum_strides, *kv_strides,
        *out.stride(), *(lse.stride() if return_lse else (0, 0, 0)),
    )
    flags = dict(
        D=D, BLOCK_D=BLOCK_D, CAUSAL=bool(causal), LOG_COUNT_BIAS=bool(log_count_bias), HAS_SUM=has_sum,
        HAS_KVALID=k_valid is not None, STORE_LSE=bool(return_lse),
        IEEE=q.dtype == torch.float32, DOT_FP32=interpret and q.dtype == torch.bfloat16,
    )
    if block_m or block_n:  # fixed tiles (tests): no autotuning
        m, n, warps, stages = _INTERPRETER_TILE if interpret else _GPU_TILES[min(max(BLOCK_D, 64), 256)][0]
        m, n = block_m or m, block_n or n
        prism_attention_kernel[(triton.cdiv(Tq, m), B * H)](*args, **flags, BLOCK_M=m, BLOCK_N=n,
                                                             num_warps=warps, num_stages=stages)
    else:
        grid = lambda meta: (triton.cdiv(Tq, meta["BLOCK_M"]), B * H)  # noqa: E731
        tuned_kernel(interpret)[grid](*args, **flags)
    return (out, lse) if return_lse else out
