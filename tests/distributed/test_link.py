"""The emulated link (`distributed/link.py`) on its own: how long a transfer takes, and the
arrival time a point-to-point payload carries. No MPI."""

import time

import pytest
import torch

from prism_ops.distributed.link import STAMP_BYTES, EmulatedLink


@pytest.mark.parametrize("mbit,latency_ms", [(0, 0), (-1, 0), (float("nan"), 0), (10, -1), (10, float("nan"))])
def test_a_bad_rate_or_latency_is_refused(mbit, latency_ms):
    with pytest.raises(ValueError, match="link_mbit|link_latency_ms"):
        EmulatedLink(mbit, latency_ms)


def test_seconds_are_latency_plus_bits_over_rate():
    link = EmulatedLink(8.0, latency_ms=5.0)  # 8 Mbit/s: 1 MB a second
    assert link.seconds(0) == pytest.approx(0.005)
    assert link.seconds(1_000_000) == pytest.approx(1.005)


def test_hold_waits_until_the_transfer_is_due():
    link = EmulatedLink(8.0, latency_ms=20.0)
    t0 = time.perf_counter()
    link.hold(t0, 50_000)  # 20 ms + 50 ms
    assert time.perf_counter() - t0 >= 0.07


def test_sends_leave_one_after_the_other():
    link = EmulatedLink(8.0, latency_ms=10.0)
    free, due = link.arrival(0.0, now=100.0, nbytes=1_000_000)
    assert (free, due) == pytest.approx((101.0, 101.01))
    free, due = link.arrival(free, now=100.5, nbytes=500_000)  # the link is busy until 101 s
    assert (free, due) == pytest.approx((101.5, 101.51))


def test_a_stamped_payload_keeps_its_bytes_and_arrives_when_due():
    link = EmulatedLink(8.0, latency_ms=30.0)
    payload = torch.arange(200, dtype=torch.uint8)
    t0 = time.monotonic()
    free, data = link.stamp(payload, 0.0)
    assert data.numel() == payload.numel() + STAMP_BYTES  # the arrival time travels after the bytes
    assert free == pytest.approx(t0 + 200 * 8 / 8e6, abs=0.01)
    assert torch.equal(EmulatedLink.unstamp(data), payload)
    assert time.monotonic() - t0 >= 0.03  # held until its arrival: the latency at least


@pytest.mark.parametrize("nbytes", [0, 1, 7, 13])
def test_a_payload_of_any_length_keeps_its_stamp(nbytes):
    """The stamp follows the payload, on no particular byte boundary (a 1-byte probe answer)."""
    link = EmulatedLink(1000.0, 0.0)
    buf = torch.arange(nbytes, dtype=torch.uint8)
    _, data = link.stamp(buf, 0.0)
    assert torch.equal(EmulatedLink.unstamp(data[: nbytes + STAMP_BYTES]), buf)
