"""The UDP relay on real loopback sockets. Delays are checked with generous lower bounds only."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from edgecloud.netem import LinkProfile, Schedule, TcpProxy, UdpRelay

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]
        self.peers: set[tuple[str, int]] = set()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.peers.add(addr)
        self.transport.sendto(data, addr)


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((asyncio.get_running_loop().time(), data))

    async def recv(self, timeout: float = 5.0) -> tuple[float, bytes]:
        return await asyncio.wait_for(self.received.get(), timeout)


async def echo_server(port: int = 0) -> Echo:
    _, echo = await asyncio.get_running_loop().create_datagram_endpoint(Echo, local_addr=("127.0.0.1", port))
    return echo


async def client_of(address: tuple[str, int]) -> Client:
    _, client = await asyncio.get_running_loop().create_datagram_endpoint(Client, remote_addr=address)
    return client


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def address_of(echo: Echo) -> tuple[str, int]:
    host, port = echo.transport.get_extra_info("sockname")[:2]
    return host, port


# real_clock: a delay on real sockets is bounded from below only (never early); slowness cannot fail it
@pytest.mark.real_clock
def test_datagrams_arrive_intact_in_order_and_delayed() -> None:
    async def scenario() -> None:
        echo = await echo_server()
        async with UdpRelay(
            target=address_of(echo),
            uplink=LinkProfile(delay_ms=30.0),
            downlink=LinkProfile(delay_ms=20.0, jitter_ms=5.0),
        ) as relay:
            client = await client_of(relay.address)
            loop = asyncio.get_running_loop()
            payloads = [bytes([i]) * (1 + 50 * i) for i in range(20)]
            started = loop.time()
            for payload in payloads:
                client.transport.sendto(payload)
            replies = [await client.recv() for _ in payloads]
            assert [data for _, data in replies] == payloads
            assert replies[0][0] - started >= 0.045  # 30 ms up + at least 15 ms down
            client.transport.close()
            stats = relay.stats
            assert (stats.uplink.packets_in, stats.uplink.packets_delivered) == (20, 20)
            assert stats.downlink.bytes_delivered == sum(map(len, payloads))
        echo.transport.close()

    run(scenario())


def test_several_clients_each_get_their_own_replies_and_upstream_socket() -> None:
    async def scenario() -> None:
        echo = await echo_server()
        async with UdpRelay(target=address_of(echo), uplink=LinkProfile(delay_ms=5.0)) as relay:
            clients = [await client_of(relay.address) for _ in range(5)]
            for round_ in range(10):
                for index, client in enumerate(clients):
                    client.transport.sendto(f"client {index} round {round_}".encode())
            for index, client in enumerate(clients):
                received = [(await client.recv())[1] for _ in range(10)]
                assert received == [f"client {index} round {r}".encode() for r in range(10)]
            assert relay.sessions == 5 and len(echo.peers) == 5
            for client in clients:
                client.transport.close()
        echo.transport.close()

    run(scenario())


def test_loss_and_queue_drops_are_counted_per_direction() -> None:
    async def scenario() -> None:
        echo = await echo_server()
        # 0.016 Mbit/s: each 1000-byte packet holds the link for half a second, so of a burst of ten
        # only the two that fit the 2000-byte queue get through.
        async with UdpRelay(
            target=address_of(echo),
            downlink=LinkProfile(loss=1.0),
            uplink=LinkProfile(rate_mbps=0.016, queue_bytes=2000),
        ) as relay:
            client = await client_of(relay.address)
            for _ in range(10):
                client.transport.sendto(bytes(1000))
            up, down = relay.stats.uplink, relay.stats.downlink
            await until(lambda: up.packets_in == 10)
            assert (up.packets_delivered, up.dropped_queue) == (2, 8)
            await until(lambda: down.packets_in == 2)
            assert down.dropped_loss == 2 and client.received.empty()
            client.transport.close()
        echo.transport.close()

    run(scenario())


def test_rate_limit_spreads_a_burst_out() -> None:
    async def scenario() -> None:
        echo = await echo_server()
        # 0.4 Mbit/s = 50 kB/s: 20 x 1000 bytes need 0.4 s on the wire.
        async with UdpRelay(target=address_of(echo), uplink=LinkProfile(rate_mbps=0.4)) as relay:
            client = await client_of(relay.address)
            started = asyncio.get_running_loop().time()
            for _ in range(20):
                client.transport.sendto(bytes(1000))
            arrivals = [(await client.recv())[0] for _ in range(20)]
            assert arrivals[-1] - started >= 0.35
            client.transport.close()
        echo.transport.close()

    run(scenario())


def test_relay_survives_a_vanished_target_and_a_vanished_client() -> None:
    async def scenario() -> None:
        echo = await echo_server()
        target = address_of(echo)
        async with UdpRelay(target=target, uplink=LinkProfile(delay_ms=2.0)) as relay:
            leaver = await client_of(relay.address)
            leaver.transport.sendto(b"bye")
            leaver.transport.close()  # gone before its reply comes back
            stayer = await client_of(relay.address)
            stayer.transport.sendto(b"one")
            assert (await stayer.recv())[1] == b"one"

            echo.transport.close()  # the target vanishes ...
            stayer.transport.sendto(b"into the void")
            await asyncio.sleep(0.05)
            echo = await echo_server(port=target[1])  # ... and comes back on its port
            stayer.transport.sendto(b"two")
            assert (await stayer.recv())[1] == b"two"
            assert relay.stats.uplink.packets_delivered == 4
            stayer.transport.close()
        echo.transport.close()

    run(scenario())


def test_idle_sessions_are_closed_and_reopened() -> None:
    async def scenario() -> None:
        echo = await echo_server()
        async with UdpRelay(target=address_of(echo), idle_timeout_s=0.1) as relay:
            client = await client_of(relay.address)
            client.transport.sendto(b"a")
            await client.recv()
            await until(lambda: relay.sessions == 0)  # closed once idle, however late that is seen
            client.transport.sendto(b"b")
            assert (await client.recv())[1] == b"b"
            assert relay.sessions == 1
            # The closed session's upstream socket was freed: the target saw a second source port.
            assert len(echo.peers) == 2
            client.transport.close()
        echo.transport.close()

    run(scenario())


# real_clock: a schedule switches on the relay's clock; the test waits for the switch on that clock,
# and needs only the first datagram to leave within 1 s of the relay's start
@pytest.mark.real_clock
def test_a_schedule_changes_the_link_while_running() -> None:
    async def scenario() -> None:
        echo = await echo_server()
        # The switch comes long after the first datagram, which leaves at once; the second
        # leaves once the relay's own clock has passed the switch, however late that is.
        switch_s = 1.0
        schedule = Schedule([(0.0, LinkProfile()), (switch_s, LinkProfile(loss=1.0))])
        async with UdpRelay(target=address_of(echo), uplink=schedule) as relay:
            loop = asyncio.get_running_loop()
            client = await client_of(relay.address)
            client.transport.sendto(b"early")
            assert loop.time() - relay.uplink.start < switch_s, "the machine stalled past the switch"
            assert (await client.recv())[1] == b"early"
            await until(lambda: loop.time() - relay.uplink.start > switch_s)
            client.transport.sendto(b"late")
            await until(lambda: relay.stats.uplink.dropped_loss == 1)
            assert relay.stats.uplink.packets_delivered == 1
            client.transport.close()
        echo.transport.close()

    run(scenario())


def test_relays_need_a_target() -> None:
    with pytest.raises(ValueError, match=r"UdpRelay needs target=\(host, port\)"):
        UdpRelay()
    with pytest.raises(ValueError, match=r"TcpProxy needs target=\(host, port\)"):
        TcpProxy()
