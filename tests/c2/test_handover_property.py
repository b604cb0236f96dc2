"""Handover safety and liveness: the sans-I/O control cores over a simulated lossy network.

The network loses, duplicates, reorders (random per-message delay) and delays messages until a
"heal" time, then delivers everything within ``D``. Invariants checked at every tick: at most
one GCS believes it controls the vehicle, and a GCS that believes so is the one the vehicle
obeys. Liveness: every approval ends done or rejected, exactly one of two conflicting
approvals wins, and its target ends up knowing it controls the vehicle.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.c2.control import GcsControl, HandoverRequest, Message, Refuse, Send, UxvControl
from edgecloud.c2.pki import Identity
from edgecloud.c2.privileges import DEFAULT_PRIVILEGES, Role

TICK = 0.02
LEASE = 3.0
RENEW = 1.0


def identity(name: str, role: Role) -> Identity:
    return Identity(name, role, DEFAULT_PRIVILEGES[role], 1, "test")


@dataclass
class Network:
    rng: random.Random
    loss: float
    duplicate: float
    max_delay: float
    heal: float
    queue: list[tuple[float, int, str, str, Message]] = field(default_factory=list)
    counter: int = 0

    def send(self, now: float, src: str, dst: str, message: Message) -> None:
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            if now < self.heal and self.rng.random() < self.loss:
                continue
            self.counter += 1
            delay = self.rng.uniform(0, self.max_delay)
            heapq.heappush(self.queue, (now + delay, self.counter, src, dst, dict(message)))

    def due(self, now: float) -> list[tuple[str, str, Message]]:
        out = []
        while self.queue and self.queue[0][0] <= now:
            _, _, src, dst, message = heapq.heappop(self.queue)
            out.append((src, dst, message))
        return out


@dataclass
class Outcome:
    requests: list[HandoverRequest]
    uxv: UxvControl
    gcs: dict[str, GcsControl]
    longest_gap: float
    end: float


def simulate(
    seed: int,
    loss: float,
    duplicate: float,
    max_delay: float,
    heal: float,
    approvals: list[tuple[float, str]],
    horizon: float,
) -> Outcome:
    net = Network(random.Random(seed), loss, duplicate, max_delay, heal)
    uxv = UxvControl("uxv-1", lease=LEASE, retry=0.5, controller="gcs-a")
    gcs = {name: GcsControl(name, "uxv-1", renew_every=RENEW, poll_every=1.0) for name in ("gcs-a", "gcs-b", "gcs-c")}
    peers = {name: identity(name, Role.GCS) for name in gcs} | {"tc-1": identity("tc-1", Role.TC)}
    requests = [
        HandoverRequest(f"h{i}", "uxv-1", "gcs-a", target, retry=0.5) for i, (_, target) in enumerate(approvals)
    ]
    starts = [at for at, _ in approvals]
    now, last_believer_seen, longest_gap = 0.0, None, 0.0
    for step in range(int(horizon / TICK)):
        now = step * TICK
        for src, dst, message in net.due(now):
            if dst == "uxv-1":
                for out in uxv.on_message(peers[src], message, now):
                    if isinstance(out, Send):
                        net.send(now, "uxv-1", out.to, out.message)
            elif dst in gcs:
                for reply in gcs[dst].on_message(message, now):
                    net.send(now, dst, "uxv-1", reply)
            else:
                for request in requests:
                    request.on_message(message, now)
        for out in uxv.on_timer(now):
            if isinstance(out, Send):
                net.send(now, "uxv-1", out.to, out.message)
        for name, control in gcs.items():
            for message in control.on_timer(now):
                net.send(now, name, "uxv-1", message)
        for request, start in zip(requests, starts, strict=True):
            if now >= start:
                for message in request.on_timer(now):
                    net.send(now, "tc-1", "uxv-1", message)

        believers = [name for name, control in gcs.items() if control.controlling(now)]
        assert len(believers) <= 1, f"two controllers at t={now:.2f}: {believers}"
        if believers:
            assert believers[0] == uxv.controller, f"{believers[0]} believes but {uxv.controller} is obeyed"
            last_believer_seen = now
        elif last_believer_seen is not None:
            longest_gap = max(longest_gap, now - last_believer_seen)
    return Outcome(requests, uxv, gcs, longest_gap, now)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.6),
    duplicate=st.floats(0.0, 0.5),
    max_delay=st.floats(0.0, 0.4),
    heal=st.floats(0.0, 8.0),
    approve_at=st.floats(0.0, 4.0),
    conflict=st.one_of(st.none(), st.floats(0.0, 0.5)),
)
def test_handover_never_two_controllers_and_completes(seed, loss, duplicate, max_delay, heal, approve_at, conflict):
    approvals = [(approve_at, "gcs-b")]
    if conflict is not None:
        approvals.append((approve_at + conflict, "gcs-c"))
    horizon = max(heal, approve_at + 1) + LEASE + 1.0 + 3 * max_delay + 3.0
    outcome = simulate(seed, loss, duplicate, max_delay, heal, approvals, horizon)
    states = [r.state for r in outcome.requests]
    assert all(state in ("done", "rejected") for state in states), states
    assert states.count("done") == 1, states
    winner = outcome.requests[states.index("done")].target
    assert outcome.uxv.controller == winner
    assert outcome.gcs[winner].controlling(outcome.end)
    assert len(outcome.uxv.switches) == 1


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    duplicate=st.floats(0.0, 0.5),
    max_delay=st.floats(0.0, 0.4),
    approve_at=st.floats(1.0, 4.0),
)
def test_handover_gap_bounded_without_loss(seed, duplicate, max_delay, approve_at):
    outcome = simulate(seed, 0.0, duplicate, max_delay, 0.0, [(approve_at, "gcs-b")], approve_at + 6.0)
    assert outcome.requests[0].state == "done"
    # Five one-way messages (revoke, released, offer, renew, grant), each quantised to the tick.
    assert outcome.longest_gap <= 5 * (max_delay + TICK) + TICK


def test_approval_from_unknown_controller_is_rejected_as_stale():
    uxv = UxvControl("uxv-1", controller="gcs-a")
    outs = uxv.on_message(identity("tc-1", Role.TC), {"t": "approve", "h": "x", "from": "gcs-c", "to": "gcs-b"}, 0.0)
    assert any(isinstance(o, Refuse) and "stale handover x" in o.reason for o in outs)
    assert uxv.controller == "gcs-a"


def test_control_goes_only_to_a_connected_verified_gcs():
    uxv = UxvControl("uxv-1", controller="gcs-a")
    uxv.online = {"gcs-a"}
    approve = {"t": "approve", "h": "y", "from": "gcs-a", "to": "gcs-z"}
    outs = uxv.on_message(identity("tc-1", Role.TC), approve, 0.0)
    assert Refuse("tc-1", "handover y: gcs-z is not connected to uxv-1 as a verified GCS") in outs
    assert uxv.controller == "gcs-a"
