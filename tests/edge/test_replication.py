"""The replication core on a virtual clock: reads wait for (and fetch) the client's version, writes
are acknowledged at quorum, bad turns are refused, nothing is answered from a stale context."""

from __future__ import annotations

import msgspec

from edgecloud.edge.replication import (
    Action,
    ReadFailed,
    ReadReady,
    ReplicaCore,
    ReplicationSettings,
    Send,
    WriteAcked,
    WriteFailed,
)
from edgecloud.edge.store import ContextStore
from edgecloud.edge.turns import draft
from edgecloud.edge.wire import Fetch, Hello, Push, PushAck, decode, encode

NAMES = ["a", "b", "c"]


class Cluster:
    """Three cores whose messages wait in ``wire`` until delivered (or dropped) by the test."""

    def __init__(self, quorum: int = 2, **settings: float) -> None:
        config = ReplicationSettings(write_quorum=quorum, read_timeout_s=1.0, commit_timeout_s=2.0, retry_s=0.3,
                                     **settings)  # type: ignore[arg-type]
        self.cores = {n: ReplicaCore(n, [p for p in NAMES if p != n], ContextStore(":memory:"), config, mode="text")
                      for n in NAMES}
        self.wire: list[tuple[str, Send]] = []
        self.out: list[tuple[str, Action]] = []
        self.now = 0.0
        for a in NAMES:
            for b in NAMES:
                if a != b:
                    self.take(a, self.cores[a].peer_up(b, Hello(b, "text", b""), self.now))

    def take(self, node: str, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.wire.append((node, action))
            else:
                self.out.append((node, action))

    def deliver(self, keep: object = None) -> None:
        """Deliver everything in flight (and what it causes), except messages ``keep`` holds back."""
        while True:
            ready = [(s, m) for s, m in self.wire if not (keep and keep(s, m))]  # type: ignore[operator]
            if not ready:
                return
            self.wire = [item for item in self.wire if item not in ready]
            for src, send in ready:
                message = decode(encode(send.message)[4:])
                self.take(send.peer, self.cores[send.peer].on_message(src, message, self.now))

    def results(self, kind: type) -> list[tuple[str, object]]:
        found = [(n, a) for n, a in self.out if isinstance(a, kind)]
        self.out = [(n, a) for n, a in self.out if not isinstance(a, kind)]
        return found

    def turn(self, node: str, read_id: int, session: str, want: dict[str, int], text: str) -> None:
        self.take(node, self.cores[node].open_read(read_id, session, want, self.now))
        self.deliver()
        ready = self.results(ReadReady)
        assert ready, self.out
        self.take(node, self.cores[node].commit(read_id, draft("text", text, "ok"), self.now))


def test_a_roaming_client_is_answered_only_once_the_node_holds_what_it_saw() -> None:
    edge = Cluster()
    edge.turn("a", 1, "s", {}, "first")
    edge.deliver(keep=lambda src, send: send.peer == "c")  # c has not heard of it
    (_, acked), = edge.results(WriteAcked)
    assert acked.version == {"a": 1}
    edge.take("a", edge.cores["a"].release(1, edge.now))
    edge.wire.clear()  # the push to c is lost
    edge.take("c", edge.cores["c"].open_read(2, "s", acked.version, edge.now))
    assert not edge.results(ReadReady)  # c does not answer from its empty context...
    assert any(isinstance(send.message, Fetch) for _, send in edge.wire)
    edge.deliver()  # ...it fetches the turn
    (_, ready), = edge.results(ReadReady)
    assert ready.version == {"a": 1} and [t.user_text for t in ready.turns] == ["first"]


def test_versions_no_quorum_knows_are_from_the_future_and_unknown_sessions_are_404() -> None:
    edge = Cluster()
    edge.turn("a", 1, "s", {}, "first")
    edge.deliver()
    edge.take("b", edge.cores["b"].open_read(2, "s", {"a": 5}, edge.now))
    edge.deliver()
    (_, failed), = edge.results(ReadFailed)
    assert failed.status == 409 and failed.code == "version_from_future" and "a:1" in failed.message
    edge.take("b", edge.cores["b"].open_read(3, "nobody", {"a": 1}, edge.now))
    edge.deliver()
    (_, failed), = edge.results(ReadFailed)
    assert failed.status == 404 and failed.code == "session_not_found"
    edge.take("b", edge.cores["b"].open_read(4, "s", {"z": 1}, edge.now))
    (_, failed), = edge.results(ReadFailed)
    assert failed.code == "version_from_future" and "'z'" in failed.message


def test_a_read_that_cannot_catch_up_fails_after_its_timeout_never_answering_stale() -> None:
    edge = Cluster()
    edge.turn("a", 1, "s", {}, "first")
    edge.deliver(keep=lambda src, send: "c" in (src, send.peer))
    edge.results(WriteAcked)
    edge.take("c", edge.cores["c"].open_read(2, "s", {"a": 1}, edge.now))
    edge.deliver(keep=lambda src, send: "c" in (src, send.peer))  # c's fetches get no answer
    edge.now = 1.5
    edge.take("c", edge.cores["c"].tick(edge.now))
    (_, failed), = edge.results(ReadFailed)
    assert failed.status == 503 and failed.code == "session_behind" and not edge.results(ReadReady)


def test_a_write_is_acknowledged_only_at_quorum_and_replicated_later_when_it_was_not() -> None:
    edge = Cluster(quorum=3)
    edge.turn("a", 1, "s", {}, "first")
    edge.deliver(keep=lambda src, send: send.peer == "c" or src == "c")
    assert not edge.results(WriteAcked)  # b holds it; the quorum of 3 needs c too
    edge.now = 2.5
    edge.take("a", edge.cores["a"].tick(edge.now))
    (_, failed), = edge.results(WriteFailed)
    assert failed.status == 503 and failed.code == "not_replicated" and "2 of the 3" in failed.message
    edge.deliver()  # c comes through: the retried push lands
    assert [t.user_text for t in edge.cores["c"].log("s").order] == ["first"]
    assert not edge.cores["a"].outbox["c"] and not edge.cores["a"].outbox["b"]


def test_corrupt_or_conflicting_turns_are_refused_and_nothing_else_is_touched() -> None:
    edge = Cluster()
    edge.turn("a", 1, "s", {}, "first")
    edge.deliver()
    edge.results(WriteAcked)
    good = edge.cores["a"].log("s").order[0]
    bad = msgspec.structs.replace(good, session="t", answer_text="tampered")
    acks = edge.cores["b"].on_message("a", Push(bad), edge.now)
    (ack,) = [a.message for a in acks if isinstance(a, Send)]
    assert isinstance(ack, PushAck) and not ack.ok and ack.code == "corrupt_turn"
    assert not edge.cores["b"].store.has("t") and len(edge.cores["b"].log("s")) == 1
    other = msgspec.structs.replace(good, answer_text="other")
    from edgecloud.edge.turns import sealed

    acks = edge.cores["b"].on_message("a", Push(sealed(other)), edge.now)
    (ack,) = [a.message for a in acks if isinstance(a, Send)]
    assert ack.code == "conflicting_turn" and edge.cores["b"].log("s").order[0].answer_text == "ok"


def test_a_turn_whose_context_is_missing_is_fetched_applied_then_acknowledged() -> None:
    edge = Cluster()
    edge.turn("a", 1, "s", {}, "first")
    edge.deliver(keep=lambda src, send: send.peer == "c")
    edge.results(WriteAcked)
    edge.wire.clear()
    edge.take("a", edge.cores["a"].release(1, edge.now))
    edge.take("b", edge.cores["b"].open_read(2, "s", {"a": 1}, edge.now))
    edge.results(ReadReady)
    edge.take("b", edge.cores["b"].commit(2, draft("text", "second", "ok"), edge.now))
    sent = [(src, send) for src, send in edge.wire if send.peer == "c"]
    assert sent and isinstance(sent[0][1].message, Push)  # b:1 reaches c, which lacks a:1
    edge.deliver()
    assert [t.user_text for t in edge.cores["c"].log("s").order] == ["first", "second"]
    (_, acked), = edge.results(WriteAcked)
    assert acked.version == {"a": 1, "b": 1}


def test_one_turn_of_a_session_at_a_time_per_node() -> None:
    edge = Cluster()
    core = edge.cores["a"]
    edge.take("a", core.open_read(1, "s", {}, edge.now, create=True))
    edge.take("a", core.open_read(2, "s", {}, edge.now))
    edge.deliver()
    assert [a.read_id for _, a in edge.results(ReadReady)] == [1]
    edge.take("a", core.commit(1, draft("text", "one", "ok"), edge.now))
    edge.deliver()
    edge.take("a", core.release(1, edge.now))
    (_, ready), = edge.results(ReadReady)
    assert ready.read_id == 2 and ready.version == {"a": 1}


def test_a_turn_not_yet_on_a_quorum_is_never_shown_to_a_client() -> None:
    """A reader at the writer waits for the writer's own unacknowledged turn to reach a quorum: a
    version naming it could otherwise outlive the only node that holds it."""
    edge = Cluster(quorum=2)
    edge.turn("a", 1, "s", {}, "first")
    edge.wire.clear()  # no peer hears of it
    edge.now = 2.5
    edge.take("a", edge.cores["a"].tick(edge.now))
    (_, failed), = edge.results(WriteFailed)
    assert failed.code == "not_replicated"
    edge.take("a", edge.cores["a"].release(1, edge.now))
    edge.wire.clear()
    edge.take("a", edge.cores["a"].open_read(2, "s", {}, edge.now, exclusive=False))
    assert not edge.results(ReadReady)  # the turn is stored on a alone
    edge.now = 3.0
    edge.take("a", edge.cores["a"].tick(edge.now))  # a pushes it again...
    edge.deliver()  # ...and b and c acknowledge it
    (_, ready), = edge.results(ReadReady)
    assert ready.version == {"a": 1} and edge.cores["a"].stable(ready.turns[0])
