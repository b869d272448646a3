"""What prism-ops knows of Hugging Face model families: kind, positions, forward, decoding,
key/value projections and a weight digest.

The MPI runtime (`prism_ops.distributed.runtime`) and the one-process run
(`prism_ops.in_process`) run a model only through these functions, so neither knows a model
family, and transformers is imported here, inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import sys
from pathlib import Path

import torch

from prism_ops._files import cache_root
from prism_ops.cost import ModelShape

log = logging.getLogger("prism_ops")

DECODER_SUFFIXES = ("ForCausalLM", "LMHeadModel")  # class names of decoders with their LM head


def model_kind(model) -> str:
    """"vision" (ViT: pixel input), "decoder" (a causal LM with its head) or "encoder"."""
    if hasattr(getattr(model.base_model, "embeddings", None), "patch_embeddings"):
        return "vision"
    if type(model).__name__.endswith(DECODER_SUFFIXES):
        return "decoder"
    return "encoder"


def max_positions(model) -> int | None:
    """The most positions (prompt + generated tokens) the model takes, or None if it does not say."""
    c = model.config
    n = getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None)
    return None if n is None else n - position_offset(model)


def position_offset(model) -> int:
    """The first position id of a text: RoBERTa-style embeddings (RoBERTa, XLM-R, CamemBERT, ESM,
    ...) number a text's tokens from padding_idx + 1 when left to themselves, so the runtimes'
    0-based positions are shifted by that much (their table holds max_position_embeddings -
    padding_idx - 1 usable positions); 0 for every other family. transformers keeps the
    numbering function on the embeddings class (RoBERTa) or beside it in its module (ESM)."""
    emb = getattr(model.base_model, "embeddings", None)
    numbering = "create_position_ids_from_input_ids"
    if emb is None or not isinstance(getattr(emb, "padding_idx", None), int):
        return 0
    if hasattr(emb, numbering) or hasattr(sys.modules.get(type(emb).__module__), numbering):
        return emb.padding_idx + 1
    return 0


def local_hidden(model, kind, c0, c1, ids=None, positions=None, mask=None, pixel_values=None, use_cache=False):
    """Last hidden state `[B, c1 - c0, d]` of tokens [c0, c1), and a decoder's KV cache if asked."""
    base = model.base_model
    if kind == "vision":
        # The patch embedding is cheap and per patch: every rank embeds the image, keeps its slice
        # and runs the layers (ViTModel.forward itself would embed and run all patches).
        dtype = base.embeddings.patch_embeddings.projection.weight.dtype
        h = base.embeddings(pixel_values.to(dtype))[:, c0:c1]
        layers = base.layers if hasattr(base, "layers") else base.encoder.layer
        for layer in layers:
            h = layer(h, None)
            h = h[0] if isinstance(h, tuple) else h
        return base.layernorm(h), None
    if positions is not None:
        positions = positions + position_offset(model)
    kw = dict(input_ids=ids, position_ids=positions, attention_mask=mask)
    if kind == "decoder":
        kw["use_cache"] = use_cache
    out = base(**kw)
    return out.last_hidden_state, cache_of(out)


def embed_tokens(model, ids, positions):
    """The embeddings `[B, n, d]` of token ids at their 0-based positions `[B, n]`, as `local_hidden`
    makes them (the position offset of RoBERTa-style tables added): what delta codes' readers
    make of layer 0's token ids."""
    emb = model.base_model.embeddings
    return emb(input_ids=ids, position_ids=positions + position_offset(model))


