"""What each prism-run job is asked: one frozen dataclass per mode, over shared bases.

    JobOptions        every job: the model, its PRISM settings, dtype, threads, verbose
    RankOptions       a job on MPI ranks: + the emulated link, the timeout, debug
    AskOptions        one request: the input, what to output, sampling, --json (mixed in)
    RunOptions        run:      RankOptions + AskOptions
    AutoOptions       auto:     RunOptions + auto (the profile to plan by)
    SimulateOptions   simulate: JobOptions + AskOptions + simulate (the partitions)
    ProfileOptions    profile:  RankOptions + profile (the file to write)
    ServeOptions      serve:    RankOptions + host, port, api_key, http, batch_tokens

Field names are prism-run's flags (`top_p` is --top-p). Every value with a range is checked in
one place: `check_values` (the table LIMITS) and, for the link, `distributed.link.check_link`.
An options object checks its own fields when it is made (library users get the same errors),
and the command line checks every flag it was given, whatever the mode: a ValueError whose
message starts with the field's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch

from ..config import DEFAULT_PRESET, PrismConfig
from ..distributed.comm import DEFAULT_TIMEOUT_S
from ..distributed.link import EmulatedLink, check_link

MAX_THREADS = 1024
SPLIT_MIN_TOKENS = 128  # the service's default: shorter embedding texts run whole (docs/RESULTS.md, issue 35)

# field: (is the value allowed?, what is allowed). None is always allowed (not given).
LIMITS = {
    "threads": (lambda v: 0 <= v <= MAX_THREADS, f"in [0, {MAX_THREADS}] (0: torch's default)"),
    "timeout": (lambda v: math.isfinite(v) and v > 0, "a finite number of seconds > 0"),
    "temperature": (lambda v: math.isfinite(v) and v >= 0, ">= 0 (0: greedy)"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "top_k": (lambda v: v >= 0, ">= 0 (0: off)"),
    "seed": (lambda v: 0 <= v < 2**63, "in [0, 2**63)"),
    "generate": (lambda v: v >= 0, ">= 0"),
    "simulate": (lambda v: v >= 1, ">= 1"),
    "batch_tokens": (lambda v: v >= 0, ">= 0 (0: one request at a time)"),
    "split_min_tokens": (lambda v: v >= 0, ">= 0 (0: split every text over the ranks)"),
    "port": (lambda v: 0 < v < 65536, "in [1, 65535]"),
}


def check_values(**values) -> None:
    """ValueError naming the first value outside its range in LIMITS."""
    for name, value in values.items():
        ok, what = LIMITS[name]
        if value is not None and not ok(value):
            raise ValueError(f"{name} must be {what}, got {value}")


@dataclass(frozen=True, kw_only=True)
class JobOptions:
    """What every job is asked. The PRISM settings (preset, segment_size, levers) become one
    PrismConfig in `config_for`, where they are checked."""

    mode: ClassVar[str]  # what the job does (part of the handshake: every rank must do the same)
    model: str = "minilm"
    preset: str | None = None
    segment_size: int | None = None
    levers: dict = field(default_factory=dict)
    dtype: str = "float32"
    threads: int = 0
    verbose: bool = False  # the per-layer byte table; under MPI also the library, hosts and transport

    def __post_init__(self):
        check_values(**{f.name: getattr(self, f.name) for f in fields(self) if f.name in LIMITS})

    def config_for(self, num_partitions: int) -> PrismConfig:
        """The PrismConfig for this many ranks: the preset and levers asked for, or DEFAULT_PRESET
        when neither a preset nor a segment size is given."""
        preset = self.preset
        if preset is None and self.segment_size is None:
            preset = DEFAULT_PRESET
        return PrismConfig.from_preset(num_partitions, preset, self.segment_size, **self.levers)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass(frozen=True, kw_only=True)
class RankOptions(JobOptions):
    """A job on MPI ranks (one process each, under mpiexec)."""

    link_mbit: float | None = None  # emulate a link of this rate between ranks (None: the real one)
    link_latency_ms: float = 0.0
    timeout: float = DEFAULT_TIMEOUT_S  # seconds a rank may stay silent (no heartbeat), not a bound on work
    debug: bool = False  # show the traceback of an unexpected error

    def __post_init__(self):
        super().__post_init__()
        check_link(self.link_mbit, self.link_latency_ms)

    @property
    def link(self) -> EmulatedLink | None:
        return None if self.link_mbit is None else EmulatedLink(self.link_mbit, self.link_latency_ms)


@dataclass(frozen=True, kw_only=True)
class AskOptions:
    """One request: the text (or a file of it), what to output, decoding, and the report's form."""

    text: str | None = None
    input_file: str | None = None
    output: str = "embedding"
    generate: int = 0
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    json: bool = False  # the report also as one JSON object on the last line


