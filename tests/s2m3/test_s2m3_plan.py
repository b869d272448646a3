"""S2M3 serving without MPI: the wire format round-trips, a plan is checked once into a
CheckedPlan (with its own catalog), and bad plans and request lines are named."""

import io
import math
import json

import pytest
import torch

from prism_ops.s2m3.messages import pack, unpack
from prism_ops.s2m3.placement import InputError, PlacementError
from prism_ops.distributed.faults import BadInput
from prism_ops.s2m3 import server
from prism_ops.config import PRESETS, PrismConfig
from prism_ops.s2m3.plan import DEFAULT_SEGMENT_SIZE, check_plan, prism_config, read_inputs, read_requests
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
    ({**PLAN, "custom": {}}, 2, "plan: models names unknown model(s) ['tagger']"),
    ({**PLAN, "plan": {**PLAN["plan"], "minilm": "z"}}, 2, "plan: plan['minilm'] must be a device of the plan ['a', 'b'], got 'z'"),
    ({**PLAN, "plan": {k: v for k, v in PLAN["plan"].items() if k != "minilm"}}, 2,
     "part 'minilm' of 'sentiment-minilm' is not placed"),
    # were tracebacks (TypeError, AttributeError) or accepted until a model failed to load
    ({**PLAN, "devices": None}, 2, "plan: devices must be a non-empty list of at most 32 items, got None"),
    ({**PLAN, "devices": ["a", ["b"]]}, 2, "plan: devices[1] must be a non-empty string"),
    ({**PLAN, "prism": ["minilm"]}, 2, "plan: prism must be a mapping, got ['minilm']"),
    ({**PLAN, "prism": {"minilm": ["a", "b"]}}, 2, "plan: prism['minilm'] must be a mapping, got ['a', 'b']"),
    ({**PLAN, "size": "huge"}, 2, "plan: size must be one of full, tiny, got 'huge'"),
    ({**PLAN, "models": "sentiment-minilm"}, 2, "plan: models must be a non-empty list"),
    ({**PLAN, "plan": ["minilm"]}, 2, "plan: plan must be a mapping, got ['minilm']"),
    ({**PLAN, "custom": ["tagger"]}, 2, "plan: custom must be a mapping, got ['tagger']"),
    ({**PLAN, "objective_s": "fast"}, 2, "plan: objective_s must be a number >= 0, got 'fast'"),
    ({**PLAN, "prsim": {}}, 2, "plan has unknown field 'prsim'; allowed: devices, size"),
    ({**PLAN, "prism": {"minilm": {"devices": ["a", "b"], "segment_size": 0}}}, 2,
     "plan: prism['minilm'].segment_size must be a whole number >= 1 and <= 4096, got 0"),
    ({**PLAN, "prism": {"minilm": {"devices": ["a", "b"], "segment_size": 10**11}}}, 2,
     "prism['minilm'].segment_size must be a whole number >= 1 and <= 4096"),
    ({**PLAN, "prism": {"minilm": {"devices": ["a", "b"], "sink_token": 2}}}, 2,
     "plan: prism['minilm']: unknown lever(s) ['sink_token']"),
    ({**PLAN, "prism": {"minilm": {"devices": ["a", "b"], "summary_bits": 9}}}, 2, "plan: prism['minilm']: summary_bits"),
    ({**PLAN, "prism": {"minilm": {"devices": ["a", "b"], "preset": ["edge"]}}}, 2,
     "plan: prism['minilm'].preset must be one of exact, accurate, edge, fast, lean, tuned, paper, got ['edge']"),
    ({**PLAN, "prism": {"minilm": {"devices": ["a", "b"], "preset": None}}}, 2, "prism['minilm'].preset must be one of"),
    ({**PLAN, "prism": {"minilm": {"devices": ["a", "b"], "segment_size": None}}}, 2,
     "prism['minilm'].segment_size must be a whole number >= 1"),
    ({**PLAN, "prism": {"minilm": {"devices": ["a", "b"], "preset": "edge", "summary_bits": 5}}}, 2,
     "plan: prism['minilm']: summary_bits"),
    ({**PLAN, "prism": {"minilm": {"devices": "ab"}}}, 2, "prism['minilm'].devices: prism 'minilm' needs 2 or more"),
    ({**PLAN, "prism": {"whisper-tiny": {"devices": ["a", "b"]}}}, 2, "prism spreads transformer encoders"),
    ({**PLAN, "prism": {"minilm": {"devices": ["a", "a"]}}}, 2, "needs 2 or more distinct devices"),
    ({**PLAN, "suite_version": "0123456789ab"}, 2, "written for suite version '0123456789ab'"),
    ({k: v for k, v in PLAN.items() if k != "suite_version"}, 2, "written for suite version None"),
    ({**THREE, "prism": {"minilm": {"devices": ["a", "b"]}, "vit-b16": {"devices": ["c", "b"]}}}, 3,
     "prism groups of 'minilm' and 'vit-b16' share device(s) ['b']"),
    # the probe that deadlocked: the same two devices, each group led by a different one
    ({**THREE, "prism": {"minilm": {"devices": ["a", "b"]}, "vit-b16": {"devices": ["b", "a"]}}}, 3,
     "prism groups of 'minilm' and 'vit-b16' share device(s) ['a', 'b']; spread encoders need disjoint groups"),
])
def test_bad_plans(plan, ranks, message):
    with pytest.raises(InputError) as e:
        check_plan(plan, ranks)
    assert message in str(e.value)


