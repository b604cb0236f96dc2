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

import datetime
import math
import multiprocessing
import os
import queue
import statistics
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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
        # (tag, delivered_at, sent_at) of every message: when the emulated link delivered it and
        # when this thread handed it to gloo (``hand_offs`` pairs it with the receiver's log).
        self.log: list[tuple[int, float, float]] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def send(self, tensor: torch.Tensor, tag: int, rate_bps: float, enqueued_at: float | None = None) -> None:
        """Queue ``tensor``; it enters the link at ``enqueued_at`` (default: now; a slowed UE
        passes the time on its own timeline, which may be a moment earlier than now)."""
        at = time.monotonic() if enqueued_at is None else enqueued_at
        self._queue.put(_Message(tensor.contiguous(), tag, rate_bps, at))

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
                self.log.append((message.tag, deliver_at, time.monotonic()))
                self._group.send([message.tensor], self._peer, message.tag).wait()
            except RuntimeError as exc:  # gloo reports a closed or timed-out pair this way
                self.error = exc
            finally:
                self._queue.task_done()


@dataclass(frozen=True)
class HandOffs:
    """What handing messages over cost inside a run, measured on both ends of every link.

    Every process on one machine reads the same ``CLOCK_MONOTONIC`` (``time.monotonic``), so a
    sender's log and a receiver's log can be laid side by side. A message whose receiver asked
    for it before it was sent gives a ``latency_s`` sample: from the link's delivery to the
    receiving process holding it (what ``Scenario.message_latency_s`` adds to every message). A
    gradient whose UE asked for it only after it was sent gives a ``late_receive_s`` sample: from
    the ask to holding it (``Scenario.late_receive_s``). ``messages`` counts the pairs laid side by side.
    """

    latency_s: tuple[float, ...] = ()
    late_receive_s: tuple[float, ...] = ()
    messages: int = 0

    def __add__(self, other: HandOffs) -> HandOffs:
        return HandOffs(
            self.latency_s + other.latency_s,
            self.late_receive_s + other.late_receive_s,
            self.messages + other.messages,
        )

    def summary(self) -> dict[str, Any]:
        """Count, mean, median and 90th percentile of each kind, in seconds (JSON-ready)."""

        def describe(samples: tuple[float, ...]) -> dict[str, Any]:
            if not samples:
                return {"count": 0}
            ordered = sorted(samples)
            return {
                "count": len(samples),
                "mean": statistics.mean(samples),
                "median": statistics.median(samples),
                "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            }

        return {"latency_s": describe(self.latency_s), "late_receive_s": describe(self.late_receive_s)}


def hand_offs(
    sent: Sequence[Sequence[float]], received: Sequence[Sequence[float]], late_tags: Collection[int] = ()
) -> HandOffs:
    """Lay one link direction's two logs side by side: what each message cost to hand over.

    ``sent`` is the sender's ``PacedSender.log``, rows (tag, delivered_at, sent_at); ``received``
    the receiver's rows (tag, asked_at, held_at), ``held_at`` NaN where the receiving process was
    busy when the message came (it did not wait for it, so the message says nothing about the
    hand-off). Messages of one tag are received in the order they were sent, so the n-th of a tag
    on one side is the n-th on the other. A message asked for before it was sent is a latency
    sample; one asked for after, a late-receive sample when its tag is in ``late_tags``.
    """
    by_tag: dict[int, list[tuple[float, float]]] = {}
    for tag, delivered_at, sent_at in sent:
        by_tag.setdefault(int(tag), []).append((delivered_at, sent_at))
    position = dict.fromkeys(by_tag, 0)
    latency: list[float] = []
    late: list[float] = []
    messages = 0
    for tag, asked_at, held_at in received:
        tag = int(tag)
        if position.get(tag, 0) >= len(by_tag.get(tag, ())):
            continue  # received but never logged as sent (another incarnation's message)
        delivered_at, sent_at = by_tag[tag][position[tag]]
        position[tag] += 1
        messages += 1
        if math.isnan(held_at):
            continue
        if asked_at < sent_at:
            latency.append(held_at - delivered_at)
        elif tag in late_tags:
            late.append(held_at - asked_at)
    return HandOffs(tuple(latency), tuple(late), messages)


ECHO_TAG = 9
IDLE_BEFORE_PROBE_S = 0.005


def _echo_process(port: int, count: int) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=60))
    group = dist.ProcessGroupGloo(dist.PrefixStore("echo", store), 1, 2, datetime.timedelta(seconds=60))
    sender = PacedSender(group, 0, name="echo-uplink")
    buffer = torch.empty(1)
    for _ in range(count):
        group.recv([buffer], 0, ECHO_TAG).wait()
        sender.send(buffer.clone(), ECHO_TAG, rate_bps=1e12)
    sender.flush()
    os._exit(0)


