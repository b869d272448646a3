"""prism-ops: PRISM partitioned attention over segment means.

Each rank of a distributed inference owns a contiguous slice of the sequence and attends
exactly to its own tokens plus segment-mean summaries of the other ranks' keys and values.
Layout everywhere: `[B, H, T, D]`, as SDPA and Hugging Face use.

    segment_means          summaries of one partition's K or V, with counts
    prism_attention        local queries -> [local K/V | summary rows], one softmax
    merge_attention        exact log-sum-exp merge of two partial attentions
    partitioned_attention  one PRISM layer for P ranks, simulated in one process
    partition_bounds       the contiguous chunks P ranks own
    PrismConfig            one PRISM setting (levers, presets), validated once
    request_scope          one request's state across a forward and its decoding steps

Triton is imported only when a Triton backend is used, so this package imports on machines
with no GPU and no Triton.
"""

import sys as _sys

from ._layout import use_checkout_folders as _use_checkout_folders

_use_checkout_folders(_sys.modules[__name__])  # kernels/ and distributed/ beside prism_ops/ in a checkout

from .ops.merge_attention import merge_attention  # noqa: E402
from .ops.partitioned_attention import partition_bounds, partitioned_attention  # noqa: E402
from .ops.prism_attention import prism_attention  # noqa: E402
from .ops.segment_means import num_summary_rows, segment_means  # noqa: E402
from .config import PRESETS, PrismConfig  # noqa: E402
from .strategy import RequestState, request_scope  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "segment_means",
    "prism_attention",
    "merge_attention",
    "partitioned_attention",
    "partition_bounds",
    "num_summary_rows",
    "PrismConfig",
    "PRESETS",
    "RequestState",
    "request_scope",
]
