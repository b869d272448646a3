"""The frontier's speed-ups over real, kernel-shaped TCP links, next to the emulated link's.

    python bench/bench_real_links.py                      # as root: N = 2048, links inf,100,10
    python bench/bench_real_links.py --tokens 256 --repeats 1 --out /tmp/real   # a smoke run
    python bench/bench_frontier.py --real-links ...       # the same
    python bench/bench_real_links.py --budgets 50,5,1.5 --settings edge,fast,lean --out docs/LEAN_LINKS
                                                          # links at budgets B (MB), real links only
    python bench/bench_real_links.py --budgets 50,5,1.5 --settings lean,tuned --out docs/TUNED_LINKS
                                                          # tuned: the real SmolLM2's calibrated dense layers

SmolLM2-135M's shape with random weights (timing only), one prefill to the last token's logits
(scatter and gather included), settings `edge` and `fast`, 2 ranks x 1 thread against one
process x 1 thread (rank 0 alone, the exact model with SDPA) in the same run. Each link rate
runs twice:

    real      2 test hosts (tools/netns_hosts.py: network namespaces on a bridge, each uplink
              and downlink shaped by the kernel's tbf to the rate), MPICH over TCP between
              them (`MPIR_CVAR_NOLOCAL=1 MPIR_CVAR_CH4_NETMOD=ofi FI_PROVIDER=tcp`); the
              package's link emulation off
    emulated  2 ranks on this host over shared memory with the package's emulated link at the
              same rate and 0 ms per message (`distributed/link.py`, prism-run's --link-mbit)

Reports, per link and setting: both speed-ups, their difference, the bytes the package counted
per forward and (real) the bytes the kernel's interfaces sent during the whole job. Writes
`--out`.json and `--out`.md and puts the table into docs/FRONTIER.md (between its
real-links markers; bench_frontier.py keeps that block when it rewrites the file).
Timings on a shared machine are noisy: ratios are taken against the one-process time of the
same job.

With --budgets, links are given as budgets B (MB): the bytes a link moves while one device
computes the whole request (rate x one-process time; B holds across machines, a Mbit/s figure
does not). A first job on the unshaped hosts times one process (t1); each cell's links are then
shaped to B / t1, and every cell prints B, the rate and t1. Real links only (no emulated run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import netns_hosts  # noqa: E402

BIN = Path(sys.executable).parent
FRONTIER = ROOT / "docs" / "FRONTIER.md"
BEGIN, END = "<!-- real-links -->", "<!-- /real-links -->"
SETTINGS = ("edge", "fast")
TARGETS = {100.0: 1.8, 10.0: 1.5}  # speed-up targets at these Mbit/s (SmolLM2, N = 2048)
BUDGET_TARGETS = {5.0: 1.5, 1.5: 1.0}  # speed-up targets of lean and tuned at these budgets B (MB)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--links", default="inf,100,10", help="Mbit/s, comma-separated; inf = unshaped")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--repeats", type=int, default=3, help="requests per measurement (median)")
    ap.add_argument("--out", default="docs/FRONTIER_REAL", help="path prefix of the .md and .json")
    ap.add_argument("--no-frontier", action="store_true", help="do not write the table into docs/FRONTIER.md")
    ap.add_argument("--budgets", help="link budgets B in MB, comma-separated (replaces --links; real links only)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one MPI job (run by the driver)
    ap.add_argument("--link-mbit", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--dense-layers", default="", help=argparse.SUPPRESS)  # tuned's, from the real SmolLM2 (driver)
    args = ap.parse_args(argv)
    if args.tokens < 8:
        ap.error(f"--tokens must be >= 8, got {args.tokens}")
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    try:
        args.links = [None if x == "inf" else float(x) for x in args.links.split(",") if x]
    except ValueError:
        ap.error(f"--links must be rates in Mbit/s or inf, comma-separated; got {args.links!r}")
    if any(x is not None and not x > 0 for x in args.links):
        ap.error("--links: every rate must be > 0")
    args.settings = [s for s in args.settings.split(",") if s]
    if args.budgets is not None:
        try:
            args.budgets = [float(x) for x in args.budgets.split(",") if x]
        except ValueError:
            ap.error(f"--budgets must be budgets in MB, comma-separated; got {args.budgets!r}")
        if not args.budgets or any(not b > 0 for b in args.budgets):
            ap.error("--budgets: every budget must be > 0 MB")
    return args


# -- one MPI job: one process against 2 ranks, every setting -----------------------------------

def smollm2_shape(tokens):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=max(8192, tokens),
                      rope_theta=100000.0, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def smollm2_dense_layers() -> list[int]:
    """The real SmolLM2's calibrated dense layers (the tuned preset; calibrated now if not yet)."""
    from prism_ops import models
    from prism_ops.calibrate import dense_layers_on_first_use

    tok, model = models.load("smollm2")
    return list(dense_layers_on_first_use(model, tok, "smollm2"))


