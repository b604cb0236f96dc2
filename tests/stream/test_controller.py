"""The AutoRec controller without a connection: adapter rule, budget, off periods."""

from __future__ import annotations

import pytest
from aioquic.quic.packet_builder import QuicDeliveryState
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.stream.controller import (
    AutoRecConfig,
    CopyPlan,
    LossEstimator,
    OffPeriodDetector,
    ReinjectionController,
    copies_for_target,
    plan_copies,
)
from edgecloud.stream.sender import TrackedStreamSender


@pytest.mark.parametrize(
    ("loss", "srtt_s", "copies"),
    [
        (0.0, 0.1, 0),
        (0.01, 0.1, 1),  # one round fits: a lost retransmission needs a copy to make it
        (0.05, 0.1, 2),  # one copy lost with it 5 % of the time, two 0.25 %
        (0.10, 0.1, 2),  # 0.1 ** 2 = 0.01 exactly meets the residual
        (0.20, 0.1, 3),
        (0.01, 0.02, 0),  # short RTT: two rounds fit in 100 ms, the second fails 1 % of the time
        (0.05, 0.02, 1),  # ... 5 % of the time without a copy, 0.05 * 0.05 ** 2 with one
        (0.99, 0.1, 3),  # capped at max_copies
    ],
)
def test_copies_follow_loss_and_rtt(loss, srtt_s, copies):
    assert copies_for_target(loss, srtt_s, target_s=0.1, residual=0.01, max_copies=3) == copies


@pytest.mark.parametrize(("burst_loss", "copies"), [(0.05, 2), (0.1, 2), (0.2, 3), (0.5, 3), (1.0, 3)])
def test_bursty_loss_asks_for_more_copies(burst_loss, copies):
    # 5 % loss at 100 ms: a copy right after a lost retransmission is lost with burst_loss.
    assert copies_for_target(0.05, 0.1, 0.1, 0.01, 3, burst_loss=burst_loss) == copies


def test_burst_loss_is_loss_right_after_a_loss():
    est = LossEstimator(window=100)
    # Losses in pairs, resolved out of order: every loss is followed by a loss half the time.
    outcomes = [(n, n % 10 in (0, 1)) for n in range(100)]
    for n, lost in reversed(outcomes):
        est.observe(lost, packet_number=n)
    assert est.value == pytest.approx(0.2)
    # 10 of the 20 packets after a loss are lost, blended with the prior (5 packets at
    # the loss rate): (10 + 5 * 0.2) / (20 + 5).
    assert est.burst_loss == pytest.approx(0.44)


def test_burst_loss_needs_evidence_to_leave_independence():
    # Independent 5 % loss with no loss right after a loss in this window: the raw rate
    # says 0 (one copy would do), the estimate stays near the loss rate (two copies).
    est = LossEstimator(window=200)
    for n in range(200):
        est.observe(n % 20 == 0, packet_number=n)
    assert est.value == pytest.approx(0.05)
    assert 0.0 < est.burst_loss < est.value
    assert copies_for_target(est.value, 0.1, 0.1, 0.01, 3, burst_loss=est.burst_loss) == 2


def bursts_in_time(est: LossEstimator) -> None:
    """A packet every 10 ms; every 0.5 s the path is bad for 60 ms: 6 packets in a row lost."""
    for n in range(est._outcomes.maxlen or 0):
        est.observe(n % 50 < 6, packet_number=n, sent_at=n * 0.01)


def test_loss_after_a_delay_tells_bursts_in_time_from_bursts_in_packets():
    est = LossEstimator(window=200)
    bursts_in_time(est)
    assert est.value == pytest.approx(0.12)
    # Right after a loss: 20 of the 24 next packets lost (with the prior, (20 + 0.6) / 29).
    assert est.loss_after(0.0) == est.burst_loss == pytest.approx(20.6 / 29)
    # 100 ms after a loss the burst is over: none of the 24 lost.
    assert est.loss_after(0.1) == pytest.approx(0.6 / 29)
    # The same losses one second apart: the packet after a loss is lost however late it
    # leaves, as when a burst counts packets (a sender backing off its probe timeout).
    sparse = LossEstimator(window=200)
    for n in range(200):
        sparse.observe(n % 50 < 6, packet_number=n, sent_at=float(n))
    assert sparse.loss_after(0.1) == sparse.loss_after(0.0) == pytest.approx(20.6 / 29)
    # Without send times only the next packet can be judged: later delays keep the prior.
    blind = LossEstimator(window=200)
    for n in range(200):
        blind.observe(n % 50 < 6, packet_number=n)
    assert blind.loss_after(0.1) == pytest.approx(blind.value)


