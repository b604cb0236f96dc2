"""The link model on a virtual clock: exact times, queue arithmetic, loss statistics, schedules."""

import math
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.netem import Bernoulli, GilbertElliott, GilbertElliottTime, Link, LinkProfile, Outcome, Schedule


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
    assert sum(_losses(Link(LinkProfile(loss=model), seed=4), n)) / n == pytest.approx(model.mean_loss, abs=0.01)


def test_existing_loss_models_draw_as_before() -> None:
    # Recorded benchmark data depend on these exact draws; adding the time-based model must not
    # move them. The indices were produced by the code before it existed.
    bursty = Link(LinkProfile(loss=GilbertElliott.from_mean(0.1, 3.0)), seed=11)
    assert [i for i in range(300) if bursty.send(i * 0.001, 100) is None] == [
        *range(33, 40),
        82,
        *range(103, 107),
        157,
        158,
        220,
        221,
        289,
        290,
    ]
    independent = Link(LinkProfile(loss=0.1), seed=11)
    assert [i for i in range(100) if independent.send(i * 0.001, 100) is None] == [3, 11, 27, 51, 65, 68, 79]
    # Drawing the time-based chain at departures must not move them either: these models ignore
    # the time, so a rate limit that queues every packet (8 ms each, offered 1 ms apart) and jitter
    # leave the same packets lost.
    queued = LinkProfile(jitter_ms=3.0, rate_mbps=0.1, queue_bytes=10**6, loss=GilbertElliott.from_mean(0.1, 3.0))
    bursty = Link(queued, seed=11)
    sent = [bursty.transmit(i * 0.001, 100) for i in range(300)]
    assert sent[-1].departure == pytest.approx(2.4)  # really queued
    assert [i for i, s in enumerate(sent) if s.outcome is Outcome.LOST][:8] == [*range(33, 40), 82]
    independent = Link(LinkProfile(jitter_ms=3.0, rate_mbps=0.1, queue_bytes=10**6, loss=0.1), seed=11)
    assert [i for i in range(100) if independent.send(i * 0.001, 100) is None] == [3, 11, 27, 51, 65, 68, 79]


@pytest.mark.parametrize(
    "loss",
    [0.3, GilbertElliott.from_mean(0.3, 3.0), GilbertElliott(0.2, 0.3, loss_in_good=0.05, loss_in_bad=0.7)],
    ids=["bernoulli", "gilbert", "gilbert-lossy-states"],
)
def test_resends_of_the_other_models_draw_as_draw_loss_did(loss: object) -> None:
    # Recorded TCP-proxy data depend on these draws: draw_resends must make the same RNG calls in
    # the same order as the loop over draw_loss it replaced, moving the packet chain the same way.
    profile = LinkProfile(delay_ms=3.0, jitter_ms=1.0, rate_mbps=4.0, queue_bytes=10**7, loss=loss)
    resends, loop = Link(profile, seed=5), Link(profile, seed=5)
    recovery = [0.005 * 2**k for k in range(4)]
    for i in range(3000):
        now = i * 0.0007
        first, again = resends.transmit(now, 1448), loop.transmit(now, 1448)
        assert first == again
        if first.outcome is Outcome.LOST:
            assert first.departure is not None
            times = [first.departure + sum(recovery[: k + 1]) for k in range(len(recovery))]
            through = next((k for k, t in enumerate(times) if not loop.draw_loss(t)), None)
            assert resends.draw_resends(now, times) == through
    assert resends.stats == loop.stats and resends.stats.dropped_loss > 1000
    assert resends._loss_rng.random() == loop._loss_rng.random()


def _resend_times(departure: float, recovery: float, count: int = 15) -> list[float]:
    """A TCP-like recovery: resend k leaves recovery·(2^(k+1) - 1) after the lost copy."""
    return [departure + recovery * (2 ** (k + 1) - 1) for k in range(count)]


