"""One session's applied turns in their deterministic order, its version, and its conflicts.

Turns are applied causally: a turn is applied once the log holds every turn of the context it was
generated from (its ``deps``) and the turn of its origin before it. The log keeps its turns sorted
by :attr:`Turn.order_key`, so two logs that hold the same turns hold them in the same order
whatever order they arrived in. Two turns neither of whose contexts held the other were written
concurrently (two nodes appended to one session at once): both are kept, the one later in the order
follows the other although it was written without it (it is *rebased*), and the pair is reported
as a :class:`Conflict`. No turn is ever dropped, and every log that holds both reports the pair.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from edgecloud.edge.turns import Turn, TurnId, VersionVector, covers


@dataclass(frozen=True)
class Conflict:
    """Two turns written concurrently: ``rebased`` follows ``first`` in the order but was written
    on a context without it."""

    session: str
    first: TurnId
    rebased: TurnId


@dataclass(frozen=True)
class Applied:
    turn: Turn
    position: int  # index in the order; < len - 1 when it went before turns already applied
    conflicts: tuple[Conflict, ...]


class SessionLog:
    def __init__(self, session: str) -> None:
        self.session = session
        self.turns: dict[TurnId, Turn] = {}
        self.vv: VersionVector = {}
        self._keys: list[tuple[int, str, int]] = []
        self.order: list[Turn] = []
        self.conflicts: list[Conflict] = []

    def __len__(self) -> int:
        return len(self.order)

    def holds(self, turn_id: TurnId) -> bool:
        return self.vv.get(turn_id[0], 0) >= turn_id[1]

    def covers(self, want: VersionVector) -> bool:
        return covers(self.vv, want)

    def can_apply(self, turn: Turn) -> bool:
        return self.vv.get(turn.origin, 0) == turn.seq - 1 and covers(self.vv, turn.deps)

    def apply(self, turn: Turn) -> Applied:
        if not self.can_apply(turn):
            raise ValueError(
                f"turn {turn.origin}:{turn.seq} cannot be applied yet (log at {self.vv}, deps {turn.deps})"
            )
        # Applied turns that its context lacked were written without it too: it was not here yet.
        unseen = [t for t in self.order if turn.deps.get(t.origin, 0) < t.seq]
        conflicts = tuple(
            Conflict(self.session, *((t.id, turn.id) if t.order_key < turn.order_key else (turn.id, t.id)))
            for t in unseen
        )
        key = turn.order_key
        position = bisect.bisect(self._keys, key)
        self._keys.insert(position, key)
        self.order.insert(position, turn)
        self.turns[turn.id] = turn
        self.vv[turn.origin] = turn.seq
        self.conflicts.extend(conflicts)
        return Applied(turn, position, conflicts)

    def since(self, have: VersionVector) -> list[Turn]:
        """The turns a context at ``have`` lacks, in an order that applies causally."""
        return [t for t in self.order if have.get(t.origin, 0) < t.seq]
