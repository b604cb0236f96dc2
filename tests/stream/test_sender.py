"""TrackedStreamSender: the duplicated-delivery guards, proven against stock aioquic."""

from __future__ import annotations

from aioquic.quic.packet_builder import QuicDeliveryState
from aioquic.quic.stream import QuicStreamSender
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.stream.sender import FrameKind, Serving, TrackedStreamSender

ACKED, LOST = QuicDeliveryState.ACKED, QuicDeliveryState.LOST
DATA = bytes(range(256)) * 16  # 4096 bytes


def sent_sender(cls=TrackedStreamSender, data: bytes = DATA, frame: int = 1000):
    sender = cls(stream_id=0, writable=True)
    sender.write(data, end_stream=True)
    frames = []
    while (f := sender.get_frame(frame)) is not None:
        frames.append(f)
    return sender, frames


def test_stock_sender_stalls_on_an_ack_below_its_buffer_start():
    # Why the guard exists: a copy's ACK arriving after the original's wedges stock aioquic.
    stock, _ = sent_sender(QuicStreamSender)
    stock.on_data_delivery(ACKED, 0, 1000, False)
    stock.on_data_delivery(ACKED, 0, 1000, False)  # the copy's ACK
    for start in range(1000, 4096, 1000):
        stock.on_data_delivery(ACKED, start, min(start + 1000, 4096), start + 1000 >= 4096)
    assert not stock.is_finished  # stuck for ever


def test_stock_sender_slices_a_stale_pending_copy_wrongly():
    stock, _ = sent_sender(QuicStreamSender)
    stock.on_data_delivery(LOST, 0, 1000, False)  # scheduled again...
    stock.on_data_delivery(ACKED, 0, 2000, False)  # ...but a copy got it acknowledged
    frame = stock.get_frame(1000)
    assert frame is not None and frame.data != DATA[frame.offset : frame.offset + len(frame.data)]


def test_duplicate_and_stale_acks_drain_the_buffer():
    sender, frames = sent_sender()
    for f in frames:
        sender.on_data_delivery(ACKED, f.offset, f.offset + len(f.data), f.fin)
        sender.on_data_delivery(ACKED, f.offset, f.offset + len(f.data), f.fin)
    sender.on_data_delivery(ACKED, 0, 4096, True)
    assert sender.is_finished and sender.acked_offset == 4096
    assert sender.get_frame(1000) is None


def test_ack_while_copy_pending_sends_no_stale_frame():
    sender, _ = sent_sender()
    assert sender.reinject(0, 2000) == 2000
    sender.on_data_delivery(ACKED, 0, 1500, False)
    frame = sender.get_frame(5000)
    assert frame is not None
    assert (frame.offset, frame.data) == (1500, DATA[1500:2000])
    assert sender.take_registered_kind(1500, 2000) is FrameKind.COPY


def test_loss_of_acknowledged_bytes_schedules_nothing():
    sender, _ = sent_sender()
    sender.on_data_delivery(ACKED, 0, 1000, False)
    sender.on_data_delivery(LOST, 0, 1000, False)  # a copy of acked bytes got lost
    sender.on_data_delivery(LOST, 3000, 4096, True)
    frame = sender.get_frame(5000)
    assert (frame.offset, len(frame.data), frame.fin) == (3000, 1096, True)
    assert sender.take_registered_kind(3000, 4096) is FrameKind.RETRANSMISSION


def test_frames_are_split_where_their_kind_changes():
    sender = TrackedStreamSender(stream_id=0, writable=True)
    sender.write(DATA[:2000])
    sender.get_frame(1000)
    sender.get_frame(1000)
    assert sender.take_registered_kind(1000, 2000) is FrameKind.FIRST  # skips (0, 1000)
    sender.on_data_delivery(LOST, 0, 1000, False)
    sender.reinject(1000, 2000)
    sender.write(DATA[2000:3000])
    kinds = []
    while (f := sender.get_frame(5000)) is not None:
        kinds.append((f.offset, f.offset + len(f.data)))
    # The retransmission may run on into new data, as in aioquic; copies stand alone.
    assert kinds == [(0, 1000), (1000, 2000), (2000, 3000)]
    assert [sender.take_registered_kind(*k) for k in kinds] == [
        FrameKind.RETRANSMISSION,
        FrameKind.COPY,
        FrameKind.FIRST,
    ]


