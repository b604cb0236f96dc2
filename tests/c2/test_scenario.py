"""The issue's scenario over a tactical radio: a TC, two GCSs and two UxVs as processes on loopback,
every NC2S link through an ``edgecloud.netem`` TCP proxy with the ``tactical-radio`` profile.

Each GCS runs one ``c2 gcs`` for both vehicles (commands are routed by MAVLink target system);
the TC hands one vehicle over, and afterwards each GCS is obeyed by exactly the vehicle it
controls.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from pymavlink import mavutil

from edgecloud.c2.vehicle import GcsClient, SimulatedVehicle
from edgecloud.netem import PROFILES, TcpProxy

from .test_end_to_end import _start

ACCEPTED = mavutil.mavlink.MAV_RESULT_ACCEPTED
DENIED = mavutil.mavlink.MAV_RESULT_DENIED
ARM = mavutil.mavlink.MAV_CMD_COMPONENT_ARM_DISARM


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
                uxv, ready = await _start(
                    tmp_path / f"uxv-{i}.log",
                    "uxv",
                    "--pki",
                    str(pki_dir),
                    "--name",
                    f"uxv-{i}",
                    "--listen",
                    "127.0.0.1:0",
                    "--mavlink",
                    f"udp:127.0.0.1:{vehicle.port}",
                    "--controller",
                    "gcs-a",
                )
                processes.append(uxv)
                proxy = TcpProxy(("127.0.0.1", 0), tuple(ready["listen"]), radio, radio, seed=i)
                await proxy.start()
                proxies.append(proxy)
            connects = [arg for p in proxies for arg in ("--connect", f"127.0.0.1:{p.address[1]}")]
            for name, system_id in (("gcs-a", 255), ("gcs-b", 254)):
                gcs, ready = await _start(
                    tmp_path / f"{name}.log",
                    "gcs",
                    "--pki",
                    str(pki_dir),
                    "--name",
                    name,
                    *connects,
                    "--uxv",
                    "uxv-1",
                    "--uxv",
                    "uxv-2",
                    "--mavlink",
                    "udp:127.0.0.1:0",
                )
                processes.append(gcs)
                clients.append(GcsClient(f"udpout:127.0.0.1:{ready['mavlink'][1]}", system_id=system_id))
            a, b = clients
            for client in clients:
                assert await asyncio.to_thread(_heard_from, client, {1, 2}, 30)
            assert await asyncio.to_thread(a.command, ARM, 1, 10) == ACCEPTED
            assert await asyncio.to_thread(a.command, ARM, 2, 10) == ACCEPTED

            tc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edgecloud.cli",
                "c2",
                "tc",
                "handover",
                "--pki",
                str(pki_dir),
                "--name",
                "tc-1",
                "--connect",
                f"127.0.0.1:{proxies[1].address[1]}",
                "--uxv",
                "uxv-2",
                "--from",
                "gcs-a",
                "--to",
                "gcs-b",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(tc.communicate(), 60)
            assert tc.returncode == 0, err.decode()
            assert json.loads(out)["controller"] == "gcs-b"

            assert await asyncio.to_thread(b.command, ARM, 2, 10) == ACCEPTED
            assert await asyncio.to_thread(a.command, ARM, 2, 10) == DENIED
            assert await asyncio.to_thread(a.command, ARM, 1, 10) == ACCEPTED
            assert await asyncio.to_thread(b.command, ARM, 1, 10) == DENIED
            assert [o.source_system for o in vehicles[0].obeyed] == [255, 255]
            assert [o.source_system for o in vehicles[1].obeyed] == [255, 254]
        finally:
            for client in clients:
                client.close()
            for process in processes:
                process.terminate()
                await process.wait()
            for proxy in proxies:
                await proxy.stop()
            for vehicle in vehicles:
                await asyncio.to_thread(vehicle.stop)

    asyncio.run(run())
