"""prism-run's auto job: one request on rank 0 alone or on every rank, whichever a link profile
says is faster.

    mpirun -n 2 prism-run --profile p.json               # the profile job measures the link
    mpirun -n 2 prism-run --auto p.json --input "..."    # then every request is run the fastest way

Rank 0 reads the profile once with the input (bounded and checked against this job's ranks,
`input_files.read_profile`) and picks (`link_profile.auto_choice`): with a setting that is just
a preset (no explicit segment size or levers), also the fastest setting within that preset's
quality budget. Every rank then runs the pick.
"""

from __future__ import annotations

from .. import hf
from ..config import DEFAULT_PRESET, PrismConfig
from ..distributed.control import bcast_json
from ..distributed.faults import agree_rank0
from ..in_process import run_simulated
from ..input_files import read_profile
from ..link_profile import auto_choice
from .base import on_ranks, start
from .options import AutoOptions
from .request import make_request, print_result, read_text
from .run import distribute, eos_for


def auto_job(opts: AutoOptions) -> int:
    """The whole auto job on this MPI rank; returns the exit code."""
    return on_ranks(opts, lambda comm: auto_on_rank(opts, comm))


def auto_on_rank(opts: AutoOptions, comm) -> None:
    job = start(opts, comm, lambda: (read_profile(opts.auto, "--auto", comm.size), read_text(opts)))
    asked = None if (opts.segment_size is not None or opts.levers) else (opts.preset or DEFAULT_PRESET)

    def ask():  # rank 0: the request, and what the profile says is fastest for it
        prof, text = job.files
        req = make_request(job.tok, opts, text, job.runner.max_positions, job.pooling)
        return req, auto_choice(prof, job.runner.model, job.config, asked, req.ids.shape[1])

    req, pick = agree_rank0(comm, ask) or (None, None)
    pick = bcast_json(comm, pick)
    runner, model = job.runner, job.runner.model
    if pick["preset"] is not None:  # a setting within the asked budget that is faster on this link
        new = PrismConfig.from_preset(comm.size, pick["preset"], exchange=pick["exchange"])
        runner = hf.configure(model, new, comm=comm)
    config = runner.config
    if pick["mode"] == "distributed":
        distribute(opts, comm, job, req, config, runner)
    elif comm.rank == 0:
        # One device is faster on this link: rank 0 runs the exact model, the others stand by.
        model.set_attn_implementation("sdpa")
        res = run_simulated(model, req, 1, eos=eos_for(opts, job), progress=True)
        print_result(opts, model, job.tok, res, 1, config, {"load": job.seconds["load"], **res.seconds},
                     simulated=False)