def packs(model) -> bool:
    """Whether `packed_hidden` gives model's answers: an encoder whose forward takes position_ids
    (without them the positions would run on from one text into the next), checked once on two
    texts of up to 150 tokens against each run alone, since a family may build its own mask from
    the one it is given (sliding windows) or be causal (CLIP's text encoder). The model must be
    on SDPA or eager attention. A model in half precision (a Jetson's fp16) is checked in float32
    and put back exactly as it was: whether packing keeps each text's answer is a matter of the
    masks and positions, which fp16 rounding (as large as a short window's reach) would hide.
    Why not, when not, goes to the "prism_ops" log (info)."""
    name = type(model).__name__
    if model_kind(model) != "encoder" or "position_ids" not in inspect.signature(model.base_model.forward).parameters:
        log.info("prism_ops: %s runs whole texts padded (packing needs an encoder whose forward takes "
                 "position_ids)", name)
        return False
    # Two texts long enough to cross a local window (up to 150 tokens), within the positions.
    n = min(150, (max_positions(model) or 300) // 2)
    vocab = getattr(model.config, "vocab_size", 0) or 0
    rows = [[5 + (37 * i + 11 * r) % max(1, vocab - 5) for i in range(n - 7 * r)] for r in range(2)]
    try:
        with torch.no_grad(), _in_float32(model):
            h, _ = packed_hidden(model, rows)
            for r, row in enumerate(rows):
                alone = model.base_model(input_ids=torch.tensor([row], device=h.device)).last_hidden_state[0]
                scale = max(1.0, alone.abs().max().item())
                err = (h[r, :len(row)] - alone).abs().max().item()
                if not err <= 1e-4 * scale:
                    log.info("prism_ops: %s runs whole texts padded (packed, a text differs from its answer alone "
                             "by %.3g of its scale)", name, err / scale)
                    return False
    except Exception as e:  # noqa: BLE001 - a family that refuses a 4-D mask runs its texts padded
        log.info("prism_ops: %s runs whole texts padded (packed, it raised %s: %s)", name, type(e).__name__, e)
        return False
    return True


@contextlib.contextmanager
def _in_float32(model):
    """model with its float16 and bfloat16 parameters and buffers in float32 for the block, then
    each back to its own dtype: to float32 and back is exact for both, and every other tensor
    (a module kept in float32, a float64 one) is left alone. Put back however the block ends,
    or a conversion fails (out of memory: it briefly takes twice the half tensors' memory)."""
    half = [t for _, t in [*model.named_parameters(), *model.named_buffers()]
            if t.dtype in (torch.float16, torch.bfloat16)]
    done = []
    try:
        for t in half:
            dtype = t.dtype
            t.data = t.data.float()
            done.append((t, dtype))
        yield
    finally:
        for t, dtype in done:
            t.data = t.data.to(dtype)


def packed_hidden(model, rows: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts run as one sequence: (last hidden states `[B, L, d]`, valid `[B, L]` bool) of rows
    (B lists of token ids, L the longest), right-padded as a padded batch lays them out.

    The texts go end to end in one row of sum(lengths) tokens, each with positions from 0, under
    a block-diagonal 4-D mask so that no token sees another text's: the same answer as each text
    alone, but the layers' matrix products run on the real tokens only, where a padded batch runs
    every row to the longest. For a model `packs` accepts, on SDPA or eager attention (prism
    attention refuses such a mask); the caller keeps sum(lengths) within max_positions."""
    dev = next(model.parameters()).device
    lengths = [len(r) for r in rows]
    ids = torch.tensor([[t for r in rows for t in r]], device=dev)
    positions = torch.cat([torch.arange(n, device=dev) for n in lengths])[None]
    text = torch.repeat_interleave(torch.arange(len(rows), device=dev), torch.tensor(lengths, device=dev))
    mask = (text[:, None] == text[None, :])[None, None]  # [1, 1, T, T], True: attends
    h = local_hidden(model, "encoder", 0, ids.shape[1], ids=ids, positions=positions, mask=mask)[0][0]
    L = max(lengths)
    valid = torch.arange(L, device=dev)[None, :] < torch.tensor(lengths, device=dev)[:, None]
    out = h.new_zeros(len(rows), L, h.shape[-1])
    out[valid] = h
    return out, valid


def cache_keyword(model) -> str:
    """The KV cache argument of `model.forward`: transformers 5.25 names it `cache`, earlier
    releases `past_key_values` (5.25 still takes that, deprecated until 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(out):
    """The KV cache a forward returned (the output's `cache`, or `past_key_values` before 5.25)."""
    return out.cache if "cache" in out.keys() else getattr(out, "past_key_values", None)


def decode_tokens(model, h_last, cache, first_position, sampling, eos=None, progress=False, on_token=None):
    """Sample sampling.generate tokens after hidden state h_last `[B, d]`; returns ids `[B, n]`.

    sampling: generate, temperature, top_k, top_p, seed (a `prism_ops.request_types.Sampling`, or
    a Request, which has the same fields). on_token(ids `[B]`), if given, sees each token as soon as it
    is chosen; when it returns True, decoding stops there (a stop sequence was reached)."""
    from tqdm import tqdm
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if sampling.temperature > 0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k:
            warpers.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1.0:
            warpers.append(TopPLogitsWarper(sampling.top_p))
    gen = torch.Generator().manual_seed(sampling.seed)
    lm_head, base = model.get_output_embeddings(), model.base_model
    cache_arg = cache_keyword(base)
    logits = lm_head(h_last).float()
    out = []
    for t in tqdm(range(sampling.generate), desc="generating", unit="tok", disable=not progress, file=sys.stderr):
        if sampling.temperature > 0:
            probs = torch.softmax(warpers(None, logits), -1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=gen)[:, 0].to(logits.device)
        else:
            nxt = logits.argmax(-1)
        out.append(nxt)
        if on_token is not None and on_token(nxt):
            break
        if eos is not None and bool((nxt == eos).all()):
            break
        if t == sampling.generate - 1:
            break
        pos = torch.full_like(nxt[:, None], first_position + t)
        h = base(input_ids=nxt[:, None], position_ids=pos, use_cache=True, **{cache_arg: cache}).last_hidden_state
        logits = lm_head(h[:, -1]).float()
    return torch.stack(out, 1) if out else torch.empty(h_last.shape[0], 0, dtype=torch.long)


def kv_weight(module):
    """(w_k, w_v), each `[Hkv * D, d]`, of an attention module that projects its input, or None.

    Known layouts: BERT (`key`, `value`), ViT, CLIP, Whisper and Llama-style (`k_proj`, `v_proj`),
    DistilBERT (`k_lin`, `v_lin`), GPT-2 (`c_attn`, a Conv1D holding [q | k | v] as `[d, 3d]`) and
    the fused Linear layers: Phi-3 `qkv_proj` ([q | k | v] with Hkv key/value heads), ModernBERT
    `Wqkv` ([q | k | v]), GPT-NeoX `query_key_value` ([q_h | k_h | v_h] per head h), and Falcon's
    `query_key_value` in its three layouts: multi-query ([q | k | v], one key/value head),
    grouped (`new_decoder_architecture`: [q_g... | k_g | v_g] per key/value group g), or per
    head as GPT-NeoX.
    """
    return kv_params(module, "weight")


def kv_bias(module):
    """(b_k, b_v), each `[Hkv * D]` or None, matching `kv_weight`."""
    return kv_params(module, "bias")


def _heads(module):
    """(H, Hkv, D) of an attention module with a fused projection, from its config."""
    cfg = getattr(module, "config", None)
    H = getattr(cfg, "num_attention_heads", None)
    D = getattr(module, "head_dim", None) or getattr(module, "head_size", None)
    Hkv = (getattr(module, "num_key_value_heads", None) or getattr(module, "num_kv_heads", None)
           or getattr(cfg, "num_key_value_heads", None) or H)
    return H, Hkv, D


def kv_params(module, name):
    """The key and value projections' `name` ("weight" or "bias") in one of the known layouts."""
    for k, v in (("key", "value"), ("k_proj", "v_proj"), ("k_lin", "v_lin")):
        if isinstance(getattr(module, k, None), torch.nn.Linear):
            return getattr(getattr(module, k), name), getattr(getattr(module, v), name)
    c_attn = getattr(module, "c_attn", None)
    if c_attn is not None and getattr(module, "split_size", None) and c_attn.weight.shape[1] == 3 * module.split_size:
        d = module.split_size
        t = c_attn.weight.T if name == "weight" else c_attn.bias  # (3d, d) or (3d,)
        return t[d : 2 * d], t[2 * d :]
    for attr in ("qkv_proj", "Wqkv", "query_key_value"):
        lin = getattr(module, attr, None)
        if not isinstance(lin, torch.nn.Linear):
            continue
        H, Hkv, D = _heads(module)
        if not (H and Hkv and D) or lin.out_features != (H + 2 * Hkv) * D:
            return None
        t = getattr(lin, name)
        if t is None:
            return None, None
        rest = t.shape[1:]
        if attr == "query_key_value" and getattr(module, "new_decoder_architecture", False):
            t = t.view(Hkv, H // Hkv + 2, D, *rest)  # Falcon, grouped: per group [its queries | k | v]
            return t[:, -2].reshape(Hkv * D, *rest), t[:, -1].reshape(Hkv * D, *rest)
        if attr == "query_key_value" and not getattr(module, "multi_query", False):
            t = t.view(H, 3, D, *rest)  # GPT-NeoX, and Falcon without multi-query: per head [q | k | v]
            return t[:, 1].reshape(H * D, *rest), t[:, 2].reshape(H * D, *rest)
        return t[H * D : (H + Hkv) * D], t[(H + Hkv) * D :]
    return None


def model_fingerprint(model) -> dict:
    """What a calibration file must have been made on: architecture, sizes and a weight digest."""
    shape = ModelShape.from_config(model.config)
    archs = getattr(model.config, "architectures", None) or [type(model).__name__]
    return {"architecture": archs[0], "layers": shape.num_layers, "hidden_size": shape.hidden_size,
            "heads": shape.num_heads, "kv_heads": shape.num_kv_heads, "head_dim": shape.head_dim,
            "weights": sampled_weights_digest(model)}


def cache_file(model, folder: str, suffix: str) -> Path | None:
    """The file in the package's cache folder (`_files.cache_root`) where something made once for
    this model lives: `folder/<digest of its fingerprint><suffix>`, so another checkpoint or dtype
    never reads it. None when the cache is off (PRISM_OPS_CACHE=off)."""
    root = cache_root()
    if root is None:
        return None
    digest = hashlib.sha256(json.dumps(model_fingerprint(model), sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / folder / f"{digest}{suffix}"


def sampled_weights_digest(model) -> str:
    """A digest of 256 evenly strided values of every weight tensor, exactly as stored.

    No arithmetic on the values (unlike a sum, which changes with the thread count), so the same
    weights give the same digest in any process. A weight change that misses every sampled value
    goes unnoticed; it only guards against another checkpoint or dtype. The handshake
    (`distributed.handshake.fingerprint`) and calibration files (`model_fingerprint`) both use it.
    """
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            flat = p.detach().flatten()
            h.update(f"{name}:{list(p.shape)}:{p.dtype}".encode())
            h.update(flat[:: max(1, flat.numel() // 256)].cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def transformers_version() -> str:
    """The installed transformers release (every rank of a job must run the same one)."""
    import transformers

    return transformers.__version__