@pytest.mark.parametrize(
    ("name", "loss_after", "plan"),
    [
        # independent: a copy right behind the retransmission is as good as any
        ("independent", lambda d: 0.05, CopyPlan(0.0, 2)),
        # bursts in packets: waiting does not help, the burst takes whatever comes next
        ("packets", lambda d: 2 / 3, CopyPlan(0.0, 3)),
        # 60 ms bursts in time: 0.9 right after, 0.45 after 50 ms, 0.2 after 100 ms
        ("time", lambda d: {0.0: 0.9, 0.025: 0.66, 0.05: 0.45, 0.1: 0.2}[round(d, 3)], CopyPlan(0.05, 3)),
    ],
)
def test_copies_wait_out_bursts_in_time_only(name, loss_after, plan):
    assert plan_copies(0.05, 0.1, 0.1, 0.01, 3, loss_after, spacing_s=0.025) == plan


def test_a_retransmissions_copies_leave_after_the_plans_delay():
    off = ReinjectionController(AutoRecConfig(overhead_budget=1.0))
    bursts_in_time(off.loss)
    assert off.copy_plan().delay_s == 0.0  # the plan's delays are opt-in
    ctl = ReinjectionController(AutoRecConfig(overhead_budget=1.0, copy_plan=True))
    sender = TrackedStreamSender(0, True)
    sent(sender, 10_000)
    bursts_in_time(ctl.loss)
    delay = ctl.copy_plan().delay_s
    assert delay > 0
    ctl.on_retransmission_sent(sender, 0, 1200, now=1.0)
    assert ctl.next_wakeup() == pytest.approx(1.0 + delay)
    ctl.poll(1.0, app_has_new_data=False, srtt_s=0.1, goodput_bytes=10_000, cwnd_room=0)
    assert ctl.copy_bytes == 0
    poll_and_send(ctl, sender, 1.0 + delay, goodput_bytes=10_000)
    assert ctl.copy_bytes == 1200
    # the next copy at least the delay later
    assert ctl.next_wakeup() == pytest.approx(1.0 + 2 * delay)


def test_config_errors_name_the_field_and_range():
    with pytest.raises(ValueError, match=r"overhead_budget must be in \[0.0, 10.0\], got -1"):
        AutoRecConfig(overhead_budget=-1)
    with pytest.raises(ValueError, match=r"recovery_target_ms must be in \[1.0, 60000.0\], got 0"):
        AutoRecConfig(recovery_target_ms=0)


def test_loss_estimator_forgets_after_its_window():
    est = LossEstimator(window=10)
    for i in range(10):
        est.observe(i % 2 == 0)
    assert est.value == 0.5
    for _ in range(10):
        est.observe(False)
    assert est.value == 0.0


def test_off_period_detector_finds_bursts():
    det = OffPeriodDetector(weight=1.0)
    assert det.observe(True, 0) is False
    assert det.observe(True, 1000) is False
    assert det.observe(False, 3000) is True  # burst over: off period begins
    assert det.is_off and det.mean_burst_bytes == 3000
    assert det.observe(False, 3000) is False
    det.observe(True, 3000)
    assert det.observe(False, 4000) is True and det.mean_burst_bytes == 1000


def sent(sender: TrackedStreamSender, size: int) -> None:
    sender.write(bytes(size))
    while sender.get_frame(1200) is not None:
        pass


def poll_and_send(
    ctl: ReinjectionController, sender: TrackedStreamSender, now: float, *, goodput_bytes: int, app_has_new_data=False
) -> None:
    """Poll with a full window, then send what it re-injected, as the copy pass would."""
    ctl.poll(now, app_has_new_data=app_has_new_data, srtt_s=0.1, goodput_bytes=goodput_bytes, cwnd_room=0)
    while sender.get_frame(1200) is not None:
        pass


def at_ten_percent_loss(config: AutoRecConfig, sent_bytes: int) -> tuple[ReinjectionController, TrackedStreamSender]:
    """A controller that has measured 10 % loss (two copies per retransmission at 100 ms),
    and a stream sender with ``sent_bytes`` sent."""
    ctl = ReinjectionController(config)
    sender = TrackedStreamSender(0, True)
    sent(sender, sent_bytes)
    for i in range(20):
        ctl.on_packet_resolved(lost=i % 10 == 0)
    return ctl, sender


