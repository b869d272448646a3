"""prism-place on the tiny suite: a plan, memory per device, latencies; bad files refused early."""

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("yaml")

from prism_ops.cli.place import main  # noqa: E402
from prism_ops.s2m3.suite import BUILTIN, MODELS, SUITE_VERSION  # noqa: E402

DEVICES = {"devices": [{"name": "a", "memory_gb": 0.0004, "speed": 1.0}, {"name": "b", "memory_gb": 0.0004}],
           "default_link": {"mbit": 100, "latency_ms": 1}}
TASKS = {"models": ["cifar10-vits16", "sentiment-minilm", "image-text-retrieval"], "size": "tiny",
         "input_bytes": {"image": 12288, "text": 96}, "compute_s": {"vit-b16": 0.05}}


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_text(json.dumps(data) if name.endswith(".json") else data)
    return str(p)


def test_plan(tmp_path, capsys):
    out = tmp_path / "plan.json"
    main(["--devices", write(tmp_path, "d.json", DEVICES), "--tasks", write(tmp_path, "t.json", TASKS),
          "--exact", "--json", str(out)])
    text = capsys.readouterr().out
    assert "memory per device: a " in text and "predicted latency image-text-retrieval" in text
    plan = json.loads(out.read_text())
    assert set(plan["plan"]) >= {"vit-b16", "vit-s16", "minilm", "similarity"}
    assert plan["objective_s"] == pytest.approx(plan["optimal_s"], rel=1e-9) and plan["optimal_s"] > 0
    assert plan["suite_version"] == SUITE_VERSION and "gap 0.00%" in text and "objective (optimal)" in text
    main(["--devices", write(tmp_path, "d.json", DEVICES), "--tasks", write(tmp_path, "t.json", TASKS),
          "--planner", "greedy", "--exact", "--json", str(out)])
    greedy = json.loads(out.read_text())
    # (each run profiles the modules again, so the two runs' times differ)
    assert greedy["objective_s"] >= greedy["optimal_s"] - 1e-12 and "objective (greedy)" in capsys.readouterr().out


@pytest.mark.parametrize("load", [{"burst": {"cifar10-vits16": 3, "sentiment-minilm": 2, "image-text-retrieval": 1}},
                                  {"rates": {"cifar10-vits16": 2.0, "sentiment-minilm": 0.5}}])
def test_load_aware_plan(tmp_path, capsys, load):
    out = tmp_path / "plan.json"
    main(["--devices", write(tmp_path, "d.json", DEVICES), "--tasks", write(tmp_path, "t.json", {**TASKS, **load}),
          "--json", str(out)])
    text = capsys.readouterr().out
    plan = json.loads(out.read_text())
    kind = next(iter(load))
    assert plan[kind] == load[kind] and plan["load_objective_s"] > 0
    if kind == "burst":
        assert "predicted burst latency cifar10-vits16" in text and "predicted whole burst: " in text
        assert "busy per device: a " in text
    else:
        assert "predicted steady latency sentiment-minilm" in text and "busy share per device: a " in text
        assert "image-text-retrieval (M/G/1)" not in text  # no arrivals of it


@pytest.mark.parametrize("extra,message", [
    ({"burst": {"cifar10-vits16": 1.5}}, "burst['cifar10-vits16'] must be a whole number >= 0, got 1.5"),
    ({"burst": {"cifar10-vits16": -1}}, "burst['cifar10-vits16'] must be a whole number >= 0"),
    ({"burst": {"cifar10-vits16": True}}, "burst['cifar10-vits16'] must be a whole number"),
    ({"burst": {"cifar10-vits16": 0}}, "burst must ask for at least one request"),
    ({"burst": {"topic-minilm": 1}}, "burst names 'topic-minilm', which is not in models"),
    ({"burst": [1, 2]}, "burst must be a mapping"),
    ({"rates": {"cifar10-vits16": 0}}, "rates['cifar10-vits16'] must be a finite number > 0"),
    ({"rates": {"cifar10-vits16": "fast"}}, "rates['cifar10-vits16'] must be a finite number > 0, got 'fast'"),
    ({"rates": {"cifar10-vits16": float("inf")}}, "rates['cifar10-vits16'] must be a finite number"),
    ({"rates": {"cifar10-vits16": 1}, "burst": {"cifar10-vits16": 1}}, "give burst or rates, not both"),
    ({"compute_s": {"vit-b16": -0.1}}, "compute_s['vit-b16'] must be a finite number >= 0"),
    ({"input_bytes": {"image": "big"}}, "input_bytes['image'] must be a finite number >= 0"),
    ({"input_bytes": {"video": 1}}, "input_bytes names unknown modality 'video'"),
])
def test_bad_load_and_numbers(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        main(["--devices", write(tmp_path, "d.json", DEVICES), "--tasks", write(tmp_path, "t.json", {**TASKS, **extra})])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("devices,tasks,message", [
    (DEVICES, {**TASKS, "models": ["nope"]}, "unknown model(s) ['nope']"),
    (DEVICES, {**TASKS, "compute_s": {"resnet": 1}}, "unknown part(s) ['resnet']"),
    ({"devices": [{"name": "a", "memory_gb": 0.00001}]}, TASKS, "more than any device has"),
    ({"devices": [{"name": "a", "memory_gb": 1}], "links": [{"a": "a", "b": "z", "mbit": 1}]}, TASKS,
     "not in devices"),
    ({"devices": []}, TASKS, "devices is empty"),
])
def test_bad_files(tmp_path, capsys, devices, tasks, message):
    with pytest.raises(SystemExit) as e:
        main(["--devices", write(tmp_path, "d.json", devices), "--tasks", write(tmp_path, "t.json", tasks)])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_unreadable_and_invalid_files(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--devices", str(tmp_path / "missing.yaml"), "--tasks", "x"])
    assert "cannot be read" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--devices", write(tmp_path, "d.yaml", "devices: [unclosed"), "--tasks", "x"])
    assert "not valid YAML" in capsys.readouterr().err


CUSTOM = {"tagger": {"task": "audio tagging", "nodes": {
    "whisper-tiny": ["whisper-tiny", ["input:audio"]], "cls": ["classifier:384x50:seed7", ["whisper-tiny"]]}}}


def test_custom_model(tmp_path, capsys):
    tasks = {"models": ["tagger", "sentiment-minilm"], "custom": CUSTOM, "size": "tiny",
             "input_bytes": {"audio": 1, "text": 1}}
    main(["--devices", write(tmp_path, "d.json", DEVICES), "--tasks", write(tmp_path, "t.json", tasks)])
    assert "predicted latency tagger" in capsys.readouterr().out
    assert "tagger" not in MODELS and "tagger" not in BUILTIN  # a custom model joins a new catalog only


@pytest.mark.parametrize("nodes,message", [
    ({"a": ["vit-s16", ["b"]], "b": ["classifier:16x2:seed1", ["a"]]}, "cyclic graph"),
    ({"a": ["resnet50", ["input:image"]]}, "unknown module 'resnet50'"),
    ({"a": ["vit-s16", ["input:video"]]}, "modalities are"),
    ({"a": ["vit-s16", ["input:image"]], "b": ["classifier:16x2:seed1", ["c"]]}, "unknown node 'c'"),
])
def test_bad_custom_models_refused_before_loading(tmp_path, capsys, nodes, message):
    tasks = {**TASKS, "models": ["bad"], "custom": {"bad": {"nodes": nodes}}}
    with pytest.raises(SystemExit):
        main(["--devices", write(tmp_path, "d.json", DEVICES), "--tasks", write(tmp_path, "t.json", tasks)])
    assert message in capsys.readouterr().err
