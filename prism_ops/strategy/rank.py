"""`RankPartition`: PRISM attention on one MPI rank, the strategy that `prism_ops.hf.configure(...,
comm=comm)` gives every attention layer (the interface: `prism_ops.strategy.base`).

Rank p holds the queries, keys and values of its own chunk only: q `[B, H, n_p, D]`, k and v
`[B, Hkv, n_p, D]` (and, for hidden-feature exchange, the attention input `[B, n_p, d]`).
Per layer it
  1. builds its payload (`prism_ops.ops.chunk_summary`: exact sink/halo rows and segment
     means, rounded to `summary_bits` if set) and starts the all-gather (a chunk no rank
     reads, the last of a causal model, sends nothing: `prism_ops.wire`); a causal model's
     chunk goes point to point to the later ranks only, so no rank waits for rows it never reads,
  2. attends to its own block while the payloads travel (log-sum-exp kept),
  3. decodes the payloads of the chunks it may see (hidden features are projected to K and V
     with the layer's own weights), attends to those rows, and merges the two partial
     attentions exactly (`merge_attention`).
The last rank of a decoder returns the rows it attended to, which the request state keeps per
layer: it decodes new tokens with its own KV cache plus those rows, with no communication per
generated token. A layer with a sliding window or a logit cap (`layer.window`, `layer.softcap`)
attends on token positions (`prism_ops.ops.window_attention`), and a chunk wholly outside the
window of every query of a rank is neither sent to nor read by it. The bounds and the padding
mask come from the request state that `prism_ops.distributed.runtime` scopes; the layer's
projections come from its PrismLayer. The communicator is passed in (`comm`: the
`prism_ops.distributed.comm.Communicator` of this rank), so this module imports no MPI.
"""

from __future__ import annotations

import time
from functools import partial

import torch
import torch.nn.functional as F

from prism_ops.config import PrismConfig
from prism_ops.ops.chunk_summary import (chunk_clusters, chunk_layout, reached_rows, summary_rows, trim_rows,
                                         visible_chunks, visible_rows, visible_spans)
from prism_ops.ops.codebook_rows import codebook_codes
from prism_ops.ops.delta_rows import delta_codes, delta_decode
from prism_ops.ops.heavy_rows import heavy_scores, pick_heavy, picked_counts
from prism_ops.ops.merge_attention import merge_attention
from prism_ops.ops.prism_attention import prism_attention
from prism_ops.ops.quantize_rows import quantize_codes
from prism_ops.ops.segment_means import segment_means
from prism_ops.ops.window_attention import windowed_prism_attention
from prism_ops.wire import chunk_options, payload_layouts, readers

from .base import CachedRows, PartitionStrategy
from .payload import decode, decode_delta, decode_picks, encode, encode_delta
from ..tags import TAG_LAYERS


def _setting(layer, state):
    """The layer's setting for this request (`PrismConfig.for_tokens`: every token a row when the
    request's share per rank is under min_chunk_tokens), the same on every rank."""
    return layer.config.for_tokens(state.bounds[-1][1])


def _project(layer, h):
    """K|V rows `[B, Hkv, R, 2D]` from hidden-feature rows h `[B, 1, R, d]` (the receiver's projection)."""
    B, _, R, _ = h.shape
    parts = []
    for w, b in zip(layer.kv_weight(), layer.kv_bias()):
        y = F.linear(h[:, 0].to(w.dtype), w, b)  # (B, R, Hkv * D)
        parts.append(y.view(B, R, -1, layer.head_dim).transpose(1, 2))
    return torch.cat(parts, -1)


