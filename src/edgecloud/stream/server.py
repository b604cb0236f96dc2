"""The live-stream HTTP/3 server on aioquic: ``GET /live?seconds=N``.

Each connection is an :class:`~edgecloud.stream.connection.AutoRecConnection`: with an
:class:`~edgecloud.stream.controller.AutoRecConfig` it runs AutoRec, without one it is the
baseline (aioquic's RFC 9002 recovery, unchanged). Both are measured the same way.

A request streams ``seconds`` of the live source in real time — each frame is written when
its presentation time comes — and then ends the stream. Errors stay with their request or
connection: a bad path gets 404, a bad ``seconds`` 400 with the allowed range, garbage
datagrams are dropped by aioquic, and a viewer that vanishes is dropped at its idle
timeout while the others keep streaming.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, ProtocolNegotiated, QuicEvent, StreamReset

from edgecloud.stream.connection import DEFAULT_CONGESTION_CONTROL, AutoRecConnection, check_congestion_control
from edgecloud.stream.controller import AutoRecConfig
from edgecloud.stream.source import LiveSource
from edgecloud.stream.tls import self_signed_certificate

log = logging.getLogger(__name__)

MAX_SECONDS = 86_400.0


@dataclass
class RequestRecord:
    """One request as the server saw it."""

    peer: str
    path: str
    status: int
    bytes_sent: int = 0
    sha256: str = ""
    completed: bool = False
    error: str | None = None


@dataclass
class ConnectionRecord:
    peer: str
    connection: AutoRecConnection
    requests: list[RequestRecord] = field(default_factory=list)
    closed: bool = False


def parse_live_query(query: str) -> float:
    """The ``seconds`` of a ``/live`` request; ValueError names the field and its range."""
    values = parse_qs(query).get("seconds")
    if not values:
        raise ValueError(f"query parameter 'seconds' is required, in (0, {MAX_SECONDS:g}]")
    try:
        seconds = float(values[0])
    except ValueError:
        raise ValueError(f"seconds must be a number in (0, {MAX_SECONDS:g}], got {values[0]!r}") from None
    if not (0 < seconds <= MAX_SECONDS):
        raise ValueError(f"seconds must be in (0, {MAX_SECONDS:g}], got {values[0]}")
    return seconds


class LiveStreamProtocol(QuicConnectionProtocol):
    """One viewer's connection: HTTP/3 requests in, live frames out."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None, *, server: StreamServer) -> None:
        connection = AutoRecConnection.adopt(quic, server.autorec)
        super().__init__(connection, stream_handler)
        self._server = server
        self._h3: H3Connection | None = None
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.record = ConnectionRecord(peer="?", connection=connection)
        server.connections.append(self.record)
        server._live.add(self)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self._h3 = H3Connection(self._quic)
            peer = self._quic.get_peer_address()
            self.record.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        elif isinstance(event, StreamReset) and event.stream_id in self._tasks:
            self._tasks.pop(event.stream_id).cancel()
        elif isinstance(event, ConnectionTerminated):
            self.record.closed = True
            self._server._live.discard(self)
            for task in self._tasks.values():
                task.cancel()
            self._tasks.clear()
        if self._h3 is not None:
            for h3_event in self._h3.handle_event(event):
                self._h3_event_received(h3_event)

    def _h3_event_received(self, event: H3Event) -> None:
        if not isinstance(event, HeadersReceived):
            return  # request bodies are ignored
        headers = dict(event.headers)
        path = headers.get(b":path", b"").decode("utf-8", errors="replace")
        method = headers.get(b":method", b"")
        request = RequestRecord(peer=self.record.peer, path=path, status=200)
        self.record.requests.append(request)
        url = urlsplit(path)
        if method != b"GET":
            self._respond(event.stream_id, request, 405, f"method {method.decode(errors='replace')} not allowed\n")
        elif url.path != "/live":
            self._respond(event.stream_id, request, 404, f"unknown path {url.path!r}; try /live?seconds=N\n")
        else:
            try:
                seconds = parse_live_query(url.query)
            except ValueError as error:
                self._respond(event.stream_id, request, 400, f"{error}\n")
                return
            task = asyncio.get_running_loop().create_task(self._stream_live(event.stream_id, request, seconds))
            self._tasks[event.stream_id] = task
            task.add_done_callback(lambda _t, sid=event.stream_id: self._tasks.pop(sid, None))

    def _respond(self, stream_id: int, request: RequestRecord, status: int, body: str) -> None:
        assert self._h3 is not None
        request.status = status
        data = body.encode()
        self._h3.send_headers(
            stream_id, [(b":status", str(status).encode()), (b"content-type", b"text/plain; charset=utf-8")]
        )
        self._h3.send_data(stream_id, data, end_stream=True)
        request.bytes_sent = len(data)
        request.completed = True
        self.transmit()

    async def _stream_live(self, stream_id: int, request: RequestRecord, seconds: float) -> None:
        assert self._h3 is not None
        source = self._server.source
        count = source.frame_count(seconds)
        digest = hashlib.sha256()
        loop = asyncio.get_running_loop()
        try:
            self._h3.send_headers(
                stream_id,
                [
                    (b":status", b"200"),
                    (b"content-type", b"application/octet-stream"),
                    (b"x-frames", str(count).encode()),
                    (b"x-fps", f"{source.config.fps:g}".encode()),
                ],
            )
            self.transmit()
            start = loop.time()
            for i, frame in enumerate(source.frames(seconds)):
                delay = start + frame.pts_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                data = frame.encode(source.config.seed)
                digest.update(data)
                self._h3.send_data(stream_id, data, end_stream=i == count - 1)
                request.bytes_sent += len(data)
                self.transmit()
            request.completed = True
        except asyncio.CancelledError:
            request.error = "server shut down" if self._server.closing else "viewer went away"
            raise
        except Exception as error:  # one broken stream must not take the server down
            request.error = f"{type(error).__name__}: {error}"
            log.warning("stream %d to %s failed: %s", stream_id, self.record.peer, request.error)
        finally:
            request.sha256 = digest.hexdigest()