@contextmanager
def _echo_peer(count: int) -> Iterator[tuple[dist.ProcessGroup, PacedSender]]:
    """A second process that answers each of ``count`` tiny messages, and our side of its pair."""
    store = dist.TCPStore(
        "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=60)
    )
    echo = multiprocessing.get_context("spawn").Process(target=_echo_process, args=(store.port, count), daemon=True)
    echo.start()
    try:
        group = dist.ProcessGroupGloo(dist.PrefixStore("echo", store), 0, 2, datetime.timedelta(seconds=60))
        sender = PacedSender(group, 1, name="echo-downlink")
        yield group, sender
        sender.close()
    finally:
        echo.join(timeout=10)
        if echo.is_alive():
            echo.kill()


def measure_message_latency(count: int = 40) -> float:
    """One-way latency of a tiny message through the runtime's own path, measured now.

    A message crosses a sender thread, gloo, a receiver thread and a queue before the process
    that waits for it runs; on a loaded machine each hop waits to be scheduled. We ping-pong
    ``count`` one-element tensors with a second process over exactly that path and return half
    the median round trip, which the latency model adds to every message.
    """
    with _echo_peer(count + 5) as (group, sender):
        replies: queue.Queue[torch.Tensor] = queue.Queue()

        def receive() -> None:
            for _ in range(count + 5):
                buffer = torch.empty(1)
                group.recv([buffer], 1, ECHO_TAG).wait()
                replies.put(buffer)

        threading.Thread(target=receive, daemon=True).start()
        round_trips = []
        for i in range(count + 5):
            # In training a message usually finds its receiver parked (waiting on the network or
            # sleeping as a slow device), so probe after an idle gap rather than back to back.
            time.sleep(IDLE_BEFORE_PROBE_S)
            start = time.monotonic()
            sender.send(torch.full((1,), float(i)), ECHO_TAG, rate_bps=1e12)
            replies.get(timeout=30)
            if i >= 5:  # the first exchanges set up the pair
                round_trips.append(time.monotonic() - start)
    return statistics.median(round_trips) / 2


def measure_late_receive(count: int = 40) -> float:
    """The mean of ``late_receive_samples``: what the latency model adds to a message taken late.

    The mean, not the median: a round pays one hand-off per micro-batch a busy UE takes late and a
    run adds them all up, so what accumulates is the mean, wake-ups that run late included (under
    load the distribution has a long tail: means 1.2-4x the medians in our probes)."""
    return statistics.mean(late_receive_samples(count))


def late_receive_samples(count: int = 40) -> list[float]:
    """What taking a message costs a receiver that asks for it after it was sent, measured now.

    gloo moves a message only once the receiver has posted its receive. A UE that computes while
    the BS sends its gradients asks for each one after it was sent, and then waits for the
    hand-off: its receive reaches the sender's side, the message comes over, the waiting thread is
    woken. We ask the echo process (the runtime's path: its ``PacedSender`` thread and gloo) for a
    tiny message, idle until it has surely been sent, and time the receive, ``count`` times
    (``measure_late_receive``: their mean). The latency model adds it to every message taken this way.
    """
    takes = []
    with _echo_peer(count + 5) as (group, sender):
        buffer = torch.empty(1)
        for i in range(count + 5):
            sender.send(torch.full((1,), float(i)), ECHO_TAG, rate_bps=1e12)
            time.sleep(IDLE_BEFORE_PROBE_S)  # the echo has answered by now: its reply waits for us
            start = time.monotonic()
            group.recv([buffer], 1, ECHO_TAG).wait()
            if i >= 5:  # the first exchanges set up the pair
                takes.append(time.monotonic() - start)
    return takes
