"""One request in one process, all partitions simulated: what `prism-run --simulate` and the
tests compare the MPI runs against.

The same request, checks and output steps as `prism_ops.distributed.runtime.run_distributed`
(`check_request`, `local_output`, `assemble`), with no MPI: the model is configured with
`prism_ops.hf.configure(..., comm=None)` (or not at all, for the exact model).
"""

from __future__ import annotations

import time

import torch

from . import cost
from .distributed.runtime import assemble, local_output, request_head
from .hf import runner as runner_of
from .request_types import Request, Result, check_request, default_positions
from .strategy import request_scope


def run_simulated(model, req: Request, num_partitions: int, eos=None, progress=False, on_token=None) -> Result:
    """The request in one process; the model must be configured with comm=None (or not at all,
    for the exact model). The Result's bytes_per_layer are the cost model's (zeros for the exact
    model)."""
    runner = runner_of(model)
    B, N = check_request(runner, req, num_partitions)
    head = request_head(req, B, N, [(0, N)])  # req.bounds (a laid-out batch) is for run_distributed
    valid = req.mask.bool() if req.mask is not None else torch.ones(B, N, dtype=torch.bool)
    t0 = time.perf_counter()
    with torch.no_grad(), request_scope():
        pos = default_positions(B, N) if req.positions is None else req.positions.long()
        h, cache = runner.forward_local(0, N, ids=req.ids, positions=pos, mask=req.mask,
                                        pixel_values=req.pixel_values, use_cache=bool(req.generate))
        t1 = time.perf_counter()
        out = local_output(runner, head, h, cache, valid, True, eos, progress, on_token if req.stream else None, c0=0)
    seconds = {"forward": t1 - t0}
    if req.generate:
        seconds["decode"] = time.perf_counter() - t1
    return assemble(runner, head, [out], _bytes_per_layer(runner, N), seconds)


def _bytes_per_layer(runner, N: int) -> list[int]:
    """What the ranks would send per layer (summed over ranks; the cost model, which equals what the
    MPI runtime counts on the wire), or zeros for the exact model (nothing is sent)."""
    model = runner.model
    shape = cost.ModelShape.from_config(model.config)
    if runner.config is None or runner.config.num_partitions == 1:
        return [0] * shape.num_layers
    return cost.layer_bytes(shape, N, runner.config, causal=runner.kind == "decoder",
                            dtype=next(model.parameters()).dtype)
