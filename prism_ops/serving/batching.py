"""Embedding requests run together: texts of different lengths laid out in one padded batch whose
every row is split over the ranks exactly as it would be alone.

    req = batch_request(rows, num_ranks, weights)   # rows: token ids per text (lists of int)
    groups = plan(rows, budget, aligned)            # which rows run in which forward
    dealt = deal(lengths, num_ranks)                # texts run whole: which rank runs which
    req = padded_request(rows)                      # those texts on one rank, right-padded
    groups = pack(rows, budget)                     # or packed end to end (`hf.model.packed_hidden`)

Alone, a text of n tokens gives rank p its tokens [a_p, b_p) = `partition_bounds(n, P, weights)`.
In the batch, rank p owns columns [o_p, o_p + w_p), with w_p the widest of the rows' chunks p;
row r's chunk p fills the first b_p - a_p of them (its absolute positions a_p..b_p - 1) and
padding the rest. Each rank's segments (fixed segment_size, counted from the start of its chunk,
padding left out of every mean and count) then hold the same tokens as alone, so every row's
answer equals its answer alone within fp32 error. Halo rows (the last tokens of a chunk) would
meet padding instead: with a halo only rows of one length share a forward (`aligned=False`).

Shapes: ids, positions `[B, N]` int64, mask `[B, N]` bool, bounds P (start, end) column pairs.
"""

from __future__ import annotations

import torch

from ..request_types import Request
from ..ops.partitioned_attention import partition_bounds


def batch_request(rows: list, num_ranks: int, weights=None, **kw) -> Request:
    """One Request for rows (each at least num_ranks tokens); kw: the Request's other fields.
    A single row is the plain request (no padding, default bounds)."""
    if len(rows) == 1:
        return Request(ids=torch.tensor(rows), **kw)
    per_row = [partition_bounds(len(r), num_ranks, weights) for r in rows]
    widths = [max(b[p][1] - b[p][0] for b in per_row) for p in range(num_ranks)]
    N = sum(widths)
    ids = torch.zeros(len(rows), N, dtype=torch.long)
    pos = torch.zeros(len(rows), N, dtype=torch.long)
    mask = torch.zeros(len(rows), N, dtype=torch.bool)
    for r, (row, bounds) in enumerate(zip(rows, per_row)):
        at = 0
        for p, (a, b) in enumerate(bounds):
            ids[r, at:at + b - a] = torch.tensor(row[a:b])
            pos[r, at:at + b - a] = torch.arange(a, b)
            mask[r, at:at + b - a] = True
            at += widths[p]
    starts = [sum(widths[:p]) for p in range(num_ranks)]
    return Request(ids=ids, mask=mask, positions=pos, bounds=[(s, s + w) for s, w in zip(starts, widths)], **kw)


def padded_request(rows: list, **kw) -> Request:
    """One Request for rows laid out whole, right-padded to the longest (a mask unless one row)."""
    if len(rows) == 1:
        return Request(ids=torch.tensor(rows), **kw)
    N = max(map(len, rows))
    ids = torch.zeros(len(rows), N, dtype=torch.long)
    mask = torch.zeros(len(rows), N, dtype=torch.bool)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = torch.tensor(row)
        mask[r, :len(row)] = True
    return Request(ids=ids, mask=mask, **kw)


def deal(lengths: list, num_ranks: int) -> list:
    """Texts run whole, shared out: per rank, the indices of its texts (some empty with fewer
    texts than ranks). Sorted shortest first and cut into runs of about equal tokens, one run per
    rank, so each rank's padded batch wastes little; rank 0, which also serves, gets the shortest."""
    n = len(lengths)
    order = sorted(range(n), key=lengths.__getitem__)
    P, total = min(num_ranks, n), max(sum(lengths), 1)
    out, before, prev = [[] for _ in range(num_ranks)], 0, -1
    for k, i in enumerate(order):
        p = (2 * before + lengths[i]) * P // (2 * total)  # the run its middle token falls in
        # runs in order with none skipped, and enough texts left for every run after this one
        p = max(min(p, prev + 1, P - 1), P - (n - k), prev, 0)
        out[p].append(i)
        before, prev = before + lengths[i], p
    return out


def pack(rows: list, budget: int) -> list:
    """Groups of row indices, each one packed forward (texts end to end in one sequence): in
    order, while the group's tokens stay within budget (a longer row runs alone)."""
    groups, cur, total = [], [], 0
    for i, r in enumerate(rows):
        if cur and total + len(r) > budget:
            groups.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += len(r)
    if cur:
        groups.append(cur)
    return groups


def plan(rows: list, budget: int, aligned: bool = True) -> list:
    """Groups of row indices, each one forward: in order, while the padded batch (rows x the
    longest) stays within budget tokens (a longer row runs alone); aligned=False: equal lengths only."""
    if not aligned:
        by_len, groups = {}, []
        for i, r in enumerate(rows):
            by_len.setdefault(len(r), []).append(i)
        for idx in by_len.values():
            groups += [[idx[j] for j in g] for g in plan([rows[i] for i in idx], budget)]
        return groups
    groups, cur, longest = [], [], 0
    for i, r in enumerate(rows):
        new_long = max(longest, len(r))
        if cur and (len(cur) + 1) * new_long > budget:
            groups.append(cur)
            cur, new_long = [], len(r)
        cur.append(i)
        longest = new_long
    if cur:
        groups.append(cur)
    return groups
