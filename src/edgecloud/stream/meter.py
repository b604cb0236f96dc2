"""Recovery latency per loss event, measured from the server's own loss-detection and ACK events.

Definitions (also in docs/stream.md):

* A **loss event** is a packet carrying stream data that the server's RFC 9002 loss
  detection (packet or time threshold, or a PTO) declares lost. Packets carrying only
  proactive AutoRec copies are not loss events: they are redundancy, counted in the
  overhead. A packet carrying bytes that were retransmitted after an earlier loss is a
  **retransmission loss**; otherwise it is a **first loss**.
* Its **recovery latency** is the time from the lost packet's send to the moment the
  server holds an ACK for every byte of stream data the packet carried, through any
  later transmission of those bytes (retransmission or copy). If copies got the bytes
  acknowledged before the loss was even detected, that earlier ACK time counts.

Baseline and AutoRec are measured by this same code, so the two are comparable.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aioquic.quic.rangeset import RangeSet

from edgecloud.stream.sender import FrameKind, TrackedStreamSender

# ACK times are kept this long so that a loss detected late (after a PTO backoff) still
# finds when copies got its bytes acknowledged.
ACK_LOG_SECONDS = 30.0


@dataclass(frozen=True)
class SentFrame:
    sender: TrackedStreamSender
    start: int
    stop: int
    kind: FrameKind


@dataclass
class LossEvent:
    retransmission: bool
    sent_at: float
    detected_at: float
    recovered_at: float | None = None

    @property
    def latency_s(self) -> float | None:
        return None if self.recovered_at is None else self.recovered_at - self.sent_at


@dataclass
class _OpenEvent:
    event: LossEvent
    outstanding: dict[TrackedStreamSender, RangeSet] = field(default_factory=dict)


class RecoveryMeter:
    """Collects loss events and resolves them as their bytes get acknowledged."""

    def __init__(self) -> None:
        self.events: list[LossEvent] = []
        self._open: list[_OpenEvent] = []
        self._ack_log: deque[tuple[TrackedStreamSender, int, int, float]] = deque()

    def on_bytes_acked(self, sender: TrackedStreamSender, start: int, stop: int, now: float) -> None:
        self._ack_log.append((sender, start, stop, now))
        while self._ack_log and self._ack_log[0][3] < now - ACK_LOG_SECONDS:
            self._ack_log.popleft()
        still_open = []
        for item in self._open:
            ranges = item.outstanding.get(sender)
            if ranges is not None:
                ranges.subtract(start, stop)
                if not len(ranges):
                    del item.outstanding[sender]
            if item.outstanding:
                still_open.append(item)
            else:
                item.event.recovered_at = now
        self._open = still_open

    def on_packet_lost(self, now: float, sent_at: float, frames: list[SentFrame]) -> None:
        data = [f for f in frames if f.kind is not FrameKind.COPY and f.stop > f.start]
        if not data:
            return
        event = LossEvent(
            retransmission=any(f.kind is FrameKind.RETRANSMISSION for f in data),
            sent_at=sent_at,
            detected_at=now,
        )
        self.events.append(event)
        item = _OpenEvent(event)
        acked_at = sent_at
        for f in data:
            for lo, hi in f.sender.unacked_in(f.start, f.stop):
                item.outstanding.setdefault(f.sender, RangeSet()).add(lo, hi)
            acked_at = max(acked_at, self._last_ack_time(f))
        if item.outstanding:
            self._open.append(item)
        else:
            event.recovered_at = acked_at

    def _last_ack_time(self, f: SentFrame) -> float:
        latest = float("-inf")
        for sender, lo, hi, t in self._ack_log:
            if sender is f.sender and lo < f.stop and f.start < hi:
                latest = max(latest, t)
        return latest

    def summary(self) -> dict[str, Any]:
        """Percentiles in milliseconds of recovered first losses and retransmission losses."""
        first = [e.latency_s for e in self.events if not e.retransmission and e.latency_s is not None]
        retx = [e.latency_s for e in self.events if e.retransmission and e.latency_s is not None]
        out: dict[str, float | int | None] = {
            "loss_events": len(self.events),
            "first_losses": len(first),
            "retx_losses": len(retx),
            "unrecovered": sum(1 for e in self.events if e.recovered_at is None),
        }
        for q in (50, 95, 99):
            out[f"recovery_ms_p{q}"] = percentile_ms(first, q)
            out[f"retx_loss_recovery_ms_p{q}"] = percentile_ms(retx, q)
        # every retransmission loss's latency, so that runs can be pooled (bench.pooled)
        out["retx_loss_recovery_ms"] = sorted(round(v * 1000, 1) for v in retx)
        return out


def percentile_ms(values_s: list[float], q: float) -> float | None:
    if not values_s:
        return None
    return round(float(np.percentile(np.asarray(values_s), q)) * 1000, 3)
