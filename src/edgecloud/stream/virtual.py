"""A live stream on a virtual clock: aioquic client and AutoRec server, no sockets, no wall time.

:class:`VirtualPair` joins a plain aioquic client to an
:class:`~edgecloud.stream.connection.AutoRecConnection` server, in the style of aioquic's
tests/test_connection.py. Each direction is a *path*: a function from (now, datagram, the
stream frames the server registered for it) to a delivery time, or ``None`` for a loss.
Tests script paths ("drop the first transmission of byte X"); the virtual benchmark uses
``edgecloud.netem``'s sans-I/O :class:`~edgecloud.netem.Link`, the same model the UDP relay
runs, so a 60 s stream takes a few seconds of CPU and is free of the shared machine's
scheduling noise. Time jumps from event to event. Since it sees every datagram, it also
tells why each stall happened (:mod:`edgecloud.stream.attribution`).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived

from edgecloud.stream.attribution import Transmission, attribute_stalls, late_share, summarize
from edgecloud.stream.connection import DEFAULT_CONGESTION_CONTROL, AutoRecConnection, check_congestion_control
from edgecloud.stream.controller import AutoRecConfig
from edgecloud.stream.meter import SentFrame
from edgecloud.stream.player import cut_short_stall_s, playback_timings, stall_totals
from edgecloud.stream.sender import TrackedStreamSender
from edgecloud.stream.source import FrameParser, LiveSource
from edgecloud.stream.tls import self_signed_certificate

CLIENT_ADDR = ("10.0.0.1", 1234)
SERVER_ADDR = ("10.0.0.2", 4433)

# (now, datagram, stream frames the server registered for it) -> delivery time or None (lost)
Path = Callable[[float, bytes, list[SentFrame]], float | None]

_CERTIFICATE = self_signed_certificate(fixed_size=True)


def fixed_delay(one_way_s: float) -> Path:
    return lambda now, data, frames: now + one_way_s


class VirtualPair:
    """Client and server joined by two virtual paths; the server writes on one stream."""

    def __init__(
        self,
        autorec: AutoRecConfig | None,
        downlink: Path,
        uplink: Path,
        idle_timeout_s: float = 60.0,
        congestion_control: str = DEFAULT_CONGESTION_CONTROL,
    ) -> None:
        check_congestion_control(congestion_control)
        client_cfg = QuicConfiguration(is_client=True, alpn_protocols=["edgecloud-live"], idle_timeout=idle_timeout_s)
        client_cfg.verify_mode = 0  # the virtual server's self-signed certificate
        server_cfg = QuicConfiguration(
            is_client=False,
            alpn_protocols=["edgecloud-live"],
            idle_timeout=idle_timeout_s,
            congestion_control_algorithm=congestion_control,
        )
        server_cfg.certificate, server_cfg.private_key = _CERTIFICATE
        self.downlink, self.uplink = downlink, uplink
        self.now = 0.0
        self.client = QuicConnection(configuration=client_cfg)
        self.server = AutoRecConnection(
            configuration=server_cfg,
            autorec=autorec,
            original_destination_connection_id=self.client.original_destination_connection_id,
        )
        if self.server.controller is not None:
            self.server.controller.record_late_flags = True  # for stall attribution
        self.received = bytearray()
        self.end_stream_events = 0
        self.client_closed_at: float | None = None  # when the client's connection terminated
        self.on_received: Callable[[bytes, float], None] | None = None
        self.stream_id: int | None = None
        self.sender: TrackedStreamSender | None = None
        self.transmissions: list[Transmission] = []  # every stream frame the server sent
        self._queue: list[tuple[float, int, str, bytes]] = []
        self._seq = 0
        self.client.connect(SERVER_ADDR, now=self.now)

    def _send(self, now: float) -> None:
        for data, _ in self.client.datagrams_to_send(now):
            at = self.uplink(now, data, [])
            if at is not None:
                self._push(at, "server", data)
        if not self.server._network_paths:  # the server has heard nothing yet
            return
        before = set(self.server._loss._records)
        datagrams = self.server.datagrams_to_send(now)
        records = self.server._loss._records
        new = [records[n] for n in sorted(set(records) - before)]
        # After the handshake each 1-RTT datagram carries exactly one packet.
        frames_per_datagram = [r.frames for r in new] if len(new) == len(datagrams) else [[] for _ in datagrams]
        for (data, _), frames in zip(datagrams, frames_per_datagram, strict=True):
            at = self.downlink(now, data, frames)
            self.transmissions.extend(Transmission(f.start, f.stop, now, at, kind=f.kind.value) for f in frames)
            if at is not None:
                self._push(at, "client", data)

    def _push(self, at: float, dest: str, data: bytes) -> None:
        heapq.heappush(self._queue, (at, self._seq, dest, data))
        self._seq += 1

    def _drain_events(self) -> None:
        while (event := self.client.next_event()) is not None:
            if isinstance(event, StreamDataReceived) and event.stream_id == self.stream_id:
                self.received += event.data
                self.end_stream_events += int(event.end_stream)
                if self.on_received is not None and event.data:
                    self.on_received(event.data, self.now)
            elif isinstance(event, ConnectionTerminated) and self.client_closed_at is None:
                self.client_closed_at = self.now
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
            self._drain_events()

    def handshake(self) -> None:
        self.run_until(self.now + 1.0)
        if not self.server._handshake_confirmed:
            raise RuntimeError("the virtual handshake did not complete within 1 s")
        self.stream_id = self.server.get_next_available_stream_id(is_unidirectional=True)

    def write(self, data: bytes, end_stream: bool = False) -> None:
        assert self.stream_id is not None, "handshake() first"
        self.server.send_stream_data(self.stream_id, data, end_stream)
        sender = self.server._streams[self.stream_id].sender
        assert isinstance(sender, TrackedStreamSender)
        self.sender = sender


def stream_live(
    pair: VirtualPair, source: LiveSource, seconds: float, playout_delay_s: float, drain_s: float = 30.0
) -> dict[str, Any]:
    """Stream ``seconds`` of ``source`` over ``pair`` (after its handshake) and measure it like
    the real benchmark does: the server's recovery statistics and the viewer's stalls."""
    parser = FrameParser()
    pair.on_received = lambda data, now: parser.feed(data, now)
    start = pair.now
    frames = list(source.frames(seconds))
    body = [f.encode(source.config.seed) for f in frames]
    writes = [
        (start + f.pts_s, data, i == len(frames) - 1) for i, (f, data) in enumerate(zip(frames, body, strict=True))
    ]
    pair.run_until(start + seconds + drain_s, writes)
    timings = playback_timings(parser.frames, playout_delay_s)
    # A stream cut short (aioquic's idle timeout in a long outage, or still short when the
    # drain ended) froze from its first missing frame's due time to the session's end, and
    # at least until its last frame would have played.
    ended_at = pair.client_closed_at if pair.client_closed_at is not None else pair.now
    expected_pts = [f.pts_s for f in frames]
    unfinished = cut_short_stall_s(parser.frames, timings, expected_pts, ended_at, start, playout_delay_s)
    stalls, stall_s = stall_totals(timings, unfinished)
    sent = b"".join(body)
    ends = list(itertools.accumulate(len(b) for b in body))
    written_at = [start + f.pts_s for f in frames]
    controller = pair.server.controller
    late_flags = controller.late_flags if controller is not None else []
    causes = attribute_stalls(ends, written_at, pair.transmissions, timings, late_flags)
    last_arrival = parser.frames[-1].arrival if parser.frames else pair.now
    stats = pair.server.recovery_stats()
    stats.update(
        stalls=stalls,
        stall_s=round(stall_s, 4),
        unfinished_stall_s=round(unfinished, 4),
        complete=pair.end_stream_events > 0,  # the stream ended (its FIN arrived)
        prefix_equal=bytes(pair.received) == sent[: len(pair.received)],
        overhead=round(stats["overhead"], 5),
        goodput_mbps=round(len(pair.received) * 8 / max(last_arrival - start, 1e-9) / 1e6, 4),
        frames=len(parser.frames),
        stall_causes=summarize(causes),
        first_sent_late=late_share(ends, written_at, pair.transmissions),
        bytes_equal=pair.end_stream_events == 1 and bytes(pair.received) == sent,
    )
    if pair.server.controller is not None:
        stats["history"] = [vars(s) | {"t": s.t - start} for s in pair.server.controller.history]
    return stats
