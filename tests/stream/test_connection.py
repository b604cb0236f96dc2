"""Sans-I/O tests of AutoRecConnection on a virtual clock: every stream finishes, the
sender's buffer drains and the bytes arrive exactly once, in order, whatever is lost."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgecloud.stream.controller import AutoRecConfig
from edgecloud.stream.meter import SentFrame
from edgecloud.stream.sender import FrameKind

# Generous limits so AutoRec copies whatever the scripted losses call for.
EAGER = AutoRecConfig(overhead_budget=1.0, recovery_target_ms=10.0)
MODES = {"baseline": None, "autorec": EAGER}


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def bursts(count: int, size: int, gap_s: float, start: float) -> tuple[list[tuple[float, bytes, bool]], bytes]:
    writes, body = [], b""
    for i in range(count):
        chunk = payload(size, seed=i)
        writes.append((start + i * gap_s, chunk, i == count - 1))
        body += chunk
    return writes, body


def assert_delivered_exactly_once(pair, body: bytes) -> None:
    assert bytes(pair.received) == body
    assert pair.end_stream_events == 1
    assert pair.sender.is_finished
    assert pair.sender.acked_offset == len(body)
    assert pair.stream_id not in pair.server._streams or pair.server._streams[pair.stream_id].is_finished


def covers(frames: list[SentFrame], offset: int, kinds: set[FrameKind]) -> bool:
    return any(f.kind in kinds and f.start <= offset < f.stop for f in frames)


@pytest.mark.parametrize("mode", MODES)
def test_tail_loss_at_end_of_burst(quic_pair, mode):
    pair = quic_pair(autorec=MODES[mode])
    writes, body = bursts(3, 6000, gap_s=0.5, start=pair.now)
    # The last bytes of the first burst are lost the first time they are sent.
    pair.drop_server = lambda i, frames: covers(frames, 5999, {FrameKind.FIRST})
    pair.run_until(pair.now + 5.0, writes)
    assert pair.dropped
    assert_delivered_exactly_once(pair, body)
    assert pair.server.meter.events and all(e.recovered_at is not None for e in pair.server.meter.events)


@pytest.mark.parametrize("mode", MODES)
def test_lost_retransmission(quic_pair, mode):
    pair = quic_pair(autorec=MODES[mode])
    writes, body = bursts(4, 5000, gap_s=0.2, start=pair.now)
    seen: dict[FrameKind, int] = {}

    def drop(index, frames):
        # Byte 2000 is lost on its first transmission and on its first retransmission.
        for kind in (FrameKind.FIRST, FrameKind.RETRANSMISSION):
            if covers(frames, 2000, {kind}) and seen.get(kind, 0) == 0:
                seen[kind] = 1
                return True
        return False

    pair.drop_server = drop
    pair.run_until(pair.now + 8.0, writes)
    assert seen == {FrameKind.FIRST: 1, FrameKind.RETRANSMISSION: 1}
    assert_delivered_exactly_once(pair, body)
    events = pair.server.meter.events
    assert [e.retransmission for e in events] == [False, True]
    assert all(e.recovered_at is not None for e in events)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("gap_s", [0.03, 1.5], ids=["gap-shorter-than-pto", "gap-longer-than-pto"])
def test_loss_during_off_gaps(quic_pair, mode, gap_s):
    pair = quic_pair(autorec=MODES[mode])
    writes, body = bursts(6, 3000, gap_s=gap_s, start=pair.now)
    pair.drop_server = lambda i, frames: bool(frames) and i % 4 == 0
    pair.run_until(pair.now + 6 * gap_s + 10.0, writes)
    assert pair.dropped
    assert_delivered_exactly_once(pair, body)


def test_autorec_copies_retransmissions_and_recovers_faster(quic_pair):
    results = {}
    for mode, config in MODES.items():
        pair = quic_pair(autorec=config, one_way_s=0.05)
        writes, body = bursts(4, 5000, gap_s=0.2, start=pair.now)
        dropped_kinds: set[FrameKind] = set()

        def drop(index, frames, dropped_kinds=dropped_kinds):
            for kind in (FrameKind.FIRST, FrameKind.RETRANSMISSION):
                if covers(frames, 2000, {kind}) and kind not in dropped_kinds:
                    dropped_kinds.add(kind)
                    return True
            return False

        pair.drop_server = drop
        pair.run_until(pair.now + 8.0, writes)
        assert_delivered_exactly_once(pair, body)
        results[mode] = pair.server
    baseline, autorec = results["baseline"], results["autorec"]
    assert baseline.bytes_sent[FrameKind.COPY] == 0
    assert autorec.bytes_sent[FrameKind.COPY] > 0
    retx = [e for e in autorec.meter.events if e.retransmission]
    base_retx = [e for e in baseline.meter.events if e.retransmission]
    assert retx and base_retx
    # A copy of the lost retransmission left before loss detection could even fire.
    assert retx[0].latency_s < base_retx[0].latency_s


def test_copies_leave_beyond_a_full_window_within_the_budget(quic_pair):
    # Bursts larger than the congestion window, so the window is full when a loss is
    # retransmitted; every seventh packet of new data is lost.
    config = AutoRecConfig(overhead_budget=0.05, recovery_target_ms=10.0)
    pair = quic_pair(autorec=config, one_way_s=0.05)
    writes, body = bursts(6, 30_000, gap_s=0.5, start=pair.now)
    copies_while_window_bound = []

    def drop(index, frames):
        if any(f.kind is FrameKind.COPY for f in frames) and pair.sender.has_new_data:
            copies_while_window_bound.append(index)
        return bool(frames) and all(f.kind is FrameKind.FIRST for f in frames) and index % 7 == 0

    pair.drop_server = drop
    pair.run_until(pair.now + 20.0, writes)
    assert_delivered_exactly_once(pair, body)
    # Copies went out while new data still waited for the window...
    assert copies_while_window_bound
    # ...yet never beyond the budget, and a packet of copies holds no window room.
    server = pair.server
    assert 0 < server.bytes_sent[FrameKind.COPY] <= config.overhead_budget * server.bytes_sent[FrameKind.FIRST]
    assert server._loss.bytes_in_flight == 0


def test_ack_arriving_while_copy_is_pending(quic_pair):
    pair = quic_pair(autorec=EAGER)
    body = payload(4000)
    pair.write(body, end_stream=True)
    sender = pair.sender
    pair.run_until(pair.now + 0.01)  # sent, not yet acknowledged
    assert sender.reinject(0, 4000) > 0
    # The ACK for the originals arrives before the copies can leave.
    pair.server._loss._pacer.packet_time = None
    pair.run_until(pair.now + 1.0)
    assert_delivered_exactly_once(pair, body)
    assert sender.copy_pending_bytes == 0


def test_duplicate_acks_from_the_client(quic_pair):
    # The client's ACKs are duplicated on the link: every datagram arrives twice.
    pair = quic_pair(autorec=EAGER)
    original = pair._push

    def duplicate(at, dest, data):
        original(at, dest, data)
        if dest == "server":
            original(at + 0.001, dest, data)

    pair._push = duplicate
    writes, body = bursts(5, 4000, gap_s=0.1, start=pair.now)
    pair.drop_server = lambda i, frames: bool(frames) and i % 5 == 1
    pair.run_until(pair.now + 8.0, writes)
    assert_delivered_exactly_once(pair, body)


# The fixture is a factory: each example builds its own pair.
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    drops=st.sets(st.integers(min_value=0, max_value=60), max_size=20),
    eager=st.booleans(),
    gap_ms=st.sampled_from([10, 40, 400]),
)
def test_any_loss_pattern_delivers_exactly_once(quic_pair, drops, eager, gap_ms):
    pair = quic_pair(autorec=EAGER if eager else None)
    writes, body = bursts(5, 3500, gap_s=gap_ms / 1000, start=pair.now)
    pair.drop_server = lambda i, frames: i in drops
    pair.run_until(pair.now + 30.0, writes)
    assert_delivered_exactly_once(pair, body)


def test_autorec_copies_an_overdue_burst_tail_before_the_pto(quic_pair):
    latencies = {}
    # A budget that also covers the reserves kept for copies after a timeout and for first
    # copies: 12 kB of stream is too little for 10 % of it to hold a packet beyond them.
    modes = {"baseline": None, "autorec": AutoRecConfig(overhead_budget=3.0, recovery_target_ms=10.0)}
    for mode, config in modes.items():
        pair = quic_pair(autorec=config, one_way_s=0.05)
        writes, body = bursts(2, 6000, gap_s=1.0, start=pair.now)
        # The last packet of the first burst is lost: no later packet is acknowledged
        # until the next burst, so only a PTO (baseline) or a copy (AutoRec) recovers it.
        # An earlier loss in the burst tells the adapter the link loses packets.
        pair.drop_server = lambda i, frames: (
            covers(frames, 5999, {FrameKind.FIRST}) or covers(frames, 10, {FrameKind.FIRST})
        )
        pair.run_until(pair.now + 5.0, writes)
        assert_delivered_exactly_once(pair, body)
        tail = [e for e in pair.server.meter.events if e.sent_at == max(x.sent_at for x in pair.server.meter.events)]
        latencies[mode] = tail[0].latency_s
        if config is not None:
            assert pair.server.bytes_sent[FrameKind.COPY] > 0
    assert latencies["autorec"] < latencies["baseline"]


@pytest.mark.parametrize("before_reduction", [True, False])
def test_retransmission_leaves_before_the_halved_window_drains(quic_pair, before_reduction):
    # One burst three times the initial window, so the window is full when the loss is
    # found; no budget, so no copies: only the retransmission itself is timed.
    config = AutoRecConfig(overhead_budget=0.0, retransmit_before_reduction=before_reduction)
    pair = quic_pair(autorec=config, one_way_s=0.05)
    writes, body = bursts(1, 36_000, gap_s=1.0, start=pair.now)
    pair.drop_server = lambda i, frames: covers(frames, 3000, {FrameKind.FIRST})
    pair.run_until(pair.now + 5.0, writes)
    assert_delivered_exactly_once(pair, body)
    [loss] = pair.server.meter.events
    lost = next(t for t in pair.transmissions if t.start <= 3000 < t.stop and t.arrived_at is None)
    retransmitted_at = sorted(t.sent_at for t in pair.transmissions if t.start <= 3000 < t.stop)[1]
    if before_reduction:  # RFC 9002 7.3.2: one packet before the reduction, at once
        assert retransmitted_at == loss.detected_at
        # ...and nothing but the lost data: no new data slipped out beyond the window
        at_once = [(t.start, t.stop) for t in pair.transmissions if t.sent_at == loss.detected_at]
        assert at_once == [(lost.start, lost.stop)]
    else:  # aioquic as is: it waits until ACKs bring in-flight below the halved window
        assert retransmitted_at > loss.detected_at + 0.01


@pytest.mark.parametrize("protect", [True, False])
def test_data_that_waited_long_in_the_send_buffer_gets_a_copy(quic_pair, protect):
    # Bursts of 30 kB every 0.5 s, larger than the window, so their tails wait in the send
    # buffer; one packet in 13 is lost. Late copies leave a reserve for copies of
    # retransmissions, so a generous budget.
    config = AutoRecConfig(overhead_budget=1.0, protect_late_data=protect)
    pair = quic_pair(autorec=config, one_way_s=0.05)
    writes, body = bursts(10, 30_000, gap_s=0.5, start=pair.now)
    pair.drop_server = lambda i, frames: bool(frames) and i % 13 == 0
    pair.run_until(pair.now + 30.0, writes)
    assert_delivered_exactly_once(pair, body)
    controller = pair.server.controller
    assert controller.delay_record_s > 0.1
    if protect:
        assert controller.copy_bytes_by_reason["late"] > 0
    else:
        assert controller.copy_bytes_by_reason["late"] == 0


@pytest.mark.parametrize(
    ("size", "gap_s", "one_way_s", "outage_s", "lossy_after"),
    [
        (3000, 0.05, 0.05, 2.0, False),  # the collapse alone
        (3000, 0.02, 0.02, 3.0, True),  # then losses of packets sent before it
    ],
)
def test_persistent_congestion_starts_no_recovery_period(quic_pair, size, gap_s, one_way_s, outage_s, lossy_after):
    # An early loss starts a recovery period; then the link is down while the stream goes
    # on, so the ACK after the outage declares persistent congestion (RFC 9002 7.6.2), which
    # also moves NewReno's recovery start. The window collapses to its minimum, and the
    # packet before the reduction (7.3.2) must not go beyond it: not at the collapse, and not
    # when a packet sent before the collapse is declared lost afterwards (aioquic then starts
    # a new recovery period, as RFC 9002's pseudo-code does).
    pair = quic_pair(autorec=AutoRecConfig(overhead_budget=0.0), one_way_s=one_way_s)
    writes, body = bursts(int(5 / gap_s), size, gap_s=gap_s, start=pair.now)
    outage = (pair.now + 1.0, pair.now + 1.0 + outage_s)

    def drop(i: int, frames: list[SentFrame]) -> bool:
        if outage[0] <= pair.now < outage[1] or covers(frames, 6000, {FrameKind.FIRST}):
            return True
        return lossy_after and pair.now >= outage[1] and i % 7 == 0

    pair.drop_server = drop
    loss = pair.server._loss
    calls = []
    lost = loss._on_packets_lost

    def spy(**kwargs):
        before = loss.recovery_started
        lost(**kwargs)
        newest = max((p.sent_time for p in kwargs["packets"] if p.in_flight), default=None)
        calls.append((kwargs.get("persistent_congestion", False), before, loss.recovery_started, newest))

    loss._on_packets_lost = spy
    pair.run_until(pair.now + 30.0, writes)
    assert_delivered_exactly_once(pair, body)
    assert any(started for persistent, _, started, _ in calls if not persistent)  # the early loss
    [collapse] = [i for i, (persistent, *_) in enumerate(calls) if persistent]
    assert not calls[collapse][2]
    # Losses after the collapse start a recovery period only for packets sent after it.
    after = [(before, started, newest) for _, before, started, newest in calls[collapse + 1 :]]
    if lossy_after:
        assert any(newest is not None and newest < loss._collapsed_at for _, _, newest in after)  # the case in point
    assert all(newest > loss._collapsed_at for before, started, newest in after if started and not before)


# --- lost ACKs ---------------------------------------------------------------------------
# Lost ACKs are what make copies spurious (their bytes had arrived; the server did not know)
# and what make ACKs stale (a later ACK covers bytes acknowledged since through a copy or a
# retransmission). The stream must still finish with every byte delivered once.


def arrived_more_than_once(pair) -> int:
    """Stream bytes the client received in two or more datagrams (spurious copies or retransmissions)."""
    arrivals: dict[int, int] = {}
    for t in pair.transmissions:
        if t.arrived_at is not None:
            for offset in range(t.start, t.stop):
                arrivals[offset] = arrivals.get(offset, 0) + 1
    return sum(1 for count in arrivals.values() if count > 1)


@pytest.mark.parametrize("mode", MODES)
def test_lost_acks_deliver_exactly_once(quic_pair, mode):
    # Two ACK datagrams in three are lost after the handshake, and one data packet in five:
    # the server learns late what arrived, so it re-sends bytes the client already holds.
    pair = quic_pair(autorec=MODES[mode], one_way_s=0.04)
    first = pair.client_datagrams
    pair.drop_client = lambda i: (i - first) % 3 != 0
    pair.drop_server = lambda i, frames: bool(frames) and i % 5 == 2
    writes, body = bursts(8, 6000, gap_s=0.15, start=pair.now)
    pair.run_until(pair.now + 30.0, writes)
    assert pair.client_datagrams - first > 20 and pair.dropped
    assert arrived_more_than_once(pair) > 0  # the case in point: the client got bytes twice
    assert_delivered_exactly_once(pair, body)
    if mode == "autorec":
        assert pair.server.bytes_sent[FrameKind.COPY] > 0


def test_ack_loss_on_the_benchmarks_lossy_ack_path_delivers_exactly_once():
    # The benchmark's --ack-path-loss: the viewer's ACKs cross the same lossy netem link as the
    # data (Gilbert-Elliott, 5 %, 100 ms RTT), for both sides, on the virtual clock.
    from edgecloud.stream import bench
    from edgecloud.stream.source import SourceConfig

    link = bench.LinkSpec(loss=0.05, loss_model="bursty", rtt_ms=100.0, ack_path_loss=True)
    for autorec in (None, AutoRecConfig()):
        spec = bench.SideSpec(link, autorec, 6.0, SourceConfig(fps=20, bitrate_mbps=0.5), seed=3)
        side = bench.run_virtual_side(spec)
        assert side["link_up_dropped"] > 0
        assert side["bytes_equal"] and side["complete"], side


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
# The first ACK lost, then a burst of data: a stale loss report of the packet carrying the FIN
# comes after the FIN was acknowledged, and re-sending the FIN would break aioquic's packet builder.
@example(ack_drops={0}, data_drops={0, 1, 2, 3}, eager=True, gap_ms=10)
@given(
    ack_drops=st.sets(st.integers(min_value=0, max_value=80), max_size=40),
    data_drops=st.sets(st.integers(min_value=0, max_value=60), max_size=15),
    eager=st.booleans(),
    gap_ms=st.sampled_from([10, 40, 400]),
)
def test_any_ack_and_data_loss_pattern_delivers_exactly_once(quic_pair, ack_drops, data_drops, eager, gap_ms):
    pair = quic_pair(autorec=EAGER if eager else None)
    first = pair.client_datagrams
    pair.drop_client = lambda i: i - first in ack_drops
    pair.drop_server = lambda i, frames: i in data_drops
    writes, body = bursts(5, 3500, gap_s=gap_ms / 1000, start=pair.now)
    pair.run_until(pair.now + 30.0, writes)
    assert_delivered_exactly_once(pair, body)
