"""The asyncio glue around :class:`ReplicaCore`: mutual-TLS connections to the peers, a timer, and
futures for the client requests waiting on the core.

Each node listens for its peers and connects to each of them. A connection is TLS 1.3 with client
certificates from one ``edgecloud c2 pki`` directory (the CA's and the issuers' CRLs checked at
the handshake, and again whenever ``crl.pem`` changes, which cuts connections of certificates
revoked since); the certificate's name must be one of the configured peers. A handshake that fails
(a certificate of another CA, a revoked one) or a peer that is not configured is refused with a
one-line warning naming the address and the reason, and counted.

Every wait here has a bound: a handshake and a peer's hello ``HANDSHAKE_TIMEOUT_S``, a connection
on which nothing arrives for ``silence_s`` (pings go every ``ping_s`` both ways) is closed and
redialled, a client's read or commit ends at the core's deadline, and ``stop()`` gives the tasks
it cancels ``STOP_TIMEOUT_S`` and names any that did not end. Waits use ``asyncio.timeout``, not
``asyncio.wait_for``: on Python 3.11, ``wait_for`` swallows a cancellation that arrives in the
event-loop turns between its inner awaitable finishing and the waiting task resuming (CPython
gh-86296), which made ``stop()`` wait forever on a timer loop that had just been woken (#23).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from cryptography import x509

from edgecloud.c2 import tls
from edgecloud.edge.log import SessionLog
from edgecloud.edge.replication import (
    Action,
    Event,
    ReadFailed,
    ReadReady,
    ReplicaCore,
    Send,
    WriteAcked,
    WriteFailed,
)
from edgecloud.edge.turns import Turn
from edgecloud.edge.wire import (
    HEADER_BYTES,
    REQUESTS,
    FetchReply,
    FrameError,
    FramingError,
    Hello,
    Message,
    Ping,
    ProtocolError,
    Push,
    PushAck,
    decode,
    encode,
    frame_length,
)

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0


class EdgeError(Exception):
    """A client request the core failed: an HTTP status, a code and a message for the client."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class PeerSilent(Exception):
    """Nothing (not even a ping) came from a peer within the bound: the connection is given up."""

    def __init__(self, seconds: float, awaited: str) -> None:
        super().__init__(f"no {awaited} within {seconds:g} s: connection closed")


@dataclass
class Snapshot:
    """What a read saw: the version and the session's turns in order, taken when it was ready."""

    read_id: int
    version: dict[str, int]
    turns: list[Turn]


@dataclass
class TransportStats:
    bytes_sent: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0  # no connection to the peer at the time (the core retries pushes)
    turn_bytes: dict[tuple[str, str, int], int] = field(default_factory=dict)
    refused_connections: int = 0
    corrupt_messages: int = 0
    events: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bytes_sent": self.bytes_sent,
            "frames_sent": self.frames_sent,
            "frames_dropped": self.frames_dropped,
            "refused_connections": self.refused_connections,
            "corrupt_messages": self.corrupt_messages,
            "events": dict(self.events),
            "turn_bytes": [
                {"session": s, "origin": o, "seq": q, "bytes": b} for (s, o, q), b in sorted(self.turn_bytes.items())
            ],
        }


def common_name(cert: dict[str, Any]) -> str:
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def revoked_serials(path: Path) -> set[int]:
    """Serial numbers revoked by the CRLs of a PKI directory's ``crl.pem`` (several PEM blocks)."""
    text = path.read_bytes() if path.exists() else b""
    marker = b"-----END X509 CRL-----"
    serials: set[int] = set()
    for block in text.split(marker)[:-1]:
        crl = x509.load_pem_x509_crl(block.strip() + b"\n" + marker + b"\n")
        serials.update(entry.serial_number for entry in crl)
    return serials


class _Accepting(asyncio.Protocol):
    """A replication connection before its TLS handshake: reading stays paused until the handshake
    starts, so the peer's first bytes reach TLS (``asyncio.start_server`` would read them first)."""

    def __init__(self, owner: Transport) -> None:
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
        raw.pause_reading()
        if not self.owner.spawn(self.owner.accept(raw)):
            raw.close()  # accepted as the node stopped (the loop hands over accepted sockets late)


