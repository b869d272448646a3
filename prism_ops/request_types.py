"""Request and result types, their checks, and the model-runner interface: what every mode shares.

    Request      what rank 0 was asked: token ids `[B, N]` (or pixel_values `[B, 3, H, W]`), the
                 output wanted, generation and pooling settings
    Result       on rank 0: the output, generated ids, bytes sent per layer, seconds, bounds
    RequestError a request that cannot run; every rank raises it (exit code 2)
    too_long     why a request does not fit a model's positions (every path that takes one asks)
    check_request  (B, N) of a valid request, or RequestError
    ModelRunner  what the runtimes need of a model: its kind and limits, a local forward over a
                 slice of the tokens, decoding, and what the handshake compares

The MPI runtime (`prism_ops.distributed.runtime`), the one-process run (`prism_ops.in_process`),
the service, S2M3 and the jobs all import these from here; the Hugging Face adapter implements
ModelRunner (`prism_ops.hf.runner.HFRunner`, returned by `prism_ops.hf.configure`), so the MPI
layer runs any model it is handed and knows no model family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from .errors import CollectiveError
from .pooling import Pooling


class ModelRunner(Protocol):
    """One model as the runtimes run it (`prism_ops.hf.runner.HFRunner` is the Hugging Face one).

    kind: "encoder", "decoder" or "vision"; max_positions: the most positions it takes (None: no
    limit known); image_tokens: a vision model's tokens per image; device: where its weights are;
    config and partition: the resolved PrismConfig and the PartitionStrategy its attention layers
    run (None when it runs unconfigured); num_layers: its attention layers."""

    kind: str
    max_positions: int | None
    image_tokens: int | None
    config: object
    partition: object
    num_layers: int

    @property
    def device(self) -> torch.device: ...

    def forward_local(self, c0: int, c1: int, *, use_cache: bool = False, **inputs):
        """(last hidden state `[B, c1 - c0, d]` of tokens [c0, c1), a decoder's KV cache or None)."""

    @property
    def packs(self) -> bool:
        """Whether forward_packed runs this model (texts packed end to end in one sequence)."""

    def forward_packed(self, rows: list):
        """Texts run whole on the exact model, packed into one sequence: (last hidden states
        `[B, L, d]`, valid `[B, L]` bool), laid out as a right-padded batch of the B texts."""

    def decode(self, h_last, cache, first_position: int, sampling, eos, progress: bool, on_token=None) -> torch.Tensor:
        """New token ids `[B, n]` after h_last `[B, d]`, from the KV cache, as `sampling` (a Sampling,
        or a Request: the same fields) says."""

    def next_logits(self, h_last) -> torch.Tensor:
        """A decoder's next-token logits `[B, V]` from the last hidden state `[B, d]`."""

    def identity(self) -> dict:
        """What must match on every rank besides the config: library versions, a weights digest."""


OUTPUTS = ("embedding", "hidden", "logits")


class RequestError(CollectiveError, ValueError):
    """The request cannot run (empty, too long, fewer tokens than ranks); every rank raises it."""

    exit_code = 2


@dataclass
class Request:
    """What rank 0 was asked. ids `[B, N]` int64 (text models) or pixel_values `[B, 3, H, W]`."""

    ids: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # [B, N], True/1 = real token; None = no padding
    pixel_values: torch.Tensor | None = None
    output: str = "embedding"
    generate: int = 0
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stream: bool = False  # generate: hand each new token to rank 0's on_token as it is made
    pooling: Pooling = field(default_factory=Pooling)  # output="embedding": how tokens become one vector
    # A batch laid out by the caller (encoders): each token's absolute position `[B, N]` and the
    # ranks' column bounds; None: positions 0..N-1 and bounds from the partition weights.
    positions: torch.Tensor | None = None
    bounds: list | None = None


@dataclass(frozen=True)
class Sampling:
    """How a decoder picks its new tokens (the decoding rank reads them from the request's head)."""

    generate: int = 0
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    @classmethod
    def from_head(cls, head: dict) -> "Sampling":
        return cls(**{f: head[f] for f in cls.__dataclass_fields__})


@dataclass
class Result:
    """On rank 0: the output and the report."""

    output: object
    token_ids: list | None = None
    bytes_per_layer: list = field(default_factory=list)  # sent, summed over ranks
    seconds: dict = field(default_factory=dict)  # per phase, the slowest rank's
    # Every rank's seconds per phase, with its attention layers' breakdown (payload, local, wait,
    # remote: `strategy.RequestState.seconds`); empty when run in one process.
    seconds_per_rank: list = field(default_factory=list)
    bounds: list = field(default_factory=list)


CHARS_PER_POSITION = 64  # a token stands for a few characters: no text longer than this per position fits


def too_long(limit: int | None, *, chars: int | None = None, tokens: int | None = None, generate: int = 0,
             subject: str = "the input", generating: str = "{} to generate") -> str | None:
    """Why a request does not fit a model of `limit` positions (None: it fits, or there is no
    limit), as one sentence about `subject`. chars: a text's length, refused before the text is
    tokenized whole when no text that long can fit; tokens + generate: the positions it needs
    (`generating` words the generated part). Every path that takes a request asks this."""
    if limit is None:
        return None
    if chars is not None and chars > CHARS_PER_POSITION * limit:
        return f"{subject} has {chars:,} characters, far more than the model's {limit} positions"
    if tokens is not None and tokens + generate > limit:
        more = f" + {generating.format(generate)}" if generate else ""
        return f"{subject} has {tokens} tokens{more}, more than the model's {limit} positions"
    return None


def check_request(runner: ModelRunner, req: Request, num_ranks: int) -> tuple[int, int]:
    """(B, N) of a valid request for the model `runner` runs, or RequestError naming what is wrong."""
    kind = runner.kind
    if req.output not in OUTPUTS:
        raise RequestError(f"output must be one of {OUTPUTS}, got {req.output!r}")
    if kind == "vision":
        if req.pixel_values is None or req.pixel_values.dim() != 4:
            raise RequestError("a vision model needs pixel_values [B, 3, H, W]")
        B, N = req.pixel_values.shape[0], runner.image_tokens
    else:
        if req.ids is None or req.ids.dim() != 2:
            raise RequestError("input ids must be a [B, N] tensor")
        B, N = req.ids.shape
        if N == 0:
            raise RequestError("the input is empty (0 tokens)")
        # A batch laid out by the caller needs as many positions as its longest row.
        longest = N if req.positions is None else int(req.positions.max()) + 1
        why = too_long(runner.max_positions, tokens=longest, generate=req.generate)
        if why:
            raise RequestError(why)
    if N < num_ranks:
        raise RequestError(f"the input has {N} tokens, fewer than the {num_ranks} ranks (each rank needs one)")
    if (req.generate or req.output == "logits") and kind != "decoder":
        raise RequestError(f"generate and output='logits' need a decoder; this model is a {kind}")
    return B, N


def default_positions(B, N):
    """Positions 0..N-1 of every row `[B, N]` (a request that lays out no batch)."""
    return torch.arange(N).expand(B, N)