def test_serving_modes_keep_copies_and_data_apart():
    sender = TrackedStreamSender(stream_id=0, writable=True)
    sender.write(DATA[:3000], end_stream=True)
    for start in (0, 1000):
        sender.get_frame(1000)
        sender.take_registered_kind(start, start + 1000)
    sender.on_data_delivery(LOST, 0, 1000, False)  # a retransmission is due
    sender.reinject(1000, 2000)  # and a copy
    sender.serving = Serving.DATA
    data = []
    while (f := sender.get_frame(5000)) is not None:
        data.append((f.offset, f.offset + len(f.data), f.fin))
    # The retransmission and the new bytes, never the copy; the copy stays pending.
    assert data == [(0, 1000, False), (2000, 3000, True)]
    assert sender.copy_pending_bytes == 1000 and not sender.buffer_is_empty
    sender.serving = Serving.COPIES
    f = sender.get_frame(5000)
    assert (f.offset, f.data) == (1000, DATA[1000:2000])
    assert sender.get_frame(5000) is None
    assert [sender.take_registered_kind(*k[:2]) for k in data] == [FrameKind.RETRANSMISSION, FrameKind.FIRST]
    assert sender.take_registered_kind(1000, 2000) is FrameKind.COPY
    sender.serving = Serving.ALL
    assert sender.get_frame(5000) is None and sender.buffer_is_empty
    for start in (0, 1000, 2000):
        sender.on_data_delivery(ACKED, start, start + 1000, start == 2000)
    sender.on_data_delivery(ACKED, 1000, 2000, False)  # the copy's ACK
    assert sender.is_finished


def test_next_offset_is_where_the_served_view_starts():
    # aioquic sizes a STREAM frame's offset field from next_offset before asking for the frame:
    # offset 0 takes no field, 1000 takes two bytes. With a copy pending at 0, the data pass's
    # frame starts at 1000, so next_offset must say 1000 or the frame overruns its packet.
    sender = TrackedStreamSender(stream_id=0, writable=True)
    sender.write(DATA[:3000], end_stream=True)
    assert sender.get_frame(1000).offset == 0
    sender.take_registered_kind(0, 1000)
    assert sender.reinject(0, 1000) == 1000
    sender.serving = Serving.ALL
    assert sender.next_offset == 0  # stock: the lowest pending byte, the copy
    sender.serving = Serving.DATA
    assert sender.next_offset == 1000 == sender.get_frame(500).offset
    sender.serving = Serving.COPIES
    assert sender.next_offset == 0 == sender.get_frame(500).offset
    sender.serving = Serving.RETRANSMISSIONS
    assert sender.next_offset == sender._buffer_stop and sender.get_frame(500) is None  # nothing lost


