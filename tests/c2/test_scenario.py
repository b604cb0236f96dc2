"""The issue's scenario over a tactical radio: a TC, two GCSs and two UxVs as processes on loopback,
every NC2S link through an ``edgecloud.netem`` TCP proxy with the ``tactical-radio`` profile.

Each GCS runs one ``c2 gcs`` for both vehicles (commands are routed by MAVLink target system);
the TC hands one vehicle over, and afterwards each GCS is obeyed by exactly the vehicle it
controls.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pymavlink import mavutil

from edgecloud.c2.vehicle import GcsClient, SimulatedVehicle
from edgecloud.netem import PROFILES, TcpProxy

from .c2_processes import ACCEPTED, DENIED, start_gcs, start_uxv, stop_all, tc_handover

ARM = mavutil.mavlink.MAV_CMD_COMPONENT_ARM_DISARM
# How long a command's ACK may take: a round trip over the radio is about 0.4 s, but seven
# processes share the machine with the rest of the suite; the wait ends as soon as the ACK comes.
COMMAND_WAIT_S = 30


def _heard_from(client: GcsClient, systems: set[int], timeout: float) -> bool:
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while not systems <= seen and time.monotonic() < deadline:
        client.heartbeat()
        message = client.connection.recv_match(type="HEARTBEAT", blocking=True, timeout=0.5)
        if message is not None:
            seen.add(message.get_srcSystem())
    return systems <= seen


def test_two_gcs_two_uxv_handover_over_tactical_radio(pki_dir: Path, tmp_path: Path):
    radio = PROFILES["tactical-radio"]

    async def run() -> None:
        vehicles = [SimulatedVehicle("udpin:127.0.0.1:0", system_id=i).start() for i in (1, 2)]
        processes, proxies, clients = [], [], []
        try:
            for i, vehicle in enumerate(vehicles, start=1):
                uxv, ready = await start_uxv(tmp_path, pki_dir, f"uxv-{i}", vehicle.port)
                processes.append(uxv)
                proxy = TcpProxy(("127.0.0.1", 0), tuple(ready["listen"]), radio, radio, seed=i)
                await proxy.start()
                proxies.append(proxy)
            connects = [f"127.0.0.1:{p.address[1]}" for p in proxies]
            for name, system_id in (("gcs-a", 255), ("gcs-b", 254)):
                gcs, ready = await start_gcs(tmp_path, pki_dir, name, connects, ["uxv-1", "uxv-2"])
                processes.append(gcs)
                clients.append(GcsClient(f"udpout:127.0.0.1:{ready['mavlink'][1]}", system_id=system_id))
            a, b = clients
            for client in clients:
                assert await asyncio.to_thread(_heard_from, client, {1, 2}, 30)
            assert await asyncio.to_thread(a.command, ARM, 1, COMMAND_WAIT_S) == ACCEPTED
            assert await asyncio.to_thread(a.command, ARM, 2, COMMAND_WAIT_S) == ACCEPTED

            result = await tc_handover(pki_dir, f"127.0.0.1:{proxies[1].address[1]}", "uxv-2", "gcs-a", "gcs-b")
            assert result["controller"] == "gcs-b"

            assert await asyncio.to_thread(b.command, ARM, 2, COMMAND_WAIT_S) == ACCEPTED
            assert await asyncio.to_thread(a.command, ARM, 2, COMMAND_WAIT_S) == DENIED
            assert await asyncio.to_thread(a.command, ARM, 1, COMMAND_WAIT_S) == ACCEPTED
            assert await asyncio.to_thread(b.command, ARM, 1, COMMAND_WAIT_S) == DENIED
            assert [o.source_system for o in vehicles[0].obeyed] == [255, 255]
            assert [o.source_system for o in vehicles[1].obeyed] == [255, 254]
        finally:
            for client in clients:
                client.close()
            await stop_all(processes)
            for proxy in proxies:
                await proxy.stop()
            for vehicle in vehicles:
                await asyncio.to_thread(vehicle.stop)

    asyncio.run(run())