class Transport:
    """Runs a :class:`ReplicaCore` on the event loop (``clock`` gives its ``now``)."""

    def __init__(
        self,
        core: ReplicaCore,
        peers: dict[str, tuple[str, int]],
        pki: Path,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        *,
        ping_s: float = 2.0,
        silence_s: float = 30.0,
        crl_check_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
        self.peers = peers
        self.pki = Path(pki)
        self.listen = listen
        self.ping_s = ping_s
        self.silence_s = silence_s
        self._silence = f"frame (pings go every {ping_s:g} s both ways)"
        self.crl_check_s = crl_check_s
        self.clock = clock
        self.server_context = tls.server_context(self.pki, core.name)
        self.client_context = tls.client_context(self.pki, core.name)
        self.revoked = revoked_serials(self.pki / "crl.pem")
        self._crl_mtime = self._mtime()
        self.outgoing: dict[str, asyncio.StreamWriter] = {}
        self.incoming: dict[str, asyncio.StreamWriter] = {}
        self.stats = TransportStats()
        self._reads: dict[int, asyncio.Future[Snapshot]] = {}
        self._writes: dict[int, asyncio.Future[WriteAcked]] = {}
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.stopping = False

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "start() first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self, sock: Any = None) -> None:
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(lambda: _Accepting(self), sock=sock)
        else:
            self._server = await loop.create_server(lambda: _Accepting(self), self.listen[0], self.listen[1])
        self._tasks = [asyncio.ensure_future(self._connect(peer)) for peer in self.peers]
        self._tasks += [asyncio.ensure_future(self._timer()), asyncio.ensure_future(self._watch_crl())]

    def spawn(self, work: Any) -> bool:
        """Run ``work`` as a connection task that ``stop()`` ends; False (and ``work`` closed) once stopping."""
        if self.stopping:
            work.close()
            return False
        task = asyncio.ensure_future(work)
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        return True

    async def stop(self) -> None:
        self.stopping = True
        if self._server is not None:
            self._server.close()
        tasks = [*self._tasks, *self._connections]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            for task in pending:
                where = "".join(f"\n  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
                                for frame in task.get_stack())
                log.error("edge %s: task %s did not end within %g s of being cancelled; left behind at:%s",
                          self.core.name, task.get_name(), STOP_TIMEOUT_S, where)
        for writer in [*self.outgoing.values(), *self.incoming.values()]:
            writer.close()
        self.outgoing.clear()
        self.incoming.clear()
        for future in [*self._reads.values(), *self._writes.values()]:
            if not future.done():
                future.set_exception(EdgeError(503, "shutting_down", "the node is shutting down"))

    # -- the core's actions ------------------------------------------------------------------------

    def handle(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action.peer, action.message)
            elif isinstance(action, ReadReady):
                future = self._reads.pop(action.read_id, None)
                if future is not None and not future.done():
                    future.set_result(Snapshot(action.read_id, action.version, list(action.turns)))
            elif isinstance(action, ReadFailed | WriteFailed):
                futures: dict[int, Any] = self._reads if isinstance(action, ReadFailed) else self._writes
                future = futures.pop(action.read_id, None)
                if future is not None and not future.done():
                    future.set_exception(EdgeError(action.status, action.code, action.message))
            elif isinstance(action, WriteAcked):
                acked = self._writes.pop(action.read_id, None)
                if acked is not None and not acked.done():
                    acked.set_result(action)
            elif isinstance(action, Event):
                self.stats.events[action.kind] = self.stats.events.get(action.kind, 0) + 1
                log.warning("edge %s: %s", self.core.name, action.message)
        self._wake.set()

    def _send(self, peer: str, message: Message) -> None:
        writer = (self.outgoing if isinstance(message, REQUESTS) else self.incoming).get(peer)
        if writer is None or writer.is_closing():
            self.stats.frames_dropped += 1
            return
        frame = encode(message)
        writer.write(frame)
        self.stats.bytes_sent += len(frame)
        self.stats.frames_sent += 1
        count = self.stats.turn_bytes
        if isinstance(message, Push):
            key = (message.turn.session, message.turn.origin, message.turn.seq)
            count[key] = count.get(key, 0) + len(frame)
        elif isinstance(message, PushAck):
            key = (message.session, message.origin, message.seq)
            count[key] = count.get(key, 0) + len(frame)
        elif isinstance(message, FetchReply) and message.turns:
            share = len(frame) // len(message.turns)
            for turn in message.turns:
                key = (turn.session, turn.origin, turn.seq)
                count[key] = count.get(key, 0) + share

    # -- what the client side awaits ---------------------------------------------------------------

    async def read(self, session: str, want: dict[str, int], *, exclusive: bool, create: bool = False) -> Snapshot:
        read_id = next(self._ids)
        future: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
        self._reads[read_id] = future
        self.handle(self.core.open_read(read_id, session, want, self.clock(), exclusive=exclusive, create=create))
        try:
            return await future
        except BaseException:
            self.release(read_id)
            raise

    async def commit(self, read_id: int, content: Turn) -> WriteAcked:
        future: asyncio.Future[WriteAcked] = asyncio.get_running_loop().create_future()
        self._writes[read_id] = future
        self.handle(self.core.commit(read_id, content, self.clock()))
        return await future

    def release(self, read_id: int) -> None:
        self._reads.pop(read_id, None)
        self._writes.pop(read_id, None)
        self.handle(self.core.release(read_id, self.clock()))

    def session_log(self, session: str) -> SessionLog:
        return self.core.log(session)

    # -- time --------------------------------------------------------------------------------------

    async def _timer(self) -> None:
        """The core's clock: ticks at its next deadline, at least once a second, and whenever woken.
        It ends only with the transport: a tick that raises is logged and the next one comes."""
        while not self.stopping:
            deadline = self.core.next_deadline()
            wait = 1.0 if deadline is None else min(1.0, max(0.0, deadline - self.clock()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            try:
                self.handle(self.core.tick(self.clock()))
            except Exception:
                log.exception("edge %s: the replication timer's tick failed; ticking on", self.core.name)

    def _mtime(self) -> float:
        path = self.pki / "crl.pem"
        return path.stat().st_mtime if path.exists() else 0.0

    async def _watch_crl(self) -> None:
        while True:
            await asyncio.sleep(self.crl_check_s)
            mtime = self._mtime()
            if mtime == self._crl_mtime:
                continue
            self._crl_mtime = mtime
            try:
                self.revoked = revoked_serials(self.pki / "crl.pem")
                self.server_context = tls.server_context(self.pki, self.core.name)
                self.client_context = tls.client_context(self.pki, self.core.name)
            except (OSError, ValueError, ssl.SSLError) as error:
                log.error("edge %s: cannot reload the CRL: %s", self.core.name, error)
                continue
            for peer, writer in [*self.outgoing.items(), *self.incoming.items()]:
                if self._serial(writer) in self.revoked:
                    log.warning("edge %s: %s's certificate is revoked now; connection closed", self.core.name, peer)
                    writer.close()

    @staticmethod
    def _serial(writer: asyncio.StreamWriter) -> int | None:
        cert = writer.get_extra_info("peercert")
        return int(cert["serialNumber"], 16) if cert else None

    # -- connections -------------------------------------------------------------------------------

    async def _read_frame(self, reader: asyncio.StreamReader, within: float, awaited: str) -> bytes:
        """The next frame; ``PeerSilent`` if it has not come whole within ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                header = await reader.readexactly(HEADER_BYTES)
                return await reader.readexactly(frame_length(header))
        except TimeoutError:
            raise PeerSilent(within, awaited) from None

    def _refuse(self, where: str, why: str) -> None:
        self.stats.refused_connections += 1
        log.warning("edge %s: refused replication %s: %s", self.core.name, where, why)

    async def _connect(self, peer: str) -> None:
        host, port = self.peers[peer]
        backoff = 0.1
        while not self.stopping:
            writer: asyncio.StreamWriter | None = None
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                    reader, writer = await asyncio.open_connection(
                        host, port, ssl=self.client_context, server_hostname=peer,
                    )
                if self._serial(writer) in self.revoked:
                    raise ConnectionError("its certificate is revoked")
                writer.write(encode(self.core.hello()))
                hello = decode(await self._read_frame(reader, HANDSHAKE_TIMEOUT_S, "hello"))
                if isinstance(hello, ProtocolError):
                    raise ConnectionError(f"{peer} refused this node: {hello.code}: {hello.message}")
                if not isinstance(hello, Hello):
                    raise ConnectionError(f"{peer} sent {type(hello).__name__} instead of hello")
                actions = self.core.peer_up(peer, hello, self.clock())  # ValueError: cannot replicate
                self.outgoing[peer] = writer
                backoff = 0.1
                self.handle(actions)
                pinger = asyncio.ensure_future(self._ping(peer, writer))
                try:
                    while True:
                        try:
                            message = decode(await self._read_frame(reader, self.silence_s, self._silence))
                        except FrameError as error:
                            self.stats.corrupt_messages += 1
                            log.warning("edge %s: a corrupt message from %s, ignored: %s", self.core.name, peer, error)
                            continue
                        self.handle(self.core.on_message(peer, message, self.clock()))
                finally:
                    pinger.cancel()
            except ssl.SSLError as error:
                self._refuse(f"to {peer} at {host}:{port}", f"TLS handshake failed: {error.reason or error}")
            except (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
                pass  # not up (yet), or gone: retried
            except (ConnectionError, ValueError, FramingError, FrameError, PeerSilent) as error:
                if str(error):
                    log.warning("edge %s: replication to %s: %s", self.core.name, peer, error)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                pass  # not up (yet), or gone: retried
            finally:
                if self.outgoing.get(peer) is writer and writer is not None:
                    del self.outgoing[peer]
                    self.handle(self.core.peer_down(peer, self.clock()))
                if writer is not None:
                    writer.close()
            if self.stopping:
                return
            await asyncio.sleep(backoff)
            backoff = min(2.0, backoff * 2)

    async def _ping(self, peer: str, writer: asyncio.StreamWriter) -> None:
        while not writer.is_closing():
            self._send(peer, Ping(self.clock()))
            await asyncio.sleep(self.ping_s)

    async def accept(self, raw: asyncio.Transport) -> None:
        """A peer connected: the TLS handshake (refusals are logged here, where they happen),
        then its requests until it goes."""
        address = raw.get_extra_info("peername")
        where = f"from {address[0]}:{address[1]}" if address else "from an unknown address"
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                transport = await loop.start_tls(raw, protocol, self.server_context, server_side=True)
        except (ssl.SSLError, OSError, TimeoutError) as error:
            reason = getattr(error, "reason", None) or str(error) or type(error).__name__
            self._refuse(where, f"TLS handshake failed: {reason}")
            raw.close()
            return
        if transport is None:
            raw.close()
            return
        protocol.connection_made(transport)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        peer = ""
        try:
            cert = writer.get_extra_info("peercert") or {}
            peer = common_name(cert)
            if peer not in self.peers:
                self._refuse(where, f"{peer!r} is not a peer of this node ({', '.join(self.peers)})")
                writer.write(encode(ProtocolError("unknown_peer", f"{peer!r} is not a peer of {self.core.name}")))
                return
            if self._serial(writer) in self.revoked:
                self._refuse(where, f"{peer}'s certificate is revoked")
                writer.write(encode(ProtocolError("revoked", f"{peer}'s certificate is revoked")))
                return
            hello = decode(await self._read_frame(reader, HANDSHAKE_TIMEOUT_S, "hello"))
            if not isinstance(hello, Hello) or hello.node != peer:
                self._refuse(where, f"{peer} did not begin with its hello")
                return
            writer.write(encode(self.core.hello()))
            self.incoming[peer] = writer
            while True:
                try:
                    message = decode(await self._read_frame(reader, self.silence_s, self._silence))
                except FrameError as error:
                    self.stats.corrupt_messages += 1
                    log.warning("edge %s: a corrupt message from %s, refused: %s", self.core.name, peer, error)
                    self._send(peer, ProtocolError("corrupt_message", str(error)))
                    continue
                self.handle(self.core.on_message(peer, message, self.clock()))
        except PeerSilent as error:
            if peer:
                log.warning("edge %s: connection from %s: %s", self.core.name, peer, error)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, FramingError, FrameError) as error:
            if isinstance(error, FramingError | FrameError):
                self.stats.corrupt_messages += 1
                log.warning("edge %s: connection %s closed: %s", self.core.name, where, error)
        finally:
            if peer and self.incoming.get(peer) is writer:
                del self.incoming[peer]
            writer.close()
