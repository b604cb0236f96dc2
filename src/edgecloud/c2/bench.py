"""``edgecloud c2 bench``: plain MAVLink versus NC2S over the same emulated links, side by side.

NC2S (arXiv 2511.21936, evaluation) measures its overhead over Wi-Fi and over tactical radios
with about 100x the latency. Here each profile of :mod:`edgecloud.netem` is put, as a TCP proxy,
between a pymavlink GCS script and a pymavlink vehicle twice, in one run:

* **baseline** — plain MAVLink over TCP through the proxy (MAVLink's usual TCP transport, so the
  link sees the same reliable byte stream NC2S rides on);
* **NC2S** — GCS script → UDP → GCS gateway → mutual TLS + NC2S frames through the proxy →
  vehicle gateway (authorisation) → UDP → vehicle.

Both paths are up at once and the commands alternate between them in blocks, so the load of
other jobs on a shared machine falls on both alike. Reported per profile: mTLS + NC2S session
set-up time, COMMAND_LONG→COMMAND_ACK round trip (p50/p90/p99) for both, key-renewal and
handover durations, commands lost (no ACK within the timeout — renewals run in the middle of
the command stream, and every handover is bracketed by commands from the old and the new
controller), and bytes per message on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from edgecloud.c2 import pki, tls
from edgecloud.c2.commander import approve_handover
from edgecloud.c2.gateway import GcsGateway, UxvGateway
from edgecloud.c2.link import connect
from edgecloud.c2.privileges import Role
from edgecloud.c2.session import OVERHEAD, Credentials
from edgecloud.c2.vehicle import GcsClient, SimulatedVehicle, mavutil

ARM = mavutil.mavlink.MAV_CMD_COMPONENT_ARM_DISARM
ACCEPTED = mavutil.mavlink.MAV_RESULT_ACCEPTED
SWITCH_INTERVAL_S = 0.0002
TLS13_RECORD_OVERHEAD = 5 + 1 + 16  # record header, inner content type, AES-GCM / ChaCha20-Poly1305 tag


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(values: list[float]) -> dict[str, float | int | None]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(1e3 * v, 3)

    return {
        "n": len(values),
        "p50_ms": ms(percentile(values, 50)),
        "p90_ms": ms(percentile(values, 90)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(max(values) if values else None),
    }


@dataclass
class CommandRun:
    rtts: list[float] = field(default_factory=list)
    lost: int = 0
    uplink_bytes: int = 0


def _commands(client: GcsClient, count: int, timeout: float) -> tuple[list[float], int]:
    rtts, lost = [], 0
    for _ in range(count):
        started = time.perf_counter()
        result = client.command(ARM, timeout=timeout)
        if result == ACCEPTED:
            rtts.append(time.perf_counter() - started)
        else:
            lost += 1
    return rtts, lost


@contextlib.asynccontextmanager
async def _plain_path(profile, seed: int) -> AsyncIterator[tuple[GcsClient, object]]:
    """pymavlink script → TCP through the proxy → pymavlink vehicle (tcpin)."""
    from edgecloud.netem import TcpProxy

    vehicle = SimulatedVehicle("tcpin:127.0.0.1:0").start()
    proxy = TcpProxy(("127.0.0.1", 0), ("127.0.0.1", vehicle.port), profile, profile, seed=seed)
    await proxy.start()
    client = await asyncio.to_thread(GcsClient, f"tcp:{proxy.address[0]}:{proxy.address[1]}")
    try:
        if not await asyncio.to_thread(client.wait_heartbeat, 30):
            raise RuntimeError("baseline: no heartbeat from the vehicle through the proxy")
        yield client, proxy
    finally:
        client.close()
        await proxy.stop()
        await asyncio.to_thread(vehicle.stop)


@dataclass
class Nc2sPath:
    proxies: dict[str, object]  # one emulated link per node: gcs-a, gcs-b, tc-1
    gateways: dict[str, GcsGateway]
    clients: dict[str, GcsClient]


@contextlib.asynccontextmanager
async def _nc2s_path(profile, pki_dir: Path, seed: int) -> AsyncIterator[Nc2sPath]:
    """pymavlink scripts → UDP → GCS gateways → NC2S through the proxy → vehicle gateway → UDP → vehicle.

    Each GCS and the TC reach the vehicle over a link of their own, as the baseline's single GCS
    does: the observer GCS's telemetry and polls do not share the measured GCS's link."""
    from edgecloud.netem import TcpProxy

    vehicle = SimulatedVehicle("udpin:127.0.0.1:0").start()
    uxv = await UxvGateway(pki_dir, "uxv-1", ("127.0.0.1", 0), ("127.0.0.1", vehicle.port), controller="gcs-a").start()
    proxies = {
        name: TcpProxy(("127.0.0.1", 0), uxv.address, profile, profile, seed=seed + i)
        for i, name in enumerate(("gcs-a", "gcs-b", "tc-1"))
    }
    for proxy in proxies.values():
        await proxy.start()
    gateways: dict[str, GcsGateway] = {}
    clients: dict[str, GcsClient] = {}
    try:
        for name, system_id in (("gcs-a", 255), ("gcs-b", 254)):
            gateway = await GcsGateway(
                pki_dir, name, proxies[name].address, ("127.0.0.1", 0), uxv_name="uxv-1", rekey_interval=None
            ).start()
            gateways[name] = gateway
            clients[name] = GcsClient(f"udpout:127.0.0.1:{gateway.mavlink_address[1]}", system_id=system_id)
        for gateway in gateways.values():
            await asyncio.wait_for(gateway.connected.wait(), 60)
        deadline = time.monotonic() + 60
        while not gateways["gcs-a"].controlling():
            if time.monotonic() > deadline:
                raise RuntimeError("NC2S: gcs-a never obtained its control lease")
            await asyncio.sleep(0.05)
        if not await asyncio.to_thread(clients["gcs-a"].wait_heartbeat, 30):
            raise RuntimeError("NC2S: no heartbeat from the vehicle through the gateways")
        yield Nc2sPath(proxies, gateways, clients)
    finally:
        for client in clients.values():
            client.close()
        for gateway in gateways.values():
            await gateway.stop()
        for proxy in proxies.values():
            await proxy.stop()
        await uxv.stop()
        await asyncio.to_thread(vehicle.stop)


@dataclass
class Nc2sRun:
    commands: CommandRun
    handshakes: list[float]
    renewals: list[float]
    handovers: list[float]
    handover_lost: int
    renewal_lost: int


async def _measure(
    profile, pki_dir: Path, commands: int, timeout: float, seed: int, renewals: int, handovers: int
) -> tuple[CommandRun, Nc2sRun]:
    """Both paths up at once; commands alternate between them in blocks, so load from other jobs
    on a shared machine falls on both alike. Then set-up, renewal and handover measurements."""
    async with _plain_path(profile, seed) as (plain_client, plain_proxy), _nc2s_path(profile, pki_dir, seed) as nc2s:
        base, ours = CommandRun(), CommandRun()
        blocks = min(10, commands)
        for block in range(blocks):
            size = commands // blocks + (1 if block < commands % blocks else 0)
            for run, client, proxy in (
                (base, plain_client, plain_proxy),
                (ours, nc2s.clients["gcs-a"], nc2s.proxies["gcs-a"]),
            ):
                before = proxy.stats.uplink.bytes_delivered
                rtts, lost = await asyncio.to_thread(_commands, client, size, timeout)
                run.rtts += rtts
                run.lost += lost
                run.uplink_bytes += proxy.stats.uplink.bytes_delivered - before

        # Session set-up: TCP connect + TLS 1.3 with client certificates + NC2S HELLO, through the link.
        handshakes = []
        credentials = Credentials.load(pki_dir, "tc-1")
        for _ in range(5):
            link = await connect(
                *nc2s.proxies["tc-1"].address,
                credentials,
                tls.client_context(pki_dir, "tc-1"),
                server_hostname="uxv-1",
                label="bench",
            )
            handshakes.append(link.stats.handshake_s)
            await link.close()

        # Key renewals in the middle of a command stream: no command may be lost.
        a = nc2s.clients["gcs-a"]
        link = nc2s.gateways["gcs-a"].link
        assert link is not None
        renewal_times, renewal_lost = [], 0
        for _ in range(renewals):
            stream = asyncio.create_task(asyncio.to_thread(_commands, a, 3, timeout))
            renewal_times.append(await asyncio.wait_for(link.renew_keys(), 60))
            _, lost_here = await stream
            renewal_lost += lost_here

        # Handovers back and forth, each bracketed by commands of the old and the new controller.
        handover_times, handover_lost = [], 0
        order = ["gcs-a", "gcs-b"]
        for i in range(handovers):
            source, target = order[i % 2], order[(i + 1) % 2]
            _, lost_before = await asyncio.to_thread(_commands, nc2s.clients[source], 1, timeout)
            result = await approve_handover(
                pki_dir, "tc-1", nc2s.proxies["tc-1"].address, source, target, uxv_name="uxv-1"
            )
            if result.state != "done":
                raise RuntimeError(f"handover {source}→{target}: {result.state} {result.reason}")
            handover_times.append(result.duration_s)
            while not nc2s.gateways[target].controlling():
                await asyncio.sleep(0.01)
            _, lost_after = await asyncio.to_thread(_commands, nc2s.clients[target], 1, timeout)
            handover_lost += lost_before + lost_after
        return base, Nc2sRun(ours, handshakes, renewal_times, handover_times, handover_lost, renewal_lost)


def _bench_pki(directory: Path) -> Path:
    pki.init(directory)
    pki.issue_to_directory(directory, "tc-1", Role.TC)
    for name in ("gcs-a", "gcs-b"):
        pki.issue_to_directory(directory, name, Role.GCS, issuer="tc-1")
    pki.issue_to_directory(directory, "uxv-1", Role.UXV)
    return directory


async def run_bench(
    profiles: list[str],
    commands: int = 200,
    radio_commands: int = 100,
    renewals: int = 5,
    handovers: int = 4,
    seed: int = 0,
    plot: Path | None = None,
) -> dict:
    """Run baseline and NC2S for each profile; returns the JSON-ready report."""
    from edgecloud.netem import PROFILES

    for field_name, value, low in (
        ("commands", commands, 1),
        ("radio_commands", radio_commands, 1),
        ("renewals", renewals, 0),
        ("handovers", handovers, 0),
    ):
        if value < low:
            raise ValueError(f"{field_name} {value}: must be >= {low}")
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        raise ValueError(f"profiles {unknown}: known are {sorted(PROFILES)}")
    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "note": "loopback on a shared 2-core machine; all components in one process; timings are noisy",
            "torch_threads": "n/a (no torch in this benchmark)",
        },
        "nc2s_frame_overhead_bytes": OVERHEAD,
        "tls13_record_overhead_bytes": TLS13_RECORD_OVERHEAD,
        "profiles": {},
    }
    # Every part runs in this one process (deployed, each gateway is its own). With CPython's
    # default 5 ms GIL switch interval, a thread woken by a packet can wait that long for the
    # interpreter, which would charge the side with more Python parts (NC2S) for contention it
    # does not have when deployed. A 0.2 ms interval applies to both runs alike.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    report["machine"]["gil_switch_interval_s"] = SWITCH_INTERVAL_S
    try:
        return await _run_profiles(report, profiles, commands, radio_commands, renewals, handovers, seed, plot)
    finally:
        sys.setswitchinterval(switch_interval)


async def _run_profiles(
    report: dict,
    profiles: list[str],
    commands: int,
    radio_commands: int,
    renewals: int,
    handovers: int,
    seed: int,
    plot: Path | None,
) -> dict:
    from edgecloud.netem import PROFILES

    with tempfile.TemporaryDirectory(prefix="c2-bench-") as tmp:
        pki_dir = _bench_pki(Path(tmp))
        for name in profiles:
            profile = PROFILES[name]
            count = radio_commands if profile.delay_ms >= 50 else commands
            timeout = max(5.0, 40 * profile.delay_ms / 1e3)
            base, nc2s = await _measure(profile, pki_dir, count, timeout, seed, renewals, handovers)
            p50_base = percentile(base.rtts, 50) or float("nan")
            p50_nc2s = percentile(nc2s.commands.rtts, 50) or float("nan")
            report["profiles"][name] = {
                "profile": {
                    "delay_ms": profile.delay_ms,
                    "jitter_ms": profile.jitter_ms,
                    "rate_mbps": profile.rate_mbps,
                    "loss": repr(profile.loss),
                },
                "commands": count,
                "baseline_rtt": summary_ms(base.rtts) | {"lost": base.lost},
                "nc2s_rtt": summary_ms(nc2s.commands.rtts) | {"lost": nc2s.commands.lost},
                "median_rtt_added_ms": round(1e3 * (p50_nc2s - p50_base), 3),
                "median_rtt_ratio": round(p50_nc2s / p50_base, 4),
                "handshake": summary_ms(nc2s.handshakes),
                "key_renewal": summary_ms(nc2s.renewals) | {"commands_lost": nc2s.renewal_lost},
                "handover": summary_ms(nc2s.handovers) | {"commands_lost": nc2s.handover_lost},
                "uplink_bytes_per_command": {
                    "baseline": round(base.uplink_bytes / max(1, count), 1),
                    "nc2s": round(nc2s.commands.uplink_bytes / max(1, count), 1),
                    "note": "NC2S also carries its lease renewals (one small control frame per second)",
                },
                "overhead_bytes_per_message": OVERHEAD + TLS13_RECORD_OVERHEAD,
                "goal": _goal(name, p50_base, p50_nc2s, nc2s),
                "rtts_s": {"baseline": base.rtts, "nc2s": nc2s.commands.rtts},
            }
    if plot is not None:
        _plot(report, plot)
    return report


def _goal(name: str, base: float, nc2s: float, run: Nc2sRun) -> dict:
    added = nc2s - base
    lost = run.renewal_lost + run.handover_lost
    if name == "wifi":
        met = added <= 1e-3
        text = f"median RTT +{1e3 * added:.2f} ms (goal ≤ 1 ms)"
    else:
        met = added <= 0.05 * base
        text = f"median RTT +{100 * added / base:.1f}% (goal ≤ 5%)"
    return {
        "rtt_goal_met": bool(met),
        "rtt": text,
        "no_commands_lost_across_renewals_and_handovers": lost == 0,
    }


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["profiles"])
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        for label, values in report["profiles"][name]["rtts_s"].items():
            ordered = sorted(1e3 * v for v in values)
            if ordered:
                axis.plot(
                    ordered,
                    [(i + 1) / len(ordered) for i in range(len(ordered))],
                    label="plain MAVLink/TCP" if label == "baseline" else "NC2S",
                )
        axis.set_title(f"{name}: COMMAND_LONG→ACK round trip")
        axis.set_xlabel("ms")
        axis.set_ylabel("CDF")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