def test_retransmission_gets_copies_until_acked():
    ctl, sender = at_ten_percent_loss(AutoRecConfig(overhead_budget=1.0), sent_bytes=10_000)
    ctl.on_retransmission_sent(sender, 0, 1200, now=1.0)
    assert ctl.next_wakeup() == 1.0
    # The first copy leaves at once, even with the congestion window full (copies go in
    # a pass of their own, bounded by the budget); the second a quarter RTT later.
    ctl.poll(1.0, app_has_new_data=True, srtt_s=0.1, goodput_bytes=10_000, cwnd_room=0)
    assert sender.copy_pending_bytes == 1200 and ctl.copy_bytes == 1200
    assert ctl.next_wakeup() == pytest.approx(1.025)
    while sender.get_frame(1200) is not None:
        pass
    ctl.poll(1.01, app_has_new_data=False, srtt_s=0.1, goodput_bytes=10_000, cwnd_room=0)
    assert sender.copy_pending_bytes == 0 and ctl.copy_bytes == 1200
    sender.on_data_delivery(QuicDeliveryState.ACKED, 0, 1200, False)
    ctl.poll(2.0, app_has_new_data=False, srtt_s=0.1, goodput_bytes=10_000, cwnd_room=0)
    assert ctl.protections == [] and ctl.next_wakeup() is None


def test_a_copy_that_schedules_nothing_is_not_spent():
    # The first copy is still waiting to be sent when the second falls due: reinject has
    # nothing to add, and the protection keeps its copy for when it can make one.
    ctl, sender = at_ten_percent_loss(AutoRecConfig(overhead_budget=1.0), sent_bytes=10_000)
    ctl.on_retransmission_sent(sender, 0, 1200, now=1.0)
    ctl.poll(1.0, app_has_new_data=True, srtt_s=0.1, goodput_bytes=10_000, cwnd_room=0)
    (p,) = ctl.protections
    assert sender.copy_pending_bytes == 1200 and p.copies_left == 1
    ctl.poll(1.025, app_has_new_data=True, srtt_s=0.1, goodput_bytes=10_000, cwnd_room=0)
    assert ctl.copy_bytes == 1200 and p.copies_left == 1 and p.copies_sent == 1
    assert ctl.next_wakeup() == pytest.approx(1.05)
    while sender.get_frame(1200) is not None:
        pass
    ctl.poll(1.05, app_has_new_data=False, srtt_s=0.1, goodput_bytes=10_000, cwnd_room=0)
    assert ctl.copy_bytes == 2400 and ctl.protections == []


def test_a_reset_stream_loses_its_protections():
    # The viewer stopped the stream (STOP_SENDING): it sends nothing more, so its protections
    # go at the next poll instead of waking the controller every quarter RTT for good.
    ctl, sender = at_ten_percent_loss(AutoRecConfig(overhead_budget=1.0), sent_bytes=10_000)
    ctl.on_retransmission_sent(sender, 0, 1200, now=1.0)
    sender.reset(0)
    ctl.poll(1.0, app_has_new_data=False, srtt_s=0.1, goodput_bytes=10_000, cwnd_room=0)
    assert ctl.protections == [] and ctl.next_wakeup() is None and ctl.copy_bytes == 0


def test_scarce_budget_goes_first_to_copies_that_save_the_most():
    # Credit 0.1 * 60_000 = 6000 bytes, packets of 1200, max_copies 3 (reserve 3600), and later
    # copies leaving one packet more (first_copy_reserve 1).
    config = AutoRecConfig(overhead_budget=0.1, first_copy_reserve=1)
    ctl, sender = at_ten_percent_loss(config, sent_bytes=60_000)

    def poll(now: float) -> None:
        poll_and_send(ctl, sender, now, goodput_bytes=60_000)

    ctl.on_retransmission_sent(sender, 0, 1200, now=1.0)
    poll(1.0)
    assert ctl.copy_bytes == 1200  # A's first copy leaves the reserve untouched
    ctl.on_retransmission_sent(sender, 1200, 2400, now=1.03)
    poll(1.03)
    # A's second copy is due too, but it would leave less than the reserve plus one
    # more first copy; B's first copy goes.
    assert ctl.copy_bytes == 2400
    # After a probe timeout, a retransmission's copies may spend the reserve.
    ctl.on_retransmission_sent(sender, 2400, 3600, now=1.04, after_timeout=True)
    poll(1.04)
    poll(1.07)
    assert ctl.copy_bytes == 4800  # C's first and second copies
    poll(1.1)
    assert ctl.copy_bytes == 4800  # the rest is held: C's third copy would overdraw


