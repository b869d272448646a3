"""Causal models send each chunk point to point to the later ranks only (`Communicator.isend_recv`),
under real mpiexec: the sender never waits, the emulated link delivers one payload after the
other, and a decoder over it gives the simulated output with the cost model's bytes."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("mpi4py")
pytest.importorskip("transformers")

from launch import ENV, MPI_SCRIPTS as HERE, MPIEXEC  # noqa: E402  (the one launcher setup)
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec (pip install mpich)")


@pytest.fixture(scope="module")
def result():
    p = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(HERE / "check_directed.py")], capture_output=True,
                       text=True, timeout=240, env=ENV)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_the_sender_runs_ahead_and_the_link_serialises_its_payloads(result):
    sender, receiver = result["raw"]
    # 3 x 25,000 bytes at 10 Mbit/s is 60 ms on the link; rank 0 is done long before.
    assert sender["sender_s"] < 0.03 and sender["sent"] == 3 * 25_000
    assert receiver["sent"] == 0
    got = receiver["got"]
    assert [g[1:] for g in got] == [[25_000, k, k] for k in range(3)]  # every byte, in order
    # Payload k arrives once k + 1 payloads have crossed the link, plus the 5 ms latency. The two
    # ranks' clocks start at a barrier they leave up to a few ms apart (heartbeat threads run
    # too), so the first arrival gets 5 ms of slack; the serialisation shows in the gaps between
    # arrivals, one payload's 20 ms each.
    times = [g[0] for g in got]
    assert times[0] >= 0.020 + 0.005 - 5e-3, got
    for a, b in zip(times, times[1:]):
        assert b - a >= 0.020 - 1e-3, got


def test_a_decoder_over_an_emulated_link_equals_the_simulation(result):
    dec = result["decoder"]
    assert dec["err_sim"] <= 1e-5 * max(1.0, dec["scale"]) * 2 + dec["err_step"], dec  # as in test_distributed
    assert dec["per_rank"][1] == 0  # the last rank's rows are read by nobody
    assert dec["bytes"] == [dec["expected_bytes"]] * 2
