"""A TCP proxy that puts an emulated link between its clients and one target.

Each accepted connection gets its own connection to the target. Bytes read from one side are cut
into segments of at most ``segment_bytes`` and each segment crosses the direction's :class:`Link`
(``uplink``: client → target, ``downlink``: target → client; all connections share both), then is
written out at its arrival time.

TCP never loses bytes, so the link's effects become time:

* **Loss** is the delay a retransmission adds. A segment the link loses is resent after a recovery
  time of ``5/4 · RTT`` (RTT = uplink + downlink one-way delays in force; fast retransmit / RACK
  detects a loss about one RTT plus a quarter-RTT reordering window after it was sent). The resend
  can be lost again; each further loss doubles the recovery time, like a retransmission timer
  backing off, and after ``MAX_RETRANSMISSIONS`` losses of one segment the connection is torn down,
  as a stack gives up (Linux ``tcp_retries2``). The profile in force when the segment was read
  governs its whole recovery: the RTT and the loss model of every resend. Each resend is drawn at
  its own send time, the recovery time after the lost segment left the serialiser, so a time-based
  loss burst can end before the resend leaves (:meth:`Link.draw_resends`; drawn at the segment's
  time, every resend would fall in the burst that took it). Those draws come ahead of the segments
  read after the loss, which leave earlier; they take a path of their own through a time-based
  chain, so those segments are still drawn from their predecessors' state. Resends do not take
  link capacity again, and tail losses that a real stack would recover only by a timeout are
  modelled as fast recoveries, so the model is optimistic for short, sparse transfers.
* **In-order delivery**: a segment is never written before the one in front of it, so a delayed
  segment holds back the ones after it (head-of-line blocking), as in TCP.
* **Queue**: instead of tail-dropping, a full bottleneck queue pauses reading from the sender, whose
  socket buffers then fill and TCP flow control slows it to the link rate. Congestion control
  itself is not emulated.

In ``stats``, ``dropped_loss`` counts lost copies and every segment ends up in ``packets_delivered``.

A connection whose one side fails (reset, refused, gone) is closed on the other side; one bad
connection never affects the others or the listener.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from itertools import accumulate
from types import TracebackType

from edgecloud.netem.delivery import DeliveryTimer
from edgecloud.netem.link import Link, Outcome, Transmission
from edgecloud.netem.profile import LinkProfile, ProfileLike
from edgecloud.netem.udp import Address, RelayStats

log = logging.getLogger(__name__)

RECOVERY_RTTS = 1.25
MIN_RECOVERY_S = 0.001  # even at zero configured delay a retransmission takes a moment
MAX_RETRANSMISSIONS = 15


class _PeerFailed(Exception):
    """One side of a proxied connection broke; the connection is torn down."""


class _Pump:
    """Moves one direction of one connection through a link, in order."""

    def __init__(
        self,
        proxy: TcpProxy,
        link: Link,
        timer: DeliveryTimer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._proxy = proxy
        self._link = link
        self._timer = timer
        self._reader = reader
        self._writer = writer
        self._last_arrival = 0.0
        self._unwritten = 0
        self._room = asyncio.Event()
        self._room.set()
        self._finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        proxy = self._proxy
        loop = asyncio.get_running_loop()
        while True:
            try:
                chunk = await self._reader.read(proxy.read_bytes)
            except (ConnectionError, OSError) as exc:
                raise _PeerFailed(f"read failed: {exc}") from exc
            if not chunk:
                break
            for offset in range(0, len(chunk), proxy.segment_bytes):
                segment = chunk[offset : offset + proxy.segment_bytes]
                # Wait for room rather than tail-drop: see "Queue" in the module docstring.
                while (wait := self._link.time_until_room(loop.time(), len(segment))) > 0:
                    await asyncio.sleep(wait)
                self._schedule(loop.time(), segment)
            await self._room.wait()
            if self._writer.is_closing():
                raise _PeerFailed("peer closed")
            try:
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                raise _PeerFailed(f"write failed: {exc}") from exc
        # End of stream: pass the half-close on once everything before it has been written.
        self._timer.call_at(max(self._last_arrival, loop.time()), self._finish)
        await self._finished

    def _schedule(self, now: float, segment: bytes) -> None:
        sent = self._link.transmit(now, len(segment))
        arrival = sent.at
        if sent.outcome is not Outcome.DELIVERED:
            arrival = self._recover(now, sent)
            # The resend got through: on TCP every byte is delivered in the end.
            self._link.stats.packets_delivered += 1
            self._link.stats.bytes_delivered += len(segment)
        self._last_arrival = max(self._last_arrival, arrival)
        self._unwritten += len(segment)
        if self._unwritten >= self._proxy.max_unwritten_bytes:
            self._room.clear()
        self._timer.call_at(self._last_arrival, self._write, segment)

    def _recover(self, now: float, lost: Transmission) -> float:
        """Arrival time of a segment the link lost (offered at ``now``), resent until a copy gets
        through."""
        proxy = self._proxy
        rtt = (proxy.uplink.profile_at(now).delay_ms + proxy.downlink.profile_at(now).delay_ms) / 1e3
        recovery = max(RECOVERY_RTTS * rtt, MIN_RECOVERY_S)
        # Each wait doubles the one before. A resend leaves the sum of the waits so far after the lost
        # copy left, and arrives that long after it would have arrived (both summed one by one).
        waits = [recovery * 2**attempt for attempt in range(MAX_RETRANSMISSIONS)]
        # A tail drop never left (the pump waits for room, but a schedule step can shrink the queue
        # between its check and the offer): resent from the offer.
        left = lost.departure if lost.departure is not None else now
        through = self._link.draw_resends(now, list(accumulate(waits, initial=left))[1:])
        if through is None:
            raise _PeerFailed(f"a segment was lost {MAX_RETRANSMISSIONS + 1} times in a row; giving up")
        return list(accumulate(waits[: through + 1], initial=lost.at))[-1]

    def _write(self, segment: bytes) -> None:
        self._unwritten -= len(segment)
        if self._unwritten < self._proxy.max_unwritten_bytes:
            self._room.set()
        if self._writer.is_closing():
            self._link.stats.send_errors += 1
            return
        self._writer.write(segment)

    def _finish(self) -> None:
        if not self._finished.done():
            with suppress(ConnectionError, OSError):
                if not self._writer.is_closing() and self._writer.can_write_eof():
                    self._writer.write_eof()
            self._finished.set_result(None)


class TcpProxy:
    """``await proxy.start()``, connect to ``proxy.address``, ``await proxy.stop()``."""

    def __init__(
        self,
        listen: Address = ("127.0.0.1", 0),
        target: Address | None = None,
        uplink: ProfileLike = LinkProfile(),  # noqa: B008 (frozen, so a shared default is safe)
        downlink: ProfileLike = LinkProfile(),  # noqa: B008
        seed: int = 0,
        segment_bytes: int = 1448,
        connect_timeout_s: float = 10.0,
        max_unwritten_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes must be >= 1, got {segment_bytes}")
        if target is None:
            raise ValueError("TcpProxy needs target=(host, port): where to relay to")
        self.listen = listen
        self.target: Address = target
        self.segment_bytes = segment_bytes  # an Ethernet-MTU TCP payload (1500 - 40 - 12 of options)
        self.read_bytes = 64 * 1024
        self.connect_timeout_s = connect_timeout_s
        self.max_unwritten_bytes = max_unwritten_bytes
        self.uplink = Link(uplink, seed=f"{seed}/uplink")
        self.downlink = Link(downlink, seed=f"{seed}/downlink")
        self.stats = RelayStats(self.uplink.stats, self.downlink.stats)
        self.connections_failed = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._timer: DeliveryTimer | None = None

    @property
    def address(self) -> Address:
        if self._server is None:
            raise RuntimeError("TcpProxy.address is known only after start()")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    @property
    def connections(self) -> int:
        """Connections being proxied now."""
        return len(self._handlers)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = DeliveryTimer(loop)
        self.uplink.start = self.downlink.start = loop.time()
        self._server = await asyncio.start_server(self._accept, self.listen[0], self.listen[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._timer is not None:
            self._timer.close()

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._proxy(client_reader, client_writer)
        except asyncio.CancelledError:
            # Only stop() cancels a connection. Ending the task normally keeps Python 3.11's
            # start_server from logging the cancellation as an error; the sockets are closed by now.
            pass
        finally:
            self._handlers.discard(task)

    async def _proxy(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        timer = self._timer
        assert timer is not None, "start() first"
        target_writer: asyncio.StreamWriter | None = None
        try:
            try:
                target_reader, target_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.target), self.connect_timeout_s
                )
            except (OSError, TimeoutError) as exc:
                self.connections_failed += 1
                log.warning("netem tcp: cannot reach target %s: %s", self.target, exc)
                return
            pumps = [
                asyncio.create_task(_Pump(self, self.uplink, timer, client_reader, target_writer).run()),
                asyncio.create_task(_Pump(self, self.downlink, timer, target_reader, client_writer).run()),
            ]
            try:
                done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    failure = task.exception()
                    if failure is None:
                        continue
                    self.connections_failed += 1
                    if isinstance(failure, _PeerFailed):
                        log.info("netem tcp: connection torn down: %s", failure)
                    else:
                        log.error("netem tcp: connection failed", exc_info=failure)
            finally:
                for task in pumps:
                    task.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            writers = [w for w in (client_writer, target_writer) if w is not None]
            for writer in writers:  # both before any await, so a cancelled stop() still closes both
                writer.close()
            for writer in writers:
                with suppress(ConnectionError, OSError):
                    await writer.wait_closed()
