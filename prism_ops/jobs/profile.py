"""prism-run's profile job: measure every rank's compute rates on this model and every link between
two ranks, on the machines and links of this launch, into the file the auto job plans by.

    mpirun -n 2 prism-run --profile p.json

Rank 0 checks it can write the file before any model loads (`base.start`); then every rank runs
`link_profile.measure_profile` (phase: profile).
"""

from __future__ import annotations

from ..input_files import check_output_path
from ..link_profile import measure_profile
from .base import on_ranks, start
from .options import ProfileOptions


def profile_job(opts: ProfileOptions) -> int:
    """The whole profile job on this MPI rank; returns the exit code."""
    return on_ranks(opts, lambda comm: profile_on_rank(opts, comm))


def profile_on_rank(opts: ProfileOptions, comm) -> None:
    job = start(opts, comm, lambda: check_output_path(opts.profile, "--profile"))
    comm.phase = "profile"
    measure_profile(job.runner, job.tok, comm, opts.profile, model_name=opts.model, config=job.config)
