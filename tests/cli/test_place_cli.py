"""s2m3-place on the tiny suite: a plan, memory per device, latencies; bad files refused early."""

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("yaml")

from prism_ops.cli.s2m3_place import main  # noqa: E402
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
          "--branch-and-bound", "--json", str(out)])
    text = capsys.readouterr().out
    assert "memory per device: a " in text and "predicted latency image-text-retrieval" in text
    plan = json.loads(out.read_text())
    assert set(plan["plan"]) >= {"vit-b16", "vit-s16", "minilm", "similarity"}
    assert plan["objective_s"] == pytest.approx(plan["optimal_s"], rel=1e-9) and plan["optimal_s"] > 0
    assert plan["suite_version"] == SUITE_VERSION and "gap 0.00%" in text and "objective (optimal)" in text
    main(["--devices", write(tmp_path, "d.json", DEVICES), "--tasks", write(tmp_path, "t.json", TASKS),
          "--planner", "greedy", "--branch-and-bound", "--json", str(out)])
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
    ({"burst": {"cifar10-vits16": 1.5}}, "burst['cifar10-vits16'] must be a whole number >= 0 and <= 1000, got 1.5"),
    ({"burst": {"cifar10-vits16": -1}}, "burst['cifar10-vits16'] must be a whole number >= 0"),
    ({"burst": {"cifar10-vits16": True}}, "burst['cifar10-vits16'] must be a whole number"),
    ({"burst": {"cifar10-vits16": 0}}, "burst must ask for at least one request"),
    ({"burst": {"topic-minilm": 1}}, "burst names 'topic-minilm', which is not in models"),
    ({"burst": [1, 2]}, "burst must be a mapping"),
    ({"rates": {"cifar10-vits16": 0}}, "rates['cifar10-vits16'] must be a finite number > 0"),
    ({"rates": {"cifar10-vits16": "fast"}}, "rates['cifar10-vits16'] must be a finite number > 0 and <= 1e+06, got 'fast'"),
    ({"rates": {"cifar10-vits16": float("inf")}}, "rates['cifar10-vits16'] must be a finite number"),
    ({"rates": {"cifar10-vits16": 1}, "burst": {"cifar10-vits16": 1}}, "give burst or rates, not both"),
    ({"compute_s": {"vit-b16": -0.1}}, "compute_s['vit-b16'] must be a finite number >= 0"),
    ({"input_bytes": {"image": "big"}}, "input_bytes['image'] must be a whole number >= 0 and <= 1e+12, got 'big'"),
    ({"input_bytes": {"text": "lots"}}, "input_bytes['text'] must be a whole number >= 0 and <= 1e+12, got 'lots'"),
    ({"compute_s": {"minilm": "fast"}}, "compute_s['minilm'] must be a finite number >= 0 and <= 1e+06, got 'fast'"),
    ({"compute_s": {"minilm": -1}}, "compute_s['minilm'] must be a finite number >= 0 and <= 1e+06, got -1"),
    ({"burst": {"cifar10-vits16": 600, "sentiment-minilm": 600}}, "burst asks for 1200 requests; at most 1000"),
    ({"custom": ["tagger"]}, "custom must be a mapping, got ['tagger']"),
    ({"size": "huge"}, "size must be one of full, tiny, got 'huge'"),
    ({"models": ["sentiment-minilm", "sentiment-minilm"]}, "models must list each name once"),
    ({"modles": ["sentiment-minilm"]}, "has unknown field 'modles'; allowed: models, custom"),
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
     "links[0].b must be the name of a device in devices (a), got 'z'"),
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


