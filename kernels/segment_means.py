"""Triton kernel for `prism_ops.segment_means`.

One program per (ROWS consecutive summary rows, batch*head): for each of its rows it streams the
row's tokens of x `[B, H, T, D]` in tiles of BLOCK_T, sums them in fp32 (padding masked out by
`valid`), divides by the count and writes the mean. x is read exactly once. Counts are written
by the head-0 programs.

ROWS and the warp count are picked by `triton.autotune` (`tuned_kernel`), keyed on the head dim,
a power-of-two bucket of the (clamped) segment size and whether there is padding; BLOCK_T
follows from the segment size and head dim. Under Triton's interpreter there is
one config (ROWS=2, so the multi-row path is what the tests run), and nothing is timed.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


@triton.jit
def segment_means_kernel(
    x_ptr, valid_ptr, means_ptr, counts_ptr,
    T, H, S, segment_size, sink_tokens, SEG_BUCKET,  # SEG_BUCKET: autotune key only
    stride_xb, stride_xh, stride_xt, stride_xd,
    stride_vb, stride_vt,
    stride_mb, stride_mh, stride_ms, stride_md,
    stride_cb, stride_cs,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, HAS_VALID: tl.constexpr,
    ROWS: tl.constexpr,  # last: set by the autotuner's config
):
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    x_base = x_ptr + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
    for r in tl.static_range(ROWS):
        row = tl.program_id(0) * ROWS + r
        # Rows [0, sink_tokens) are single tokens; then segments of segment_size from sink_tokens on.
        is_sink = row < sink_tokens
        t0 = tl.where(is_sink, row, sink_tokens + (row - sink_tokens) * segment_size)
        t1 = tl.minimum(tl.where(is_sink, row + 1, t0 + segment_size), T)  # row >= S: t1 <= t0, no tokens
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        count = tl.zeros([BLOCK_T], dtype=tl.int32)
        for start in range(t0, t1, BLOCK_T):
            offs_t = start + tl.arange(0, BLOCK_T)
            mask_t = offs_t < t1
            if HAS_VALID:
                keep = tl.load(valid_ptr + b * stride_vb + offs_t * stride_vt, mask=mask_t, other=0)
                mask_t = mask_t & (keep != 0)
            tile = tl.load(
                x_base + offs_t[:, None].to(tl.int64) * stride_xt + offs_d[None, :] * stride_xd,
                mask=mask_t[:, None] & mask_d[None, :], other=0.0,
            )
            acc += tl.sum(tile.to(tl.float32), axis=0)
            count += mask_t.to(tl.int32)
        n = tl.sum(count, axis=0)
        mean = acc / tl.maximum(n, 1).to(tl.float32)  # count-0 rows stay zero
        m_ptrs = means_ptr + b * stride_mb + h * stride_mh + row * stride_ms + offs_d * stride_md
        in_s = (tl.zeros([BLOCK_D], dtype=tl.int32) + row) < S  # (BLOCK_D,): a row past S is not stored
        tl.store(m_ptrs, mean.to(means_ptr.dtype.element_ty), mask=mask_d & in_s)
        if HAS_VALID:
            tl.store(counts_ptr + b * stride_cb + row * stride_cs, n, mask=(h == 0) & (row < S))


# The segment size enters as a power-of-two bucket of the op's clamped size (a chunk shorter than
# segment_size is one segment of its length): growing prefill chunks retune a few times, not per
# call. The dtype joins the key by itself (Triton adds every tensor argument's dtype).
AUTOTUNE_KEY = ["D", "SEG_BUCKET", "HAS_VALID"]
SEG_BUCKET_MAX = 1024
_GPU_CONFIGS = [(rows, warps) for rows in (1, 4, 8) for warps in (2, 4, 8)]  # (ROWS, num_warps)
_INTERPRETER_CONFIG = (2, 1)


def seg_bucket(segment_size: int) -> int:
    """The autotune key's segment size: next power of two, at most SEG_BUCKET_MAX."""
    return min(triton.next_power_of_2(segment_size), SEG_BUCKET_MAX)


def block_t(segment_size: int, T: int, block_d: int) -> int:
    """Tokens per tile: the whole segment, up to ~4K elements (keeps registers in check)."""
    return max(1, min(triton.next_power_of_2(min(segment_size, T)), max(1, 4096 // block_d)))


def _config(rows, warps):
    return triton.Config({"ROWS": rows}, num_warps=warps, num_stages=1)


@functools.lru_cache(maxsize=2)
def tuned_kernel(interpret: bool):
    """`segment_means_kernel` under triton.autotune: one config under the interpreter."""
    configs = [_config(*_INTERPRETER_CONFIG)] if interpret else [_config(*c) for c in _GPU_CONFIGS]
    return triton.autotune(configs, key=AUTOTUNE_KEY)(segment_means_kernel)


def segment_means_triton(x, segment_size, num_rows, lengths, valid=None, sink_tokens=0, *, interpret=False):
    """Launch `segment_means_kernel`; same contract as `prism_ops.segment_means`.

    The caller (the ops layer) passes the row count S and, without `valid`, the tokens per row
    `lengths` `[S]` int32, so this file needs nothing of prism_ops.
    """
    B, H, T, D = x.shape
    S = num_rows
    sinks = min(sink_tokens, T)
    means = torch.empty((B, H, S, D), dtype=x.dtype, device=x.device)
    if valid is None:
        counts = lengths
        valid_arg, counts_arg, sv, sc = means, means, (0, 0), (0, 0)  # unused pointers
    else:
        valid_arg = valid.to(torch.int8)
        counts = torch.empty((B, S), dtype=torch.int32, device=x.device)
        counts_arg, sv, sc = counts, valid_arg.stride(), counts.stride()
    BLOCK_D = max(16, triton.next_power_of_2(D))
    BLOCK_T = block_t(segment_size, T, BLOCK_D)
    grid = lambda meta: (triton.cdiv(S, meta["ROWS"]), B * H)  # noqa: E731
    tuned_kernel(interpret)[grid](
        x, valid_arg, means, counts_arg,
        T, H, S, segment_size, sinks, seg_bucket(segment_size),
        *x.stride(), *sv, *means.stride(), *sc,
        D=D, BLOCK_D=BLOCK_D, BLOCK_T=BLOCK_T, HAS_VALID=valid is not None,
    )
    return means, counts
