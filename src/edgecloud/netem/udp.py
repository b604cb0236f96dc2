"""A UDP relay that puts an emulated link between its clients and one target.

Clients send to the relay's address; each client address gets its own upstream socket connected to
the target, so the target sees one peer per client and replies go back to the right one. Datagrams
from clients cross the ``uplink`` :class:`Link`, replies cross the ``downlink``; all clients share
both (they sit behind one access link). Deliveries run at the link's times on the asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from types import TracebackType

from edgecloud.netem.delivery import DeliveryTimer
from edgecloud.netem.link import DirectionStats, Link
from edgecloud.netem.profile import LinkProfile, ProfileLike

log = logging.getLogger(__name__)

Address = tuple[str, int]


@dataclass
class RelayStats:
    """Counters per direction: ``uplink`` is client → target, ``downlink`` target → client."""

    uplink: DirectionStats
    downlink: DirectionStats


@dataclass(eq=False)
class _Session:
    client: Address
    last_active: float
    transport: asyncio.DatagramTransport | None = None
    pending: list[bytes] = field(default_factory=list)  # delivered before the upstream socket opened
    closed: bool = False


class _ClientSide(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay) -> None:
        self._relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._relay._from_client(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("netem udp: client-side socket error: %s", exc)


class _TargetSide(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay, session: _Session) -> None:
        self._relay = relay
        self._session = session

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._relay._from_target(self._session, data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the target is down; keep relaying, it may come back.
        self._relay.stats.uplink.send_errors += 1
        log.debug("netem udp: target unreachable for %s: %s", self._session.client, exc)


class UdpRelay:
    """``await relay.start()``, send datagrams to ``relay.address``, ``await relay.stop()``.

    Sessions idle for ``idle_timeout_s`` are closed (their upstream socket is freed); a client that
    speaks again gets a new one. Datagrams still in flight at ``stop()`` are dropped.
    """

    def __init__(
        self,
        listen: Address = ("127.0.0.1", 0),
        target: Address | None = None,
        uplink: ProfileLike = LinkProfile(),  # noqa: B008 (frozen, so a shared default is safe)
        downlink: ProfileLike = LinkProfile(),  # noqa: B008
        seed: int = 0,
        idle_timeout_s: float = 120.0,
    ) -> None:
        if idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be > 0, got {idle_timeout_s}")
        if target is None:
            raise ValueError("UdpRelay needs target=(host, port): where to relay to")
        self.listen = listen
        self.target: Address = target
        self.idle_timeout_s = idle_timeout_s
        self.uplink = Link(uplink, seed=f"{seed}/uplink")
        self.downlink = Link(downlink, seed=f"{seed}/downlink")
        self.stats = RelayStats(self.uplink.stats, self.downlink.stats)
        self._sessions: dict[Address, _Session] = {}
        self._opening: set[asyncio.Task[None]] = set()
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: DeliveryTimer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def address(self) -> Address:
        """The bound (host, port) clients send to."""
        if self._transport is None:
            raise RuntimeError("UdpRelay.address is known only after start()")
        host, port = self._transport.get_extra_info("sockname")[:2]
        return host, port

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._timer = DeliveryTimer(loop)
        self.uplink.start = self.downlink.start = loop.time()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _ClientSide(self), local_addr=self.listen)
        self._sweeper = loop.call_later(self.idle_timeout_s / 2, self._sweep)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._timer is not None:
            self._timer.close()
        for task in self._opening:
            task.cancel()
        await asyncio.gather(*self._opening, return_exceptions=True)
        for session in list(self._sessions.values()):
            self._close_session(session)
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> UdpRelay:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _from_client(self, data: bytes, client: Address) -> None:
        assert self._loop is not None and self._timer is not None
        now = self._loop.time()
        session = self._sessions.get(client)
        if session is None:
            session = self._sessions[client] = _Session(client, now)
            task = self._loop.create_task(self._open_upstream(session))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)
        session.last_active = now
        arrival = self.uplink.send(now, len(data))
        if arrival is not None:
            self._timer.call_at(arrival, self._deliver_up, session, data)

    def _from_target(self, session: _Session, data: bytes) -> None:
        assert self._loop is not None and self._timer is not None
        now = self._loop.time()
        session.last_active = now
        arrival = self.downlink.send(now, len(data))
        if arrival is not None:
            self._timer.call_at(arrival, self._deliver_down, session.client, data)

    async def _open_upstream(self, session: _Session) -> None:
        assert self._loop is not None
        try:
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: _TargetSide(self, session), remote_addr=self.target
            )
        except OSError as exc:
            log.warning("netem udp: cannot open upstream for %s to %s: %s", session.client, self.target, exc)
            self.stats.uplink.send_errors += len(session.pending)
            self._close_session(session)
            return
        if session.closed:
            transport.close()
            return
        session.transport = transport
        for data in session.pending:
            transport.sendto(data)
        session.pending.clear()

    def _deliver_up(self, session: _Session, data: bytes) -> None:
        if session.closed:
            self.stats.uplink.send_errors += 1
        elif session.transport is None:
            session.pending.append(data)
        else:
            session.transport.sendto(data)

    def _deliver_down(self, client: Address, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            self.stats.downlink.send_errors += 1
            return
        self._transport.sendto(data, client)

    def _close_session(self, session: _Session) -> None:
        session.closed = True
        if session.transport is not None:
            session.transport.close()
        if self._sessions.get(session.client) is session:
            del self._sessions[session.client]

    def _sweep(self) -> None:
        assert self._loop is not None
        horizon = self._loop.time() - self.idle_timeout_s
        for session in [s for s in self._sessions.values() if s.last_active < horizon]:
            self._close_session(session)
        self._sweeper = self._loop.call_later(self.idle_timeout_s / 2, self._sweep)
