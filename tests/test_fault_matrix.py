"""A subset of the fault matrix (tools/fault_matrix.py) under real mpiexec, 3 ranks: a signalled
rank at each kind of phase ends the job non-zero, in bounded time, with no process left behind,
and rank 0 names the rank when it is still alive. The full matrix and its table: docs/RESULTS.md.
Then faults on real links between 2 test hosts (as root; skipped with the reason elsewhere): the
decoding host's link down, down for 5 s, or slowed to 1 Mbit/s, with a short silence timeout.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("mpi4py")
pytest.importorskip("transformers")

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(not (BIN / "mpiexec").exists(), reason="needs mpiexec (pip install mpich)")

# The driver is a script in tools/, not part of the package: load it by path (registered first,
# as its dataclasses need their module in sys.modules).
spec = importlib.util.spec_from_file_location("fault_matrix", Path(__file__).parent.parent / "tools" / "fault_matrix.py")
fault_matrix = importlib.util.module_from_spec(spec)
sys.modules["fault_matrix"] = fault_matrix
spec.loader.exec_module(fault_matrix)


@pytest.mark.parametrize("program,phase,sig,victim", [
    ("minilm", "loading", "KILL", "0"),
    ("minilm", "handshake", "INT", "last"),
    ("minilm", "forward", "STOP", "middle"),
    ("smollm2", "generation", "TERM", "last"),
    ("smollm2", "generation", "STOP", "0"),
    ("serve", "serving", "STOP", "last"),
])
def test_signalled_rank_ends_the_job(program, phase, sig, victim):
    # A short silence timeout keeps the SIGSTOP cases quick; the full matrix runs with the default.
    o = fault_matrix.run_case(fault_matrix.Case(program, sig, victim, phase), limit_s=40.0,
                              extra_args=["--timeout", "5"])
    assert o.reached, f"rank {victim} never entered {phase}:\n{o.stderr[-2000:]}"
    assert o.exit_code not in (None, 0), f"exit {o.exit_code} after {o.seconds:.1f} s:\n{o.stderr[-2000:]}"
    assert not o.left, f"processes left behind: {o.left}"
    assert o.named is not False, f"rank 0 did not name rank {victim}:\n{o.stderr[-2000:]}"
    assert "Traceback" not in o.stderr or sig != "STOP", o.stderr[-2000:]


# -- faults on real links between 2 test hosts (tools/fault_matrix.py --links) ----------------

LINK_REASON = fault_matrix.netns_hosts.available()


@pytest.mark.skipif(LINK_REASON is not None, reason=f"no test hosts here: {LINK_REASON}")
@pytest.mark.parametrize("program,phase,fault,timeout", [
    ("tiny", "generation", "down", 5),  # the decoding host cut off: both hosts end within 5 + 10 s
    ("tiny", "prefill", "flap", 10),  # back after 5 s, within the timeout: the same answer
    ("tiny", "generation", "slow", 5),  # 1 Mbit/s: goes on (or ends in time), never hangs
    ("serve-tiny", "serving", "down", 5),  # waiting clients get a 503, the service exits
])
def test_link_fault_ends_or_recovers_on_every_host(program, phase, fault, timeout):
    o = fault_matrix.run_link_case(fault_matrix.LinkCase(program, phase, fault), timeout=timeout)
    assert o.reached, f"the job never entered {phase}:\n{o.said[-2000:]}"
    assert not o.left, f"processes left on the test hosts: {o.left}"
    if fault == "down":
        assert o.ended_in_time, (o.exit_code, o.seconds, o.host_ends, o.said[-2000:])
    if fault == "flap":
        assert o.exit_code == 0 and o.same, (o.exit_code, o.said[-2000:])
    if program.startswith("serve") and fault == "down":
        assert o.codes and set(o.codes) == {503}, o.codes
    assert o.ok, (o, o.said[-2000:])
