"""prism-run's run job: one request on the MPI ranks; rank 0 prints the report.

    mpirun -n 4 prism-run --input "Edge devices share the work."
    run_job(RunOptions(model="minilm", text="Edge devices share the work.", preset="edge"))

Rank 0 reads the input (`base.start`), tokenizes it and checks it fits the model; every rank then
runs it (`distributed.run_distributed`), the last rank decoding when tokens are to be generated.
Each rank's phase, as the messages name it: start, loading, handshake, request, forward layer K,
generation token T (the decoding rank; the others: generation), gather.
"""

from __future__ import annotations

from ..config import PrismConfig
from ..distributed.runtime import run_distributed
from ..distributed.faults import agree_rank0
from .base import Started, on_ranks, start
from .options import RunOptions
from .request import make_request, print_result, read_text


def run_job(opts: RunOptions) -> int:
    """The whole run job on this MPI rank; returns the exit code."""
    return on_ranks(opts, lambda comm: run_on_rank(opts, comm))


def run_on_rank(opts: RunOptions, comm) -> None:
    job = start(opts, comm, lambda: read_text(opts))
    req = agree_rank0(comm, lambda: make_request(job.tok, opts, job.files, job.runner.max_positions, job.pooling))
    distribute(opts, comm, job, req, job.config)


def eos_for(opts: RunOptions, job: Started) -> int | None:
    """The token that ends generation early (decoders that generate), else None."""
    return job.tok.eos_token_id if (opts.generate and job.runner.kind == "decoder") else None


def distribute(opts: RunOptions, comm, job: Started, req, config: PrismConfig, runner=None) -> None:
    """req (on rank 0; None elsewhere) on every rank under config (runner: the model as configured
    with it; job.runner by default); rank 0 prints the report."""
    runner = job.runner if runner is None else runner
    res = run_distributed(runner, comm, req, eos=eos_for(opts, job), progress=comm.rank == comm.size - 1)
    if comm.rank == 0:
        print_result(opts, runner.model, job.tok, res, comm.size, config, {**job.seconds, **res.seconds},
                     simulated=False)