def test_credit_saved_while_loss_was_low_is_capped():
    # 10 MB of stream without loss, then a burst of losses: the budget would allow 1 MB of
    # copies, but at once they may spend only the window's worth (0.1 * 200 packets).
    ctl = ReinjectionController(AutoRecConfig(overhead_budget=0.1))
    sender = TrackedStreamSender(0, True)
    sent(sender, 200_000)
    ctl.poll(0.0, app_has_new_data=False, srtt_s=0.1, goodput_bytes=10_000_000, cwnd_room=0)
    for i in range(20):
        ctl.on_packet_resolved(lost=i % 4 == 0)
    for k in range(150):
        ctl.on_retransmission_sent(sender, k * 1200, (k + 1) * 1200, now=1.0, after_timeout=True)
    ctl.poll(1.0, app_has_new_data=False, srtt_s=0.1, goodput_bytes=10_000_000, cwnd_room=0)
    assert ctl.copy_bytes == 0.1 * 200 * 1200


@pytest.mark.parametrize("kind", ["retransmission", "overdue"])
def test_a_small_budget_still_admits_copies(kind: str) -> None:
    # 1.5 % of 200 packets is 3 packets of credit, less than a copy plus the reserve of
    # max_copies + 1 packets: the bucket must still hold its largest claim.
    ctl = ReinjectionController(AutoRecConfig(overhead_budget=0.015))
    sender = TrackedStreamSender(0, True)
    sent(sender, 2_400_000)
    for i in range(40):
        ctl.on_packet_resolved(lost=i % 20 == 0)
    for k in range(200):
        now = 1.0 + k * 0.05
        if kind == "retransmission":
            ctl.on_retransmission_sent(sender, k * 1200, (k + 1) * 1200, now=now)
        else:
            ctl.on_overdue(sender, k * 1200, (k + 1) * 1200, now)
        ctl.poll(now, app_has_new_data=False, srtt_s=0.1, goodput_bytes=12_000 * (k + 1), cwnd_room=10**6)
        while sender.get_frame(1200) is not None:
            pass
    assert 0 < ctl.copy_bytes <= 0.015 * 12_000 * 200


def test_no_loss_means_no_copies():
    ctl = ReinjectionController(AutoRecConfig())
    sender = TrackedStreamSender(0, True)
    for t in range(50):
        sent(sender, 3000)
        for _ in range(3):
            ctl.on_packet_resolved(lost=False)
        ctl.poll(
            t * 0.033,
            app_has_new_data=True,
            srtt_s=0.05,
            goodput_bytes=3000 * (t + 1),
            cwnd_room=10**6,
        )
        ctl.poll(
            t * 0.033 + 0.01,
            app_has_new_data=False,
            srtt_s=0.05,
            goodput_bytes=3000 * (t + 1),
            cwnd_room=10**6,
        )
    assert ctl.copy_bytes == 0 and sender.copy_pending_bytes == 0


@settings(max_examples=40, deadline=None)
@given(
    budget=st.sampled_from([0.0, 0.02, 0.1, 0.5]),
    losses=st.lists(st.booleans(), min_size=5, max_size=80),
    retx=st.lists(st.integers(0, 40), max_size=30),
)
def test_copies_never_exceed_the_budget(budget, losses, retx):
    ctl = ReinjectionController(AutoRecConfig(overhead_budget=budget, recovery_target_ms=10.0))
    sender = TrackedStreamSender(0, True)
    goodput = 0
    for step, lost in enumerate(losses):
        sent(sender, 1200)
        goodput += 1200
        ctl.on_packet_resolved(lost)
        now = step * 0.01
        if step in retx:
            ctl.on_retransmission_sent(sender, max(0, goodput - 3600), goodput, now)
        for new_data in (True, False):
            ctl.poll(now, app_has_new_data=new_data, srtt_s=0.05, goodput_bytes=goodput, cwnd_room=10**6)
            assert ctl.copy_bytes <= budget * goodput + 1e-9


