"""prism-run's job as a library: one request over MPI ranks (or simulated in one process).

    run(RunOptions(model="minilm", text="Edge devices share the work.", preset="edge"))

Before any model loads, every rank checks the settings (one `PrismConfig`, built here from the
options once the rank count is known) and rank 0 reads its files (`input_files`: the input, a
profile; bounded and checked); an error found on any rank is agreed by all
(`distributed.faults.agree`), so all exit with code 2 and one message from rank 0. Every rank
then loads the model (a bad folder on any rank: the same) and checks by a handshake that all
ranks agree (model, weights, config, mode, versions; code 3 otherwise). Rank 0 tokenizes the
input and prints the report (`prism_ops.report`). A rank that fails, or goes silent for
`timeout` seconds, takes the whole job down (rank 0 prints why) instead of leaving it hanging
(`prism_ops.distributed.faults.guarded`, `prism_ops.distributed.liveness`). Each rank's phase,
as the messages name it: start, loading, handshake, profile, request, forward layer K,
generation token T (the decoding rank; the others: generation), gather, serving (idle).

With `auto`, rank 0 chooses between running alone and distributed from a link profile
(`prism_ops.link_profile`) that `profile` measured on the same machines and link, and, for a
budgeted preset, the fastest setting within its quality budget (`auto_choice`).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import torch

from . import cost, hf
from .config import DEFAULT_PRESET, PrismConfig
from .distributed import (Communicator, EmulatedLink, Request, RequestError, fingerprint, guarded, handshake,
                          run_distributed, run_simulated)
from .distributed.comm import DEFAULT_TIMEOUT_S
from .distributed.control import bcast_json
from .distributed.faults import agree, agree_rank0, leave_together
from .distributed.runtime import max_positions, model_kind
from .distributed.transport import describe, format_transport
from .input_files import CHARS_PER_POSITION, check_output_path, read_profile, read_text_file
from .link_profile import auto_choice, measure_profile
from .models import load, pooling_for
from .pooling import Pooling
from .report import build_report, print_report
from .serving.engine import Engine
from .serving.openai_api import Served
from .serving.service import run_service

EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class RunOptions:
    """What prism-run was asked. The PRISM settings (preset, segment_size, levers) become one
    PrismConfig in `config_for`, where they are checked."""

    model: str = "minilm"
    text: str | None = None
    input_file: str | None = None
    preset: str | None = None
    segment_size: int | None = None
    levers: dict = field(default_factory=dict)
    output: str = "embedding"
    generate: int = 0
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    simulate: int | None = None
    json: bool = False
    dtype: str = "float32"
    threads: int = 0
    link_mbit: float | None = None
    link_latency_ms: float = 0.0
    timeout: float = DEFAULT_TIMEOUT_S  # seconds a rank may stay silent (no heartbeat), not a bound on work
    auto: str | None = None
    profile: str | None = None
    verbose: bool = False  # the per-layer byte table
    serve: bool = False  # answer requests until stopped (prism_ops.serving)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    http: bool = True  # with serve: HTTP on host:port (JSON lines on stdin are always answered)
    batch_tokens: int = 8192  # with serve: embedding requests queued together run as one batch of up to this
    # many tokens (padded); 0 runs them one at a time
    debug: bool = False  # show the traceback of an unexpected error

    def config_for(self, num_partitions: int) -> PrismConfig:
        """The PrismConfig for this many ranks: the preset and levers asked for, or DEFAULT_PRESET
        when neither a preset nor a segment size is given."""
        for name in ("generate", "top_k"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        preset = self.preset
        if preset is None and self.segment_size is None:
            preset = DEFAULT_PRESET
        return PrismConfig.from_preset(num_partitions, preset, self.segment_size, **self.levers)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def mode(self) -> str:
        """What the job does (part of the handshake: every rank must do the same)."""
        return "serve" if self.serve else "profile" if self.profile else "auto" if self.auto else "run"


def read_text(opts: RunOptions) -> str:
    """The input text: --input, or --input-file read bounded (`input_files.read_text_file`)."""
    if opts.input_file is not None:
        return read_text_file(opts.input_file, "--input-file")
    return opts.text


def read_inputs(opts: RunOptions, num_partitions: int) -> str | None:
    """Rank 0's files, checked before any model loads: the input text (None when there is none),
    the --auto profile, the --profile output path. ValueError naming the flag."""
    if opts.auto:
        read_profile(opts.auto, "--auto", num_partitions)
    if opts.profile:
        check_output_path(opts.profile, "--profile")
    if opts.text is None and opts.input_file is None:
        return None
    text = read_text(opts)
    if not text.strip():
        raise RequestError(f"the input is empty ({'--input' if opts.input_file is None else '--input-file'})")
    return text


def make_request(tok, opts: RunOptions, text: str | None = None, limit: int | None = None,
                 pooling: Pooling | None = None) -> Request:
    """The request for text (default: read_text); limit: the model's positions, if known;
    pooling: how an embedding is pooled (default: `models.pooling_for(opts.model)`)."""
    text = read_text(opts) if text is None else text
    if not text.strip():
        raise RequestError("the input is empty")
    if limit is not None and len(text) > CHARS_PER_POSITION * limit:
        # Refused before it is tokenized whole: no text this long fits the model's positions.
        raise RequestError(f"the input has {len(text):,} characters, far more than the model's {limit} positions")
    tok.model_max_length = 10**9  # the runtime checks the model's positions itself
    ids = torch.tensor([tok(text)["input_ids"]], dtype=torch.long)
    return Request(ids=ids, output=opts.output, generate=opts.generate, temperature=opts.temperature,
                   top_k=opts.top_k, top_p=opts.top_p, seed=opts.seed,
                   pooling=pooling_for(opts.model) if pooling is None else pooling)


def _load(opts: RunOptions):
    torch.manual_seed(0)
    return load(opts.model, opts.torch_dtype)


def _report(opts, model, tok, res, num_partitions, config, seconds, simulated):
    obj = build_report(res, model_name=opts.model, model=model, tokenizer=tok, config=config,
                       num_partitions=num_partitions, output=opts.output, dtype=opts.torch_dtype, seconds=seconds,
                       simulated=simulated)
    print_report(obj, file=sys.stdout, json_line=opts.json, verbose=opts.verbose)


def run_simulated_job(opts: RunOptions) -> None:
    """All partitions in this process; the bytes are the cost model's."""
    P = opts.simulate
    config = opts.config_for(P)
    text = read_inputs(opts, P)
    t0 = time.perf_counter()
    tok, model = _load(opts)
    load_s = time.perf_counter() - t0
    config = hf.config_of(hf.configure(model, config))
    req = make_request(tok, opts, text, max_positions(model))
    res = run_simulated(model, req, P, eos=tok.eos_token_id if opts.generate else None, progress=True)
    N = req.ids.shape[1]
    per_layer = cost.bytes_per_layer(cost.ModelShape.from_config(model.config), N, config,
                                     causal=model_kind(model) == "decoder", dtype=opts.torch_dtype)
    res.bytes_per_layer = [sum(per_layer)] * model.config.num_hidden_layers
    _report(opts, model, tok, res, P, config, {"load": load_s, **res.seconds}, simulated=True)


