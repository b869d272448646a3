"""Fixed-input outputs of prism-ops, the regression net of tests/test_golden.py.

    python tests/golden/capture.py OUT.json        # OUT.json: what this checkout computes

It only uses interfaces that a refactor keeps: `prism_ops.partitioned_attention`, and the
`prism-run` and `s2m3-place` commands with `--json`. tests/golden/golden.json holds the
`prism-run` and `s2m3-place` outputs written by this script before the layers above `ops/` were
restructured; the `partitioned_attention` outputs (golden.json's "partitioned_attention", once
sha256 digests of the bytes) were captured again as values with the restructured code.

Floats from this capture are compared within error budgets, never bit for bit: another CPU's
math libraries take other code paths (vector widths, summation orders). Besides the outputs it
records what the budgets need, measured in this process:
- `one_step`: how far the output moves when, in every quantized exchange, the code nearest a
  rounding boundary lands on its other side (`budgets.flip_one_code`): the effect of a one-step
  flip, which another machine's last-bit differences may cause;
- `margins`: for generation, the gap between the two largest logits at each generated token,
  from the same setting run in one process (`run_simulated` with the same partitions), and
  `logit_scale`, the largest |logit| there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import prism_ops
from prism_ops import hf
from prism_ops.cli.run import parse_args
from prism_ops.hf import max_positions
from prism_ops.in_process import run_simulated
from prism_ops.models import load
from prism_ops.jobs.request import make_request

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from budgets import flip_one_code  # noqa: E402

BIN = Path(sys.executable).parent
TEXT = str(HERE / "input.txt")
# Torch threads per process: 1 unless OMP_NUM_THREADS says otherwise (the budgets hold for any
# number; another count sums in another order).
THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(THREADS), TOKENIZERS_PARALLELISM="false")

# partitioned_attention: (name, kwargs). Shapes: q [2, 4, 45, 16], k/v [2, 2, 45, 16].
ATTENTION = [
    ("paper-p3-cs4", dict(num_partitions=3, segment_size=4)),
    ("causal-p4-cs5-sinks-halo", dict(num_partitions=4, segment_size=5, causal=True, sink_tokens=2, halo=3)),
    ("padded-weights-clusters-bits", dict(num_partitions=3, segment_size=3, weights=(3, 2, 1), cluster_iters=2,
                                          summary_bits=4, valid=True)),
    ("nobias-bits3-causal", dict(num_partitions=2, segment_size=7, causal=True, log_count_bias=False, summary_bits=3)),
]

# prism-run: (name, ranks or None for --simulate 4, arguments).
RUNS = [
    ("minilm-simulate4-cs16", None, ["--model", "minilm", "--segment-size", "16", "--sink-tokens", "2", "--halo", "2"]),
    ("smollm2-simulate4-edge-generate", None, ["--model", "smollm2", "--preset", "edge", "--generate", "4"]),
    ("minilm-mpi2-edge", 2, ["--model", "minilm", "--preset", "edge"]),
    ("minilm-mpi3-cs8-bits4", 3, ["--model", "minilm", "--segment-size", "8", "--summary-bits", "4", "--halo", "1"]),
    ("smollm2-mpi3-cs16-generate", 3, ["--model", "smollm2", "--segment-size", "16", "--sink-tokens", "4",
                                       "--generate", "4"]),
]

PLACE_DEVICES = {"devices": [{"name": "a", "memory_gb": 0.0004, "speed": 1.0}, {"name": "b", "memory_gb": 0.0004,
                                                                                   "speed": 0.5},
                             {"name": "c", "memory_gb": 0.0003, "speed": 2.0}],
                 "links": [{"a": "a", "b": "b", "mbit": 300, "latency_ms": 1}],
                 "default_link": {"mbit": 50, "latency_ms": 5}}
PLACE_TASKS = {"models": ["cifar10-vits16", "sentiment-minilm", "image-text-retrieval", "keywords-whisper"],
               "size": "tiny", "input_bytes": {"image": 12288, "text": 96, "audio": 12800},
               "compute_s": {"vit-b16": 0.05, "vit-s16": 0.02, "minilm": 0.01, "whisper-tiny": 0.03,
                             "similarity": 0.0001, "classifier:384x12:seed18": 0.001, "classifier:384x10:seed13": 0.001,
                             "classifier:384x2:seed15": 0.001, "projector:768x256:seed19": 0.002,
                             "projector:384x256:seed20": 0.002}}


def attention_inputs(kw):
    """(q, k, v, kwargs) of one case; q [2, 4, 45, 16], k/v [2, 2, 45, 16] from seed 5."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 4, 45, 16, generator=g)
    k, v = torch.randn(2, 2, 45, 16, generator=g), torch.randn(2, 2, 45, 16, generator=g)
    kw = dict(kw)
    if kw.pop("valid", False):
        valid = torch.ones(2, 45, dtype=torch.bool)
        valid[1, 38:] = False
        kw["valid"] = valid
    return q, k, v, kw


