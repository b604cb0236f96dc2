"""The link model, without I/O: given a packet offered at ``now``, when does it arrive, if at all?

One :class:`Link` is one direction of a link. A packet goes through, in order:

1. the bottleneck queue — a FIFO of at most ``queue_bytes`` in front of a ``rate_mbps`` serialiser;
   a packet that does not fit is tail-dropped (an empty queue always takes one packet);
2. serialisation at the rate in force when it was queued (bytes already queued keep their times);
3. propagation: ``delay_ms`` plus uniform jitter in ``±jitter_ms``; arrivals never overtake earlier
   ones (a FIFO link) unless the profile sets ``allow_reorder``;
4. loss on the wire (Bernoulli, or Gilbert–Elliott with bursts counted in packets or in time), so a
   lost packet has used link capacity.

The time-based Gilbert–Elliott chain is drawn exactly at each packet's *departure*, when its last
bit leaves the serialiser, not when it was offered: a 64 KB read offered at one instant is spread
over tens of ms by the rate limit, and a fade that starts in the middle of it takes only the packets
sent after it started. (Departures never go back in time, so neither do these draws. The other
models ignore the time, so their draws are the same either way.) Each draw goes from the state at
the previous draw and the time since, with the continuous-time chain's transition probability (see
:meth:`GilbertElliottTime.p_switch`). It starts from its stationary distribution at the first packet
it sees, and again whenever the loss model in force changes to a different (unequal) one, since the
new chain's parameters say nothing about how long the old state has lasted; a schedule step that
keeps an equal model (only the delay changes, say) carries the chain on. Packets under other models
do not move it: a return to the same model continues from its last draw, which after a gap much
longer than its sojourn times is the stationary distribution anyway.

Resent copies (:meth:`Link.draw_resends`, for the TCP proxy) leave later than the packets offered
after the loss, yet are drawn first. Under the time model they are drawn on a path of their own that
starts from the chain's last draw and is not written back, so the next packet is still drawn
forward in time from the packet before it; under the other models they move the chain as any
packet does.

Everything is a function of the offers and the seed: the same calls give the same answers, which is
what lets tests drive it with a virtual clock. The asyncio relays in this package are glue around it.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from edgecloud.netem.profile import (
    Bernoulli,
    GilbertElliott,
    GilbertElliottTime,
    LinkProfile,
    LossModel,
    ProfileLike,
    as_schedule,
)


class Outcome(Enum):
    DELIVERED = "delivered"
    LOST = "lost"
    QUEUE_FULL = "queue_full"


@dataclass(frozen=True)
class Transmission:
    """The fate of one packet. ``at``: its arrival time if delivered; if lost, when it would have
    arrived (a TCP model adds recovery time to it); if tail-dropped, the time it was offered.
    ``departure``: when its last bit left the serialiser (delivered or lost; ``None`` if
    tail-dropped), the time its loss was drawn at and the one a resend's wait counts from."""

    outcome: Outcome
    at: float
    departure: float | None = None