@pytest.mark.parametrize("preset", sorted(set(PRESETS) - {"paper"}))
def test_a_plans_preset_means_what_from_preset_gives(preset):
    """The preset alone: exactly `from_preset` (edge is segment size 1 with 4-bit means, not 16);
    tuned's calibrated dense layers given by hand (placement loads no model to read them for)."""
    entry = {"devices": ["a", "b"], "preset": preset}
    want = PrismConfig.from_preset(2, preset)
    if want.dense_layers == "auto":
        entry["dense_layers"], want = [2, 0], want.replace(dense_layers=(0, 2))
    p = check_plan({**PLAN, "prism": {"minilm": entry}}, 2)
    assert p.spread["minilm"] == ([0, 1], want)
    assert p.spread["minilm"][1].segment_size == PRESETS[preset]["segment_size"]


def test_the_paper_preset_needs_a_segment_size():
    """"paper" sets no segment size, as in `from_preset` (and prism-run): a plan must give one."""
    entry = {"devices": ["a", "b"], "preset": "paper"}
    with pytest.raises(PlacementError, match=r"plan: prism\['minilm'\]: segment_size is required"):
        check_plan({**PLAN, "prism": {"minilm": entry}}, 2)
    p = check_plan({**PLAN, "prism": {"minilm": {**entry, "segment_size": 16}}}, 2)
    assert p.spread["minilm"][1] == PrismConfig.from_preset(2, "paper", 16)


@pytest.mark.parametrize("entry,want", [
    ({}, dict(segment_size=DEFAULT_SEGMENT_SIZE)),  # neither preset nor segment size: the one default
    ({"segment_size": 4}, dict(segment_size=4)),
    ({"preset": "edge"}, dict(segment_size=1, summary_bits=4, exchange="auto")),
    # a segment size or lever beside a preset wins over the preset's value (documented in `plan`)
    ({"preset": "edge", "segment_size": 16}, dict(segment_size=16, summary_bits=4, exchange="auto")),
    ({"preset": "accurate", "summary_bits": 8, "halo": 2},
     dict(segment_size=1, summary_bits=8, sink_tokens=4, halo=2, exchange="auto")),
])
def test_prism_entry_resolution(entry, want):
    cfg = prism_config(2, {"devices": ["a", "b"], **entry})
    assert cfg == PrismConfig(num_partitions=2, **want)