class RankPartition(PartitionStrategy):
    """This process is rank `comm.rank` of `comm.size`: it holds only its own chunk's tokens.

    One object serves every attention layer of a model; `num_layers` of them, indexed 0.., and
    the bytes each sends are counted under its index (`Communicator.sent`).
    """

    def __init__(self, comm):
        self.comm = comm  # the settings are each layer's (`PrismLayer.config`), the same object on every layer

    def needs_hidden(self, config: PrismConfig) -> bool:
        return config.exchange == "hidden"  # a rank sends its hidden features

    @staticmethod
    def _payload(layout, x, k, keep, ab, c0, cfg, codebook=None, trim=None, q=None, causal=False) -> torch.Tensor:
        """This rank's payload bytes: its chunk's verbatim rows and summaries (rounded if asked), cut
        by `trim` (a function of the rows: a sliding window's `trim_rows`) before any rounding.

        A chunk no rank reads (the last of a causal model) has an empty layout: nothing is built.
        """
        if not layout.nbytes:
            return torch.empty(0, dtype=torch.uint8, device=x.device)
        a, b = (i - c0 for i in ab)
        assign = chunk_clusters(k, keep, a, b, cfg.segment_size, cfg.cluster_iters)
        picked = None
        if layout.picks:  # heavy_fraction: the tokens its own queries attend to most go as their own rows
            picked = pick_heavy(heavy_scores(q, k, keep, causal), a, b, cfg.heavy_fraction)
        rows = summary_rows(x, keep, a, b, cfg.segment_size, assign, cfg.backend, picked)
        exact, _, means, counts = rows if trim is None else trim(rows)
        quant = {}
        if cfg.summary_codebook and means.shape[2]:
            quant = dict(codes=codebook_codes(means, codebook))
        elif cfg.summary_bits and means.shape[2]:
            codes, lo, step = quantize_codes(means, cfg.summary_bits, (counts > 0)[:, None, :, None])
            quant = dict(codes=codes, lo=lo, step=step)
        return encode(layout, exact, means=means, counts=counts, picks=picked, **quant)

    def attend(self, layer, q, k, v, *, valid, hidden, scale, causal, state):
        """This rank's attention output `[B, H, n_p, D]` for one layer, and the rows to cache
        for decoding (the last rank of a causal model) or None."""
        if state is None or state.bounds is None:
            raise ValueError("a model configured with comm= runs through prism_ops.distributed.runtime.run_distributed "
                             "(it sets the partition bounds)")
        cfg, p = _setting(layer, state), self.comm.rank
        c0, c1 = state.bounds[p]
        if q.shape[2] != c1 - c0:
            raise ValueError(f"rank {p} owns tokens [{c0}, {c1}) but its layer got {q.shape[2]} queries")
        B = k.shape[0]
        x = hidden[:, None] if cfg.exchange == "hidden" else torch.cat([k, v], -1)
        window = layer.window
        windowed = window is not None or layer.softcap is not None
        reach = dict(bounds=state.bounds, window=window)
        layouts = payload_layouts(cfg, state.bounds, causal=causal, batch=B, heads=x.shape[1], channels=x.shape[3],
                                  dtype=x.dtype, window=window, layer=layer.index)
        opts = chunk_options(cfg, causal)

        # 1. This rank's payload, on its way while the local block is computed.
        t0 = time.perf_counter()
        keep = state.valid[:, c0:c1]
        pending = self._send(layer, q, x, k, keep, state, layouts, opts, causal, reach)
        t1 = time.perf_counter()
        state.add_seconds("payload", t1 - t0)

        # 2. The local block, exact. (On a GPU the clock sees launches; the wait then holds the rest.)
        k_valid = None if bool(keep.all()) else keep
        win = pos = None
        if windowed:
            pos = torch.arange(c0, c1, device=q.device)
            win = dict(window=window, softcap=layer.softcap, scale=scale, log_count_bias=cfg.log_count_bias,
                       backend=cfg.backend, return_lse=True)
            out, lse = windowed_prism_attention(q, k, v, q_pos=pos, k_pos=pos, causal=causal, k_valid=k_valid, **win)
        else:
            out, lse = prism_attention(q, k, v, None, None, None, causal=causal, scale=scale, k_valid=k_valid,
                                       backend=cfg.backend, return_lse=True)

        t2 = time.perf_counter()
        state.add_seconds("local", t2 - t1)

        # 3. The rows of the chunks this rank may see.
        parts = pending.wait()
        t3 = time.perf_counter()
        state.add_seconds("wait", t3 - t2)
        out, cached = self._attend_received(layer, q, k, v, out, lse, parts, state, layouts, opts, causal, reach,
                                            scale=scale, windowed=windowed, win=win, pos=pos)
        state.add_seconds("remote", time.perf_counter() - t3)
        return out, cached

    def _attend_received(self, layer, q, k, v, out, lse, parts, state, layouts, opts, causal, reach, *, scale,
                         windowed, win, pos):
        """Attend to the rows received and merge with the local block; (output, rows to cache)."""
        cfg, p, P = _setting(layer, state), self.comm.rank, self.comm.size
        c0, c1 = state.bounds[p]
        segment_size, window = cfg.segment_size, layer.window
        rows = self._received_rows(layer, parts, state, layouts, opts, causal, reach)
        k_sum, v_sum, sum_counts = visible_rows(rows, p, causal, **reach)
        spans = None
        if windowed:
            spans = visible_spans(state.bounds, p, segment_size, **opts, window=window).to(q.device)
        cached = None
        if causal and p == P - 1:
            cached = CachedRows(0, k_sum, v_sum, sum_counts, spans=spans, pos0=c0, end=c1)
        if k_sum is None:
            return out, cached
        if windowed:
            out_s, lse_s = windowed_prism_attention(q, k[:, :, :0], v[:, :, :0], k_sum, v_sum, sum_counts, q_pos=pos,
                                                    k_pos=pos[:0], sum_spans=spans, causal=causal, **win)
        else:
            out_s, lse_s = prism_attention(q, k[:, :, :0], v[:, :, :0], k_sum, v_sum, sum_counts, scale=scale,
                                           log_count_bias=cfg.log_count_bias, backend=cfg.backend, return_lse=True)
        return merge_attention(out, lse, out_s, lse_s)[0], cached

    def _send(self, layer, q, x, k, keep, state, layouts, opts, causal, reach):
        """Start sending this rank's payload of one layer (to the later ranks alone when causal:
        point to point, so this rank never waits for ranks it does not read; else an all-gather);
        returns the pending exchange."""
        cfg, comm = _setting(layer, state), self.comm
        p, P = comm.rank, comm.size
        c0 = state.bounds[p][0]
        window = layer.window
        trim = None if window is None else partial(trim_rows, bounds=state.bounds, c=p, segment_size=cfg.segment_size,
                                                   window=window, **opts)
        if cfg.delta_rows:
            payload = _delta_payload(layer, x[:, 0], state, layouts[p])
        else:
            payload = self._payload(layouts[p], x, k, keep, chunk_layout(state.bounds, p, **opts), c0, cfg,
                                    layer.codebook, trim, q, causal)
        counts = [lay.nbytes for lay in layouts]
        comm.phase = f"forward layer {layer.index}"
        if causal:
            return comm.isend_recv(payload, readers(p, P, causal, **reach), visible_chunks(p, P, causal, **reach),
                                   counts, tag=TAG_LAYERS + layer.index, key=layer.index)
        return comm.iallgatherv(payload, counts, key=layer.index)

    def _received_rows(self, layer, parts, state, layouts, opts, causal, reach) -> list:
        """(rows, counts) of every chunk this rank sees, decoded from what it received (None for
        the others): verbatim rows with count 1 (0 for padding), then summary rows with their
        segment counts (sent with key clusters, else implied by the padding mask every rank has)."""
        cfg, p, P = _setting(layer, state), self.comm.rank, self.comm.size
        if cfg.delta_rows:
            return _delta_received(layer, parts, state, layouts, visible_chunks(p, P, causal, **reach), P)
        rows = [None] * P
        for c in visible_chunks(p, P, causal, **reach):
            d0, d1 = state.bounds[c]
            ca, cb = chunk_layout(state.bounds, c, **opts)
            ex_c, means_c, counts_c = decode(layouts[c], parts[c], layer.codebook)
            valid_c = state.valid[:, d0:d1]
            picks = decode_picks(layouts[c], parts[c])
            if picks is not None:  # heavy_fraction: counts follow from the picks and the padding mask
                counts_c = picked_counts(valid_c[:, ca - d0 : cb - d0], picks, cfg.segment_size)
            elif counts_c is None:
                keep_c = valid_c[:, None, ca - d0 : cb - d0, None]
                counts_c = segment_means(keep_c.float(), cfg.segment_size, valid=keep_c[:, 0, :, 0], backend="torch")[1]
            ex_counts = torch.cat([valid_c[:, : ca - d0], valid_c[:, cb - d0 :]], 1).to(torch.int32)
            if layer.window is not None:  # the rows chunk c sent: those some reader's window holds whole
                sent = reached_rows(state.bounds, c, cfg.segment_size, window=layer.window, **opts).to(ex_counts.device)
                E = ex_counts.shape[1]
                ex_counts, counts_c = ex_counts[:, sent[:E]], counts_c[:, sent[E:]]
            r = torch.cat([ex_c, means_c], 2)
            rows[c] = (_project(layer, r) if cfg.exchange == "hidden" else r, torch.cat([ex_counts, counts_c], 1))
        return rows


