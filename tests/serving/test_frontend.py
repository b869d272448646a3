"""The supervised service (`prism-run --serve --hosts`): its parts, then real jobs.

- the channel's frames (header + float32 payload) round trip, a foreign peer is refused;
- the command line: the ranks get every flag but the front end's own; bad host lists are named;
- the fleet: a lost host needs GOOD_PROBES good probes and its hold, a flapping host's hold
  doubles, an unreachable host is not re-admitted (a real launcher program that fails);
- on 3 test hosts (as root; `tools/supervised_faults.py`, skipped with the reason elsewhere)
  through the official openai client with max_retries=0: a host's link down mid-prefill and the
  decoding host's link down mid-generation (tiny decoder: completions and a stream), a rank
  killed (MiniLM), the front end lost.
"""

import importlib.util
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from prism_ops.cli.run import parse_args, rank_args
from prism_ops.serving.bridge import _rank_of
from prism_ops.serving.channel import Channel
from prism_ops.serving.fleet import GOOD_PROBES, HOLD_S, PROBE_S, Fleet, Launcher

BIN = Path(sys.executable).parent


def test_channel_round_trip_with_payload():
    a, b = socket.socketpair()
    left, right = Channel(a), Channel(b)
    vectors = np.arange(6, dtype="<f4").reshape(2, 3) / 7
    left.send({"id": "j1", "vectors": [[3, {"bytes_sent": 10}], [4, {"bytes_sent": 10}]]}, vectors.tobytes())
    left.send({"beat": "forward"})
    head, blob = right.recv()
    assert head["id"] == "j1" and head["vectors"][1][0] == 4
    assert np.array_equal(np.frombuffer(blob, "<f4").reshape(2, 3), vectors)  # bit for bit: the same bytes
    assert right.recv() == ({"beat": "forward"}, b"")
    left.close()
    with pytest.raises(EOFError):
        right.recv()


def test_channel_refuses_a_foreign_peer():
    a, b = socket.socketpair()
    a.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # an HTTP client on the ranks' port
    with pytest.raises(EOFError, match="not a prism-ops peer"):
        Channel(b).recv()


def test_rank_flags_leave_out_the_front_ends_own():
    argv = ["--serve", "--hosts", "a,b", "--model", "minilm", "--port=9000", "--api-key", "secret", "--host",
            "0.0.0.0", "--mpiexec-args", "-launcher ssh", "--queue-limit", "3", "--preset", "exact"]
    assert rank_args(argv, 5.0) == ("--serve", "--model", "minilm", "--preset", "exact", "--timeout", "5")
    opts = parse_args(argv)
    assert opts.mode == "supervise" and opts.hosts == ("a", "b") and opts.timeout == 5.0
    assert opts.mpiexec_args == ("-launcher", "ssh") and opts.queue_limit == 3
    assert "secret" not in opts.rank_args  # the API key stays with the front end
    assert parse_args(["--serve", "--hosts", "a", "--timeout", "9"]).rank_args[-2:] == ("--timeout", "9")
    assert parse_args(["--serve"]).timeout == 30.0  # without --hosts, the MPI service's default