@dataclass(frozen=True, kw_only=True)
class RunOptions(RankOptions, AskOptions):
    """run: one request on the MPI ranks."""

    mode: ClassVar[str] = "run"


@dataclass(frozen=True, kw_only=True)
class AutoOptions(RunOptions):
    """auto: one request, planned from a profile: bounds and chunk order on every rank, or the fastest alone."""

    mode: ClassVar[str] = "auto"
    auto: str  # a profile written by the profile job on the same hosts and links


@dataclass(frozen=True, kw_only=True)
class SimulateOptions(JobOptions, AskOptions):
    """simulate: one request with all partitions in this one process (no MPI)."""

    mode: ClassVar[str] = "simulate"
    simulate: int  # the partitions


@dataclass(frozen=True, kw_only=True)
class ProfileOptions(RankOptions):
    """profile: measure every rank's compute rates and every link, into a file for auto."""

    mode: ClassVar[str] = "profile"
    profile: str  # the file to write


@dataclass(frozen=True, kw_only=True)
class ServeOptions(RankOptions):
    """serve: load once and answer requests until stopped (`prism_ops.serving`)."""

    mode: ClassVar[str] = "serve"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    http: bool = True  # HTTP on host:port (JSON lines on stdin are always answered)
    batch_tokens: int = 8192  # embedding requests queued together run as one padded batch of up to
    # this many tokens; 0 runs them one at a time
    split_min_tokens: int = SPLIT_MIN_TOKENS  # an embedding text shorter than this runs whole on one rank
    # (exact; under load the ranks run such texts side by side); 0 splits every text
    frontend: str | None = None  # ADDR:PORT of the front end that launched this job (rank 0 dials it)
    frontend_job: str | None = None  # the token this job says hello with


@dataclass(frozen=True, kw_only=True)
class SuperviseOptions(ServeOptions):
    """serve --hosts: the front end outside MPI (`prism_ops.serving.frontend`). It serves HTTP and
    launches the ranks itself with mpiexec on the healthy hosts, with rank_args as their flags."""

    mode: ClassVar[str] = "supervise"
    hosts: tuple = ()
    mpiexec_args: tuple = ()  # launcher options for mpiexec, e.g. ("-launcher-exec", "/path/ssh")
    queue_limit: int = 64  # requests held while the job re-forms; past it: 503 with Retry-After
    rank_args: tuple = ()  # the ranks' prism-run flags (model, preset, threads, ...)

    def __post_init__(self):
        super().__post_init__()
        if not self.hosts or not all(isinstance(h, str) and h and "," not in h for h in self.hosts):
            raise ValueError(f"hosts must be one or more host names, got {self.hosts!r}")
        if len(set(self.hosts)) != len(self.hosts):
            raise ValueError(f"hosts must not repeat a host, got {','.join(self.hosts)}")
        if not isinstance(self.queue_limit, int) or self.queue_limit < 0:
            raise ValueError(f"queue_limit must be an integer >= 0, got {self.queue_limit!r}")
