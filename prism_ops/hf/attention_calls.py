"""What a transformers attention module hands its attention function, read before any forward.

transformers' attention modules (LlamaAttention, BertSelfAttention, ...) end in one call,

    attention_interface(self, query, key, value, attention_mask, dropout=..., scaling=...,
                        sliding_window=..., softcap=..., **kwargs)

where `attention_interface` comes from `ALL_ATTENTION_FUNCTIONS` (`attn_implementation`). The
keywords written in that call, and the parameters of the family's own `eager_attention_forward`,
are what the attention function must honour. `call_keywords` reads them from the module's source
(`ast`), and `module_features` evaluates each on the module (`self.sliding_window`, ...), so
`prism_ops.hf.configure` can refuse, before any forward, every keyword that changes the math and
is not implemented, naming the feature and the model. The `**kwargs` that the model's forward
threads through (transformers' `TransformersKwargs`: position ids, packed-sequence lengths, ...)
are checked by name at every call (`check_call_kwargs`).

Every keyword is in exactly one of:
    HANDLED   implemented by prism attention (dropout only at inference)
    IGNORED   no effect on the attention math (sdpa_attention_forward ignores them as well)
    REFUSED   changes the math, not implemented: refused when not None/0/False
Anything else is unknown and refused.
"""

from __future__ import annotations

import ast
import functools
import inspect
import sys
import textwrap

HANDLED = {
    "dropout": "attention dropout (inference only: model.eval())",
    "scaling": "logit scale",
    "is_causal": "causal mask",
    "sliding_window": "sliding-window attention",
    "softcap": "logit soft-capping",
}
IGNORED = {
    "position_ids": "positions are already in q and k (rotary embeddings)",
    "cache_position": "positions are already in q and k",
    "use_cache": "a cache flag",
    "output_attentions": "attention weights are not returned (None, as sdpa)",
    "output_hidden_states": "a flag of the model's output",
    "output_router_logits": "a flag of the model's output",
    "num_items_in_batch": "a loss normaliser",
    "deterministic": "a flash-attention kernel flag",
    "past_key_values": "the cache, already applied to k and v",
    "position_embeddings": "rotary embeddings, already applied to q and k",
    "layer_idx": "an index",
    "return_dict": "a flag of the model's output",
}
REFUSED = {
    "s_aux": "attention-sink logits (s_aux)",
    "sinks": "attention-sink logits (sinks)",
    "position_bias": "an additive position bias (relative attention)",
    "head_mask": "a per-head mask",
    "cu_seq_lens_q": "packed sequences (cu_seq_lens_q)",
    "cu_seq_lens_k": "packed sequences (cu_seq_lens_k)",
    "max_length_q": "packed sequences (max_length_q)",
    "max_length_k": "packed sequences (max_length_k)",
    "seq_idx": "packed sequences (seq_idx)",
    "encoder_hidden_states": "cross-attention (encoder_hidden_states)",
    "encoder_attention_mask": "cross-attention (encoder_attention_mask)",
}
KNOWN = set(HANDLED) | set(IGNORED) | set(REFUSED)
_POSITIONAL = ("module", "query", "key", "value", "attention_mask")
RUNTIME = object()  # a keyword whose value is a local of the forward (known only at the call)


def _is_interface(node: ast.AST) -> bool:
    """The expression that picks the attention function: mentions ALL_ATTENTION_FUNCTIONS."""
    return any((isinstance(n, ast.Name) and n.id == "ALL_ATTENTION_FUNCTIONS")
               or (isinstance(n, ast.Attribute) and n.attr == "ALL_ATTENTION_FUNCTIONS") for n in ast.walk(node))


@functools.lru_cache(maxsize=None)
def call_keywords(cls) -> tuple[tuple[str, str], ...] | None:
    """(name, source of the value) of every keyword of the attention-function call in
    `cls.forward`, or None when the forward does not call transformers' attention interface."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls.forward)))
    except (OSError, TypeError, SyntaxError):
        return None
    names = set()
    for node in ast.walk(tree):  # `attention_interface = ALL_ATTENTION_FUNCTIONS...` (or annotated)
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and _is_interface(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    out, found = [], False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names:
            found = True
            out += [(kw.arg, ast.unparse(kw.value)) for kw in node.keywords if kw.arg is not None]
    return tuple(out) if found else None


def eager_parameters(cls) -> tuple[str, ...]:
    """Keyword parameters of the family's own `eager_attention_forward` (its module's), past the
    positional ones; () when it has none."""
    fn = getattr(sys.modules.get(cls.__module__), "eager_attention_forward", None)
    if fn is None:
        return ()
    params = inspect.signature(fn).parameters.values()
    return tuple(p.name for p in params if p.name not in _POSITIONAL and p.kind is not p.VAR_KEYWORD)


def module_features(module) -> dict:
    """name -> value of every keyword the module's attention call passes, evaluated on the module
    (RUNTIME for a local of its forward, e.g. position_ids). Raises NotImplementedError for a
    keyword that is neither handled, ignored nor refused."""
    cls = type(module)
    keywords = call_keywords(cls) or ()
    out = {}
    for name in [n for n, _ in keywords] + list(eager_parameters(cls)):
        if name not in KNOWN:
            raise NotImplementedError(
                f"{cls.__name__} passes `{name}` to its attention function, which prism attention does not know "
                f"(it handles {sorted(HANDLED)}, ignores {sorted(IGNORED)}, refuses {sorted(REFUSED)}); "
                "use attn_implementation='sdpa' or 'eager' for this model")
    for name, source in keywords:
        try:  # simple expressions of the module: self.sliding_window, getattr(self.config, ...), ...
            out[name] = eval(source, {"getattr": getattr, "__builtins__": {}}, {"self": module})  # noqa: S307
        except Exception:  # a local of the forward (position_ids=position_ids): known at the call
            out[name] = RUNTIME
    return out


def is_set(value) -> bool:
    """A refused feature is off when its value is None, 0 or False."""
    if value is None or value is RUNTIME or value is False:
        return False
    if isinstance(value, (int, float)) and value == 0:
        return False
    return True


def check_call_kwargs(module, kwargs: dict) -> None:
    """Refuse, at a call, a keyword that is unknown or a refused feature that is on."""
    for name, value in kwargs.items():
        if name not in KNOWN:
            raise NotImplementedError(f"{type(module).__name__}'s attention call passed `{name}`, which prism "
                                      "attention does not know; use attn_implementation='sdpa' or 'eager' for this model")
        if name in REFUSED and is_set(value):
            raise NotImplementedError(f"{type(module).__name__} uses {REFUSED[name]}, which prism attention does not "
                                      "implement; use attn_implementation='sdpa' or 'eager' for this model")
