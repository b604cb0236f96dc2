"""An edge of several nodes on a virtual clock: the real :class:`ReplicaCore` of every node, each
over its own SQLite store, a network that delays (and reorders) every message by a per-link delay,
node crashes (a crashed node loses its memory and in-flight messages, keeps its store) and roaming
clients; a :class:`SessionChecker` judges what the clients saw.

This is the consistency test bench (``edgecloud edge check``, ``tests/edge/test_consistency.py``):
everything is deterministic for a given :class:`Scenario`, so a failing schedule found by
hypothesis replays exactly.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgecloud.edge.checker import SessionChecker
from edgecloud.edge.replication import (
    Action,
    Event,
    ReadFailed,
    ReadReady,
    ReplicaCore,
    ReplicationSettings,
    Send,
    WriteAcked,
    WriteFailed,
)
from edgecloud.edge.store import ContextStore
from edgecloud.edge.turns import VersionVector, draft, merged
from edgecloud.edge.wire import decode, encode


@dataclass(frozen=True)
class ClientPlan:
    """One client: the session it writes to and its operations, each ``(node index, kind, think s)``
    with kind ``turn`` (a read, an answer, a commit) or ``read``."""

    session: str
    ops: tuple[tuple[int, str, float], ...]


@dataclass(frozen=True)
class Crash:
    at_s: float
    node: int
    down_s: float | None  # None: the node never comes back


@dataclass(frozen=True)
class Scenario:
    nodes: int = 3
    write_quorum: int | None = None  # None: a majority
    replicas: int | None = None
    link_delay_s: tuple[tuple[float, float], ...] = ()  # per ordered node pair (i*n + j): (low, high)
    clients: tuple[ClientPlan, ...] = ()
    crashes: tuple[Crash, ...] = ()
    generate_s: float = 0.05
    read_timeout_s: float = 2.0
    commit_timeout_s: float = 3.0
    retries: int = 6
    seed: int = 0


@dataclass
class Outcome:
    checker: SessionChecker
    acked: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    conflicts: int = 0
    messages: int = 0
    bytes: int = 0
    end_s: float = 0.0
    copies: dict[str, dict[str, list[tuple[str, int]]]] = field(default_factory=dict)


@dataclass
class _Client:
    name: str
    plan: ClientPlan
    index: int = 0
    attempts: int = 0
    version: VersionVector = field(default_factory=dict)
    busy_at: tuple[str, int] | None = None  # (node, read id) of the operation in flight


class VirtualEdge:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.names = [f"n{i}" for i in range(scenario.nodes)]
        quorum = scenario.write_quorum or scenario.nodes // 2 + 1
        self.settings = ReplicationSettings(
            write_quorum=quorum, replicas=scenario.replicas, read_timeout_s=scenario.read_timeout_s,
            commit_timeout_s=scenario.commit_timeout_s, retry_s=0.2,
        )
        self.stores = {n: ContextStore(":memory:", synchronous="NORMAL") for n in self.names}
        self.cores: dict[str, ReplicaCore | None] = {}
        self.epoch = dict.fromkeys(self.names, 0)
        self.rng = random.Random(scenario.seed)
        self.now = 0.0
        self.queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._read_ids = itertools.count(1)
        self.checker = SessionChecker()
        self.outcome = Outcome(self.checker)
        self.clients = [_Client(f"c{i}", plan) for i, plan in enumerate(scenario.clients)]
        self.ops: dict[tuple[str, int], tuple[_Client, str]] = {}
        self.seen: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for name in self.names:
            self._start(name)

    # -- the event loop ----------------------------------------------------------------------------

    def at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (when, next(self._order), callback))

    def run(self, until_s: float, max_events: int = 500_000) -> None:
        events = 0
        while self.queue and self.queue[0][0] <= until_s:
            when, _, callback = heapq.heappop(self.queue)
            self.now = max(self.now, when)
            callback()
            events += 1
            if events > max_events:
                raise RuntimeError(f"virtual edge: over {max_events} events by t={self.now:.3f} s (a livelock?)")
        self.now = max(self.now, until_s)

    def _delay(self, src: str, dst: str) -> float:
        pairs = self.scenario.link_delay_s
        i, j = self.names.index(src), self.names.index(dst)
        low, high = pairs[(i * len(self.names) + j) % len(pairs)] if pairs else (0.01, 0.03)
        return self.rng.uniform(low, high)

    # -- nodes -------------------------------------------------------------------------------------

    def _start(self, name: str) -> None:
        peers = [n for n in self.names if n != name]
        self.cores[name] = ReplicaCore(name, peers, self.stores[name], self.settings, mode="text", now=self.now)
        for peer in peers:
            if self.cores.get(peer) is not None:
                self._connect(name, peer)

    def _connect(self, a: str, b: str) -> None:
        epochs = (self.epoch[a], self.epoch[b])

        def up(node: str, peer: str) -> None:
            core, other = self.cores.get(node), self.cores.get(peer)
            if core is None or other is None or (self.epoch[a], self.epoch[b]) != epochs:
                return
            self._handle(node, core.peer_up(peer, other.hello(), self.now))

        self.at(self.now + self._delay(a, b), lambda: up(b, a))
        self.at(self.now + self._delay(b, a), lambda: up(a, b))

    def crash(self, index: int, down_s: float | None) -> None:
        name = self.names[index]
        if self.cores.get(name) is None:
            return
        self.cores[name] = None
        self.epoch[name] += 1
        for peer in self.names:
            core = self.cores.get(peer)
            if core is not None:
                self._handle(peer, core.peer_down(name, self.now))
        for key, (client, _) in list(self.ops.items()):
            if key[0] == name:  # the client's connection was reset
                del self.ops[key]
                self._retry(client, "connection reset")
        if down_s is not None:
            self.at(self.now + down_s, lambda: self._restart(name))

    def _restart(self, name: str) -> None:
        if self.cores.get(name) is None:
            self._start(name)
            self._handle(name, [])

    def _handle(self, name: str, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(name, action)
            elif isinstance(action, ReadReady | ReadFailed | WriteAcked | WriteFailed):
                self._client_event(name, action)
            elif isinstance(action, Event) and action.kind == "conflict":
                self.outcome.conflicts += 1
        core = self.cores.get(name)
        deadline = core.next_deadline() if core is not None else None
        if deadline is not None:
            epoch = self.epoch[name]
            self.at(max(deadline, self.now), lambda: self._tick(name, epoch))

    def _tick(self, name: str, epoch: int) -> None:
        core = self.cores.get(name)
        if core is not None and self.epoch[name] == epoch:
            actions = core.tick(self.now)
            if actions:
                self._handle(name, actions)

    def _send(self, src: str, send: Send) -> None:
        frame = encode(send.message)  # the real wire format, decoded on arrival
        self.outcome.messages += 1
        self.outcome.bytes += len(frame)
        epochs = (self.epoch[src], self.epoch[send.peer])
        dst = send.peer

        def deliver() -> None:
            core = self.cores.get(dst)
            if core is None or (self.epoch[src], self.epoch[dst]) != epochs:
                return  # a crash reset the connection: lost in flight
            self._handle(dst, core.on_message(src, decode(frame[4:]), self.now))

        self.at(self.now + self._delay(src, dst), deliver)

    # -- clients -----------------------------------------------------------------------------------

    def start_clients(self) -> None:
        for client in self.clients:
            self.at(0.0, lambda c=client: self._next(c))

    def _next(self, client: _Client) -> None:
        if client.index >= len(client.plan.ops) or client.busy_at is not None:
            return
        node_index, kind, _ = client.plan.ops[client.index]
        node = self.names[(node_index + client.attempts) % len(self.names)]  # a retry roams on
        core = self.cores.get(node)
        if core is None:
            self._retry(client, "node down")
            return
        read_id = next(self._read_ids)
        client.busy_at = (node, read_id)
        self.ops[(node, read_id)] = (client, kind)
        self._handle(node, core.open_read(read_id, client.plan.session, client.version, self.now,
                                          exclusive=kind == "turn"))

    def _retry(self, client: _Client, why: str) -> None:
        client.busy_at = None
        self.outcome.failed[why] = self.outcome.failed.get(why, 0) + 1
        client.attempts += 1
        if client.attempts > self.scenario.retries:
            client.attempts, client.index = 0, client.index + 1  # gives the operation up
        self.at(self.now + 0.1 * client.attempts, lambda: self._next(client))

    def _done(self, client: _Client) -> None:
        client.busy_at = None
        think = client.plan.ops[client.index][2]
        client.index, client.attempts = client.index + 1, 0
        self.at(self.now + think, lambda: self._next(client))

    def _client_event(self, node: str, action: ReadReady | ReadFailed | WriteAcked | WriteFailed) -> None:
        key = (node, action.read_id)
        entry = self.ops.get(key)
        if entry is None:
            return
        client, kind = entry
        core = self.cores[node]
        assert core is not None
        if isinstance(action, ReadReady):
            observed = [t.id for t in action.turns]
            if kind == "read":
                self.checker.read(client.name, action.session, observed, where=node)
                del self.ops[key]
                client.version = merged(client.version, action.version)
                self._done(client)
                return
            # A turn's client sees the context it was answered from only with the answer.
            self.seen[key] = observed
            epoch = self.epoch[node]
            text = f"{client.name} op {client.index}"
            self.at(self.now + self.scenario.generate_s, lambda: self._commit(node, epoch, action.read_id, text))
            return
        del self.ops[key]
        observed = self.seen.pop(key, [])
        if isinstance(action, WriteAcked):
            self.outcome.acked += 1
            self.checker.read(client.name, action.turn.session, observed, where=node)
            self.checker.acked(client.name, action.turn.session, action.turn.id)
            client.version = merged(client.version, action.version)
            self._handle(node, core.release(action.read_id, self.now))
            self._done(client)
            return
        self._handle(node, core.release(action.read_id, self.now))
        self._retry(client, action.code)

    def _commit(self, node: str, epoch: int, read_id: int, text: str) -> None:
        core = self.cores.get(node)
        if core is None or self.epoch[node] != epoch or (node, read_id) not in self.ops:
            return
        self._handle(node, core.commit(read_id, draft("text", text, f"answer to {text}"), self.now))

    # -- the end -----------------------------------------------------------------------------------

    def settle(self, horizon_s: float) -> None:
        """Bring every node that will come back up, let replication finish, then read every session
        at every live node at the union of what was acknowledged (fetching what it lacks)."""
        self.run(self.now + horizon_s)
        sessions = {c.plan.session for c in self.clients}
        live = [n for n in self.names if self.cores.get(n) is not None]
        want: dict[str, VersionVector] = {s: {} for s in sessions}
        for client in self.clients:
            want[client.plan.session] = merged(want[client.plan.session], client.version)
        copies: dict[str, dict[str, list[tuple[str, int]]]] = {n: {} for n in live}
        for node in live:
            for session in sorted(sessions):
                read_id = next(self._read_ids)
                got: list[Any] = []
                core = self.cores[node]
                assert core is not None
                self._handle_final(node, core.open_read(read_id, session, want[session], self.now, exclusive=False),
                                   read_id, got)
                self.run(self.now + self.scenario.read_timeout_s + 1.0)
                if got and isinstance(got[0], ReadReady):
                    copies[node][session] = [t.id for t in got[0].turns]
        self.outcome.copies = copies
        self.checker.final(copies)
        self.outcome.end_s = self.now

    def _handle_final(self, node: str, actions: list[Action], read_id: int, got: list[Any]) -> None:
        core = self.cores[node]
        assert core is not None
        original = self._client_event

        def capture(name: str, action: ReadReady | ReadFailed | WriteAcked | WriteFailed) -> None:
            if name == node and action.read_id == read_id:
                got.append(action)
            else:
                original(name, action)

        self._client_event = capture  # type: ignore[method-assign]
        self._handle(node, actions)


def run_scenario(scenario: Scenario) -> Outcome:
    edge = VirtualEdge(scenario)
    edge.run(0.5)  # connections come up
    for crash in scenario.crashes:
        edge.at(0.5 + crash.at_s, lambda c=crash: edge.crash(c.node % scenario.nodes, c.down_s))
    edge.start_clients()
    horizon = 0.5 + sum(max((op[2] for op in c.ops), default=0) + 1 for c in scenario.clients) * 10 + 60
    edge.run(horizon)
    edge.settle(30.0)
    return edge.outcome


def random_scenario(rng: random.Random, *, nodes: int = 3, clients: int = 4, ops: int = 8, shared: bool = True,
                    crashes: int = 1) -> Scenario:
    """A random roaming schedule: edge-to-edge delays of 5-120 ms, clients that move to a random
    node between operations, two clients sharing a session (concurrent writes), node crashes (at
    most ``N - W`` of them for good, what a majority write quorum tolerates; the others come back)."""
    delays = tuple(
        (low, low + rng.uniform(0, 0.06)) for low in (rng.uniform(0.005, 0.06) for _ in range(nodes * nodes))
    )
    plans = []
    for i in range(clients):
        session = "s0" if shared and i < 2 else f"s{i}"
        plans.append(ClientPlan(session, tuple(
            (rng.randrange(nodes), "turn" if rng.random() < 0.75 else "read", rng.uniform(0.0, 0.3))
            for _ in range(ops)
        )))
    tolerated = nodes - (nodes // 2 + 1)
    crash_list = []
    for _ in range(crashes):
        down = rng.choice([None, rng.uniform(0.2, 3.0)])
        if down is None and sum(c.down_s is None for c in crash_list) >= tolerated:
            down = rng.uniform(0.2, 3.0)
        crash_list.append(Crash(rng.uniform(0, 2.0), rng.randrange(nodes), down))
    return Scenario(nodes=nodes, link_delay_s=delays, clients=tuple(plans), crashes=tuple(crash_list),
                    seed=rng.randrange(2**31))
