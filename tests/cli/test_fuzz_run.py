"""prism-run fuzzed: a table of bad values per flag; every case exits 2 within 10 s with one
message naming the flag (or its settings field: `segment_size` for --segment-size) and no
traceback.

The cases run in-process (`prism_ops.cli.run.main` with argv; MPI as a single rank), since every
bad value is refused before a model loads, or, for a bad model folder, while it loads. One case
runs under real `mpiexec -n 2`: a missing --auto profile, which used to leave rank 1 waiting in a
broadcast rank 0 had skipped until the timeout.
"""

import os
import subprocess
import time

import pytest

pytest.importorskip("mpi4py")
pytest.importorskip("transformers")

from prism_ops.cli.run import main  # noqa: E402
from prism_ops.distributed.faults import guarded  # noqa: E402
from prism_ops.input_files import MAX_INPUT_BYTES, MAX_PROFILE_BYTES  # noqa: E402
from tiny_model import write_tiny_gpt2  # noqa: E402

from launch import BIN, ENV, MPIEXEC  # noqa: E402  (the one launcher setup)

NUMBERS = ["", "x", "nan"]  # not numbers at all (nan: not an int; for floats, checked by range)
# flag -> bad values; {name} is a file made by the `files` fixture.
TABLE = {
    "--segment-size": NUMBERS + ["-1", "0", "1.5"],
    "--sink-tokens": NUMBERS + ["-1"],
    "--halo": NUMBERS + ["-1"],
    "--summary-bits": NUMBERS + ["1", "99"],
    "--cluster-iters": NUMBERS + ["-1"],
    "--heavy-fraction": ["", "x", "nan", "inf", "-0.1", "1", "2"],
    "--exchange": ["", "bogus"],
    "--preset": ["", "bogus"],
    "--weights": ["", "x", "2,x", "nan,1", "inf", "-1", "0", "1,,2"],
    "--output": ["", "bogus"],
    "--dtype": ["", "float64"],
    "--generate": NUMBERS + ["-3"],
    "--temperature": ["", "x", "nan", "inf", "-0.5"],
    "--top-k": NUMBERS + ["-1"],
    "--top-p": ["", "x", "nan", "0", "-1", "1.5"],
    "--seed": NUMBERS + ["-1", str(2**64)],
    "--simulate": NUMBERS + ["0", "-2"],
    "--threads": NUMBERS + ["-2", "100000"],
    "--link-mbit": ["", "x", "nan", "inf", "0", "-1"],
    "--link-latency-ms": ["", "x", "nan", "-1"],
    "--timeout": ["", "x", "nan", "inf", "0", "-5"],
    "--input": ["", "   \n\t"],
    "--input-file": ["{missing}", "{dir}", "{fifo}", "{binary}", "{latin1}", "{huge}", "{empty}", "/dev/zero"],
    "--auto": ["", "{missing}", "{dir}", "{fifo}", "{binary}", "{latin1}", "{huge_profile}", "{empty}", "{not_json}",
               "{json_list}", "{old_format}", "{nan_rate}", "{bool_shape}", "{other_ranks}"],
    "--profile": ["", "{dir}", "{missing}/p.json"],
    "--model": ["", "{missing}", "{dir}", "{binary}", "{corrupt_model}"],
    "--port": ["", "x", "0", "70000"],
}


