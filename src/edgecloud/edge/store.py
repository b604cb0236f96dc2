"""The context store of an edge node: SQLite, one file per node, in WAL mode (DisCEdge keeps its
contexts in an embedded store as well).

Per session the store holds its turns: each turn's token delta (the session's token ids are the
deltas in the session's order), its version vector (``deps``), the tokenizer/model fingerprint
the tokens were made with, and the user message and answer as text; and, for turns this node
wrote, which peers acknowledged them. A turn is written in one transaction, with
``synchronous=FULL`` by default, so a turn acknowledged to a client survives the node's crash.

A full disk (SQLite's ``SQLITE_FULL``) raises :class:`StoreFullError`: the transaction is rolled
back, nothing already stored is touched, and the node keeps serving what it holds.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from edgecloud.edge.turns import Turn

_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    session TEXT NOT NULL,
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    depth INTEGER NOT NULL,
    body BLOB NOT NULL,
    acked_by TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (session, origin, seq)
) WITHOUT ROWID;
"""

_SQLITE_FULL = 13


class StoreError(RuntimeError):
    """The store cannot be read or written."""


class StoreFullError(StoreError):
    """The disk (or the store's size limit) is full: nothing was written."""


def _failure(error: sqlite3.Error, what: str) -> StoreError:
    if getattr(error, "sqlite_errorcode", None) == _SQLITE_FULL or "full" in str(error):
        return StoreFullError(f"the context store is full ({error}) while {what}; nothing was written")
    return StoreError(f"the context store failed ({error}) while {what}")


class ContextStore:
    """``ContextStore(path)``; ``":memory:"`` for a store without a file (tests, the simulator).
    ``max_pages`` caps the database's size in pages (SQLite's ``max_page_count``)."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", max_pages: int | None = None) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.path = str(path)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self.db.executescript(_SCHEMA)
            if max_pages is not None:
                self.db.execute(f"PRAGMA max_page_count={int(max_pages)}")
        except sqlite3.Error as error:
            raise _failure(error, f"opening {self.path}") from error
        self._decoder = msgspec.msgpack.Decoder(Turn)
        self._encoder = msgspec.msgpack.Encoder()

    def close(self) -> None:
        self.db.close()

    def add(self, turn: Turn) -> None:
        """Store one turn (texts included); an existing turn of the same id is left as it is."""
        try:
            self.db.execute(
                "INSERT OR IGNORE INTO turns (session, origin, seq, depth, body) VALUES (?, ?, ?, ?, ?)",
                (turn.session, turn.origin, turn.seq, turn.depth, self._encoder.encode(turn)),
            )
        except sqlite3.Error as error:
            raise _failure(error, f"storing turn {turn.origin}:{turn.seq} of session {turn.session!r}") from error

    def mark_acked(self, session: str, origin: str, seq: int, peer: str) -> None:
        try:
            row = self.db.execute(
                "SELECT acked_by FROM turns WHERE session = ? AND origin = ? AND seq = ?", (session, origin, seq)
            ).fetchone()
            if row is None:
                return
            acked = set(filter(None, row[0].split(",")))
            if peer not in acked:
                acked.add(peer)
                self.db.execute(
                    "UPDATE turns SET acked_by = ? WHERE session = ? AND origin = ? AND seq = ?",
                    (",".join(sorted(acked)), session, origin, seq),
                )
        except sqlite3.Error as error:
            raise _failure(error, f"recording {peer}'s acknowledgement") from error

    def turns(self, session: str) -> list[Turn]:
        """A session's turns in an order that applies causally (by depth)."""
        rows = self.db.execute(
            "SELECT body FROM turns WHERE session = ? ORDER BY depth, origin, seq", (session,)
        ).fetchall()
        return [self._decoder.decode(body) for (body,) in rows]

    def has(self, session: str) -> bool:
        return self.db.execute("SELECT 1 FROM turns WHERE session = ? LIMIT 1", (session,)).fetchone() is not None

    def sessions(self) -> list[str]:
        return [s for (s,) in self.db.execute("SELECT DISTINCT session FROM turns ORDER BY session")]

    def sessions_with(self, origins: set[str]) -> list[str]:
        """Sessions that hold turns written by any of ``origins``."""
        marks = ",".join("?" * len(origins))
        query = f"SELECT DISTINCT session FROM turns WHERE origin IN ({marks}) ORDER BY session"
        return [s for (s,) in self.db.execute(query, sorted(origins))]

    def unacknowledged(self, origin: str) -> list[tuple[Turn, set[str]]]:
        """Turns written by ``origin`` (this node) with the peers that acknowledged each."""
        rows = self.db.execute(
            "SELECT body, acked_by FROM turns WHERE origin = ? ORDER BY session, depth, seq", (origin,)
        ).fetchall()
        return [(self._decoder.decode(body), set(filter(None, acked.split(",")))) for body, acked in rows]
