"""prism-serve under real mpiexec: a burst of mixed requests through modules spread over 3 ranks."""

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


def serve(n, plan, lines, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [str(BIN / "mpiexec"), "-n", str(n), sys.executable, "-m", "prism_ops.cli.serve", "--plan", str(plan)]
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
    (3, ["not json"], "request line 1"),
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
