"""prism-serve under real mpiexec: bursts of mixed requests through modules spread over 3 ranks
(and over 2 with a load-aware plan), each answered exactly once; bad plans refused before any
rank serves."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("mpi4py")
pytest.importorskip("transformers")

from prism_ops.cli.place import main as place  # noqa: E402
from prism_ops.s2m3.suite import Model, example_inputs  # noqa: E402

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(not (BIN / "mpiexec").exists(), reason="needs mpiexec (pip install mpich)")
MODELS = ["cifar10-vits16", "sentiment-minilm", "image-text-retrieval", "audio-text-retrieval", "imagenet-vitb16"]
DEVICES = {"devices": [{"name": n, "memory_gb": 0.0005} for n in "abc"], "default_link": {"mbit": 100}}


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan")
    (d / "d.json").write_text(json.dumps(DEVICES))
    (d / "t.json").write_text(json.dumps({"models": MODELS, "size": "tiny",
                                          "input_bytes": {"image": 12288, "text": 96, "audio": 12800}}))
    place(["--devices", str(d / "d.json"), "--tasks", str(d / "t.json"), "--json", str(d / "plan.json")])
    p = json.loads((d / "plan.json").read_text())
    assert len(set(p["plan"].values())) >= 2  # the modules really are spread over ranks
    return d / "plan.json"


def serve(n, plan, lines, timeout=120, extra=()):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [str(BIN / "mpiexec"), "-n", str(n), sys.executable, "-m", "prism_ops.cli.serve", "--plan", str(plan),
           *extra]
    return subprocess.run(cmd, input="\n".join(lines), capture_output=True, text=True, timeout=timeout, env=env)


def test_burst_of_mixed_requests(plan):
    reqs = [{"id": i, "model": MODELS[(i * 7) % len(MODELS)], "seed": i} for i in range(15)]
    p = serve(3, plan, [json.dumps(r) for r in reqs])
    assert p.returncode == 0, p.stderr[-3000:]
    out = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert [o["id"] for o in out] == list(range(15))  # every request answered, once, in order
    torch.set_num_threads(1)
    for r, o in zip(reqs, out):
        want = Model(r["model"], "tiny")(example_inputs("tiny", seed=r["seed"]))
        assert torch.allclose(torch.tensor(o["output"]), want, atol=1e-6), r


@pytest.mark.parametrize("ranks,lines,message", [
    (4, ['{"id": 1, "model": "sentiment-minilm"}'], "the plan has 3 devices but the job has 4 ranks"),
    (3, ['{"id": 1, "model": "topic-minilm"}'], "is not in the plan"),
    (3, ['{"id": 1, "model": "sentiment-minilm"}', '{"id": 1, "model": "sentiment-minilm"}'], "used twice"),
    (3, ["not json"], "stdin: line 1: expected a JSON object"),
    (3, ['{"id": {"a": 1}, "model": "sentiment-minilm"}'], "stdin: line 1: id must be a string"),
])
def test_bad_requests_and_plans(plan, ranks, lines, message):
    p = serve(ranks, plan, lines)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert message in p.stderr


def test_prism_inside_s2m3(plan, tmp_path):
    """vit-s16 spread over ranks 1 and 2 with PRISM attention; segment size 1 is exact."""
    p = json.loads(plan.read_text())
    p["prism"] = {"vit-s16": {"devices": ["b", "c"], "segment_size": 1}}
    spread = tmp_path / "plan.json"
    spread.write_text(json.dumps(p))
    reqs = [{"id": i, "model": m, "seed": i} for i, m in enumerate(["cifar10-vits16", "sentiment-minilm"] * 3)]
    out = serve(3, spread, [json.dumps(r) for r in reqs])
    assert out.returncode == 0, out.stderr[-3000:]
    got = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [o["id"] for o in got] == list(range(6))
    torch.set_num_threads(1)
    for r, o in zip(reqs, got):
        want = Model(r["model"], "tiny")(example_inputs("tiny", seed=r["seed"]))
        assert torch.allclose(torch.tensor(o["output"]), want, atol=1e-5), r
    p["prism"] = {"vit-s16": {"devices": ["b"]}}
    spread.write_text(json.dumps(p))
    bad = serve(3, spread, [json.dumps(reqs[0])])
    assert bad.returncode == 2 and "needs 2 or more distinct devices" in bad.stderr


def test_burst_with_a_load_aware_plan_is_answered_once_each(tmp_path):
    """A tasks file's burst gives the plan; 12 mixed requests (4 models, 3 each, shared encoders)
    at once on 2 ranks: every id answered exactly once, each with its own model's output."""
    models = ["cifar10-vits16", "food101-vits16", "sentiment-minilm", "image-text-retrieval"]
    devices = {"devices": [{"name": n, "memory_gb": 0.0005} for n in "ab"], "default_link": {"mbit": 1000}}
    (tmp_path / "d.json").write_text(json.dumps(devices))
    (tmp_path / "t.json").write_text(json.dumps({"models": models, "size": "tiny", "burst": {m: 3 for m in models},
                                                 "input_bytes": {"image": 12288, "text": 96}}))
    place(["--devices", str(tmp_path / "d.json"), "--tasks", str(tmp_path / "t.json"),
           "--json", str(tmp_path / "plan.json")])
    reqs = [{"id": f"r{i}", "model": models[i % 4], "seed": 100 + i} for i in range(12)]
    p = serve(2, tmp_path / "plan.json", [json.dumps(r) for r in reqs], extra=["--devices", str(tmp_path / "d.json")])
    assert p.returncode == 0, p.stderr[-3000:]
    out = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert [o["id"] for o in out] == [r["id"] for r in reqs]
    torch.set_num_threads(1)
    for r, o in zip(reqs, out):
        want = Model(r["model"], "tiny")(example_inputs("tiny", seed=r["seed"]))
        assert o["model"] == r["model"] and torch.allclose(torch.tensor(o["output"]), want, atol=1e-6), r


def test_refused_before_any_rank_serves(plan, tmp_path):
    """Overlapping PRISM groups (which could deadlock) and devices out of rank order: exit 2 at once."""
    p = json.loads(plan.read_text())
    p["prism"] = {"vit-s16": {"devices": ["b", "c"]}, "minilm": {"devices": ["a", "b"]}}
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps(p))
    out = serve(3, bad, ['{"id": 1, "model": "sentiment-minilm"}'], timeout=60)
    assert out.returncode == 2 and "prism groups of 'minilm' and 'vit-s16' share device(s) ['b']" in out.stderr
    devices = tmp_path / "d.json"
    devices.write_text(json.dumps({"devices": [{"name": n, "memory_gb": 0.0005} for n in "acb"]}))
    out = serve(3, plan, ['{"id": 1, "model": "sentiment-minilm"}'], timeout=60, extra=["--devices", str(devices)])
    assert out.returncode == 2 and "do not match the ranks' devices ['a', 'c', 'b']" in out.stderr
