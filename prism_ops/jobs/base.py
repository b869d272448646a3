"""What every job on MPI ranks shares: the fault policy around it, and the steps before its work.

`on_ranks(opts, job)` makes this rank's Communicator (with the emulated link asked for) and runs
job(comm) under `distributed.faults.guarded`: a rank that fails, or goes silent for
`opts.timeout` seconds, takes the whole job down (rank 0 prints why) instead of leaving it
hanging; an error every rank agreed on ends them all together with its code.

`start(opts, comm, read_files)` runs the agreed validation steps, in the same order in every
mode, so that ranks started in different modes meet at the handshake, which names the difference:

1. the settings, on every rank (`opts.config_for(comm.size)`, `faults.agree`);
2. rank 0's files (`read_files()`: the input, a profile, an output path; `faults.agree_rank0`);
3. the model and its pooling, loaded on every rank (a bad folder on any rank: exit 2 on all);
4. the handshake: model, weights, config, mode and versions (exit 3 otherwise);

an error found in 1-3 on any rank is agreed by all, so all exit with code 2 and one message from
rank 0. With --verbose rank 0 then prints the MPI library, every rank's host and the transport.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import hf
from ..calibrate import delta_codes_on_first_use, dense_layers_on_first_use
from ..config import PrismConfig
from ..distributed.control import allgather_json, bcast_json
from ..hf.delta_cache import delta_codes_path
from ..distributed.comm import Communicator
from ..distributed.handshake import fingerprint, handshake
from ..distributed.faults import agree, agree_rank0, guarded, leave_together
from ..distributed.transport import describe, format_transport
from ..models import pooling_for
from ..pooling import Pooling
from .options import RankOptions
from .request import load_model


@dataclass
class Started:
    """This rank's job once `start` has passed."""

    runner: object  # the model as hf.configure returned it (prism_ops.hf.HFRunner)
    tok: object
    config: PrismConfig  # as configured on the model (runner.config)
    pooling: Pooling
    files: object  # what read_files returned on rank 0 (None on the other ranks)
    seconds: dict  # {"load": ..., "handshake": ...}


def start(opts: RankOptions, comm, read_files=lambda: None) -> Started:
    """Steps 1-4 above on this rank."""
    config = agree(comm, lambda: opts.config_for(comm.size))
    files = agree_rank0(comm, read_files)
    comm.phase = "loading"
    t0 = time.perf_counter()
    tok, model = agree(comm, lambda: load_model(opts))
    pooling = agree(comm, lambda: pooling_for(opts.model))  # a bad sentence-transformers config: the same
    load_s = time.perf_counter() - t0
    if config.dense_layers == "auto":  # the tuned preset: rank 0's calibration, on every rank
        layers = agree_rank0(comm, lambda: dense_layers_on_first_use(model, tok, opts.model))
        config = config.replace(dense_layers=bcast_json(comm, layers))
    if config.delta_codebook == "auto":  # the tuned preset on an encoder: rank 0's codes, on every rank
        _share_delta_codes(comm, model, agree_rank0(comm, lambda: delta_codes_on_first_use(model, tok, opts.model)))
    runner = hf.configure(model, config, comm=comm)
    comm.phase = "handshake"
    t1 = time.perf_counter()
    handshake(comm, fingerprint(runner, model_name=opts.model, dtype=opts.dtype, mode=opts.mode))
    hand_s = time.perf_counter() - t1
    if opts.verbose:  # which library, transport and hosts (collective; rank 0 prints)
        info = describe(comm)
        if comm.rank == 0:
            print(format_transport(info, opts.link_mbit, opts.link_latency_ms), flush=True)
    return Started(runner, tok, runner.config, pooling, files, {"load": load_s, "handshake": hand_s})


def _share_delta_codes(comm, model, path) -> None:
    """Rank 0's cached delta codes (path, or None: the model takes none) into every rank's cache, sent
    only where a rank lacks that file (another host); the handshake then compares their bytes."""
    digest = bcast_json(comm, None if comm.rank or path is None else _digest(Path(path).read_bytes()))
    if digest is None:
        return
    mine = delta_codes_path(model)
    need = any(allgather_json(comm, mine is not None and (not mine.is_file() or _digest(mine.read_bytes()) != digest)))
    if not need:
        return
    data = comm.bcast_bytes(Path(path).read_bytes() if comm.rank == 0 else None)
    if comm.rank and mine is not None and (not mine.is_file() or _digest(mine.read_bytes()) != digest):
        mine.parent.mkdir(parents=True, exist_ok=True)
        tmp = mine.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, mine)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def on_ranks(opts: RankOptions, job) -> int:
    """job(comm) as this MPI rank's part of the job; returns the exit code (a fault on any rank
    aborts the whole job instead). The ranks of a multi-rank job leave together
    (`faults.leave_together`), done or having agreed on an error, and the command line exits
    with the code."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    comm = Communicator(link=opts.link, timeout_s=opts.timeout)
    code = guarded(comm, lambda: job(comm), prog="prism-run", debug=opts.debug)
    if comm.size > 1:
        leave_together(comm)
    return code
