"""How closely the relays keep their configured delay, and how fast they forward, on loopback.

Echo round trips, side by side in one run: direct (the baseline: loopback plus Python), through the
UDP relay and the TCP proxy with no shaping (the relay's own cost), and with a one-way delay on the
uplink. The error reported is ``round trip - configured delay``: everything the emulator adds on top
of what it was asked for. Client, relay and echo server share one asyncio loop in one process, the
way tests and benchmarks in this repository use the relay. Throughput: a bulk TCP transfer and a
paced stream of UDP datagrams at a few offered rates, direct and through the unshaped relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
from typing import Any, cast

import numpy as np

from edgecloud.netem.profile import LinkProfile
from edgecloud.netem.tcp import TcpProxy
from edgecloud.netem.udp import Address, UdpRelay

MESSAGE_BYTES = 200
THROUGHPUT_DATAGRAM_BYTES = 1200
THROUGHPUT_PACKETS_PER_S = (1_000, 5_000, 20_000)
THROUGHPUT_TCP_BYTES = 64 * 1024 * 1024


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


class _UdpProbe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.sent: dict[int, float] = {}
        self.rtts: list[float] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        sent = self.sent.pop(int.from_bytes(data[:4], "big"), None)
        if sent is not None:
            self.rtts.append(asyncio.get_running_loop().time() - sent)


async def _udp_rtts(address: Address, packets: int, interval_s: float, settle_s: float) -> list[float]:
    loop = asyncio.get_running_loop()
    transport, probe = await loop.create_datagram_endpoint(_UdpProbe, remote_addr=address)
    padding = bytes(MESSAGE_BYTES - 4)
    for seq in range(packets):
        probe.sent[seq] = loop.time()
        transport.sendto(seq.to_bytes(4, "big") + padding)
        await asyncio.sleep(interval_s)
    await asyncio.sleep(settle_s)
    transport.close()
    return probe.rtts


async def _tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _tcp_rtts(address: Address, packets: int, interval_s: float) -> list[float]:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(*address)
    message = bytes(MESSAGE_BYTES)
    rtts = []
    for _ in range(packets):
        sent = loop.time()
        writer.write(message)
        await reader.readexactly(MESSAGE_BYTES)
        rtts.append(loop.time() - sent)
        await asyncio.sleep(interval_s)
    writer.close()
    await writer.wait_closed()
    return rtts


class _UdpSink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.bytes = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.bytes += len(data)


async def _udp_throughput(address: Address, sink: _UdpSink, packets_per_s: int) -> dict[str, float]:
    """Offers ``packets_per_s`` datagrams for one second, paced in 1 ms ticks; reports what arrived."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=address)
    payload = bytes(THROUGHPUT_DATAGRAM_BYTES)
    per_tick = packets_per_s // 1000
    sink.bytes = 0
    next_tick = loop.time()
    for _ in range(1000):
        for _ in range(per_tick):
            transport.sendto(payload)
        next_tick += 0.001
        await asyncio.sleep(max(0.0, next_tick - loop.time()))
    await asyncio.sleep(0.2)
    transport.close()
    return {
        "offered_mbit_per_s": round(per_tick * 1000 * len(payload) * 8 / 1e6, 1),
        "delivered_fraction": round(sink.bytes / (per_tick * 1000 * len(payload)), 4),
    }


async def _tcp_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(1 << 20):
            pass
        writer.write(b"done")
        await writer.drain()
    writer.close()


