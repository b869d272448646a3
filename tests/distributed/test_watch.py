"""What a waiting rank watches (`distributed/watch.py`) on its own, over fake heartbeats: its
phase (shared with the heartbeats, and given to the test hook), silent ranks, and the bounded
wait without heartbeats. No MPI."""

import time

import pytest

from prism_ops.distributed import hooks
from prism_ops.distributed.faults import SilentRank
from prism_ops.distributed.watch import Watch


class Heartbeats:
    """Stands in for `liveness.Liveness`: a phase, a check that raises when told to, close."""

    def __init__(self, silent: bool = False):
        self.phase, self.silent, self.checked, self.closed = "start", silent, [], False

    def check(self, timeout_s):
        self.checked.append(timeout_s)
        if self.silent:
            raise SilentRank(1, timeout_s + 1, timeout_s, "gather", 0, self.phase)

    def close(self):
        self.closed = True


@pytest.fixture
def seen(monkeypatch):
    """Every (rank, phase) given to the test hook while a test runs."""
    got = []
    monkeypatch.setattr(hooks, "on_phase", lambda rank, phase: got.append((rank, phase)))
    return got


def test_the_phase_goes_to_the_hook_once_per_change(seen):
    watch = Watch(2, 3, 5.0)
    assert watch.phase == "start"
    watch.phase = "loading"
    watch.phase = "loading"
    watch.phase = "forward layer 0"
    assert watch.phase == "forward layer 0"
    assert seen == [(2, "loading"), (2, "forward layer 0")]


def test_no_hook_in_production():
    assert hooks.on_phase is None
    watch = Watch(0, 2, 5.0)
    watch.phase = "loading"  # nothing to call
    assert watch.phase == "loading"


def test_communicators_that_share_heartbeats_share_the_phase():
    beats = Heartbeats()
    world, sub = Watch(0, 3, 5.0, beats), Watch(0, 2, 5.0, beats)
    sub.phase = "serving"
    assert beats.phase == world.phase == "serving"


def test_with_heartbeats_a_wait_fails_only_on_silence():
    beats = Heartbeats()
    watch = Watch(0, 2, 3.0, beats)
    watch.check(time.perf_counter() - 100)  # a long wait: fine while every rank is heard from
    assert beats.checked == [3.0]
    beats.silent = True
    with pytest.raises(SilentRank, match="rank 1 has been silent"):
        watch.check()
    watch.close()
    assert beats.closed


def test_without_heartbeats_a_wait_is_bounded_instead():
    watch = Watch(1, 2, 0.5)
    watch.phase = "gather"
    watch.check(time.perf_counter())
    watch.check()  # not in a wait: nothing to bound
    with pytest.raises(TimeoutError, match=r"rank 1: a wait in gather took over 0.5 s \(timeout\)"):
        watch.check(time.perf_counter() - 1.0)
    Watch(0, 1, 0.5).check(time.perf_counter() - 1.0)  # one rank: nobody to wait for
