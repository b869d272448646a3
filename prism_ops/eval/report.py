"""prism-eval's outputs: a markdown table per model, a JSON file, and quality-vs-bytes plots."""

from __future__ import annotations

import json
from pathlib import Path

# prism-eval --budgets writes its table below this line of EVAL.md; the grid's report keeps it.
MARKER = "<!-- prism-eval --budgets writes below this line -->"
TRAFFIC_TARGET = 0.15  # at most 15% of full-exchange bytes (>= 85% less traffic)
QUALITY_TARGET = {"mean cos": (0.98, "higher"), "ppl / exact": (1.10, "lower")}


def meets(metric: str, value: float) -> bool:
    bound, better = QUALITY_TARGET[metric]
    return value >= bound if better == "higher" else value <= bound


def best_within_target(rows: list[dict], metric: str, partitions: int = 4) -> dict | None:
    """The best-quality row at `partitions` ranks and <= TRAFFIC_TARGET of full-exchange bytes."""
    ok = [r for r in rows if r["partitions"] == partitions and r["bytes"] <= TRAFFIC_TARGET]
    if not ok:
        return None
    higher = QUALITY_TARGET[metric][1] == "higher"
    return max(ok, key=lambda r: r["quality"] if higher else -r["quality"])


def _fmt(v, pct=False):
    if isinstance(v, float):
        return f"{100 * v:.1f}%" if pct else f"{v:.4f}"
    return str(v)


def markdown(results: list[dict], command: str) -> str:
    out = ["# PRISM quality against traffic on real models", "",
           f"Command: `{command}`", "",
           "bytes: what the ranks send per layer, over full position-wise exchange (n_p x d hidden values per "
           "rank, fp32), from `prism_ops.cost`. FLOPs: the busiest rank's per-layer matrix-product FLOPs "
           "over one device running the whole sequence. Targets at 4 partitions and <= 15% bytes: "
           "MiniLM mean cos >= 0.98, SmolLM2 perplexity <= 1.10x exact.", ""]
    for res in results:
        rows, metric = res["rows"], res["metric"]
        out += [f"## {res['model']}", "", f"{res['describe']}", ""]
        best = best_within_target(rows, metric)
        if best:
            verdict = "meets" if meets(metric, best["quality"]) else "misses"
            out += [f"Best at 4 partitions within 15% bytes: **{best['method']}**, segment size "
                    f"{best['segment_size']}: {metric} {best['quality']:.4f} at {100 * best['bytes']:.1f}% bytes "
                    f"({verdict} the target).", ""]
        keys = [k for k in rows[0]["metrics"] if k != "quality"]
        out.append("| method | P | segment size | levers | exchange | bytes | FLOPs | " + " | ".join(keys) + " |")
        out.append("|" + " --- |" * (7 + len(keys)))
        for r in rows:
            cells = [r["method"], r["partitions"], r["segment_size"], r["levers"], r["exchange"],
                     _fmt(r["bytes"], True), _fmt(r["flops"], True)] + [_fmt(r["metrics"][k]) for k in keys]
            out.append("| " + " | ".join(str(c) for c in cells) + " |")
        for note in res.get("skipped", []):
            out.append(f"\nNot run: {note}")
        out.append("")
    return "\n".join(out)


def plot(res: dict, path: Path, partitions: int = 4) -> None:
    """Quality against bytes at `partitions` ranks, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    methods = []
    for r in res["rows"]:
        if r["partitions"] == partitions and r["method"] not in methods:
            methods.append(r["method"])
    for m in methods:
        pts = sorted((r["bytes"], r["quality"]) for r in res["rows"] if r["method"] == m and r["partitions"] == partitions)
        xs, ys = zip(*pts)
        ax.plot(xs, ys, "o-" if len(pts) > 1 else "*", label=m, markersize=5 if len(pts) > 1 else 12)
    bound = QUALITY_TARGET[res["metric"]][0]
    ax.axvline(TRAFFIC_TARGET, color="grey", ls=":", lw=1)
    ax.axhline(bound, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("bytes sent per layer / full exchange")
    ax.set_ylabel(res["metric"])
    if res["metric"] == "ppl / exact":
        ax.set_yscale("log")
    ax.set_title(f"{res['model']}, {partitions} partitions, {res['tokens']} tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: list[dict], out_dir: Path, command: str, stem: str = "EVAL") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem.lower()}.json"]
    text = markdown(results, command)
    for res in results:
        png = out_dir / f"{stem.lower()}_{res['key']}.png"
        plot(res, png)
        paths.append(png)
        text += f"\n![{res['model']}]({png.name})\n"
    # The budgets table (`prism-eval --budgets`) lives below its marker in the same file: keep it.
    old = paths[0].read_text() if paths[0].exists() else ""
    if MARKER in old:
        text = text.rstrip() + "\n\n" + MARKER + old.split(MARKER, 1)[1]
    paths[0].write_text(text)
    paths[1].write_text(json.dumps({"command": command, "results": results}, indent=1))
    return paths
