"""token_clusters: group a partition's tokens by key similarity instead of by position (a lever).

Plain PRISM averages consecutive tokens. A mean key stands for its tokens well only when their
keys are alike: the softmax weight exp(q.k) of each member is then close to exp(q.mean(k)), and
when the keys are equal the values may differ freely and the summary is still exact. So a rank
can cluster its tokens by key (a few Lloyd iterations, started from the positional segments) and
send cluster means with counts: the same rows and bytes, plus one count per row.

Shapes: keys `[B, n, F]` (F = all KV heads' key channels of a token), keep `[B, n]` bool;
assign `[B, n]` int64 in [0, S). cluster_means takes x `[B, H, n, C]` and returns means
`[B, H, S, C]` and int32 counts `[B, S]`.
"""

from __future__ import annotations

import torch

from .._checks import check_int

# Lloyd's iterations from the positional start settle in a handful (prism-eval uses 6); the cap
# keeps a mistyped count (say 10**9) a clear error instead of a run that never ends.
MAX_CLUSTER_ITERS = 100


def check_cluster_iters(iters) -> int:
    """0 (positional segments) or a number of Lloyd iterations, at most MAX_CLUSTER_ITERS."""
    return check_int(iters, "cluster_iters", 0, MAX_CLUSTER_ITERS, " (0 = positional segments)")


def token_clusters(keys: torch.Tensor, num_clusters: int, keep: torch.Tensor, iters: int) -> torch.Tensor:
    """Cluster assignment `[B, n]` of each token: Lloyd's k-means from the positional segments.

    Tokens with keep False are assigned but ignored by the centroids (cluster_means drops them).
    iters 0 returns the positional segments: cluster s = tokens [s * per_cluster, (s + 1) * per_cluster),
    per_cluster = ceil(n / S).
    """
    B, n, F = keys.shape
    S = num_clusters
    per_cluster = -(-n // S)
    assign = (torch.arange(n, device=keys.device) // per_cluster).clamp(max=S - 1).expand(B, n).contiguous()
    x = keys if keys.dtype == torch.float64 else keys.float()  # fp64 keys cluster in fp64
    for _ in range(iters):
        sums, counts = _cluster_sums(x[:, None], assign, S, keep)
        centroids = sums[:, 0] / counts.clamp(min=1)[..., None]
        _reseed_empty(x, keep, assign, centroids, counts)
        dist = torch.cdist(x, centroids)  # [B, n, S]
        # A cluster still empty (fewer kept tokens than clusters) takes no token.
        dist = dist.masked_fill((counts == 0)[:, None, :], float("inf"))
        assign = dist.argmin(-1)
    return assign


def _reseed_empty(x, keep, assign, centroids, counts):
    """Give each empty cluster the kept token farthest from its own centroid (in place).

    Without this, segments that average to the same point (e.g. keys alternating a, b, a, b)
    start with equal centroids, every token ties to the first, and the rest stay empty.
    """
    empty = (counts == 0) & (keep.sum(1, keepdim=True) >= counts.shape[1])
    if not empty.any():
        return
    own = (x - centroids.gather(1, assign[..., None].expand_as(x))).norm(dim=-1)
    own = own.masked_fill(~keep, -1.0)
    for b in torch.nonzero(empty.any(1)).flatten().tolist():
        slots = torch.nonzero(empty[b]).flatten()
        far = own[b].topk(len(slots)).indices
        centroids[b, slots] = x[b, far]
        counts[b, slots] = 1  # seeded: it may take tokens now


def _cluster_sums(x, assign, S, keep):
    B, H, n, C = x.shape
    w = keep.to(x.dtype)
    idx = assign[:, None, :, None].expand(B, H, n, C)
    sums = torch.zeros(B, H, S, C, dtype=x.dtype, device=x.device).scatter_add_(2, idx, x * w[:, None, :, None])
    counts = torch.zeros(B, S, dtype=x.dtype, device=x.device).scatter_add_(1, assign, w)
    return sums, counts


def cluster_means(x: torch.Tensor, assign: torch.Tensor, num_clusters: int, keep: torch.Tensor):
    """Means `[B, H, S, C]` of x's kept tokens per cluster, and int32 counts `[B, S]`."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    sums, counts = _cluster_sums(x.to(acc), assign, num_clusters, keep)
    means = sums / counts.clamp(min=1)[:, None, :, None]
    return means.to(x.dtype), counts.to(torch.int32)
