"""Fuzz table for s2m3-place and s2m3-serve: every bad value of every field and flag (empty,
wrong type, negative, zero, huge, NaN; a missing file, a directory, a FIFO, binary, non-UTF-8,
too large) exits with code 2 within 10 s, with one line naming the field or flag and no
traceback.

The cases run in-process: s2m3-place's `main`, and s2m3-serve's `main` with a stand-in for
the MPI communicator (rank 0 of a 2-rank job: every input is read and checked on rank 0 before
anything else happens). One case runs under a real `mpiexec -n 2`.
"""

import copy
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("yaml")

from prism_ops.cli import s2m3_place, s2m3_serve  # noqa: E402
from prism_ops.s2m3.plan import read_inputs  # noqa: E402
from prism_ops.s2m3.suite import SUITE_VERSION  # noqa: E402

DEVICES = {"devices": [{"name": "a", "memory_gb": 0.0005, "speed": 1.0}, {"name": "b", "memory_gb": 0.0005}],
           "links": [{"a": "a", "b": "b", "mbit": 100, "latency_ms": 1}], "default_link": {"mbit": 100, "latency_ms": 2}}
TASKS = {"models": ["cifar10-vits16", "sentiment-minilm"], "size": "tiny", "input_bytes": {"image": 12288, "text": 96},
         "compute_s": {"vit-s16": 0.01}, "burst": {"cifar10-vits16": 1}}
PLAN = {"devices": ["a", "b"], "size": "tiny", "models": ["cifar10-vits16", "sentiment-minilm"], "custom": {},
        "plan": {"vit-s16": "a", "classifier:384x10:seed13": "b", "minilm": "b", "classifier:384x2:seed15": "a"},
        "prism": {"minilm": {"devices": ["b", "a"], "segment_size": 4}}, "objective_s": 0.1,
        "suite_version": SUITE_VERSION}
REQUEST = {"id": 1, "model": "sentiment-minilm", "seed": 0}

NAN, HUGE = float("nan"), 10**400  # 10**400: an int JSON holds and no float does
NUMBER = [("empty", ""), ("type", "fast"), ("list", [1]), ("bool", True), ("null", None), ("negative", -1),
          ("huge", 1e300), ("huger", HUGE), ("nan", NAN), ("inf", math.inf)]
POSITIVE = NUMBER + [("zero", 0)]  # where 0 is bad too
NAME = [("empty", ""), ("type", 5), ("list", ["a"]), ("null", None), ("long", "x" * 201)]


def cases(table):
    """[(field path, value kind, value, text the message must hold)] from {path: (kinds, text)}."""
    return [pytest.param(path, value, text, id=f"{'.'.join(map(str, path))}={kind}")
            for path, (kinds, text) in table.items() for kind, value in kinds]


def put(data, path, value):
    """A deep copy of `data` with the field at `path` (keys and indices) set to `value`."""
    out = copy.deepcopy(data)
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


def write(tmp_path, name, data):
    p = tmp_path / name
    if isinstance(data, bytes):
        p.write_bytes(data)
    else:
        p.write_text(data if isinstance(data, str) else json.dumps(data))  # NaN and Infinity as JSON writes them
    return str(p)


def exits_2(run, capsys, text):
    """run() exits with code 2 within 10 s; stderr is one line that holds `text`, no traceback."""
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as e:
        run()
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert took < 10, took
    assert text in err and "Traceback" not in err, err
    return err


def one_line(err):
    assert err.count("\n") == 1, err


def test_the_inputs_the_cases_spoil_are_good(tmp_path, capsys):
    """Each case changes one field of these; unchanged, they plan and serve."""
    s2m3_place.main(["--devices", write(tmp_path, "d.json", DEVICES), "--tasks", write(tmp_path, "t.json", TASKS)])
    assert "predicted whole burst" in capsys.readouterr().out
    plan, reqs, _, _ = read_inputs(write(tmp_path, "p.json", PLAN), 2, write(tmp_path, "r.jsonl", json.dumps(REQUEST)))
    assert reqs == [REQUEST] and plan.spread["minilm"][0] == [1, 0]


