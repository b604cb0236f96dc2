"""Emulated wireless links on top of gloo point-to-point transfers.

gloo moves a tensor across loopback in microseconds; a UE's radio link does not. Each direction
of each UE–BS link is a ``PacedSender``: a thread that owns the link and releases a message to
gloo only when the emulated link has finished serialising it. The link is a FIFO server of rate
``r`` bit/s: a message of ``n`` bytes enqueued at ``t`` starts at ``max(t, busy_until)`` and is
delivered at ``start + 8n/r`` (``LinkClock``, a pure core driven by explicit times). The rate is
given per message, because the same link carries data at the plan's share and, at epoch end,
model averaging at the whole band.

We pace here rather than through ``edgecloud.netem`` because netem proxies UDP/TCP flows, while
gloo opens its own pair sockets whose addresses are exchanged through the rendezvous store; pacing
the tensors where they are sent gives the same serialisation delay with no socket interposition.
Propagation delay is not modelled (it is sub-millisecond for a cell).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from edgecloud.splitlearn.wireless import transfer_seconds


class LinkClock:
    """FIFO link of a given per-message rate; returns each message's delivery time."""

    def __init__(self) -> None:
        self.busy_until = 0.0

    def schedule(self, enqueued_at: float, nbytes: float, rate_bps: float) -> float:
        if rate_bps <= 0:
            raise ValueError(f"rate_bps must be > 0, got {rate_bps}")
        start = max(enqueued_at, self.busy_until)
        self.busy_until = start + transfer_seconds(nbytes, rate_bps)
        return self.busy_until


@dataclass
class _Message:
    tensor: torch.Tensor
    tag: int
    rate_bps: float
    enqueued_at: float


class PacedSender:
    """Owns one link direction: sends tensors to ``peer`` of ``group`` at the emulated rate.

    A failed send (the peer died) is recorded in ``error`` and the rest of the queue is dropped,
    so a dead peer never blocks the process that sends to it.
    """

    def __init__(self, group: dist.ProcessGroup, peer: int, name: str) -> None:
        self._group = group
        self._peer = peer
        self._clock = LinkClock()
        self._queue: queue.Queue[_Message | None] = queue.Queue()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def send(self, tensor: torch.Tensor, tag: int, rate_bps: float) -> None:
        self._queue.put(_Message(tensor.contiguous(), tag, rate_bps, time.monotonic()))

    def flush(self) -> None:
        """Block until every queued message has been delivered (or dropped after an error)."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            try:
                if message is None:
                    return
                if self.error is not None:
                    continue
                nbytes = message.tensor.numel() * message.tensor.element_size()
                deliver_at = self._clock.schedule(message.enqueued_at, nbytes, message.rate_bps)
                delay = deliver_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self._group.send([message.tensor], self._peer, message.tag).wait()
            except RuntimeError as exc:  # gloo reports a closed or timed-out pair this way
                self.error = exc
            finally:
                self._queue.task_done()