@dataclass
class DirectionStats:
    """Counters for one direction. ``packets_delivered`` counts packets scheduled for delivery;
    ``send_errors`` counts those the glue then failed to write (peer gone)."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_delivered: int = 0
    bytes_delivered: int = 0
    dropped_loss: int = 0
    dropped_queue: int = 0
    send_errors: int = 0


class Link:
    """One direction of an emulated link, driven by explicit times in seconds.

    ``profile`` is a :class:`LinkProfile` or a :class:`Schedule`; schedule times count from ``start``
    (by default the ``now`` of the first call). ``seed`` fixes every random draw.
    """

    def __init__(self, profile: ProfileLike, seed: int | str = 0, *, start: float | None = None) -> None:
        self.schedule = as_schedule(profile)
        self.start = start
        # Separate streams, so that changing the jitter does not change which packets are lost.
        self._loss_rng = random.Random(f"netem/{seed}/loss")
        self._jitter_rng = random.Random(f"netem/{seed}/jitter")
        self._bad_state = False  # GilbertElliott, moved per packet
        # GilbertElliottTime: the model the chain runs under, its state, and the time of its last draw.
        self._timed_model: GilbertElliottTime | None = None
        self._timed_bad = False
        self._timed_at = 0.0
        self._queue: deque[tuple[float, int]] = deque()  # (time its last bit leaves, size), FIFO
        self._queued_bytes = 0
        self._busy_until = -math.inf
        self._last_arrival = -math.inf
        self.stats = DirectionStats()

    def profile_at(self, now: float) -> LinkProfile:
        if self.start is None:
            self.start = now
        return self.schedule.at(now - self.start)

    def send(self, now: float, size: int) -> float | None:
        """Offer a ``size``-byte packet at ``now``: its delivery time, or ``None`` if it is dropped."""
        sent = self.transmit(now, size)
        return sent.at if sent.outcome is Outcome.DELIVERED else None

    def transmit(self, now: float, size: int) -> Transmission:
        """Like :meth:`send`, but says why a packet was dropped and when a lost one would have arrived."""
        if size < 0:
            raise ValueError(f"packet size must be >= 0 bytes, got {size}")
        profile = self.profile_at(now)
        self.stats.packets_in += 1
        self.stats.bytes_in += size
        self._drain(now)
        if self._queue and self._queued_bytes + size > profile.queue_bytes:
            self.stats.dropped_queue += 1
            return Transmission(Outcome.QUEUE_FULL, now)

        # The profile in force at the offer applies throughout, the loss model included: the packet
        # was queued under it (see "serialisation" above), even if its departure falls in the next step.
        rate = profile.rate_bytes_per_s
        departure = max(now, self._busy_until) + (size / rate if rate is not None else 0.0)
        self._busy_until = departure
        if departure > now:
            self._queue.append((departure, size))
            self._queued_bytes += size

        delay = profile.delay_ms / 1e3
        if profile.jitter_ms > 0.0:
            delay = max(0.0, delay + self._jitter_rng.uniform(-profile.jitter_ms, profile.jitter_ms) / 1e3)
        arrival = departure + delay
        if self._draw_loss(profile.loss, departure):
            self.stats.dropped_loss += 1
            return Transmission(Outcome.LOST, arrival, departure)
        if not profile.allow_reorder:
            arrival = max(arrival, self._last_arrival)
        self._last_arrival = max(self._last_arrival, arrival)
        self.stats.packets_delivered += 1
        self.stats.bytes_delivered += size
        return Transmission(Outcome.DELIVERED, arrival, departure)

    def draw_loss(self, now: float) -> bool:
        """Whether a copy sent at ``now`` is lost, advancing the loss process (counted in
        ``stats.dropped_loss``). For models of retransmission that do not re-queue the copy.

        The time-based chain is moved to ``now`` and stays there; a ``now`` before its last draw
        (a copy sent while packets offered earlier are still queued) counts as no time at all, see
        :meth:`_draw_timed_loss`. Copies drawn ahead of packets that leave before them belong in
        :meth:`draw_resends` instead."""
        lost = self._draw_loss(self.profile_at(now).loss, now)
        if lost:
            self.stats.dropped_loss += 1
        return lost

    def draw_resends(self, now: float, resent_at: Sequence[float]) -> int | None:
        """Which copy of a lost packet gets through first: its index in ``resent_at``, or ``None``
        if every one is lost. Each lost copy counts in ``stats.dropped_loss``; no copy takes link
        capacity.

        ``now`` is when the lost packet was offered: the loss model in force then governs every
        copy, as it governed the packet (a TCP model computes its recovery time from the profile
        then, too). ``resent_at`` are the copies' send times, increasing; they are drawn in order
        until one gets through.

        Bernoulli and the packet-counted chain draw each copy as :meth:`draw_loss` does, moving the
        packet chain. The time-based chain draws the copies on a forward path of its own, from its
        last draw (the lost packet's, when it was the last one sent) through the copies' send
        times, with the same loss stream; that path is not written back. Written back, a copy
        drawn at ``now + 5 ms`` would leave the chain there, and the packets offered in those 5 ms
        would all be drawn from the copy's state (mostly good) rather than from their
        predecessors': a link that loses far fewer packets than its model says.
        """
        model = self.profile_at(now).loss
        if isinstance(model, GilbertElliottTime):
            return self._draw_timed_resends(model, resent_at)
        for index, at in enumerate(resent_at):
            if not self._draw_loss(model, at):
                return index
            self.stats.dropped_loss += 1
        return None

    def queued_bytes(self, now: float) -> int:
        """Bytes in the bottleneck queue at ``now``, including the packet being serialised."""
        self._drain(now)
        return self._queued_bytes

    def time_until_room(self, now: float, size: int) -> float:
        """Seconds from ``now`` until the queue would accept a ``size``-byte packet (0: it would now)."""
        capacity = self.profile_at(now).queue_bytes
        self._drain(now)
        excess = self._queued_bytes + size - capacity
        if excess <= 0 or not self._queue:
            return 0.0
        freed = 0
        for departure, queued in self._queue:
            freed += queued
            if freed >= excess:
                return departure - now
        return self._queue[-1][0] - now

    def _drain(self, now: float) -> None:
        while self._queue and self._queue[0][0] <= now:
            self._queued_bytes -= self._queue.popleft()[1]

    def _draw_loss(self, model: LossModel | None, at: float) -> bool:
        if model is None:
            return False
        if isinstance(model, Bernoulli):
            return self._loss_rng.random() < model.p
        if isinstance(model, GilbertElliottTime):
            return self._draw_timed_loss(model, at)
        lost = self._state_loses(model, self._bad_state)
        leave = model.p_bad_to_good if self._bad_state else model.p_good_to_bad
        if self._loss_rng.random() < leave:
            self._bad_state = not self._bad_state
        return lost

    def _state_loses(self, model: GilbertElliott | GilbertElliottTime, bad: bool) -> bool:
        """One draw: whether a packet sent in state ``bad`` (else good) is lost."""
        return self._loss_rng.random() < (model.loss_in_bad if bad else model.loss_in_good)

    def _draw_timed_loss(self, model: GilbertElliottTime, at: float) -> bool:
        """Moves the time-based chain to ``at`` and draws a packet sent then.

        The chain only moves forward: an ``at`` before its last draw counts as no time since it,
        and the chain stays at the later time. Transmissions never ask for that (departures do not
        go back); a :meth:`draw_loss` copy can, when it bypasses packets still queued, and the
        state last drawn is then the best one at hand. Drawing backwards from it instead would let
        a draw ahead of time (a resend) decide the packets before it.
        """
        # Two draws per packet from the same seeded stream as the other models: where the chain is
        # at ``at``, then whether that state loses the packet.
        if model != self._timed_model:
            self._timed_model = model
            self._timed_bad, self._timed_at = self._loss_rng.random() < model.bad_share, at
        else:
            self._timed_bad, self._timed_at = self._move_timed(model, self._timed_bad, self._timed_at, at)
        return self._state_loses(model, self._timed_bad)

    def _move_timed(self, model: GilbertElliottTime, bad: bool, since: float, at: float) -> tuple[bool, float]:
        """One draw: the state at ``at`` of a chain in state ``bad`` at ``since``, and the chain's new
        time. Never backwards: an ``at`` before ``since`` is no time (``p_switch`` is then exactly 0,
        but the draw is still taken, so every packet takes two)."""
        if self._loss_rng.random() < model.p_switch(bad, max(0.0, at - since)):
            bad = not bad
        return bad, max(since, at)

    def _draw_timed_resends(self, model: GilbertElliottTime, resent_at: Sequence[float]) -> int | None:
        # The forward path of draw_resends: a local copy of the chain and the same two draws per
        # copy as _draw_timed_loss; only the loss stream's position is left changed.
        fresh = model != self._timed_model  # not running under this model: start it as a packet would
        bad, since = self._timed_bad, self._timed_at
        for index, at in enumerate(resent_at):
            if fresh:
                bad, since, fresh = self._loss_rng.random() < model.bad_share, at, False
            else:
                bad, since = self._move_timed(model, bad, since, at)
            if not self._state_loses(model, bad):
                return index
            self.stats.dropped_loss += 1
        return None
