"""MAVLink gateways and the TC client: NC2S between unmodified MAVLink software.

``UxvGateway`` sits next to a vehicle: it accepts NC2S links from GCSs and TCs, forwards to the
vehicle's local MAVLink UDP endpoint only the packets its :class:`UxvControl` authorises (the
current controller, holding the privilege for that message or command), and sends telemetry
to every peer holding ``telemetry``. A refused COMMAND_LONG/INT is answered with COMMAND_ACK
``MAV_RESULT_DENIED`` so the GCS software sees the refusal in its own terms.

``GcsGateway`` gives local GCS software (MAVProxy, a pymavlink script) a plain MAVLink UDP
endpoint and carries its traffic over one NC2S link to a vehicle gateway, keeping the control
lease (:class:`GcsControl`). What a TC does is in :mod:`edgecloud.c2.commander`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from pymavlink.dialects.v20 import ardupilotmega as mavlink

from edgecloud.c2 import tls
from edgecloud.c2.control import (
    GcsControl,
    Refuse,
    Send,
    UxvControl,
)
from edgecloud.c2.link import Link, LinkError, accept, connect, log
from edgecloud.c2.pki import ROOT_NAME, PkiError, common_name, verify_crl, write_crl
from edgecloud.c2.privileges import COMMAND_MESSAGE_IDS, PKI_REVOKE, Role
from edgecloud.c2.session import Credentials, FrameType

Address = tuple[str, int]

RETRY_FIRST_S = 0.5
"""A GCS gateway's first wait before reconnecting to a vehicle; each failure doubles it, up to
RETRY_MAX_S, and a link that comes up resets it (a closed port: 8 warnings in the first minute,
then two a minute, instead of 60)."""
RETRY_MAX_S = 30.0


def parse_address(text: str, field_name: str) -> Address:
    """``HOST:PORT`` or ``udp:HOST:PORT``; errors name the field and the allowed form."""
    value = text.removeprefix("udp:")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{field_name} {text!r}: expected HOST:PORT with PORT in 0..65535")
    return host, int(port)


@dataclass
class MavlinkPacket:
    raw: bytes
    message_id: int
    command_id: int | None
    message: mavlink.MAVLink_message


def split_packets(parser: mavlink.MAVLink, data: bytes) -> tuple[list[MavlinkPacket], int]:
    """Parse every MAVLink packet in a datagram; returns the packets and how many bytes were garbage."""
    packets, bad = [], 0
    for message in parser.parse_buffer(data) or []:
        if isinstance(message, mavlink.MAVLink_bad_data):
            bad += len(message.get_msgbuf())
            continue
        message_id = message.get_msgId()
        command = message.command if message_id in COMMAND_MESSAGE_IDS else None
        packets.append(MavlinkPacket(bytes(message.get_msgbuf()), message_id, command, message))
    return packets, bad


def _parser() -> mavlink.MAVLink:
    parser = mavlink.MAVLink(None)
    parser.robust_parsing = True
    return parser


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_datagram) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.on_datagram(data, addr)


@dataclass
class GatewayStats:
    forwarded: int = 0
    refused: list[str] = field(default_factory=list)
    telemetry: int = 0


class UxvGateway:
    """The vehicle side of NC2S."""

    def __init__(
        self,
        pki_dir: Path,
        name: str,
        listen: Address,
        vehicle: Address,
        *,
        controller: str | None = None,
        lease: float = 3.0,
        retry: float = 0.5,
        system_id: int = 191,
    ) -> None:
        self.pki_dir = Path(pki_dir)
        self.name = name
        self.listen = listen
        self.vehicle = vehicle
        self.credentials = Credentials.load(self.pki_dir, name)
        self.context = tls.server_context(self.pki_dir, name)
        self.control = UxvControl(name, lease=lease, retry=retry, controller=controller)
        self.control.online = set()
        self.links: dict[str, Link] = {}
        self.stats = GatewayStats()
        self.system_id = system_id
        self._parsers: dict[str, mavlink.MAVLink] = {}
        self._server: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task] = set()
        self._heartbeat = mavlink.MAVLink(None, srcSystem=system_id, srcComponent=mavlink.MAV_COMP_ID_ONBOARD_COMPUTER)

    @property
    def address(self) -> Address:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[:2]

    async def start(self) -> UxvGateway:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._from_vehicle), remote_addr=self.vehicle
        )
        try:
            self._server = await asyncio.start_server(self._on_connection, *self.listen)
        except OSError:
            self._udp.close()
            raise
        self._spawn(self._timer())
        log.info("uxv %s: listening on %s, vehicle at %s", self.name, self.address, self.vehicle)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self.links.values()):
            await link.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._udp is not None:
            self._udp.close()

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refuse(self, peer: str, reason: str) -> None:
        self.stats.refused.append(reason)
        log.warning("uxv %s: refused %s: %s", self.name, peer, reason)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        link = await accept(reader, writer, self.credentials, self.context, label=f"uxv {self.name}")
        if link is None:
            return
        peer = link.peer
        if peer.role not in (Role.GCS, Role.TC):
            self._refuse(peer.name, f"role {peer.role} may not connect to a vehicle as a GCS or TC")
            await link.close()
            return
        previous = self.links.get(peer.name)
        self.links[peer.name] = link
        if peer.role is Role.GCS:
            self.control.online.add(peer.name)
        self._parsers[peer.name] = _parser()  # per link: one peer's malformed bytes never touch another's
        if previous is not None:
            await previous.close()
        log.info("uxv %s: %s %s connected", self.name, peer.role, peer.name)
        try:
            await link.run(self._on_message)
        finally:
            if self.links.get(peer.name) is link:
                del self.links[peer.name]
                self.control.online.discard(peer.name)

    def _on_message(self, link: Link, kind: int, payload: bytes) -> None:
        if kind == FrameType.MAVLINK:
            self._on_mavlink(link, payload)
        elif kind == FrameType.CONTROL:
            try:
                message = json.loads(payload)
                if not isinstance(message, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                self._refuse(link.peer.name, f"malformed control message: {exc}")
                return
            if message.get("t") == "crl":
                self._on_crl(link, message)
                return
            self._dispatch(self.control.on_message(link.peer, message, time.monotonic()))
        else:
            self._refuse(link.peer.name, f"unknown frame type {kind}")

    def _on_mavlink(self, link: Link, payload: bytes) -> None:
        packets, bad = split_packets(self._parsers[link.peer.name], payload)
        if bad:
            self._refuse(link.peer.name, f"{bad} bytes that are not MAVLink")
        accepted = []
        for packet in packets:
            decision = self.control.authorize(link.peer, packet.message_id, packet.command_id)
            if decision.accepted:
                accepted.append(packet.raw)
                continue
            if packet.message_id == mavlink.MAVLINK_MSG_ID_HEARTBEAT:
                continue  # observers' heartbeats are not commands: dropped without alarm
            self._refuse(link.peer.name, decision.reason)
            if packet.command_id is not None:
                link.send(FrameType.MAVLINK, self._denied(packet))
        if accepted and self._udp is not None:
            self._udp.sendto(b"".join(accepted))
            self.stats.forwarded += len(accepted)

    @staticmethod
    def _denied(packet: MavlinkPacket) -> bytes:
        command = packet.message
        encoder = mavlink.MAVLink(None, srcSystem=command.target_system or 1, srcComponent=command.target_component)
        ack = mavlink.MAVLink_command_ack_message(
            command.command,
            mavlink.MAV_RESULT_DENIED,
            0,
            0,
            command.get_srcSystem(),
            command.get_srcComponent(),
        )
        return bytes(ack.pack(encoder))

    def _from_vehicle(self, data: bytes, _addr: Address) -> None:
        self.stats.telemetry += 1
        for link in list(self.links.values()):
            if link.peer.holds("telemetry"):
                link.send(FrameType.MAVLINK, data)

    def _dispatch(self, outputs) -> None:
        for output in outputs:
            if isinstance(output, Refuse):
                self._refuse(output.peer, output.reason)
            elif isinstance(output, Send):
                link = self.links.get(output.to)
                if link is not None:
                    link.send_control(output.message)
                if output.message.get("t") == "offer":
                    log.info("uxv %s: control handed to %s (epoch %d)", self.name, output.to, self.control.epoch)

    def _on_crl(self, link: Link, message: dict) -> None:
        peer = link.peer
        if peer.role is not Role.TC or not peer.holds(PKI_REVOKE):
            self._refuse(peer.name, f"CRL push from {peer.name} (role {peer.role}) without {PKI_REVOKE}")
            return
        try:
            issuer, crl = verify_crl(str(message.get("pem", "")).encode(), self.credentials.root)
        except (PkiError, ValueError) as exc:
            self._refuse(peer.name, f"CRL rejected: {exc}")
            return
        write_crl(self.pki_dir, issuer, crl)
        # New handshakes use a context built from the updated crl.pem; live links of revoked
        # certificates are closed at once, and so are those of certificates a revoked TC issued
        # (a TC is a sub-CA: new handshakes check the CRLs of the whole chain).
        self.context = tls.server_context(self.pki_dir, self.name)
        revoked = {entry.serial_number for entry in crl}
        issuer_cn = common_name(crl.issuer)
        for name, other in list(self.links.items()):
            peer = other.peer
            if peer.issuer == issuer_cn and peer.serial in revoked:
                log.warning("uxv %s: closing link to %s: certificate revoked by %s", self.name, name, issuer)
                self._spawn(other.close())
            elif issuer == ROOT_NAME and peer.issuer_serial in revoked:
                log.warning("uxv %s: closing link to %s: its issuer %s was revoked by %s", self.name, name,
                            peer.issuer, issuer)
                self._spawn(other.close())
        link.send_control({"t": "crl-ack", "issuer": issuer, "revoked": len(revoked)})

    async def _timer(self) -> None:
        next_heartbeat = 0.0
        while True:
            now = time.monotonic()
            self._dispatch(self.control.on_timer(now))
            if now >= next_heartbeat and self._udp is not None:
                # Announce ourselves so a vehicle listening on udpin learns where telemetry goes.
                heartbeat = mavlink.MAVLink_heartbeat_message(
                    mavlink.MAV_TYPE_ONBOARD_CONTROLLER, mavlink.MAV_AUTOPILOT_INVALID, 0, 0, 0, 3
                )
                self._udp.sendto(bytes(heartbeat.pack(self._heartbeat)))
                next_heartbeat = now + 1.0
            await asyncio.sleep(0.05)


@dataclass
class VehicleLink:
    """One vehicle as a GCS gateway sees it: where it is, the link, the control lease, its MAVLink ids."""

    address: Address
    expected_name: str | None
    control: GcsControl
    link: Link | None = None
    system_ids: set[int] = field(default_factory=set)
    was_controlling: bool = False
    gave_up: str | None = None  # why reconnecting stopped: a refusal that cannot heal

    def controlling(self, now: float) -> bool:
        return self.link is not None and self.control.controlling(now)


class GcsGateway:
    """The GCS side of NC2S: one local MAVLink UDP endpoint bridged to one or more vehicle gateways.

    With several vehicles, packets from the GCS software that name a ``target_system`` go to the
    vehicle that uses that system id (learnt from its telemetry); broadcasts (target 0, e.g.
    heartbeats) go to every vehicle. Each vehicle's gateway still decides what it obeys.
    """

    def __init__(
        self,
        pki_dir: Path,
        name: str,
        connect_to: Address | list[Address],
        mavlink_listen: Address,
        *,
        uxv_name: str | list[str | None] | None = None,
        rekey_interval: float | None = 60.0,
        renew_every: float = 1.0,
        poll_every: float = 1.0,
    ) -> None:
        addresses = connect_to if isinstance(connect_to, list) else [connect_to]
        names = uxv_name if isinstance(uxv_name, list) else [uxv_name] * len(addresses)
        if len(names) != len(addresses):
            raise ValueError(f"uxv_name: {len(names)} names for {len(addresses)} vehicle addresses")
        self.pki_dir = Path(pki_dir)
        self.name = name
        self.mavlink_listen = mavlink_listen
        self.rekey_interval = rekey_interval
        self.credentials = Credentials.load(self.pki_dir, name)
        self.vehicles = [
            VehicleLink(
                address, expected, GcsControl(name, expected or "", renew_every=renew_every, poll_every=poll_every)
            )
            for address, expected in zip(addresses, names, strict=True)
        ]
        self.connected = asyncio.Event()  # set while every vehicle link is up
        self.gave_up = asyncio.Event()  # set once every vehicle link has been refused for good
        self.handshakes: list[float] = []
        self.dropped = 0
        self._parser = _parser()
        self._local: Address | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def link(self) -> Link | None:
        """The (first) vehicle's link."""
        return self.vehicles[0].link

    @property
    def control(self) -> GcsControl:
        return self.vehicles[0].control

    @property
    def mavlink_address(self) -> Address:
        assert self._udp is not None
        return self._udp.get_extra_info("sockname")[:2]

    async def start(self) -> GcsGateway:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._from_local), local_addr=self.mavlink_listen
        )
        for coroutine in [*(self._keep_connected(v) for v in self.vehicles), self._timer()]:
            self._tasks.add(asyncio.create_task(coroutine))
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for vehicle in self.vehicles:
            if vehicle.link is not None:
                await vehicle.link.close()
        if self._udp is not None:
            self._udp.close()

    def controlling(self, uxv: str | None = None) -> bool:
        """Whether this GCS controls vehicle ``uxv`` (default: the first vehicle)."""
        now = time.monotonic()
        if uxv is None:
            return self.vehicles[0].controlling(now)
        return any(v.control.uxv == uxv and v.controlling(now) for v in self.vehicles)

    def _give_up(self, vehicle: VehicleLink, reason: str) -> None:
        """Stop reconnecting to ``vehicle``; once every vehicle is given up, ``gave_up`` is set
        and whoever runs the gateway reports why (``c2 gcs`` exits with the reasons)."""
        host, port = vehicle.address
        vehicle.gave_up = reason
        if all(v.gave_up is not None for v in self.vehicles):
            self.gave_up.set()
        else:
            log.error("%s; giving up on %s:%d, keeping the other vehicles", reason, host, port)

    async def _keep_connected(self, vehicle: VehicleLink) -> None:
        """Connect, run the link, reconnect when it drops: retries back off exponentially
        (RETRY_FIRST_S doubling to RETRY_MAX_S) and stop on refusals that cannot heal."""
        host, port = vehicle.address
        context = tls.client_context(self.pki_dir, self.name)
        context.check_hostname = vehicle.expected_name is not None
        delay = RETRY_FIRST_S
        while True:
            try:
                link = await connect(
                    host,
                    port,
                    self.credentials,
                    context,
                    server_hostname=vehicle.expected_name,
                    label=f"gcs {self.name}",
                    rekey_interval=self.rekey_interval,
                )
            except LinkError as exc:
                if exc.permanent:
                    self._give_up(vehicle, str(exc))
                    return
                log.warning("%s; retrying in %g s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_S)
                continue
            if link.peer.role is not Role.UXV:
                await link.close()
                self._give_up(
                    vehicle,
                    f"gcs {self.name}: {host}:{port} is {link.peer.name}, of role {link.peer.role}, not a vehicle "
                    "gateway (c2 uxv): check --connect",
                )
                return
            delay = RETRY_FIRST_S
            vehicle.control.uxv = link.peer.name
            vehicle.link = link
            self.handshakes.append(link.stats.handshake_s)
            if all(v.link is not None for v in self.vehicles):
                self.connected.set()
            log.info("gcs %s: connected to %s in %.1f ms", self.name, link.peer.name, 1e3 * link.stats.handshake_s)
            self._send_control(vehicle, vehicle.control.on_message({"t": "offer"}, time.monotonic()))
            await link.run(lambda _link, kind, payload: self._on_message(vehicle, kind, payload))
            self.connected.clear()
            vehicle.link = None
            await asyncio.sleep(0.5)

    def _send_control(self, vehicle: VehicleLink, messages: list[dict]) -> None:
        if vehicle.link is not None:
            for message in messages:
                vehicle.link.send_control(message)

    def _from_local(self, data: bytes, addr: Address) -> None:
        self._local = addr
        targets = self.vehicles
        if len(self.vehicles) > 1:
            packets, _ = split_packets(self._parser, data)
            wanted = {getattr(p.message, "target_system", 0) for p in packets}
            if 0 not in wanted:
                targets = [v for v in self.vehicles if v.system_ids & wanted] or self.vehicles
        for vehicle in targets:
            if vehicle.link is None or vehicle.link.closed:
                self.dropped += 1
                continue
            vehicle.link.send(FrameType.MAVLINK, data)

    def _on_message(self, vehicle: VehicleLink, kind: int, payload: bytes) -> None:
        if kind == FrameType.MAVLINK:
            if len(self.vehicles) > 1:
                packets, _ = split_packets(self._parser, payload)
                vehicle.system_ids |= {p.message.get_srcSystem() for p in packets}
            if self._local is not None and self._udp is not None:
                self._udp.sendto(payload, self._local)
        elif kind == FrameType.CONTROL:
            message = json.loads(payload)
            if isinstance(message, dict):
                self._send_control(vehicle, vehicle.control.on_message(message, time.monotonic()))
                self._report(vehicle)

    def _report(self, vehicle: VehicleLink) -> None:
        now = vehicle.controlling(time.monotonic())
        if now != vehicle.was_controlling:
            vehicle.was_controlling = now
            state = "controls" if now else "no longer controls"
            log.info("gcs %s: %s %s (epoch %d)", self.name, state, vehicle.control.uxv, vehicle.control.epoch)

    async def _timer(self) -> None:
        while True:
            for vehicle in self.vehicles:
                if vehicle.link is not None:
                    self._send_control(vehicle, vehicle.control.on_timer(time.monotonic()))
                self._report(vehicle)
            await asyncio.sleep(0.05)
