"""The viewer: plays ``/live`` over HTTP/3 on unmodified aioquic and records stalls.

Playback model (the usual one for live players): playback starts ``playout_delay_s``
after the first frame arrives; frame *i* is due at that start plus its presentation time
plus all stall time so far. A frame that arrives after it is due stalls playback until it
arrives (a rebuffering event of that length), which pushes every later deadline back.
A stream cut short (the connection closed or timed out before its end) froze when its
first missing frame fell due and stayed frozen until the session ended, and at least
until its last frame would have played: that time counts as one more stall
(``unfinished_stall_s``), or the viewers of a dead stream would look better off than those
of a slow one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent

from edgecloud.stream.source import FrameParser, ReceivedFrame


@dataclass(frozen=True)
class FrameTiming:
    index: int
    arrival_s: float  # since the first frame arrived
    deadline_s: float  # when it was due, stalls so far included
    stall_s: float  # how long playback stalled waiting for it


@dataclass
class PlaybackReport:
    url: str
    status: int | None = None
    bytes: int = 0
    sha256: str = ""
    frames: int = 0
    stalls: int = 0
    stall_s: float = 0.0  # unfinished_stall_s included
    unfinished_stall_s: float = 0.0  # frozen after the last frame of a stream cut short
    ended: bool = False
    error: str | None = None
    timings: list[FrameTiming] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "status": self.status,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "frames": self.frames,
            "stalls": self.stalls,
            "stall_s": round(self.stall_s, 4),
            "unfinished_stall_s": round(self.unfinished_stall_s, 4),
            "ended": self.ended,
            "error": self.error,
        }


def playback_timings(frames: list[ReceivedFrame], playout_delay_s: float) -> list[FrameTiming]:
    """Deadlines and stalls of frames arriving at the given times (see the module docstring)."""
    if not frames:
        return []
    t0 = frames[0].arrival
    start = t0 + playout_delay_s - frames[0].pts_s
    stalled = 0.0
    out = []
    for f in frames:
        due = start + f.pts_s + stalled
        stall = max(0.0, f.arrival - due)
        stalled += stall
        out.append(FrameTiming(f.index, f.arrival - t0, due - t0, stall))
    return out


def unfinished_stall_s(
    frames: list[ReceivedFrame],
    timings: list[FrameTiming],
    *,
    next_pts_s: float,
    ended_at: float,
    started_at: float,
    playout_delay_s: float,
    final_pts_s: float | None = None,
) -> float:
    """How long a stream cut short stayed frozen (times on the arrivals' clock).

    It froze when its first missing frame (presented at ``next_pts_s``) fell due: after the
    last frame that came, by their presentation times, stalls included; with no frame at
    all, the playout delay after the session started at ``started_at``. It stayed frozen
    until the session ended at ``ended_at`` and, where the stream's last frame is known
    (``final_pts_s``), at least until that frame would have played: a dead stream is
    charged at least the content it lost, whatever the timeouts that ended its session.
    """
    if frames:
        last, timing = frames[-1], timings[-1]
        due = frames[0].arrival + timing.deadline_s + timing.stall_s + (next_pts_s - last.pts_s)
    else:
        due = started_at + playout_delay_s
    end = ended_at if final_pts_s is None else max(ended_at, due + final_pts_s - next_pts_s)
    return max(0.0, end - due)


class PlayerProtocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._h3 = H3Connection(self._quic)
        self.parser = FrameParser()
        self.digest = hashlib.sha256()
        self.status: int | None = None
        self.bytes = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A connection that closes during the handshake sets ``done`` before anyone awaits it:
        # retrieve its exception here, or asyncio warns "Future exception was never retrieved".
        self.done.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def wait_connected(self) -> None:
        try:
            await super().wait_connected()
        except asyncio.CancelledError:
            # aioquic shields its waiter, so a handshake given up on (connect_timeout_s) still
            # fails it later when the connection closes: retrieve that failure, no warning.
            waiter = self._connected_waiter
            if waiter is not None:
                waiter.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise

    def get(self, authority: str, path: str) -> None:
        stream_id = self._quic.get_next_available_stream_id()
        self._h3.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
            ],
            end_stream=True,
        )
        self.transmit()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated) and not self.done.done():
            self.done.set_exception(ConnectionError(f"connection closed: {event.reason_phrase or event.error_code}"))
        for h3_event in self._h3.handle_event(event):
            self._h3_event_received(h3_event)

    def _h3_event_received(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            self.status = int(dict(event.headers).get(b":status", b"0"))
        elif isinstance(event, DataReceived):
            now = self._loop.time()
            self.bytes += len(event.data)
            self.digest.update(event.data)
            if self.status == 200:
                self.parser.feed(event.data, now)
        if getattr(event, "stream_ended", False) and not self.done.done():
            self.done.set_result(None)


def check_url(url: str) -> str:
    """``url`` if it is an https URL with a host (HTTP/3 runs over QUIC, which always uses TLS);
    ValueError saying what it must look like otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(
            f"url must be https://HOST:PORT/live?seconds=N (HTTP/3 runs over QUIC, always with TLS), got {url!r}"
        )
    try:
        parts.port  # noqa: B018 -- urlsplit checks the port only when it is read
    except ValueError:
        raise ValueError(f"url {url!r}: the port must be a number in 0..65535") from None
    return url


async def play(
    url: str,
    *,
    playout_delay_s: float = 0.3,
    timeout_s: float | None = None,
    expected_pts: Sequence[float] | None = None,
    connect_timeout_s: float | None = None,
) -> PlaybackReport:
    """Play ``url`` (https://host:port/live?seconds=N) to its end and report what the viewer saw.

    ``expected_pts``: the presentation times of every frame the stream should carry, where
    the caller knows them (the benchmark does), so that a stream cut short is charged from
    its first missing frame to at least its last one; without them the next frame is
    assumed one mean frame interval after the last, and the charge runs to the session's
    end.

    ``connect_timeout_s``: give up when the QUIC handshake has not completed by then (the
    report's ``error`` says so). Without it a server that is not there is noticed only at
    aioquic's idle timeout, a minute later.
    """
    check_url(url)
    parts = urlsplit(url)
    if not 0 <= playout_delay_s <= 60:
        raise ValueError(f"playout_delay_s must be in [0, 60], got {playout_delay_s}")
    port = parts.port or 443
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE)
    report = PlaybackReport(url=url)
    try:
        async with contextlib.AsyncExitStack() as stack:
            connecting = stack.enter_async_context(
                connect(parts.hostname, port, configuration=configuration, create_protocol=PlayerProtocol)
            )
            try:
                protocol = await asyncio.wait_for(connecting, connect_timeout_s)
            except TimeoutError:
                raise ConnectionError(
                    f"no QUIC handshake with {parts.hostname}:{port} within {connect_timeout_s:g} s"
                ) from None
            except ConnectionError as exc:
                # aioquic closes a handshake that failed with an empty ConnectionError
                raise ConnectionError(f"the QUIC handshake with {parts.hostname}:{port} failed{_said(exc)}") from None
            assert isinstance(protocol, PlayerProtocol)
            loop = asyncio.get_running_loop()
            started_at = loop.time()
            protocol.get(parts.netloc, path)
            try:
                await asyncio.wait_for(asyncio.shield(protocol.done), timeout_s)
                report.ended = True
            finally:
                if protocol.done.done():
                    if not protocol.done.cancelled():
                        protocol.done.exception()  # retrieved: asyncio would warn otherwise
                else:
                    protocol.done.cancel()  # timed out: a later close has nowhere to go
                report.status = protocol.status
                report.bytes = protocol.bytes
                report.sha256 = protocol.digest.hexdigest()
                frames = protocol.parser.frames
                report.frames = len(frames)
                report.timings = playback_timings(frames, playout_delay_s)
                if not report.ended:
                    report.unfinished_stall_s = cut_short_stall_s(
                        frames, report.timings, expected_pts, loop.time(), started_at, playout_delay_s
                    )
                report.stalls, report.stall_s = stall_totals(report.timings, report.unfinished_stall_s)
    except (ConnectionError, TimeoutError, OSError, ValueError) as error:
        report.error = f"{type(error).__name__}: {error or 'no reason given'}"
    return report


