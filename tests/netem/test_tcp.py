"""The TCP proxy on real loopback sockets: bytes intact, delay and loss as time, failing peers."""

import asyncio
import hashlib
import os
import socket
import struct
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from edgecloud.netem import GilbertElliottTime, LinkProfile, Outcome, Schedule, TcpProxy
from edgecloud.netem.tcp import _PeerFailed, _Pump

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echoes until end of stream, then closes: a half-close travels both ways."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def echo_server() -> tuple[asyncio.Server, tuple[str, int]]:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    return server, (host, port)


async def round_trip(address: tuple[str, int], payload: bytes) -> bytes:
    """Sends everything, half-closes, and reads the echo until the proxy passes the EOF back."""
    reader, writer = await asyncio.open_connection(*address)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    sending = asyncio.create_task(send())
    received = await reader.read()
    await sending
    writer.close()
    await writer.wait_closed()
    return received


def test_bytes_arrive_intact_through_delay_rate_and_jitter() -> None:
    async def scenario() -> None:
        server, target = await echo_server()
        payload = os.urandom(2_000_000)
        async with TcpProxy(
            target=target,
            uplink=LinkProfile(delay_ms=20.0, jitter_ms=5.0),
            downlink=LinkProfile(delay_ms=5.0, rate_mbps=200.0),
        ) as proxy:
            received = await round_trip(proxy.address, payload)
            assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
            assert proxy.stats.uplink.bytes_delivered == proxy.stats.downlink.bytes_delivered == len(payload)
        server.close()

    run(scenario())


# real_clock: a delay on real sockets is bounded from below only (never early); slowness cannot fail it
@pytest.mark.real_clock
def test_small_exchange_pays_the_configured_delay() -> None:
    async def scenario() -> None:
        server, target = await echo_server()
        async with TcpProxy(
            target=target, uplink=LinkProfile(delay_ms=40.0), downlink=LinkProfile(delay_ms=10.0)
        ) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.address)
            loop = asyncio.get_running_loop()
            started = loop.time()
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            assert loop.time() - started >= 0.045
            writer.close()
            await writer.wait_closed()
        server.close()

    run(scenario())


def test_loss_delays_segments_but_never_drops_bytes() -> None:
    async def scenario() -> None:
        server, target = await echo_server()
        payload = os.urandom(300_000)
        lossy = LinkProfile(delay_ms=2.0, loss=0.2)
        async with TcpProxy(target=target, uplink=lossy, downlink=lossy, seed=1) as proxy:
            assert await round_trip(proxy.address, payload) == payload
            for direction in (proxy.stats.uplink, proxy.stats.downlink):
                assert direction.dropped_loss > 0 and direction.bytes_delivered == len(payload)
        server.close()

    run(scenario())


def test_time_based_bursts_delay_segments_without_tearing_down() -> None:
    # Each resend is drawn at its own send time (5, 15, 35, ... ms later), so a burst ends before the
    # resends run out; drawn at the original's time, every resend would fall in the same burst. The
    # rate limit spreads the transfer over ~0.3 s, ten 30 ms cycles of the chain, so bursts do hit it.
    async def scenario() -> None:
        server, target = await echo_server()
        payload = os.urandom(300_000)
        model = GilbertElliottTime(mean_good_ms=20.0, mean_bad_ms=10.0)
        bursty = LinkProfile(delay_ms=2.0, rate_mbps=8.0, queue_bytes=64_000, loss=model)
        async with TcpProxy(target=target, uplink=bursty, downlink=bursty, seed=1) as proxy:
            assert await round_trip(proxy.address, payload) == payload
            assert proxy.connections_failed == 0
            for direction in (proxy.stats.uplink, proxy.stats.downlink):
                assert direction.dropped_loss > 0 and direction.bytes_delivered == len(payload)
        server.close()

    run(scenario())


def test_recovery_on_a_virtual_clock_keeps_the_time_based_loss_rate() -> None:
    # The proxy's own recovery, driven with explicit times: a segment every 0.1 ms, each lost one
    # recovered (resends 5, 15, 35, ... ms after it left) before the next is offered. Resends drawn
    # into the chain at those future times used to leave the next segments in the resend's state,
    # mostly good: 0.4 % of first transmissions lost instead of 33 %.
    model = GilbertElliottTime.from_mean(1 / 3, 20.0)
    profile = LinkProfile(delay_ms=2.0, loss=model)

    async def scenario() -> tuple[list[bool], list[float]]:
        proxy = TcpProxy(target=("127.0.0.1", 9), uplink=profile, downlink=profile, seed=1)
        proxy.uplink.start = proxy.downlink.start = 0.0
        link = proxy.downlink
        pump = _Pump(proxy, link, None, None, None)  # type: ignore[arg-type]  # only _recover is used
        lost, delays = [], []
        for i in range(100_000):
            now = i * 1e-4
            sent = link.transmit(now, 1448)
            lost.append(sent.outcome is Outcome.LOST)
            if lost[-1]:
                delays.append(pump._recover(now, sent) - sent.at)
        return lost, delays

    lost, delays = run(scenario())
    # 10 s of the chain: the share of it spent bad has standard deviation ~0.024; 5 sigma.
    assert sum(lost) / len(lost) == pytest.approx(model.mean_loss, abs=0.12)
    # Recovery waits 5 ms (1.25 RTT of 4 ms) and doubles: 5, 15, 35, ... ms after the lost copy.
    waits = [0.005 * (2 ** (k + 1) - 1) for k in range(15)]
    assert all(any(delay == pytest.approx(wait) for wait in waits) for delay in delays)
    assert min(delays) == pytest.approx(0.005) and max(delays) > 0.005  # some resends are lost too


