"""prism-run's supervised serve job: `prism-run --serve --hosts H1,H2,...`, started without mpirun.

This process is the front end (`prism_ops.serving.frontend`): it serves HTTP and launches the
serve job (`jobs.serve`, with `--frontend`) on the healthy hosts with mpiexec, re-forming it when
a host is lost. It runs no model itself: it loads the tokenizer only.
"""

from __future__ import annotations

from ..serving.frontend import supervise
from .options import SuperviseOptions


def supervise_job(opts: SuperviseOptions) -> int:
    """The front end until it is stopped; returns the exit code."""
    return supervise(opts)
