"""A session's turns: what one exchange adds to a conversation, how it is named, versioned and
checked (DisCEdge, arXiv 2511.22599, §3: the context kept and replicated as token sequences, each
turn appending a delta).

A session is a set of turns. A turn is named by the node that wrote it (``origin``) and its number
among that node's turns of the session (``seq``, from 1). It records ``deps``, the version of the
context it was generated from, as a version vector: for each origin, how many of its turns that
context held. A version vector is the session *version* a client carries (``edge-a:3,edge-b:1``):
a node may answer a client only from a context whose vector covers the client's (read-your-writes,
monotonic reads; docs/edge.md states the model). Its total is the number of turns.

A turn's content is either a token delta (``form="tokens"``: the rendered user message, the answer
and the template's closing tokens, packed 2 or 4 bytes a token, with the tokenizer/model
``fingerprint`` they belong to) or text (``form="text"``, the baseline). Both forms carry the user
message and the answer as text, so a node whose tokenizer differs can render the turn again; on
the wire the text of a token turn is left out when the receiver can decode it from the tokens
(``derivable``) and the receiver's fingerprint is the turn's. ``digest`` (SHA-256, 16 bytes) covers
everything, the texts included, so a replica detects a corrupted or altered turn before it keeps it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence

import msgspec
import numpy as np

VersionVector = dict[str, int]
TurnId = tuple[str, int]  # (origin, seq)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DIGEST_BYTES = 16
FINGERPRINT_BYTES = 16
FORMS = ("tokens", "text")


class VersionError(ValueError):
    """A session version that cannot be parsed; the message says what a version looks like."""


def check_name(name: str, what: str = "node name") -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"{what} {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def parse_version(text: str) -> VersionVector:
    """``edge-a:3,edge-b:1`` (or ``0``/empty for the empty version) as a version vector."""
    text = text.strip()
    if text in ("", "0"):
        return {}
    vector: VersionVector = {}
    for part in text.split(","):
        name, sep, count = part.strip().partition(":")
        if not sep or not NAME_PATTERN.match(name) or not count.isdigit():
            raise VersionError(
                f"session version {text!r}: expected NODE:TURNS pairs separated by commas, as a response's "
                "X-Session-Version gives it (e.g. edge-a:3,edge-b:1), or 0"
            )
        if name in vector:
            raise VersionError(f"session version {text!r}: node {name!r} appears twice")
        if int(count) > 0:
            vector[name] = int(count)
    return vector


def format_version(vector: Mapping[str, int]) -> str:
    items = sorted((name, count) for name, count in vector.items() if count > 0)
    return ",".join(f"{name}:{count}" for name, count in items) or "0"


def covers(have: Mapping[str, int], want: Mapping[str, int]) -> bool:
    """Whether a context at version ``have`` holds every turn of version ``want``."""
    return all(have.get(name, 0) >= count for name, count in want.items())


def merged(a: Mapping[str, int], b: Mapping[str, int]) -> VersionVector:
    both = {name: max(a.get(name, 0), b.get(name, 0)) for name in set(a) | set(b)}
    return {name: count for name, count in both.items() if count}


def total(vector: Mapping[str, int]) -> int:
    return sum(vector.values())


def pack_tokens(ids: Sequence[int]) -> tuple[bytes, int]:
    """Token ids as little-endian integers of 2 bytes (vocabularies up to 65,536) or 4."""
    array = np.asarray(ids, dtype=np.int64)
    if array.size and (array.min() < 0 or array.max() >= 2**32):
        raise ValueError("token ids must be in [0, 2**32)")
    width = 2 if not array.size or array.max() < 2**16 else 4
    return array.astype("<u2" if width == 2 else "<u4").tobytes(), width


def unpack_tokens(data: bytes, width: int) -> list[int]:
    if width not in (2, 4) or len(data) % width:
        raise ValueError(f"a token payload of {len(data)} bytes does not hold {width}-byte ids")
    return np.frombuffer(data, dtype="<u2" if width == 2 else "<u4").tolist()


class Turn(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, array_like=True):
    """One committed exchange of a session (see the module docstring)."""

    session: str
    origin: str
    seq: int
    deps: dict[str, int]
    form: str
    fingerprint: bytes = b""
    tokens: bytes = b""
    width: int = 0
    user_span: tuple[int, int] = (0, 0)
    answer_span: tuple[int, int] = (0, 0)
    derivable: bool = False
    user_text: str | None = None
    answer_text: str | None = None
    created_at: float = 0.0
    digest: bytes = b""

    @property
    def id(self) -> TurnId:
        return (self.origin, self.seq)

    @property
    def depth(self) -> int:
        """How many turns the context it was generated from held."""
        return total(self.deps)

    @property
    def order_key(self) -> tuple[int, str, int]:
        """The deterministic order of a session's turns: by depth, then origin, then seq. It extends
        the causal order (every turn of a turn's context has a smaller depth), so every node that
        holds the same turns orders them alike, concurrent ones included."""
        return (self.depth, self.origin, self.seq)

    def token_ids(self) -> list[int]:
        return unpack_tokens(self.tokens, self.width) if self.width else []

    def stripped(self) -> Turn:
        """The wire form for a receiver that can decode the texts from the tokens."""
        if self.form == "tokens" and self.derivable:
            return msgspec.structs.replace(self, user_text=None, answer_text=None)
        return self


def draft(form: str, user_text: str, answer_text: str, **payload: object) -> Turn:
    """A turn's content before its writer names it: ``ReplicaCore.commit`` fills in the session,
    origin, seq, deps and time. ``payload``: the token fields of a ``tokens`` turn."""
    return Turn(session="", origin="", seq=0, deps={}, form=form, user_text=user_text, answer_text=answer_text,
                **payload)  # type: ignore[arg-type]


def digest_of(turn: Turn) -> bytes:
    """SHA-256 (truncated) of everything in a turn but the digest itself; the texts must be present."""
    if turn.user_text is None or turn.answer_text is None:
        raise ValueError("a turn's digest covers its texts: derive them first")
    body = msgspec.msgpack.encode([
        turn.session, turn.origin, turn.seq, sorted(turn.deps.items()), turn.form, turn.fingerprint,
        turn.tokens, turn.width, list(turn.user_span), list(turn.answer_span), turn.derivable,
        turn.user_text, turn.answer_text, turn.created_at,
    ])
    return hashlib.sha256(body).digest()[:DIGEST_BYTES]


def sealed(turn: Turn) -> Turn:
    return msgspec.structs.replace(turn, digest=digest_of(turn))


class TurnError(ValueError):
    """A turn that is malformed or does not match its digest; ``code`` says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_turn(turn: Turn, peers: Sequence[str]) -> None:
    """Structural checks of a received turn, before its digest: names, numbers, spans."""
    where = f"turn {turn.origin}:{turn.seq} of session {turn.session!r}"
    problems = []
    if not NAME_PATTERN.match(turn.session):
        problems.append(f"session {turn.session!r} is not a valid session id")
    if turn.origin not in peers:
        problems.append(f"origin {turn.origin!r} is not a node of this edge")
    if turn.seq < 1:
        problems.append(f"seq must be >= 1, got {turn.seq}")
    if any(name not in peers or count < 0 for name, count in turn.deps.items()):
        problems.append(f"deps {turn.deps} name unknown nodes or negative counts")
    elif turn.deps.get(turn.origin, 0) != turn.seq - 1:
        problems.append(f"deps hold {turn.deps.get(turn.origin, 0)} turns of its origin, expected {turn.seq - 1}")
    if turn.form not in FORMS:
        problems.append(f"form must be one of {FORMS}, got {turn.form!r}")
    if turn.form == "tokens":
        count = len(turn.tokens) // turn.width if turn.width in (2, 4) else -1
        if turn.width not in (2, 4) or len(turn.tokens) % turn.width:
            problems.append(f"width {turn.width} does not divide a {len(turn.tokens)}-byte token payload")
        for name, (start, end) in (("user_span", turn.user_span), ("answer_span", turn.answer_span)):
            if not 0 <= start <= end <= count:
                problems.append(f"{name} {start}:{end} is outside the {count} tokens")
        if len(turn.fingerprint) != FINGERPRINT_BYTES:
            problems.append(f"fingerprint must be {FINGERPRINT_BYTES} bytes, got {len(turn.fingerprint)}")
    elif turn.user_text is None or turn.answer_text is None:
        problems.append("a text turn must carry user_text and answer_text")
    if len(turn.digest) != DIGEST_BYTES:
        problems.append(f"digest must be {DIGEST_BYTES} bytes, got {len(turn.digest)}")
    if problems:
        raise TurnError("malformed_turn", f"{where}: {'; '.join(problems)}")


def verify(turn: Turn) -> None:
    if digest_of(turn) != turn.digest:
        raise TurnError(
            "corrupt_turn",
            f"turn {turn.origin}:{turn.seq} of session {turn.session!r}: its content does not match its digest "
            "(corrupted or altered in transit); not kept",
        )
