"""AutoRec's controller: when to re-inject which unacknowledged data, and how many copies.

AutoRec (arXiv 2511.22046, sections 3–4; draft-wu-moq-recovery-for-video-streaming)
recovers losses on live streams from the server alone. Live video is sent in on–off
bursts; when the sender is application-limited (an off period) the link is idle, so
copies of data that is still unacknowledged cost no latency to new frames. Data that was
already retransmitted once comes first: if its retransmission is lost too, stock QUIC
needs another loss-detection round (often a PTO) and the viewer freezes.

This module has no I/O and no clock: every method takes ``now``. The parts:

* :class:`LossEstimator` — packet loss rate over a window of resolved packets.
* :class:`OffPeriodDetector` — on/off from the application's sending pattern: "on" while
  the application has written bytes not yet sent, "off" once it is application-limited;
  it learns the mean burst size.
* :func:`copies_for_target` — the redundancy adapter's rule: the fewest extra copies of a
  retransmission so that, at the measured loss rate and burstiness, the recovery misses
  ``recovery_target_ms`` with probability at most ``residual_loss``.
* :func:`plan_copies` — how long after the data its first copy leaves: at once unless losses
  come in bursts in time, which a copy sent right behind a lost packet would share.
* :class:`ReinjectionController` — keeps *protections* (ranges to copy, how many copies
  left, when the next is due) and spends the overhead budget on them: copies of
  retransmissions at once (the connection sends them beyond the congestion window, in a
  pass of their own), those after a probe timeout first; copies of first transmissions
  that waited so long in the send buffer that, lost once, they would reach the viewer
  later than any data so far (*late data*); copies of data whose ACK is overdue in off
  periods, or in on periods when the window has room. It records a time series of its
  decisions.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

# RFC 9002's time threshold: a packet is declared lost 9/8 RTT after it was sent once a
# later one is acknowledged, so one retransmission round costs about this many RTTs.
RECOVERY_ROUND_RTTS = 1.0 + 9 / 8
# How long after it leaves a packet's data reaches the viewer if that packet is lost once:
# a recovery round less the half round trip of the retransmission's ACK, plus up to one
# RTT of waiting for a later packet's ACK (sparse live streams) and for window room. At
# 100 ms RTT and 5 % loss we measured loss detection at p90 135 ms and p99 150-190 ms
# after the send, and the retransmission's wait for the window at p90 40-47 ms and p99
# 81-86 ms: with the half RTT of its way out, 2.625 srtt lies between their p90 and p99.
LOST_ONCE_ARRIVAL_RTTS = RECOVERY_ROUND_RTTS + 0.5


@dataclass(frozen=True)
class AutoRecConfig:
    """User-set limits of the redundancy adapter."""

    overhead_budget: float = 0.10  # redundant copy bytes / goodput bytes
    recovery_target_ms: float = 100.0
    residual_loss: float = 0.01  # accepted probability of missing the target
    max_copies: int = 3
    overdue_share: float = 0.5  # at most this share of the budget goes to overdue data
    min_copy_spacing_s: float = 0.002
    protect_late_data: bool = True  # copy first transmissions that would set a new delay record if lost
    viewer_buffer_ms: float = 300.0  # playout delay the viewer is assumed to start with
    retransmit_before_reduction: bool = True  # RFC 9002 7.3.2: one packet beyond the halved window
    # Packets of credit that every copy but a retransmission's first leaves for such first
    # copies (see _may_copy). With 1 (before 2026-11-28) about 5 % of lost retransmissions took
    # another round (>= 200 ms at 100 ms RTT), half of them for want of credit for a copy in a
    # loss episode, and the retransmission-loss p95 sat on that cliff; over 300 draws 3 keeps it
    # off at the same stall time (docs/stream.md).
    first_copy_reserve: int = 3
    # plan_copies' delays. Off by default: with packet-counted bursts at 10 % loss and 100 ms it
    # delayed copies a quarter RTT for half of a run, and lost retransmissions then took 8-16 s
    # (the delay estimate counts the stream's packets in between, which an outage does not send).
    copy_plan: bool = False

    def __post_init__(self) -> None:
        _check_range("overhead_budget", self.overhead_budget, 0.0, 10.0)
        _check_range("recovery_target_ms", self.recovery_target_ms, 1.0, 60_000.0)
        _check_range("residual_loss", self.residual_loss, 1e-9, 0.5)
        _check_range("max_copies", self.max_copies, 0, 16)
        _check_range("overdue_share", self.overdue_share, 0.0, 1.0)
        _check_range("min_copy_spacing_s", self.min_copy_spacing_s, 0.0, 1.0)
        _check_range("viewer_buffer_ms", self.viewer_buffer_ms, 0.0, 600_000.0)
        _check_range("first_copy_reserve", self.first_copy_reserve, 0, 64)

    def describe(self) -> str:
        """The settings as one readable line (what the server prints at start)."""
        late = f"late data copied (viewer buffer {self.viewer_buffer_ms:g} ms)" if self.protect_late_data else (
            "late data not copied"
        )
        return (
            f"copies within {self.overhead_budget * 100:g}% overhead, recovery target {self.recovery_target_ms:g} ms, "
            f"up to {self.max_copies} copies, {late}, first-copy reserve {self.first_copy_reserve} packets, "
            f"retransmission before the window reduction {'on' if self.retransmit_before_reduction else 'off'}, "
            f"copy plan {'on' if self.copy_plan else 'off'}"
        )


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def copies_for_target(
    loss: float,
    srtt_s: float,
    target_s: float,
    residual: float,
    max_copies: int,
    burst_loss: float | None = None,
) -> int:
    """Extra copies per retransmitted range so that a lost retransmission still meets the target.

    The target is on retransmission losses — the losses whose recovery stock QUIC
    stretches into extra rounds and the viewer sees as a freeze. Given that a
    retransmission is lost, its recovery still meets the target if one of its ``k``
    copies arrives (each lost with ``burst_loss``, the probability that a packet is lost
    given the one before it was: ``loss`` itself when losses are independent, more in
    bursts), or if the following retransmission rounds do: within the target there is
    room for ``rounds`` rounds of ``RECOVERY_ROUND_RTTS * srtt`` each, the lost one
    included, and each later round fails with ``loss * burst_loss ** k``. Recovery then
    misses the target with probability ``burst_loss ** k * (loss * burst_loss ** k) **
    (rounds - 1)``; take the smallest ``k`` keeping that at most ``residual``.
    """
    q = loss if burst_loss is None else burst_loss
    if loss <= 0.0:
        return 0
    rounds = max(1, math.floor(target_s / max(RECOVERY_ROUND_RTTS * srtt_s, 1e-6)))
    for k in range(max_copies + 1):
        # The small slack keeps an exact power (0.1 ** 2 against 0.01) from rounding up.
        if q**k * (loss * q**k) ** (rounds - 1) <= residual * (1 + 1e-9):
            return k
    return max_copies


# When a protection's first copy may leave, in smoothed RTTs after the data it protects
# (0: in the copy pass right behind it); its later copies are spaced at least as far apart.
COPY_DELAYS_RTTS = (0.0, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class CopyPlan:
    """How a protection copies: the first copy ``delay_s`` after what it protects, ``copies`` in all."""

    delay_s: float
    copies: int


def plan_copies(
    loss: float,
    srtt_s: float,
    target_s: float,
    residual: float,
    max_copies: int,
    loss_after: Callable[[float], float],
    spacing_s: float,
    delays_rtts: tuple[float, ...] = COPY_DELAYS_RTTS,
) -> CopyPlan:
    """The delay of a retransmission's first copy, and the number of copies.

    A copy right behind a lost retransmission is lost with the loss rate after a loss
    (``loss_after(0)``): in a burst counted in packets, or in time, it is likely lost too. In
    a burst in time, a copy sent later is not. For each delay *g* in ``delays_rtts`` (srtts;
    ``COPY_DELAYS_RTTS``, or only 0 unless ``AutoRecConfig.copy_plan``), with
    ``q = loss_after(g)`` and the copies ``copies_for_target`` asks for at that ``q``, sent at
    *g*, *g + s*, *g + 2s* … (*s*: the spacing, at least *g*), this takes the delay with the
    shortest expected recovery of a lost retransmission: the first copy through arrives after
    the *i*-th with probability ``q**i * (1 - q)``, and if all are lost another recovery round
    follows (``RECOVERY_ROUND_RTTS`` RTTs). Independent loss (``q`` the loss rate at every
    delay) keeps delay 0; a burst lasting a good part of an RTT moves the copies past it. So can
    a packet-counted burst when the stream sends packets in between, though in an outage a
    delayed copy is the next packet the burst takes: hence opt-in.
    """
    best: tuple[float, CopyPlan] | None = None
    for rtts in delays_rtts:
        delay = rtts * srtt_s
        q = loss_after(delay)
        copies = copies_for_target(loss, srtt_s, target_s, residual, max_copies, burst_loss=q)
        if copies == 0:
            return CopyPlan(0.0, 0)
        spacing = max(spacing_s, delay)
        expected = sum(q**i * (1 - q) * (delay + i * spacing) for i in range(copies))
        expected += q**copies * RECOVERY_ROUND_RTTS * srtt_s
        if best is None or expected < best[0]:
            best = (expected, CopyPlan(delay, copies))
    assert best is not None
    return best[1]


class LossEstimator:
    """Packet loss over the last ``window`` resolved (acknowledged or lost) packets.

    A window rather than an EWMA: it is right from the first few packets, and it forgets
    an old loss rate in exactly ``window`` packets (about a second of a 2 Mb/s stream).
    ``burst_loss`` is the loss rate of packets sent right after a lost one, which is what
    a copy sent right after a retransmission faces when losses come in bursts;
    ``loss_after(delay)`` that of the first packet sent ``delay`` after a lost one.
    """

    # Weight, in packets, of the independent-loss prior in the burst loss estimate.
    PRIOR_SAMPLES = 5

    WINDOW = 200

    def __init__(self, window: int = WINDOW) -> None:
        self._outcomes: deque[tuple[int, bool, float | None]] = deque(maxlen=window)
        self._lost = 0
        self.version = 0  # counts observations (for caches of what follows from them)

    def observe(self, lost: bool, packet_number: int | None = None, sent_at: float | None = None) -> None:
        if len(self._outcomes) == self._outcomes.maxlen:
            self._lost -= self._outcomes[0][1]
        number = packet_number if packet_number is not None else len(self._outcomes)
        self._outcomes.append((number, lost, sent_at))
        self._lost += lost
        self.version += 1

    @property
    def value(self) -> float:
        return self._lost / len(self._outcomes) if self._outcomes else 0.0

    @property
    def burst_loss(self) -> float:
        """Loss rate of the packet sent right after a lost one."""
        return self.loss_after(0.0)

    def loss_after(self, delay_s: float) -> float:
        """Loss rate of the first packet sent at least ``delay_s`` after a lost one.

        What a copy sent that long after a lost packet faces. Bursts counted in packets
        (a burst takes the next packets, whenever they leave) keep it high at every delay;
        bursts in time (a fade, a handover: the path is bad for a while) let it fall back
        to the loss rate as the delay outgrows them; with independent loss it is the loss
        rate at every delay.
        """
        # A window holds few losses (about 10 at 5 % loss), so the raw rate of losses
        # after a loss swings between 0 and 0.2 with independent loss, and the adapter's
        # copies with it. The estimate starts from independence (the loss rate) with the
        # weight of PRIOR_SAMPLES packets and moves only as far as the samples show
        # burstiness. Without send times only the next packet (delay 0) can be judged.
        ordered = sorted(self._outcomes)
        lost_at = [i for i, (_, lost, _) in enumerate(ordered) if lost]
        after_loss = []
        for i in lost_at:
            sent = ordered[i][2]
            for j in range(i + 1, len(ordered)):
                _, later_lost, later_sent = ordered[j]
                if delay_s <= 0.0 or (sent is not None and later_sent is not None and later_sent - sent >= delay_s):
                    after_loss.append(later_lost)
                    break
        return (sum(after_loss) + self.PRIOR_SAMPLES * self.value) / (len(after_loss) + self.PRIOR_SAMPLES)


class OffPeriodDetector:
    """On/off periods of an application-limited sender, and the mean burst they frame."""

    def __init__(self, weight: float = 1 / 8) -> None:
        self.weight = weight
        self.is_off = True
        self.mean_burst_bytes = 0.0
        self._sent_at_off = 0

    def observe(self, has_new_data: bool, sent_bytes: int) -> bool:
        """Update from whether the application has unsent bytes and how many bytes were sent
        so far; True when an off period starts."""
        if has_new_data and self.is_off:
            self.is_off = False
        elif not has_new_data and not self.is_off:
            self.is_off = True
            burst = sent_bytes - self._sent_at_off
            self._sent_at_off = sent_bytes
            self.mean_burst_bytes += self.weight * (burst - self.mean_burst_bytes)
            return True
        return False


COPY_REASONS = ("retransmission", "late", "overdue")


def _reason(p: Protection) -> str:
    return "retransmission" if p.retransmitted else "late" if p.late else "overdue"


def _priority(p: Protection) -> int:
    """The order in which protections claim the budget, lowest first: copies of
    retransmissions after a timeout, first copies of other retransmissions, late data,
    later copies of retransmissions, overdue data.

    A copy is worth the chance that it is the one that gets its data through. A
    retransmission is lost about as often as any packet, with the loss rate *p*; its first
    copy, right behind it, matters when it is, so it is worth about *p*, and so is a copy of
    late data (lost with *p*, and then the viewer stalls). A later copy matters only when the
    retransmission and its first copy are both lost: *p* times the burst loss rate *q*,
    0.25 % against 5 % at 5 % independent loss. So late data goes before later copies; a
    retransmission's first copy goes before late data, as its data is older and due sooner
    (and it keeps a smaller reserve, see _may_copy).
    """
    if p.after_timeout:
        return 0
    if p.retransmitted:
        return 1 if p.copies_sent == 0 else 3
    return 2 if p.late else 4


class ReinjectableStream(Protocol):
    """What the controller needs from a stream sender (TrackedStreamSender provides it)."""

    highest_offset: int

    @property
    def was_reset(self) -> bool: ...

    def unacked_in(self, start: int, stop: int) -> list[tuple[int, int]]: ...

    def reinject(self, start: int, stop: int) -> int: ...


@dataclass
class Protection:
    """A range the controller will copy ``copies_left`` more times while it is unacknowledged."""

    stream: ReinjectableStream
    start: int
    stop: int
    copies_left: int
    next_at: float
    retransmitted: bool  # a loss-triggered retransmission, or else late or overdue data
    copies_sent: int = 0
    after_timeout: bool = False  # the retransmission followed a probe timeout
    late: bool = False  # a first transmission of late data (see on_first_sent)
    delay: float = 0.0  # the plan's delay: the first copy's after the data, and the least spacing


@dataclass(frozen=True)
class ControllerSample:
    """One point of the controller's time series (for the loss-change plot)."""

    t: float
    loss: float
    burst_loss: float
    copies: int
    copy_delay_ms: float
    overhead: float
    srtt_ms: float
    copy_bytes: int
    goodput_bytes: int