# -- s2m3-place ----------------------------------------------------------------------------

DEVICE_FIELDS = {
    ("devices",): ([("empty", ""), ("none", []), ("type", "oops"), ("map", {}), ("number", 5)], "devices"),
    ("devices", 0): ([("type", "a"), ("list", [1])], "devices[0]"),
    ("devices", 0, "name"): (NAME, "devices[0].name"),
    ("devices", 0, "memory_gb"): (POSITIVE, "devices[0].memory_gb"),
    ("devices", 0, "speed"): (POSITIVE, "devices[0].speed"),
    ("devices", 1, "name"): ([("twice", "a")], "devices' names must list each name once"),
    ("devices", 1, "colour"): ([("unknown", "red")], "devices[1] has unknown field 'colour'"),
    ("links",): ([("empty", ""), ("type", "oops"), ("map", {}), ("number", 5)], "links"),
    ("links", 0, "a"): (NAME + [("unknown", "z")], "links[0].a"),
    ("links", 0, "b"): ([("itself", "a")], "links[0] joins 'a' to itself"),
    ("links", 0, "mbit"): (POSITIVE, "links[0].mbit"),
    ("links", 0, "latency_ms"): (NUMBER, "links[0].latency_ms"),
    ("default_link",): ([("type", "oops"), ("list", [1]), ("empty", {})], "default_link"),
    ("default_link", "mbit"): (POSITIVE, "default_link.mbit"),
    ("default_link", "latency_ms"): (NUMBER, "default_link.latency_ms"),
    ("extra",): ([("unknown", 1)], "has unknown field 'extra'"),
}
TASK_FIELDS = {
    ("models",): ([("empty", ""), ("none", []), ("type", "cifar10-vits16"), ("list", [1]), ("null", None),
                   ("unknown", ["resnet"]), ("twice", ["cifar10-vits16"] * 2)], "models"),
    ("size",): ([("empty", ""), ("huge", "huge"), ("type", 5), ("null", None)], "size"),
    ("custom",): ([("type", "x"), ("list", ["m"]), ("number", 5)], "custom"),
    ("custom", "m"): ([("type", "x"), ("empty", {}), ("nodes", {"nodes": {}}), ("list", {"nodes": ["a"]})], "custom['m']"),
    ("input_bytes",): ([("type", "x"), ("list", [1])], "input_bytes"),
    ("input_bytes", "image"): (NUMBER + [("fraction", 1.5), ("huge", 1e13)], "input_bytes['image']"),
    ("input_bytes", "video"): ([("unknown", 1)], "input_bytes names unknown modality 'video'"),
    ("compute_s",): ([("type", "x"), ("list", [1])], "compute_s"),
    ("compute_s", "vit-s16"): (NUMBER, "compute_s['vit-s16']"),
    ("compute_s", "resnet"): ([("unknown", 1)], "compute_s names unknown part(s) ['resnet']"),
    ("burst",): ([("type", "x"), ("list", [1]), ("zero", {"cifar10-vits16": 0})], "burst"),
    ("burst", "cifar10-vits16"): (NUMBER + [("fraction", 1.5), ("many", 10**6)], "burst['cifar10-vits16']"),
    ("burst", "topic-minilm"): ([("unknown", 1)], "burst names 'topic-minilm', which is not in models"),
    ("rates", "cifar10-vits16"): (POSITIVE, "rates['cifar10-vits16']"),
}


def run_place(tmp_path, devices=DEVICES, tasks=TASKS, *extra):
    return lambda: s2m3_place.main(["--devices", write(tmp_path, "d.json", devices),
                               "--tasks", write(tmp_path, "t.json", tasks), *extra])


@pytest.mark.parametrize("path,value,text", cases(DEVICE_FIELDS))
def test_place_devices_fields(tmp_path, capsys, path, value, text):
    one_line(exits_2(run_place(tmp_path, devices=put(DEVICES, path, value)), capsys, text))


