"""A virtual-clock QUIC pair for sans-I/O tests, in the style of aioquic's tests/test_connection.py.

A plain aioquic client talks to an :class:`AutoRecConnection` server over a scripted link:
a fixed one-way delay and a drop rule that sees, for each server datagram, the stream
frames the server registered for it (so a test can drop "the first transmission of byte
X" or "its first retransmission"). No sockets, no wall clock: time jumps from event to
event, so every run is deterministic.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived

from edgecloud.stream.connection import AutoRecConnection
from edgecloud.stream.controller import AutoRecConfig
from edgecloud.stream.meter import SentFrame
from edgecloud.stream.sender import TrackedStreamSender
from edgecloud.stream.tls import self_signed_certificate

CLIENT_ADDR = ("1.2.3.4", 1234)
SERVER_ADDR = ("2.3.4.5", 4433)

# (index of the server datagram, the stream frames it carries) -> drop it?
DropRule = Callable[[int, list[SentFrame]], bool]

_CERT = self_signed_certificate()


@dataclass
class QuicPair:
    """Client and server joined by a virtual link; the server writes scripted bursts."""

    autorec: AutoRecConfig | None
    one_way_s: float = 0.025
    drop_server: DropRule = lambda index, frames: False
    drop_client: Callable[[int], bool] = lambda index: False
    now: float = 0.0
    received: bytearray = field(default_factory=bytearray)
    end_stream_events: int = 0
    server_datagrams: int = 0
    dropped: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        client_cfg = QuicConfiguration(is_client=True, alpn_protocols=["test"])
        client_cfg.verify_mode = 0  # the self-signed test certificate
        server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["test"])
        server_cfg.certificate, server_cfg.private_key = _CERT
        self.client = QuicConnection(configuration=client_cfg)
        self.server = AutoRecConnection(
            configuration=server_cfg,
            autorec=self.autorec,
            original_destination_connection_id=self.client.original_destination_connection_id,
        )
        self._queue: list[tuple[float, int, str, bytes]] = []
        self._seq = 0
        self._client_datagrams = 0
        self.client.connect(SERVER_ADDR, now=self.now)
        self.stream_id: int | None = None
        self.sender: TrackedStreamSender | None = None

    # -- the link ---------------------------------------------------------------------

    def _send(self, now: float) -> None:
        for data, _ in self.client.datagrams_to_send(now):
            index = self._client_datagrams
            self._client_datagrams += 1
            if not self.drop_client(index):
                self._push(now + self.one_way_s, "server", data)
        if not self.server._network_paths:  # the server has heard nothing yet
            return
        before = set(self.server._loss._records)
        datagrams = self.server.datagrams_to_send(now)
        records = self.server._loss._records
        new = [records[n] for n in sorted(set(records) - before)]
        # After the handshake each 1-RTT datagram carries exactly one packet.
        frames_per_datagram = [r.frames for r in new] if len(new) == len(datagrams) else [[] for _ in datagrams]
        for (data, _), frames in zip(datagrams, frames_per_datagram, strict=True):
            index = self.server_datagrams
            self.server_datagrams += 1
            if self.server._handshake_confirmed and self.drop_server(index, frames):
                self.dropped.append(index)
                continue
            self._push(now + self.one_way_s, "client", data)

    def _push(self, at: float, dest: str, data: bytes) -> None:
        heapq.heappush(self._queue, (at, self._seq, dest, data))
        self._seq += 1

    def _drain_client_events(self) -> None:
        while (event := self.client.next_event()) is not None:
            if isinstance(event, StreamDataReceived) and event.stream_id == self.stream_id:
                self.received += event.data
                self.end_stream_events += int(event.end_stream)
        while self.server.next_event() is not None:
            pass

    def run_until(self, until: float, writes: list[tuple[float, bytes, bool]] | None = None) -> None:
        """Advance virtual time to ``until``, performing (time, data, end_stream) server writes."""
        pending_writes = sorted(writes or [], key=lambda w: w[0])
        while True:
            self._send(self.now)
            candidates = [until]
            if self._queue:
                candidates.append(self._queue[0][0])
            for conn in (self.client, self.server):
                timer = conn.get_timer()
                if timer is not None:
                    # aioquic's loss timer can come back equal to ``now`` through float
                    # rounding; a microsecond later it fires for real.
                    candidates.append(max(timer, self.now + 1e-6))
            if pending_writes:
                candidates.append(max(pending_writes[0][0], self.now))
            at = min(candidates)
            if at >= until and not (self._queue and self._queue[0][0] <= until):
                self.now = until
                return
            self.now = at
            while self._queue and self._queue[0][0] <= self.now:
                _, _, dest, data = heapq.heappop(self._queue)
                if dest == "server":
                    self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
                else:
                    self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
            for conn in (self.client, self.server):
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(now=self.now)
            while pending_writes and pending_writes[0][0] <= self.now:
                _, data, end = pending_writes.pop(0)
                self.write(data, end)
            self._drain_client_events()

    def handshake(self) -> None:
        self.run_until(self.now + 1.0)
        assert self.server._handshake_confirmed
        self.stream_id = self.server.get_next_available_stream_id(is_unidirectional=True)

    def write(self, data: bytes, end_stream: bool = False) -> None:
        assert self.stream_id is not None
        self.server.send_stream_data(self.stream_id, data, end_stream)
        sender = self.server._streams[self.stream_id].sender
        assert isinstance(sender, TrackedStreamSender)
        self.sender = sender


@pytest.fixture
def quic_pair() -> Callable[..., QuicPair]:
    def make(**kwargs: object) -> QuicPair:
        pair = QuicPair(**kwargs)  # type: ignore[arg-type]
        pair.handshake()
        return pair

    return make
