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

--auto PROFILE chooses between running on rank 0 alone and distributed from a profile that
--profile OUT measured on the same machines and link.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

import torch

from . import __version__, cost, hf
from .levers import PRESETS, resolve

EXIT_BAD_INPUT = 2


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="prism-run", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm", help="minilm (default), smollm2, or a local Hugging Face folder")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--input", help="the text")
    src.add_argument("--input-file", help="a UTF-8 text file")
    ap.add_argument("--segment-size", type=int, help="tokens per summary row (required unless --preset sets it)")
    ap.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--sink-tokens", type=int)
    ap.add_argument("--halo", type=int)
    ap.add_argument("--summary-bits", type=int)
    ap.add_argument("--exchange", choices=("kv", "hidden", "auto"))
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
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds one collective may wait")
    ap.add_argument("--auto", metavar="PROFILE", help="run locally or distributed, whichever PROFILE says is faster")
    ap.add_argument("--profile", metavar="OUT", help="measure local against distributed at a few lengths into OUT")
    args = ap.parse_args(argv)
    if args.input is None and args.input_file is None and args.profile is None:
        ap.error("one of --input or --input-file is required")
    if args.simulate is not None and (args.profile or args.auto):
        ap.error("--profile and --auto measure and choose between real ranks; they do not go with --simulate")
    return args


def settings_of(args, num_partitions):
    """The resolved PRISM settings of the command line (ValueError names a bad one)."""
    levers = {k: v for k, v in dict(
        sink_tokens=args.sink_tokens, halo=args.halo, summary_bits=args.summary_bits, exchange=args.exchange,
        cluster_iters=args.cluster_iters).items() if v is not None}
    if args.no_log_count_bias:
        levers["log_count_bias"] = False
    if args.weights:
        try:
            levers["weights"] = tuple(float(w) for w in args.weights.split(","))
        except ValueError:
            raise ValueError(f"weights must be numbers separated by commas, e.g. 2,1; got {args.weights!r}") from None
    for name in ("generate", "top_k"):
        if getattr(args, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(args, name)}")
    return resolve(num_partitions, args.segment_size, args.preset, **levers)