@pytest.mark.parametrize("argv,says", [
    (["--input", "x", "--hosts", "a,b"], "--hosts and --hostfile go with --serve"),
    (["--serve", "--hosts", "a,,b"], "--hosts must be host names"),
    (["--serve", "--hosts", "a,b", "--no-http"], "does not go with --no-http"),
    (["--serve", "--hosts", "a,b", "--hostfile", "f"], "not both"),
    (["--serve", "--hostfile", "/nonexistent/hosts"], "cannot be read"),
    (["--serve", "--hosts", "a,a"], "must not repeat a host"),
    (["--serve", "--hosts", "a", "--queue-limit", "-1"], "queue-limit must be an integer >= 0"),
])
def test_bad_host_flags_are_named(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert says in capsys.readouterr().err


def test_hostfile(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("# the boards\nboard1:1\n\nboard2  # second\n")
    assert parse_args(["--serve", "--hostfile", str(f)]).hosts == ("board1", "board2")
    f.write_text("# nobody\n")
    with pytest.raises(SystemExit):
        parse_args(["--serve", "--hostfile", str(f)])


def test_fault_names_the_silent_rank_not_the_reporter():
    assert _rank_of(RuntimeError("rank 1/3: error: rank 2 has been silent for 5.0 s (timeout 5 s)")) == 2
    assert _rank_of(RuntimeError("rank 1 failed: out of memory")) == 1
    assert _rank_of(RuntimeError("nothing said")) is None


def _script(tmp_path, name, body) -> str:
    p = tmp_path / name
    p.write_text(f"#!/bin/sh\n{body}\n")
    p.chmod(0o755)
    return str(p)


def test_lost_host_comes_back_after_its_probes_and_hold(tmp_path):
    # a real remote-shell program in hydra's place: it runs the command (a reachable host)
    fleet = Fleet(["a", "b"], Launcher(["-launcher-exec", _script(tmp_path, "ok", 'shift; sh -c "$*"')]))
    fleet.lose("b", 0.0)
    assert fleet.up() == ["a"] and fleet.lost() == ["b"]
    t, ready = 0.0, []
    while not ready:
        t += PROBE_S
        ready = fleet.probe_lost(t)
    assert ready == ["b"] and t >= max(GOOD_PROBES * PROBE_S, HOLD_S)
    fleet.admit(ready, t)
    fleet.lose("b", t + 1)  # lost again soon after: flapping, held twice as long
    assert fleet.host("b").hold_s == 2 * HOLD_S
    fleet.admit(["b"], t + 2)
    fleet.lose("b", t + 3)
    assert fleet.host("b").hold_s == 4 * HOLD_S


def test_unreachable_host_stays_out(tmp_path):
    fleet = Fleet(["a", "b"], Launcher(["-launcher-exec", _script(tmp_path, "down", "exit 255")]))
    fleet.lose("b", 0.0)
    fleet.host("b").stale.add("7-abc")
    assert not any(fleet.probe_lost(PROBE_S * k) for k in range(1, 4 * GOOD_PROBES))
    assert fleet.lost() == ["b"] and fleet.host("b").stale == {"7-abc"}  # its old job still to clean


# -- real jobs on 3 test hosts ------------------------------------------------------------------

spec = importlib.util.spec_from_file_location("supervised_faults",
                                              Path(__file__).parents[2] / "tools" / "supervised_faults.py")
supervised_faults = importlib.util.module_from_spec(spec)
sys.modules["supervised_faults"] = supervised_faults
spec.loader.exec_module(supervised_faults)
REASON = supervised_faults.netns_hosts.available()
if REASON is None and not (BIN / "mpiexec").exists():
    REASON = "needs mpiexec (pip install mpich)"


@pytest.mark.skipif(REASON is not None, reason=f"no test hosts here: {REASON}")
@pytest.mark.parametrize("model,case", [("tiny", "down"), ("tiny", "gen"), ("minilm", "kill"), ("minilm", "frontend")])
def test_supervised_service_survives(model, case):
    pytest.importorskip("openai")
    o = supervised_faults.run_case(model, case)
    said = o.said[-3000:]
    assert not o.left, f"processes of an old job left on the hosts: {o.left}\n{said}"
    if case == "frontend":
        assert o.ends_s is not None and o.ends_s <= supervised_faults.TIMEOUT_S + 10, (o.ends_s, said)
        return
    assert o.codes and set(o.codes) == {200}, (o.codes, said)
    assert o.same, said
    assert o.stream_ok is not False, "the stream repeated, lost or did not end its tokens"
    assert o.answered_s <= supervised_faults.LIMIT_S[model], (o.answered_s, said)
    assert o.restarts and o.restarts[0]["replayed"] >= 1, o.restarts
    assert o.back_s is not None and o.back_s <= supervised_faults.BACK_S, (o.back_s, said)
    assert set(o.rejoin_codes) <= {200}, o.rejoin_codes
    assert o.ok