@pytest.mark.parametrize("rate_mbps", [None, 100.0], ids=["unlimited", "queued"])
def test_resend_draws_leave_first_transmission_loss_at_the_mean(rate_mbps: float | None) -> None:
    # Segments every 0.1 ms; each lost one is resent 5, 15, 35, ... ms after it left, drawn before the
    # next segment. Written back into the chain, those draws put the next segments at the resend's
    # (mostly good) state: 0.3 % first-transmission loss instead of 33 %. On their own forward path
    # the segments see the chain as if there were no resends, bursts included.
    model = GilbertElliottTime.from_mean(1 / 3, 20.0)
    link = Link(LinkProfile(delay_ms=2.0, rate_mbps=rate_mbps, queue_bytes=10**8, loss=model), seed=1)
    n, spacing_s = 100_000, 1e-4
    lost, last_departure, resent_lost = [], 0.0, 0
    for i in range(n):
        sent = link.transmit(i * spacing_s, 1448)
        assert sent.departure is not None
        last_departure = sent.departure
        lost.append(sent.outcome is Outcome.LOST)
        if lost[-1]:
            before = link.stats.dropped_loss
            assert link.draw_resends(i * spacing_s, _resend_times(sent.departure, 0.005)) is not None
            resent_lost += link.stats.dropped_loss - before
    # The chain is sampled over the span of the departures (10 s, or 11.6 s when queued at 100 Mbit/s);
    # the share of that time spent bad has variance 2·π(1-π) / ((a+b)·T); 5 sigma.
    rates_per_ms = 1 / model.mean_good_ms + 1 / model.mean_bad_ms
    sigma = math.sqrt(2 * model.mean_loss * (1 - model.mean_loss) / (rates_per_ms * last_departure * 1e3))
    assert abs(sum(lost) / n - model.mean_loss) < 5 * sigma
    assert link.stats.dropped_loss == sum(lost) + resent_lost
    # Bursts survive the recoveries: ~0.1 ms apart, a loss is followed by a loss nearly always.
    gap_ms = last_departure * 1e3 / n
    stay_bad = model.mean_loss + (1 - model.mean_loss) * math.exp(-rates_per_ms * gap_ms)
    assert _p_lost_after_loss(lost) == pytest.approx(stay_bad, abs=0.01)


def test_resend_draws_do_not_move_the_time_based_chain() -> None:
    # The packets see the same chain with or without resends drawn between them; only the loss
    # stream's position moves, so compare against a link that draws the resends' numbers and
    # throws them away.
    model = GilbertElliottTime(mean_good_ms=1e4, mean_bad_ms=1e4)  # a state lasts ~10 s
    link = Link(LinkProfile(loss=model), seed=2)
    for i in range(200):
        now = i * 1e-3
        state = link.transmit(now, 100).outcome
        # Resends one hour later: the chain there is independent of now. Whatever they draw, the
        # next packet, 1 ms later, is still in this packet's state (p_switch(1 ms) ~ 1e-4).
        link.draw_resends(now, [now + 3600.0, now + 7200.0])
        assert link.transmit(now + 0.0005, 100).outcome is state


def test_resend_draws_of_a_model_not_yet_running_start_it_without_committing() -> None:
    always_bad = GilbertElliottTime(mean_good_ms=1e-9, mean_bad_ms=1e6)
    link = Link(LinkProfile(loss=always_bad))
    assert link.draw_resends(0.0, [0.1, 0.3, 0.7]) is None
    assert link.stats.dropped_loss == 3
    assert link.draw_resends(0.0, []) is None and link.stats.dropped_loss == 3
    never_bad = Link(LinkProfile(loss=GilbertElliottTime(mean_good_ms=math.inf, mean_bad_ms=5.0)))
    assert never_bad.draw_resends(0.0, [0.1, 0.3]) == 0 and never_bad.stats.dropped_loss == 0


def test_time_based_draws_never_go_backwards() -> None:
    # A draw before the chain's last one counts as no time since it: the same state. Drawn
    # backwards (as the reversible chain allows), a copy 50 s earlier would be independent of it.
    model = GilbertElliottTime(mean_good_ms=20.0, mean_bad_ms=20.0)
    link = Link(LinkProfile(loss=model), seed=6)
    outcomes = []
    for i in range(2000):
        now = 100.0 * (i + 1)
        packet = link.transmit(now, 100).outcome is Outcome.LOST
        outcomes.append((packet, link.draw_loss(now - 50.0)))
    assert all(packet == copy for packet, copy in outcomes)
    assert 0.4 < sum(packet for packet, _ in outcomes) / len(outcomes) < 0.6  # both states occur
    # The chain stays at its later time: 1 ms after it, a packet is nearly always in that state.
    link = Link(LinkProfile(loss=model), seed=6)
    same = 0
    for i in range(2000):
        now = 100.0 * (i + 1)
        packet = link.transmit(now, 100).outcome is Outcome.LOST
        link.draw_loss(now - 50.0)
        same += (link.transmit(now + 0.001, 100).outcome is Outcome.LOST) == packet
    assert same / 2000 > 0.9