def test_overdue_data_gets_one_copy_only_when_the_adapter_wants_copies():
    sender = TrackedStreamSender(0, True)
    sent(sender, 5000)
    quiet = ReinjectionController(AutoRecConfig(overhead_budget=1.0))
    quiet.on_overdue(sender, 3800, 5000, now=1.0)  # no loss measured: nothing to do
    assert quiet.protections == []
    lossy = ReinjectionController(AutoRecConfig(overhead_budget=1.0))
    for i in range(20):
        lossy.on_packet_resolved(lost=i % 5 == 0)
    lossy.on_overdue(sender, 3800, 5000, now=1.0)
    # Goodput large enough that the budget covers the copy and the reserve for copies of
    # retransmissions after a timeout.
    lossy.poll(1.0, app_has_new_data=False, srtt_s=0.1, goodput_bytes=50_000, cwnd_room=10_000)
    lossy.poll(2.0, app_has_new_data=False, srtt_s=0.1, goodput_bytes=50_000, cwnd_room=10_000)
    assert lossy.copy_bytes == 1200 and lossy.protections == []


def test_late_data_is_copied_only_where_its_loss_would_set_a_new_delay_record():
    sender = TrackedStreamSender(0, True)
    sent(sender, 12_000)
    ctl = ReinjectionController(AutoRecConfig(overhead_budget=1.0, viewer_buffer_ms=0))
    # A full bucket: late copies spend only what is above half of it.
    ctl.poll(0.0, app_has_new_data=False, srtt_s=0.1, goodput_bytes=300_000, cwnd_room=0)
    ctl.on_first_sent(sender, 0, 1200, now=1.0, waited_s=0.5)
    for i in range(100):  # 1 % loss: no more than the adapter's accepted residual
        ctl.on_packet_resolved(lost=i == 0)
    ctl.on_first_sent(sender, 0, 1200, now=1.0, waited_s=0.5)
    assert ctl.protections == []  # a loss is not expected
    for i in range(20):
        ctl.on_packet_resolved(lost=i % 10 == 0)
    # The viewer has had data 0.6 s after it was written.
    ctl.on_delivered(written_at=0.4, arrived_at=1.0)
    ctl.on_delivered(written_at=0.9, arrived_at=1.2)  # not a record
    assert ctl.delay_record_s == pytest.approx(0.6) == ctl.viewer_slack_s
    # Sent on time, lost once, it would still arrive within the record (0.2625 s): no copy.
    ctl.on_first_sent(sender, 0, 1200, now=1.1, waited_s=0.01)
    assert ctl.protections == []
    # 0.4 s in the send buffer plus a recovery round would beat the record: one copy, at once.
    ctl.on_first_sent(sender, 1200, 2400, now=1.2, waited_s=0.4)
    assert [(p.start, p.late) for p in ctl.protections] == [(1200, True)] and ctl.next_wakeup() == 1.2
    ctl.poll(1.2, app_has_new_data=True, srtt_s=0.1, goodput_bytes=300_000, cwnd_room=0)
    assert sender.copy_pending_bytes == 1200 and ctl.copy_bytes_by_reason["late"] == 1200
    assert ctl.protections == []  # one copy only


def test_late_data_within_the_viewers_playout_delay_is_left_alone():
    ctl, sender = at_ten_percent_loss(AutoRecConfig(overhead_budget=1.0, viewer_buffer_ms=500), sent_bytes=12_000)
    ctl.on_delivered(written_at=0.0, arrived_at=0.05)  # the first data: 50 ms
    ctl.on_delivered(written_at=1.0, arrived_at=1.3)  # a record, yet within 50 + 500 ms
    assert ctl.viewer_slack_s == pytest.approx(0.55)
    ctl.on_first_sent(sender, 0, 1200, now=2.0, waited_s=0.25)  # 0.25 + 0.2625 < 0.55
    assert ctl.protections == []
    ctl.on_first_sent(sender, 0, 1200, now=2.0, waited_s=0.3)  # 0.3 + 0.2625 > 0.55
    assert [(p.start, p.late) for p in ctl.protections] == [(0, True)]


