"""The partition-strategy interface, the layer object that holds one, and one request's state.

A model configured by `prism_ops.hf.configure` has one small `PrismLayer` per attention module
(attribute `prism_layer`): the frozen `PrismConfig`, the layer's index and head dim, its
key/value projections, and a `PartitionStrategy` (`prism_ops.strategy.simulated`,
`prism_ops.strategy.rank`). The Hugging Face adapter calls `layer.strategy.attend(...)` for every
full-sequence forward of the layer; the strategy returns this process's output and, for a causal
model, the rows its last partition attended to (a `CachedRows`: what a decoding rank caches).

Per-request state (partition bounds and padding on MPI ranks, rows cached for decoding) lives
in a `RequestState` that the runtime creates and scopes with `request_scope`; nothing
per-request is stored on a module. Outside any scope a forward runs with no state: fine for a
full-sequence forward, while decoding (a KV cache) needs the rows of its prefill, so prefill and
decode must share one scope:

    with prism_ops.request_scope():
        model.generate(ids, max_new_tokens=8)
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import threading
import weakref
from dataclasses import dataclass, field

import torch

from prism_ops.config import PrismConfig

LAYER_ATTR = "prism_layer"  # the attribute of an attention module that holds its PrismLayer


@dataclass
class RequestState:
    """One request's state, shared by all layers of one forward (and its decoding steps).

    bounds: every rank's token range [start, end) (MPI ranks; None when simulated).
    valid: the padding mask of the whole sequence `[B, N]`, True = real token (MPI ranks).
    rows: layer index -> the `CachedRows` of the prefill, for decoding.
    ids, positions: this rank's token ids and positions `[B, n_p]` (MPI ranks; what delta codes
        send in layer 0).
    chain: delta codes' rows as their readers decoded them at the last layer: "own" `(layer,
        [B, n_p, d])` and "others" `(layer, {chunk: [B, n_c, d]})` (MPI ranks).
    seconds: where this rank's attention layers spent their time, summed over layers (MPI ranks):
        "payload" (building and encoding its rows, starting the send), "local" (its own block),
        "wait" (for the rows it reads, beyond the local block), "remote" (decoding them, attending
        to them, merging).
    """

    bounds: list | None = None
    valid: torch.Tensor | None = None
    rows: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    ids: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    chain: dict = field(default_factory=dict)

    def add_seconds(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


@dataclass
class CachedRows:
    """What the last partition of a decoder keeps per layer from its prefill, to decode with.

    start: the index in its KV cache of its own first token (keys before it are earlier
        partitions', seen only through the rows).
    k_sum, v_sum `[B, Hkv, S, D]`, counts `[B, S]`: the rows it attended to (None when none).
    spans `[S, 2]`: the rows' (start, end) positions (sliding-window or soft-capped layers).
    pos0: the position of its KV cache's index 0 at prefill; end: the positions seen so far
        (prefill, then each decoding step), so a window-cropped cache is still placed right.
    """

    start: int
    k_sum: torch.Tensor | None
    v_sum: torch.Tensor | None
    counts: torch.Tensor | None
    spans: torch.Tensor | None = None
    pos0: int = 0
    end: int = 0


_CURRENT: contextvars.ContextVar[RequestState | None] = contextvars.ContextVar("prism_request", default=None)
# How many request scopes are open now, in any thread or context. While none is, current_state()
# is None without reading the ContextVar, which torch.compile cannot trace: a plain forward
# compiles with fullgraph=True.
_open_scopes = 0
_scopes_lock = threading.Lock()


def _count_scope(step: int) -> None:
    global _open_scopes
    with _scopes_lock:
        _open_scopes += step


@contextlib.contextmanager
def request_scope(state: RequestState | None = None):
    """Make `state` (a fresh one by default) the current request for the block; yields it."""
    state = RequestState() if state is None else state
    token = _CURRENT.set(state)
    _count_scope(1)
    try:
        yield state
    finally:
        _count_scope(-1)
        _CURRENT.reset(token)


def current_state() -> RequestState | None:
    """The RequestState of the enclosing `request_scope`, or None."""
    if not _open_scopes:
        return None
    return _CURRENT.get()


def attached_layers(model) -> list:
    """The PrismLayer objects of a configured model, in layer order."""
    return [getattr(m, LAYER_ATTR) for m in model.modules() if getattr(m, LAYER_ATTR, None) is not None]


class PartitionStrategy(abc.ABC):
    """How one attention layer's partitions are computed: all in this process, or this process
    as one MPI rank. One object serves every attention layer of a model."""

    @abc.abstractmethod
    def attend(self, layer: "PrismLayer", q, k, v, *, valid, hidden, scale, causal, state):
        """This process's attention output `[B, H, n, D]` for one layer, and the `CachedRows` its
        last partition attended to (a causal model) or None.

        q `[B, H, n, D]`, k and v `[B, Hkv, n, D]`: this process's tokens (all of them when
        simulated). valid `[B, n]` (True = real token) or None; hidden `[B, n, d]`, the layer's
        attention input (hidden-feature exchange) or None; scale: the logit scale or None;
        causal: a decoder's layer; state: the current `RequestState` or None.
        """

    @abc.abstractmethod
    def needs_hidden(self, config: PrismConfig) -> bool:
        """Whether `attend` needs the layer's attention input (`hidden`) under `config`."""


class PrismLayer:
    """What one attention module needs to run PRISM: the config, its index among the model's
    attention layers, its head dim, its key/value projections and the partition strategy.

    kv_params(module, "weight" | "bias") reads the module's key and value projections: the model
    adapter's knowledge (`prism_ops.hf.model.kv_params`), read live from the module, so
    `model.half()` after configure is seen.
    """

    def __init__(self, module, config: PrismConfig, index: int, head_dim: int, strategy: PartitionStrategy, *,
                 kv_params, window=None, softcap=None):
        self.config, self.index, self.head_dim, self.strategy = config, index, head_dim, strategy
        self.model_config = config  # the model's whole setting (config: this layer's, `PrismConfig.for_layer`)
        self.window, self.softcap = window, softcap  # the layer's sliding window and logit cap, or None
        self._module = weakref.ref(module)
        self._kv_params = kv_params
        self.hook = None  # the forward pre-hook that captures the attention input (hidden exchange)
        self.codebook = None  # this layer's [H, M, K, g] codebook with summary_codebook
        self.delta = None  # with delta_codebook: this layer's (predictor [d + 1, d], codebook [1, M, K, g])
        self.delta_last = False  # with delta_codebook: the model's last attention layer (ends the chain)
        self.embed = None  # with delta_codebook, layer 0 on a rank: (ids, positions) `[B, n]` -> embeddings `[B, n, d]`

    def kv_weight(self):
        """(w_k, w_v), each `[Hkv * D, d]`."""
        return self._kv_params(self._module(), "weight")

    def kv_bias(self):
        """(b_k, b_v), each `[Hkv * D]` or None."""
        return self._kv_params(self._module(), "bias")

    def detach(self) -> None:
        if self.hook is not None:
            self.hook.remove()
            self.hook = None
