"""s2m3-serve under real mpiexec: bursts of mixed requests through modules spread over 3 ranks
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

from prism_ops import hf  # noqa: E402
from prism_ops.cli.s2m3_place import main as place  # noqa: E402
from prism_ops.config import PrismConfig  # noqa: E402
from prism_ops.s2m3.plan import DEFAULT_SEGMENT_SIZE, prism_config  # noqa: E402
from prism_ops.s2m3.suite import SUITE_VERSION  # noqa: E402
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
    cmd = [str(BIN / "mpiexec"), "-n", str(n), sys.executable, "-m", "prism_ops.cli.s2m3_serve", "--plan", str(plan),
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


RANK_CONFIGS = r"""
import json, sys
from prism_ops import hf
from prism_ops.distributed.comm import Communicator
from prism_ops.s2m3.plan import check_plan
from prism_ops.s2m3.server import Server
comm = Communicator(timeout_s=60)
plans = json.loads(open(sys.argv[1]).read())
got = {}
for name, p in plans.items():
    server = Server(comm, check_plan(p, comm.size))
    got[name] = hf.config_of(server.modules["vit-s16"].net).as_dict()
    done = server.serve([{"id": 0, "model": "cifar10-vits16", "seed": 5}] if comm.rank == 0 else None)
    if comm.rank == 0:
        got[name + ":output"] = done["0"][0].tolist()
with open(f"{sys.argv[2]}/rank{comm.rank}.json", "w") as f:  # not stdout: long lines of two ranks interleave
    json.dump(got, f)
"""


def test_every_rank_builds_the_plans_preset(tmp_path):
    """Under real mpiexec, each rank of a group configures the spread encoder from the plan's entry
    exactly as `PrismConfig.from_preset` gives it: "edge" runs at segment size 1 with 4-bit means
    (not at 16), and the answer is the one PRISM gives at that setting in one process (float32
    budget 1e-5), not the one at segment size 16."""
    base = {"devices": ["a", "b"], "size": "tiny", "models": ["cifar10-vits16"], "suite_version": SUITE_VERSION,
            "plan": {"vit-s16": "a", "classifier:384x10:seed13": "b"}}
    # (every preset's resolution without MPI: tests/s2m3/test_s2m3_plan.py)
    entries = {"edge": {"preset": "edge"}, "default": {}, "edge-8bit": {"preset": "edge", "summary_bits": 8}}
    plans = {k: {**base, "prism": {"vit-s16": {"devices": ["a", "b"], **e}}} for k, e in entries.items()}
    (tmp_path / "plans.json").write_text(json.dumps(plans))
    (tmp_path / "check.py").write_text(RANK_CONFIGS)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    p = subprocess.run([str(BIN / "mpiexec"), "-n", "2", sys.executable, str(tmp_path / "check.py"),
                        str(tmp_path / "plans.json"), str(tmp_path)], capture_output=True, text=True, timeout=120,
                       env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    ranks = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)}
    for name, e in entries.items():
        want = prism_config(2, {"devices": ["a", "b"], **e})
        for r in (0, 1):
            got = PrismConfig(**{**ranks[r][name], "weights": None, "exchange": want.exchange})
            assert got == want, (name, r)  # exchange "auto" is resolved for the model; the rest as asked
    assert ranks[0]["edge"]["segment_size"] == 1 and ranks[0]["edge"]["summary_bits"] == 4
    assert ranks[0]["edge-8bit"]["summary_bits"] == 8 and ranks[0]["default"]["segment_size"] == DEFAULT_SEGMENT_SIZE
    # The edge answer is PRISM's at segment size 1 (simulated in one process), not at 16.
    torch.set_num_threads(1)
    x = example_inputs("tiny", seed=5)
    outs = {}
    for seg in (1, 16):
        model = Model("cifar10-vits16", "tiny")
        hf.configure(model.modules["vit-s16"].net, PrismConfig.from_preset(2, "edge", seg))
        outs[seg] = model(x)
    got = torch.tensor(ranks[0]["edge:output"])
    assert torch.allclose(got, outs[1], atol=1e-5)
    assert not torch.allclose(outs[1], outs[16], atol=1e-3)  # the two settings are told apart
