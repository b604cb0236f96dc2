"""The SQLite context store: turns survive a reopen, acknowledgements are recorded, and a full disk
fails one write cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.edge.store import ContextStore, StoreFullError
from edgecloud.edge.turns import Turn, sealed


def make(seq: int, text: str = "x") -> Turn:
    return sealed(Turn(session="s", origin="a", seq=seq, deps={"a": seq - 1}, form="text", user_text=text,
                       answer_text=text))


def test_turns_and_acknowledgements_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = ContextStore(path)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for seq in (2, 1):
        store.add(make(seq))
    store.add(make(1, "ignored: a turn is written once"))
    store.mark_acked("s", "a", 1, "b")
    store.close()
    again = ContextStore(path)
    assert [t.seq for t in again.turns("s")] == [1, 2] and again.turns("s")[0].user_text == "x"
    assert [(t.seq, acked) for t, acked in again.unacknowledged("a")] == [(1, {"b"}), (2, set())]
    assert again.has("s") and not again.has("t") and again.sessions() == ["s"]


def test_a_full_disk_fails_one_write_and_keeps_the_rest(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "small.sqlite", max_pages=8)
    store.add(make(1))
    with pytest.raises(StoreFullError, match="the context store is full"):
        for seq in range(2, 200):
            store.add(make(seq, "y" * 2000))
    kept = store.turns("s")
    assert kept[0].user_text == "x" and [t.seq for t in kept] == list(range(1, len(kept) + 1))