def run_mpi_job(opts: RunOptions, comm) -> None:
    """This rank's part of the job (every rank calls it)."""
    # One validation pass before any model loads: the settings on every rank, rank 0's files.
    config = agree(comm, lambda: opts.config_for(comm.size))
    text = agree_rank0(comm, lambda: read_inputs(opts, comm.size))
    comm.phase = "loading"
    t0 = time.perf_counter()
    tok, model = agree(comm, lambda: _load(opts))  # a bad folder on any rank: exit 2 on all
    pooling = agree(comm, lambda: pooling_for(opts.model))  # a bad sentence-transformers config: the same
    load_s = time.perf_counter() - t0
    config = hf.config_of(hf.configure(model, config, comm=comm))
    comm.phase = "handshake"
    t1 = time.perf_counter()
    handshake(comm, fingerprint(model, config, model_name=opts.model, dtype=opts.dtype, mode=opts.mode))
    hand_s = time.perf_counter() - t1
    if opts.verbose:  # which library, transport and hosts (collective; rank 0 prints)
        info = describe(comm)
        if comm.rank == 0:
            print(format_transport(info, opts.link_mbit, opts.link_latency_ms), flush=True)
    if opts.profile:
        comm.phase = "profile"
        measure_profile(model, tok, comm, opts.profile, model_name=opts.model, config=config,
                        link_mbit=opts.link_mbit, link_latency_ms=opts.link_latency_ms)
        return
    if opts.serve:
        served = Served(opts.model, model_kind(model) == "decoder", max_positions(model),
                        width=model.config.hidden_size * len(pooling.modes), vocab_size=len(tok))
        engine = Engine(model, tok, comm, served, load_s=load_s, pooling=pooling, batch_tokens=opts.batch_tokens)
        run_service(engine, host=opts.host, port=opts.port, api_key=opts.api_key, http=opts.http)
        return
    # With --auto and a setting that is just a preset (no explicit segment size or levers), the
    # profile may pick a faster setting within that preset's budget.
    asked = None if (opts.segment_size is not None or opts.levers) else (opts.preset or DEFAULT_PRESET)

    def ask():  # rank 0: the request, and with --auto what the profile says is fastest for it
        req = make_request(tok, opts, text, max_positions(model), pooling)
        n = req.ids.shape[1]
        return req, (auto_choice(opts.auto, model, config, asked, n, comm.size) if opts.auto else None)

    req, pick = agree_rank0(comm, ask) or (None, None)
    mode = "distributed"
    if opts.auto:
        pick = bcast_json(comm, pick)
        mode = pick["mode"]
        if pick["preset"] is not None:  # a setting within the asked budget that is faster on this link
            new = PrismConfig.from_preset(comm.size, pick["preset"], exchange=pick["exchange"])
            config = hf.config_of(hf.configure(model, new, comm=comm))
    eos = tok.eos_token_id if (opts.generate and model_kind(model) == "decoder") else None
    if mode == "local":
        # One device is faster on this link: rank 0 runs the exact model, the others stand by.
        if comm.rank == 0:
            model.set_attn_implementation("sdpa")
            res = run_simulated(model, req, 1, eos=eos, progress=True)
            res.bytes_per_layer = [0] * model.config.num_hidden_layers
            _report(opts, model, tok, res, 1, config, {"load": load_s, **res.seconds}, simulated=False)
        return
    res = run_distributed(model, comm, req, eos=eos, progress=comm.rank == comm.size - 1)
    if comm.rank == 0:
        seconds = {"load": load_s, "handshake": hand_s, **res.seconds}
        _report(opts, model, tok, res, comm.size, config, seconds, simulated=False)


def mpi_world_size() -> int:
    """How many ranks mpiexec started this process among (1 when not under mpiexec), read from
    the launcher's environment without starting MPI (MPICH/Hydra, Open MPI, PMIx)."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


def run(opts: RunOptions) -> int:
    """The whole prism-run job on this process: simulated, or this MPI rank's part. Returns the
    exit code (a fault on any rank aborts the whole job instead; the ranks of a multi-rank job
    that agreed on an error leave together, `faults.leave_together`)."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.simulate is not None:
        world = mpi_world_size()
        if world > 1:
            print(f"prism-run: error: --simulate runs all partitions in one process, but this is one of {world} "
                  "MPI ranks; run it without mpiexec, or drop --simulate", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            run_simulated_job(opts)
        except ValueError as e:  # includes RequestError
            print(f"prism-run: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return 0
    link = None if opts.link_mbit is None else EmulatedLink(opts.link_mbit, opts.link_latency_ms)
    comm = Communicator(link=link, timeout_s=opts.timeout)
    code = guarded(comm, lambda: run_mpi_job(opts, comm), prog="prism-run", debug=opts.debug)
    if code and comm.size > 1:
        leave_together(comm)
    return code
