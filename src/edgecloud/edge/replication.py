"""The replication protocol and session guarantees of one edge node, as a plain object.

``ReplicaCore`` has no sockets, tasks or clock: the glue (:mod:`edgecloud.edge.node`, or the
simulator in the tests) hands it events with an explicit ``now`` (a client's read, a commit, a
message from a peer, a peer coming up or going down, a timer) and carries out the actions it
returns (send a message, answer or fail a client). The store it writes turns to is injected.

The rules (docs/edge.md, "Consistency model", states them as guarantees):

* **Reads** (every turn starts with one): a client names the version it last saw. The node answers
  only from a context that covers it and whose every turn is *stable*, known to be stored on
  ``write_quorum`` nodes (a version a client is given never names a turn a crash could still take:
  a node holding a turn not yet known stable pushes it to more peers and waits for their
  acknowledgements); until then it fetches the missing turns from every peer and
  waits, up to ``read_timeout_s``, then fails (``503 session_behind``), never answering from a
  stale context. Once peers that, with this node, meet every write quorum (``N - W + 1`` nodes)
  have answered and the context still does not cover the version, no acknowledged write can be
  missing: the version is from the future (``409``), or the session is unknown (``404``).
* **Writes**: a turn gets the next number of this node's turns and the version it was generated
  from; it is stored here, then pushed to the replica set (every peer, or the ``replicas`` nearest)
  and acknowledged to the client once ``write_quorum`` nodes (this one included) hold it. Pushes
  not acknowledged are retried until they are, across restarts (the store records acknowledgements).
* **Apply**: a replica keeps a turn after checking it against its digest, applies it once it
  holds the turn's context (fetching what is missing from the sender), and acknowledges it then.
  Turns written concurrently on two nodes are both kept, ordered deterministically and reported
  (:mod:`edgecloud.edge.log`).
* **A writer gone**: only a turn's writer pushes it. When a peer goes down, this node announces its
  version of every session holding turns of that peer (``Digest``) to the others, and to a peer
  that comes up while writers are down; a node that lacks some of those turns fetches them, so the
  surviving nodes converge even on turns the dead writer had pushed to some of them only.
* One turn of a session at a time per node: a turn's read holds the session until it is released.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from edgecloud.edge.log import SessionLog
from edgecloud.edge.store import ContextStore, StoreError, StoreFullError
from edgecloud.edge.turns import Turn, TurnError, TurnId, VersionVector, check_turn, merged, sealed, verify
from edgecloud.edge.wire import Digest, Fetch, FetchReply, Hello, Message, Ping, Pong, ProtocolError, Push, PushAck


@dataclass(frozen=True)
class ReplicationSettings:
    """``write_quorum``: nodes, the writer included, that hold a turn before it is acknowledged
    (``N // 2 + 1`` of ``N`` nodes survives any minority of crashes). ``replicas``: peers each turn
    is pushed to (None: all; k: the k nearest by measured round-trip time)."""

    write_quorum: int = 2
    replicas: int | None = None
    read_timeout_s: float = 2.0
    commit_timeout_s: float = 5.0
    retry_s: float = 0.5

    def check(self, num_nodes: int) -> None:
        if not 1 <= self.write_quorum <= num_nodes:
            raise ValueError(
                f"write_quorum must be in 1..{num_nodes} (the nodes of this edge), got {self.write_quorum}"
            )
        if self.replicas is not None and not 0 <= self.replicas <= num_nodes - 1:
            raise ValueError(f"replicas must be in 0..{num_nodes - 1} (the peers), got {self.replicas}")
        pushed = num_nodes - 1 if self.replicas is None else self.replicas
        if self.write_quorum > pushed + 1:
            raise ValueError(
                f"write_quorum {self.write_quorum} needs at least {self.write_quorum - 1} replicas, got {pushed}"
            )
        for name in ("read_timeout_s", "commit_timeout_s", "retry_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def majority(num_nodes: int) -> int:
    return num_nodes // 2 + 1


# -- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    peer: str
    message: Message


@dataclass(frozen=True)
class ReadReady:
    """The read may proceed from the session's ``turns`` in order (at ``version``), as they were when
    it became ready (the log may grow before the glue acts on this); an exclusive read holds the
    session until :meth:`ReplicaCore.release`."""

    read_id: int
    session: str
    version: VersionVector
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class ReadFailed:
    read_id: int
    status: int
    code: str
    message: str


@dataclass(frozen=True)
class WriteAcked:
    read_id: int
    turn: Turn
    version: VersionVector  # what the client has now seen: the context it read, and its turn
    conflicts: int


@dataclass(frozen=True)
class WriteFailed:
    read_id: int
    status: int
    code: str
    message: str


@dataclass(frozen=True)
class Event:
    """Something the glue should log and count: ``conflict``, ``rejected`` (a turn refused),
    ``nack`` (a peer refused ours), ``protocol`` (a peer's protocol error), ``peer``."""

    kind: str
    peer: str | None
    message: str


Action = Send | ReadReady | ReadFailed | WriteAcked | WriteFailed | Event


# -- state --------------------------------------------------------------------------------------


@dataclass
class _Read:
    read_id: int
    session: str
    want: VersionVector
    exclusive: bool
    create: bool
    deadline: float
    fetches: dict[int, str] = field(default_factory=dict)  # fetch id -> peer
    replied: set[str] = field(default_factory=set)
    next_fetch: float = 0.0


@dataclass
class _Held:
    session: str
    base: VersionVector


@dataclass
class _Write:
    read_id: int
    turn: Turn
    version: VersionVector
    deadline: float
    acks: set[str] = field(default_factory=set)
    refusals: dict[str, str] = field(default_factory=dict)


@dataclass
class _Outgoing:
    turn: Turn
    next_try: float


@dataclass
class _PeerState:
    up: bool = False
    fingerprint: bytes = b""
    rtt_s: float | None = None


def _key(turn: Turn) -> tuple[str, str, int]:
    return (turn.session, turn.origin, turn.seq)


class ReplicaCore:
    def __init__(
        self,
        name: str,
        peers: Sequence[str],
        store: ContextStore,
        settings: ReplicationSettings,
        *,
        mode: str,
        fingerprint: bytes = b"",
        derive_texts: Callable[[Turn], tuple[str, str]] | None = None,
        now: float = 0.0,
    ) -> None:
        if name in peers or len(set(peers)) != len(peers):
            raise ValueError(f"peers must be distinct and exclude this node ({name!r}), got {list(peers)}")
        settings.check(1 + len(peers))
        self.name = name
        self.peers = list(peers)
        self.nodes = [name, *self.peers]
        self.store = store
        self.settings = settings
        self.mode = mode
        self.fingerprint = fingerprint
        self.derive_texts = derive_texts
        self.logs: dict[str, SessionLog] = {}
        self.peer: dict[str, _PeerState] = {p: _PeerState() for p in self.peers}
        self.reads: dict[int, _Read] = {}
        self.held: dict[int, _Held] = {}
        self.busy: dict[str, int] = {}
        self.writes: dict[tuple[str, str, int], _Write] = {}
        self.outbox: dict[str, dict[tuple[str, str, int], _Outgoing]] = {p: {} for p in self.peers}
        self.pending: dict[str, dict[TurnId, Turn]] = {}
        self.ack_after_apply: dict[tuple[str, str, int], set[str]] = {}
        # Nodes known to hold a turn besides its writer and this node (which always do): peers that
        # acknowledged it, or sent it here.
        self.holders: dict[tuple[str, str, int], set[str]] = {}
        self._fetch_ids = 0
        for turn, acked in store.unacknowledged(name):
            self.holders[_key(turn)] = set(acked)
            for peer in self._targets():
                if peer not in acked:
                    self.outbox[peer][_key(turn)] = _Outgoing(turn, now)

    # -- helpers ---------------------------------------------------------------------------------

    @property
    def read_quorum(self) -> int:
        """Nodes whose answers together meet every write quorum."""
        return len(self.nodes) - self.settings.write_quorum + 1

    def log(self, session: str) -> SessionLog:
        log = self.logs.get(session)
        if log is None:
            log = SessionLog(session)
            for turn in self.store.turns(session):
                log.apply(turn)
            self.logs[session] = log
        return log

    def _targets(self) -> list[str]:
        if self.settings.replicas is None:
            return list(self.peers)

        def distance(peer: str) -> tuple[bool, float, int]:
            state = self.peer[peer]
            rtt = state.rtt_s if state.rtt_s is not None else float("inf")
            return (not state.up, rtt, self.peers.index(peer))

        return sorted(self.peers, key=distance)[: self.settings.replicas]

    def stable(self, turn: Turn) -> bool:
        """Whether the turn is known to be stored on ``write_quorum`` nodes."""
        held = {turn.origin, self.name} | self.holders.get(_key(turn), set())
        return len(held) >= self.settings.write_quorum

    def _spread(self, turns: list[Turn], now: float) -> list[Action]:
        """Push turns not yet known stable to the up peers not known to hold them (once; then retried)."""
        actions: list[Action] = []
        for turn in turns:
            key = _key(turn)
            held = {turn.origin, self.name} | self.holders.get(key, set())
            for peer in self.peers:
                if self.peer[peer].up and peer not in held and key not in self.outbox[peer]:
                    self.outbox[peer][key] = _Outgoing(turn, now + self._retry_after(peer))
                    actions.append(Send(peer, Push(self._wire(turn, peer))))
        return actions

    def _wire(self, turn: Turn, peer: str) -> Turn:
        if turn.form == "tokens" and turn.derivable and self.peer[peer].fingerprint == turn.fingerprint:
            return turn.stripped()
        return turn

    def _retry_after(self, peer: str) -> float:
        rtt = self.peer[peer].rtt_s or 0.0
        return max(self.settings.retry_s, 4 * rtt)

    def _next_fetch_id(self) -> int:
        self._fetch_ids += 1
        return self._fetch_ids

    # -- client side: reads ------------------------------------------------------------------------

    def open_read(
        self, read_id: int, session: str, want: VersionVector, now: float, *, exclusive: bool = True,
        create: bool = False,
    ) -> list[Action]:
        """A client's read of ``session`` at (at least) version ``want``; ``exclusive`` for a turn,
        which holds the session until :meth:`release`; ``create`` for a session the client just
        named as new (nothing to look for)."""
        unknown = sorted(n for n in want if n not in self.nodes)
        if unknown:
            return [ReadFailed(
                read_id, 409, "version_from_future",
                f"session version names node(s) {unknown} that are not part of this edge ({', '.join(self.nodes)})",
            )]
        read = _Read(read_id, session, dict(want), exclusive, create, now + self.settings.read_timeout_s)
        self.reads[read_id] = read
        log = self.log(session)
        actions = self._fetch(read, now) if not (create or (len(log) and log.covers(want))) else []
        return actions + self._progress(read, now)

    def _fetch(self, read: _Read, now: float) -> list[Action]:
        have = dict(self.log(read.session).vv)
        actions: list[Action] = []
        asked = set(read.fetches.values())
        for peer in self.peers:
            if self.peer[peer].up and peer not in read.replied and peer not in asked:
                fetch_id = self._next_fetch_id()
                read.fetches[fetch_id] = peer
                actions.append(Send(peer, Fetch(fetch_id, read.session, have)))
        read.next_fetch = now + self.settings.retry_s
        return actions

    def _progress(self, read: _Read, now: float) -> list[Action]:
        log = self.log(read.session)
        known = len(log) > 0
        heard_enough = 1 + len(read.replied) >= self.read_quorum
        # An unknown session with no version to reach: new, once peers that would know it answered
        # (or none can be asked, or the time is up).
        asked_all = read.next_fetch > 0 and not read.fetches
        if log.covers(read.want) and (known or read.create or heard_enough or asked_all or now >= read.deadline):
            unstable = [t for t in log.order if not self.stable(t)]
            if unstable:
                if now >= read.deadline:
                    return self._behind(read, f"session {read.session!r} holds {len(unstable)} turn(s) not yet "
                                        f"stored on {self.settings.write_quorum} nodes")
                return self._spread(unstable, now)
            holder = self.busy.get(read.session)
            if read.exclusive and holder is not None and holder != read.read_id:
                return []  # queued behind the turn being written here
            del self.reads[read.read_id]
            if read.exclusive:
                self.busy[read.session] = read.read_id
                self.held[read.read_id] = _Held(read.session, dict(log.vv))
            return [ReadReady(read.read_id, read.session, dict(log.vv), tuple(log.order))]
        if heard_enough and not log.covers(read.want):
            del self.reads[read.read_id]
            if not known:
                return [ReadFailed(
                    read.read_id, 404, "session_not_found",
                    f"session {read.session!r} is unknown: none of {self.read_quorum} nodes that meet every write "
                    "quorum holds it (sessions a client names as new are sent without a version)",
                )]
            return [ReadFailed(
                read.read_id, 409, "version_from_future",
                f"no node holds version {_show(read.want)} of session {read.session!r}: {1 + len(read.replied)} "
                f"nodes, which meet every write quorum, hold at most {_show(log.vv)}, so no acknowledged turn is "
                "missing (the version was never acknowledged: from the future, or made up)",
            )]
        if now >= read.deadline:
            return self._behind(read, f"this node holds version {_show(log.vv)} of session {read.session!r} but "
                                f"the client has seen {_show(read.want)}; the missing turns did not arrive")
        return []

    def _behind(self, read: _Read, why: str) -> list[Action]:
        del self.reads[read.read_id]
        return [ReadFailed(read.read_id, 503, "session_behind",
                           f"{why} within {self.settings.read_timeout_s:g} s (peers unreachable?); nothing was "
                           "answered from an older context; retry, here or at another node")]

    def _progress_session(self, session: str, now: float) -> list[Action]:
        actions: list[Action] = []
        for read in [r for r in self.reads.values() if r.session == session]:
            if read.read_id in self.reads:
                actions += self._progress(read, now)
        return actions

    def release(self, read_id: int, now: float) -> list[Action]:
        """The end of a turn's request (answered or not): the session is free for the next."""
        self.reads.pop(read_id, None)
        held = self.held.pop(read_id, None)
        if held is None:
            return []
        if self.busy.get(held.session) == read_id:
            del self.busy[held.session]
        return self._progress_session(held.session, now)

    # -- client side: writes -----------------------------------------------------------------------

    def commit(self, read_id: int, content: Turn, now: float) -> list[Action]:
        """The answer of the turn whose read is ``read_id`` (``content``: a :func:`draft`): name it,
        store it, push it, acknowledge it at quorum."""
        held = self.held.get(read_id)
        if held is None:
            raise ValueError(f"read {read_id} holds no session: commit follows a ReadReady and precedes release")
        base = held.base
        turn = sealed(msgspec.structs.replace(
            content, session=held.session, origin=self.name, seq=base.get(self.name, 0) + 1, deps=dict(base),
            created_at=now,
        ))
        try:
            actions = self._apply(turn, now)
        except StoreFullError as error:
            return [WriteFailed(read_id, 507, "store_full", f"{error}: the turn was not stored and not acknowledged")]
        except StoreError as error:
            return [WriteFailed(read_id, 500, "store_failed", f"{error}: the turn was not acknowledged")]
        version = merged(base, {self.name: turn.seq})
        write = _Write(read_id, turn, version, now + self.settings.commit_timeout_s)
        self.writes[_key(turn)] = write
        for peer in self._targets():
            self.outbox[peer][_key(turn)] = _Outgoing(turn, now + self._retry_after(peer))
            if self.peer[peer].up:
                actions.append(Send(peer, Push(self._wire(turn, peer))))
        return actions + self._check_write(write, now)

    def _check_write(self, write: _Write, now: float) -> list[Action]:
        key = _key(write.turn)
        if 1 + len(write.acks) >= self.settings.write_quorum:
            del self.writes[key]
            conflicts = len(self.log(write.turn.session).conflicts)
            return [WriteAcked(write.read_id, write.turn, write.version, conflicts)]
        if now >= write.deadline:
            del self.writes[key]
            refused = "".join(f"; {peer} refused it: {why}" for peer, why in sorted(write.refusals.items()))
            return [WriteFailed(
                write.read_id, 503, "not_replicated",
                f"turn {self.name}:{write.turn.seq} of session {write.turn.session!r} is stored on this node, but only "
                f"{1 + len(write.acks)} of the {self.settings.write_quorum} nodes the write quorum needs held it after "
                f"{self.settings.commit_timeout_s:g} s{refused}; it was not acknowledged (it will still be replicated)",
            )]
        return []

    # -- applying turns ----------------------------------------------------------------------------

    def _apply(self, turn: Turn, now: float) -> list[Action]:
        """Store and apply one turn whose context this log holds; then any pending turns it frees."""
        log = self.log(turn.session)
        self.store.add(turn)
        applied = log.apply(turn)
        actions: list[Action] = [
            Event("conflict", None, f"session {c.session!r}: turn {c.rebased[0]}:{c.rebased[1]} was written "
                  f"concurrently with {c.first[0]}:{c.first[1]}; both kept, {c.rebased[0]}:{c.rebased[1]} after")
            for c in applied.conflicts
        ]
        for peer in self.ack_after_apply.pop(_key(turn), set()):
            actions.append(Send(peer, PushAck(turn.session, turn.origin, turn.seq, True)))
        waiting = self.pending.get(turn.session, {})
        ready = next((t for t in waiting.values() if log.can_apply(t)), None)
        if ready is not None:
            del waiting[ready.id]
            actions += self._apply(ready, now)
        return actions + self._progress_session(turn.session, now)

    def _receive(self, turn: Turn, peer: str, now: float) -> tuple[str, str, list[Action]]:
        """Check and keep a turn from a peer: ``("ok", "", actions)``, ``("pending", ...)`` when its
        context is not here yet, or ``(code, message, actions)`` when it is refused."""
        try:
            check_turn(turn, self.nodes)
            if turn.user_text is None or turn.answer_text is None:
                if turn.form != "tokens" or turn.fingerprint != self.fingerprint or self.derive_texts is None:
                    raise TurnError("text_needed", f"turn {turn.origin}:{turn.seq} came without its text, which this "
                                    "node cannot decode (another tokenizer): the sender must include it")
                user_text, answer_text = self.derive_texts(turn)
                turn = msgspec.structs.replace(turn, user_text=user_text, answer_text=answer_text)
            verify(turn)
        except (TurnError, ValueError) as error:
            code = error.code if isinstance(error, TurnError) else "malformed_turn"
            return code, str(error), [Event("rejected", peer, f"{peer}: {error}")]
        log = self.log(turn.session)
        self.holders.setdefault(_key(turn), set()).add(peer)
        if log.holds(turn.id):
            if log.turns[turn.id].digest != turn.digest:
                message = (f"turn {turn.origin}:{turn.seq} of session {turn.session!r} differs from the one held "
                           "here under the same name; not kept")
                return "conflicting_turn", message, [Event("rejected", peer, f"{peer}: {message}")]
            return "ok", "", []
        if not log.can_apply(turn):
            self.pending.setdefault(turn.session, {})[turn.id] = turn
            return "pending", "", []
        try:
            return "ok", "", self._apply(turn, now)
        except StoreFullError as error:
            return "store_full", str(error), [Event("rejected", peer, str(error))]
        except StoreError as error:
            return "store_failed", str(error), [Event("rejected", peer, str(error))]

    # -- peers -------------------------------------------------------------------------------------

    def hello(self) -> Hello:
        return Hello(self.name, self.mode, self.fingerprint)

    def peer_up(self, peer: str, hello: Hello, now: float) -> list[Action]:
        """A connection to ``peer`` is up and it said ``hello``; raises ValueError if it cannot
        replicate with this node (another mode or protocol)."""
        if hello.node != peer:
            raise ValueError(f"peer {peer!r} introduced itself as {hello.node!r}")
        if hello.mode != self.mode:
            raise ValueError(f"peer {peer!r} runs mode {hello.mode!r}, this node {self.mode!r}: one edge runs one mode")
        state = self.peer[peer]
        state.up, state.fingerprint = True, hello.fingerprint
        actions: list[Action] = []
        for pending in self.outbox[peer].values():
            pending.next_try = now + self._retry_after(peer)
            actions.append(Send(peer, Push(self._wire(pending.turn, peer))))
        for read in list(self.reads.values()):
            actions += self._fetch(read, now)
        down = {p for p, s in self.peer.items() if not s.up}
        return actions + self._digests(down, [peer])

    def peer_down(self, peer: str, now: float) -> list[Action]:
        self.peer[peer].up = False
        for read in self.reads.values():
            for fetch_id in [f for f, p in read.fetches.items() if p == peer]:
                del read.fetches[fetch_id]
        return self._digests({peer}, [p for p, s in self.peer.items() if s.up])

    def _digests(self, writers: set[str], to: list[str]) -> list[Action]:
        """This node's version of each session that holds turns of ``writers``, to ``to``."""
        to = [p for p in to if p not in writers]
        if not writers or not to:
            return []
        versions = [(s, dict(self.log(s).vv)) for s in self.store.sessions_with(writers)]
        return [Send(peer, Digest(session, version)) for session, version in versions for peer in to]

    def on_message(self, peer: str, message: Message, now: float) -> list[Action]:
        if isinstance(message, Push):
            code, text, actions = self._receive(message.turn, peer, now)
            turn = message.turn
            if code == "pending":
                self.ack_after_apply.setdefault(_key(turn), set()).add(peer)
                have = dict(self.log(turn.session).vv)
                return [*actions, Send(peer, Fetch(self._next_fetch_id(), turn.session, have))]
            refusal = (code, text) if code != "ok" else ()
            return [*actions, Send(peer, PushAck(turn.session, turn.origin, turn.seq, code == "ok", *refusal))]
        if isinstance(message, PushAck):
            return self._on_ack(peer, message, now)
        if isinstance(message, Fetch):
            log = self.log(message.session)
            turns = [self._wire(t, peer) for t in log.since(message.have)]
            return [Send(peer, FetchReply(message.fetch_id, message.session, len(log) > 0, dict(log.vv), turns))]
        if isinstance(message, FetchReply):
            actions = []
            for turn in message.turns:
                code, _, more = self._receive(turn, peer, now)
                actions += more
            for read in self.reads.values():
                if read.fetches.pop(message.fetch_id, None) is not None:
                    read.replied.add(peer)
            return actions + self._progress_session(message.session, now)
        if isinstance(message, Digest):
            log = self.log(message.session)
            if log.covers(message.version):
                return []
            return [Send(peer, Fetch(self._next_fetch_id(), message.session, dict(log.vv)))]
        if isinstance(message, Ping):
            return [Send(peer, Pong(message.sent))]
        if isinstance(message, Pong):
            self.peer[peer].rtt_s = max(0.0, now - message.sent)
            return []
        if isinstance(message, ProtocolError):
            return [Event("protocol", peer, f"{peer} reported a protocol error: {message.code}: {message.message}")]
        return [Event("protocol", peer, f"{peer} sent an unexpected {type(message).__name__}")]

    def _on_ack(self, peer: str, ack: PushAck, now: float) -> list[Action]:
        key = (ack.session, ack.origin, ack.seq)
        write = self.writes.get(key)
        if not ack.ok:
            if write is not None:
                write.refusals[peer] = f"{ack.code}: {ack.message}"
            return [Event("nack", peer, f"{peer} refused turn {ack.origin}:{ack.seq} of session {ack.session!r}: "
                          f"{ack.code}: {ack.message} (retried)")]
        self.outbox[peer].pop(key, None)
        self.holders.setdefault(key, set()).add(peer)
        if ack.origin == self.name:
            try:
                self.store.mark_acked(ack.session, ack.origin, ack.seq, peer)
            except StoreError as error:
                return [Event("rejected", peer, str(error))]
        actions: list[Action] = []
        if write is not None:
            write.acks.add(peer)
            actions = self._check_write(write, now)
        return actions + self._progress_session(ack.session, now)

    # -- time --------------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for peer, outgoing in self.outbox.items():
            if not self.peer[peer].up:
                continue
            for pending in outgoing.values():
                if pending.next_try <= now:
                    pending.next_try = now + self._retry_after(peer)
                    actions.append(Send(peer, Push(self._wire(pending.turn, peer))))
        for read in list(self.reads.values()):
            if read.read_id not in self.reads:
                continue
            actions += self._progress(read, now)
            if read.read_id in self.reads and now >= read.next_fetch:
                actions += self._fetch(read, now)
        for write in list(self.writes.values()):
            actions += self._check_write(write, now)
        return actions

    def next_deadline(self) -> float | None:
        times = [r.deadline for r in self.reads.values()] + [r.next_fetch for r in self.reads.values()]
        times += [w.deadline for w in self.writes.values()]
        times += [o.next_try for p, box in self.outbox.items() if self.peer[p].up for o in box.values()]
        return min(times, default=None)


def _show(version: VersionVector) -> str:
    from edgecloud.edge.turns import format_version

    return format_version(version)
