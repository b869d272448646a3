"""Quality metrics against the exact model. Shapes: embeddings `[N, d]`, hidden `[B, T, d]`."""

from __future__ import annotations

import math

import torch


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence embedding `[B, d]`: mean of `hidden` over real tokens (mask `[B, T]`), L2-normalised."""
    m = mask.to(hidden.dtype)[..., None]
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def cosine_stats(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(mean, min) over rows of the cosine between a `[N, d]` and b `[N, d]`."""
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
    return cos.mean().item(), cos.min().item()


def top1(queries: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    """Index `[Nq]` of the most similar doc for each query (dot product of normalised vectors)."""
    return (queries.double() @ docs.double().T).argmax(-1)


def recall_at_1(queries: torch.Tensor, docs: torch.Tensor) -> float:
    """Share of queries i whose best doc is doc i."""
    hits = top1(queries, docs) == torch.arange(len(queries))
    return hits.double().mean().item()


def top1_agreement(queries: torch.Tensor, docs: torch.Tensor, docs_ref: torch.Tensor) -> float:
    """Share of queries whose best doc is the same under docs and docs_ref."""
    return (top1(queries, docs) == top1(queries, docs_ref)).double().mean().item()


def perplexity(nll_sum: float, num_predicted: int) -> float:
    """exp of the mean next-token negative log-likelihood."""
    if num_predicted <= 0:
        raise ValueError(f"num_predicted must be > 0, got {num_predicted}")
    return math.exp(nll_sum / num_predicted)


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """(sum of -log p(ids[t+1] | ..t), number of predictions) for logits `[B, T, V]`, ids `[B, T]`."""
    lp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    nll = -lp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return nll.sum().item(), nll.numel()
