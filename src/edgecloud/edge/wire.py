"""The replication protocol's messages and their framing.

Nodes talk over mutual TLS (``edgecloud.c2.tls``). Each node opens one connection to each peer and
sends its requests there (``Push`` a turn, ``Fetch`` missing turns, ``Digest`` of a session's version,
``Ping``); the peer answers on the same connection (``PushAck``, ``FetchReply``, ``Pong``). Both ends
start with ``Hello``.

A frame is a 4-byte big-endian length and a msgpack message (msgspec, tagged by ``type``). A frame
longer than :data:`MAX_FRAME_BYTES` ends the connection (its end cannot be found); a frame that
does not decode to a valid message is answered with ``ProtocolError`` naming the field, and the
connection goes on. Turns carry a digest (:mod:`edgecloud.edge.turns`), checked on receipt.
"""

from __future__ import annotations

import msgspec

from edgecloud.edge.turns import Turn

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024 * 1024
HEADER_BYTES = 4


class Hello(msgspec.Struct, tag="hello", frozen=True, array_like=True):
    node: str
    mode: str
    fingerprint: bytes
    protocol: int = PROTOCOL_VERSION


class Push(msgspec.Struct, tag="push", frozen=True, array_like=True):
    turn: Turn


class PushAck(msgspec.Struct, tag="push_ack", frozen=True, array_like=True, omit_defaults=True):
    session: str
    origin: str
    seq: int
    ok: bool
    code: str = ""
    message: str = ""


class Fetch(msgspec.Struct, tag="fetch", frozen=True, array_like=True):
    fetch_id: int
    session: str
    have: dict[str, int]


class FetchReply(msgspec.Struct, tag="fetch_reply", frozen=True, array_like=True):
    fetch_id: int
    session: str
    known: bool
    version: dict[str, int]
    turns: list[Turn]


class Digest(msgspec.Struct, tag="digest", frozen=True, array_like=True):
    """The version of a session the sender holds (a peer that lacks some of it fetches them)."""

    session: str
    version: dict[str, int]


class Ping(msgspec.Struct, tag="ping", frozen=True, array_like=True):
    sent: float


class Pong(msgspec.Struct, tag="pong", frozen=True, array_like=True):
    sent: float


class ProtocolError(msgspec.Struct, tag="error", frozen=True, array_like=True):
    code: str
    message: str


Message = Hello | Push | PushAck | Fetch | FetchReply | Digest | Ping | Pong | ProtocolError
REQUESTS = (Push, Fetch, Digest, Ping)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


class FrameError(ValueError):
    """A frame whose body is not a valid message (the connection can go on)."""


class FramingError(ValueError):
    """A frame header that cannot be right: the stream cannot be read further."""


def encode(message: Message) -> bytes:
    body = _encoder.encode(message)
    if len(body) > MAX_FRAME_BYTES:
        raise ValueError(
            f"a {type(message).__name__} of {len(body)} bytes exceeds the {MAX_FRAME_BYTES}-byte frame limit"
        )
    return len(body).to_bytes(HEADER_BYTES, "big") + body


def frame_length(header: bytes) -> int:
    length = int.from_bytes(header, "big")
    if length > MAX_FRAME_BYTES:
        raise FramingError(f"frame of {length} bytes announced, over the {MAX_FRAME_BYTES}-byte limit")
    return length


def decode(body: bytes) -> Message:
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as error:  # ValidationError included: it names the field ($.turn.seq)
        raise FrameError(str(error)) from None
