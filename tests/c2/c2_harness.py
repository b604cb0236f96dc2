"""A vehicle gateway in front of a real pymavlink vehicle, and raw NC2S links to it, for tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from pymavlink.dialects.v20 import ardupilotmega as mavlink

from edgecloud.c2 import tls
from edgecloud.c2.gateway import UxvGateway
from edgecloud.c2.link import Link, connect
from edgecloud.c2.session import Credentials, FrameType
from edgecloud.c2.vehicle import SimulatedVehicle

ARM = mavlink.MAV_CMD_COMPONENT_ARM_DISARM
SET_SERVO = mavlink.MAV_CMD_DO_SET_SERVO


def command_long(command: int, tag: int, source_system: int = 255) -> bytes:
    encoder = mavlink.MAVLink(None, srcSystem=source_system, srcComponent=190)
    message = mavlink.MAVLink_command_long_message(1, 1, command, 0, 1, 0, 0, 0, 0, 0, float(tag))
    return bytes(message.pack(encoder))


@dataclass
class Scene:
    pki_dir: Path
    vehicle: SimulatedVehicle
    uxv: UxvGateway
    received: dict[str, list[tuple[int, bytes]]]
    links: list[tuple[Link, asyncio.Task]]

    async def link(self, name: str, pki_dir: Path | None = None) -> Link:
        """An NC2S link as ``name``, its received frames collected in ``received[name]``."""
        directory = pki_dir or self.pki_dir
        link = await connect(
            *self.uxv.address,
            Credentials.load(directory, name),
            tls.client_context(directory, name),
            server_hostname="uxv-1",
            label=f"test {name}",
        )
        inbox = self.received.setdefault(name, [])
        task = asyncio.create_task(link.run(lambda _link, kind, payload: inbox.append((kind, payload))))
        self.links.append((link, task))
        return link

    def obeyed_tags(self) -> set[int]:
        return {o.tag for o in self.vehicle.obeyed}

    async def vehicle_obeys(self, link: Link, tag: int, command: int = ARM, timeout: float = 5.0) -> None:
        """Send a valid command over ``link`` and wait until the vehicle has executed it."""
        link.send(FrameType.MAVLINK, command_long(command, tag))
        deadline = time.monotonic() + timeout
        while tag not in self.obeyed_tags():
            assert time.monotonic() < deadline, f"vehicle never obeyed command {tag}"
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def scene(pki_dir: Path, controller: str | None = "gcs-a", lease: float = 3.0) -> AsyncIterator[Scene]:
    vehicle = SimulatedVehicle("udpin:127.0.0.1:0").start()
    uxv = await UxvGateway(
        pki_dir, "uxv-1", ("127.0.0.1", 0), ("127.0.0.1", vehicle.port), controller=controller, lease=lease
    ).start()
    state = Scene(pki_dir, vehicle, uxv, {}, [])
    try:
        yield state
    finally:
        for link, task in state.links:
            await link.close()
            task.cancel()
        await uxv.stop()
        await asyncio.to_thread(vehicle.stop)


def logged(caplog, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)
