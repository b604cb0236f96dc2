"""A session log orders turns deterministically whatever order they arrive in, applies them only
after their context, and reports concurrent writes without dropping any."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecloud.edge.log import Conflict, SessionLog
from edgecloud.edge.turns import Turn, sealed


def make(origin: str, seq: int, deps: dict[str, int]) -> Turn:
    return sealed(Turn(session="s", origin=origin, seq=seq, deps={**deps, origin: seq - 1}, form="text",
                       user_text=f"{origin}{seq}", answer_text="a"))


# Two nodes write concurrently on a shared context, then one writes having seen both.
A1 = make("a", 1, {})
B1 = make("b", 1, {"a": 1})
A2 = make("a", 2, {"a": 1})  # concurrent with B1
C1 = make("c", 1, {"a": 2, "b": 1})
HISTORY = [A1, B1, A2, C1]


def apply_in(order: list[Turn]) -> SessionLog:
    log, waiting = SessionLog("s"), list(order)
    while waiting:
        ready = next(t for t in waiting if log.can_apply(t))
        waiting.remove(ready)
        log.apply(ready)
    return log


@given(st.permutations(HISTORY))
def test_every_arrival_order_gives_the_same_order_and_conflicts(arrival: list[Turn]) -> None:
    log = apply_in(arrival)
    assert [t.id for t in log.order] == [("a", 1), ("a", 2), ("b", 1), ("c", 1)]
    assert set(log.conflicts) == {Conflict("s", ("a", 2), ("b", 1))}
    assert log.vv == {"a": 2, "b": 1, "c": 1} and len(log) == 4


def test_a_turn_waits_for_its_context_and_since_lists_what_a_version_lacks() -> None:
    log = SessionLog("s")
    assert not log.can_apply(B1) and not log.can_apply(make("a", 2, {}))
    with pytest.raises(ValueError, match="cannot be applied yet"):
        log.apply(B1)
    log.apply(A1)
    log.apply(B1)
    assert [t.id for t in log.since({"a": 1})] == [("b", 1)] and log.covers({"a": 1, "b": 1})
    assert not log.conflicts
