"""The profile --auto plans by (`prism_ops/link_profile.py`, `prism_ops/input_files.py`), without MPI:
reading and checking a profile (format 2), and the plan it gives one request.

SmolLM2's shape; rates are round numbers near one CPU core's (a profile measured here reads
about 9e10 linear and 7e10 attention FLOP/s per core); links as budgets B (the bytes a link
moves while one device computes the whole request)."""

import dataclasses
import json

import pytest

from prism_ops import PrismConfig
from prism_ops.cost import ModelShape
from prism_ops.input_files import read_profile
from prism_ops.link_profile import check_profile, plan_request, profile_dict
from prism_ops.split import Device, one_device_seconds

SMOLLM2 = ModelShape(hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64, ffn_size=1536, mlp_matrices=3,
                     num_layers=30)
CORE = {"linear_flops_s": 9e10, "attention_flops_s": 7e10}
N = 2048
ONE_S = one_device_seconds(N, Device(**CORE), SMOLLM2, causal=True)
EDGE = PrismConfig.from_preset(2, "edge", exchange="kv")


def profile(devices=(CORE, CORE), budget_bytes=50e6, latency_s=1e-4, hosts=("a", "b")):
    """A 2-rank profile whose links move budget_bytes while one CORE computes N tokens."""
    link = {"bytes_s": budget_bytes / ONE_S, "latency_s": latency_s}
    P = len(devices)
    links = [[None if a == b else link for b in range(P)] for a in range(P)]
    return profile_dict(model="smollm2", shape=SMOLLM2, kind="decoder", hosts=list(hosts), config=EDGE,
                        devices=[dict(d) for d in devices], links=links)


def written(tmp_path, prof, name="p.json"):
    path = tmp_path / name
    path.write_text(json.dumps(prof))
    return str(path)


def plan(prof, config=EDGE, preset="edge"):
    return plan_request(prof, N, config, preset=preset, causal=True)


def test_a_profile_is_read_back_and_checked_against_the_job(tmp_path):
    prof = profile()
    path = written(tmp_path, prof)
    assert read_profile(path, "--auto", 2, "smollm2") == json.loads(json.dumps(prof))
    with pytest.raises(ValueError, match="measured on 2 ranks, this job has 4; measure it again with --profile"):
        read_profile(path, "--auto", 4)
    with pytest.raises(ValueError, match="measured for model 'smollm2', this job runs 'minilm'"):
        read_profile(path, "--auto", 2, "minilm")
    check_profile(prof, "--auto", model="smollm2", shape=SMOLLM2, hosts=["a", "b"])
    with pytest.raises(ValueError, match=r"measured on hosts \['a', 'b'\] \(by rank\), this job runs on \['b', 'a'\]"):
        check_profile(prof, "--auto", model="smollm2", shape=SMOLLM2, hosts=["b", "a"])
    other = dataclasses.replace(SMOLLM2, num_layers=2)
    with pytest.raises(ValueError, match=r"\(30 layers, d=576, 9 heads\), this job runs 'smollm2' \(2 layers"):
        check_profile(prof, "--auto", model="smollm2", shape=other, hosts=["a", "b"])


@pytest.mark.parametrize("change,message", [
    (lambda p: p.pop("format"), r"of this version \(format 2\), got format None"),
    (lambda p: p["devices"][1].update(attention_flops_s=0), r"devices\[1\].attention_flops_s must be a finite number > 0"),
    (lambda p: p["links"][0].__setitem__(1, None), r"links\[0\]\[1\] must be an object"),
    (lambda p: p["links"][1][0].update(bytes_s=float("inf")), r"links\[1\]\[0\].bytes_s must be a finite number"),
    (lambda p: p["links"][0].__setitem__(0, {}), r"links\[0\]\[0\] must be null"),
    (lambda p: p["shape"].update(num_heads=0), "shape must be an object of positive integers"),
    (lambda p: p.update(hosts=["a"]), "hosts must be a list of 2 host names"),
    (lambda p: p.update(links=[[None]]), r"links must be a \[2\]\[2\] table"),
])
def test_a_bad_profile_is_refused_naming_the_field(tmp_path, change, message):
    prof = json.loads(json.dumps(profile()))
    change(prof)
    with pytest.raises(ValueError, match=message):
        read_profile(written(tmp_path, prof), "--auto", 2)


def test_equal_hosts_on_a_fast_link_split_for_causal_balance():
    got = plan(profile(budget_bytes=50e6))
    assert got["mode"] == "distributed" and got["preset"] == "edge" and got["exchange"] == "kv"
    (s0, e0), (s1, e1) = got["bounds"]
    assert s0 == 0 and e0 == s1 and e1 == N and e0 - s0 > N // 2 + 50  # the later chunk attends to more
    assert 1.8 < got["local_s"] / got["predicted_s"] <= 2.0 + 1e-9
    json.dumps(got)  # broadcast to every rank as JSON


def test_a_slow_link_moves_tokens_off_the_sending_rank_then_keeps_the_request_on_one_host():
    fast, slow = plan(profile(budget_bytes=50e6)), plan(profile(budget_bytes=5e6))
    assert slow["mode"] == "distributed" and slow["bounds"][0][1] < fast["bounds"][0][1] - 300
    assert slow["predicted_s"] > fast["predicted_s"]
    alone = plan(profile(budget_bytes=0.5e6))
    assert alone["mode"] == "local" and alone["predicted_s"] == alone["local_s"] == pytest.approx(ONE_S)


def test_a_slow_host_takes_the_first_chunk_and_a_host_too_slow_is_left_out():
    half = {k: v / 2 for k, v in CORE.items()}
    got = plan(profile(devices=(CORE, half)))
    assert got["order"] == [1, 0] and got["fastest"] == 0  # the fast rank 0 holds the last chunk, and decodes
    assert 1.4 < got["local_s"] / got["predicted_s"] <= 1.5 + 1e-9
    quarter = {k: v / 4 for k, v in CORE.items()}
    alone = plan(profile(devices=(quarter, CORE), budget_bytes=0.5e6))
    assert alone["mode"] == "local" and alone["fastest"] == 1


def test_weights_fix_the_bounds_by_hand():
    got = plan(profile(), config=EDGE.replace(weights=(3.0, 1.0)))
    assert got["bounds"] == [[0, 1536], [1536, 2048]] and got["order"] == [0, 1]


def test_the_plan_never_leaves_the_asked_budget():
    assert plan(profile(), config=PrismConfig.from_preset(2, "exact"), preset="exact")["preset"] == "exact"
    # A setting that is not a budgeted preset is kept as asked (only the bounds are planned).
    paper = PrismConfig(2, 16, exchange="kv")
    got = plan(profile(), config=paper, preset=None)
    assert got["mode"] == "distributed" and got["preset"] is None and got["exchange"] == "kv"
