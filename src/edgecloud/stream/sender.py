"""A QUIC stream sender that stays correct when data is delivered more than once.

AutoRec (arXiv 2511.22046, section 4) recovers losses faster by re-injecting copies of
unacknowledged stream data. A copy means the same byte range can be in flight in several
packets at once, so it can be acknowledged twice, lost once and acknowledged once, or
acknowledged while another copy still waits to be sent. Stock aioquic 1.7.x's
``QuicStreamSender`` assumes each byte is in at most one live packet and breaks:

* an ACK for a range below the buffer start is added to ``_acked`` and never shifted out,
  so the buffer start never advances again and the stream never finishes;
* a range still in ``_pending`` when it is acknowledged (and the buffer trimmed) is sliced
  at a negative buffer index, which yields an empty or a wrong frame.

:class:`TrackedStreamSender` subclasses it and guards both paths: every ACK is clipped to
the bytes not yet acknowledged, acknowledged bytes leave every pending set, and a loss
report only reschedules bytes that are still unacknowledged. On data delivered once the
behaviour is exactly aioquic's (a property test checks this frame by frame).

It also labels each frame it hands out as a first transmission, a loss-triggered
retransmission (a frame carrying any bytes that were declared lost) or a proactive copy,
which the recovery meter and the AutoRec controller need, and it reports when bytes
become acknowledged. Its :attr:`~TrackedStreamSender.serving` mode lets the connection send
copies in a pass of their own (see ``AutoRecConnection.datagrams_to_send``): in
:attr:`Serving.DATA` it hands out everything but copies, in :attr:`Serving.COPIES` nothing
but copies.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable
from enum import Enum

from aioquic.quic.packet import QuicStreamFrame
from aioquic.quic.packet_builder import QuicDeliveryState
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.stream import QuicStreamSender


class FrameKind(Enum):
    FIRST = "first"
    RETRANSMISSION = "retransmission"
    COPY = "copy"


class Serving(Enum):
    """Which pending bytes ``get_frame`` may hand out."""

    ALL = "all"
    DATA = "data"  # first transmissions and retransmissions, never a copy
    COPIES = "copies"  # copies only
    RETRANSMISSIONS = "retransmissions"  # data declared lost, not yet sent again


# Called with (sender, start, stop) for bytes that just became acknowledged.
AckListener = Callable[["TrackedStreamSender", int, int], None]


def intersect(ranges: RangeSet, start: int, stop: int) -> list[tuple[int, int]]:
    """The parts of ``[start, stop)`` covered by ``ranges``, in order."""
    out = []
    for r in ranges:
        lo, hi = max(r.start, start), min(r.stop, stop)
        if lo < hi:
            out.append((lo, hi))
        if r.start >= stop:
            break
    return out


def subtract_all(start: int, stop: int, ranges: RangeSet) -> list[tuple[int, int]]:
    """The parts of ``[start, stop)`` not covered by ``ranges``, in order."""
    rest = RangeSet([range(start, stop)]) if start < stop else RangeSet()
    for r in ranges:
        if r.start >= stop:
            break
        rest.subtract(r.start, r.stop)
    return [(r.start, r.stop) for r in rest]


class TrackedStreamSender(QuicStreamSender):
    """aioquic's stream sender, safe under duplicated delivery and labelling its frames."""

    def __init__(self, stream_id: int | None, writable: bool, on_acked: AckListener | None = None) -> None:
        super().__init__(stream_id=stream_id, writable=writable)
        self._on_acked = on_acked
        self._retx_pending = RangeSet()
        self._copy_pending = RangeSet()
        # Frames handed out by get_frame, in order, until the connection registers the
        # packet that carries them (see TrackedRecovery.on_packet_sent).
        self._unregistered: deque[tuple[int, int, FrameKind]] = deque()
        self.bytes_sent: dict[FrameKind, int] = dict.fromkeys(FrameKind, 0)
        self.serving = Serving.ALL
        # When the application wrote what: the end offset and time of each write the
        # connection noticed (note_writes), for bytes not yet acknowledged in order.
        self._write_stops: list[int] = []
        self._write_times: list[float] = []
        self._delivered_offset = 0  # acked_offset as of the last take_delivered()

    # -- what the controller and the meter read ---------------------------------------

    @property
    def stream_id(self) -> int | None:
        return self._stream_id

    @property
    def acked_offset(self) -> int:
        """Every byte below this offset has been acknowledged."""
        return self._buffer_start

    @property
    def was_reset(self) -> bool:
        """The stream was reset (RESET_STREAM, or the viewer's STOP_SENDING): it sends nothing
        more, copies included."""
        return self._reset_error_code is not None

    def is_acked(self, start: int, stop: int) -> bool:
        return not self.unacked_in(start, stop)

    def unacked_in(self, start: int, stop: int) -> list[tuple[int, int]]:
        """The parts of ``[start, stop)`` already sent and not yet acknowledged."""
        lo, hi = max(start, self._buffer_start), min(stop, self.highest_offset)
        if lo >= hi:
            return []
        return subtract_all(lo, hi, self._acked)

    @property
    def has_new_data(self) -> bool:
        """Whether the application wrote bytes that were never sent."""
        return self._buffer_stop > self.highest_offset

    @property
    def copy_pending_bytes(self) -> int:
        return sum(r.stop - r.start for r in self._copy_pending)

    def take_registered_kind(self, start: int, stop: int) -> FrameKind:
        """Pop the label of the frame ``[start, stop)`` as its packet is registered.

        Frames are registered in the order get_frame produced them; a frame of a packet
        that was abandoned while being built is skipped over.
        """
        while self._unregistered:
            f_start, f_stop, kind = self._unregistered.popleft()
            if (f_start, f_stop) == (start, stop):
                return kind
        return FrameKind.FIRST

    def note_writes(self, now: float) -> None:
        """Stamp the bytes written since the last call as written at ``now``.

        The connection calls this before each transmission attempt, which follows every
        write, so a byte's stamp is when it joined the send buffer.
        """
        if self._buffer_stop > (self._write_stops[-1] if self._write_stops else 0):
            self._write_stops.append(self._buffer_stop)
            self._write_times.append(now)
        done = bisect.bisect_right(self._write_stops, self._buffer_start)
        if done > 64:  # forget the writes acknowledged in order, a batch at a time
            del self._write_stops[:done], self._write_times[:done]

    def written_at(self, offset: int) -> float | None:
        """When the byte at ``offset`` was written, if note_writes saw it."""
        i = bisect.bisect_right(self._write_stops, offset)
        return self._write_times[i] if i < len(self._write_times) else None

    def take_delivered(self) -> int | None:
        """Where the run of bytes newly acknowledged in order starts, once per advance of
        :attr:`acked_offset` (None if it has not advanced since the last call)."""
        if self._buffer_start <= self._delivered_offset:
            return None
        start, self._delivered_offset = self._delivered_offset, self._buffer_start
        return start

    # -- AutoRec's reinjection --------------------------------------------------------

    def reinject(self, start: int, stop: int) -> int:
        """Schedule a copy of the unacknowledged, not already pending bytes in a range.

        Returns the number of bytes scheduled.
        """
        if self.was_reset:
            return 0
        scheduled = 0
        for lo, hi in self.unacked_in(start, stop):
            for c_lo, c_hi in subtract_all(lo, hi, self._pending):
                self._pending.add(c_lo, c_hi)
                self._copy_pending.add(c_lo, c_hi)
                scheduled += c_hi - c_lo
        if scheduled:
            self.buffer_is_empty = False
        return scheduled

    # -- aioquic's interface ----------------------------------------------------------

    def _serves_a_view(self) -> bool:
        return not (self.serving is Serving.ALL or (self.serving is Serving.DATA and not len(self._copy_pending)))

    def _view(self) -> RangeSet:
        """The pending bytes the current mode serves: copies only, retransmissions only, or
        all but copies."""
        view = RangeSet()
        if self.serving is Serving.COPIES:
            for r in self._copy_pending:
                view.add(r.start, r.stop)
        elif self.serving is Serving.RETRANSMISSIONS:
            for r in self._retx_pending:
                for lo, hi in intersect(self._pending, r.start, r.stop):
                    view.add(lo, hi)
        else:
            for r in self._pending:
                view.add(r.start, r.stop)
        if self.serving is not Serving.COPIES:
            for r in self._copy_pending:
                view.subtract(r.start, r.stop)
        return view

    @property
    def next_offset(self) -> int:
        """Where the next frame starts. aioquic sizes the frame's offset field from it before it
        asks for the frame, so while a view is served it is the view's first byte (the whole
        pending set may start lower, with a shorter offset, and the frame would overrun the packet)."""
        if not self._serves_a_view():
            return super().next_offset
        view = self._view()
        return view[0].start if len(view) else self._buffer_stop

    def get_frame(self, max_size: int, max_offset: int | None = None) -> QuicStreamFrame | None:
        if not self._serves_a_view():
            return self._get_frame(max_size, max_offset)
        # Serve from a view of the pending bytes; what the frame takes leaves the real pending set.
        pending = self._pending
        view = self._view()
        if not len(view) and self.serving is not Serving.DATA:
            return None  # (DATA may still owe a FIN of its own)
        self._pending = view
        try:
            frame = self._get_frame(max_size, max_offset)
        finally:
            self._pending = pending
        if frame is not None and frame.data:
            pending.subtract(frame.offset, frame.offset + len(frame.data))
        self.buffer_is_empty = not (len(pending) or self._pending_eof)
        return frame

    def _get_frame(self, max_size: int, max_offset: int | None) -> QuicStreamFrame | None:
        # A frame never mixes copies with other data, so that copies (AutoRec's own
        # traffic) can be told apart; without copies frames are exactly aioquic's.
        kind = FrameKind.FIRST
        if len(self._pending):
            r = self._pending[0]
            boundary = r.stop
            if r.start in self._copy_pending:
                kind = FrameKind.COPY
                boundary = _range_containing(self._copy_pending, r.start).stop
            else:
                boundary = min(boundary, _next_start(self._copy_pending, r.start, boundary))
                if intersect(self._retx_pending, r.start, boundary):
                    kind = FrameKind.RETRANSMISSION
            max_size = min(max_size, boundary - r.start)

        frame = super().get_frame(max_size, max_offset)
        if frame is not None and frame.data:
            start, stop = frame.offset, frame.offset + len(frame.data)
            self._retx_pending.subtract(start, stop)
            self._copy_pending.subtract(start, stop)
            self.bytes_sent[kind] += stop - start
            self._unregistered.append((start, stop, kind))
        return frame

    def on_data_delivery(self, delivery: QuicDeliveryState, start: int, stop: int, fin: bool) -> None:
        if self._reset_error_code is not None:
            return
        if delivery == QuicDeliveryState.ACKED:
            for lo, hi in subtract_all(max(start, self._buffer_start), stop, self._acked):
                # Acknowledged bytes must leave every pending set before the buffer is
                # trimmed, or get_frame would slice below the buffer start.
                self._pending.subtract(lo, hi)
                self._retx_pending.subtract(lo, hi)
                self._copy_pending.subtract(lo, hi)
                super().on_data_delivery(delivery, lo, hi, False)
                if self._on_acked is not None:
                    self._on_acked(self, lo, hi)
            if fin and not self._acked_fin:
                super().on_data_delivery(delivery, self._buffer_fin, self._buffer_fin, True)
        else:
            # Lost bytes that are still unacknowledged are due again; a copy of them
            # already waiting to be sent now serves as their retransmission.
            for lo, hi in self.unacked_in(start, stop):
                self._pending.add(lo, hi)
                self._copy_pending.subtract(lo, hi)
                self._retx_pending.add(lo, hi)
                self.buffer_is_empty = False
            if fin and not self._acked_fin:
                self._pending_eof = True
                self.buffer_is_empty = False


def _next_start(ranges: RangeSet, offset: int, default: int) -> int:
    """Where the first range of ``ranges`` beginning after ``offset`` starts."""
    for r in ranges:
        if r.start > offset:
            return min(r.start, default)
    return default


def _range_containing(ranges: RangeSet, offset: int) -> range:
    for r in ranges:
        if r.start <= offset < r.stop:
            return r
    raise KeyError(offset)
