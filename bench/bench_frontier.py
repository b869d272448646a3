"""The frontier: quality and end-to-end time of each PRISM setting on the same requests.

    mpiexec -n 2 python bench/bench_frontier.py                    # both models, every setting and link
    mpiexec -n 2 python bench/bench_frontier.py --quick            # short N, one window, 2 links: a smoke run
    mpiexec -n 2 python bench/bench_frontier.py --models minilm --settings edge,edge-3bit --links inf,10

The `codebook` setting reads each model's calibration file from `--codebook-dir` (default
bench/out/codebooks): make them first with `prism-calibrate --model M --out DIR/M.codebook`.

Real weights on real text (CPython's pydoc_data, `prism_ops.eval.tasks`): SmolLM2-135M at
N = 2048 (perplexity over the exact model's), all-MiniLM-L6-v2 at N = 512, its maximum (mean and
min cosine of mean-pooled embeddings to the exact model's). Quality is measured on the ranks of
this launch (P = the MPI size, the same N), through the real MPI runtime, on an unlimited link.

Time: every rank runs 1 thread. Rank 0 alone runs the exact model (SDPA) on the first window
while the others idle; then all ranks run the setting over every link: unlimited (shared
memory) and emulated links (`distributed/link.py` EmulatedLink: `--links` Mbit/s, each with
`--latency-ms` per message). A request is a prefill to the last token's logits (SmolLM2) or
to the sentence embedding (MiniLM), scatter and gather included. Times are medians of
`--repeats` requests (one on links <= 10 Mbit/s); a setting whose transfer alone would take
over `--max-slowdown` times the one-device time (predicted from the cost model) is skipped
at that link and marked so.

Per setting also: bytes on the wire per forward (counted by the communicator; checked equal
to `prism_ops.cost`), their share of full position-wise exchange in fp32 and in fp16 (what a
GPU or Jetson would send), and the busiest rank's FLOPs over one device's (`prism_ops.cost`).
A 4-device projection (`prism_ops.link_profile.predict_seconds`: the cost model's per-layer
FLOPs at the seconds per FLOP measured here on one device, plus per-layer transfer; decoders
stream, so the larger of the two) is printed and written, labelled as a projection.

With `--real-links --cells ...` it runs bench/bench_balanced.py instead: unequal hosts and link
budgets B (the bytes a link moves while one host computes the request), the split `--profile`
then `--auto` plans. With `--real-links` alone (as root, plain python, no mpiexec) it runs
bench/bench_real_links.py instead: edge and fast over real kernel-shaped TCP links between test hosts next to the
emulated link, into docs/FRONTIER.md's real-links block, which a run of this bench keeps.

Writes `--out`.md (the table), `--out`.json (every row) and `--out`.png (quality against
speed-up, one curve per link rate; matplotlib). Timings on a shared machine are noisy: the
ratios are taken against the one-device time of the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from prism_ops import cost, hf, models
from prism_ops.config import PrismConfig
from prism_ops.link_profile import plan_request, predict_seconds, profile_dict
from prism_ops.distributed.comm import Communicator
from prism_ops.distributed.link import EmulatedLink
from prism_ops.distributed.runtime import run_distributed
from prism_ops.request_types import Request
from prism_ops.in_process import run_simulated
from prism_ops.distributed.control import bcast_json
from prism_ops.eval import tasks
from prism_ops.eval.metrics import cosine_stats, next_token_nll, perplexity
from prism_ops.ops.chunk_summary import visible_chunks

from bench_distributed import timed  # bench/ is on the path of a script run from it
from bench_real_links import main as real_links

torch.set_num_threads(1)

CODEBOOK = "<codebook>"  # stands for the model's calibration file in --codebook-dir
# name -> (preset, levers). "exact" sends every K/V row at full precision (full exchange). A
# setting the model cannot run (hidden exchange with rotary embeddings) is left out for it.
SETTINGS = {
    "exact": ("exact", {}),
    "exact-hidden": ("exact", {"exchange": "hidden"}),
    "accurate": ("accurate", {}),
    "accurate-kv": ("accurate", {"exchange": "kv"}),
    "edge": ("edge", {}),
    "edge-kv": ("edge", {"exchange": "kv"}),
    "fast": ("fast", {}),
    "lean": ("lean", {}),
    "fast-2bit": ("fast", {"summary_bits": 2}),
    "paper s16": ("paper", {"segment_size": 16}),
    # 2 bits per value as codes of channel groups from the model's own calibrated codebooks
    # (`prism-calibrate`; the file is --codebook-dir/<model>.codebook), first 4 tokens exact.
    "codebook": ("accurate", {"summary_bits": 0, "summary_codebook": CODEBOOK}),
}
DEFAULT_SETTINGS = "exact,exact-hidden,accurate,accurate-kv,edge,edge-kv,fast,lean,codebook,paper s16"
AUTO_PRESET = "edge"  # the auto row: prism-run --auto with the default preset (link_profile.plan_request)
# model -> (tokens, quality windows, quality label, budget): the "within 1% of exact".
MODELS = {
    "smollm2": dict(tokens=2048, windows=4, metric="ppl / exact", budget="<= 1.05"),
    "minilm": dict(tokens=512, windows=8, metric="mean cos", budget="mean >= 0.99, min >= 0.97"),
}
REAL_BEGIN = "<!-- real-links -->"  # the block bench_real_links.py writes into FRONTIER.md (kept here)
QUICK = {"smollm2": dict(tokens=512, windows=1), "minilm": dict(tokens=256, windows=2)}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,minilm", help=f"comma-separated, of {sorted(MODELS)}")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"comma-separated, of {list(SETTINGS)}")
    ap.add_argument("--links", default="inf,1000,100,10,1", help="Mbit/s, comma-separated; inf = unlimited")
    ap.add_argument("--latency-ms", type=float, default=2.0, help="per-message latency of the emulated links")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, help="override every model's N")
    ap.add_argument("--windows", type=int, help="override every model's number of quality windows")
    ap.add_argument("--max-slowdown", type=float, default=4.0)
    ap.add_argument("--quick", action="store_true", help="short N, few windows, links inf,10, 1 repeat")
    ap.add_argument("--out", default="docs/FRONTIER", help="path prefix of the .md, .json and .png")
    ap.add_argument("--codebook-dir", default="bench/out/codebooks",
                    help="where the codebook setting finds <model>.codebook (made by prism-calibrate --model M "
                         "--out DIR/M.codebook)")
    args = ap.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.settings = [s for s in args.settings.split(",") if s]
    for m in args.models:
        if m not in MODELS:
            ap.error(f"--models: unknown model {m!r}; known: {sorted(MODELS)}")
    for s in args.settings:
        if s not in SETTINGS:
            ap.error(f"--settings: unknown setting {s!r}; known: {list(SETTINGS)}")
        for m in args.models:
            try:
                config_of(s, 2, m, args.codebook_dir)  # a bad preset, lever or file fails here, before any model loads
            except ValueError as e:
                ap.error(f"--settings: {s!r} on {m}: {e}")
    try:
        args.links = [None if x == "inf" else float(x) for x in args.links.split(",") if x]
        for x in args.links:
            if x is not None:
                EmulatedLink(x, args.latency_ms)  # checks rate and latency
    except ValueError as e:
        ap.error(f"--links/--latency-ms: {e}")
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.quick:
        args.links, args.repeats = [None, 10.0], 1
    return args


def config_of(name: str, P: int, model: str, codebook_dir: str) -> PrismConfig:
    preset, levers = SETTINGS[name]
    levers = {k: (str(Path(codebook_dir) / f"{model}.codebook") if v == CODEBOOK else v) for k, v in levers.items()}
    return PrismConfig.from_preset(P, preset, **levers)


def link_label(link):
    return "unlimited" if link is None else f"{link:g} Mbit/s"


class Bench:
    """One model on every rank; rank 0 also holds the exact references (`prism_ops.eval.tasks`)."""

    def __init__(self, comm, key, tokens, windows):
        self.comm, self.key, self.N = comm, key, tokens
        self.decoder = key == "smollm2"
        if comm.rank == 0:
            # The task holds the text windows and the exact model's reference quality.
            self.task = tasks.LOADERS[key](windows, tokens)
            self.model = self.task.model
            self.ids = self.task.windows if self.decoder else self.task.docs
        else:
            self.task, self.model, self.ids = None, models.load(key)[1], None
        bcast_json(self.comm, "loaded")
        self.shape = cost.ModelShape.from_config(self.model.config)
        self.L = self.model.config.num_hidden_layers

    def request(self, i, output):
        return Request(ids=self.ids[i : i + 1], output=output) if self.comm.rank == 0 else None

    def timing_output(self):
        return "logits" if self.decoder else "embedding"

    def local_seconds(self, repeats):
        """Rank 0 alone, exact model (SDPA), the first window; broadcast to every rank."""
        t = None
        if self.comm.rank == 0:
            tasks.use_exact_attention(self.model)
            req = self.request(0, self.timing_output())
            run_simulated(self.model, req, 1)  # warm-up
            t = timed(lambda: run_simulated(self.model, req, 1), repeats)
        return bcast_json(self.comm, t)

    def quality(self, runner, n_windows):
        """Quality of the configured setting (runner: hf.configure's) over the windows, through the
        MPI runtime (rank 0)."""
        outs, sent = [], None
        for i in range(n_windows):
            res = run_distributed(runner, self.comm, self.request(i, "hidden" if self.decoder else "embedding"),
                                  progress=False)
            if self.comm.rank == 0:
                outs.append(res.output)
                sent = res.bytes_per_layer
        if self.comm.rank != 0:
            return None, None
        if self.decoder:
            lm_head, total, count = self.model.get_output_embeddings(), 0.0, 0
            with torch.no_grad():
                for w, h in zip(self.ids, outs):
                    s, n = next_token_nll(lm_head(h), w[None])
                    total, count = total + s, count + n
            q = perplexity(total, count) / self.task.ref["ppl"]
            return {"quality": q, "ppl": q * self.task.ref["ppl"], "ppl_exact": self.task.ref["ppl"]}, sent
        mean, low = cosine_stats(torch.cat(outs), self.task.ref["docs"][: len(outs)])
        return {"quality": mean, "cos_mean": mean, "cos_min": low}, sent


def run_model(comm, key, args, rows, projections):
    spec = dict(MODELS[key])
    if args.quick:
        spec.update(QUICK[key])
    N = args.tokens or spec["tokens"]
    W = args.windows or spec["windows"]
    bench = Bench(comm, key, N, W)
    P, shape, L, causal = comm.size, bench.shape, bench.L, bench.decoder
    local = bench.local_seconds(args.repeats)
    one_flops = cost.one_device_flops_per_layer(shape, N, causal=causal)
    sec_per_flop = local / (L * one_flops)
    full32 = sum(cost.full_exchange_bytes_per_layer(shape, N, P)) * L
    full16 = sum(cost.full_exchange_bytes_per_layer(shape, N, P, dtype=torch.float16)) * L
    if comm.rank == 0:
        print(f"{key}: N={N}, {W} windows, one device {local:.3f} s", flush=True)
    done = set()
    for name in args.settings:
        try:
            runner = hf.configure(bench.model, config_of(name, P, key, args.codebook_dir), comm=comm)
        except ValueError as e:  # e.g. hidden exchange on a rotary-embedding model
            if comm.rank == 0:
                print(f"  {name}: not run on {key} ({e})", flush=True)
            continue
        config = runner.config  # exchange resolved for this model
        if config in done:  # e.g. edge-kv where edge already resolved to K/V exchange
            continue
        done.add(config)
        quality, counted = bench.quality(runner, W)
        predicted = cost.bytes_per_layer(shape, N, config, causal=causal)
        for link in args.links:
            wire_s = 0.0 if link is None else L * (args.latency_ms / 1e3 + max(
                sum(predicted[c] for c in visible_chunks(p, P, causal)) for p in range(P)) * 8 / (link * 1e6))
            row = dict(model=key, tokens=N, ranks=P, setting=name, config=config.as_dict(), link_mbit=link,
                       latency_ms=0.0 if link is None else args.latency_ms, local_seconds=local)
            if wire_s > args.max_slowdown * local:
                row.update(seconds=None, speedup=None, skipped=f"transfer alone {wire_s:.1f} s (cost model)")
            else:
                comm.link = None if link is None else EmulatedLink(link, args.latency_ms)
                req = bench.request(0, bench.timing_output())
                run_distributed(runner, comm, req, progress=False)  # warm-up
                t = timed(lambda: run_distributed(runner, comm, req, progress=False),
                          args.repeats if link is None or link > 10 else 1)
                comm.link = None
                row.update(seconds=t, speedup=local / t)
            if comm.rank == 0:
                counted_fwd = sum(counted)
                if counted_fwd != sum(predicted) * L:
                    raise AssertionError(f"{key} {name}: counted {counted_fwd} bytes, cost model {sum(predicted) * L}")
                row.update(quality, bytes_per_forward=counted_fwd, bytes_vs_full_fp32=counted_fwd / full32,
                           bytes_vs_full_fp16=counted_fwd / full16,
                           bytes_fp16_model=sum(cost.bytes_per_layer(shape, N, config, causal=causal,
                                                                     dtype=torch.float16)) * L,
                           flops_busiest=cost.compute_ratio(shape, N, config, causal=causal))
                rows.append(row)
                sp = "skipped" if row["speedup"] is None else f"{row['speedup']:.2f}x"
                print(f"  {name:>14} {link_label(link):>12}: quality {quality['quality']:.4f}, speed-up {sp}",
                      flush=True)
        if comm.rank == 0:
            c4 = config.replace(num_partitions=4)
            for link in args.links:
                t4 = predict_seconds(shape, N, c4, causal=causal, sec_per_flop=sec_per_flop, link_mbit=link,
                                     latency_ms=args.latency_ms)
                projections.append(dict(model=key, setting=name, devices=4, link_mbit=link, projected_seconds=t4,
                                        projected_speedup=local / t4))
    if comm.rank == 0:
        rows += auto_rows(rows, key, shape, causal, args.latency_ms)


def auto_rows(rows, key, shape, causal, latency_ms):
    """The `auto` row per link: what `prism-run --auto` plans for the default preset
    (`link_profile.plan_request`) from a profile of 2 equal devices at the rate measured here on
    one device (linear and attention work alike) and this link, with the chosen setting's time
    measured in this run at an equal split (the plan's bounds differ: bench_balanced.py times those)."""
    mine = [r for r in rows if r["model"] == key]
    out = []
    for link in dict.fromkeys(r["link_mbit"] for r in mine):
        at = [r for r in mine if r["link_mbit"] == link]
        first = at[0]
        P, N = first["ranks"], first["tokens"]
        rate = shape.num_layers * cost.one_device_flops_per_layer(shape, N, causal=causal) / first["local_seconds"]
        wire = {"bytes_s": 1e12 if link is None else link * 1e6 / 8, "latency_s": latency_ms / 1e3}
        prof = profile_dict(model=key, shape=shape, kind="decoder" if causal else "encoder", hosts=["here"] * P,
                            config=PrismConfig.from_preset(P, AUTO_PRESET),
                            devices=[{"linear_flops_s": rate, "attention_flops_s": rate}] * P,
                            links=[[None if a == b else wire for b in range(P)] for a in range(P)])
        exchanges = ("kv", "hidden") if any(r["config"]["exchange"] == "hidden" for r in at) else ("kv",)
        pick = plan_request(prof, N, PrismConfig.from_preset(P, AUTO_PRESET, exchange=exchanges[-1]),
                            preset=AUTO_PRESET, causal=causal, exchanges=exchanges)
        if pick["mode"] == "local":
            row = {k: first[k] for k in ("model", "tokens", "ranks", "link_mbit", "latency_ms", "local_seconds")}
            row.update(config=None, seconds=first["local_seconds"], speedup=1.0, quality=1.0, cos_min=1.0,
                       bytes_per_forward=0, bytes_vs_full_fp32=0.0, bytes_vs_full_fp16=0.0, flops_busiest=1.0,
                       picked="one device")
        else:
            wanted = PrismConfig.from_preset(first["ranks"], pick["preset"], exchange=pick["exchange"]).as_dict()
            chosen = next((r for r in at if r["config"] == wanted and r["seconds"]), None)
            if chosen is None:
                print(f"  auto at {link_label(link)}: picked {pick} but that setting was not measured", flush=True)
                continue
            row = dict(chosen, picked=chosen["setting"])
        out.append(dict(row, setting="auto", auto_pick=pick))
    return out


def markdown(rows, projections, args, command):
    lines = [f"Command: `{command}`", "",
             "2 MPI ranks x 1 thread against one process x 1 thread (exact model, SDPA) in the same run; "
             f"emulated links with {args.latency_ms:g} ms per message. Quality through the MPI runtime on the "
             "same ranks and N. Bytes: per forward, counted on the wire (= `prism_ops.cost`), over full "
             "position-wise exchange in fp32 and fp16. FLOPs: the busiest rank's over one device's.", ""]
    for key in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == key]
        links = list(dict.fromkeys(r["link_mbit"] for r in mine))
        spec = MODELS[key]
        lines += [f"## {key}, N = {mine[0]['tokens']}, {mine[0]['ranks']} ranks, one device "
                  f"{mine[0]['local_seconds']:.2f} s", "", f"Quality budget (issue 11): {spec['metric']} "
                  f"{spec['budget']}.", ""]
        extra = "cos min | " if key == "minilm" else ""
        lines.append(f"| setting | {spec['metric']} | {extra}bytes vs fp32 full | vs fp16 full | FLOPs | "
                     + " | ".join(f"{link_label(x)}" for x in links) + " |")
        lines.append("| --- " * (5 + bool(extra) + len(links)) + "|")
        for name in dict.fromkeys(r["setting"] for r in mine):
            rs = [r for r in mine if r["setting"] == name]
            r0 = rs[0]
            cells = [f"{r['speedup']:.2f}x" if r["speedup"] else "skipped" for r in rs]
            if name == "auto":  # its pick differs per link: name it in each cell
                cells = [f"{r['speedup']:.2f}x ({r['picked']})" for r in rs]
                lines.append(f"| auto ({AUTO_PRESET} budget) | per pick | {'per pick | ' if extra else ''}"
                             "per pick | per pick | per pick | " + " | ".join(cells) + " |")
                continue
            low = f"{r0['cos_min']:.4f} | " if extra else ""
            lines.append(f"| {name} | {r0['quality']:.4f} | {low}{100 * r0['bytes_vs_full_fp32']:.1f}% | "
                         f"{100 * r0['bytes_vs_full_fp16']:.1f}% | {100 * r0['flops_busiest']:.1f}% | "
                         + " | ".join(cells) + " |")
        lines += ["", "Projection for 4 devices (a projection, not a measurement: `link_profile.predict_seconds`, "
                  "the cost model's per-layer FLOPs at the seconds per FLOP measured here on one device plus the "
                  "per-layer transfer, added for encoders, the larger of the two for decoders, whose payloads "
                  "stream; no scatter, gather or Python overhead):", "",
                  "| setting | " + " | ".join(link_label(x) for x in links) + " |",
                  "| --- " * (1 + len(links)) + "|"]
        for name in dict.fromkeys(r["setting"] for r in mine if r["setting"] != "auto"):
            ps = [p for p in projections if p["model"] == key and p["setting"] == name]
            lines.append(f"| {name} | " + " | ".join(f"{p['projected_speedup']:.2f}x" for p in ps) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        mine = [r for r in rows if r["model"] == key and r["speedup"]]
        for link in dict.fromkeys(r["link_mbit"] for r in mine):
            pts = sorted((r["speedup"], r["quality"], r["setting"]) for r in mine
                         if r["link_mbit"] == link and r["setting"] != "auto")
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=link_label(link))
            for x, y, s in pts:
                ax.annotate(s, (x, y), fontsize=6, alpha=0.7)
            for r in mine:
                if r["link_mbit"] == link and r["setting"] == "auto":
                    ax.plot([r["speedup"]], [r["quality"]], "*", ms=12, color=line.get_color(), mfc="none")
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("speed-up over one device (same run)")
        ax.set_ylabel(MODELS[key]["metric"])
        ax.set_title(f"{key}, N = {mine[0]['tokens'] if mine else '?'}, {mine[0]['ranks'] if mine else '?'} ranks")
        ax.legend(fontsize=8, title="link (star: auto)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--real-links" in argv and any(a.startswith("--cells") for a in argv):  # unequal hosts, link budgets B
        from bench_balanced import main as balanced

        return balanced([a for a in argv if a != "--real-links"])
    if "--real-links" in argv:  # over real TCP between test hosts, next to the emulated link (as root)
        return real_links([a for a in argv if a != "--real-links"])
    args = parse_args(argv)
    comm = Communicator(timeout_s=1800)
    hf.register()
    rows, projections = [], []
    for key in args.models:
        run_model(comm, key, args, rows, projections)

    if comm.rank != 0:
        return
    command = "mpiexec -n %d python bench/bench_frontier.py %s" % (comm.size, " ".join(sys.argv[1:]))
    text = markdown(rows, projections, args, command.strip())
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = out.with_suffix(".md")
    old = md.read_text() if md.exists() else ""
    keep = old[old.index(REAL_BEGIN):] if REAL_BEGIN in old else ""  # bench_real_links.py's table
    md.write_text(text + "\n" + ("\n" + keep if keep else ""))
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "projections": projections}, indent=1) + "\n")
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.md')}, .json, .png")


if __name__ == "__main__":
    main()