# A one-rank profile (format 2) that is fine but for what each case changes.
PROFILE = (b'{"format": 2, "model": "minilm", "partitions": 1, "hosts": ["h"], "shape": {"hidden_size": 384, '
           b'"num_heads": 12, "num_kv_heads": 12, "head_dim": 32, "ffn_size": 1536, "mlp_matrices": 2, "num_layers": 2}, '
           b'"devices": [{"linear_flops_s": 1e10, "attention_flops_s": 1e10}], "links": [[null]]}')


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    f = {"missing": str(d / "missing"), "dir": str(d / "a_dir")}
    os.mkdir(f["dir"])
    os.mkfifo(d / "fifo")  # opening it to read would block until a writer came
    f["fifo"] = str(d / "fifo")
    for name, data in [("binary", bytes(range(256)) * 4), ("latin1", "café au lait".encode("latin-1")),
                       ("empty", b""), ("not_json", b"{rows: oops"), ("json_list", b"[1, 2]"),
                       ("old_format", b'{"partitions": 1, "rows": [{"tokens": 8, "local_s": 1, "distributed_s": 2}]}'),
                       ("nan_rate", PROFILE.replace(b'"linear_flops_s": 1e10', b'"linear_flops_s": NaN')),
                       ("bool_shape", PROFILE.replace(b'"num_layers": 2', b'"num_layers": true')),
                       ("other_ranks", PROFILE.replace(b'"partitions": 1', b'"partitions": 4'))]:
        (d / name).write_bytes(data)
        f[name] = str(d / name)
    for name, size in [("huge", MAX_INPUT_BYTES + 1), ("huge_profile", MAX_PROFILE_BYTES + 1)]:
        with open(d / name, "wb") as h:
            h.truncate(size)  # sparse: costs no disk
        f[name] = str(d / name)
    model = write_tiny_gpt2(d / "corrupt_model")
    (model / "model.safetensors").write_bytes(b"\x00\x01 not safetensors" * 10)
    f["corrupt_model"] = str(model)
    return f


def argv_for(flag, value):
    """A command line that is fine but for flag=value."""
    if flag in ("--input", "--input-file", "--profile"):
        base = []  # they are the job's input themselves
    elif flag == "--port":
        base = ["--serve"]
    else:
        base = ["--input", "Edge devices share one transformer."]
    return [*base, flag, value]


CASES = [(flag, value) for flag, values in TABLE.items() for value in values]


@pytest.mark.parametrize("flag,value", CASES, ids=[f"{f}={v!r}" for f, v in CASES])
def test_a_bad_value_exits_2_naming_the_flag(flag, value, files, capsys):
    value = value.format(**files)
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as e:
        main(argv_for(flag, value))
    seconds = time.monotonic() - t0
    err = capsys.readouterr().err
    assert e.value.code == 2, err[-2000:]
    assert seconds < 10, seconds
    assert "Traceback" not in err
    field = flag.lstrip("-").replace("-", "_")
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and (flag in lines[0] or field in lines[0] or flag.lstrip("-") in lines[0]), err


def test_simulate_under_mpiexec_with_more_ranks_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        main(["--simulate", "2", "--input", "hi"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "--simulate runs all partitions in one process, but this is one of 2 MPI ranks" in err


class _OneRank:
    """Enough of a Communicator for guarded on a single rank; its MPI_Abort raises instead of ending."""

    rank, size = 0, 1

    class comm:  # the mpi4py communicator
        @staticmethod
        def Abort(code):
            raise SystemExit(code)


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_error_shows_its_traceback_only_with_debug(debug, capsys):
    def fn():
        raise KeyError("boom")

    with pytest.raises(SystemExit) as e:
        guarded(_OneRank(), fn, prog="prism-run", debug=debug)
    err = capsys.readouterr().err
    assert e.value.code == 1
    if debug:
        assert "Traceback" in err and "KeyError: 'boom'" in err
    else:
        assert "Traceback" not in err
        assert err.strip() == "prism-run: rank 0/1: KeyError: 'boom' (--debug shows the traceback)"


@pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec (pip install mpich)")
def test_a_missing_profile_under_mpiexec_ends_every_rank_with_one_message(tmp_path):
    missing = str(tmp_path / "no-profile.json")
    t0 = time.monotonic()
    p = subprocess.run([MPIEXEC, "-n", "2", str(BIN / "prism-run"), "--threads", "1", "--auto", missing,
                        "--input", "Edge devices share one transformer."],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert time.monotonic() - t0 < 60  # before loading the model; it used to wait out the timeout
    assert p.stderr.count("error") == 1 and f"prism-run: error: --auto {missing!r} cannot be read" in p.stderr
    assert "Traceback" not in p.stderr
