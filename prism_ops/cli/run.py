"""prism-run: one inference over MPI ranks with PRISM attention.

    mpirun -n 4 prism-run --input "Edge devices share the work."            # MiniLM embedding
    mpirun -n 2 prism-run --model smollm2 --input-file story.txt --generate 32 --preset edge
    prism-run --simulate 4 --input "..." --json                           # one process, same result

Every rank parses the same command line, loads the model and checks by a handshake that all
ranks agree (model, weights, settings, versions). Rank 0 reads and tokenizes the input and
prints: the result, the bytes each layer sent against full exchange, and the time per phase;
with --json, one JSON object on the last line of stdout. A bad input or setting exits with
code 2 and a message from rank 0; ranks started differently exit with code 3; a rank that
fails takes the whole job down (rank 0 prints why) instead of leaving it hanging.

--auto PROFILE plans each request (partition bounds, which host holds which chunk, the setting
within the asked budget, or the fastest host alone) from a profile that --profile OUT measured
on the same hosts and links.

The flags become the options of one mode (`prism_ops.jobs.options`: run, simulate, profile,
auto or serve), and `run_mode` runs that mode's job (`prism_ops.jobs`), importing no other.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from dataclasses import fields

from ..config import DEFAULT_PRESET, EXCHANGE_SETTINGS, PRESETS
from ..distributed.comm import DEFAULT_TIMEOUT_S
from ..distributed.link import check_link
from ..jobs.options import (AutoOptions, JobOptions, ProfileOptions, RunOptions, ServeOptions, SimulateOptions,
                            SPLIT_MIN_TOKENS, SuperviseOptions, check_values)

SUPERVISED_TIMEOUT_S = 5.0  # --hosts: a rank silent this long ends the job, which then re-forms
# The front end's own flags (each takes one value): the ranks it launches get every other flag given.
FRONT_END_FLAGS = frozenset({"--hosts", "--hostfile", "--mpiexec-args", "--queue-limit", "--host", "--port",
                             "--api-key", "--timeout"})


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="prism-run", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm", help="minilm (default), smollm2, or a local Hugging Face folder")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--input", help="the text")
    src.add_argument("--input-file", help="a UTF-8 text file")
    ap.add_argument("--segment-size", type=int, help="tokens per summary row")
    ap.add_argument("--preset", choices=sorted(PRESETS),
                    help=f"named settings (default {DEFAULT_PRESET!r} when --segment-size is not given either)")
    ap.add_argument("--sink-tokens", type=int)
    ap.add_argument("--halo", type=int)
    ap.add_argument("--summary-bits", type=int)
    ap.add_argument("--summary-codebook", help="a prism-calibrate file: summaries as its codebook codes "
                                               "(replaces the preset's --summary-bits)")
    ap.add_argument("--delta-codebook", help="a prism-calibrate --delta-codes file: every row as delta codes "
                                             "(with --segment-size 1; replaces the tuned preset's cached codes)")
    ap.add_argument("--exchange", choices=EXCHANGE_SETTINGS)
    ap.add_argument("--heavy-fraction", type=float, help="this share of each chunk's summarised tokens sent as rows "
                                                          "of their own (the most attended; the lean preset: 0.2)")
    ap.add_argument("--verbatim-bits", type=int, choices=(0, 16), help="16: sink and halo rows as float16 for a "
                                                                       "wider model (the lean preset's)")
    ap.add_argument("--min-chunk-tokens", type=int,
                    help="summarise only requests of at least this many tokens per rank; shorter ones send every "
                         "token (the tuned preset: 1024)")
    ap.add_argument("--cluster-iters", type=int)
    ap.add_argument("--no-log-count-bias", action="store_true", help="ablation: drop the +ln(count) logit bias")
    ap.add_argument("--weights", help="relative partition sizes, e.g. 2,1 for a device twice as fast")
    ap.add_argument("--output", choices=("embedding", "hidden", "logits"), default="embedding")
    ap.add_argument("--generate", type=int, default=0, metavar="N", help="decoders: generate N tokens")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--simulate", type=int, metavar="P", help="run P partitions in this one process (no MPI)")
    ap.add_argument("--json", action="store_true", help="one JSON object on the last line of stdout")
    ap.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per rank (0: torch's default)")
    ap.add_argument("--link-mbit", type=float, help="emulate a link of this many Mbit/s between ranks")
    ap.add_argument("--link-latency-ms", type=float, default=0.0)
    ap.add_argument("--timeout", type=float,
                    help=f"seconds a rank may go unheard (every rank sends a heartbeat about once a second) before "
                         f"the job ends, naming it (default {DEFAULT_TIMEOUT_S:g}; {SUPERVISED_TIMEOUT_S:g} with "
                         f"--hosts, where the job then re-forms); long work never times out")
    ap.add_argument("--auto", metavar="PROFILE", help="plan each request from PROFILE: bounds, which host holds which chunk, the setting, or one host")
    ap.add_argument("--profile", metavar="OUT", help="measure every rank's compute rates and every link into OUT (for --auto)")
    ap.add_argument("--verbose", action="store_true",
                    help="print the bytes every layer sent, and (under MPI) the MPI library, every rank's host and "
                         "the transport between them (derived from the library and its environment variables)")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    srv = ap.add_argument_group("service (--serve)")
    srv.add_argument("--serve", action="store_true",
                     help="load once and answer OpenAI-style HTTP requests (and JSON lines on stdin) until stopped")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--api-key", default=os.environ.get("PRISM_API_KEY"),
                     help="require 'Authorization: Bearer KEY' (default: $PRISM_API_KEY; none when unset)")
    srv.add_argument("--no-http", action="store_true", help="answer JSON lines on stdin only; stop at its end")
    srv.add_argument("--batch-tokens", type=int, default=8192,
                     help="embedding requests that queue while the ranks are busy run as one padded batch of up "
                          "to this many tokens (default 8192; 0: one request at a time)")
    srv.add_argument("--split-min-tokens", type=int, default=SPLIT_MIN_TOKENS,
                     help="an embedding text shorter than this runs whole on one rank with the exact model (it "
                          "would gain nothing from splitting); under load the ranks run such texts side by side "
                          f"(default {SPLIT_MIN_TOKENS}; 0: split every text over the ranks)")
    sup = ap.add_argument_group("supervised service (--serve --hosts, started without mpirun)")
    sup.add_argument("--hosts", help="serve across these hosts (comma-separated): a front end here serves HTTP, "
                                     "launches the ranks with mpiexec, one per healthy host, re-forms the job "
                                     "without a lost host, replays what was accepted and takes hosts back")
    sup.add_argument("--hostfile", help="the hosts, one per line (# comments), instead of --hosts")
    sup.add_argument("--mpiexec-args", default="",
                     help="options for mpiexec, e.g. \"-launcher ssh -launcher-exec /usr/bin/ssh\"")
    sup.add_argument("--queue-limit", type=int, default=64,
                     help="requests held while the job re-forms (default 64); past it: 503 with Retry-After")
    sup.add_argument("--frontend", metavar="ADDR:PORT", help=argparse.SUPPRESS)  # set by the front end
    sup.add_argument("--frontend-job", help=argparse.SUPPRESS)
    return ap


def parse_args(argv=None) -> JobOptions:
    """The options of the job the flags ask for; a bad flag exits 2 with one line naming it."""
    ap = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    hosts = _hosts(ap, args)
    if args.timeout is None:
        args.timeout = SUPERVISED_TIMEOUT_S if hosts else DEFAULT_TIMEOUT_S
    try:
        # Every flag given is checked, whatever the mode; the options check their own fields again.
        check_values(threads=args.threads, timeout=args.timeout)
        check_link(args.link_mbit, args.link_latency_ms)
        check_values(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                     generate=args.generate, simulate=args.simulate, batch_tokens=args.batch_tokens,
                     split_min_tokens=args.split_min_tokens)
        if args.serve:
            if args.input is not None or args.input_file is not None or args.profile or args.auto or args.simulate:
                ap.error("--serve takes its inputs from requests; it does not go with --input, --input-file, "
                         "--profile, --auto or --simulate")
            if hosts and (args.no_http or args.frontend):
                ap.error("--hosts runs the front end, which serves HTTP and launches the ranks itself: it does "
                         "not go with --no-http or --frontend")
        elif hosts:
            ap.error("--hosts and --hostfile go with --serve (the supervised service)")
        elif args.input is None and args.input_file is None and args.profile is None:
            ap.error("one of --input or --input-file is required")
        if args.simulate is not None and (args.profile or args.auto):
            ap.error("--profile and --auto measure and choose between real ranks; they do not go with --simulate")
        if args.profile is not None and args.auto is not None:
            ap.error("--profile OUT measures a profile and --auto PROFILE runs by one: run them as two jobs, "
                     "--profile first")
        opts = _options(args, _levers(ap, args))
        if hosts:
            return SuperviseOptions(**{f.name: getattr(opts, f.name) for f in fields(opts)}, hosts=hosts,
                                    mpiexec_args=tuple(shlex.split(args.mpiexec_args)),
                                    queue_limit=args.queue_limit, rank_args=rank_args(argv, args.timeout))
        return opts
    except ValueError as e:  # 'top_p must be ...': the options name the field, the command line its flag
        name, sep, rest = str(e).partition(" must be ")
        ap.error(f"--{name.replace('_', '-')}{sep}{rest}" if sep else str(e))


def _hosts(ap, args) -> tuple:
    """The hosts of --hosts or --hostfile (empty: not supervised)."""
    if args.hosts is not None and args.hostfile is not None:
        ap.error("give the hosts with --hosts or --hostfile, not both")
    if args.hostfile is not None:
        try:
            lines = open(args.hostfile, encoding="utf-8").read().splitlines()
        except OSError as e:
            ap.error(f"--hostfile {args.hostfile!r} cannot be read: {e.strerror}")
        hosts = [line.split("#")[0].strip().split(":")[0] for line in lines]
        hosts = [h for h in hosts if h]
        if not hosts:
            ap.error(f"--hostfile {args.hostfile!r} names no host")
        return tuple(hosts)
    if args.hosts is None:
        return ()
    hosts = tuple(h.strip() for h in args.hosts.split(","))
    if not all(hosts):
        ap.error(f"--hosts must be host names separated by commas, got {args.hosts!r}")
    return hosts


def rank_args(argv: list, timeout: float) -> tuple:
    """The ranks' flags: argv without the front end's own (FRONT_END_FLAGS), with the timeout."""
    out, skip = [], False
    for a in argv:
        if skip:  # the value of the flag before
            skip = False
            continue
        if a.split("=", 1)[0] in FRONT_END_FLAGS:
            skip = "=" not in a
            continue
        out.append(a)
    return (*out, "--timeout", f"{timeout:g}")


def _levers(ap, args) -> dict:
    """The PRISM levers given as flags (the preset's own otherwise)."""
    levers = {k: v for k, v in dict(sink_tokens=args.sink_tokens, halo=args.halo, summary_bits=args.summary_bits,
                                    exchange=args.exchange, cluster_iters=args.cluster_iters,
                                    heavy_fraction=args.heavy_fraction, verbatim_bits=args.verbatim_bits,
                                    min_chunk_tokens=args.min_chunk_tokens).items()
              if v is not None}
    if args.no_log_count_bias:
        levers["log_count_bias"] = False
    if args.summary_codebook is not None:
        levers["summary_codebook"] = args.summary_codebook
        levers.setdefault("summary_bits", 0)  # the codebook replaces a preset's integer rounding
    if args.delta_codebook is not None:
        levers["delta_codebook"] = args.delta_codebook
        levers.setdefault("exchange", "auto")  # delta codes are hidden rows
    if args.weights is not None:
        try:
            weights = tuple(float(w) for w in args.weights.split(","))
        except ValueError:
            weights = ()
        if not weights or not all(math.isfinite(w) and w > 0 for w in weights):
            ap.error(f"--weights must be finite numbers > 0 separated by commas, e.g. 2,1; got {args.weights!r}")
        levers["weights"] = weights
    return levers


def _options(args, levers: dict) -> JobOptions:
    """The options of the mode asked: simulate, serve, profile, auto or run (in that order)."""
    job = dict(model=args.model, preset=args.preset, segment_size=args.segment_size, levers=levers,
               dtype=args.dtype, threads=args.threads, verbose=args.verbose)
    ask = dict(text=args.input, input_file=args.input_file, output=args.output, generate=args.generate,
               temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, json=args.json)
    if args.simulate is not None:
        return SimulateOptions(**job, **ask, simulate=args.simulate)
    ranks = dict(link_mbit=args.link_mbit, link_latency_ms=args.link_latency_ms, timeout=args.timeout,
                 debug=args.debug)
    if args.serve:
        return ServeOptions(**job, **ranks, host=args.host, port=args.port, api_key=args.api_key or None,
                            http=not args.no_http, batch_tokens=args.batch_tokens,
                            split_min_tokens=args.split_min_tokens, frontend=args.frontend,
                            frontend_job=args.frontend_job)
    if args.profile is not None:
        return ProfileOptions(**job, **ranks, profile=args.profile)
    if args.auto is not None:
        return AutoOptions(**job, **ranks, **ask, auto=args.auto)
    return RunOptions(**job, **ranks, **ask)


def run_mode(opts: JobOptions) -> int:
    """The job of opts' mode, importing only that mode's module (only serve's loads the service)."""
    if opts.mode == "simulate":
        from ..jobs.simulate import simulate_job
        return simulate_job(opts)
    if opts.mode == "supervise":
        from ..jobs.supervise import supervise_job
        return supervise_job(opts)
    if opts.mode == "serve":
        from ..jobs.serve import serve_job
        return serve_job(opts)
    if opts.mode == "profile":
        from ..jobs.profile import profile_job
        return profile_job(opts)
    if opts.mode == "auto":
        from ..jobs.auto import auto_job
        return auto_job(opts)
    from ..jobs.run import run_job as run
    return run(opts)


def main(argv=None) -> None:
    sys.exit(run_mode(parse_args(argv)))


if __name__ == "__main__":
    main()
