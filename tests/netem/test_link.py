"""The link model on a virtual clock: exact times, queue arithmetic, loss statistics, schedules."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.netem import Bernoulli, GilbertElliott, Link, LinkProfile, Outcome, Schedule


def test_delay_is_exact_and_packets_keep_their_order() -> None:
    link = Link(LinkProfile(delay_ms=50.0))
    assert link.send(1.0, 100) == pytest.approx(1.05)
    assert link.send(1.0, 100) == pytest.approx(1.05)
    assert link.send(2.5, 0) == pytest.approx(2.55)
    assert link.stats.packets_delivered == 3 and link.stats.bytes_delivered == 200


def test_rate_serialises_packets_back_to_back() -> None:
    # 8 Mbit/s = 1,000,000 bytes/s: a 1000-byte packet takes exactly 1 ms.
    link = Link(LinkProfile(delay_ms=10.0, rate_mbps=8.0, queue_bytes=100_000))
    arrivals = [link.send(0.0, 1000) for _ in range(3)]
    assert arrivals == pytest.approx([0.011, 0.012, 0.013])
    # The link is idle again from t=0.003: a packet then only pays its own serialisation.
    assert link.send(0.5, 1000) == pytest.approx(0.511)


def test_queue_tail_drops_and_drains_with_time() -> None:
    link = Link(LinkProfile(rate_mbps=8.0, queue_bytes=3000))
    assert [link.send(0.0, 1000) is not None for _ in range(5)] == [True, True, True, False, False]
    assert link.stats.dropped_queue == 2
    assert link.queued_bytes(0.0) == 3000
    # At 1.5 ms the first packet has left: 2000 bytes remain, so one more fits.
    assert link.queued_bytes(0.0015) == 2000
    assert link.time_until_room(0.0015, 2000) == pytest.approx(0.0005)
    assert link.send(0.0015, 1000) == pytest.approx(0.004)
    assert link.send(0.0015, 1000) is None
    assert link.transmit(0.0015, 1000) == link.transmit(0.0015, 1000)  # both tail drops at offer time


def test_an_empty_queue_takes_a_packet_larger_than_it() -> None:
    link = Link(LinkProfile(rate_mbps=8.0, queue_bytes=100))
    assert link.send(0.0, 1500) == pytest.approx(0.0015)
    assert link.send(0.0, 10) is None


def test_jitter_stays_in_bounds_and_never_reorders_by_default() -> None:
    link = Link(LinkProfile(delay_ms=100.0, jitter_ms=20.0), seed=3)
    sends = [i * 0.001 for i in range(2000)]
    arrivals = [link.send(t, 100) for t in sends]
    assert arrivals == sorted(arrivals)
    offsets = [a - t for a, t in zip(arrivals, sends, strict=True)]
    assert min(offsets) >= 0.080 - 1e-12 and max(offsets) <= 0.120 + 1e-9
    assert max(offsets) - min(offsets) > 0.030  # the jitter is really there


def test_jitter_reorders_when_allowed() -> None:
    link = Link(LinkProfile(delay_ms=100.0, jitter_ms=20.0, allow_reorder=True), seed=3)
    arrivals = [link.send(i * 0.001, 100) for i in range(200)]
    assert arrivals != sorted(arrivals)
    assert all(0.079 <= a - i * 0.001 <= 0.121 for i, a in enumerate(arrivals))


def _losses(link: Link, count: int) -> list[bool]:
    return [link.send(i * 0.001, 100) is None for i in range(count)]


def _burst_lengths(lost: list[bool]) -> list[int]:
    bursts, run = [], 0
    for flag in lost:
        if flag:
            run += 1
        elif run:
            bursts.append(run)
            run = 0
    return bursts


def test_bernoulli_loss_rate_is_within_statistical_bounds() -> None:
    n, p = 40_000, 0.1
    lost = _losses(Link(LinkProfile(loss=p), seed=1), n)
    assert abs(sum(lost) / n - p) < 5 * math.sqrt(p * (1 - p) / n)
    # Independent losses: bursts average 1 / (1 - p) packets.
    bursts = _burst_lengths(lost)
    assert sum(bursts) / len(bursts) == pytest.approx(1 / (1 - p), rel=0.05)


def test_loss_is_deterministic_given_the_seed() -> None:
    profile = LinkProfile(delay_ms=5.0, jitter_ms=2.0, loss=GilbertElliott.from_mean(0.1, 3.0))
    runs = [[link.send(i * 0.01, 100) for i in range(500)] for link in (Link(profile, 7), Link(profile, 7))]
    assert runs[0] == runs[1]
    assert _losses(Link(profile, seed=7), 500) != _losses(Link(profile, seed=8), 500)


def test_jitter_does_not_change_which_packets_are_lost() -> None:
    calm = _losses(Link(LinkProfile(loss=0.2), seed=5), 1000)
    jittery = _losses(Link(LinkProfile(jitter_ms=3.0, loss=0.2), seed=5), 1000)
    assert calm == jittery


def test_gilbert_elliott_from_mean_hits_rate_and_burst_length() -> None:
    model = GilbertElliott.from_mean(0.05, burst_len=4.0)
    assert model.mean_loss == pytest.approx(0.05) and model.mean_burst_len == pytest.approx(4.0)
    n = 200_000
    lost = _losses(Link(LinkProfile(loss=model), seed=2), n)
    # Bursts of mean 4 carry about 4x the variance of independent losses; 5 sigma of that.
    assert abs(sum(lost) / n - 0.05) < 5 * math.sqrt(4 * 0.05 * 0.95 / n)
    bursts = _burst_lengths(lost)
    assert sum(bursts) / len(bursts) == pytest.approx(4.0, rel=0.1)


def test_gilbert_elliott_mean_loss_with_lossy_states() -> None:
    model = GilbertElliott(p_good_to_bad=0.1, p_bad_to_good=0.3, loss_in_good=0.01, loss_in_bad=0.5)
    assert model.mean_loss == pytest.approx((0.3 * 0.01 + 0.1 * 0.5) / 0.4)
    n = 100_000
    assert sum(_losses(Link(LinkProfile(loss=model), seed=4), n)) / n == pytest.approx(
        model.mean_loss, abs=0.01
    )


def test_schedule_switches_profiles_at_their_times() -> None:
    schedule = Schedule(
        [
            (0.0, LinkProfile(delay_ms=10.0)),
            (5.0, LinkProfile(delay_ms=100.0)),
            (10.0, LinkProfile(delay_ms=10.0, loss=1.0)),
        ]
    )
    link = Link(schedule, start=100.0)
    assert link.send(104.9, 1) == pytest.approx(104.91)
    assert link.send(105.0, 1) == pytest.approx(105.1)
    assert link.send(109.99, 1) == pytest.approx(110.09)
    assert link.send(110.0, 1) is None
    assert link.stats.dropped_loss == 1


def test_a_shorter_delay_does_not_let_packets_overtake() -> None:
    link = Link(Schedule([(0.0, LinkProfile(delay_ms=100.0)), (1.0, LinkProfile(delay_ms=10.0))]), start=0.0)
    assert link.send(0.99, 1) == pytest.approx(1.09)
    assert link.send(1.0, 1) == pytest.approx(1.09)  # held behind the earlier packet (FIFO)
    assert link.send(1.2, 1) == pytest.approx(1.21)


def test_schedule_times_start_at_the_first_offer_by_default() -> None:
    link = Link(Schedule([(0.0, LinkProfile(delay_ms=1.0)), (2.0, LinkProfile(delay_ms=50.0))]))
    assert link.send(1000.0, 1) == pytest.approx(1000.001)
    assert link.send(1002.0, 1) == pytest.approx(1002.05)


def test_rate_change_applies_to_packets_queued_after_it() -> None:
    link = Link(Schedule([(0.0, LinkProfile(rate_mbps=8.0)), (0.0015, LinkProfile(rate_mbps=0.8))]))
    assert link.send(0.0, 1000) == pytest.approx(0.001)
    assert link.send(0.0, 1000) == pytest.approx(0.002)
    assert link.send(0.0015, 1000) == pytest.approx(0.012)  # waits for the link, then 10 ms at 0.8 Mbit/s


def test_lost_packets_report_when_they_would_have_arrived() -> None:
    link = Link(LinkProfile(delay_ms=30.0, loss=1.0))
    sent = link.transmit(2.0, 100)
    assert sent.outcome is Outcome.LOST and sent.at == pytest.approx(2.03)
    assert link.draw_loss(2.0) and link.stats.dropped_loss == 2


@settings(max_examples=60, deadline=None)
@given(
    offers=st.lists(st.tuples(st.floats(0, 0.01), st.integers(0, 3000)), min_size=1, max_size=80),
    rate=st.sampled_from([None, 0.5, 8.0]),
    queue=st.integers(1, 10_000),
    loss=st.floats(0, 1),
    jitter=st.floats(0, 20),
)
def test_invariants_accounting_fifo_and_bounded_queue(
    offers: list[tuple[float, int]], rate: float | None, queue: int, loss: float, jitter: float
) -> None:
    link = Link(
        LinkProfile(delay_ms=5.0, jitter_ms=jitter, rate_mbps=rate, queue_bytes=queue, loss=loss), seed=9
    )
    now, last, largest = 0.0, -math.inf, 0
    for gap, size in offers:
        now += gap
        largest = max(largest, size)
        arrival = link.send(now, size)
        # Only a packet offered to an empty queue may exceed its size.
        assert link.queued_bytes(now) <= max(queue, largest)
        if arrival is not None:
            assert arrival >= now + max(0.0, 0.005 - jitter / 1e3) - 1e-12
            assert arrival >= last
            last = arrival
    stats = link.stats
    assert (
        stats.packets_in == len(offers) == stats.packets_delivered + stats.dropped_loss + stats.dropped_queue
    )
    assert stats.bytes_in == sum(size for _, size in offers)


def test_negative_packet_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="size must be >= 0"):
        Link(LinkProfile()).send(0.0, -1)


def test_bernoulli_model_object_and_probability_shorthand_agree() -> None:
    assert LinkProfile(loss=0.25).loss == Bernoulli(0.25)
    assert LinkProfile(loss=0.0).loss is None
