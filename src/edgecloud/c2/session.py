"""NC2S secure session: authenticated records inside mutual TLS, with in-band key renewal.

NC2S (arXiv 2511.21936, "message authentication" and "key renewal") runs every link over
mutual TLS 1.3 and, inside it, authenticates each message with an HMAC under per-session keys
that are renewed periodically by an ephemeral ECDH exchange. This module is that protocol as a
sans-I/O state machine: bytes in, events and bytes out, with an explicit ``now``. The asyncio
glue (:mod:`edgecloud.c2.link`) only moves bytes between it and a TLS stream.

Frame (all integers big-endian)::

    u32 length of what follows
    u8  version (1)        u8  type            u32 key epoch       u64 sequence number
    ... payload
    32  HMAC-SHA256(key[epoch, direction], version..payload)

HELLO frames (epoch 0) carry no HMAC key yet: their payload is JSON with the sender's
certificate chain, an ephemeral P-256 public key and a nonce, signed with the certificate key.
Both sides derive ``HKDF-SHA256(ECDH, salt=nonce_initiator||nonce_responder,
info="nc2s v1 epoch 1")`` → 64 bytes: the initiator→responder key, then the other direction.
A renewal (REKEY → REKEY_ACK → REKEY_CONFIRM; the first two authenticated under the current
keys, the confirmation under the new ones) runs a fresh ECDH and derives epoch ``e+1`` with the
current keys as HKDF salt, so new keys depend on both exchanges. Only the TLS client starts a
renewal; each side switches its sending keys right after its last old-key frame, so over the
ordered TLS stream no valid frame is ever sent under keys the receiver has retired.

Receive rules, in order: the epoch must be the current receive epoch or, once renewal derived
it, the next one (a frame under the next epoch retires the old keys, so anything later under
an older epoch is refused); the HMAC must verify; the sequence number must be new for the
64-wide sliding window. The window moves only after the HMAC verifies, so a forged frame with
a far-future sequence number is dropped without moving it — unlike pymavlink 2.4.50's signing,
where one such timestamp blocks all later valid traffic.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgecloud.c2.pki import Identity, PkiError, check_chain, load_certificates, load_key

VERSION = 1
HEADER = struct.Struct(">BBIQ")
LENGTH = struct.Struct(">I")
MAC_SIZE = 32
OVERHEAD = LENGTH.size + HEADER.size + MAC_SIZE  # bytes NC2S adds to every message inside TLS
MAX_FRAME = 1 << 20
WINDOW = 64


class FrameType:
    HELLO = 1
    REKEY = 2
    REKEY_ACK = 3
    REKEY_CONFIRM = 4
    MAVLINK = 16
    CONTROL = 17


@dataclass(frozen=True)
class Credentials:
    """A principal's certificate chain (leaf first) and private key, plus the trusted root."""

    chain: tuple[x509.Certificate, ...]
    key: ec.EllipticCurvePrivateKey
    root: x509.Certificate

    @classmethod
    def load(cls, directory: Path, name: str) -> Credentials:
        directory = Path(directory)
        return cls(
            tuple(load_certificates(directory / f"{name}.crt")),
            load_key(directory / f"{name}.key"),
            load_certificates(directory / "ca.crt")[0],
        )


@dataclass(frozen=True)
class Established:
    peer: Identity
    at: float


@dataclass(frozen=True)
class Received:
    kind: int
    payload: bytes


@dataclass(frozen=True)
class Rejected:
    """A frame dropped with its reason; the session keeps running."""

    reason: str


@dataclass(frozen=True)
class KeysRenewed:
    epoch: int
    duration: float


@dataclass(frozen=True)
class Failed:
    """The byte stream can no longer be framed or the peer failed authentication: close the link."""

    reason: str


Event = Established | Received | Rejected | KeysRenewed | Failed


class ReplayWindow:
    """Highest sequence number seen plus a bitmap of the ``WINDOW`` below it (RFC 4303 style)."""

    def __init__(self) -> None:
        self.top = -1
        self.bits = 0

    def check(self, seq: int) -> str | None:
        if seq > self.top:
            return None
        if self.top - seq >= WINDOW:
            return f"sequence number {seq} is older than the replay window (newest {self.top})"
        if self.bits >> (self.top - seq) & 1:
            return f"replayed sequence number {seq}"
        return None

    def accept(self, seq: int) -> None:
        if seq > self.top:
            shift = seq - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
            self.top = seq
        else:
            self.bits |= 1 << (self.top - seq)


def encode_frame(kind: int, payload: bytes, epoch: int, seq: int, key: bytes | None) -> bytes:
    body = HEADER.pack(VERSION, kind, epoch, seq) + payload
    mac = hmac.digest(key, body, hashlib.sha256) if key is not None else bytes(MAC_SIZE)
    return LENGTH.pack(len(body) + MAC_SIZE) + body + mac


def _derive(secret: bytes, salt: bytes, epoch: int) -> tuple[bytes, bytes]:
    okm = HKDF(hashes.SHA256(), 64, salt, f"nc2s v1 epoch {epoch}".encode()).derive(secret)
    return okm[:32], okm[32:]


