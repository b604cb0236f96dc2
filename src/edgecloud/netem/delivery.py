"""Runs deliveries at their times on an asyncio loop, in time order and FIFO among equal times.

``loop.call_at`` alone is not enough: its heap does not keep insertion order among equal times, and
a FIFO link hands out equal arrival times whenever a packet is held behind the one before it. So the
relays keep their own ordered heap and arm a single loop timer for its head.

Timing: the loop uses the monotonic clock (``loop.time()``); on Linux the selector waits in whole
milliseconds, rounded up, so a delivery runs from 0 to about 1 ms late (measured figures in
docs/netem.md).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class DeliveryTimer:
    """``call_at(when, callback, *args)`` with FIFO order among equal ``when``s."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def __len__(self) -> int:
        return len(self._heap)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._order), callback, args))
        if when < self._armed_at:
            self._arm(when)

    def close(self) -> None:
        """Drop everything still scheduled."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._armed_at = math.inf
        self._heap.clear()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        # The loop may run a timer up to its clock resolution early: everything due at the armed
        # time counts as due.
        due = max(self._loop.time(), self._armed_at)
        self._timer = None
        self._armed_at = math.inf
        while self._heap and self._heap[0][0] <= due:
            _, _, callback, args = heapq.heappop(self._heap)
            try:
                callback(*args)
            except Exception:
                # One failing delivery (a peer gone) must not stall the others.
                log.exception("netem delivery callback failed")
        if self._heap:
            self._arm(self._heap[0][0])