def test_spread_group_no_larger_than_the_tokens():
    """MiniLM reads 12 tokens in the tiny suite: 12 ranks may share it, 13 may not."""
    names = [f"d{i}" for i in range(13)]
    plan = {**PLAN, "devices": names, "models": ["sentiment-minilm"], "custom": {},
            "plan": {"minilm": "d0", "classifier:384x2:seed15": "d0"}}
    assert len(check_plan({**plan, "prism": {"minilm": {"devices": names[:12]}}}, 13).spread["minilm"][0]) == 12
    with pytest.raises(PlacementError, match=r"prism\['minilm'\].devices: 13 devices, but 'minilm' reads only 12 tokens"):
        check_plan({**plan, "prism": {"minilm": {"devices": names}}}, 13)


def test_spread_groups_apart_and_device_names():
    ok = check_plan({**THREE, "prism": {"minilm": {"devices": ["a", "b"]}}}, 3, ["a", "b", "c"])
    assert ok.spread["minilm"][0] == [0, 1]
    with pytest.raises(PlacementError, match=r"its devices \['a', 'b'\] do not match the ranks' devices \['b', 'a'\]"):
        check_plan(PLAN, 2, ["b", "a"])


def test_read_requests():
    lines = ['{"id": 1, "model": "tagger", "seed": 3}', "", '{"id": "b", "model": "sentiment-minilm"}']
    assert read_requests(lines, PLAN["models"]) == [{"id": 1, "model": "tagger", "seed": 3},
                                                    {"id": "b", "model": "sentiment-minilm", "seed": 0}]
    assert read_requests(['{"id": 1, "model": "tagger"}', '{"id": "1", "model": "tagger"}'], PLAN["models"])[1]["id"] == "1"


@pytest.mark.parametrize("lines,message", [
    (["not json"], "requests: line 1: expected a JSON object {\"id\", \"model\", \"seed\"}, got 'not json'"),
    (["[1, 2]"], "requests: line 1: expected a JSON object"),
    (["[" * 3000], "requests: line 1: expected a JSON object"),  # nested too deep for the parser
    (['{"id": 1, "model": "x"}'], "requests: line 1: model 'x' is not in the plan"),
    (['{"id": 1, "model": ["tagger"]}'], "model ['tagger'] is not in the plan"),
    (['{"id": 1, "model": "tagger"}'] * 2, "requests: line 2: id 1 is used twice"),
    (['{"id": {"a": 1}, "model": "tagger"}'],  # was a TypeError traceback (unhashable)
     "requests: line 1: id must be a string of at most 256 characters or a whole number, got {'a': 1}"),
    (['{"id": true, "model": "tagger"}'], "id must be a string of at most 256 characters or a whole number, got True"),
    (['{"id": 1.5, "model": "tagger"}'], "id must be a string"),
    (['{"model": "tagger"}'], "requests: line 1: id must be a string of at most 256 characters or a whole number, got None"),
    (['{"id": "%s", "model": "tagger"}' % ("x" * 257)], "id must be a string of at most 256 characters"),
    (['{"id": 1, "model": "tagger", "seed": "3"}'], "requests: line 1: seed must be a whole number >= 0 and <= 9.22337e+18, got '3'"),
    (['{"id": 1, "model": "tagger", "seed": -1}'], "seed must be a whole number >= 0"),
    (['{"id": 1, "model": "tagger", "seed": NaN}'], "seed must be a whole number >= 0 and <= 9.22337e+18, got nan"),
    (['{"id": 1, "model": "tagger", "seed": 1e300}'], "seed must be a whole number"),
    (['{"id": 1, "model": "tagger", "sed": 3}'], "requests: line 1 has unknown field 'sed'; allowed: id, model, seed"),
])
def test_bad_request_lines(lines, message):
    with pytest.raises(InputError) as e:
        read_requests(lines, PLAN["models"])
    assert message in str(e.value) and "\n" not in str(e.value)