def _public_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _hello_signed_bytes(initiator: bool, eph: bytes, nonce: bytes) -> bytes:
    return b"nc2s-hello-v1|" + (b"I" if initiator else b"R") + eph + nonce


class SecureSession:
    """One end of an NC2S link, after TLS. ``initiator`` is the TLS client; only it starts renewals,
    so the two ends never renew at once."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        initiator: bool,
        tls_peer_der: bytes,
        rekey_interval: float | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.credentials = credentials
        self.initiator = initiator
        self.tls_peer_der = tls_peer_der
        self.rekey_interval = rekey_interval
        self._random = random
        self._out = bytearray()
        self._in = bytearray()
        self._eph = ec.generate_private_key(ec.SECP256R1())
        self._nonce = random(32)
        self.peer: Identity | None = None
        self._failed = False
        self._send_epoch = 0
        self._send_seq = 0
        self._send_keys: dict[int, bytes] = {}
        self._recv_epoch = 0
        self._recv_keys: dict[int, bytes] = {}
        self._window = ReplayWindow()
        self._keys: tuple[bytes, bytes] | None = None  # (initiator→responder, responder→initiator)
        self._rekey_eph: ec.EllipticCurvePrivateKey | None = None
        self._rekey_started: float | None = None
        self._last_rekey = 0.0
        self.frames_sent = 0
        self.frames_received = 0

    # --- outbound -------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Queue this side's HELLO; call once, right after the TLS handshake."""
        eph = _public_bytes(self._eph)
        signature = self.credentials.key.sign(
            _hello_signed_bytes(self.initiator, eph, self._nonce), ec.ECDSA(hashes.SHA256())
        )
        body = {
            "chain": [c.public_bytes(serialization.Encoding.PEM).decode() for c in self.credentials.chain],
            "eph": eph.hex(),
            "nonce": self._nonce.hex(),
            "sig": signature.hex(),
        }
        self._out += encode_frame(FrameType.HELLO, json.dumps(body).encode(), 0, 0, None)
        self._last_rekey = now

    @property
    def established(self) -> bool:
        return self._send_epoch > 0 and self.peer is not None

    @property
    def epoch(self) -> int:
        return self._send_epoch

    def send_key(self) -> tuple[int, bytes]:
        """Current (epoch, key) in the sending direction; used by tests that play an attacker
        holding retired keys."""
        return self._send_epoch, self._send_keys[self._send_epoch]

    def next_seq(self) -> int:
        return self._send_seq

    def send(self, kind: int, payload: bytes) -> None:
        if not self.established:
            raise RuntimeError("NC2S session not established yet")
        self._seal(kind, payload)

    def _seal(self, kind: int, payload: bytes) -> None:
        epoch = self._send_epoch
        self._out += encode_frame(kind, payload, epoch, self._send_seq, self._send_keys[epoch])
        self._send_seq += 1
        self.frames_sent += 1

    def start_rekey(self, now: float) -> None:
        """Begin a key renewal (initiator only); a no-op while one is running."""
        if not self.initiator:
            raise RuntimeError("only the TLS client starts key renewals")
        if self._rekey_eph is not None or not self.established:
            return
        self._rekey_eph = ec.generate_private_key(ec.SECP256R1())
        self._rekey_started = now
        body = {"epoch": self._send_epoch + 1, "eph": _public_bytes(self._rekey_eph).hex()}
        self._seal(FrameType.REKEY, json.dumps(body).encode())

    def timer(self, now: float) -> None:
        """Start a renewal when the interval has elapsed (initiator side)."""
        if (
            self.initiator
            and self.rekey_interval is not None
            and self.established
            and now - self._last_rekey >= self.rekey_interval
        ):
            self.start_rekey(now)

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    # --- inbound --------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> list[Event]:
        if self._failed:
            return []
        self._in += data
        events: list[Event] = []
        while len(self._in) >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self._in)
            if not HEADER.size + MAC_SIZE <= length <= MAX_FRAME:
                self._failed = True
                events.append(Failed(f"frame length {length} outside {HEADER.size + MAC_SIZE}..{MAX_FRAME}"))
                break
            if len(self._in) < LENGTH.size + length:
                break
            frame = bytes(self._in[LENGTH.size : LENGTH.size + length])
            del self._in[: LENGTH.size + length]
            event = self._on_frame(frame, now)
            if event is not None:
                events.append(event)
                if isinstance(event, Failed):
                    self._failed = True
                    break
        return events

    def _on_frame(self, frame: bytes, now: float) -> Event | None:
        body, mac = frame[:-MAC_SIZE], frame[-MAC_SIZE:]
        version, kind, epoch, seq = HEADER.unpack_from(body)
        payload = body[HEADER.size :]
        if version != VERSION:
            return Rejected(f"frame version {version} unsupported (expected {VERSION})")
        if kind == FrameType.HELLO:
            if self.peer is not None:
                return Rejected("HELLO after the session was established")
            return self._on_hello(payload, now)
        if self.peer is None:
            return Failed(f"frame type {kind} before HELLO")
        if epoch not in self._recv_keys:
            if epoch < self._recv_epoch:
                return Rejected(f"key epoch {epoch} was retired by renewal (current {self._recv_epoch})")
            return Rejected(f"unknown key epoch {epoch} (current {self._recv_epoch})")
        expected = hmac.digest(self._recv_keys[epoch], body, hashlib.sha256)
        if not hmac.compare_digest(expected, mac):
            return Rejected(f"HMAC does not verify (type {kind}, epoch {epoch}, sequence number {seq})")
        problem = self._window.check(seq)
        if problem is not None:
            return Rejected(problem)
        self._window.accept(seq)
        self.frames_received += 1
        if epoch > self._recv_epoch:
            # First frame under the renewed keys: the old ones are retired for good.
            for old in [e for e in self._recv_keys if e < epoch]:
                del self._recv_keys[old]
            self._recv_epoch = epoch
        if kind == FrameType.REKEY:
            return self._on_rekey(payload)
        if kind == FrameType.REKEY_ACK:
            return self._on_rekey_ack(payload, now)
        if kind == FrameType.REKEY_CONFIRM:
            return None
        return Received(kind, payload)

    def _on_hello(self, payload: bytes, now: float) -> Event:
        try:
            body = json.loads(payload)
            chain = [x509.load_pem_x509_certificate(pem.encode()) for pem in body["chain"]]
            eph = bytes.fromhex(body["eph"])
            nonce = bytes.fromhex(body["nonce"])
            signature = bytes.fromhex(body["sig"])
        except (ValueError, KeyError, TypeError) as exc:
            return Failed(f"malformed HELLO: {exc}")
        if not chain or chain[0].public_bytes(serialization.Encoding.DER) != self.tls_peer_der:
            return Failed("HELLO certificate differs from the TLS peer certificate")
        try:
            identity = check_chain(chain[0], chain[1] if len(chain) > 1 else None, self.credentials.root)
            public = chain[0].public_key()
            assert isinstance(public, ec.EllipticCurvePublicKey)
            public.verify(signature, _hello_signed_bytes(not self.initiator, eph, nonce), ec.ECDSA(hashes.SHA256()))
            peer_eph = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), eph)
        except PkiError as exc:
            return Failed(str(exc))
        except (InvalidSignature, ValueError) as exc:
            return Failed(f"HELLO signature or ephemeral key invalid: {exc!r}")
        salt = self._nonce + nonce if self.initiator else nonce + self._nonce
        self._install(1, _derive(self._eph.exchange(ec.ECDH(), peer_eph), salt, 1))
        self._recv_epoch = 1
        self.peer = identity
        return Established(identity, now)

    def _install(self, epoch: int, keys: tuple[bytes, bytes]) -> None:
        i2r, r2i = keys
        self._keys = keys
        self._send_keys = {epoch: i2r if self.initiator else r2i}
        self._recv_keys[epoch] = r2i if self.initiator else i2r
        self._send_epoch = epoch

    def _on_rekey(self, payload: bytes) -> Event | None:
        if self.initiator:
            return Rejected("REKEY from the responder: only the TLS client renews keys")
        try:
            body = json.loads(payload)
            epoch = int(body["epoch"])
            peer_eph = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes.fromhex(body["eph"]))
        except (ValueError, KeyError, TypeError) as exc:
            return Rejected(f"malformed REKEY: {exc}")
        if epoch != self._send_epoch + 1:
            return Rejected(f"REKEY to epoch {epoch}, expected {self._send_epoch + 1}")
        eph = ec.generate_private_key(ec.SECP256R1())
        self._seal(FrameType.REKEY_ACK, json.dumps({"epoch": epoch, "eph": _public_bytes(eph).hex()}).encode())
        assert self._keys is not None
        self._install(epoch, _derive(eph.exchange(ec.ECDH(), peer_eph), self._keys[0] + self._keys[1], epoch))
        return KeysRenewed(epoch, 0.0)

    def _on_rekey_ack(self, payload: bytes, now: float) -> Event | None:
        if self._rekey_eph is None or self._rekey_started is None:
            return Rejected("REKEY_ACK without a renewal in progress")
        try:
            body = json.loads(payload)
            epoch = int(body["epoch"])
            peer_eph = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes.fromhex(body["eph"]))
        except (ValueError, KeyError, TypeError) as exc:
            return Rejected(f"malformed REKEY_ACK: {exc}")
        if epoch != self._send_epoch + 1:
            return Rejected(f"REKEY_ACK for epoch {epoch}, expected {self._send_epoch + 1}")
        assert self._keys is not None
        secret = self._rekey_eph.exchange(ec.ECDH(), peer_eph)
        self._install(epoch, _derive(secret, self._keys[0] + self._keys[1], epoch))
        duration = now - self._rekey_started
        self._rekey_eph = None
        self._rekey_started = None
        self._last_rekey = now
        # The first frame under the new keys retires the old ones at the peer: send one at once.
        self._seal(FrameType.REKEY_CONFIRM, b"")
        return KeysRenewed(epoch, duration)
