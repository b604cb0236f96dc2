"""asyncio glue for one NC2S link: a TLS stream carrying a :class:`SecureSession`.

All protocol decisions live in the session core; this module only runs TLS, moves bytes, runs
the renewal timer, and hands received messages to a callback. TLS runs over memory BIOs
(``SSLContext.wrap_bio``) on a plain TCP stream rather than through asyncio's SSL transport, so
a refused handshake surfaces its exact reason ("certificate revoked", "peer did not return a
certificate") to be logged — asyncio swallows those. A refused frame is logged and dropped;
the link stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from edgecloud.c2.pki import Identity
from edgecloud.c2.session import (
    Credentials,
    Established,
    Event,
    Failed,
    FrameType,
    KeysRenewed,
    Received,
    Rejected,
    SecureSession,
)

log = logging.getLogger("edgecloud.c2")

HANDSHAKE_TIMEOUT = 10.0


class LinkError(ConnectionError):
    """The link could not be set up or authenticated; the message says why.

    ``permanent``: retrying cannot help, since the certificates involved stay what they are (one
    revoked, from another root CA, naming another node, or this node's own expired); the message
    then says what to do instead.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


# TLS alerts a peer sends when it refuses *our* certificate for good: revoked, from a CA it does
# not trust, not verifiable, or expired (a running gateway keeps the credentials it started with).
_PERMANENT_ALERTS = {
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the peer holds this node's certificate as revoked: have a new one issued "
    "(c2 pki issue --force, or c2 tc issue) and restart",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust this node's CA: both need certificates from one PKI directory",
    "TLSV1_ALERT_DECRYPT_ERROR": "the peer cannot verify this node's certificate (another root CA of the same "
    "name?): both need certificates from one PKI directory",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer refused this node's certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the peer refused this node's certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "this node's certificate has expired: renew it (c2 pki renew, or c2 renew) "
    "and restart",
    "TLSV1_ALERT_ACCESS_DENIED": "the peer denied this node access",
}
# Our verdicts on the peer's certificate (OpenSSL X509_V_ERR_* codes) that time can change: the
# peer may renew an expired certificate, or a clock be set right.
_TRANSIENT_VERIFY_CODES = {9, 10, 11, 12}  # cert not yet valid / expired, CRL not yet valid / expired
_VERIFY_HINTS = {
    23: "the peer's certificate is revoked",
    62: "the peer's certificate names another node (check --uxv)",
}
_OTHER_CA_HINT = "the peer's certificate is not from this node's root CA: both need one PKI directory"


def permanent_failure(exc: BaseException) -> str | None:
    """What to do about a TLS refusal that retrying cannot cure, or None when it may heal."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _TRANSIENT_VERIFY_CODES:
            return None
        return _VERIFY_HINTS.get(exc.verify_code, _OTHER_CA_HINT)
    if isinstance(exc, ssl.SSLError):
        return _PERMANENT_ALERTS.get(exc.reason or "")
    return None


@dataclass
class LinkStats:
    handshake_s: float = 0.0
    renewals: list[float] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


MessageHandler = Callable[["Link", int, bytes], Awaitable[None] | None]


def tls_failure_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake refused: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake refused: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    return f"TLS handshake failed: {exc!r}"


class TlsStream:
    """TLS over a TCP stream through memory BIOs."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _fill(self) -> bool:
        data = await self.reader.read(65536)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                if not await self._fill():
                    raise ConnectionResetError("peer closed the connection during the TLS handshake") from None
            except ssl.SSLError:
                self._flush()  # deliver our alert, so the peer learns why
                raise

    async def read(self) -> bytes:
        """Decrypted bytes; b"" when the peer closed."""
        while True:
            try:
                data = self.tls.read(65536)
                self._flush()
                return data
            except ssl.SSLWantReadError:
                self._flush()
                if not await self._fill():
                    return b""
            except ssl.SSLZeroReturnError:
                return b""

    def write(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def peer_der(self) -> bytes:
        der = self.tls.getpeercert(binary_form=True)
        assert der is not None  # CERT_REQUIRED on both sides
        return der

    async def close(self) -> None:
        with contextlib.suppress(ssl.SSLError, OSError):
            self.tls.unwrap()
        self._flush()
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


class Link:
    def __init__(self, stream: TlsStream, session: SecureSession, label: str) -> None:
        self.stream = stream
        self.session = session
        self.label = label
        self.stats = LinkStats()
        self._renewed = asyncio.Event()
        self._closed = False
        self._early: list[Event] = []  # frames that arrived in the same read as the peer's HELLO

    @property
    def peer(self) -> Identity:
        assert self.session.peer is not None
        return self.session.peer

    @property
    def closed(self) -> bool:
        return self._closed

    def _flush(self) -> None:
        data = self.session.data_to_send()
        if data and not self._closed:
            self.stream.write(data)

    async def _establish(self, started: float) -> None:
        self.session.start(time.monotonic())
        self._flush()
        while self.session.peer is None:
            data = await self.stream.read()
            if not data:
                raise LinkError(f"{self.label}: peer closed the connection before HELLO")
            for event in self.session.receive_data(data, time.monotonic()):
                if isinstance(event, Failed | Rejected) and self.session.peer is None:
                    raise LinkError(f"{self.label}: {event.reason}")
                if not isinstance(event, Established):
                    self._early.append(event)
        self.stats.handshake_s = time.monotonic() - started

    def send(self, kind: int, payload: bytes) -> None:
        if self._closed:
            return
        self.session.send(kind, payload)
        self._flush()

    def send_control(self, message: dict) -> None:
        self.send(FrameType.CONTROL, json.dumps(message, separators=(",", ":")).encode())

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are: tests use it to play an attacker inside an authenticated link."""
        self.stream.write(data)

    async def renew_keys(self) -> float:
        """Run one key renewal now (TLS client side) and return how long it took."""
        self._renewed.clear()
        self.session.start_rekey(time.monotonic())
        self._flush()
        await self._renewed.wait()
        return self.stats.renewals[-1]

    async def run(self, on_message: MessageHandler, tick: float = 0.25) -> None:
        """Read until the peer goes away; refused frames are logged and the link keeps going."""
        timer = asyncio.create_task(self._timer(tick))
        try:
            events, self._early = self._early, []
            while True:
                for event in events:
                    if isinstance(event, Received):
                        try:
                            result = on_message(self, event.kind, event.payload)
                            if result is not None:
                                await result
                        except (ValueError, TypeError, KeyError) as exc:
                            # An authenticated peer sent something malformed: refuse it, keep the link.
                            self.stats.rejected.append(repr(exc))
                            log.warning("%s: refused message from %s: %r", self.label, self.peer.name, exc)
                    elif isinstance(event, Rejected):
                        self.stats.rejected.append(event.reason)
                        log.warning("%s: refused frame from %s: %s", self.label, self.peer.name, event.reason)
                    elif isinstance(event, KeysRenewed):
                        if self.session.initiator:
                            self.stats.renewals.append(event.duration)
                            self._renewed.set()
                        log.info("%s: keys renewed to epoch %d", self.label, event.epoch)
                    elif isinstance(event, Failed):
                        log.warning("%s: closing link to %s: %s", self.label, self.peer.name, event.reason)
                        return
                self._flush()
                data = await self.stream.read()
                if not data:
                    break
                events = self.session.receive_data(data, time.monotonic())
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.info("%s: link to %s lost: %r", self.label, self.peer.name, exc)
        finally:
            timer.cancel()
            await self.close()

    async def _timer(self, tick: float) -> None:
        while True:
            await asyncio.sleep(tick)
            self.session.timer(time.monotonic())
            self._flush()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.stream.close()


async def connect(
    host: str,
    port: int,
    credentials: Credentials,
    context: ssl.SSLContext,
    *,
    server_hostname: str | None,
    label: str,
    rekey_interval: float | None = None,
) -> Link:
    """Open a TLS connection, run the NC2S HELLO exchange, and return the established link."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), HANDSHAKE_TIMEOUT)
    except TimeoutError as exc:
        raise LinkError(f"{label}: cannot reach {host}:{port}: no answer within {HANDSHAKE_TIMEOUT:g} s") from exc
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise LinkError(f"{label}: cannot reach {host}:{port}: {reason}") from exc
    stream = TlsStream(reader, writer, context, server_side=False, server_hostname=server_hostname)
    try:
        await asyncio.wait_for(stream.handshake(), HANDSHAKE_TIMEOUT)
    except (ssl.SSLError, TimeoutError, OSError) as exc:
        await stream.close()
        raise _tls_link_error(label, exc) from exc
    session = SecureSession(credentials, initiator=True, tls_peer_der=stream.peer_der(), rekey_interval=rekey_interval)
    link = Link(stream, session, label)
    try:
        await asyncio.wait_for(link._establish(started), HANDSHAKE_TIMEOUT)
    except ssl.SSLError as exc:
        # TLS 1.3: the server judges our certificate after our handshake finished; its alert lands here.
        await link.close()
        raise _tls_link_error(label, exc) from exc
    except (TimeoutError, ConnectionError, OSError) as exc:
        await link.close()
        raise LinkError(f"{label}: NC2S session set-up failed: {exc!r}") from exc
    return link


def _tls_link_error(label: str, exc: BaseException) -> LinkError:
    hint = permanent_failure(exc)
    if hint is None:
        return LinkError(f"{label}: {tls_failure_reason(exc)}")
    return LinkError(f"{label}: {tls_failure_reason(exc)}: {hint}", permanent=True)


async def accept(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    credentials: Credentials,
    context: ssl.SSLContext,
    *,
    label: str,
) -> Link | None:
    """Server side: TLS handshake on an accepted connection, then HELLO; None (logged) on refusal."""
    started = time.monotonic()
    address = writer.get_extra_info("peername")
    stream = TlsStream(reader, writer, context, server_side=True)
    try:
        await asyncio.wait_for(stream.handshake(), HANDSHAKE_TIMEOUT)
    except (ssl.SSLError, TimeoutError, OSError) as exc:
        log.warning("%s: refused connection from %s: %s", label, address, tls_failure_reason(exc))
        await stream.close()
        return None
    link = Link(stream, SecureSession(credentials, initiator=False, tls_peer_der=stream.peer_der()), label)
    try:
        await asyncio.wait_for(link._establish(started), HANDSHAKE_TIMEOUT)
    except (TimeoutError, ConnectionError, ssl.SSLError, OSError) as exc:
        log.warning("%s: refused connection from %s: NC2S session set-up failed: %s", label, address, exc)
        await link.close()
        return None
    return link
