"""S2M3 serving without MPI: the wire format round-trips, a plan is checked once into a
CheckedPlan (with its own catalog), and bad plans and request lines are named."""

import json

import pytest
import torch

from prism_ops.s2m3.messages import pack, unpack
from prism_ops.s2m3.placement import PlacementError
from prism_ops.s2m3.plan import check_plan, read_requests
from prism_ops.s2m3.suite import BUILTIN

PLAN = {"devices": ["a", "b"], "size": "tiny", "models": ["sentiment-minilm", "tagger"],
        "custom": {"tagger": {"task": "audio tagging", "nodes": {
            "whisper-tiny": ["whisper-tiny", ["input:audio"]], "cls": ["classifier:384x50:seed7", ["whisper-tiny"]]}}},
        "plan": {"minilm": "a", "classifier:384x2:seed15": "b", "whisper-tiny": "b", "classifier:384x50:seed7": "a"}}


@pytest.mark.parametrize("t", [torch.arange(6, dtype=torch.int64).view(2, 3), torch.randn(2, 5)])
def test_pack_round_trips(t):
    head, back = unpack(pack({"req": [1, "x"], "node": "cls"}, t))
    assert head["req"] == [1, "x"] and head["node"] == "cls" and back.dtype == t.dtype and torch.equal(back, t)


def test_check_plan():
    p = check_plan(json.loads(json.dumps(PLAN)), 2)
    assert p.rank == {"minilm": 0, "classifier:384x2:seed15": 1, "whisper-tiny": 1, "classifier:384x50:seed7": 0}
    assert "tagger" in p.catalog and "tagger" not in BUILTIN and p.spread == {}
    spread = check_plan({**PLAN, "prism": {"minilm": {"devices": ["b", "a"], "segment_size": 4}}}, 2)
    assert spread.rank["minilm"] == 1 and spread.spread["minilm"][0] == [1, 0]


@pytest.mark.parametrize("plan,ranks,message", [
    (PLAN, 3, "the plan has 2 devices but the job has 3 ranks"),
    ({"devices": ["a"]}, 1, "plan must have devices, size, models and plan"),
    ({**PLAN, "custom": {}}, 2, "plan: unknown model(s) ['tagger']"),
    ({**PLAN, "plan": {**PLAN["plan"], "minilm": "z"}}, 2, "part 'minilm' of 'sentiment-minilm' is not placed"),
    ({**PLAN, "prism": {"whisper-tiny": {"devices": ["a", "b"]}}}, 2, "prism spreads transformer encoders"),
    ({**PLAN, "prism": {"minilm": {"devices": ["a", "a"]}}}, 2, "needs 2 or more distinct devices"),
])
def test_bad_plans(plan, ranks, message):
    with pytest.raises(PlacementError) as e:
        check_plan(plan, ranks)
    assert message in str(e.value)


def test_read_requests():
    lines = ['{"id": 1, "model": "tagger", "seed": 3}', "", '{"id": "b", "model": "sentiment-minilm"}']
    assert read_requests(lines, PLAN["models"]) == [{"id": 1, "model": "tagger", "seed": 3},
                                                    {"id": "b", "model": "sentiment-minilm", "seed": 0}]
    for lines, message in [(["not json"], "request line 1: expected"),
                           (['{"id": 1, "model": "x"}'], "is not in the plan"),
                           (['{"id": 1, "model": "tagger"}'] * 2, "request line 2: id 1 is used twice")]:
        with pytest.raises(PlacementError, match=message):
            read_requests(lines, PLAN["models"])