def test_time_based_loss_is_drawn_at_departure() -> None:
    # 45 segments of one 64 KB read, offered at one instant; 1 Mbit/s spreads their departures over
    # 0.5 s, 25 mean bursts of 20 ms. Drawn at the offer they would share one state; drawn at
    # departure they are the chain at those times, as 45 packets offered then to an unlimited link.
    model = GilbertElliottTime.from_mean(0.3, 20.0)
    rated = Link(LinkProfile(delay_ms=5.0, rate_mbps=1.0, queue_bytes=10**6, loss=model), seed=3)
    sent = [rated.transmit(0.0, 1448) for _ in range(45)]
    departures = [s.departure for s in sent]
    assert departures == pytest.approx([(i + 1) * 1448 * 8 / 1e6 for i in range(45)])
    unlimited = Link(LinkProfile(loss=model), seed=3)
    assert [s.outcome for s in sent] == [unlimited.transmit(t, 1448).outcome for t in departures]
    outcomes = {s.outcome for s in sent}
    assert outcomes == {Outcome.LOST, Outcome.DELIVERED}
    # Lost packets still say when they would have arrived: after their departure.
    assert all(s.at == pytest.approx(s.departure + 0.005) for s in sent)
    assert rated.transmit(0.0, 10**7).outcome is Outcome.QUEUE_FULL
    assert rated.transmit(0.0, 10**7).departure is None


def _losses_every(link: Link, spacing_s: float, count: int) -> list[bool]:
    return [link.send(i * spacing_s, 100) is None for i in range(count)]


def _p_lost_after_loss(lost: list[bool]) -> float:
    after_loss = [now for before, now in pairwise(lost) if before]
    return sum(after_loss) / len(after_loss)


def test_time_based_gilbert_elliott_hits_rate_and_burst_duration() -> None:
    loss_rate, burst_ms = 0.2, 20.0
    model = GilbertElliottTime.from_mean(loss_rate, burst_ms)
    n, spacing_ms = 100_000, 1.0  # 100 s of packets every 1 ms: about 1,000 bursts
    lost = _losses_every(Link(LinkProfile(loss=model), seed=2), spacing_ms / 1e3, n)
    # The share of time in the bad state over T ms has variance 2·π(1-π) / ((a+b)·T); 5 sigma.
    rates_per_ms = 1 / model.mean_good_ms + 1 / model.mean_bad_ms
    sigma = math.sqrt(2 * loss_rate * (1 - loss_rate) / (rates_per_ms * n * spacing_ms))
    assert abs(sum(lost) / n - loss_rate) < 5 * sigma
    # A run of consecutive losses is a stay in the bad state, measured in time. (Stays shorter than
    # the spacing can fall between packets and go unseen, which biases the mean up by ~2 %.)
    runs_ms = [length * spacing_ms for length in _burst_lengths(lost)]
    assert sum(runs_ms) / len(runs_ms) == pytest.approx(burst_ms, rel=0.1)


def test_time_based_bursts_do_not_follow_sparse_packets() -> None:
    # At 1 ms spacing a 20 ms burst and a 20-packet burst look alike: a loss is followed by a loss
    # ~95 % of the time. At 1 s spacing the time-based burst is long over before the next packet,
    # so losses become independent (P(loss | loss) = the loss rate), while the packet-counted
    # chain still makes the next packet ~95 % likely to be lost: a 20-packet outage of 20 s.
    loss_rate = 0.2
    timed = LinkProfile(loss=GilbertElliottTime.from_mean(loss_rate, burst_ms=20.0))
    counted = LinkProfile(loss=GilbertElliott.from_mean(loss_rate, burst_len=20.0))
    dense = {
        name: _losses_every(Link(profile, seed=3), 0.001, 5000)
        for name, profile in (("timed", timed), ("counted", counted))
    }
    sparse = {
        name: _losses_every(Link(profile, seed=3), 1.0, 5000)
        for name, profile in (("timed", timed), ("counted", counted))
    }
    stay_bad = loss_rate + (1 - loss_rate) * math.exp(-(1 / 80 + 1 / 20))  # the chain after 1 ms
    assert _p_lost_after_loss(dense["timed"]) == pytest.approx(stay_bad, abs=0.03)
    assert _p_lost_after_loss(dense["counted"]) == pytest.approx(1 - 1 / 20, abs=0.03)
    assert _p_lost_after_loss(sparse["timed"]) == pytest.approx(loss_rate, abs=0.05)
    assert _p_lost_after_loss(sparse["counted"]) == pytest.approx(1 - 1 / 20, abs=0.03)
    assert sum(sparse["timed"]) / 5000 == pytest.approx(loss_rate, abs=0.03)  # the rate holds at any spacing