def _chained(state, key: str, layer) -> object:
    """What delta codes decoded at the layer before this one (state.chain[key]), or ValueError."""
    got = state.chain.get(key)
    if got is None or got[0] != layer.index - 1:
        ran = "no layer" if got is None else f"layer {got[0]}"
        raise ValueError(f"delta codes code layer {layer.index} from the rows of layer {layer.index - 1} of the same "
                         f"forward, but {ran} ran before it: run the model's layers in order")
    return got[1]


def _delta_payload(layer, hidden, state, layout) -> torch.Tensor:
    """This rank's delta-code payload (`ops.delta_rows`): in layer 0 its token ids and positions,
    after it the codes of its rows `[B, n_p, d]` against the prediction from what its readers
    decoded at the layer before (kept in state.chain["own"])."""
    if layer.index == 0:
        # The readers rebuild these rows from the ids: that holds only where they are the embeddings.
        rebuilt = layer.embed(state.ids.to(hidden.device), state.positions.to(hidden.device)).to(hidden.dtype)
        tol = 1e-5 if hidden.dtype == torch.float32 else 1e-2
        if rebuilt.shape != hidden.shape or not torch.allclose(rebuilt, hidden, rtol=tol, atol=tol):
            raise NotImplementedError("delta codes send layer 0 as token ids, but this model's first attention layer "
                                      "does not take the tokens' embeddings as they are; use summary_bits")
        sent, payload = hidden, encode_delta(layout, ids=state.ids, positions=state.positions)
    else:
        codes, sent = delta_codes(hidden, _chained(state, "own", layer), *layer.delta)
        payload = encode_delta(layout, codes=codes)
    state.chain["own"] = (layer.index, sent)
    return payload.to(hidden.device)


def _delta_received(layer, parts, state, layouts, chunks, P) -> list:
    """(K|V rows, counts) of every chunk this rank sees under delta codes: layer 0's rows embedded
    from the ids, a later layer's decoded from its codes and the rows of the layer before."""
    before = _chained(state, "others", layer) if layer.index else None
    rows, decoded = [None] * P, {}
    for c in chunks:
        d0, d1 = state.bounds[c]
        codes, ids, positions = decode_delta(layouts[c], parts[c])
        if layer.index == 0:
            h = layer.embed(ids, positions)
        else:
            h = delta_decode(codes, before[c], *layer.delta)
        decoded[c] = h
        rows[c] = (_project(layer, h[:, None]), state.valid[:, d0:d1].to(torch.int32))
    state.chain["others"] = (layer.index, decoded)
    return rows