actions = st.lists(
    st.tuples(st.sampled_from(["send", "ack", "lose", "write"]), st.integers(0, 50), st.integers(1, 1500)),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(actions=actions)
def test_same_frames_as_stock_aioquic_when_nothing_is_duplicated(actions):
    """Without duplicates the guards change nothing: identical frames, identical state."""
    stock = QuicStreamSender(stream_id=0, writable=True)
    tracked = TrackedStreamSender(stream_id=0, writable=True)
    in_flight: list[tuple[int, int, bool]] = []
    written = 0
    for action, pick, size in actions:
        if action == "write" and written < 20_000:
            chunk = bytes((written + i) % 251 for i in range(size))
            written += size
            stock.write(chunk)
            tracked.write(chunk)
        elif action == "send":
            a, b = stock.get_frame(size), tracked.get_frame(size)
            assert (a is None) == (b is None)
            if a is not None:
                assert (a.offset, a.data, a.fin) == (b.offset, b.data, b.fin)
                in_flight.append((a.offset, a.offset + len(a.data), a.fin))
        elif action in ("ack", "lose") and in_flight:
            start, stop, fin = in_flight.pop(pick % len(in_flight))
            state = ACKED if action == "ack" else LOST
            stock.on_data_delivery(state, start, stop, fin)
            tracked.on_data_delivery(state, start, stop, fin)
        assert (stock._buffer_start, stock.next_offset, stock.is_finished, stock.buffer_is_empty) == (
            tracked._buffer_start,
            tracked.next_offset,
            tracked.is_finished,
            tracked.buffer_is_empty,
        )


def test_write_times_and_in_order_delivery():
    sender = TrackedStreamSender(0, True)
    assert sender.written_at(0) is None and sender.take_delivered() is None
    sender.write(bytes(1000))
    sender.note_writes(1.0)
    sender.note_writes(1.5)  # nothing new written: no stamp
    sender.write(bytes(500))
    sender.note_writes(2.0)
    assert [sender.written_at(o) for o in (0, 999, 1000, 1499)] == [1.0, 1.0, 2.0, 2.0]
    assert sender.written_at(1500) is None  # not written yet
    while sender.get_frame(600) is not None:
        pass
    sender.on_data_delivery(QuicDeliveryState.ACKED, 600, 1200, False)
    assert sender.take_delivered() is None  # a gap at 0: nothing new in order
    sender.on_data_delivery(QuicDeliveryState.ACKED, 0, 600, False)
    assert sender.take_delivered() == 0 and sender.acked_offset == 1200
    assert sender.take_delivered() is None  # once per advance
    sender.on_data_delivery(QuicDeliveryState.ACKED, 1200, 1500, False)
    assert sender.take_delivered() == 1200
    assert sender.written_at(1200) == 2.0


def test_write_times_survive_forgetting_acknowledged_writes():
    sender = TrackedStreamSender(0, True)
    for i in range(200):  # 200 writes of 100 bytes, stamped 0.0, 0.01, ...
        sender.write(bytes(100))
        sender.note_writes(i / 100)
    while sender.get_frame(1200) is not None:
        pass
    sender.on_data_delivery(QuicDeliveryState.ACKED, 0, 15_050, False)
    assert sender.take_delivered() == 0
    sender.note_writes(5.0)  # forgets the 150 writes acknowledged in order
    assert len(sender._write_stops) == len(sender._write_times) == 50
    assert [sender.written_at(o) for o in (15_050, 15_099, 15_100, 19_999)] == [1.5, 1.5, 1.51, 1.99]


def test_retransmissions_mode_serves_only_lost_data_with_its_fin():
    sender = TrackedStreamSender(0, True)
    sender.write(bytes(3000), end_stream=True)
    frames = [sender.get_frame(1000) for _ in range(3)]
    assert frames[-1].fin
    sender.on_data_delivery(QuicDeliveryState.ACKED, 0, 1000, False)
    sender.on_data_delivery(QuicDeliveryState.LOST, 1000, 2000, False)
    sender.on_data_delivery(QuicDeliveryState.LOST, 2000, 3000, True)
    sender.serving = Serving.RETRANSMISSIONS
    first = sender.get_frame(1000)
    second = sender.get_frame(1000)
    assert (first.offset, len(first.data), first.fin) == (1000, 1000, False)
    assert (second.offset, len(second.data), second.fin) == (2000, 1000, True)
    assert sender.get_frame(1000) is None and sender.buffer_is_empty


def test_retransmissions_mode_leaves_new_data_and_a_lone_fin_to_the_data_pass():
    sender = TrackedStreamSender(0, True)
    sender.write(bytes(2000))
    sender.get_frame(1000)
    sender.on_data_delivery(QuicDeliveryState.LOST, 0, 1000, False)
    sender.serving = Serving.RETRANSMISSIONS
    frame = sender.get_frame(1200)
    assert (frame.offset, len(frame.data)) == (0, 1000)  # the lost bytes, not the new ones after them
    assert sender.get_frame(1200) is None and not sender.buffer_is_empty
    sender.serving = Serving.DATA
    assert sender.get_frame(1200).offset == 1000
    # Only the FIN was lost: it is not retransmitted data, so the data pass sends it.
    done = TrackedStreamSender(0, True)
    done.write(bytes(100), end_stream=True)
    done.get_frame(1000)
    done.on_data_delivery(QuicDeliveryState.ACKED, 0, 100, False)
    done.on_data_delivery(QuicDeliveryState.LOST, 100, 100, True)
    done.serving = Serving.RETRANSMISSIONS
    assert done.get_frame(1000) is None
    done.serving = Serving.DATA
    assert done.get_frame(1000).fin