def tasks_for(path):
    """TASKS, made ready for a bad value at `path`: rates instead of burst, or one custom model."""
    tasks = dict(TASKS)
    if path[0] == "rates":
        del tasks["burst"]
        tasks["rates"] = {}
    if path[0] == "custom" and len(path) > 1:
        tasks.update(models=["m"], compute_s={}, custom={}, burst={})
    return tasks


@pytest.mark.parametrize("path,value,text", cases(TASK_FIELDS))
def test_place_tasks_fields(tmp_path, capsys, path, value, text):
    one_line(exits_2(run_place(tmp_path, tasks=put(tasks_for(path), path, value)), capsys, text))


def bad_files(tmp_path):
    """(kind, path) of files no flag may take: each must be refused before it is parsed."""
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # opening it would block until a writer comes: it must not be opened
    return [("missing", str(tmp_path / "missing.json")), ("directory", str(tmp_path)), ("fifo", str(fifo)),
            ("binary", write(tmp_path, "bin.json", bytes(range(256)) * 4)),
            ("latin-1", write(tmp_path, "latin.yaml", "devices: [{name: caf\xe9}]".encode("latin-1"))),
            ("empty", write(tmp_path, "empty.json", "")), ("huge", write(tmp_path, "huge.json", " " * (1 << 20) + "{}")),
            ("not-a-mapping", write(tmp_path, "list.json", "[1, 2]")), ("bad-json", write(tmp_path, "bad.json", "{1:")),
            ("empty-name", "")]


@pytest.mark.parametrize("flag", ["--devices", "--tasks"])
def test_place_bad_files(tmp_path, capsys, flag):
    for kind, bad in bad_files(tmp_path):
        args = {"--devices": write(tmp_path, "d.json", DEVICES), "--tasks": write(tmp_path, "t.json", TASKS), flag: bad}
        err = exits_2(lambda: s2m3_place.main([x for kv in args.items() for x in kv]), capsys, f"{flag} {bad}")
        one_line(err)


@pytest.mark.parametrize("argv,text", [
    (["--planner", "bogus"], "--planner"), (["--planner", ""], "--planner"),
    (["--json", "/"], "--json '/'"), (["--json", "/no/such/folder/plan.json"], "--json '/no/such/folder/plan.json'"),
    (["--json", ""], "--json ''"), (["--branch-and-bound=1"], "--branch-and-bound"),
])
def test_place_bad_flags(tmp_path, capsys, argv, text):
    exits_2(run_place(tmp_path, DEVICES, TASKS, *argv), capsys, text)


def test_place_missing_flag_and_debug(tmp_path, capsys):
    exits_2(lambda: s2m3_place.main(["--tasks", write(tmp_path, "t.json", TASKS)]), capsys, "--devices")
    with pytest.raises(SystemExit) as e:
        run_place(tmp_path, put(DEVICES, ("devices", 0, "speed"), 0), TASKS, "--debug")()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback (most recent call last)" in err and "devices[0].speed" in err


# -- s2m3-serve ----------------------------------------------------------------------------


class Rank0:
    """Rank 0 of a job of `size` ranks, for s2m3-serve's input checks (its one collective is
    the broadcast of the verdict; a bad input never gets further)."""

    rank = 0

    def __init__(self, size=2, timeout_s=None):
        self.size = size

    def bcast_bytes(self, data, key, timeout_s=None):
        return data


