"""Liveness under real mpiexec: `--timeout` measures silence, not work.

Every rank's heartbeat thread says it is alive about once a second (`distributed/liveness.py`),
so a wait fails only when a rank has not been heard from for `--timeout` seconds. On a tiny
GPT-2 folder (`tiny_model.py`), with the decoding step slowed by PRISM_TEST_DECODE_SLEEP_S (read
by the test harness, `tests/harness`, which installs the package's test hook in the job):
- a generation far longer than --timeout succeeds;
- a SIGSTOPped decoding rank ends the job within the timeout and a few seconds, rank 0 naming
  it and both phases, and the stopped process goes down with the job;
- a SIGSTOPped rank 0: the other rank ends the job (naming rank 0) and no process is left;
- an idle service (`--serve --no-http`) ends when either rank is stopped.
"""

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("mpi4py")
pytest.importorskip("transformers")

from harness import with_hooks  # noqa: E402
from tiny_model import TEXT, write_tiny_gpt2  # noqa: E402

from launch import BIN, ENV, MPIEXEC  # noqa: E402  (the one launcher setup)
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec (pip install mpich)")
TIMEOUT = 3  # --timeout: seconds of silence


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_gpt2(tmp_path_factory.mktemp("liveness") / "tiny")


def state(pid: int) -> str | None:
    """The process state letter of pid (R, S, T = stopped, Z = zombie, ...), None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return None


def alive(pid: int, grace_s: float = 5.0) -> bool:
    """Whether pid is still a process (a zombie is not) after up to grace_s to go."""
    t0 = time.monotonic()
    while state(pid) not in (None, "Z"):
        if time.monotonic() - t0 > grace_s:
            return True
        time.sleep(0.1)
    return False


class Job:
    """An mpiexec job whose stderr is read as it comes, and whose ranks' pids can be found."""

    def __init__(self, ranks, *args, sleep_s=0.0, stdin=subprocess.DEVNULL):
        env = with_hooks(dict(ENV, PRISM_TEST_DECODE_SLEEP_S=str(sleep_s)))
        self.marker = f"--seed={os.getpid() % 100000 + int(time.monotonic() * 1000) % 100000}"
        cmd = [MPIEXEC, "-n", str(ranks), str(BIN / "prism-run"), "--threads", "1", "--timeout", str(TIMEOUT),
               self.marker, *args]
        self.proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.err = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while chunk := os.read(self.proc.stderr.fileno(), 4096):
            self.err += chunk

    def wait_for(self, text: str, timeout=120):
        t0 = time.monotonic()
        while text.encode() not in self.err:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.err.decode()[-2000:]}"
            assert time.monotonic() - t0 < timeout, f"no {text!r} after {timeout} s: {self.err.decode()[-2000:]}"
            time.sleep(0.05)

    def pid_of(self, rank: int) -> int:
        """The pid of this job's MPI rank `rank` (from the launcher's PMI_RANK in its environment)."""
        for p in Path("/proc").iterdir():
            try:
                if self.marker.encode() not in (p / "cmdline").read_bytes():
                    continue
                env = (p / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"PMI_RANK={rank}".encode() in env and int(p.name) != self.proc.pid:
                return int(p.name)
        raise AssertionError(f"no process for rank {rank}")

    def finish(self, timeout):
        """(exit code, stdout, stderr) once the job ends (stderr is read by the thread only)."""
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=5)
        return self.proc.returncode, self.proc.stdout.read().decode(), self.err.decode()


def test_a_generation_longer_than_the_timeout_succeeds(tiny):
    # 8 steps of 0.6 s: the decoding rank works 4.8 s while rank 0 waits, past the 3 s timeout.
    job = Job(2, "--model", str(tiny), "--input", TEXT, "--segment-size", "4", "--generate", "8", sleep_s=0.6)
    code, out, err = job.finish(timeout=120)
    assert code == 0, err[-2000:]
    assert "generated 8 tokens" in out, out


def test_a_stopped_decoding_rank_is_named_by_rank_0(tiny):
    job = Job(2, "--model", str(tiny), "--input", TEXT, "--segment-size", "4", "--generate", "20", sleep_s=0.5)
    job.wait_for(" 2/20 ")  # two tokens made: its phase is out with its heartbeats
    victim = job.pid_of(1)
    os.kill(victim, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        code, _, err = job.finish(timeout=60)
        assert time.monotonic() - t0 < TIMEOUT + 15
        assert code != 0
        assert "prism-run: rank 0/2: error: rank 1 has been silent for" in err, err[-2000:]
        assert f"(timeout {TIMEOUT} s); last heard in: generation token " in err
        assert "rank 0 was in: gather" in err and "Traceback" not in err  # it waits for the generated ids
        assert not alive(victim)  # the job took the stopped rank down with it
    finally:
        if alive(victim):
            os.kill(victim, signal.SIGKILL)


def test_a_stopped_rank_0_ends_the_job_and_leaves_no_process(tiny):
    job = Job(2, "--model", str(tiny), "--input", TEXT, "--segment-size", "4", "--generate", "6", sleep_s=0.5)
    job.wait_for("generating")
    rank0, rank1 = job.pid_of(0), job.pid_of(1)
    os.kill(rank0, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        code, _, err = job.finish(timeout=60)
        # Rank 1 finds rank 0 silent either between its own tokens (decode checks liveness
        # every token) or once it has decoded its 3 s and waits to gather.
        assert time.monotonic() - t0 < 3 + TIMEOUT + 15
        assert code != 0
        assert "prism-run: rank 1/2: error: rank 0 has been silent for" in err, err[-2000:]
        assert re.search(r"rank 1 was in: (gather|generation token \d+)", err), err[-2000:]
        assert not alive(rank1)
    finally:
        if alive(rank0):  # the launcher may leave a stopped process: the test ends it
            os.kill(rank0, signal.SIGKILL)


@pytest.mark.parametrize("victim", [0, 1])
def test_an_idle_service_ends_when_a_rank_stops(tiny, victim):
    job = Job(2, "--serve", "--no-http", "--model", str(tiny), "--segment-size", "4", stdin=subprocess.PIPE)
    job.wait_for("prism-run: serving")
    pids = [job.pid_of(0), job.pid_of(1)]
    os.kill(pids[victim], signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        code, _, err = job.finish(timeout=60)
        assert time.monotonic() - t0 < TIMEOUT + 15
        assert code != 0
        other = 1 - victim
        assert f"rank {other}/2: error: rank {victim} has been silent for" in err, err[-2000:]
        assert f"rank {other} was in: serving (idle)" in err
        assert not alive(pids[other])
    finally:
        if alive(pids[victim]):
            os.kill(pids[victim], signal.SIGKILL)
        job.proc.stdin.close()
