"""prism-place on the tiny suite: a plan, memory per device, latencies; bad files refused early."""

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("yaml")

from prism_ops.cli.place import main  # noqa: E402
from prism_ops.s2m3.suite import BUILTIN, MODELS  # noqa: E402

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
    assert plan["objective_s"] >= plan["optimal_s"] > 0


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
