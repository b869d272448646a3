"""Float64 oracles written independently of prism_ops: explicit loops over tokens and segments.

They share no masking or segmenting code with the implementation, so a bug in one is not
silently repeated in the other. Small shapes only (Python loops).
"""

from __future__ import annotations

import math

import torch


def oracle_segment_means(x, segment_size, valid=None, sink_tokens=0):
    """Means `[B, H, S, D]` fp64 and counts `[B, S]` by walking the rows one by one."""
    B, H, T, D = x.shape
    x = x.double()
    starts = [(t, t + 1) for t in range(min(sink_tokens, T))]
    t = len(starts)
    while t < T:
        starts.append((t, min(t + segment_size, T)))
        t += segment_size
    means = torch.zeros(B, H, len(starts), D, dtype=torch.float64)
    counts = torch.zeros(B, len(starts), dtype=torch.int64)
    for b in range(B):
        for s, (t0, t1) in enumerate(starts):
            toks = [t for t in range(t0, t1) if valid is None or bool(valid[b, t])]
            counts[b, s] = len(toks)
            if toks:
                means[b, :, s] = x[b, :, toks].mean(1)
    return means, counts


def oracle_attention(q, keys, vals, logit_bias, scale=None):
    """softmax(q·keysᵀ·scale + logit_bias) · vals per (b, h), fp64; rows with no finite logit -> 0.

    q `[B, H, Tq, D]`; keys, vals `[B, Hkv, N, D]`; logit_bias `[B, Tq, N]` (-inf = masked).
    Returns out `[B, H, Tq, D]` and lse `[B, H, Tq]`.
    """
    B, H, Tq, D = q.shape
    G = H // keys.shape[1]
    scale = 1 / math.sqrt(D) if scale is None else scale
    out = torch.zeros(B, H, Tq, vals.shape[-1], dtype=torch.float64)
    lse = torch.full((B, H, Tq), -math.inf, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            s = q[b, h].double() @ keys[b, h // G].double().T * scale + logit_bias[b]
            for i in range(Tq):
                if torch.isfinite(s[i]).any():
                    lse[b, h, i] = torch.logsumexp(s[i], 0)
                    out[b, h, i] = torch.softmax(s[i], 0) @ vals[b, h // G].double()
    return out, lse


def oracle_prism_attention(q, k, v, k_sum=None, v_sum=None, counts=None, causal=False,
                           scale=None, log_count_bias=True, k_valid=None):
    """PRISM attention by building every logit's bias entry by hand."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    S = 0 if k_sum is None else k_sum.shape[2]
    bias = torch.zeros(B, Tq, Tk + S, dtype=torch.float64)
    for b in range(B):
        for i in range(Tq):
            for j in range(Tk):
                if (causal and j > i + Tk - Tq) or (k_valid is not None and not k_valid[b, j]):
                    bias[b, i, j] = -math.inf
            for s in range(S):
                m = float(counts[b, s] if counts.dim() == 2 else counts[s])
                bias[b, i, Tk + s] = -math.inf if m == 0 else (math.log(m) if log_count_bias else 0.0)
    keys = k if S == 0 else torch.cat([k.double(), k_sum.double()], 2)
    vals = v if S == 0 else torch.cat([v.double(), v_sum.double()], 2)
    return oracle_attention(q, keys, vals, bias, scale)


def oracle_heavy_picks(q, k, start, end, a, b, fraction, causal, valid=None):
    """The tokens of [a, b) (absolute positions) chunk [start, end) sends as rows of their own
    under heavy_fraction, batch row 0: the ceil(fraction * (b - a)) that its scoring queries (its
    last 64 when causal; else all, or the first and last 64) pay the most softmax weight over
    the chunk's own keys, summed over heads; padding never scores."""
    H, D, G = q.shape[1], q.shape[3], q.shape[1] // k.shape[1]
    n = end - start
    if causal:
        queries = list(range(max(start, end - 64), end))
    elif n <= 128:
        queries = list(range(start, end))
    else:
        queries = list(range(start, start + 64)) + list(range(end - 64, end))
    real = [j for j in range(start, end) if valid is None or bool(valid[0, j])]
    score = {j: 0.0 for j in real}
    for h in range(H):
        for i in queries:
            if valid is not None and not valid[0, i]:
                continue
            seen = [j for j in real if not causal or j <= i]
            logits = [float(q[0, h, i].double() @ k[0, h // G, j].double()) / math.sqrt(D) for j in seen]
            top = max(logits)
            weights = [math.exp(x - top) for x in logits]
            for j, w in zip(seen, weights):
                score[j] += w / sum(weights)
    count = min(b - a, math.ceil((b - a) * fraction))
    ranked = sorted((j for j in range(a, b) if j in score), key=lambda j: -score[j])
    return set(ranked[:count])


def oracle_partitioned_attention(q, k, v, bounds, segment_size, causal=False, scale=None,
                                 log_count_bias=True, sink_tokens=0, halo=0, valid=None, heavy=()):
    """PRISM over the given chunk bounds, query chunk by query chunk, key token by key token.

    For chunk p every key token j is exactly one of: exact (own chunk, a sink, or one of the
    `halo` tokens at either end of its chunk: the last ones only, and none of the last chunk,
    when causal; none at the outer ends), part of a segment of its chunk's grid (which starts
    after those exact tokens), or invisible (padding, or in a later chunk when causal).
    `heavy`: tokens of other chunks also sent exact (heavy_fraction's picks, batch of one).
    """
    B, H, T, D = q.shape
    P = len(bounds)
    outs = []
    for p, (start, end) in enumerate(bounds):
        groups = {}  # key -> list of token indices sharing one summary row
        order = []
        for c, (c0, c1) in enumerate(bounds):
            if causal and c > p:
                continue
            head = [j for j in range(c0, c1) if j < sink_tokens or (not causal and c > 0 and j < c0 + halo)]
            tail = [j for j in range(c0, c1) if c < P - 1 and j >= c1 - halo and j not in head]
            grid0 = c0 + len(head)
            for j in range(c0, c1):
                own = c == p
                is_exact = own or j in head or j in tail or j in heavy
                key = ("exact", j) if is_exact else ("seg", c, (j - grid0) // segment_size)
                if key not in groups:
                    groups[key] = []
                    order.append(key)
                groups[key].append(j)
        N = len(order)
        keys = torch.zeros(B, k.shape[1], N, D, dtype=torch.float64)
        vals = torch.zeros(B, k.shape[1], N, D, dtype=torch.float64)
        bias = torch.zeros(B, end - start, N, dtype=torch.float64)
        for n, key in enumerate(order):
            for b in range(B):
                toks = [j for j in groups[key] if valid is None or bool(valid[b, j])]
                if not toks:
                    bias[b, :, n] = -math.inf
                    continue
                keys[b, :, n] = k[b, :, toks].double().mean(1)
                vals[b, :, n] = v[b, :, toks].double().mean(1)
                if key[0] == "exact" and start <= key[1] < end:
                    if causal:  # own token: ordinary causal mask
                        for i in range(start, end):
                            if key[1] > i:
                                bias[b, i - start, n] = -math.inf
                elif log_count_bias:
                    bias[b, :, n] = math.log(len(toks))
        out, _ = oracle_attention(q[:, :, start:end], keys, vals, bias, scale)
        outs.append(out)
    return torch.cat(outs, 2)