def write(tmp_path, name, data):
    p = tmp_path / name
    if isinstance(data, bytes):
        p.write_bytes(data)
    else:
        p.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(p)


def test_read_inputs_files_stdin_and_limits(tmp_path):
    plan = write(tmp_path, "plan.json", PLAN)
    reqs = write(tmp_path, "r.jsonl", '{"id": 1, "model": "tagger"}\n')
    checked, got, text, names = read_inputs(plan, 2, reqs)
    assert got == [{"id": 1, "model": "tagger", "seed": 0}] and json.loads(text) == PLAN and names is None
    devices = write(tmp_path, "d.json", {"devices": [{"name": "a", "memory_gb": 1}, {"name": "b", "memory_gb": 1}]})
    assert read_inputs(plan, 2, None, devices, io.BytesIO(b'{"id": 2, "model": "tagger"}\r\n'))[3] == ["a", "b"]
    cases = [
        ((plan, 2, str(tmp_path)), f"--requests {tmp_path}: is a directory; give a file"),
        ((plan, 2, str(tmp_path / "none")), f"--requests {tmp_path / 'none'}: cannot be read (No such file or directory)"),
        ((str(tmp_path / "none"), 2, reqs), "--plan"),
        ((plan, 2, write(tmp_path, "bin", b"\xff\xfe\x00")), "bin: line 1: is not UTF-8 text (byte 0 is 0xff)"),
        ((plan, 2, write(tmp_path, "long", "x" * 4097)), "long: line 1: is longer than 4096 bytes"),
        ((plan, 2, None, "", io.BytesIO(b"")), "--devices : expected a file name, got ''"),
        ((plan, 2, None, None, io.BytesIO(b"{}\n" * 10 + b"y" * 5000)), "stdin: line 11: is longer than 4096 bytes"),
        ((write(tmp_path, "p1.json", {**PLAN, "size": "huge"}), 2, reqs), "p1.json: size must be one of full, tiny"),
        ((write(tmp_path, "p2.json", b"\x89PNG\r\n\x1a\n"), 2, reqs), "p2.json: is not UTF-8 text"),
        ((write(tmp_path, "p.json", "[1]"), 2, reqs), "p.json: expected a mapping at the top level, got list"),
    ]
    for args, message in cases:
        with pytest.raises(InputError) as e:
            read_inputs(*args)
        assert message in str(e.value), (args, str(e.value))


class OneRank:
    """What serve_requests needs of a communicator, for a job of `size` ranks seen from rank 0."""

    def __init__(self, size):
        self.rank, self.size = 0, size

    def bcast_bytes(self, data, key, timeout_s=None):
        return data


def test_bad_plan_refused_before_any_model_loads(tmp_path, monkeypatch):
    """The deadlocking plan (overlapping PRISM groups) is refused by the one verdict every rank
    receives, before the Server (which loads the models) is built."""
    bad = {**THREE, "prism": {"minilm": {"devices": ["a", "b"]}, "vit-b16": {"devices": ["b", "a"]}}}
    monkeypatch.setattr(server, "Server", lambda *a: pytest.fail("a model would load"))
    with pytest.raises(BadInput, match=r"share device\(s\) \['a', 'b'\]") as e:
        server.serve_requests(OneRank(3), write(tmp_path, "p.json", bad), write(tmp_path, "r", ""))
    assert e.value.exit_code == 2 and isinstance(e.value.__cause__, InputError)


@pytest.mark.parametrize("slowdown", [0.5, math.inf, math.nan, "2", True])
def test_server_slowdown_is_checked_first(slowdown):
    """A bad emulated slowdown is refused before the Server touches its communicator or a model."""
    with pytest.raises(ValueError, match="slowdown must be a finite number >= 1"):
        server.Server(None, check_plan(PLAN, 2), slowdown=slowdown)