@pytest.mark.parametrize("size,nodes,message", [
    ("tiny", {"a": ["vit-s16", ["b"]], "b": ["classifier:16x2:seed1", ["a"]]}, "cyclic graph"),
    ("tiny", {"a": ["resnet50", ["input:image"]]}, "nodes['a'][0]: unknown module 'resnet50'"),
    ("tiny", {"a": ["vit-s16", ["input:video"]]}, "modalities are"),
    ("tiny", {"a": ["vit-s16", ["input:image"]], "b": ["classifier:16x2:seed1", ["c"]]}, "unknown node 'c'"),
    # width and input-count mismatches (were tracebacks inside torch while profiling)
    ("full", {"a": ["vit-b16", ["input:image"]], "b": ["classifier:384x2:seed1", ["a"]]},
     "custom['bad'].nodes['b'] (classifier:384x2:seed1) needs inputs of width 384 at size full, got widths {'a': 768}"),
    ("tiny", {"a": ["vit-s16", ["input:image"]], "b": ["minilm", ["input:text"]], "s": ["similarity", ["a", "b"]]},
     "nodes['s'] (similarity) needs inputs of width 16 at size tiny, got widths {'a': 16, 'b': 24}"),
    ("tiny", {"a": ["vit-s16", ["input:image"]], "b": ["minilm", ["input:text"]], "c": ["classifier:384x2:seed1", ["a", "b"]]},
     "nodes['c'] (classifier:384x2:seed1) must read exactly 1 node(s) of the model, not a modality, got ['a', 'b']"),
    ("tiny", {"a": ["vit-s16", ["input:image"]], "s": ["similarity", ["a"]]}, "(similarity) must read exactly 2 node(s)"),
    ("tiny", {"a": ["vit-s16", ["input:text"]]}, "nodes['a'] (vit-s16) must read exactly ['input:image'], got ['input:text']"),
    ("tiny", {"c": ["classifier:384x2:seed1", ["input:text"]]}, "must read exactly 1 node(s) of the model, not a modality"),
    ("tiny", {"a": ["vit-s16", ["input:image"]], "b": ["vit-s16", ["input:image"]], "s": ["similarity", ["a", "a"]]},
     "nodes['s'][1] must list each name once, got ['a']"),
    ("full", {"a": ["vit-s16", ["input:image"]], "p": ["projector:384x256:seed1", ["a"]], "d": ["decoder-small", ["p"]],
              "c": ["classifier:8x2:seed1", ["d"]]}, "reads 'd', whose output (decoder-small: scores or token ids)"),
    ("full", {"a": ["vit-s16", ["input:image"]], "d": ["decoder-small", ["a"]]}, "needs inputs of width 256"),
    ("tiny", {"a": "vit-s16"}, "nodes['a'] must be [part, [inputs]], got 'vit-s16'"),
    ("tiny", {"input:x": ["vit-s16", ["input:image"]]}, "a node's name must not start with 'input:'"),
])
def test_bad_custom_models_refused_before_loading(tmp_path, capsys, size, nodes, message):
    tasks = {**TASKS, "size": size, "compute_s": {}, "models": ["bad"], "custom": {"bad": {"nodes": nodes}}}
    with pytest.raises(SystemExit) as e:
        main(["--devices", write(tmp_path, "d.json", DEVICES), "--tasks", write(tmp_path, "t.json", tasks)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err


A, B = {"name": "a", "memory_gb": 0.0004}, {"name": "b", "memory_gb": 0.0004}


@pytest.mark.parametrize("devices,message", [
    ({"devices": [A, B], "default_link": {"mbit": 0}},
     "d.json: default_link.mbit must be a finite number >= 1e-06 and <= 1e+09, got 0"),  # was ZeroDivisionError
    ({"devices": [A, {**B, "speed": 0}]}, "d.json: devices[1].speed must be a finite number >= 1e-06 and <= 1e+06, got 0"),
    ({"devices": [A, {**B, "speed": -0.5}]}, "devices[1].speed must be a finite number >= 1e-06 and <= 1e+06, got -0.5"),
    ({"devices": [{**A, "memory_gb": -1}, B]}, "devices[0].memory_gb must be a finite number > 0 and <= 1e+06, got -1"),
    ({"devices": [{**A, "memory_gb": float("nan")}, B]}, "devices[0].memory_gb must be a finite number > 0 and <= 1e+06, got nan"),
    ({"devices": [{**A, "memory_gb": "8GB"}, B]}, "devices[0].memory_gb must be a finite number > 0 and <= 1e+06, got '8GB'"),
    ({"devices": [A, B], "links": [{"a": "a", "b": "b", "mbit": -5}]}, "links[0].mbit must be a finite number >= 1e-06"),
    ({"devices": [A, B], "links": [{"a": "a", "b": "b", "mbit": 1, "latency_ms": -1}]},
     "links[0].latency_ms must be a finite number >= 0 and <= 1e+06, got -1"),
    ({"devices": [A, B], "links": "oops"}, "d.json: links must be a list of at most 1000 items, got 'oops'"),
    ({"devices": [A, B], "links": ["oops"]}, "d.json: links[0] must be a mapping, got 'oops'"),
    ({"devices": [A, A]}, "d.json: devices' names must list each name once, got ['a'] more than once"),
    ({"devices": None}, "d.json: devices must be a non-empty list of at most 32 items, got None"),
    ({"devices": [A, {"memory_gb": 1}]}, "devices[1].name must be a non-empty string of at most 200 characters, got None"),
    ({"devices": [A, B], "links": [{"a": "a", "b": "a", "mbit": 1}]}, "links[0] joins 'a' to itself"),
    ({"devices": [A, B], "links": [{"a": "a", "b": "b", "mbit": 1}, {"a": "b", "b": "a", "mbit": 2}]},
     "links[1]: a second link between 'b' and 'a'"),
    ({"devices": [{**A, "memroy_gb": 1}]}, "devices[0] has unknown field 'memroy_gb'; allowed: name, memory_gb, speed"),
    ({"devices": [A], "default_link": {"mbit": 1, "latency": 2}}, "default_link has unknown field 'latency'"),
])
def test_bad_devices_files(tmp_path, capsys, devices, message):
    """Zero, negative, NaN and wrongly typed fields, repeated names: one line naming the field."""
    with pytest.raises(SystemExit) as e:
        main(["--devices", write(tmp_path, "d.json", devices), "--tasks", write(tmp_path, "t.json", TASKS)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_numbers_as_text(tmp_path, capsys):
    """YAML reads 1e-3 (no dot) as text: the message says so."""
    with pytest.raises(SystemExit):
        main(["--devices", write(tmp_path, "d.yaml", "devices: [{name: a, memory_gb: 1e-3}]"),
              "--tasks", write(tmp_path, "t.json", TASKS)])
    assert ("devices[0].memory_gb must be a finite number > 0 and <= 1e+06, got '1e-3' (text: YAML reads 1e-3 as "
            "text; write 1.0e-03)") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--devices", write(tmp_path, "d.json", {"devices": [{**A, "speed": "2"}]}),
              "--tasks", write(tmp_path, "t.json", TASKS)])
    assert "devices[0].speed must be a finite number >= 1e-06 and <= 1e+06, got '2' (quoted text, not a number)" \
        in capsys.readouterr().err


def test_encoding_aliases_limits_and_debug(tmp_path, capsys):
    d = tmp_path / "d.yaml"
    d.write_bytes(b"devices: [{name: caf\xe9, memory_gb: 1}]\n")  # Latin-1, not UTF-8
    with pytest.raises(SystemExit) as e:
        main(["--devices", str(d), "--tasks", write(tmp_path, "t.json", TASKS)])
    assert e.value.code == 2 and f"{d}: is not UTF-8 text (byte 20 is 0xe9)" in capsys.readouterr().err
    d.write_text("x: &a [1, 2]\ndevices: *a\n")
    with pytest.raises(SystemExit):
        main(["--devices", str(d), "--tasks", write(tmp_path, "t.json", TASKS)])
    assert "YAML aliases (*name) are not allowed" in capsys.readouterr().err
    d.write_text("#" * (1 << 20) + "\n")
    with pytest.raises(SystemExit):
        main(["--devices", str(d), "--tasks", write(tmp_path, "t.json", TASKS)])
    assert f"--devices {d}: is {(1 << 20) + 1} bytes; files are limited to 1048576 bytes" in capsys.readouterr().err
    bad = write(tmp_path, "t.json", {**TASKS, "size": "huge"})
    with pytest.raises(SystemExit):
        main(["--devices", write(tmp_path, "d.json", DEVICES), "--tasks", bad])
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--devices", write(tmp_path, "d.json", DEVICES), "--tasks", bad, "--debug"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback (most recent call last)" in err and err.endswith("got 'huge'\n")
    with pytest.raises(SystemExit) as e:  # refused before any profiling
        main(["--devices", write(tmp_path, "d.json", DEVICES), "--tasks", bad, "--json", str(tmp_path)])
    assert e.value.code == 2 and "--json" in capsys.readouterr().err


def test_prism_entries_are_printed_resolved(tmp_path, capsys):
    """A tasks file's prism entry goes into the plan as written, and s2m3-place prints the setting
    every rank of the group will run: the preset's, with an explicit lever winning."""
    out = tmp_path / "plan.json"
    prism = {"minilm": {"devices": ["b", "a"], "preset": "edge", "halo": 2}}
    main(["--devices", write(tmp_path, "d.json", DEVICES), "--tasks", write(tmp_path, "t.json", {**TASKS, "prism": prism}),
          "--json", str(out)])
    text = capsys.readouterr().out
    assert ("prism minilm over b, a: segment_size=1, sink_tokens=0, halo=2, log_count_bias=True, weights=None, "
            "cluster_iters=0, summary_bits=4, exchange=auto") in text
    assert json.loads(out.read_text())["prism"] == prism


@pytest.mark.parametrize("prism,message", [
    ({"minilm": {"devices": ["a", "b"], "preset": "edgy"}},
     "t.json: prism['minilm'].preset must be one of exact, accurate, edge, fast, lean, tuned, paper, got 'edgy'"),
    ({"minilm": {"devices": ["a", "b"], "preset": "paper"}}, "t.json: prism['minilm']: segment_size is required"),
    ({"minilm": {"devices": ["a", "b"], "preset": "tuned"}},
     "t.json: prism['minilm']: dense_layers 'auto' (the tuned preset) are a model's calibrated layers"),
    ({"minilm": {"devices": ["a"]}}, "t.json: prism['minilm'].devices: prism 'minilm' needs 2 or more"),
    (["minilm"], "t.json: prism must be a mapping"),
])
def test_bad_prism_entries(tmp_path, capsys, prism, message):
    with pytest.raises(SystemExit) as e:
        main(["--devices", write(tmp_path, "d.json", DEVICES), "--tasks", write(tmp_path, "t.json", {**TASKS, "prism": prism})])
    assert e.value.code == 2 and message in capsys.readouterr().err
