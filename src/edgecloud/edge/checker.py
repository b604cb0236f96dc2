"""A checker of session guarantees over what clients saw (Terry et al., "Session guarantees for weakly
consistent replicated data", PDIS 1994; the guarantees DisCEdge promises roaming clients).

It is told every client-visible operation, in the order each client made them: the turns a read
was answered from (the set of turn ids of the context the node used), and each turn acknowledged to
the client. It reports:

* **read-your-writes** violations: a read whose context lacks a turn acknowledged to the same
  client before the read began;
* **monotonic-reads** violations: a read whose context lacks a turn that an earlier read of the
  same client was answered from;
* **lost turns**: acknowledged turns that a node's final copy of the session lacks;
* **divergence**: nodes whose final copies hold the same turns in different orders.

The checker knows nothing of version vectors: it judges sets of turns, so it checks the version
logic rather than restating it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

TurnId = tuple[str, int]


@dataclass(frozen=True)
class Violation:
    kind: str  # read_your_writes | monotonic_reads | lost_turn | divergence
    client: str
    session: str
    detail: str


@dataclass
class _ClientView:
    written: set[TurnId] = field(default_factory=set)
    seen: set[TurnId] = field(default_factory=set)


@dataclass
class SessionChecker:
    violations: list[Violation] = field(default_factory=list)
    reads: int = 0
    writes: int = 0
    _views: dict[tuple[str, str], _ClientView] = field(default_factory=dict)
    _acked: dict[str, set[TurnId]] = field(default_factory=dict)

    def read(self, client: str, session: str, observed: Iterable[TurnId], where: str = "") -> None:
        """``client``'s read of ``session`` was answered from the turns ``observed``."""
        self.reads += 1
        observed = set(observed)
        view = self._views.setdefault((client, session), _ClientView())
        at = f" at {where}" if where else ""
        missing_writes = view.written - observed
        if missing_writes:
            self.violations.append(Violation(
                "read_your_writes", client, session,
                f"read{at} lacks its own acknowledged turns {sorted(missing_writes)}",
            ))
        missing_seen = view.seen - view.written - observed
        if missing_seen:
            self.violations.append(Violation(
                "monotonic_reads", client, session, f"read{at} lacks turns an earlier read saw: {sorted(missing_seen)}"
            ))
        view.seen |= observed

    def acked(self, client: str, session: str, turn: TurnId) -> None:
        """A turn was acknowledged to ``client``."""
        self.writes += 1
        view = self._views.setdefault((client, session), _ClientView())
        view.written.add(turn)
        view.seen.add(turn)
        self._acked.setdefault(session, set()).add(turn)

    def final(self, copies: Mapping[str, Mapping[str, Sequence[TurnId]]]) -> None:
        """The sessions' final orders on each live node (``copies[node][session]``), once replication
        has settled: every acknowledged turn must be everywhere, in one order."""
        for session, acked in self._acked.items():
            orders = {node: list(sessions.get(session, ())) for node, sessions in copies.items()}
            for node, order in orders.items():
                lost = acked - set(order)
                if lost:
                    self.violations.append(Violation("lost_turn", "-", session, f"{node} lacks {sorted(lost)}"))
            distinct = {tuple(order) for order in orders.values()}
            if len(distinct) > 1:
                self.violations.append(Violation(
                    "divergence", "-", session, f"nodes hold different orders: {dict(sorted(orders.items()))}"
                ))

    def count(self, kind: str) -> int:
        return sum(1 for v in self.violations if v.kind == kind)


def turns_of(version: Mapping[str, int]) -> set[TurnId]:
    """The turns a version vector names (each origin's first turns)."""
    return {(origin, seq) for origin, count in version.items() for seq in range(1, count + 1)}