def test_recovery_uses_the_profile_of_the_lost_segment_throughout() -> None:
    # The RTT and every resend's loss model come from the profile when the segment was offered,
    # even if a schedule step falls within the recovery.
    lossless_later = Schedule([(0.0, LinkProfile(delay_ms=2.0, loss=1.0)), (0.01, LinkProfile(delay_ms=50.0))])

    async def scenario() -> float:
        proxy = TcpProxy(target=("127.0.0.1", 9), uplink=lossless_later, downlink=lossless_later)
        proxy.uplink.start = proxy.downlink.start = 0.0
        pump = _Pump(proxy, proxy.downlink, None, None, None)  # type: ignore[arg-type]
        sent = proxy.downlink.transmit(0.0, 100)
        assert sent.outcome is Outcome.LOST
        return pump._recover(0.0, sent)

    with pytest.raises(_PeerFailed, match="lost 16 times in a row"):
        run(scenario())


def test_concurrent_connections_stay_separate() -> None:
    async def scenario() -> None:
        server, target = await echo_server()
        payloads = [os.urandom(50_000 + i) for i in range(8)]
        async with TcpProxy(target=target, uplink=LinkProfile(delay_ms=5.0, rate_mbps=50.0)) as proxy:
            results = await asyncio.gather(*(round_trip(proxy.address, p) for p in payloads))
            assert results == payloads
        server.close()

    run(scenario())


def test_unreachable_target_closes_the_client_and_keeps_listening() -> None:
    async def scenario() -> None:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            dead_target = unused.getsockname()
        async with TcpProxy(target=dead_target) as proxy:
            for _ in range(2):
                reader, writer = await asyncio.open_connection(*proxy.address)
                assert await reader.read() == b""  # a clean close, not a hang
                writer.close()
            assert proxy.connections_failed == 2

    run(scenario())


def test_a_client_that_vanishes_closes_its_target_side_only() -> None:
    async def scenario() -> None:
        target_saw_close = asyncio.Event()

        async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while await reader.read(65536):
                    pass
            except ConnectionError:
                pass
            target_saw_close.set()
            writer.close()

        sink_server = await asyncio.start_server(sink, "127.0.0.1", 0)
        async with TcpProxy(target=sink_server.sockets[0].getsockname()[:2], uplink=LinkProfile(delay_ms=5.0)) as proxy:
            _, vanishing = await asyncio.open_connection(*proxy.address)
            vanishing.write(os.urandom(100_000))
            await vanishing.drain()
            sock = vanishing.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            vanishing.transport.abort()  # RST: the client is gone mid-stream
            await asyncio.wait_for(target_saw_close.wait(), 10)
        sink_server.close()

        server, target = await echo_server()
        async with TcpProxy(target=target) as proxy:
            _, vanishing = await asyncio.open_connection(*proxy.address)
            vanishing.transport.abort()
            assert await round_trip(proxy.address, b"still here") == b"still here"
        server.close()

    run(scenario())


def test_a_target_that_vanishes_mid_stream_closes_the_client_cleanly() -> None:
    async def scenario() -> None:
        async def crash_after_first_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(10)
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

        server = await asyncio.start_server(crash_after_first_read, "127.0.0.1", 0)
        async with TcpProxy(target=server.sockets[0].getsockname()[:2], downlink=LinkProfile(delay_ms=5.0)) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.address)
            writer.write(b"hello, are you there?")
            await writer.drain()
            try:
                assert await asyncio.wait_for(reader.read(), 10) == b""
            except ConnectionResetError:
                pytest.fail("the proxy reset the client instead of closing it")
            writer.close()
            await asyncio.wait_for(_until_no_connections(proxy), 10)
            assert proxy.connections_failed == 1
        server.close()

    run(scenario())


async def _until_no_connections(proxy: TcpProxy) -> None:
    while proxy.connections:
        await asyncio.sleep(0.01)


async def _until_connections(proxy: TcpProxy, count: int) -> None:
    while proxy.connections != count:
        await asyncio.sleep(0.01)


def test_stop_closes_open_connections() -> None:
    async def scenario() -> None:
        server, target = await echo_server()
        proxy = TcpProxy(target=target, uplink=LinkProfile(delay_ms=1000.0))
        await proxy.start()
        reader, writer = await asyncio.open_connection(*proxy.address)
        writer.write(b"never delivered")
        await asyncio.wait_for(_until_connections(proxy, 1), 10)
        await proxy.stop()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        server.close()

    run(scenario())


# real_clock: the rate limit is bounded from below only (100 kB cannot pass 2 Mbit/s faster); slowness cannot fail it
@pytest.mark.real_clock
def test_rate_limit_paces_a_bulk_transfer() -> None:
    async def scenario() -> None:
        server, target = await echo_server()
        payload = os.urandom(100_000)
        # 2 Mbit/s = 250 kB/s: 100 kB take 0.4 s on the uplink alone.
        async with TcpProxy(target=target, uplink=LinkProfile(rate_mbps=2.0, queue_bytes=20_000)) as proxy:
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await round_trip(proxy.address, payload) == payload
            assert loop.time() - started >= 0.35
            assert proxy.stats.uplink.dropped_queue == 0  # a full queue pauses the sender instead
        server.close()

    run(scenario())


def test_a_link_that_loses_everything_tears_the_connection_down() -> None:
    async def scenario() -> None:
        server, target = await echo_server()
        async with TcpProxy(target=target, uplink=LinkProfile(loss=1.0)) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.address)
            writer.write(b"into a black hole")
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            assert await round_trip(proxy.address, b"") == b""  # the listener is still there
            assert proxy.connections_failed >= 1
        server.close()

    run(scenario())
