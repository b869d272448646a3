"""Segment means: the per-partition summary that PRISM ranks exchange.

x `[B, H, T, D]` is cut along T into `sink_tokens` single-token rows followed by consecutive
segments of `segment_size` tokens (the last one may be shorter). Each summary row is the mean
of its tokens, with the count of tokens it stands for. Padding (`valid` False) is left out of
means and counts; a row whose tokens are all padding has count 0 and a zero mean.

Returns means `[B, H, S, D]` in x's dtype (accumulated in fp32 for fp16/bf16 input) and
counts int32 `[B, S]`, or `[S]` when `valid` is None, with
S = min(sink_tokens, T) + ceil((T - min(sink_tokens, T)) / segment_size). A segment_size larger
than the T - sink_tokens tokens it cuts is one segment of them: same result, memory and time as
segment_size = T - sink_tokens, however large the number.

It is the `torch.library` custom op `prism_ops::segment_means` (with a fake implementation, so
`torch.compile(fullgraph=True)` traces it without a graph break) and differentiable: its
backward spreads each mean's gradient over its tokens, divided by the count.
"""

from __future__ import annotations

import torch

from .._backend import check_backend, interpreting, resolve_backend
from .._checks import check_float, check_int, check_mask, check_tensor


def num_summary_rows(T: int, segment_size: int, sink_tokens: int = 0) -> int:
    """S, the number of rows segment_means returns for T tokens."""
    if not isinstance(T, torch.SymInt):  # traced shapes are symbolic: nothing to check
        check_int(T, "T", 0)
    check_int(segment_size, "segment_size", 1)
    check_int(sink_tokens, "sink_tokens", 0)
    sinks = min(sink_tokens, T)
    return sinks + -(-(T - sinks) // segment_size)  # integer ceil: also exact for symbolic T


def segment_lengths(T: int, segment_size: int, sink_tokens: int, device=None) -> torch.Tensor:
    """Tokens per summary row when there is no padding: int32 `[S]`."""
    sinks = min(sink_tokens, T)
    n_seg = -(-(T - sinks) // segment_size)
    lengths = torch.full((sinks + n_seg,), segment_size, dtype=torch.int32, device=device)
    lengths[:sinks] = 1
    if n_seg:
        lengths[-1] = (T - sinks) - (n_seg - 1) * segment_size
    return lengths


def segment_means_torch(x, segment_size, valid=None, sink_tokens=0):
    """Plain-torch segment means (the CPU fallback); same contract as `segment_means`."""
    B, H, T, D = x.shape
    sinks = min(sink_tokens, T)
    n_seg = -(-(T - sinks) // segment_size)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(acc_dtype)
    if valid is not None:
        xf = xf * valid[:, None, :, None].to(acc_dtype)  # padding contributes nothing
    pad = n_seg * segment_size - (T - sinks)
    rest = torch.nn.functional.pad(xf[:, :, sinks:], (0, 0, 0, pad))  # (B, H, n_seg*segment_size, D)
    sums = torch.cat([xf[:, :, :sinks], rest.view(B, H, n_seg, segment_size, D).sum(3)], 2)
    if valid is None:
        counts = segment_lengths(T, segment_size, sink_tokens, device=x.device)  # (S,)
        denom = counts.to(acc_dtype)[None, None, :, None]
    else:
        v = valid.to(torch.int32)
        v_rest = torch.nn.functional.pad(v[:, sinks:], (0, pad))
        counts = torch.cat([v[:, :sinks], v_rest.view(B, n_seg, segment_size).sum(2)], 1)
        counts = counts.to(torch.int32)  # (B, S)
        denom = counts.to(acc_dtype)[:, None, :, None]
    means = sums / denom.clamp(min=1)  # count-0 rows stay exactly zero
    return means.to(x.dtype), counts


def segment_means(x, segment_size, *, valid=None, sink_tokens=0, backend="auto"):
    """Segment means of x along T, with the count each row stands for.

    Args:
        x: `[B, H, T, D]` keys or values (after projection and positional encoding).
        segment_size: tokens per segment (the compression rate), >= 1.
        valid: optional bool `[B, T]`; False marks padding, left out of means and counts.
        sink_tokens: the first `sink_tokens` tokens stay as their own rows (count 1).
        backend: "auto", "torch" or "triton".

    Returns:
        (means `[B, H, S, D]` in x.dtype, counts int32 `[B, S]` or `[S]` without `valid`).

    The custom op `torch.ops.prism_ops.segment_means`: traced by torch.compile without a graph
    break; differentiable in x on both backends (plain-torch backward).

    Example:
        >>> x = torch.arange(5.0).view(1, 1, 5, 1)
        >>> means, counts = segment_means(x, 2)
        >>> means.flatten().tolist(), counts.tolist()
        ([0.5, 2.5, 4.0], [2, 2, 1])
    """
    check_tensor(x, "x", "[B, H, T, D]", 4)
    check_float(x, "x")
    check_int(segment_size, "segment_size", 1)
    check_int(sink_tokens, "sink_tokens", 0)
    B, H, T, D = x.shape
    if valid is not None:
        check_mask(valid, "valid", B, T, x.device)
    check_backend(backend)
    return tuple(_segment_means_op(x, segment_size, valid, sink_tokens, backend))


@torch.library.custom_op(
    "prism_ops::segment_means", mutates_args=(),
    schema="(Tensor x, int segment_size, Tensor? valid, int sink_tokens, str backend) -> (Tensor, Tensor)",
)
def _segment_means_op(x, segment_size, valid, sink_tokens, backend):
    """The op behind `segment_means` (inputs already checked): backend choice and the computation."""
    B, H, T, D = x.shape
    # A segment longer than the tokens left after the sinks is one segment of those tokens: the
    # same rows, without padding (or a kernel loop) sized by the requested segment.
    segment_size = min(segment_size, max(1, T - min(sink_tokens, T)))
    unsupported = None
    if x.dtype == torch.float64:
        unsupported = "float64 input"
    elif T == 0 or x.numel() == 0:
        unsupported = "empty input"
    if resolve_backend(backend, x.device, unsupported) == "triton":
        from prism_ops.kernels.segment_means import segment_means_triton

        lengths = None if valid is not None else segment_lengths(T, segment_size, sink_tokens, device=x.device)
        return segment_means_triton(x, segment_size, num_summary_rows(T, segment_size, sink_tokens), lengths, valid,
                                    sink_tokens, interpret=interpreting())
    means, counts = segment_means_torch(x, segment_size, valid, sink_tokens)
    return means.contiguous(), counts


@_segment_means_op.register_fake
def _(x, segment_size, valid, sink_tokens, backend):
    B, H, T, D = x.shape
    S = num_summary_rows(T, segment_size, sink_tokens)
    counts_shape = (S,) if valid is None else (B, S)
    return x.new_empty((B, H, S, D)), x.new_empty(counts_shape, dtype=torch.int32)


def _setup_backward(ctx, inputs, output):
    x, segment_size, valid, sink_tokens, backend = inputs
    ctx.segment_size, ctx.sink_tokens, ctx.T, ctx.dtype = segment_size, sink_tokens, x.shape[2], x.dtype
    ctx.save_for_backward(valid, output[1])


def _backward(ctx, grad_means, grad_counts):
    """dx[t] = dmeans[row(t)] / count(row(t)) for a real token t, 0 for padding."""
    valid, counts = ctx.saved_tensors
    T, sinks = ctx.T, min(ctx.sink_tokens, ctx.T)
    acc = torch.float64 if ctx.dtype == torch.float64 else torch.float32
    t = torch.arange(T, device=grad_means.device)
    row = torch.where(t < sinks, t, sinks + (t - sinks).clamp(min=0) // ctx.segment_size)  # (T,)
    c = counts.to(acc).clamp(min=1)
    c = c[None, None, :, None] if c.dim() == 1 else c[:, None, :, None]  # (B|1, 1, S, 1)
    grad_x = (grad_means.to(acc) / c)[:, :, row]  # (B, H, T, D)
    if valid is not None:
        grad_x = grad_x * valid[:, None, :, None].to(acc)
    return grad_x.to(ctx.dtype), None, None, None, None


_segment_means_op.register_autograd(_backward, setup_context=_setup_backward)
