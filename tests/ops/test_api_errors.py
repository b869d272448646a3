"""A fuzz-style table over the Python API: bad values per argument of every public op and of
PrismConfig, each refused with a ValueError or TypeError whose message names the argument.

Each row is (call, argument, label, bad value): the call gets valid arguments except the one
replaced. Kinds of bad value: empty, wrong type, negative, zero, huge, NaN, inf, wrong dtype,
wrong shape, wrong device (where a second device exists). Small tensors only: the whole table
runs in a few seconds.
"""

import math
import re

import pytest
import torch

from prism_ops import (PrismConfig, hf, merge_attention, num_summary_rows, partition_bounds, partitioned_attention,
                       prism_attention, segment_means)

NAN, INF = math.nan, math.inf
B, H, HKV, T, D, S = 1, 4, 2, 10, 8, 3


def f32(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


# Bad values by kind: (label, value).
WRONG_TYPES = [("none", None), ("str", "4"), ("list", [4]), ("bool", True)]
INT_GE1 = [("zero", 0), ("negative", -1), ("float", 2.0), ("nan", NAN), ("inf", INF)] + WRONG_TYPES
INT_GE0 = [("negative", -1), ("float", 1.5), ("nan", NAN), ("inf", INF)] + WRONG_TYPES
FLAG = [("str", "no"), ("int", 1), ("none", None), ("float", 0.0), ("nan", NAN)]
SCALE = [("zero", 0), ("negative", -0.5), ("nan", NAN), ("inf", INF), ("-inf", -INF), ("str", "0.1"), ("bool", True),
         ("list", [0.1]), ("complex", 1j)]
BACKEND = [("empty", ""), ("bogus", "bogus"), ("none", None), ("int", 1), ("list", ["auto"])]
WEIGHTS_2 = [("str", "21"), ("empty-str", ""), ("empty", []), ("short", [1]), ("long", [1, 2, 3]), ("zero", [0, 1]),
             ("negative", [-1, 1]), ("nan", [NAN, 1]), ("inf", [INF, 1]), ("overflow", [1e308, 1e308]),
             ("str-item", ["a", 1]), ("bool-item", [True, 1]), ("number", 5), ("dict", {1: 2}), ("tensor", torch.ones(2))]
BITS = [("one", 1), ("five", 5), ("sixteen", 16), ("negative", -1), ("str", "4"), ("float", 4.0), ("bool", True),
        ("none", None), ("nan", NAN)]
CLUSTER_ITERS = INT_GE0 + [("huge", 10**11)]
TENSOR = [("none", None), ("list", [[1.0]]), ("number", 1.0)]


def rows(call, argument, values):
    return [(call, argument, label, value) for label, value in values]


# Valid arguments of each call; a row replaces one of them.
def prism_kwargs():
    return dict(q=f32(B, H, T, D), k=f32(B, HKV, T, D), v=f32(B, HKV, T, D), k_sum=f32(B, HKV, S, D),
                v_sum=f32(B, HKV, S, D), sum_counts=torch.tensor([4, 2, 1]), causal=False, scale=None,
                log_count_bias=True, return_lse=False, k_valid=None, backend="auto")


def partitioned_kwargs():
    return dict(q=f32(B, H, T, D), k=f32(B, HKV, T, D), v=f32(B, HKV, T, D), num_partitions=2, segment_size=3,
                causal=False, scale=None, log_count_bias=True, sink_tokens=0, halo=0, valid=None, weights=None,
                cluster_iters=0, summary_bits=0, backend="auto", return_rows=False)


def hidden_kwargs():  # hidden-feature exchange: hidden [B, T, d] and (w_k, w_v) [Hkv * D, d]
    return partitioned_kwargs() | dict(summary_bits=4, hidden=f32(B, T, 6), kv_weight=(f32(HKV * D, 6), f32(HKV * D, 6)))


def segment_kwargs():
    return dict(x=f32(B, HKV, T, D), segment_size=3, valid=None, sink_tokens=0, backend="auto")


def merge_kwargs():
    return dict(out_a=f32(B, H, T, D), lse_a=f32(B, H, T), out_b=f32(B, H, T, D), lse_b=f32(B, H, T))


CALLS = {
    "prism_attention": (prism_attention, prism_kwargs),
    "partitioned_attention": (partitioned_attention, partitioned_kwargs),
    "partitioned_attention(hidden)": (partitioned_attention, hidden_kwargs),
    "segment_means": (segment_means, segment_kwargs),
    "merge_attention": (merge_attention, merge_kwargs),
    "partition_bounds": (partition_bounds, lambda: dict(T=T, num_partitions=2, weights=None)),
    "num_summary_rows": (num_summary_rows, lambda: dict(T=T, segment_size=3, sink_tokens=0)),
    "PrismConfig": (PrismConfig, lambda: dict(num_partitions=2, segment_size=4)),
    "from_preset": (PrismConfig.from_preset, lambda: dict(num_partitions=2, preset="edge")),
}

QKV_SHAPES = [  # (argument, label, value) for the q/k/v of both attention ops
    ("q", "3-D", f32(B, H, T)), ("q", "int", f32(B, H, T, D, dtype=torch.int64)),
    ("q", "bool", f32(B, H, T, D, dtype=torch.bool)), ("q", "head-dim-0", f32(B, H, T, 0)),
    ("k", "batch", f32(B + 1, HKV, T, D)), ("k", "head-dim", f32(B, HKV, T, D + 1)),
    ("k", "dtype", f32(B, HKV, T, D, dtype=torch.float64)), ("k", "heads", f32(B, 3, T, D)),
    ("k", "no-heads", f32(B, 0, T, D)), ("k", "5-D", f32(B, HKV, T, D, 1)),
    ("v", "one-token-short", f32(B, HKV, T - 1, D)), ("v", "dtype", f32(B, HKV, T, D, dtype=torch.float16)),
    ("v", "head-dim", f32(B, HKV, T, D - 1)),
]

TABLE = (
    [("prism_attention", a, label, value) for a, label, value in QKV_SHAPES]
    + [("partitioned_attention", a, label, value) for a, label, value in QKV_SHAPES]
    + rows("prism_attention", "q", TENSOR) + rows("prism_attention", "k", TENSOR) + rows("prism_attention", "v", TENSOR)
    + rows("prism_attention", "k_sum", [("shape", f32(B, HKV, S, D + 1)), ("heads", f32(B, 1, S, D)),
                                        ("dtype", f32(B, HKV, S, D, dtype=torch.float64)), ("list", [1.0]),
                                        ("none", None)])
    + rows("prism_attention", "v_sum", [("shape", f32(B, HKV, S + 1, D)), ("none", None),
                                        ("dtype", f32(B, HKV, S, D, dtype=torch.bfloat16))])
    + rows("prism_attention", "sum_counts", [("nan", torch.tensor([4.0, NAN, 1.0])), ("inf", torch.tensor([INF, 2.0, 1.0])),
                                             ("negative", torch.tensor([4, -2, 1])), ("shape", torch.ones(4)),
                                             ("shape-2d", torch.ones(2, 3)), ("bool", torch.ones(3, dtype=torch.bool)),
                                             ("complex", torch.ones(3, dtype=torch.complex64)), ("list", [4, 2, 1]),
                                             ("none", None)])
    + rows("prism_attention", "k_valid", [("shape", torch.ones(B, T + 1, dtype=torch.bool)),
                                          ("float", torch.ones(B, T)), ("list", [[True] * T])])
    + rows("prism_attention", "causal", FLAG) + rows("prism_attention", "log_count_bias", FLAG)
    + rows("prism_attention", "return_lse", FLAG) + rows("prism_attention", "scale", SCALE)
    + rows("prism_attention", "backend", BACKEND)
    + rows("partitioned_attention", "num_partitions", INT_GE1 + [("more-than-T", T + 1), ("huge", 10**11)])
    + rows("partitioned_attention", "segment_size", INT_GE1)
    + rows("partitioned_attention", "sink_tokens", INT_GE0) + rows("partitioned_attention", "halo", INT_GE0)
    + rows("partitioned_attention", "cluster_iters", CLUSTER_ITERS)
    + rows("partitioned_attention", "summary_bits", BITS) + rows("partitioned_attention", "weights", WEIGHTS_2)
    + rows("partitioned_attention", "causal", FLAG) + rows("partitioned_attention", "log_count_bias", FLAG)
    + rows("partitioned_attention", "return_rows", FLAG) + rows("partitioned_attention", "scale", SCALE)
    + rows("partitioned_attention", "backend", BACKEND)
    + rows("partitioned_attention", "valid", [("shape", torch.ones(B, T - 1, dtype=torch.bool)),
                                              ("int", torch.ones(B, T, dtype=torch.int64)), ("list", [[True] * T])])
    + rows("partitioned_attention(hidden)", "hidden", TENSOR[1:] + [("shape", f32(B, T - 1, 6)), ("no-features", f32(B, T, 0)),
                                                          ("int", f32(B, T, 6, dtype=torch.int64)), ("4-D", f32(B, 1, T, 6))])
    + rows("partitioned_attention(hidden)", "kv_weight", [("none", None), ("one", f32(HKV * D, 6)), ("three", (f32(HKV * D, 6),) * 3),
                                                          ("shape", (f32(HKV * D, 6), f32(HKV * D, 5))),
                                                          ("dtype", (f32(HKV * D, 6), f32(HKV * D, 6, dtype=torch.float64))),
                                                          ("list-items", ([1.0], [1.0]))])
    + rows("segment_means", "x", TENSOR + [("3-D", f32(HKV, T, D)), ("int", f32(B, HKV, T, D, dtype=torch.int32))])
    + rows("segment_means", "segment_size", INT_GE1) + rows("segment_means", "sink_tokens", INT_GE0)
    + rows("segment_means", "valid", [("shape", torch.ones(B + 1, T, dtype=torch.bool)), ("float", torch.ones(B, T))])
    + rows("segment_means", "backend", BACKEND)
    + rows("merge_attention", "out_a", TENSOR + [("int", f32(B, H, T, D, dtype=torch.int64)), ("3-D", f32(B, H, T))])
    + rows("merge_attention", "out_b", [("dtype", f32(B, H, T, D, dtype=torch.float64)), ("shape", f32(B, H, T + 1, D)),
                                        ("int", f32(B, H, T, D, dtype=torch.int32))] + TENSOR)
    + rows("merge_attention", "lse_a", [("int", f32(B, H, T, dtype=torch.int64)), ("half", f32(B, H, T, dtype=torch.float16)),
                                        ("shape", f32(B, H, T + 1)), ("4-D", f32(B, H, T, 1))] + TENSOR)
    + rows("merge_attention", "lse_b", [("bool", f32(B, H, T, dtype=torch.bool)), ("shape", f32(B, H + 1, T))])
    + rows("partition_bounds", "T", [("negative", -1), ("float", 10.0), ("str", "10"), ("none", None)])
    + rows("partition_bounds", "num_partitions", INT_GE1 + [("more-than-T", T + 1)])
    + rows("partition_bounds", "weights", WEIGHTS_2)
    + rows("num_summary_rows", "T", [("negative", -1), ("float", 10.0), ("none", None)])
    + rows("num_summary_rows", "segment_size", INT_GE1) + rows("num_summary_rows", "sink_tokens", INT_GE0)
    + rows("PrismConfig", "num_partitions", INT_GE1) + rows("PrismConfig", "segment_size", INT_GE1)
    + rows("PrismConfig", "sink_tokens", INT_GE0) + rows("PrismConfig", "halo", INT_GE0)
    + rows("PrismConfig", "log_count_bias", FLAG) + rows("PrismConfig", "weights", WEIGHTS_2)
    + rows("PrismConfig", "cluster_iters", CLUSTER_ITERS) + rows("PrismConfig", "summary_bits", BITS)
    + rows("PrismConfig", "exchange", [("empty", ""), ("bogus", "qkv"), ("none", None), ("int", 1), ("list", ["kv"])])
    + rows("PrismConfig", "backend", BACKEND)
    + rows("from_preset", "preset", [("empty", ""), ("bogus", "fastest"), ("int", 1), ("list", ["edge"])])
)


@pytest.mark.parametrize("call,argument,label,value", TABLE,
                         ids=[f"{c}-{a}-{label}" for c, a, label, _ in TABLE])
def test_bad_argument_is_refused_naming_it(call, argument, label, value):
    fn, valid = CALLS[call]
    kwargs = valid() | {argument: value}
    with pytest.raises((ValueError, TypeError)) as err:
        fn(**kwargs)
    message = str(err.value)
    # The argument's name as a word (k, not the k of "kv"; weights[0] counts as weights).
    assert re.search(rf"(?<![\w.]){re.escape(argument)}(?![\w])", message), f"{argument} not named in: {message}"


@pytest.mark.parametrize("call", list(CALLS))
def test_valid_arguments_of_the_table_run(call):
    """The table's baseline arguments are valid, so every refusal above is the replaced one's."""
    fn, valid = CALLS[call]
    fn(**valid())


def test_messages_name_the_value_and_what_is_allowed():
    """A few messages in full: argument, value and the allowed set or range."""
    cases = [
        (lambda: PrismConfig(2, 4, weights="21"), r"weights must be a list of 2 finite numbers > 0 \(one per partition\), got '21' of type str"),
        (lambda: PrismConfig(2, 4, weights=[INF, 1]), r"weights must be .*, got weights\[0\] = inf in \[inf, 1\]"),
        (lambda: PrismConfig(2, 4, backend="bogus"), r"backend must be one of \('auto', 'torch', 'triton'\), got 'bogus'"),
        (lambda: PrismConfig(2, 4, cluster_iters=10**11), r"cluster_iters must be in \[0, 100\] \(0 = positional segments\), got 100000000000"),
        (lambda: prism_attention(**prism_kwargs() | dict(scale=NAN)), r"scale must be None \(1/sqrt\(D\)\) or a finite number > 0, got nan"),
        (lambda: prism_attention(**prism_kwargs() | dict(sum_counts=torch.tensor([4.0, NAN, 1.0]))),
         r"sum_counts must be finite and >= 0 \(tokens per summary row\), got nan"),
        (lambda: prism_attention(**prism_kwargs() | dict(q=f32(B, H, T, 0), k=f32(B, HKV, T, 0), v=f32(B, HKV, T, 0),
                                                         k_sum=None, v_sum=None, sum_counts=None)),
         r"q's head dim D \(last axis\) must be >= 1, got q of shape \[1, 4, 10, 0\]"),
        (lambda: partitioned_attention(**partitioned_kwargs() | dict(v=f32(B, HKV, T - 1, D))),
         r"v must have the shape of k \[1, 2, 10, 8\], got \[1, 2, 9, 8\]"),
        (lambda: merge_attention(**merge_kwargs() | dict(out_b=f32(B, H, T, D, dtype=torch.float64))),
         r"out_b has dtype torch.float64 but out_a has torch.float32; they must match"),
        (lambda: prism_attention(**prism_kwargs() | dict(causal="no")), r"causal must be True or False, got 'no'"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device type")
@pytest.mark.parametrize("argument", ["k", "v", "k_sum", "sum_counts", "k_valid"])
def test_device_mismatch_names_the_argument(argument):
    kwargs = prism_kwargs() | dict(k_valid=torch.ones(B, T, dtype=torch.bool))
    kwargs[argument] = kwargs[argument].cuda()
    with pytest.raises(ValueError, match=rf"{argument}.* is on cuda"):
        prism_attention(**kwargs)


class NotAModel:
    def modules(self):
        return []


@pytest.mark.parametrize("model,config,comm,message", [
    (object(), None, None, r"model must be a Hugging Face transformers model .* got object"),
    (NotAModel(), None, None, r"model must be a Hugging Face transformers model .* got NotAModel"),
    (torch.nn.Linear(2, 2), None, None, r"model must be a Hugging Face transformers model .* got Linear"),
    ("gpt2", {"num_partitions": 2}, None, r"config must be a prism_ops.PrismConfig .* got dict"),
    ("gpt2", PrismConfig(2, 4), "comm", r"comm must be a prism_ops.distributed.comm.Communicator .* got str"),
])
def test_hf_configure_refuses_what_it_cannot_configure(model, config, comm, message):
    transformers = pytest.importorskip("transformers")
    if model == "gpt2":
        model = transformers.GPT2Model(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20))
    with pytest.raises(TypeError, match=message):
        hf.configure(model, config, comm=comm)


def test_hf_configure_refuses_a_model_without_known_attention():
    transformers = pytest.importorskip("transformers")
    # A transformers model with no attention module that goes through the attention interface.
    model = transformers.MobileNetV2Model(transformers.MobileNetV2Config(num_channels=3, image_size=32))
    with pytest.raises(ValueError, match="model MobileNetV2Model has no attention module that calls transformers' "
                                         "attention interface"):
        hf.configure(model, num_partitions=2, segment_size=4)