def _said(exc: BaseException) -> str:
    return f": {exc}" if str(exc) else ""


def stall_totals(timings: list[FrameTiming], unfinished_s: float = 0.0) -> tuple[int, float]:
    """Stall count and total stall time, a cut-short stream's frozen rest included."""
    return (
        sum(1 for t in timings if t.stall_s > 0) + (unfinished_s > 0),
        sum(t.stall_s for t in timings) + unfinished_s,
    )


def cut_short_stall_s(
    frames: list[ReceivedFrame],
    timings: list[FrameTiming],
    expected_pts: Sequence[float] | None,
    ended_at: float,
    started_at: float,
    playout_delay_s: float,
) -> float:
    """The frozen rest of a stream that did not end (see unfinished_stall_s): from the
    first missing frame of ``expected_pts`` to at least the last one, or, without them,
    from one mean frame interval after the last frame that came to the session's end."""
    if expected_pts is not None:
        if len(frames) >= len(expected_pts):
            return 0.0  # every frame came; only the end of the stream did not
        next_pts, final = expected_pts[len(frames)], expected_pts[-1]
    elif frames:
        # one mean frame interval after the last frame; with one frame, at once
        interval = (frames[-1].pts_s - frames[0].pts_s) / (len(frames) - 1) if len(frames) > 1 else 0.0
        next_pts, final = frames[-1].pts_s + interval, None
    else:
        next_pts, final = 0.0, None
    return unfinished_stall_s(
        frames,
        timings,
        next_pts_s=next_pts,
        ended_at=ended_at,
        started_at=started_at,
        playout_delay_s=playout_delay_s,
        final_pts_s=final,
    )