def worker(args) -> None:
    import torch

    from prism_ops import hf
    from prism_ops.config import PrismConfig
    from prism_ops.distributed.comm import Communicator
    from prism_ops.distributed.link import EmulatedLink
    from prism_ops.distributed.runtime import run_distributed
    from prism_ops.request_types import Request
    from prism_ops.in_process import run_simulated
    from prism_ops.distributed.control import bcast_json

    torch.set_num_threads(1)
    link = None if args.link_mbit is None else EmulatedLink(args.link_mbit, 0.0)
    comm = Communicator(link=link, timeout_s=1200)
    model = smollm2_shape(args.tokens)
    req = Request(ids=torch.randint(0, 49152, (1, args.tokens), generator=torch.Generator().manual_seed(1)),
                  output="logits")

    def timed(fn):
        out = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    hf.register()
    local = None
    if comm.rank == 0:
        model.set_attn_implementation("sdpa")
        run_simulated(model, req, 1)  # warm-up
        local = timed(lambda: run_simulated(model, req, 1))
    bcast_json(comm, "go")
    rows = []
    for name in args.settings:
        config = PrismConfig.from_preset(comm.size, name)
        if config.dense_layers == "auto":  # random weights: the real SmolLM2's calibrated layers (same shape)
            config = config.replace(dense_layers=[int(i) for i in args.dense_layers.split(",") if i])
        runner = hf.configure(model, config, comm=comm)
        run_distributed(runner, comm, req, progress=False)  # warm-up (and the connections made)
        box = {}
        t = timed(lambda: box.update(res=run_distributed(runner, comm, req, progress=False)))
        if comm.rank == 0:
            rows.append(dict(setting=name, seconds=t, bytes=sum(box["res"].bytes_per_layer)))
    if comm.rank == 0:
        print(json.dumps(dict(local=local, rows=rows, host=os.uname().nodename)), flush=True)


# -- the driver ---------------------------------------------------------------------------------

def _job_args(args, mbit=None):
    a = [sys.executable, str(Path(__file__).resolve()), "--worker", "--tokens", str(args.tokens),
         "--repeats", str(args.repeats), "--settings", ",".join(args.settings), "--dense-layers", args.dense_layers]
    return a + ([] if mbit is None else ["--link-mbit", f"{mbit:g}"])