def test_late_data_goes_before_a_retransmissions_later_copies():
    # Budget 0.1 at 10 % loss: two copies per retransmission. With first_copy_reserve 1, late
    # data and a retransmission's later copies both need a packet plus a reserve of 4 packets
    # (6000 bytes); the credit below covers one of them, and late data is worth more (see
    # _priority). (A retransmission's first copy keeps a smaller reserve, 3 packets, so it
    # goes first whatever the order.)
    config = AutoRecConfig(overhead_budget=0.1, first_copy_reserve=1)
    ctl, sender = at_ten_percent_loss(config, sent_bytes=200_000)
    assert ctl.copies_now() == 2

    def poll(now: float) -> None:
        poll_and_send(ctl, sender, now, goodput_bytes=75_000, app_has_new_data=True)

    ctl.on_retransmission_sent(sender, 1200, 2400, now=1.0)
    poll(1.0)  # 7500 bytes of credit: the first copy goes at once
    assert ctl.copy_bytes_by_reason == {"retransmission": 1200, "late": 0, "overdue": 0}
    ctl.on_first_sent(sender, 0, 1200, now=1.03, waited_s=1.0)
    poll(1.03)  # 6300: the second copy is due too, but late data goes first and leaves 5100
    assert ctl.copy_bytes_by_reason == {"retransmission": 1200, "late": 1200, "overdue": 0}
    assert [(p.start, p.copies_left) for p in ctl.protections] == [(1200, 1)]  # waits for credit


@pytest.mark.parametrize(
    ("reserve", "copied"), [(1, {"late": 1200, "retransmission": 1200}), (3, {"late": 0, "retransmission": 2400})]
)
def test_first_copy_reserve_keeps_room_for_a_loss_episodes_first_copies(reserve, copied):
    # 6000 bytes of credit, then late data and two retransmissions in one loss episode. A
    # first copy needs a packet plus the timeout reserve (3 packets): 4800. Late data leaves
    # first_copy_reserve packets more. With one packet it takes the room of the second
    # retransmission's first copy; with three it waits and both first copies go.
    ctl, sender = at_ten_percent_loss(AutoRecConfig(overhead_budget=0.1, first_copy_reserve=reserve), 60_000)
    ctl.on_first_sent(sender, 0, 1200, now=1.0, waited_s=1.0)
    poll_and_send(ctl, sender, 1.0, goodput_bytes=60_000)
    ctl.on_retransmission_sent(sender, 1200, 2400, now=1.01)
    poll_and_send(ctl, sender, 1.01, goodput_bytes=60_000)
    ctl.on_retransmission_sent(sender, 2400, 3600, now=1.02)
    poll_and_send(ctl, sender, 1.02, goodput_bytes=60_000)
    assert ctl.copy_bytes_by_reason == copied | {"overdue": 0}


def test_a_larger_first_copy_reserve_still_admits_copies_on_a_small_budget():
    # The bucket holds at least its largest claim, which grows with the reserve.
    ctl, sender = at_ten_percent_loss(AutoRecConfig(overhead_budget=0.01, first_copy_reserve=8), 200_000)
    ctl.on_first_sent(sender, 0, 1200, now=1.0, waited_s=1.0)
    poll_and_send(ctl, sender, 1.0, goodput_bytes=10_000_000)
    assert ctl.copy_bytes_by_reason["late"] == 1200


def test_first_copy_reserve_is_checked():
    with pytest.raises(ValueError, match="first_copy_reserve"):
        AutoRecConfig(first_copy_reserve=-1)


def test_late_flags_are_recorded_only_when_asked_and_merged():
    # viewers are assumed to start 300 ms behind
    ctl, sender = at_ten_percent_loss(AutoRecConfig(overhead_budget=1.0), sent_bytes=12_000)
    ctl.on_first_sent(sender, 0, 1200, now=1.0, waited_s=1.0)
    assert ctl.late_flags == [] and len(ctl.protections) == 1  # flagged, not recorded
    ctl.record_late_flags = True
    ctl.on_first_sent(sender, 1200, 2400, now=1.0, waited_s=1.0)
    ctl.on_first_sent(sender, 2400, 3600, now=1.0, waited_s=1.0)  # contiguous: merged
    ctl.on_first_sent(sender, 6000, 7200, now=1.0, waited_s=1.0)
    ctl.on_first_sent(sender, 7200, 8400, now=1.0, waited_s=0.0)  # on time: not flagged
    assert ctl.late_flags == [(1200, 3600), (6000, 7200)]
