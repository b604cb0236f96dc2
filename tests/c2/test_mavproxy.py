"""MAVProxy, unmodified and headless, commands a vehicle through ``c2 gcs`` ↔ ``c2 uxv``.

MAVProxy is not a project dependency (it pulls in a large GUI/mapping stack), so this runs when
``EDGECLOUD_MAVPROXY`` names a ``mavproxy.py`` (e.g. from ``pip install MAVProxy`` in a separate
virtual environment) and is skipped otherwise.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from edgecloud.c2.vehicle import SimulatedVehicle

from .c2_processes import start_gcs, start_uxv, stop_all

MAVPROXY = os.environ.get("EDGECLOUD_MAVPROXY")


@pytest.mark.skipif(not MAVPROXY, reason="set EDGECLOUD_MAVPROXY=/path/to/mavproxy.py to run")
def test_headless_mavproxy_arms_the_vehicle_through_nc2s(pki_dir: Path, tmp_path: Path):
    async def run() -> None:
        vehicle = SimulatedVehicle("udpin:127.0.0.1:0").start()
        processes = []
        try:
            uxv, ready = await start_uxv(tmp_path, pki_dir, "uxv-1", vehicle.port)
            processes.append(uxv)
            gcs, ready = await start_gcs(tmp_path, pki_dir, "gcs-a", [f"127.0.0.1:{ready['listen'][1]}"])
            processes.append(gcs)
            mavproxy = await asyncio.create_subprocess_exec(
                MAVPROXY,
                f"--master=udpout:127.0.0.1:{ready['mavlink'][1]}",
                "--non-interactive",
                "--daemon",
                "--cmd=arm throttle",
                cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            processes.append(mavproxy)
            assert mavproxy.stdout is not None
            seen = []

            async def read_until_ack() -> None:
                while line := await mavproxy.stdout.readline():
                    seen.append(line.decode(errors="replace"))
                    if "Got COMMAND_ACK: COMPONENT_ARM_DISARM: ACCEPTED" in seen[-1]:
                        return

            await asyncio.wait_for(read_until_ack(), 30)
            assert 400 in [o.command for o in vehicle.obeyed]
        finally:
            await stop_all(processes)
            await asyncio.to_thread(vehicle.stop)

    asyncio.run(run())
