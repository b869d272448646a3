"""prism-run's simulate job: one request with all its partitions in this one process (no MPI);
the same result as the run job, the bytes from the cost model.

    prism-run --simulate 4 --input "..." --json

Checked in the run job's order: the settings, the input, then the model. An error is one line
on stderr and exit code 2. Refused as one of several MPI ranks (it would run the whole job on
each).
"""

from __future__ import annotations

import os
import sys
import time

import torch

from .. import hf
from ..calibrate import delta_codes_on_first_use, dense_layers_on_first_use
from ..hf import max_positions
from ..in_process import run_simulated
from .options import SimulateOptions
from .request import load_model, make_request, print_result, read_text

EXIT_BAD_INPUT = 2


def mpi_world_size() -> int:
    """How many ranks mpiexec started this process among (1 when not under mpiexec), read from
    the launcher's environment without starting MPI (MPICH/Hydra, Open MPI, PMIx)."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


def simulate_job(opts: SimulateOptions) -> int:
    """The whole simulate job in this process; returns the exit code."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    world = mpi_world_size()
    if world > 1:
        print(f"prism-run: error: --simulate runs all partitions in one process, but this is one of {world} "
              "MPI ranks; run it without mpiexec, or drop --simulate", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        simulate(opts)
    except ValueError as e:  # includes RequestError
        print(f"prism-run: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def simulate(opts: SimulateOptions) -> None:
    """The request with opts.simulate partitions; prints the report."""
    P = opts.simulate
    config = opts.config_for(P)
    text = read_text(opts)
    t0 = time.perf_counter()
    tok, model = load_model(opts)
    load_s = time.perf_counter() - t0
    if config.dense_layers == "auto":  # the tuned preset: calibrated on first use
        config = config.replace(dense_layers=dense_layers_on_first_use(model, tok, opts.model))
    if config.delta_codebook == "auto":  # the tuned preset on an encoder: fitted on first use
        delta_codes_on_first_use(model, tok, opts.model)
    config = hf.configure(model, config).config
    req = make_request(tok, opts, text, max_positions(model))
    res = run_simulated(model, req, P, eos=tok.eos_token_id if opts.generate else None, progress=True)
    print_result(opts, model, tok, res, P, config, {"load": load_s, **res.seconds}, simulated=True)
