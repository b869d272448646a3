"""How one attention layer is partitioned: one interface, two strategies, one request's state.

    base.py       PartitionStrategy (the interface: `attend`, `needs_hidden`), PrismLayer (what
                  one attention module holds), RequestState / request_scope / CachedRows
    simulated.py  SimulatedPartitions: all P partitions in this process (`partitioned_attention`)
    rank.py       RankPartition: this process is one MPI rank; it talks to the Communicator it is
                  given (all-gather of summaries overlapped with the local block)
    payload.py    a rank's per-layer payload as bytes (the layout is `prism_ops.wire`)

`prism_ops.hf.configure` builds the PrismLayers and picks the strategy (`comm=None`: simulated).
Nothing here imports transformers or mpi4py.
"""

from .base import (LAYER_ATTR, CachedRows, PartitionStrategy, PrismLayer, RequestState, attached_layers,
                   current_state, request_scope)
from .rank import RankPartition
from .simulated import SimulatedPartitions

__all__ = ["LAYER_ATTR", "CachedRows", "PartitionStrategy", "PrismLayer", "RankPartition", "RequestState",
           "SimulatedPartitions", "attached_layers", "current_state", "request_scope"]
