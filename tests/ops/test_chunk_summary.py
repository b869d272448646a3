"""chunk_summary: what one rank sends per layer (exact sink/halo rows, segment means) and which
rows a receiver attends to, checked by hand and against segment_means."""

import pytest
import torch

from prism_ops.ops.chunk_summary import chunk_layout, summary_count, summary_rows, visible_chunks, visible_rows
from prism_ops.ops.segment_means import segment_means

# 20 tokens on 3 ranks: [0, 7), [7, 14), [14, 20).
BOUNDS = [(0, 7), (7, 14), (14, 20)]


@pytest.mark.parametrize("sinks,halo,causal,want", [
    (0, 0, False, [(0, 7), (7, 14), (14, 20)]),          # the paper: everything summarised
    (2, 0, False, [(2, 7), (7, 14), (14, 20)]),          # sinks: the first 2 tokens exact
    (0, 1, False, [(0, 6), (8, 13), (15, 20)]),          # halo: 1 token exact at each inner boundary
    (0, 1, True, [(0, 6), (7, 13), (14, 20)]),           # causal: only towards the next rank
    (9, 1, False, [(7, 7), (9, 13), (15, 20)]),          # sinks past the first chunk: all of it exact
])
def test_chunk_layout_by_hand(sinks, halo, causal, want):
    got = [chunk_layout(BOUNDS, c, sink_tokens=sinks, halo=halo, causal=causal) for c in range(3)]
    assert got == want


def test_summary_count_by_hand():
    opts = dict(sink_tokens=2, halo=1, causal=False)
    # Rank 0: 2 sinks + 1 halo exact, 4 tokens in segments of 3 -> 2 rows; rank 1: 2 exact, 5 -> 2.
    assert [summary_count(BOUNDS, c, 3, **opts) for c in range(3)] == [(3, 2), (2, 2), (1, 2)]
    assert summary_count(BOUNDS, 0, 1, sink_tokens=0, halo=0, causal=False) == (0, 7)  # segment size 1


def test_summary_rows_are_exact_rows_plus_segment_means():
    x = torch.randn(2, 3, 7, 4, dtype=torch.float64)
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, 5] = False
    exact, exact_counts, means, counts = summary_rows(x, keep, 2, 6, 3)  # exact [0, 2) and [6, 7)
    torch.testing.assert_close(exact, x[:, :, [0, 1, 6]], rtol=0, atol=0)
    assert exact_counts.tolist() == [[1, 1, 1], [1, 1, 1]]
    ref_means, ref_counts = segment_means(x[:, :, 2:6], 3, valid=keep[:, 2:6])
    torch.testing.assert_close(means, ref_means, rtol=0, atol=0)
    assert torch.equal(counts, ref_counts) and counts.tolist() == [[3, 1], [3, 0]]  # token 5 of batch 1 is padding: count 0


def test_visible_chunks_and_rows():
    assert visible_chunks(1, 3, causal=False) == [0, 2]
    assert visible_chunks(1, 3, causal=True) == [0]
    assert visible_chunks(0, 3, causal=True) == []
    rows = [(torch.full((1, 2, n, 8), float(c)), torch.full((1, n), c + 1, dtype=torch.int32))
            for c, n in enumerate((2, 0, 3))]
    k_sum, v_sum, counts = visible_rows(rows, 1, causal=False)  # chunk 1 sends no rows: skipped
    assert k_sum.shape == (1, 2, 5, 4) and v_sum.shape == (1, 2, 5, 4)
    assert counts.tolist() == [[1, 1, 3, 3, 3]] and k_sum[0, 0, :, 0].tolist() == [0, 0, 2, 2, 2]
    assert visible_rows(rows, 0, causal=True) == (None, None, None)