PLAN_FIELDS = {
    ("devices",): ([("null", None), ("empty", []), ("type", "ab"), ("list", [1, 2]), ("twice", ["a", "a"]),
                    ("three", ["a", "b", "c"])], "devices"),
    ("size",): ([("huge", "huge"), ("empty", ""), ("type", 1), ("null", None)], "size"),
    ("models",): ([("null", None), ("empty", []), ("type", "x"), ("unknown", ["resnet"])], "models"),
    ("plan",): ([("list", ["a"]), ("null", None), ("type", "a")], "plan"),
    ("plan", "minilm"): ([("unknown", "z"), ("type", 1), ("list", ["a"]), ("null", None)], "plan['minilm']"),
    ("custom",): ([("list", ["m"]), ("type", "x")], "custom"),
    ("prism",): ([("list", ["minilm"]), ("type", "x"), ("number", 1)], "prism"),
    ("prism", "minilm"): ([("list", ["a", "b"]), ("type", "x"), ("null", None)], "prism['minilm']"),
    ("prism", "minilm", "devices"): ([("one", ["a"]), ("twice", ["a", "a"]), ("type", "ab"), ("unknown", ["a", "z"]),
                                      ("null", None), ("list", [["a"], ["b"]])], "prism['minilm'].devices"),
    ("prism", "minilm", "segment_size"): (POSITIVE + [("fraction", 1.5), ("huge", 10**11)], "prism['minilm'].segment_size"),
    ("prism", "minilm", "halo"): ([("negative", -1), ("type", "x")], "prism['minilm']: halo"),
    ("prism", "minilm", "bogus"): ([("unknown", 1)], "prism['minilm']: unknown lever(s) ['bogus']"),
    ("prism", "vit-s16"): ([("overlap", {"devices": ["a", "b"]})], "prism groups of 'minilm' and 'vit-s16' share"),
    ("objective_s",): ([("type", "x"), ("negative", -1), ("nan", NAN)], "objective_s"),
    ("suite_version",): ([("old", "0123456789ab"), ("null", None), ("type", 1)], "written for suite version"),
    ("extra",): ([("unknown", 1)], "has unknown field 'extra'"),
}
REQUEST_FIELDS = {
    ("id",): ([("object", {"a": 1}), ("list", [1]), ("bool", True), ("float", 1.5), ("null", None), ("nan", NAN),
               ("long", "x" * 257)], "line 1: id"),
    ("model",): ([("unknown", "topic-minilm"), ("type", 5), ("list", ["sentiment-minilm"]), ("null", None),
                  ("empty", "")], "line 1: model"),
    ("seed",): ([("empty", ""), ("type", "3"), ("negative", -1), ("fraction", 0.5), ("huge", 2**64), ("nan", NAN),
                 ("bool", True)], "line 1: seed"),
    ("sed",): ([("unknown", 1)], "line 1 has unknown field 'sed'"),
}


def run_serve(monkeypatch, argv, stdin=b""):
    monkeypatch.setattr(s2m3_serve, "Communicator", Rank0)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    return lambda: s2m3_serve.main(argv)


@pytest.mark.parametrize("path,value,text", cases(PLAN_FIELDS))
def test_serve_plan_fields(tmp_path, capsys, monkeypatch, path, value, text):
    argv = ["--plan", write(tmp_path, "p.json", put(PLAN, path, value)), "--requests",
            write(tmp_path, "r.jsonl", json.dumps(REQUEST))]
    one_line(exits_2(run_serve(monkeypatch, argv), capsys, text))


@pytest.mark.parametrize("path,value,text", cases(REQUEST_FIELDS))
def test_serve_request_fields(tmp_path, capsys, monkeypatch, path, value, text):
    argv = ["--plan", write(tmp_path, "p.json", PLAN), "--requests", write(tmp_path, "r.jsonl", json.dumps(put(REQUEST, path, value)))]
    one_line(exits_2(run_serve(monkeypatch, argv), capsys, text))


@pytest.mark.parametrize("flag", ["--plan", "--requests", "--devices"])
def test_serve_bad_files(tmp_path, capsys, monkeypatch, flag):
    for kind, bad in bad_files(tmp_path):
        if flag == "--requests" and kind in ("empty", "not-a-mapping", "bad-json"):
            continue  # request lines: an empty file is no requests; the others are bad lines (below)
        args = {"--plan": write(tmp_path, "p.json", PLAN), "--requests": write(tmp_path, "r.jsonl", json.dumps(REQUEST)),
                flag: bad}
        if flag == "--requests" and kind in ("binary", "latin-1", "huge"):
            text = bad  # found in a line: the message names the file and the line
        else:
            text = f"{flag} {bad}"
        one_line(exits_2(run_serve(monkeypatch, [x for kv in args.items() for x in kv]), capsys, text))


