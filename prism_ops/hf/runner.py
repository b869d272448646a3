"""`HFRunner`: a Hugging Face model as the runtimes run it (`prism_ops.request_types.ModelRunner`).

`prism_ops.hf.configure(model, ...)` returns one, holding the resolved PrismConfig and the
partition strategy its attention layers run, so the MPI runtime is handed what it runs and
never looks it up on the model. `runner(model)` makes one for a model as it is (configured or
not), for the one-process paths.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import torch

from ..strategy import attached_layers
from .model import (decode_tokens, local_hidden, max_positions, model_kind, packed_hidden, packs, sampled_weights_digest,
                    transformers_version)


NAME = "prism"  # the attn_implementation name `configure` registers and sets


@dataclass(frozen=True)
class HFRunner:
    """model: the transformers model; config: its resolved PrismConfig (None: unconfigured);
    partition: the PartitionStrategy of its attention layers (RankPartition under MPI,
    SimulatedPartitions in one process, None: unconfigured); num_layers: its attention layers."""

    model: torch.nn.Module
    config: object = None
    partition: object = None
    num_layers: int = 0

    @property
    def kind(self) -> str:
        return model_kind(self.model)

    @property
    def max_positions(self) -> int | None:
        return max_positions(self.model)

    @property
    def image_tokens(self) -> int | None:
        if self.kind != "vision":
            return None
        return self.model.base_model.embeddings.patch_embeddings.num_patches + 1  # the patches and [CLS]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward_local(self, c0, c1, *, use_cache=False, **inputs):
        return local_hidden(self.model, self.kind, c0, c1, use_cache=use_cache, **inputs)

    @cached_property  # checked once per runner (a frozen dataclass: cached_property writes its __dict__)
    def packs(self) -> bool:
        """Whether forward_packed runs this model (`prism_ops.hf.model.packs`)."""
        with self.exact() as model:
            return packs(model)

    def forward_packed(self, rows: list):
        """(last hidden states `[B, L, d]`, valid `[B, L]`) of texts run whole, packed into one
        sequence on the exact model (`packed_hidden`; only where `packs`)."""
        with self.exact() as model:
            return packed_hidden(model, rows)

    def decode(self, h_last, cache, first_position, sampling, eos, progress, on_token=None):
        return decode_tokens(self.model, h_last, cache, first_position, sampling, eos, progress, on_token)

    def next_logits(self, h_last):
        head = self.model.get_output_embeddings()
        return head(h_last.to(head.weight.dtype))  # a row sent as float32 back in the model's dtype

    @contextmanager
    def exact(self):
        """The model on transformers' SDPA (else eager) attention inside the block: the exact model, no
        summaries and no messages (a rank running texts whole); back on prism attention after it,
        its layers configured as before."""
        try:
            self.model.set_attn_implementation("sdpa")
        except ValueError:  # a model transformers has no SDPA path for
            self.model.set_attn_implementation("eager")
        try:
            yield self.model
        finally:
            self.model.set_attn_implementation(NAME)

    def identity(self) -> dict:
        return {"transformers": transformers_version(), "weights": sampled_weights_digest(self.model)}


def runner(model) -> HFRunner:
    """The runner of `model` as it is: its config and strategy if configured, else unconfigured
    (the exact model, for the one-process paths)."""
    layers = attached_layers(model)
    if not layers or getattr(model.config, "_attn_implementation", None) != NAME:  # exact (e.g. back on sdpa)
        return HFRunner(model)
    return HFRunner(model, layers[0].model_config, layers[0].strategy, len(layers))
