"""token_clusters and cluster_means: key clusters as summary rows (Lloyd's k-means from the segments)."""

import torch

from prism_ops.ops.segment_means import segment_means
from prism_ops.ops.token_clusters import cluster_means, token_clusters


def test_token_clusters_without_iterations_are_the_segments():
    x = torch.randn(2, 3, 11, 8, dtype=torch.float64)
    keep = torch.rand(2, 11) > 0.3
    assign = token_clusters(x.transpose(1, 2).reshape(2, 11, -1), 3, keep, iters=0)
    means, counts = cluster_means(x, assign, 3, keep)
    ref_means, ref_counts = segment_means(x, 4, valid=keep)
    torch.testing.assert_close(means, ref_means, rtol=0, atol=1e-12)
    assert torch.equal(counts, ref_counts)


def test_token_clusters_separate_two_key_groups_and_keep_every_cluster_nonempty():
    # Keys alternate between two far-apart points: 2 clusters must split them exactly.
    B, n = 1, 12
    a, b = torch.zeros(8), torch.full((8,), 10.0)
    keys = torch.stack([a if t % 2 == 0 else b for t in range(n)])[None]  # (1, 12, 8)
    keep = torch.ones(B, n, dtype=torch.bool)
    assign = token_clusters(keys, 2, keep, iters=3)
    assert len(set(assign[0, ::2].tolist())) == 1 and len(set(assign[0, 1::2].tolist())) == 1
    assert assign[0, 0] != assign[0, 1]
    x = keys[:, None]  # (1, 1, 12, 8)
    means, counts = cluster_means(x, assign, 2, keep)
    assert sorted(counts[0].tolist()) == [6, 6]
    assert {float(means[0, 0, s, 0]) for s in range(2)} == {0.0, 10.0}
