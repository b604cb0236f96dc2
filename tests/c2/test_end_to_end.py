"""End to end through the real commands: pymavlink GCS scripts ↔ ``edgecloud c2 gcs`` ↔ netem (wifi)
↔ ``edgecloud c2 uxv`` ↔ a pymavlink vehicle, with ``edgecloud c2 tc handover`` in the middle.

Each gateway and the TC run as their own process, as a user would start them; the GCS scripts
and the vehicle speak plain MAVLink and know nothing about NC2S.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pymavlink import mavutil

from edgecloud.c2.vehicle import GcsClient, SimulatedVehicle
from edgecloud.netem import PROFILES, TcpProxy

from .c2_processes import ACCEPTED, DENIED, start_gcs, start_uxv, stop_all, tc_handover
from .conftest import wait_for

ARM = mavutil.mavlink.MAV_CMD_COMPONENT_ARM_DISARM


def test_mavlink_gcs_scripts_command_a_vehicle_through_nc2s_and_a_handover(pki_dir: Path, tmp_path: Path):
    async def run() -> None:
        vehicle = SimulatedVehicle("udpin:127.0.0.1:0").start()
        processes: list[asyncio.subprocess.Process] = []
        proxy = None
        clients: list[GcsClient] = []
        try:
            uxv, ready = await start_uxv(tmp_path, pki_dir, "uxv-1", vehicle.port)
            processes.append(uxv)
            proxy = TcpProxy(("127.0.0.1", 0), tuple(ready["listen"]), PROFILES["wifi"], PROFILES["wifi"], seed=0)
            await proxy.start()
            radio = f"{proxy.address[0]}:{proxy.address[1]}"
            for name, system_id in (("gcs-a", 255), ("gcs-b", 254)):
                gcs, ready = await start_gcs(tmp_path, pki_dir, name, [radio], ["uxv-1"])
                processes.append(gcs)
                clients.append(GcsClient(f"udpout:127.0.0.1:{ready['mavlink'][1]}", system_id=system_id))
            a, b = clients

            assert await asyncio.to_thread(a.wait_heartbeat, 15)
            assert await asyncio.to_thread(b.wait_heartbeat, 15)
            assert await asyncio.to_thread(a.command, ARM) == ACCEPTED
            assert await asyncio.to_thread(b.command, ARM) == DENIED

            result = await tc_handover(pki_dir, radio, "uxv-1", "gcs-a", "gcs-b")
            assert (result["state"], result["controller"]) == ("done", "gcs-b")

            assert await asyncio.to_thread(a.command, ARM) == DENIED
            assert await asyncio.to_thread(b.command, ARM) == ACCEPTED
            assert [o.source_system for o in vehicle.obeyed] == [255, 254]
            # Heartbeats reach the vehicle from whoever controls it: gcs-a before, gcs-b after.
            assert 255 in vehicle.heartbeats_from
            assert await asyncio.to_thread(b.wait_heartbeat, 5)
            await wait_for(lambda: 254 in vehicle.heartbeats_from, what="gcs-b's heartbeat at the vehicle")
            uxv_log = (tmp_path / "uxv-1.log").read_text()
            assert "gcs-b does not control uxv-1 (controller: gcs-a)" in uxv_log
            assert "gcs-a does not control uxv-1 (controller: gcs-b)" in uxv_log
            assert "control handed to gcs-b" in uxv_log
            assert proxy.stats.uplink.bytes_delivered > 0 and proxy.stats.downlink.bytes_delivered > 0
        finally:
            for client in clients:
                client.close()
            await stop_all(processes)
            if proxy is not None:
                await proxy.stop()
            await asyncio.to_thread(vehicle.stop)

    asyncio.run(run())