def attention(name: str, dtype=torch.float32) -> torch.Tensor:
    """partitioned_attention's output `[2, 4, 45, 16]` for case `name`, inputs cast to dtype."""
    q, k, v, kw = attention_inputs(dict(ATTENTION)[name])
    return prism_ops.partitioned_attention(q.to(dtype), k.to(dtype), v.to(dtype), backend="torch", **kw)


def attention_cases() -> dict:
    """{case: {"shape", "output" (floats, 9 significant digits: float32 round-trips), and for
    quantized cases "one_step" (the largest change under flip_one_code)}}. Their values do lie
    close to boundaries: a channel's minimum, which travels as float16, comes within 2e-7 of a
    float16 midpoint in both quantized cases."""
    torch.set_num_threads(THREADS)
    out = {}
    for name, kw in ATTENTION:
        o = attention(name)
        case = {"shape": list(o.shape), "output": [float(f"{x:.9g}") for x in o.flatten().tolist()]}
        if kw.get("summary_bits"):
            with flip_one_code():
                case["one_step"] = float(f"{(attention(name) - o).abs().max().item():.3g}")
        out[name] = case
    return out


def run_cases(names=None) -> dict:
    out = {}
    for name, ranks, args in RUNS:
        if names is not None and name not in names:
            continue
        cmd = [str(BIN / "prism-run"), "--input-file", TEXT, "--threads", str(THREADS), "--json", *args]
        if ranks is None:
            cmd += ["--simulate", "4"]
        else:
            mpiexec = str(BIN / "mpiexec") if (BIN / "mpiexec").exists() else shutil.which("mpiexec")
            cmd = [mpiexec, "-n", str(ranks), *cmd]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
        if p.returncode != 0:
            raise RuntimeError(f"{name}: exit {p.returncode}\n{p.stderr[-3000:]}")
        obj = json.loads(p.stdout.strip().splitlines()[-1])
        out[name] = {"output": obj["output"], "bytes": obj["bytes"]}
    return out


def sensitivity(names=None) -> dict:
    """{run: {"one_step": max output change under flip_one_code (quantized settings only),
    "margins": top-2 logit gap per generated token and "logit_scale": the largest |logit|
    (generation only)}}, each setting run in
    this process with the same partitions (`--simulate` for the MPI runs)."""
    torch.set_num_threads(THREADS)
    loaded, out = {}, {}
    for name, ranks, args in RUNS:
        if names is not None and name not in names:
            continue
        opts = parse_args(["--input-file", TEXT, *args])
        tok, model = loaded[opts.model] if opts.model in loaded else loaded.setdefault(opts.model, load(opts.model))
        config = hf.configure(model, opts.config_for(ranks or 4)).config
        req = make_request(tok, opts, None, max_positions(model))
        logits = []
        head = model.get_output_embeddings() if opts.generate else None
        hook = head.register_forward_hook(lambda m, i, o: logits.append(o.float())) if head is not None else None

        def run():
            logits.clear()
            res = run_simulated(model, req, ranks or 4, eos=tok.eos_token_id if opts.generate else None)
            return (torch.stack([x.reshape(-1, x.shape[-1])[-1] for x in logits]) if opts.generate
                    else res.output[0].float())

        base = run()
        case = {}
        if opts.generate:
            top2 = base.topk(2, dim=-1).values
            case["margins"] = [float(f"{m:.4g}") for m in (top2[:, 0] - top2[:, 1]).tolist()]
            case["logit_scale"] = float(f"{base.abs().max().item():.4g}")
        if config.summary_bits:
            with flip_one_code():
                case["one_step"] = float(f"{(run() - base).abs().max().item():.3g}")
        if hook is not None:
            hook.remove()
        out[name] = case
    return out


def place_case() -> dict:
    with tempfile.TemporaryDirectory() as d:
        dev, tasks, plan = (Path(d) / n for n in ("d.json", "t.json", "plan.json"))
        dev.write_text(json.dumps(PLACE_DEVICES))
        tasks.write_text(json.dumps(PLACE_TASKS))
        # --planner greedy: the planner the golden plan was made with (an optimal MILP planner
        # became the default afterwards).
        cmd = [str(BIN / "s2m3-place"), "--devices", str(dev), "--tasks", str(tasks), "--branch-and-bound", "--json", str(plan),
               "--planner", "greedy"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
        if p.returncode != 0:
            raise RuntimeError(f"s2m3-place: exit {p.returncode}\n{p.stderr[-3000:]}")
        out = json.loads(plan.read_text())
        out.pop("suite_version", None)  # a key added later (issue 12): not part of the old plans
        return out


def capture() -> dict:
    runs, extra = run_cases(), sensitivity()
    return {"partitioned_attention": attention_cases(),
            "prism_run": {name: {**runs[name], **extra[name]} for name in runs}, "prism_place": place_case()}


if __name__ == "__main__":
    result = capture()
    Path(sys.argv[1]).write_text(json.dumps(result, indent=1) + "\n")