@dataclass
class ReinjectionController:
    """Decides which unacknowledged ranges to copy, when, and within which budget."""

    config: AutoRecConfig = field(default_factory=AutoRecConfig)
    sample_every_s: float = 0.25
    PACKET_BYTES = 1200  # a full packet: what one more copy needs
    CREDIT_PACKETS = LossEstimator.WINDOW  # the budget's horizon: the loss estimator's window

    def __post_init__(self) -> None:
        self.loss = LossEstimator()
        self.off = OffPeriodDetector()
        self.protections: list[Protection] = []
        self.copy_bytes = 0  # bytes handed to streams as copies
        self.copy_bytes_by_reason = dict.fromkeys(COPY_REASONS, 0)
        # The budget as two token buckets (all copies; overdue copies), filled as first
        # transmissions leave and emptied by copies, each holding at most CREDIT_PACKETS
        # packets' worth of first transmissions times its share of the budget.
        self._credit_bytes = 0.0
        self._overdue_credit_bytes = 0.0
        self.history: list[ControllerSample] = []
        self._srtt_s = 0.1
        self._goodput_bytes = 0
        self._last_sample: float | None = None
        self._wakeup: float | None = None
        self._plan: tuple[tuple[int, float], CopyPlan] | None = None
        # The viewer's worst delivery delay so far (write -> arrival, estimated from ACKs):
        # a player that stalls until late data arrives has that much buffer afterwards.
        self.delay_record_s = 0.0
        self._first_delay_s: float | None = None
        # Byte ranges flagged as late data when first sent (whether or not the budget then
        # had credit for their copy), for stall attribution, kept only when asked for (the
        # virtual benchmark, which streams on one stream), merged as they come.
        self.record_late_flags = False
        self.late_flags: list[tuple[int, int]] = []

    # -- inputs -----------------------------------------------------------------------

    def on_packet_resolved(self, lost: bool, packet_number: int | None = None, sent_at: float | None = None) -> None:
        self.loss.observe(lost, packet_number, sent_at)

    def copy_plan(self) -> CopyPlan:
        """The redundancy adapter's answer now: how many copies, and how long after the data
        the first (see plan_copies)."""
        key = (self.loss.version, self._srtt_s)
        if self._plan is None or self._plan[0] != key:
            c = self.config
            plan = plan_copies(
                self.loss.value,
                self._srtt_s,
                c.recovery_target_ms / 1000,
                c.residual_loss,
                c.max_copies,
                self.loss.loss_after,
                self._spacing(),
                delays_rtts=COPY_DELAYS_RTTS if c.copy_plan else (0.0,),
            )
            self._plan = (key, plan)
        return self._plan[1]

    def copies_now(self) -> int:
        return self.copy_plan().copies

    def on_overdue(self, stream: ReinjectableStream, start: int, stop: int, now: float) -> None:
        """Bytes whose ACK is overdue (probably lost, not yet declared lost): one copy.

        Only where plain retransmission would miss the target, which is where the adapter
        asks for copies at all: never without loss, rarely at short RTT.
        """
        if self.copies_now() > 0:
            self.protections.append(Protection(stream, start, stop, 1, now, retransmitted=False))
            if self._wakeup is None or now < self._wakeup:
                self._wakeup = now

    def on_delivered(self, written_at: float, arrived_at: float) -> None:
        """A run of bytes was just acknowledged in order: its oldest, written at
        ``written_at``, reached the viewer at about ``arrived_at``."""
        delay = arrived_at - written_at
        if self._first_delay_s is None:
            self._first_delay_s = delay
        self.delay_record_s = max(self.delay_record_s, delay)

    @property
    def viewer_slack_s(self) -> float:
        """The latest delay after writing that no viewer has stalled for yet: the delay
        record, and at least the first data's delay plus the assumed playout delay."""
        floor = (self._first_delay_s or 0.0) + self.config.viewer_buffer_ms / 1000
        return max(self.delay_record_s, floor)

    def on_first_sent(self, stream: ReinjectableStream, start: int, stop: int, now: float, *, waited_s: float) -> None:
        """A first transmission left after ``waited_s`` in the send buffer.

        If it is lost, its data reaches the viewer about ``LOST_ONCE_ARRIVAL_RTTS`` round
        trips after it left. Where that would be later than the viewer's slack
        (``viewer_slack_s``: every delay so far, and at least the assumed playout delay),
        the loss would stall the viewer, so it gets one copy at once, where the measured
        loss exceeds the adapter's accepted residual. Such data is what waited behind the
        congestion window in a loss episode; data sent on time is left alone.
        """
        if not self.config.protect_late_data or self.loss.value <= self.config.residual_loss:
            return
        if waited_s + LOST_ONCE_ARRIVAL_RTTS * self._srtt_s <= self.viewer_slack_s:
            return
        if self.record_late_flags:
            if self.late_flags and self.late_flags[-1][0] <= start <= self.late_flags[-1][1]:
                self.late_flags[-1] = (self.late_flags[-1][0], max(stop, self.late_flags[-1][1]))
            else:
                self.late_flags.append((start, stop))
        # Its copy is lost with the original as a retransmission's copy is with it: it leaves
        # after the plan's delay.
        delay = self.copy_plan().delay_s
        p = Protection(stream, start, stop, 1, now + delay, retransmitted=False, late=True, delay=delay)
        self.protections.append(p)
        self._wakeup = p.next_at if self._wakeup is None else min(self._wakeup, p.next_at)

    def on_retransmission_sent(
        self, stream: ReinjectableStream, start: int, stop: int, now: float, *, after_timeout: bool = False
    ) -> None:
        """A loss-triggered retransmission left: protect it with the adapter's number of copies.

        ``after_timeout``: it follows a probe timeout (no ACK for a whole PTO, the link
        is in a loss burst or an outage); if it is lost too, the next try waits for a
        doubled PTO, so its copies come first.
        """
        plan = self.copy_plan()
        if plan.copies:
            # The first copy goes the plan's delay after the retransmission (in the copy pass
            # right behind it unless losses come in bursts in time), the others spaced out;
            # see _spacing.
            p = Protection(
                stream,
                start,
                stop,
                plan.copies,
                now + plan.delay_s,
                retransmitted=True,
                after_timeout=after_timeout,
                delay=plan.delay_s,
            )
            self.protections.append(p)
            if self._wakeup is None or p.next_at < self._wakeup:
                self._wakeup = p.next_at

    # -- the decision -----------------------------------------------------------------

    def poll(
        self,
        now: float,
        *,
        app_has_new_data: bool,
        srtt_s: float,
        goodput_bytes: int,
        cwnd_room: int,
    ) -> None:
        """Re-inject what is due; call before every transmission attempt."""
        self._srtt_s = srtt_s
        self._fill_credit(goodput_bytes)
        self.off.observe(app_has_new_data, goodput_bytes)

        keep: list[Protection] = []
        order = sorted(self.protections, key=lambda p: (_priority(p), p.copies_sent > 0, p.next_at))
        for p in order:
            unacked = p.stream.unacked_in(p.start, p.stop)
            if not unacked or p.stream.was_reset:
                continue
            if p.next_at > now:
                keep.append(p)
                continue
            size = sum(hi - lo for lo, hi in unacked)
            if not self._may_copy(p, size, now, cwnd_room):
                keep.append(p)
                continue
            scheduled = sum(p.stream.reinject(lo, hi) for lo, hi in unacked)
            if not scheduled:
                # Everything unacknowledged in the range still waits to be sent: no copy was
                # made, so none is spent. A later copy looks again after the spacing; a first
                # copy stays due, to go right behind the retransmission or data it protects
                # once that leaves (a due protection arms no timer: every send polls).
                if p.copies_sent:
                    p.next_at = now + max(self._spacing(), p.delay)
                keep.append(p)
                continue
            self.copy_bytes += scheduled
            self.copy_bytes_by_reason[_reason(p)] += scheduled
            self._credit_bytes -= scheduled
            if _reason(p) == "overdue":
                self._overdue_credit_bytes -= scheduled
            cwnd_room -= scheduled
            p.copies_left -= 1
            p.copies_sent += 1
            p.next_at = now + max(self._spacing(), p.delay)
            if p.copies_left > 0:
                keep.append(p)
        self.protections = keep
        # Protections that are due but blocked (budget, window, on period) wait for the
        # next poll, which every ACK and write brings; waking for them would spin.
        self._wakeup = min((p.next_at for p in keep if p.next_at > now), default=None)
        self._sample(now)

    def next_wakeup(self) -> float | None:
        return self._wakeup

    @property
    def overhead(self) -> float:
        return self.copy_bytes / self._goodput_bytes if self._goodput_bytes else 0.0

    # -- internals --------------------------------------------------------------------

    def _spacing(self) -> float:
        # Further copies a quarter RTT apart: early enough to beat loss detection (9/8 RTT)
        # by far, late enough that a loss burst rarely takes them all.
        return max(self.config.min_copy_spacing_s, self._srtt_s / 4)

    def _fill_credit(self, goodput_bytes: int) -> None:
        # Credit saved while loss was low must not all be spent at once when it rises:
        # the buckets forget what is older than the loss estimator's window (unspent
        # credit beyond CREDIT_PACKETS full packets of stream), as the adapter forgets old
        # loss.
        budget = self.config.overhead_budget
        earned = budget * (goodput_bytes - self._goodput_bytes)
        self._goodput_bytes = goodput_bytes
        # Each bucket holds at least its largest claim (a copy plus the reserve _may_copy
        # keeps), or a small budget could never admit a copy at all; earning is unchanged,
        # so copies still never exceed budget x goodput.
        largest_claim = self._largest_claim
        self._credit_bytes = min(self._credit_bytes + earned, self._credit_depth)
        share = self.config.overdue_share
        share_depth = max(share * budget * self.CREDIT_PACKETS * self.PACKET_BYTES, largest_claim) if share else 0.0
        self._overdue_credit_bytes = min(self._overdue_credit_bytes + share * earned, share_depth)

    @property
    def _largest_claim(self) -> int:
        # a packet's copy and the largest reserve (see _may_copy)
        return (self.config.max_copies + 1 + self.config.first_copy_reserve) * self.PACKET_BYTES

    @property
    def _credit_depth(self) -> float:
        """What the bucket of all copies holds at most (see _fill_credit)."""
        budget = self.config.overhead_budget
        return max(budget * self.CREDIT_PACKETS * self.PACKET_BYTES, self._largest_claim) if budget else 0.0

    def _overdue_credit(self) -> float:
        # Overdue copies may spend their share of the budget, and no more than what all
        # copies together have left.
        return min(self._overdue_credit_bytes, self._credit_bytes)

    def _may_copy(self, p: Protection, size: int, now: float, cwnd_room: int) -> bool:
        # Copies leave in a pass of their own, beyond the congestion window (see
        # AutoRecConnection.datagrams_to_send), so what admits them is the budget. A
        # retransmission's copy goes at once: its bytes belong to an older frame, due
        # before any new one, and right after a loss the halved window would hold it back
        # for a round trip — the very delay it is there to save. An overdue copy is
        # speculative: it goes in an off period, when the link is idle, or in an on period
        # only where the window has room for it and the burst under way.
        #
        # What a copy saves decides what it may spend. A retransmission sent after a
        # probe timeout, if lost, waits for a doubled PTO: its copies may spend the credit
        # down to zero. Every other copy leaves enough for such a retransmission's copies
        # (max_copies packets); a protection's first copy saves a round when the
        # retransmission is lost, a later one only when that copy is lost too, so later
        # copies (and late and overdue data) also leave room for first copies:
        # ``first_copy_reserve`` packets (3). In a loss episode late data drains the bucket
        # down to its own threshold, so that room is all the episode's later retransmissions
        # find for their first copies: with one packet some found too little, and those were
        # most of the retransmission-loss p95's cliff (docs/stream.md).
        reserve = 0 if p.after_timeout else self.config.max_copies * self.PACKET_BYTES
        if p.copies_sent or not p.retransmitted:
            reserve += self.config.first_copy_reserve * self.PACKET_BYTES
        if p.retransmitted or p.late:
            # Late data leaves the same reserve as a retransmission's later copies and
            # goes before them (see _priority).
            return self._credit_bytes >= size + reserve
        if not self.off.is_off and cwnd_room < size + self.off.mean_burst_bytes:
            return False
        return self._overdue_credit() >= size + reserve

    def _sample(self, now: float) -> None:
        if self._last_sample is not None and now - self._last_sample < self.sample_every_s:
            return
        self._last_sample = now
        plan = self.copy_plan()
        self.history.append(
            ControllerSample(
                t=now,
                loss=self.loss.value,
                burst_loss=self.loss.burst_loss,
                copies=plan.copies,
                copy_delay_ms=plan.delay_s * 1000,
                overhead=self.overhead,
                srtt_ms=self._srtt_s * 1000,
                copy_bytes=self.copy_bytes,
                goodput_bytes=self._goodput_bytes,
            )
        )
