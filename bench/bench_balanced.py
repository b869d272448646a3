"""Unequal hosts and slow links: the split `prism-run --profile` then `--auto` plans, on real TCP.

    python bench/bench_balanced.py                       # as root: the four cells below, N = 2048
    python bench/bench_balanced.py --cells 1,1@50 --repeats 1 --tokens 512 --out /tmp/bal   # a smoke run
    python bench/bench_frontier.py --real-links --cells ...                               # the same

SmolLM2-135M with its real weights on 2 test hosts (tools/netns_hosts.py: network namespaces,
MPICH over TCP between them, each host's CPU share a cgroup quota, 1 thread per rank), one
prefill of N tokens of the shipped text to the last token's logits. A cell is `SHARES@B`: the
hosts' CPU shares and a link budget B in MB, the bytes the link moves while the fastest host
computes the whole request alone (B = rate x one-host time: it holds across machines where a
Mbit/s figure does not). Per cell, in order:

1. one job on the unshaped hosts times the fastest host alone (the exact model, SDPA): t1;
2. both links are shaped (kernel tbf, each direction) to B / t1;
3. `prism-run --profile` measures the hosts and links (the real command);
4. one job times, each `--repeats` times (median): the fastest host alone (the baseline); the
   plan `link_profile.plan_request` makes from the profile for the `edge` budget (as `--auto`
   runs it: bounds, chunk order, or one host); `edge` at an equal split in rank order (before
   this split existed); and, for a cell with unequal hosts, a sweep of hand-typed splits around the
   plan's, in its chunk order (what `--weights` would give);
5. `prism-run --auto` runs once on the hosts (the real command; it must exit 0).

Speed-ups are the baseline's median over each run's median, from the same job. Writes `--out`.json
and `--out`.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import netns_hosts  # noqa: E402
from bench_real_links import job_env, last_json, write_outputs  # noqa: E402

BIN = Path(sys.executable).parent
CELLS = "1,1@50;1,1@5;1,0.5@50;0.25,1@0.5"
TARGETS = {"1,1@50": 1.85, "1,1@5": 1.25, "1,0.5@50": 1.35, "0.25,1@0.5": 0.95}
SWEEP = (-0.1, -0.05, -0.025, 0.025, 0.05, 0.1)  # the first chunk's share of the tokens, off the plan's


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default=CELLS, help="SHARES@B_MB, ';'-separated, e.g. '1,1@50;1,0.5@50'")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="docs/BALANCED")
    ap.add_argument("--worker", choices=("alone", "plan"), help=argparse.SUPPRESS)
    ap.add_argument("--fast-rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--profile-file", help=argparse.SUPPRESS)
    ap.add_argument("--sweep", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cells = []
    for c in args.cells.split(";"):
        try:
            shares, budget = c.split("@")
            cells.append(([float(x) for x in shares.split(",")], float(budget), c))
        except ValueError:
            ap.error(f"--cells: each cell is SHARES@B_MB, e.g. 1,0.5@50; got {c!r}")
        if len(cells[-1][0]) != 2 or not all(0 < x <= 1 for x in cells[-1][0]) or not cells[-1][1] > 0:
            ap.error(f"--cells: two shares in (0, 1] and a budget > 0 MB, got {c!r}")
    args.cells = cells
    if args.tokens < 16 or args.repeats < 1:
        ap.error("--tokens must be >= 16 and --repeats >= 1")
    return args


# -- the jobs on the hosts -------------------------------------------------------------------------

def _median_time(fn, repeats):
    from bench_distributed import timed  # the benches' median of timed calls (imports torch: workers only)

    fn()  # warm-up (and the connections made)
    return timed(fn, repeats)


def worker(args) -> None:
    import torch

    from prism_ops import hf
    from prism_ops.config import PrismConfig
    from prism_ops.distributed.comm import Communicator
    from prism_ops.distributed.control import allgather_json, bcast_json
    from prism_ops.distributed.runtime import run_distributed
    from prism_ops.in_process import run_simulated
    from prism_ops.input_files import read_profile
    from prism_ops.link_profile import plan_request
    from prism_ops.models import load, pydoc_text
    from prism_ops.ops.partitioned_attention import partition_bounds
    from prism_ops.request_types import Request

    torch.set_num_threads(1)
    comm = Communicator(timeout_s=1200)
    tok, model = load("smollm2")
    ids = torch.tensor([tok(pydoc_text(), add_special_tokens=False)["input_ids"][: args.tokens]])
    N = ids.shape[1]

    def alone():
        t = None
        if comm.rank == args.fast_rank:
            model.set_attn_implementation("sdpa")
            t = _median_time(lambda: run_simulated(model, Request(ids=ids, output="logits"), 1), args.repeats)
        return allgather_json(comm, t)[args.fast_rank]

    out = {"tokens": N, "alone_s": alone()}
    if args.worker == "plan":
        prof = read_profile(args.profile_file, "--auto", comm.size, "smollm2")
        edge = PrismConfig.from_preset(comm.size, "edge", exchange="kv")
        pick = plan_request(prof, N, edge, preset="edge", causal=True, result_bytes=4 * model.config.hidden_size)
        out["plan"] = pick

        def distributed(config, bounds, order):
            c = comm if order == list(range(comm.size)) else comm.reorder(order)
            runner = hf.configure(model, config, comm=c)
            req = Request(ids=ids, output="logits", bounds=[tuple(b) for b in bounds])
            box = {}
            t = _median_time(lambda: box.update(res=run_distributed(runner, c, req, progress=False)), args.repeats)
            t = bcast_json(c, t if c.rank == 0 else None)
            res = box["res"]
            per_rank = bcast_json(c, res.seconds_per_rank if c.rank == 0 else None)
            sent = bcast_json(c, sum(res.bytes_per_layer) if c.rank == 0 else None)
            return {"seconds": t, "bytes": sent, "seconds_per_rank": per_rank, "bounds": bounds, "order": order}

        if pick["mode"] == "distributed":
            config = PrismConfig.from_preset(comm.size, pick["preset"], exchange=pick["exchange"])
            out["auto"] = distributed(config, pick["bounds"], pick["order"])
        else:
            out["auto"] = {"seconds": out["alone_s"], "bytes": 0, "order": [pick["fastest"]]}
        out["equal"] = distributed(edge, partition_bounds(N, comm.size), list(range(comm.size)))
        if args.sweep and pick["mode"] == "distributed":
            out["sweep"] = []
            planned = pick["bounds"][0][1] / N
            for share in sorted({round(planned + d, 3) for d in SWEEP} - {round(planned, 3)}):
                cut = min(N - 1, max(1, round(N * share)))
                out["sweep"].append(dict(share=share, **distributed(edge, [[0, cut], [cut, N]], pick["order"])))
    if comm.rank == 0:
        print(json.dumps(out), flush=True)


# -- the driver ---------------------------------------------------------------------------------

ENV = job_env()


def _worker_cmd(args, kind, fast, **extra):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--fast-rank", str(fast),
           "--tokens", str(args.tokens), "--repeats", str(args.repeats)]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return cmd


def measure_cell(args, shares, budget_mb, name, tmp) -> dict:
    fast = max(range(2), key=lambda r: shares[r])
    with netns_hosts.Hosts(2, None, cpu=shares) as hosts:
        t1 = last_json(hosts.run(_worker_cmd(args, "alone", fast), timeout=1800, env=ENV), f"{name}: one host")["alone_s"]
        mbit = budget_mb * 8 / t1
        for i in range(2):
            hosts.set_rate(i, mbit)
        prof = str(Path(tmp) / f"profile-{name.replace(',', '_').replace('@', '-')}.json")
        p = hosts.run([str(BIN / "prism-run"), "--model", "smollm2", "--threads", "1", "--profile", prof],
                      timeout=1800, env=ENV)
        if p.returncode:
            raise SystemExit(f"{name}: prism-run --profile failed ({p.returncode}):\n{p.stderr[-3000:]}")
        sweep = {"sweep": True} if shares[0] != shares[1] else {}
        got = last_json(hosts.run(_worker_cmd(args, "plan", fast, profile_file=prof, **sweep), timeout=3600, env=ENV),
                         f"{name}: plan")
        text = Path(tmp) / "input.txt"
        if not text.exists():
            from prism_ops.models import load, pydoc_text

            tok, _ = load("smollm2")
            text.write_text(tok.decode(tok(pydoc_text(), add_special_tokens=False)["input_ids"][: args.tokens - 1]))
        p = hosts.run([str(BIN / "prism-run"), "--model", "smollm2", "--threads", "1", "--output", "logits",
                       "--auto", prof, "--input-file", str(text), "--verbose"], timeout=1800, env=ENV)
        cli = {"exit": p.returncode, "plan_line": next((x for x in p.stdout.splitlines() if x.startswith("auto:")), None),
               "stderr": p.stderr[-500:] if p.returncode else ""}
    row = dict(cell=name, shares=shares, budget_mb=budget_mb, one_host_s=t1, mbit=mbit, profile=json.loads(
        Path(prof).read_text()), cli=cli, **got)
    row["speedup"] = got["alone_s"] / got["auto"]["seconds"]
    row["equal_speedup"] = got["alone_s"] / got["equal"]["seconds"]
    pick = got["plan"]
    row["predicted_s"] = pick["predicted_s"] if pick["mode"] == "distributed" else pick["local_s"]
    row["prediction_error"] = row["predicted_s"] / got["auto"]["seconds"] - 1
    if "sweep" in got:
        best = min(got["sweep"], key=lambda s: s["seconds"])
        row["sweep_best"] = {"share": best["share"], "seconds": best["seconds"]}
        row["vs_sweep"] = got["auto"]["seconds"] / best["seconds"] - 1
    print(f"[bench_balanced] {name}: auto {row['speedup']:.2f}x ({pick['mode']}, order {got['auto'].get('order')}), "
          f"equal edge {row['equal_speedup']:.2f}x, predicted {row['prediction_error']:+.0%}, cli exit {cli['exit']}",
          file=sys.stderr, flush=True)
    return row


def markdown(rows, args, command) -> str:
    from prism_ops.report import PHASES

    phases = [k for k in PHASES if any(k in t for r in rows for t in r["auto"].get("seconds_per_rank", []))]
    lines = [f"## Balanced partitions on real TCP links (SmolLM2, real weights, N = {args.tokens})", "",
             f"Command: `{command}`", "",
             "2 test hosts x 1 thread, MPICH over TCP, links shaped to B / (one-host time); speed-ups against the "
             "fastest host alone (exact model, SDPA) in the same job, medians of "
             f"{args.repeats}. `auto`: the plan `prism-run --profile` then `--auto` makes (edge budget); `equal`: "
             "edge at an equal split in rank order (before this change).", "",
             "| hosts (CPU share) | B | one host | link | auto | plan | equal edge | target | predicted vs measured |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        pick = r["plan"]
        plan = ("fast host alone (rank %d)" % pick["fastest"] if pick["mode"] == "local" else
                f"{pick['preset']}, chunks on ranks {pick['order']}, sizes {[e - s for s, e in pick['bounds']]}")
        target = TARGETS.get(r["cell"])
        lines.append(f"| {r['shares'][0]:g} / {r['shares'][1]:g} | {r['budget_mb']:g} MB | {r['one_host_s']:.2f} s | "
                     f"{r['mbit']:.1f} Mbit/s | {r['speedup']:.2f}x | {plan} | {r['equal_speedup']:.2f}x | "
                     f"{'' if target is None else f'>= {target}x'} | {r['prediction_error']:+.0%} |")
    lines += ["", "Where each rank's time goes in the planned run (seconds, the last timed request; payload, local, "
              "wait and remote are inside forward; rank = position in the plan's chunk order):", "",
              "| cell | rank | " + " | ".join(k.removeprefix("attention ") for k in phases) + " |",
              "| --- | --- | " + " | ".join("---" for _ in phases) + " |"]
    for r in rows:
        for i, t in enumerate(r["auto"].get("seconds_per_rank", [])):
            lines.append(f"| {r['cell']} | {i} | " + " | ".join(f"{t.get(k, 0.0):.3f}" for k in phases) + " |")
    for r in rows:
        if "sweep" in r:
            lines += ["", f"Sweep of hand-typed splits at {r['cell']} (first chunk's share, in the plan's order): "
                      + ", ".join(f"{s['share']:g}: {r['alone_s'] / s['seconds']:.2f}x" for s in r["sweep"])
                      + f"; the plan is {r['vs_sweep']:+.1%} from the best."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    why = netns_hosts.available() or netns_hosts.cpu_quota_available()
    if why:
        print(f"bench_balanced: {why}", file=sys.stderr)
        return 2
    netns_hosts.exit_on_signals()
    command = "python bench/bench_balanced.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure_cell(args, shares, budget, name, tmp) for shares, budget, name in args.cells]
    text = markdown(rows, args, command)
    write_outputs(Path(args.out), args, rows, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
