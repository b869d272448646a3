"""prism-run's auto job: one request run the way a measured profile predicts is fastest.

    mpirun -n 2 prism-run --profile p.json               # the profile job measures ranks and links
    mpirun -n 2 prism-run --auto p.json --input "..."    # then every request is run the fastest way

Rank 0 reads the profile once with the input (bounded and checked against this job's ranks and
model, `input_files.read_profile`), matches it with the model's shape and every rank's host
(`link_profile.check_profile`), and plans the request (`link_profile.plan_request`): the
partition bounds and chunk order that the measured rates predict fastest (`split.balanced_split`;
a decoder's last chunk, which decodes, on a fastest host), with a setting that is just a preset
(no explicit segment size or levers) also the fastest setting within that preset's quality
budget; or the fastest host alone, when that is faster. `--weights` fixes the bounds by hand.

When the plan puts chunks on ranks out of rank order, the job runs on a reordered communicator
(`Communicator.reorder`: its rank c holds chunk c), whose rank 0 makes the request from the text
rank 0 sends it; that rank prints the report.
"""

from __future__ import annotations

from .. import hf
from ..config import DEFAULT_PRESET, PrismConfig
from ..cost import ModelShape
from ..distributed.control import bcast_json
from ..distributed.faults import agree_rank0
from ..in_process import run_simulated
from ..input_files import read_profile
from ..link_profile import check_profile, host_names, plan_request
from .base import on_ranks, start
from .options import AutoOptions
from .request import make_request, print_result, read_text
from .run import distribute, eos_for


def auto_job(opts: AutoOptions) -> int:
    """The whole auto job on this MPI rank; returns the exit code."""
    return on_ranks(opts, lambda comm: auto_on_rank(opts, comm))


def auto_on_rank(opts: AutoOptions, comm) -> None:
    job = start(opts, comm, lambda: (read_profile(opts.auto, "--auto", comm.size, opts.model), read_text(opts)))
    asked = None if (opts.segment_size is not None or opts.levers) else (opts.preset or DEFAULT_PRESET)
    hosts = host_names(comm)
    runner, model = job.runner, job.runner.model

    def ask():  # rank 0: the request, and the plan the profile predicts fastest for it
        prof, text = job.files
        check_profile(prof, "--auto", model=opts.model, shape=ModelShape.from_config(model.config), hosts=hosts)
        req = make_request(job.tok, opts, text, runner.max_positions, job.pooling)
        decoder = runner.kind == "decoder"
        logits = decoder and req.output == "logits" and not req.generate  # the last chunk sends its last row back
        return req, plan_request(prof, req.ids.shape[1], job.config, preset=asked, causal=decoder,
                                 exchanges=tuple(dict.fromkeys(("kv", job.config.exchange))),
                                 dtype=next(model.parameters()).dtype,
                                 result_bytes=4 * model.config.hidden_size if logits else 0)

    req, pick = agree_rank0(comm, ask) or (None, None)
    pick = bcast_json(comm, pick)
    order = pick["order"] if pick["mode"] == "distributed" else [pick["fastest"]]
    if order != list(range(len(order))):  # the request starts on another rank: it makes it from the text
        text = comm.bcast_bytes(job.files[1].encode() if comm.rank == 0 else None).decode()
        if comm.rank == order[0]:
            req = make_request(job.tok, opts, text, runner.max_positions, job.pooling)
    if pick["mode"] == "local":
        if comm.rank == pick["fastest"]:
            # One device is faster: the fastest rank runs the exact model, the others stand by.
            model.set_attn_implementation("sdpa")
            res = run_simulated(model, req, 1, eos=eos_for(opts, job), progress=True)
            print_result(opts, model, job.tok, res, 1, job.config, {"load": job.seconds["load"], **res.seconds},
                         simulated=False)
        return
    run_comm = comm if order == list(range(comm.size)) else comm.reorder(order)
    config = job.config
    if pick["preset"] is not None:  # a setting within the asked budget that is faster on these links
        config = PrismConfig.from_preset(comm.size, pick["preset"], exchange=pick["exchange"], backend=config.backend)
    if run_comm is not comm or config != job.config:
        runner = hf.configure(model, config, comm=run_comm)
    if run_comm.rank == 0:
        req.bounds = [tuple(b) for b in pick["bounds"]]
        if opts.verbose:
            print(f"auto: {pick['preset'] or 'as asked'}, {config.exchange} exchange, chunks on ranks {order}, "
                  f"bounds {req.bounds}; predicted {pick['predicted_s']:.3f} s (fastest rank alone "
                  f"{pick['local_s']:.3f} s)", flush=True)
    distribute(opts, run_comm, job, req, config, runner)
