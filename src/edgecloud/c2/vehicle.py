"""A minimal MAVLink vehicle and GCS client, written against pymavlink's ordinary API.

They stand in for an autopilot and for a GCS script in tests, the end-to-end scenario and the
benchmark. Neither knows anything about NC2S: they speak plain MAVLink over whatever
``mavutil`` connection string they are given (``udpin:``, ``udpout:``, ``tcpin:``, ``tcp:``),
which is the point — unmodified MAVLink software runs through the gateways.

The vehicle sends a 1 Hz HEARTBEAT, answers every COMMAND_LONG / COMMAND_INT with COMMAND_ACK
(ACCEPTED) and records what it obeyed. It echoes ``int(param7)`` as ``result_param2`` so a
client can match acknowledgements to commands when timing round trips.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from pymavlink import mavutil

# MAVLink 2 everywhere (COMMAND_ACK's result_param2 exists only there). mavutil picks its dialect
# module from MAVLINK20 when set_dialect runs, and it may have been imported before us.
os.environ["MAVLINK20"] = "1"
mavutil.set_dialect("ardupilotmega")

COMMAND_LONG = "COMMAND_LONG"
COMMAND_INT = "COMMAND_INT"


@dataclass(frozen=True)
class Obeyed:
    command: int
    source_system: int
    tag: int
    at: float


class SimulatedVehicle:
    """A pymavlink vehicle in a background thread."""

    def __init__(self, device: str, system_id: int = 1, heartbeat_interval: float = 1.0) -> None:
        self.connection = mavutil.mavlink_connection(device, source_system=system_id, source_component=1)
        self.system_id = system_id
        self.heartbeat_interval = heartbeat_interval
        self.obeyed: list[Obeyed] = []
        self.heartbeats_from: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"vehicle-{system_id}", daemon=True)

    @property
    def port(self) -> int:
        listener = getattr(self.connection, "listen", None) or self.connection.port  # tcpin / udpin
        return listener.getsockname()[1]

    def start(self) -> SimulatedVehicle:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.connection.close()

    def _run(self) -> None:
        mav = self.connection.mav
        next_heartbeat = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_heartbeat:  # udpin/tcpin send nothing until they heard a peer
                mav.heartbeat_send(
                    mavutil.mavlink.MAV_TYPE_QUADROTOR,
                    mavutil.mavlink.MAV_AUTOPILOT_GENERIC,
                    0,
                    0,
                    mavutil.mavlink.MAV_STATE_STANDBY,
                )
                next_heartbeat = now + self.heartbeat_interval
            try:
                message = self.connection.recv_match(blocking=True, timeout=0.05)
            except (ConnectionError, OSError):
                continue
            if message is None:
                continue
            kind = message.get_type()
            if kind == "HEARTBEAT":
                self.heartbeats_from.add(message.get_srcSystem())
            elif kind in (COMMAND_LONG, COMMAND_INT) and message.target_system in (0, self.system_id):
                tag = int(message.param7) if kind == COMMAND_LONG else int(message.z)
                self.obeyed.append(Obeyed(message.command, message.get_srcSystem(), tag, time.monotonic()))
                mav.command_ack_send(
                    message.command,
                    mavutil.mavlink.MAV_RESULT_ACCEPTED,
                    0,
                    tag,
                    message.get_srcSystem(),
                    message.get_srcComponent(),
                )


class GcsClient:
    """A pymavlink GCS script: heartbeats, and COMMAND_LONG with a tag to match its COMMAND_ACK."""

    def __init__(self, device: str, system_id: int = 255) -> None:
        self.connection = mavutil.mavlink_connection(device, source_system=system_id, source_component=190)
        self.system_id = system_id
        self._tag = 0

    def heartbeat(self) -> None:
        self.connection.mav.heartbeat_send(mavutil.mavlink.MAV_TYPE_GCS, mavutil.mavlink.MAV_AUTOPILOT_INVALID, 0, 0, 0)

    def wait_heartbeat(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.heartbeat()
            message = self.connection.recv_match(type="HEARTBEAT", blocking=True, timeout=0.2)
            if message is not None and message.get_srcSystem() != self.system_id:
                return True
        return False

    def command(self, command: int, target_system: int = 1, timeout: float = 5.0, params: tuple = ()) -> int | None:
        """Send one COMMAND_LONG and return the MAV_RESULT of its COMMAND_ACK (None on timeout)."""
        # Tags are unique across GCS system ids and exact in param7's float32 (below 2**24).
        self._tag = (self._tag + 1) & 0xFFFF
        tag = (self.system_id << 16) | self._tag
        while self.connection.recv_match(blocking=False) is not None:
            pass  # drop replies to earlier commands that arrived after their caller gave up
        p = (list(params) + [0.0] * 6)[:6]
        self.connection.mav.command_long_send(target_system, 1, command, 0, *p, float(tag))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ack = self.connection.recv_match(type="COMMAND_ACK", blocking=True, timeout=left)
            if ack is not None and ack.command == command and ack.result_param2 == tag:
                return int(ack.result)
            if ack is not None and ack.command == command and ack.result == mavutil.mavlink.MAV_RESULT_DENIED:
                return int(ack.result)
        return None

    def close(self) -> None:
        self.connection.close()
