"""Fixed-input outputs of prism-ops, for the before/after check of a refactor (tests/test_golden.py).

    python tests/golden/capture.py OUT.json        # OUT.json: what this checkout computes

It only uses interfaces that a refactor keeps: `prism_ops.partitioned_attention`, and the
`prism-run` and `prism-place` commands with `--json`. Every case runs with one torch thread, so
the float32 sums are done in one fixed order and outputs can be compared bit for bit (JSON floats
round-trip exactly). tests/golden/golden.json was written by this script before the layers above
`ops/` were restructured; the test runs it again and compares.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import prism_ops

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
TEXT = str(HERE / "input.txt")
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")

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


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def attention_cases() -> dict:
    torch.set_num_threads(1)
    out = {}
    for name, kw in ATTENTION:
        g = torch.Generator().manual_seed(5)
        q = torch.randn(2, 4, 45, 16, generator=g)
        k, v = torch.randn(2, 2, 45, 16, generator=g), torch.randn(2, 2, 45, 16, generator=g)
        kw = dict(kw)
        if kw.pop("valid", False):
            valid = torch.ones(2, 45, dtype=torch.bool)
            valid[1, 38:] = False
            kw["valid"] = valid
        out[name] = digest(prism_ops.partitioned_attention(q, k, v, backend="torch", **kw))
    return out


def run_cases(names=None) -> dict:
    out = {}
    for name, ranks, args in RUNS:
        if names is not None and name not in names:
            continue
        cmd = [str(BIN / "prism-run"), "--input-file", TEXT, "--threads", "1", "--json", *args]
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


def place_case() -> dict:
    with tempfile.TemporaryDirectory() as d:
        dev, tasks, plan = (Path(d) / n for n in ("d.json", "t.json", "plan.json"))
        dev.write_text(json.dumps(PLACE_DEVICES))
        tasks.write_text(json.dumps(PLACE_TASKS))
        # --planner greedy: the planner the golden plan was made with (issue 12 made an optimal
        # MILP planner the default afterwards). Older code had greedy only and no such flag.
        cmd = [str(BIN / "prism-place"), "--devices", str(dev), "--tasks", str(tasks), "--exact", "--json", str(plan)]
        if "--planner" in subprocess.run([str(BIN / "prism-place"), "--help"], capture_output=True, text=True).stdout:
            cmd += ["--planner", "greedy"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
        if p.returncode != 0:
            raise RuntimeError(f"prism-place: exit {p.returncode}\n{p.stderr[-3000:]}")
        out = json.loads(plan.read_text())
        out.pop("suite_version", None)  # a key added later (issue 12): not part of the old plans
        return out


def capture() -> dict:
    return {"partitioned_attention": attention_cases(), "prism_run": run_cases(), "prism_place": place_case()}


if __name__ == "__main__":
    result = capture()
    Path(sys.argv[1]).write_text(json.dumps(result, indent=1) + "\n")