def test_time_based_loss_is_deterministic_given_the_seed() -> None:
    profile = LinkProfile(delay_ms=5.0, jitter_ms=2.0, loss=GilbertElliottTime.from_mean(0.1, 20.0))
    times = [i * 0.003 + (i % 7) * 0.0005 for i in range(2000)]
    runs = [[link.send(t, 100) for t in times] for link in (Link(profile, 7), Link(profile, 7))]
    assert runs[0] == runs[1]
    first, other = ([link.send(t, 100) is None for t in times] for link in (Link(profile, 7), Link(profile, 8)))
    assert first != other and sum(first) > 0


def test_time_based_draw_loss_follows_the_copies_send_times() -> None:
    # draw_loss (a resent copy) and transmit draw the same chain at the time they are given.
    profile = LinkProfile(loss=GilbertElliottTime(mean_good_ms=20.0, mean_bad_ms=20.0))
    times = [i * 0.001 for i in range(1000)] + [1.0 + i * 10.0 for i in range(2000)]
    copies, packets = Link(profile, seed=5), Link(profile, seed=5)
    lost = [copies.draw_loss(t) for t in times]
    assert lost == [packets.transmit(t, 100).outcome is Outcome.LOST for t in times]
    assert copies.stats.dropped_loss == sum(lost)
    assert _p_lost_after_loss(lost[:1000]) > 0.9  # 1 ms apart: the same burst
    assert _p_lost_after_loss(lost[1000:]) == pytest.approx(0.5, abs=0.05)  # 10 s apart: independent


def test_time_based_chain_carries_on_across_an_equal_model_and_restarts_on_a_new_one() -> None:
    model = GilbertElliottTime.from_mean(0.2, 20.0)
    times = [i * 0.001 for i in range(3000)]
    plain = Link(LinkProfile(delay_ms=1.0, loss=model), seed=4)
    # A step that only changes the delay, with an equal (not identical) model: the same chain.
    stepped = Link(
        Schedule(
            [
                (0.0, LinkProfile(delay_ms=1.0, loss=model)),
                (1.0, LinkProfile(delay_ms=9.0, loss=GilbertElliottTime.from_mean(0.2, 20.0))),
            ]
        ),
        seed=4,
        start=0.0,
    )
    assert [plain.send(t, 1) is None for t in times] == [stepped.send(t, 1) is None for t in times]
    # A different model starts from its own stationary distribution: here always bad (a burst of
    # ~1000 s), then never bad. Carried on, the bad state would have lasted ~1000 s more.
    always_bad = GilbertElliottTime(mean_good_ms=1e-9, mean_bad_ms=1e6)
    never_bad = GilbertElliottTime(mean_good_ms=math.inf, mean_bad_ms=1e6)
    switched = Link(Schedule([(0.0, LinkProfile(loss=always_bad)), (1.0, LinkProfile(loss=never_bad))]), start=0.0)
    assert [switched.send(t, 1) is None for t in (0.0, 0.5, 0.999, 1.0, 1.001, 5.0)] == [True] * 3 + [False] * 3


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
    link = Link(LinkProfile(delay_ms=5.0, jitter_ms=jitter, rate_mbps=rate, queue_bytes=queue, loss=loss), seed=9)
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
    assert stats.packets_in == len(offers) == stats.packets_delivered + stats.dropped_loss + stats.dropped_queue
    assert stats.bytes_in == sum(size for _, size in offers)


def test_negative_packet_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="size must be >= 0"):
        Link(LinkProfile()).send(0.0, -1)


def test_bernoulli_model_object_and_probability_shorthand_agree() -> None:
    assert LinkProfile(loss=0.25).loss == Bernoulli(0.25)
    assert LinkProfile(loss=0.0).loss is None
