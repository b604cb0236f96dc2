import datetime
import math
import threading

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.splitlearn.transport import (
    IDLE_BEFORE_PROBE_S,
    HandOffs,
    LinkClock,
    PacedSender,
    hand_offs,
    late_receive_samples,
)
from edgecloud.splitlearn.wireless import shannon_rate_bps, spectral_efficiency, transfer_seconds


def test_shannon_rate() -> None:
    assert spectral_efficiency(0.0) == 1.0  # SNR 1 -> log2(2)
    assert shannon_rate_bps(1e6, 0.5, 10 * math.log10(3)) == pytest.approx(0.5 * 1e6 * 2)
    assert transfer_seconds(1000, 8000.0) == 1.0


@pytest.mark.parametrize(
    ("bandwidth", "share", "field"), [(0.0, 0.5, "bandwidth_hz"), (1e6, 0.0, "share"), (1e6, 1.5, "share")]
)
def test_bad_link_parameters_name_the_field(bandwidth: float, share: float, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        shannon_rate_bps(bandwidth, share, 10.0)


def test_link_clock_is_a_fifo_server() -> None:
    clock = LinkClock()
    assert clock.schedule(enqueued_at=0.0, nbytes=1000, rate_bps=8000) == 1.0
    assert clock.schedule(enqueued_at=0.5, nbytes=1000, rate_bps=8000) == 2.0  # waits for the first
    assert clock.schedule(enqueued_at=5.0, nbytes=500, rate_bps=4000) == 6.0  # idle link starts at once


@settings(deadline=None)  # a pure computation: timing is not the point
@given(
    st.lists(st.tuples(st.floats(0, 10), st.integers(1, 10**6), st.floats(1e3, 1e9)), min_size=1, max_size=30)
)
def test_link_clock_never_overlaps_and_never_delivers_early(messages: list[tuple[float, int, float]]) -> None:
    clock = LinkClock()
    t, previous_end = 0.0, 0.0
    for gap, nbytes, rate in messages:
        t += gap
        end = clock.schedule(t, nbytes, rate)
        duration = transfer_seconds(nbytes, rate)
        assert end >= t + duration - 1e-9
        assert end >= previous_end + duration - 1e-9
        previous_end = end


def test_paced_sender_delivers_tensors_intact_and_in_order() -> None:
    store = dist.HashStore()
    groups: dict[int, dist.ProcessGroup] = {}

    def connect(rank: int) -> None:
        groups[rank] = dist.ProcessGroupGloo(store, rank, 2, datetime.timedelta(seconds=20))

    threads = [threading.Thread(target=connect, args=(r,)) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sender = PacedSender(groups[0], peer=1, name="test-link")
    sent = [torch.arange(n, dtype=torch.float32) * (n + 1) for n in (3, 50, 7)]
    for tensor in sent:
        sender.send(tensor, tag=5, rate_bps=1e8)
    received = []
    for tensor in sent:
        buffer = torch.empty_like(tensor)
        groups[1].recv([buffer], 0, 5).wait()
        received.append(buffer)
    sender.flush()
    sender.close()
    assert sender.error is None
    assert all(torch.equal(a, b) for a, b in zip(sent, received, strict=True))


def test_the_late_receive_probe_times_only_the_hand_off() -> None:
    """Each probe idles so that the echo's reply is already waiting when it asks for it; it must
    time the receive (the hand-off), not that idle wait."""
    takes = late_receive_samples(count=9)
    assert len(takes) == 9 and min(takes) > 0
    # Timed with the idle wait, every take would be >= it; at nice 19 under load the median can
    # reach it (5.2 ms seen at load 5.5), so the guard is the fastest take.
    assert min(takes) < IDLE_BEFORE_PROBE_S


def test_hand_offs_pair_each_tag_in_order_and_tell_a_waiting_receiver_from_a_late_one() -> None:
    """Sender rows (tag, delivered_at, sent_at), receiver rows (tag, asked_at, held_at)."""
    sent = [(2, 1.0, 1.1), (3, 2.0, 2.0), (2, 3.0, 3.2), (2, 5.0, 5.0), (2, 7.0, 7.4)]
    received = [
        (3, 1.5, 2.25),  # asked before it was sent: latency from delivery, 0.25
        (2, 0.5, 1.5),  # the first tag-2 message, waited for: 0.5
        (2, 4.0, 4.125),  # sent at 3.2, asked at 4.0: a late receive of 0.125
        (2, 6.0, math.nan),  # the receiving process was busy when it came: no sample
        (2, 7.2, 7.75),  # asked after delivery but before the late sender thread sent it: latency 0.75
    ]
    measured = hand_offs(sent, received, late_tags={2})
    assert measured.latency_s == pytest.approx((0.25, 0.5, 0.75))
    assert measured.late_receive_s == pytest.approx((0.125,))
    assert measured.messages == 5
    # Only tags named late give late samples (the model adds the hand-off to gradients only).
    assert hand_offs(sent, received).late_receive_s == ()
    both = measured + HandOffs((1.0,), (), 1)
    assert both.messages == 6 and both.latency_s[-1] == 1.0
    summary = both.summary()
    assert summary["latency_s"]["count"] == 4 and summary["latency_s"]["mean"] == pytest.approx(0.625)
    assert summary["late_receive_s"] == {"count": 1, "mean": 0.125, "median": 0.125, "p90": 0.125}