async def _tcp_throughput(address: Address, total: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(*address)
    block = bytes(1 << 16)
    started = loop.time()
    for _ in range(total // len(block)):
        writer.write(block)
        await writer.drain()
    writer.write_eof()
    await reader.read()  # the sink answers once it has read everything
    elapsed = loop.time() - started
    writer.close()
    await writer.wait_closed()
    return {"mbit_per_s": round(total * 8 / elapsed / 1e6, 1)}


def _summary_ms(seconds: list[float], minus_ms: float = 0.0) -> dict[str, float]:
    values = np.asarray(seconds) * 1e3 - minus_ms
    quantiles = np.percentile(values, [50, 90, 99])
    return {
        "n": len(values),
        "min": round(float(values.min()), 3),
        "p50": round(float(quantiles[0]), 3),
        "p90": round(float(quantiles[1]), 3),
        "p99": round(float(quantiles[2]), 3),
        "max": round(float(values.max()), 3),
    }


async def measure(
    delay_ms: float = 20.0, packets: int = 2000, interval_ms: float = 2.0, throughput: bool = True
) -> dict[str, Any]:
    """Round-trip summaries (ms) for each path (``*_error_ms`` subtract the configured delay) and,
    with ``throughput``, forwarding rates (about 8 s more)."""
    loop = asyncio.get_running_loop()
    interval_s = interval_ms / 1e3
    settle_s = delay_ms / 1e3 + 0.2
    udp_echo, _ = await loop.create_datagram_endpoint(_UdpEcho, local_addr=("127.0.0.1", 0))
    udp_target = udp_echo.get_extra_info("sockname")[:2]
    tcp_echo = await asyncio.start_server(_tcp_echo, "127.0.0.1", 0)
    tcp_target = tcp_echo.sockets[0].getsockname()[:2]
    delayed = LinkProfile(delay_ms=delay_ms)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared, noisy), Python {platform.python_version()}",
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "configured_delay_ms": delay_ms,
        "packets": packets,
        "interval_ms": interval_ms,
        "message_bytes": MESSAGE_BYTES,
    }
    try:
        report["udp_direct_rtt_ms"] = _summary_ms(await _udp_rtts(udp_target, packets, interval_s, settle_s))
        async with UdpRelay(target=udp_target) as relay:
            report["udp_relay_unshaped_rtt_ms"] = _summary_ms(
                await _udp_rtts(relay.address, packets, interval_s, settle_s)
            )
        async with UdpRelay(target=udp_target, uplink=delayed) as relay:
            report["udp_relay_delay_error_ms"] = _summary_ms(
                await _udp_rtts(relay.address, packets, interval_s, settle_s), minus_ms=delay_ms
            )
        report["tcp_direct_rtt_ms"] = _summary_ms(await _tcp_rtts(tcp_target, packets, interval_s))
        async with TcpProxy(target=tcp_target) as proxy:
            report["tcp_proxy_unshaped_rtt_ms"] = _summary_ms(await _tcp_rtts(proxy.address, packets, interval_s))
        async with TcpProxy(target=tcp_target, uplink=delayed) as proxy:
            report["tcp_proxy_delay_error_ms"] = _summary_ms(
                await _tcp_rtts(proxy.address, packets, interval_s), minus_ms=delay_ms
            )
        if not throughput:
            return report
        udp_sink_transport, udp_sink = await loop.create_datagram_endpoint(_UdpSink, local_addr=("127.0.0.1", 0))
        sink_target = udp_sink_transport.get_extra_info("sockname")[:2]
        for rate in THROUGHPUT_PACKETS_PER_S:
            report[f"udp_direct_{rate}pps"] = await _udp_throughput(sink_target, udp_sink, rate)
            async with UdpRelay(target=sink_target) as relay:
                report[f"udp_relay_{rate}pps"] = await _udp_throughput(relay.address, udp_sink, rate)
        udp_sink_transport.close()
        tcp_sink = await asyncio.start_server(_tcp_sink, "127.0.0.1", 0)
        sink_target = tcp_sink.sockets[0].getsockname()[:2]
        report["tcp_direct_throughput"] = await _tcp_throughput(sink_target, THROUGHPUT_TCP_BYTES)
        async with TcpProxy(target=sink_target) as proxy:
            report["tcp_proxy_throughput"] = await _tcp_throughput(proxy.address, THROUGHPUT_TCP_BYTES)
        tcp_sink.close()
    finally:
        udp_echo.close()
        tcp_echo.close()
        await tcp_echo.wait_closed()
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"netem timing on {report['machine']}: configured one-way delay {report['configured_delay_ms']} ms, "
        f"{report['packets']} round trips per path, every {report['interval_ms']} ms",
        f"{'path (ms)':<28}{'min':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}",
    ]
    for key, value in report.items():
        if isinstance(value, dict) and "p50" in value:
            lines.append(f"{key:<28}" + "".join(f"{value[q]:>9.3f}" for q in ("min", "p50", "p90", "p99", "max")))
    lines.append("throughput (unshaped, same process)")
    for key, value in report.items():
        if isinstance(value, dict) and "p50" not in value:
            details = ", ".join(f"{name} {number}" for name, number in value.items())
            lines.append(f"{key:<28}{details}")
    return "\n".join(lines)