def fingerprint(model, settings, args) -> dict:
    """What must match on every rank: versions, model, weights, settings."""
    import transformers

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            flat = p.detach().flatten()
            h.update(name.encode())
            h.update(flat[:: max(1, flat.numel() // 256)].double().cpu().numpy().tobytes())
            h.update(repr(flat.double().sum().item()).encode())
    keep = {k: v for k, v in settings.items() if k not in ("comm", "context")}
    return {"prism_ops": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "model": args.model, "weights": h.hexdigest()[:16], "dtype": args.dtype,
            **json.loads(json.dumps(keep, default=list))}


def read_text(args) -> str:
    from .distributed.runtime import RequestError

    if args.input_file is not None:
        try:
            with open(args.input_file, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise RequestError(f"input-file {args.input_file!r} cannot be read as UTF-8 text: {e}") from None
    return args.input


def make_request(tok, args, text=None):
    from .distributed.runtime import Request, RequestError

    text = read_text(args) if text is None else text
    if not text.strip():
        raise RequestError("the input is empty")
    tok.model_max_length = 10**9  # the runtime checks the model's positions itself
    ids = torch.tensor([tok(text)["input_ids"]], dtype=torch.long)
    return Request(ids=ids, output=args.output, generate=args.generate, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def report(args, model, tok, res, num_partitions, settings, seconds, simulated, out=sys.stdout):
    """Print the human report and (--json) the JSON line; returns the JSON object."""
    from .distributed.runtime import model_kind

    N = res.bounds[-1][1]
    shape = cost.ModelShape.from_config(model.config)
    full = sum(cost.full_exchange_bytes_per_layer(shape, N, num_partitions, dtype_bytes=_dtype_bytes(args)))
    sent = res.bytes_per_layer
    if res.token_ids is not None:
        output = {"text": tok.decode(res.token_ids[0], skip_special_tokens=True), "token_ids": res.token_ids[0]}
    else:
        output = res.output[0].tolist()
    where = "simulated in one process" if simulated else "MPI ranks"
    print(f"prism-run: {args.model} ({model_kind(model)}), {num_partitions} partitions ({where}), "
          f"segment size {settings['segment_size']}, {settings['exchange']} exchange, {N} tokens", file=out)
    if res.token_ids is not None:
        print(f"generated {len(res.token_ids[0])} tokens: {output['text']!r}", file=out)
    else:
        vec = res.output[0].flatten()
        print(f"{args.output} {list(res.output[0].shape)}: " + " ".join(f"{x:.4f}" for x in vec[:6].tolist())
              + f" ... (norm {vec.norm():.4f})", file=out)
    label = "sent (cost model)" if simulated else "sent (counted)"
    print(f"{'layer':>5} {label:>18} {'full exchange':>14} {'ratio':>7}", file=out)
    for i, b in enumerate(sent):
        print(f"{i:>5} {b:>18,} {full:>14,} {b / full:>7.2%}", file=out)
    print(f"{'all':>5} {sum(sent):>18,} {full * len(sent):>14,} {sum(sent) / max(1, full * len(sent)):>7.2%}", file=out)
    print("seconds: " + "  ".join(f"{k} {v:.3f}" for k, v in seconds.items()), file=out)
    obj = {"model": args.model, "partitions": num_partitions, "segment_size": settings["segment_size"],
           "output": output, "bytes": {"sent_per_layer": sent, "full_exchange_per_layer": [full] * len(sent)},
           "seconds": seconds}
    if args.json:
        print(json.dumps(obj), file=out)
    out.flush()
    return obj


def _load(args):
    from .models import load

    torch.manual_seed(0)
    return load(args.model, getattr(torch, args.dtype))


def run_simulated_cli(args):
    from .distributed.runtime import model_kind, run_simulated

    settings = settings_of(args, args.simulate)
    t0 = time.perf_counter()
    tok, model = _load(args)
    load_s = time.perf_counter() - t0
    hf.configure(model, num_partitions=args.simulate, segment_size=settings["segment_size"], **_levers(settings))
    settings = model._prism_settings
    req = make_request(tok, args)
    res = run_simulated(model, req, args.simulate, eos=tok.eos_token_id if args.generate else None, progress=True)
    N = req.ids.shape[1]
    res.bounds = [(0, N)]
    res.bytes_per_layer = [sum(cost.settings_bytes_per_layer(
        cost.ModelShape.from_config(model.config), N, settings, causal=model_kind(model) == "decoder",
        dtype_bytes=_dtype_bytes(args)))] * model.config.num_hidden_layers
    report(args, model, tok, res, args.simulate, settings, {"load": load_s, **res.seconds}, simulated=True)


def _dtype_bytes(args) -> int:
    return torch.finfo(getattr(torch, args.dtype)).bits // 8


def _levers(settings):
    from .levers import DEFAULTS

    return {k: settings[k] for k in DEFAULTS}


def run_mpi(args, comm):
    from .distributed.runtime import RequestError, model_kind, run_distributed, run_simulated

    settings = settings_of(args, comm.size)
    t0 = time.perf_counter()
    tok, model = _load(args)
    load_s = time.perf_counter() - t0
    hf.configure(model, num_partitions=comm.size, segment_size=settings["segment_size"], comm=comm,
                 **_levers(settings))
    t1 = time.perf_counter()
    comm.handshake(fingerprint(model, model._prism_settings, args))
    hand_s = time.perf_counter() - t1
    if args.profile:
        from .profile import measure_profile

        measure_profile(args, model, tok, comm)
        return
    req = None
    if comm.rank == 0:
        try:
            req = make_request(tok, args)
        except RequestError as e:
            req = e  # run_distributed tells every rank, so all stop together
    mode = "distributed"
    if args.auto and not isinstance(req, RequestError):
        from .profile import choose

        mode = comm.bcast_json(choose(args.auto, req.ids.shape[1], comm.size) if comm.rank == 0 else None)
    eos = tok.eos_token_id if (args.generate and model_kind(model) == "decoder") else None
    if mode == "local":
        # One device is faster on this link: rank 0 runs the exact model, the others stand by.
        if comm.rank == 0:
            model.set_attn_implementation("sdpa")
            res = run_simulated(model, req, 1, eos=eos, progress=True)
            res.bounds, res.bytes_per_layer = [(0, req.ids.shape[1])], [0] * model.config.num_hidden_layers
            report(args, model, tok, res, 1, model._prism_settings, {"load": load_s, **res.seconds}, simulated=False)
        return
    res = run_distributed(model, comm, req, eos=eos,
                          progress=comm.rank == comm.size - 1)
    if comm.rank == 0:
        seconds = {"load": load_s, "handshake": hand_s, **res.seconds}
        report(args, model, tok, res, comm.size, model._prism_settings, seconds, simulated=False)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.simulate is not None:
        try:
            run_simulated_cli(args)
        except ValueError as e:  # includes RequestError
            print(f"prism-run: error: {e}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        return
    from .distributed.comm import Communicator, guarded

    comm = Communicator(link_mbit=args.link_mbit, link_latency_ms=args.link_latency_ms, timeout_s=args.timeout)
    guarded(comm, lambda: run_mpi(args, comm), prog="prism-run")