@pytest.mark.parametrize("stdin,text", [
    (b"\xff\xfe{}\n", "stdin: line 1: is not UTF-8 text (byte 0 is 0xff)"),
    (b"x" * 5000, "stdin: line 1: is longer than 4096 bytes"),
    (b"\n" * 10 + b"[1]\n", "stdin: line 11: expected a JSON object"),
    (b"{\"id\": 1, \"model\": \"sentiment-minilm\"}\n" * 2, "stdin: line 2: id 1 is used twice"),
    (b"\x00" * 100, "stdin: line 1: expected a JSON object"),
])
def test_serve_bad_stdin(tmp_path, capsys, monkeypatch, stdin, text):
    one_line(exits_2(run_serve(monkeypatch, ["--plan", write(tmp_path, "p.json", PLAN)], stdin), capsys, text))


def test_serve_ranks_and_debug(tmp_path, capsys, monkeypatch):
    plan = write(tmp_path, "p.json", PLAN)
    devices = write(tmp_path, "d.json", {"devices": [{"name": "b", "memory_gb": 1}, {"name": "a", "memory_gb": 1}]})
    one_line(exits_2(run_serve(monkeypatch, ["--plan", plan, "--devices", devices], b""), capsys,
                     "its devices ['a', 'b'] do not match the ranks' devices ['b', 'a']"))
    bad = write(tmp_path, "d2.json", put(DEVICES, ("devices", 1, "speed"), NAN))
    one_line(exits_2(run_serve(monkeypatch, ["--plan", plan, "--devices", bad], b""), capsys, "devices[1].speed"))
    with pytest.raises(SystemExit) as e:
        run_serve(monkeypatch, ["--plan", plan, "--devices", bad, "--debug"], b"")()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback (most recent call last)" in err and "devices[1].speed" in err
    exits_2(run_serve(monkeypatch, ["--requests", "r.jsonl"]), capsys, "--plan")


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "soon", ""])
def test_serve_bad_timeout(tmp_path, capsys, monkeypatch, value):
    argv = ["--plan", write(tmp_path, "p.json", PLAN), "--timeout", value]
    exits_2(run_serve(monkeypatch, argv), capsys, "--timeout")


BIN = Path(sys.executable).parent


@pytest.mark.skipif(not (BIN / "mpiexec").exists(), reason="needs mpiexec (pip install mpich)")
def test_serve_bad_input_under_mpiexec(tmp_path):
    """Rank 0 finds the bad request; both ranks stop with exit code 2 (neither waits in a
    collective the other never enters); one line from rank 0, no traceback."""
    pytest.importorskip("mpi4py")
    plan = write(tmp_path, "p.json", PLAN)
    reqs = write(tmp_path, "r.jsonl", json.dumps(REQUEST) + "\n" + json.dumps({**REQUEST, "id": {"a": 1}}) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    t0 = time.monotonic()
    p = subprocess.run([str(BIN / "mpiexec"), "-n", "2", sys.executable, "-m", "prism_ops.cli.s2m3_serve", "--plan", plan,
                        "--requests", reqs], capture_output=True, text=True, timeout=120, env=env)
    took = time.monotonic() - t0
    assert p.returncode == 2, p.stderr[-2000:]
    # (most of it is two interpreters importing torch and transformers on a shared machine)
    assert took < 30, took
    assert p.stderr.count("s2m3-serve: error: ") == 1 and "Traceback" not in p.stderr, p.stderr
    assert "r.jsonl: line 2: id must be a string of at most 256 characters or a whole number, got {'a': 1}" in p.stderr
    assert p.stdout == ""
