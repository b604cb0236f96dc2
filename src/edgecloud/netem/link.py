"""The link model, without I/O: given a packet offered at ``now``, when does it arrive, if at all?

One :class:`Link` is one direction of a link. A packet goes through, in order:

1. the bottleneck queue — a FIFO of at most ``queue_bytes`` in front of a ``rate_mbps`` serialiser;
   a packet that does not fit is tail-dropped (an empty queue always takes one packet);
2. serialisation at the rate in force when it was queued (bytes already queued keep their times);
3. propagation: ``delay_ms`` plus uniform jitter in ``±jitter_ms``; arrivals never overtake earlier
   ones (a FIFO link) unless the profile sets ``allow_reorder``;
4. loss on the wire (Bernoulli, or Gilbert–Elliott with bursts counted in packets or in time), so a
   lost packet has used link capacity.

The time-based Gilbert–Elliott chain is drawn exactly at each packet's send time: from the state at
the previous draw and the time since, with the continuous-time chain's transition probability (see
:meth:`GilbertElliottTime.p_switch`). It starts from its stationary distribution at the first packet
it sees, and again whenever the loss model in force changes to a different (unequal) one, since the
new chain's parameters say nothing about how long the old state has lasted; a schedule step that
keeps an equal model (only the delay changes, say) carries the chain on. Packets under other models
do not move it: a return to the same model continues from its last draw, which after a gap much
longer than its sojourn times is the stationary distribution anyway.

Everything is a function of the offers and the seed: the same calls give the same answers, which is
what lets tests drive it with a virtual clock. The asyncio relays in this package are glue around it.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from enum import Enum

from edgecloud.netem.profile import (
    Bernoulli,
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
    arrived (a TCP model adds recovery time to it); if tail-dropped, the time it was offered."""

    outcome: Outcome
    at: float


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
        if self._draw_loss(profile.loss, now):
            self.stats.dropped_loss += 1
            return Transmission(Outcome.LOST, arrival)
        if not profile.allow_reorder:
            arrival = max(arrival, self._last_arrival)
        self._last_arrival = max(self._last_arrival, arrival)
        self.stats.packets_delivered += 1
        self.stats.bytes_delivered += size
        return Transmission(Outcome.DELIVERED, arrival)

    def draw_loss(self, now: float) -> bool:
        """Whether a copy sent at ``now`` is lost, advancing the loss process (counted in
        ``stats.dropped_loss``). For models of retransmission that do not re-queue the copy."""
        lost = self._draw_loss(self.profile_at(now).loss, now)
        if lost:
            self.stats.dropped_loss += 1
        return lost

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

    def _draw_loss(self, model: LossModel | None, now: float) -> bool:
        if model is None:
            return False
        if isinstance(model, Bernoulli):
            return self._loss_rng.random() < model.p
        if isinstance(model, GilbertElliottTime):
            return self._draw_timed_loss(model, now)
        lost = self._loss_rng.random() < (model.loss_in_bad if self._bad_state else model.loss_in_good)
        leave = model.p_bad_to_good if self._bad_state else model.p_good_to_bad
        if self._loss_rng.random() < leave:
            self._bad_state = not self._bad_state
        return lost

    def _draw_timed_loss(self, model: GilbertElliottTime, now: float) -> bool:
        # Two draws per packet from the same seeded stream as the other models: where the chain is
        # at ``now``, then whether that state loses the packet.
        if model != self._timed_model:
            self._timed_model = model
            self._timed_bad = self._loss_rng.random() < model.bad_share
        elif self._loss_rng.random() < model.p_switch(self._timed_bad, now - self._timed_at):
            self._timed_bad = not self._timed_bad
        self._timed_at = now
        return self._loss_rng.random() < (model.loss_in_bad if self._timed_bad else model.loss_in_good)