def last_json(p, what):
    """The JSON object on the last line of a finished job's stdout (SystemExit with its stderr if it failed)."""
    if p.returncode != 0:
        raise SystemExit(f"{what} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def job_env() -> dict:
    """The environment of every job: one thread per rank, no hub, quiet tokenizers."""
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def write_outputs(out: Path, args, rows: list, text: str) -> None:
    """A bench's `--out`.json (tokens, repeats, rows) and `--out`.md (its table)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(dict(tokens=args.tokens, repeats=args.repeats, rows=rows),
                                                   indent=1) + "\n")
    out.with_suffix(".md").write_text(text)


def measure(args) -> list[dict]:
    env = job_env()
    out = []
    for mbit in args.links:
        with netns_hosts.Hosts(2, mbit) as hosts:
            before = hosts.tx_bytes()
            real = last_json(hosts.run(_job_args(args), timeout=3600, env=env), f"real link {mbit}")
            kernel = sum(a - b for a, b in zip(hosts.tx_bytes(), before))
        if mbit is None:
            emu = last_json(subprocess.run([str(BIN / "mpiexec"), "-n", "2", *_job_args(args)], capture_output=True,
                                            text=True, env=env, timeout=3600), "unlimited, shared memory")
        else:
            emu = last_json(subprocess.run([str(BIN / "mpiexec"), "-n", "2", *_job_args(args, mbit)],
                                            capture_output=True, text=True, env=env, timeout=3600),
                             f"emulated link {mbit}")
        for r, e in zip(real["rows"], emu["rows"]):
            out.append(dict(mbit=mbit, setting=r["setting"], real=real["local"] / r["seconds"],
                            emulated=emu["local"] / e["seconds"], real_s=r["seconds"], emulated_s=e["seconds"],
                            local_real_s=real["local"], local_emulated_s=emu["local"], bytes=r["bytes"],
                            bytes_emulated=e["bytes"], kernel_job_bytes=kernel))
        print(f"[bench_real_links] {mbit or 'unshaped'}: " + ", ".join(
            f"{o['setting']} real {o['real']:.2f}x emulated {o['emulated']:.2f}x" for o in out if o["mbit"] == mbit),
            file=sys.stderr, flush=True)
    return out


def measure_budgets(args) -> list[dict]:
    """Real links only: t1 from a job on the unshaped hosts, then each budget's links at B / t1."""
    env = job_env()
    out = []
    with netns_hosts.Hosts(2, None) as hosts:
        first = last_json(hosts.run(_job_args(args), timeout=3600, env=env), "unshaped hosts")
    t1 = first["local"]
    for budget in [None, *args.budgets]:
        mbit = None if budget is None else budget * 1e6 * 8 / t1 / 1e6
        if budget is None:
            real = first
        else:
            with netns_hosts.Hosts(2, mbit) as hosts:
                real = last_json(hosts.run(_job_args(args), timeout=3600, env=env), f"budget {budget} MB")
        for r in real["rows"]:
            out.append(dict(budget_mb=budget, mbit=mbit, t1=t1, setting=r["setting"], real=real["local"] / r["seconds"],
                            real_s=r["seconds"], local_real_s=real["local"], bytes=r["bytes"]))
        print(f"[bench_real_links] B = {budget or 'unshaped'} MB ({mbit or 0:.2f} Mbit/s, t1 {t1:.2f} s): " + ", ".join(
            f"{o['setting']} {o['real']:.2f}x" for o in out if o["budget_mb"] == budget), file=sys.stderr, flush=True)
    return out


def markdown_budgets(rows, args, command) -> str:
    lines = [f"## Settings at link budgets B on real links (SmolLM2 shape, random weights, N = {args.tokens})", "",
             f"Command: `{command}`", "",
             "2 test hosts x 1 thread (network namespaces, MPICH over TCP, each direction shaped by the kernel's "
             "tbf) at an equal split, against one process x 1 thread in the same job. B: the bytes a link moves "
             "while one process computes the request (rate x t1, t1 timed on the unshaped hosts first). Bytes: "
             "the payloads the package counted per forward.", "",
             "| B | rate | t1 | setting | speed-up | seconds | one process | bytes per forward |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        b = "unshaped" if r["budget_mb"] is None else f"{r['budget_mb']:g} MB"
        rate = "-" if r["mbit"] is None else f"{r['mbit']:.2f} Mbit/s"
        lines.append(f"| {b} | {rate} | {r['t1']:.2f} s | {r['setting']} | {r['real']:.2f}x | {r['real_s']:.2f} s | "
                     f"{r['local_real_s']:.2f} s | {r['bytes']:,} |")
    lines.append("")
    for budget, target in BUDGET_TARGETS.items():
        for setting in ("lean", "tuned"):  # the settings of a quarter of edge's bytes
            got = [r for r in rows if r["budget_mb"] == budget and r["setting"] == setting]
            if got:
                lines.append(f"- B = {budget:g} MB, {setting} target >= {target}x: {got[0]['real']:.2f}x "
                             f"({'met' if got[0]['real'] >= target else 'missed'})")
    return "\n".join(lines) + "\n"


def markdown(rows, args, command) -> str:
    lines = [f"## Real links against the emulated link (SmolLM2 shape, random weights, N = {args.tokens})", "",
             f"Command: `{command}`", "",
             "2 ranks x 1 thread against one process x 1 thread in the same job. Real: 2 test hosts "
             "(network namespaces, `tools/netns_hosts.py`), MPICH over TCP, each uplink and downlink shaped "
             "by the kernel's tbf, no added latency; the package's emulation off. Emulated: 2 ranks over "
             "shared memory with `EmulatedLink` at the same rate, 0 ms per message. Bytes: counted by the "
             "package per forward; kernel: every byte the hosts' interfaces sent during the whole real job "
             f"({args.repeats + 1} forwards per setting, both settings, plus loading, heartbeats and the "
             "launcher's traffic).", "",
             "| link | setting | real TCP | emulated | real / emulated | bytes per forward | kernel, whole job |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        link = "unshaped veth" if r["mbit"] is None else f"{r['mbit']:g} Mbit/s"
        emu = "- (shared memory)" if r["mbit"] is None else f"{r['emulated']:.2f}x"
        lines.append(f"| {link} | {r['setting']} | {r['real']:.2f}x | {emu} | {r['real'] / r['emulated']:.2f} | "
                     f"{r['bytes']:,} | {r['kernel_job_bytes']:,} |")
    lines.append("")
    for mbit, target in TARGETS.items():
        got = [r for r in rows if r["mbit"] == mbit]
        if got:
            lines.append(f"- {mbit:g} Mbit/s, target >= {target}x: " + ", ".join(
                f"{r['setting']} {r['real']:.2f}x ({'met' if r['real'] >= target else 'missed'})" for r in got))
    return "\n".join(lines) + "\n"


def put_in_frontier(text: str, path: Path = FRONTIER) -> None:
    """Replace the real-links block of docs/FRONTIER.md (or append one)."""
    doc = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{text}{END}\n"
    if BEGIN in doc and END in doc:
        doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", lambda m: block, doc, flags=re.S)
    else:
        doc = doc.rstrip("\n") + "\n\n" + block
    path.write_text(doc)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    why = netns_hosts.available()
    if why:
        print(f"bench_real_links: {why}", file=sys.stderr)
        return 2
    netns_hosts.exit_on_signals()
    from prism_ops.config import PRESETS

    if any(PRESETS.get(s, {}).get("dense_layers") == "auto" for s in args.settings):
        args.dense_layers = ",".join(map(str, smollm2_dense_layers()))
    command = "python bench/bench_real_links.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    if args.budgets:
        rows = measure_budgets(args)
        text = markdown_budgets(rows, args, command)
        write_outputs(Path(args.out), args, rows, text)
        print(text)
        return 0
    rows = measure(args)
    text = markdown(rows, args, command)
    write_outputs(Path(args.out), args, rows, text)
    if not args.no_frontier:
        put_in_frontier(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
