"""The live source's frames and wire format, and the player's stall accounting."""

from __future__ import annotations

import pytest

from edgecloud.stream.player import playback_timings, unfinished_stall_s
from edgecloud.stream.source import FRAME_HEADER, FrameParser, LiveSource, ReceivedFrame, SourceConfig
from edgecloud.stream.virtual import VirtualPair, fixed_delay, stream_live


def test_mean_bitrate_and_gop_bursts():
    source = LiveSource(SourceConfig(fps=30, bitrate_mbps=2.0, gop=30, keyframe_ratio=4.0))
    frames = list(source.frames(10))
    assert len(frames) == 300
    mean_bits = sum(f.payload_size for f in frames) * 8 / 10
    assert mean_bits == pytest.approx(2e6, rel=0.03)
    keyframes = [f.payload_size for f in frames if f.index % 30 == 0]
    others = [f.payload_size for f in frames if f.index % 30 != 0]
    assert min(keyframes) > 2 * max(others)


def test_body_is_deterministic_and_parses_back():
    source = LiveSource(SourceConfig(fps=10, bitrate_mbps=0.1))
    body = source.body(1)
    assert body == source.body(1)
    parser = FrameParser()
    for i in range(0, len(body), 777):  # arbitrary chunking, as QUIC delivers it
        parser.feed(body[i : i + 777], now=i / 1000)
    assert [f.index for f in parser.frames] == list(range(10))
    assert [f.pts_s for f in parser.frames] == [i / 10 for i in range(10)]
    assert parser.leftover == 0


def test_parser_rejects_foreign_bytes():
    with pytest.raises(ValueError, match="bad frame header at frame 0"):
        FrameParser().feed(b"GET / HTTP/1.1\r\n\r\n" + bytes(FRAME_HEADER.size), now=0.0)


def test_frame_sizes_from_a_file(tmp_path):
    sizes = tmp_path / "sizes.csv"
    sizes.write_text("5000\n1200,\n\n900\n")
    source = LiveSource.from_sizes_file(sizes)
    assert [source.frame(i).payload_size for i in range(4)] == [5000, 1200, 900, 5000]
    sizes.write_text("100\n-3\n")
    with pytest.raises(ValueError, match=r"sizes.csv:2: a frame size must be a positive integer, got '-3'"):
        LiveSource.from_sizes_file(sizes)


def test_source_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"fps must be in \[1.0, 240.0\], got 0"):
        SourceConfig(fps=0)


def frames(arrivals: list[float], fps: float = 10) -> list[ReceivedFrame]:
    return [ReceivedFrame(i, i / fps, 100, a) for i, a in enumerate(arrivals)]


def test_on_time_frames_never_stall():
    timings = playback_timings(frames([0.0, 0.1, 0.2, 0.3]), playout_delay_s=0.2)
    assert [t.stall_s for t in timings] == [0, 0, 0, 0]
    assert [round(t.deadline_s, 6) for t in timings] == [0.2, 0.3, 0.4, 0.5]


def test_a_late_frame_stalls_and_pushes_later_deadlines_back():
    # Frame 2 is due at 0.4 but arrives at 0.65: a 0.25 s stall; frame 3 is then due at 0.75.
    timings = playback_timings(frames([0.0, 0.1, 0.65, 0.66, 0.9]), playout_delay_s=0.2)
    assert [round(t.stall_s, 6) for t in timings] == [0, 0, 0.25, 0, 0.05]
    assert round(timings[3].deadline_s, 6) == 0.75


def test_a_stream_cut_short_stays_frozen_until_the_session_ends():
    def frozen(arrived, ended_at, next_pts_s, final_pts_s=None, started_at=-0.1):
        timings = playback_timings(arrived, playout_delay_s=0.2)
        return unfinished_stall_s(
            arrived,
            timings,
            next_pts_s=next_pts_s,
            ended_at=ended_at,
            started_at=started_at,
            playout_delay_s=0.2,
            final_pts_s=final_pts_s,
        )

    # Frame 3 never comes; it was due at 0.5 and the session ended at 2.0.
    assert frozen(frames([0.0, 0.1, 0.2]), ended_at=2.0, next_pts_s=0.3) == pytest.approx(1.5)
    # A stream whose last frame (pts 9.9) would have played at 10.1 is charged at least
    # until then, whatever ended the session earlier.
    assert frozen(frames([0.0, 0.1, 0.2]), ended_at=2.0, next_pts_s=0.3, final_pts_s=9.9) == pytest.approx(9.6)
    # Stalls before the cut push its due time back: frame 1 was due at 0.3 and came at
    # 0.45, so frame 2 was due at 0.55; a session that ended before then froze nothing.
    late = frames([0.0, 0.45])
    assert frozen(late, ended_at=1.0, next_pts_s=0.2) == pytest.approx(0.45)
    assert frozen(late, ended_at=0.5, next_pts_s=0.2) == 0.0
    # No frame at all: frozen from the playout delay after the session started.
    assert frozen([], ended_at=2.0, next_pts_s=0.0, started_at=0.5) == pytest.approx(1.3)
    assert frozen([], ended_at=2.0, next_pts_s=0.0, final_pts_s=5.0, started_at=0.5) == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("idle_timeout_s", "drain_s", "ends_by"),
    [(60.0, 2.0, "drain"), (4.0, 10.0, "idle timeout"), (60.0, 0.1, "content")],
)
def test_a_virtual_stream_cut_short_counts_its_frozen_rest_as_stall(idle_timeout_s, drain_s, ends_by):
    # The link dies 1 s into a 3 s stream. The session ends when the run's drain does, when
    # the client's idle timeout closes it, or, charged at least the lost content, when the
    # last frame would have played.
    cut = float("inf")
    pair = VirtualPair(
        None,
        downlink=lambda now, data, sent: None if now >= cut else now + 0.02,
        uplink=fixed_delay(0.02),
        idle_timeout_s=idle_timeout_s,
    )
    pair.handshake()
    start = pair.now
    cut = start + 1.0
    source = LiveSource(SourceConfig(fps=20, bitrate_mbps=0.2))
    stats = stream_live(pair, source, 3.0, playout_delay_s=0.3, drain_s=drain_s)
    assert not stats["complete"] and not stats["bytes_equal"] and stats["prefix_equal"]
    assert 0 < stats["frames"] < 60
    # On a clean link before the cut nothing stalled: the first missing frame was due the
    # playout delay after its presentation time, counted from the first frame's arrival.
    first_arrival = start + 0.02  # written at once, one way 20 ms (plus serialisation)
    due = first_arrival + 0.3 + stats["frames"] / 20
    ended = {
        "drain": start + 3.0 + drain_s,
        "idle timeout": pair.client_closed_at,
        "content": first_arrival + 0.3 + 59 / 20,  # the last frame's due time
    }[ends_by]
    if ends_by == "idle timeout":
        assert pair.client_closed_at == pytest.approx(cut + idle_timeout_s, abs=0.5)
    else:
        assert pair.client_closed_at is None
    assert stats["unfinished_stall_s"] == pytest.approx(ended - due, abs=0.01)
    assert stats["stall_s"] == stats["unfinished_stall_s"] and stats["stalls"] == 1
