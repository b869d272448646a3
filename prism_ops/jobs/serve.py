"""prism-run's serve job: every rank loads the model once, then the ranks answer requests until
stopped (`prism_ops.serving`: OpenAI-style HTTP on rank 0, JSON lines on stdin).

    mpirun -n 2 prism-run --serve --port 8000
    prism-run --serve --hosts H1,H2,H3          # supervised: `serving.frontend`, outside MPI

The only job that imports `prism_ops.serving`; its HTTP side (starlette, uvicorn) loads only
when HTTP is on. Phases: the shared start (`base.start`), then serving (idle) and serving.
"""

from __future__ import annotations

from ..serving.bridge import run_supervised
from ..serving.engine import Engine
from ..serving.openai_api import Served
from ..serving.service import run_service
from .base import on_ranks, start
from .options import ServeOptions


def serve_job(opts: ServeOptions) -> int:
    """The whole service on this MPI rank; returns the exit code once it has stopped."""
    return on_ranks(opts, lambda comm: serve_on_rank(opts, comm))


def serve_on_rank(opts: ServeOptions, comm) -> None:
    job = start(opts, comm)  # a service reads no files: its inputs come with the requests
    runner = job.runner
    served = Served(opts.model, runner.kind == "decoder", runner.max_positions,
                    width=runner.model.config.hidden_size * len(job.pooling.modes), vocab_size=len(job.tok))
    engine = Engine(runner, job.tok, comm, served, load_s=job.seconds["load"], pooling=job.pooling,
                    batch_tokens=opts.batch_tokens, split_min_tokens=opts.split_min_tokens,
                    raw=opts.frontend is not None)
    if opts.frontend is not None:  # launched by a front end: answer it (rank 0 dials it back)
        run_supervised(engine, opts.frontend, opts.frontend_job or "", opts.timeout)
        return
    run_service(engine, host=opts.host, port=opts.port, api_key=opts.api_key, http=opts.http)
