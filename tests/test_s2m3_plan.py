"""S2M3 serving without MPI: the wire format round-trips, a plan is checked once into a
CheckedPlan (with its own catalog), and bad plans and request lines are named."""

import json

import pytest
import torch

from prism_ops.s2m3.messages import pack, unpack
from prism_ops.s2m3.placement import PlacementError
from prism_ops.s2m3.plan import check_plan, read_requests
from prism_ops.s2m3.suite import BUILTIN, SUITE_VERSION

PLAN = {"devices": ["a", "b"], "size": "tiny", "models": ["sentiment-minilm", "tagger"],
        "custom": {"tagger": {"task": "audio tagging", "nodes": {
            "whisper-tiny": ["whisper-tiny", ["input:audio"]], "cls": ["classifier:384x50:seed7", ["whisper-tiny"]]}}},
        "plan": {"minilm": "a", "classifier:384x2:seed15": "b", "whisper-tiny": "b", "classifier:384x50:seed7": "a"},
        "suite_version": SUITE_VERSION}
THREE = {**PLAN, "devices": ["a", "b", "c"], "models": ["sentiment-minilm", "image-text-retrieval"],
         "plan": {"minilm": "a", "classifier:384x2:seed15": "b", "vit-b16": "c", "projector:768x256:seed19": "c",
                  "projector:384x256:seed20": "a", "similarity": "a"}}


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
    ({**PLAN, "suite_version": "0123456789ab"}, 2, "written for suite version '0123456789ab'"),
    ({k: v for k, v in PLAN.items() if k != "suite_version"}, 2, "written for suite version None"),
    ({**THREE, "prism": {"minilm": {"devices": ["a", "b"]}, "vit-b16": {"devices": ["c", "b"]}}}, 3,
     "prism groups of 'minilm' and 'vit-b16' share device(s) ['b']"),
])
def test_bad_plans(plan, ranks, message):
    with pytest.raises(PlacementError) as e:
        check_plan(plan, ranks)
    assert message in str(e.value)


def test_spread_groups_apart_and_device_names():
    ok = check_plan({**THREE, "prism": {"minilm": {"devices": ["a", "b"]}}}, 3, ["a", "b", "c"])
    assert ok.spread["minilm"][0] == [0, 1]
    with pytest.raises(PlacementError, match=r"its devices \['a', 'b'\] do not match the ranks' devices \['b', 'a'\]"):
        check_plan(PLAN, 2, ["b", "a"])


def test_read_requests():
    lines = ['{"id": 1, "model": "tagger", "seed": 3}', "", '{"id": "b", "model": "sentiment-minilm"}']
    assert read_requests(lines, PLAN["models"]) == [{"id": 1, "model": "tagger", "seed": 3},
                                                    {"id": "b", "model": "sentiment-minilm", "seed": 0}]
    for lines, message in [(["not json"], "request line 1: expected"),
                           (['{"id": 1, "model": "x"}'], "is not in the plan"),
                           (['{"id": 1, "model": "tagger"}'] * 2, "request line 2: id 1 is used twice")]:
        with pytest.raises(PlacementError, match=message):
            read_requests(lines, PLAN["models"])
