"""AutoRec as a server-side extension of aioquic's ``QuicConnection``, without forking it.

:class:`AutoRecConnection` subclasses aioquic's sans-I/O connection and changes three
things, each at a method aioquic already has:

* every writable stream gets a :class:`~edgecloud.stream.sender.TrackedStreamSender`
  (stream creation), which is safe under duplicated delivery and labels its frames;
* loss recovery is a :class:`TrackedRecovery`, aioquic's ``QuicPacketRecovery`` that also
  reports each registered, acknowledged and lost packet (to the recovery meter, the loss
  estimator and the controller) — RFC 9002 detection and congestion control are unchanged,
  except that a packet of nothing but AutoRec copies is not counted in flight (see
  ``TrackedRecovery.on_packet_sent``);
* with an :class:`~edgecloud.stream.controller.AutoRecConfig`, each transmission attempt
  is two passes of aioquic's ``datagrams_to_send``: the data pass, stock (window, pacer),
  with copies held back; then, after polling the controller, the copy pass, which sends
  only copies, beyond the window by the bytes the controller admitted under the overhead
  budget (see ``datagrams_to_send``). The controller's next wake-up joins the timer.

Without a config the connection is the **baseline**: aioquic's recovery unchanged, the
same measurement. aioquic's ``QuicServer`` builds plain ``QuicConnection`` objects and
has no factory for them, so :meth:`AutoRecConnection.adopt` upgrades one in place before
it has processed any datagram.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import K_TIME_THRESHOLD, QuicPacketRecovery, QuicPacketSpace
from aioquic.quic.stream import QuicStream, QuicStreamSender

from edgecloud.stream.controller import AutoRecConfig, ReinjectionController
from edgecloud.stream.meter import RecoveryMeter, SentFrame
from edgecloud.stream.sender import FrameKind, Serving, TrackedStreamSender

# aioquic's congestion controllers, by the name its QuicConfiguration takes; NewReno is its
# default. AutoRec changes neither: its copies leave beyond the window (see datagrams_to_send).
CONGESTION_CONTROLS = ("reno", "cubic")
DEFAULT_CONGESTION_CONTROL = "reno"  # what `stream serve` and `stream bench` run unless told otherwise


def check_congestion_control(name: str) -> None:
    if name not in CONGESTION_CONTROLS:
        raise ValueError(f"congestion_control must be one of {', '.join(CONGESTION_CONTROLS)}, got {name!r}")


@dataclass
class PacketRecord:
    sent_at: float
    frames: list[SentFrame]
    ack_eliciting: bool
    overdue_reported: bool = False


class _Unpaced:
    """Stands in for aioquic's pacer during the copy pass: copies are not paced by it, nor
    do they spend its tokens (they are bounded by the overhead budget instead)."""

    def next_send_time(self, now: float) -> None:
        return None

    def update_after_send(self, now: float) -> None:
        pass


class TrackedRecovery(QuicPacketRecovery):
    """aioquic's loss recovery, reporting the fate of every application-data packet."""

    def __init__(self, *, connection: AutoRecConnection, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._connection = connection
        self._records: dict[int, PacketRecord] = {}
        self._copy_allowance: int | None = None
        # Set when a loss starts a new recovery period (NewReno halves its window):
        # AutoRecConnection then lets one packet leave beyond the window (RFC 9002 7.3.2).
        self.recovery_started = False
        self._collapsed_at = -math.inf  # when persistent congestion last collapsed the window
        self.last_ack_delay = 0.0  # as the peer reported it with its latest ACK

    @property
    def congestion_window(self) -> int:
        """NewReno's window; during the copy pass, what is in flight plus the copies' allowance."""
        if self._copy_allowance is not None:
            return self.bytes_in_flight + self._copy_allowance
        return super().congestion_window

    @contextmanager
    def beyond_window(self, allowance: int) -> Iterator[None]:
        """Let ``allowance`` bytes leave beyond the congestion window and the pacer."""
        pacer = self._pacer
        self._copy_allowance, self._pacer = allowance, _Unpaced()  # type: ignore[assignment]
        try:
            yield
        finally:
            self._copy_allowance, self._pacer = None, pacer

    @property
    def srtt_s(self) -> float:
        return self._rtt_smoothed if self._rtt_initialized else self._rtt_initial

    @property
    def overdue_after_s(self) -> float:
        """Age at which a packet's ACK is overdue: RFC 9002's time threshold plus the
        peer's ACK delay, the latest an ACK comes for a packet that arrived."""
        return K_TIME_THRESHOLD * self.srtt_s + self.max_ack_delay

    def take_overdue(self, now: float) -> list[PacketRecord]:
        """Packets in flight whose ACK is overdue, each reported once."""
        deadline = now - self.overdue_after_s
        overdue = []
        for record in self._records.values():  # oldest first
            if record.sent_at > deadline:
                break
            if not record.overdue_reported and record.ack_eliciting:
                record.overdue_reported = True
                overdue.append(record)
        return overdue

    def next_overdue_at(self) -> float | None:
        for record in self._records.values():
            if not record.overdue_reported and record.ack_eliciting:
                return record.sent_at + self.overdue_after_s
        return None

    def on_packet_sent(self, *, packet: QuicSentPacket, space: QuicPacketSpace) -> None:
        frames = []
        if space.is_application_data:
            for handler, args in packet.delivery_handlers:
                sender = getattr(handler, "__self__", None)
                if isinstance(sender, TrackedStreamSender) and args[1] > args[0]:
                    kind = sender.take_registered_kind(args[0], args[1])
                    frames.append(SentFrame(sender, args[0], args[1], kind))
            # A packet of nothing but AutoRec copies is redundancy, bounded by the overhead
            # budget: it leaves in the copy pass, beyond the window (datagrams_to_send), and
            # does not hold window room for a round trip, so it never delays the next
            # frame; nor is its loss a congestion signal.
            if frames and all(f.kind is FrameKind.COPY for f in frames):
                packet.in_flight = False
        super().on_packet_sent(packet=packet, space=space)
        if not space.is_application_data:
            return
        self._records[packet.packet_number] = PacketRecord(packet.sent_time, frames, packet.is_ack_eliciting)
        self._connection.on_frames_sent(frames, packet.sent_time)

    def on_ack_received(self, *, ack_rangeset: Any, ack_delay: float, now: float, space: QuicPacketSpace) -> None:
        self.last_ack_delay = min(ack_delay, self.max_ack_delay)
        super().on_ack_received(ack_rangeset=ack_rangeset, ack_delay=ack_delay, now=now, space=space)
        if not space.is_application_data:
            return
        # Lost packets left _records in _on_packets_lost; those gone from sent_packets
        # now were acknowledged.
        for number in [n for n in self._records if n not in space.sent_packets]:
            record = self._records.pop(number)
            if record.ack_eliciting:
                self._connection.on_packet_resolved(record, number, lost=False, now=now)

    def _on_packets_lost(
        self,
        *,
        congestion_event: bool = True,
        now: float,
        packets: Iterable[QuicSentPacket],
        persistent_congestion: bool = False,
        space: QuicPacketSpace,
    ) -> None:
        packets = list(packets)
        for packet in packets:
            record = self._records.pop(packet.packet_number, None)
            if record is not None and record.ack_eliciting:
                self._connection.on_packet_resolved(record, packet.packet_number, lost=True, now=now)
        recovery_start = getattr(self._cc, "_congestion_recovery_start_time", None)
        super()._on_packets_lost(
            congestion_event=congestion_event,
            now=now,
            packets=packets,
            persistent_congestion=persistent_congestion,
            space=space,
        )
        # aioquic's NewReno (and CUBIC) move this when a loss starts a recovery period.
        # Persistent congestion moves it too (back to 0) while collapsing the window to
        # its minimum (RFC 9002 7.6.2), and after that any loss looks like a new period,
        # even of a packet sent before the collapse (as in RFC 9002's pseudo-code). Our
        # policy: the window restarts from its minimum, so neither the collapse nor a loss
        # of a packet sent before it lets a packet beyond the window; a loss of a packet
        # sent after it starts a recovery period like any other.
        in_flight = [p for p in packets if p.in_flight]  # what aioquic hands NewReno
        if persistent_congestion and in_flight:
            self.recovery_started = False
            self._collapsed_at = now
        elif (
            space.is_application_data
            and getattr(self._cc, "_congestion_recovery_start_time", None) != recovery_start
            and max((p.sent_time for p in in_flight), default=-math.inf) > self._collapsed_at
        ):
            self.recovery_started = True


class AutoRecConnection(QuicConnection):
    """A server ``QuicConnection`` with measured recovery and, optionally, AutoRec."""

    def __init__(self, *, configuration: QuicConfiguration, autorec: AutoRecConfig | None = None, **kwargs: Any):
        super().__init__(configuration=configuration, **kwargs)
        self._setup_autorec(autorec)

    @classmethod
    def adopt(cls, connection: QuicConnection, autorec: AutoRecConfig | None) -> AutoRecConnection:
        """Upgrade a fresh ``QuicConnection`` (as built by aioquic's ``QuicServer``) in place."""
        if connection._loss.spaces:
            raise ValueError("adopt() needs a connection that has not processed any datagram yet")
        connection.__class__ = cls
        assert isinstance(connection, AutoRecConnection)
        connection._setup_autorec(autorec)
        return connection

    def _setup_autorec(self, autorec: AutoRecConfig | None) -> None:
        self.autorec_config = autorec
        self.controller = ReinjectionController(autorec) if autorec is not None else None
        self.meter = RecoveryMeter()
        self.bytes_sent: dict[FrameKind, int] = dict.fromkeys(FrameKind, 0)
        self.packets_sent = 0
        self.packets_lost = 0
        self._now = 0.0
        self._tracked: dict[int, TrackedStreamSender] = {}
        self._loss = TrackedRecovery(
            connection=self,
            congestion_control_algorithm=self._configuration.congestion_control_algorithm,
            initial_rtt=self._configuration.initial_rtt,
            max_datagram_size=self._max_datagram_size,
            peer_completed_address_validation=not self._is_client,
            quic_logger=self._quic_logger,
            send_probe=self._send_probe,
            logger=self._logger,
        )

    # -- what the recovery and senders report -----------------------------------------

    def on_frames_sent(self, frames: list[SentFrame], now: float) -> None:
        self.packets_sent += 1
        for f in frames:
            self.bytes_sent[f.kind] += f.stop - f.start
            if self.controller is None:
                continue
            if f.kind is FrameKind.RETRANSMISSION:
                self.controller.on_retransmission_sent(
                    f.sender, f.start, f.stop, now, after_timeout=self._loss._pto_count > 0
                )
            elif f.kind is FrameKind.FIRST and (written := f.sender.written_at(f.start)) is not None:
                self.controller.on_first_sent(f.sender, f.start, f.stop, now, waited_s=now - written)

    def on_packet_resolved(self, record: PacketRecord, packet_number: int, *, lost: bool, now: float) -> None:
        if self.controller is not None:
            self.controller.on_packet_resolved(lost, packet_number, record.sent_at)
        if lost:
            self.packets_lost += 1
            self.meter.on_packet_lost(now, record.sent_at, record.frames)

    def _on_bytes_acked(self, sender: TrackedStreamSender, start: int, stop: int) -> None:
        self.meter.on_bytes_acked(sender, start, stop, self._now)
        if self.controller is not None and (run_start := sender.take_delivered()) is not None:
            written = sender.written_at(run_start)
            if written is not None:
                # It arrived half a round trip (srtt excludes the peer's ACK delay) plus
                # the ACK delay the peer reported before this ACK.
                arrived = self._now - self._loss.srtt_s / 2 - self._loss.last_ack_delay
                self.controller.on_delivered(written, arrived)

    # -- aioquic's interface ----------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        self._now = now
        super().receive_datagram(data, addr, now)

    def handle_timer(self, now: float) -> None:
        self._now = now
        super().handle_timer(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        self._now = now
        if self.controller is None or not self._handshake_confirmed:
            self._loss.recovery_started = False
            return super().datagrams_to_send(now)
        for stream_id in [i for i, s in self._tracked.items() if s.is_finished]:
            del self._tracked[stream_id]
        for sender in self._tracked.values():
            sender.note_writes(now)
        for record in self._loss.take_overdue(now):
            for f in record.frames:
                if f.kind is not FrameKind.COPY:
                    self.controller.on_overdue(f.sender, f.start, f.stop, now)
        streams = list(self._tracked.values())
        # Two passes. The data pass is aioquic's, under the congestion window and the
        # pacer, with copies held back so that they never take a new frame's room. The
        # copy pass then sends what the controller re-injected (including copies of the
        # retransmissions the data pass just sent), beyond the window by at most the
        # copies' bytes plus one datagram: each copy was admitted by the overhead budget
        # (a token bucket), so copies stay a bounded share of the stream. Its streams
        # serve nothing but copies; control frames aioquic has queued (ACK, MAX_DATA, a
        # probe) may ride along within that allowance, as they would in any packet.
        pacing_at: float | None = None  # when the data pass may send again; the copy pass keeps it
        copy_pass = False
        try:
            self._poll(now, streams)
            for s in streams:
                s.serving = Serving.DATA
            datagrams = []
            if self._loss.recovery_started:
                # RFC 9002 7.3.2: a sender that halves its window at once "can send a
                # single packet prior to reduction", which speeds up recovery "if the
                # data in the lost packet is retransmitted": one datagram's worth of
                # retransmitted data leaves now instead of waiting for ACKs to drain
                # the window below its new size.
                self._loss.recovery_started = False
                if self.autorec_config.retransmit_before_reduction:
                    for s in streams:
                        s.serving = Serving.RETRANSMISSIONS
                    with self._loss.beyond_window(self._max_datagram_size):
                        datagrams += super().datagrams_to_send(now)
                    for s in streams:
                        s.serving = Serving.DATA
            datagrams += super().datagrams_to_send(now)
            self._poll(now, streams)
            copies = sum(s.copy_pending_bytes for s in streams)
            if copies:
                pacing_at, copy_pass = self._pacing_at, True
                for s in streams:
                    s.serving = Serving.COPIES
                with self._loss.beyond_window(copies + self._max_datagram_size):
                    datagrams += super().datagrams_to_send(now)
        finally:  # whatever escaped, the next attempt starts from aioquic's own state
            if copy_pass:
                self._pacing_at = pacing_at
            for s in streams:
                s.serving = Serving.ALL
        return datagrams

    def _poll(self, now: float, streams: list[TrackedStreamSender]) -> None:
        assert self.controller is not None
        self.controller.poll(
            now,
            app_has_new_data=any(s.has_new_data for s in streams),
            srtt_s=self._loss.srtt_s,
            goodput_bytes=self.bytes_sent[FrameKind.FIRST],
            cwnd_room=self._loss.congestion_window - self._loss.bytes_in_flight,
        )

    def get_timer(self) -> float | None:
        timer_at = super().get_timer()
        if self.controller is not None and self._handshake_confirmed:
            for wake in (self.controller.next_wakeup(), self._loss.next_overdue_at()):
                if wake is not None and (timer_at is None or wake < timer_at):
                    timer_at = wake
        return timer_at

    def _get_or_create_stream(self, frame_type: int, stream_id: int) -> QuicStream:
        stream = super()._get_or_create_stream(frame_type, stream_id)
        self._track_new_streams()
        return stream

    def _get_or_create_stream_for_send(self, stream_id: int) -> QuicStream:
        stream = super()._get_or_create_stream_for_send(stream_id)
        self._track_new_streams()
        return stream

    def _track_new_streams(self) -> None:
        # Streams are created in batches (opening one opens all lower ones) and nothing
        # has been written to them yet, so their senders can be swapped safely here.
        for stream_id, stream in self._streams.items():
            if type(stream.sender) is QuicStreamSender and not stream.sender.is_finished:
                stream.sender = TrackedStreamSender(stream_id, writable=True, on_acked=self._on_bytes_acked)
                self._tracked[stream_id] = stream.sender

    # -- results ----------------------------------------------------------------------

    def recovery_stats(self) -> dict[str, Any]:
        first = self.bytes_sent[FrameKind.FIRST]
        stats: dict[str, Any] = self.meter.summary()
        stats.update(
            packets_sent=self.packets_sent,
            packets_lost=self.packets_lost,
            goodput_bytes=first,
            retransmitted_bytes=self.bytes_sent[FrameKind.RETRANSMISSION],
            copy_bytes=self.bytes_sent[FrameKind.COPY],
            overhead=self.bytes_sent[FrameKind.COPY] / first if first else 0.0,
            srtt_ms=self._loss.srtt_s * 1000,
        )
        if self.controller is not None:
            stats["copy_bytes_by_reason"] = dict(self.controller.copy_bytes_by_reason)
        return stats