class StreamServer:
    """The live-stream server: start, serve, close. ``autorec=None`` is the baseline."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        autorec: AutoRecConfig | None = None,
        source: LiveSource | None = None,
        certificate: Any = None,
        private_key: Any = None,
        idle_timeout_s: float = 30.0,
        max_records: int = 1024,
        congestion_control: str = DEFAULT_CONGESTION_CONTROL,
    ) -> None:
        check_congestion_control(congestion_control)
        self.host, self.port = host, port
        self.autorec = autorec
        self.source = source or LiveSource()
        # The most recent connections, for statistics; bounded so a long-running server
        # does not keep every viewer it ever had.
        self.connections: deque[ConnectionRecord] = deque(maxlen=max_records)
        if certificate is None:
            certificate, private_key = self_signed_certificate(host)
        self.configuration = QuicConfiguration(
            is_client=False,
            alpn_protocols=H3_ALPN,
            idle_timeout=idle_timeout_s,
            congestion_control_algorithm=congestion_control,
        )
        self.configuration.certificate = certificate
        self.configuration.private_key = private_key
        self._transport: asyncio.DatagramTransport | None = None
        self._quic_server: QuicServer | None = None
        self._live: set[LiveStreamProtocol] = set()  # connections not yet terminated
        self.closing = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def create_protocol(quic: QuicConnection, stream_handler: Any = None) -> LiveStreamProtocol:
            return LiveStreamProtocol(quic, stream_handler, server=self)

        transport, protocol = await loop.create_datagram_endpoint(
            lambda: QuicServer(configuration=self.configuration, create_protocol=create_protocol),
            local_addr=(self.host, self.port),
        )
        self._transport = transport
        self._quic_server = protocol

    @property
    def address(self) -> tuple[str, int]:
        assert self._transport is not None, "start() the server first"
        host, port = self._transport.get_extra_info("sockname")[:2]
        return host, port

    @property
    def requests(self) -> list[RequestRecord]:
        return [r for c in self.connections for r in c.requests]

    async def close(self) -> None:
        """Stop every stream, then close every connection (the viewers see it closed)."""
        if self._quic_server is not None:
            self.closing = True
            tasks = [task for protocol in self._live for task in protocol._tasks.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._quic_server.close()
            self._quic_server = None
            self._live.clear()
            await asyncio.sleep(0)
