"""Who may command a vehicle: authorisation at the UxV and TC-approved control handover.

NC2S (arXiv 2511.21936, "authorization" and "handover") lets a vehicle obey exactly one GCS at
a time and moves control from GCS A to GCS B only with a Tactical Commander's approval. These
are sans-I/O state machines: they take decoded control messages (plain dicts, sent as JSON in
CONTROL frames) and an explicit ``now``, and return the messages to send. The same objects run
in the gateways and, in tests, over a simulated network that loses, duplicates, reorders and
delays messages.

Safety rests on leases. A GCS believes it controls vehicle X only while a lease granted by X
runs; it times the lease from when it *sent* the request, and X from when it *received* it, so
the GCS's belief always ends no later than X's record of it. During a handover X stops
extending A's lease and asks A to release; it switches to B only when A confirms the release
or A's lease has run out at X. Hence at every instant at most one GCS believes it controls X,
and a GCS that believes so is the one X obeys. X itself always has exactly one controller once
assigned (the switch is a single assignment), so the vehicle is never without a controller;
the interval in which *no GCS knows* it controls X is at most ``5·D`` with per-message delay at
most ``D`` and no loss (revoke, released, offer, renew, grant), provided ``renew_every + 2·D <
lease``; after the network stops losing messages, a handover finishes within ``lease + poll +
3·D``.

Messages (``t`` names the type)::

    GCS→UxV  renew{n}                 ask for / extend the lease; n numbers the request
    UxV→GCS  grant{n, epoch, lease}   you control X in epoch ``epoch`` for ``lease`` s after sending n
    UxV→GCS  deny{n, controller}      you do not control X
    UxV→GCS  revoke{epoch, h}         give up control for handover h
    GCS→UxV  released{epoch}          done (idempotent)
    UxV→GCS  offer{epoch}             you now control X: renew to get a lease
    TC→UxV   approve{h, from, to}     approval of handover h (from = null assigns a vehicle with none)
    UxV→TC   status{h, state, reason} pending | done | rejected
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from pymavlink.dialects.v20 import ardupilotmega as mavlink

from edgecloud.c2.pki import Identity
from edgecloud.c2.privileges import HANDOVER_APPROVE, Role, required_privilege

Message = dict[str, Any]


@dataclass(frozen=True)
class Send:
    to: str
    message: Message


@dataclass(frozen=True)
class Refuse:
    """A request refused; the gateway logs ``reason`` and keeps serving the link."""

    peer: str
    reason: str


Output = Send | Refuse


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: str = ""


@dataclass
class Handover:
    h: str
    source: str | None
    target: str
    approver: str
    started: float
    revoke_sent: float = -1.0


def describe(message_id: int, command_id: int | None) -> str:
    name = mavlink.mavlink_map[message_id].msgname if message_id in mavlink.mavlink_map else f"message {message_id}"
    if command_id is None:
        return name
    entry = mavlink.enums["MAV_CMD"].get(command_id)
    return f"{name}({entry.name if entry is not None else command_id})"


class UxvControl:
    """The vehicle's side: its controller, the controller's lease, and at most one handover in progress."""

    def __init__(self, name: str, *, lease: float = 3.0, retry: float = 0.5, controller: str | None = None) -> None:
        if lease <= 0 or retry <= 0:
            raise ValueError(f"lease {lease} and retry {retry}: must be > 0 seconds")
        self.name = name
        self.lease = lease
        self.retry = retry
        self.controller = controller
        self.epoch = 1 if controller is not None else 0
        self.lease_until = float("-inf")  # nobody holds a lease until the controller renews
        self.pending: Handover | None = None
        self.outcomes: dict[str, tuple[str, str]] = {}  # handover id → (state, reason)
        self.switches: list[tuple[float, str]] = []
        # GCSs currently connected with a verified GCS certificate; the gateway keeps it up to date.
        # When set, control is handed only to one of them, so never to a revoked or unknown name.
        self.online: set[str] | None = None

    # --- commands ----------------------------------------------------------------------------
    def authorize(self, peer: Identity, message_id: int, command_id: int | None) -> Decision:
        what = describe(message_id, command_id)
        if peer.role is not Role.GCS:
            return Decision(False, f"{peer.name}: role {peer.role} may not command a vehicle ({what})")
        if peer.name != self.controller:
            return Decision(
                False,
                f"{peer.name} does not control {self.name} (controller: {self.controller}); refused {what}",
            )
        needed = required_privilege(message_id, command_id)
        if not peer.holds(needed):
            return Decision(False, f"{peer.name} lacks privilege {needed} for {what}")
        return Decision(True)

    # --- control protocol --------------------------------------------------------------------
    def on_message(self, peer: Identity, message: Message, now: float) -> list[Output]:
        kind = message.get("t")
        if kind == "renew":
            return self._on_renew(peer, message, now)
        if kind == "released":
            return self._on_released(peer, message, now)
        if kind == "approve":
            return self._on_approve(peer, message, now)
        return [Refuse(peer.name, f"unknown control message type {kind!r}")]

    def _on_renew(self, peer: Identity, message: Message, now: float) -> list[Output]:
        n = message.get("n")
        if peer.name != self.controller:
            return [Send(peer.name, {"t": "deny", "n": n, "controller": self.controller})]
        if self.pending is not None and self.pending.source == peer.name:
            # Losing control: never extend the lease again, ask for the release instead.
            return [Send(peer.name, {"t": "revoke", "epoch": self.epoch, "h": self.pending.h})]
        self.lease_until = max(self.lease_until, now + self.lease)
        return [Send(peer.name, {"t": "grant", "n": n, "epoch": self.epoch, "lease": self.lease})]

    def _on_released(self, peer: Identity, message: Message, now: float) -> list[Output]:
        pending = self.pending
        if pending is not None and pending.source == peer.name and message.get("epoch") == self.epoch:
            return self._switch(now)
        return []

    def _status(self, to: str, h: str) -> Send:
        state, reason = self.outcomes.get(h, ("pending", ""))
        return Send(
            to,
            {
                "t": "status",
                "h": h,
                "uxv": self.name,
                "state": state,
                "reason": reason,
                "controller": self.controller,
            },
        )

    def _reject(self, peer: Identity, h: str, reason: str) -> list[Output]:
        self.outcomes[h] = ("rejected", reason)
        return [Refuse(peer.name, reason), self._status(peer.name, h)]

    def _on_approve(self, peer: Identity, message: Message, now: float) -> list[Output]:
        h = str(message.get("h", ""))
        if peer.role is not Role.TC or not peer.holds(HANDOVER_APPROVE):
            return [
                Refuse(
                    peer.name,
                    f"handover {h} not approved by a TC: {peer.name} has role {peer.role} without {HANDOVER_APPROVE}",
                ),
                Send(
                    peer.name,
                    {
                        "t": "status",
                        "h": h,
                        "uxv": self.name,
                        "state": "rejected",
                        "reason": "approval requires a TC",
                        "controller": self.controller,
                    },
                ),
            ]
        if h in self.outcomes:
            return [self._status(peer.name, h)]
        if self.pending is not None:
            if self.pending.h == h:
                return [self._status(peer.name, h)]
            p = self.pending
            return self._reject(
                peer, h, f"conflicting handover {h}: handover {p.h} ({p.source}→{p.target}) is in progress"
            )
        source, target = message.get("from"), message.get("to")
        if not isinstance(target, str) or not target:
            return self._reject(peer, h, f"handover {h}: field 'to' must name a GCS")
        if source != self.controller:
            return self._reject(
                peer,
                h,
                f"stale handover {h}: from {source} but {self.name} is controlled by {self.controller}",
            )
        if target == self.controller:
            self.outcomes[h] = ("done", "")
            return [self._status(peer.name, h)]
        if self.online is not None and target not in self.online:
            return self._reject(peer, h, f"handover {h}: {target} is not connected to {self.name} as a verified GCS")
        self.pending = Handover(h, source, target, peer.name, now)
        if source is None:
            return self._switch(now)
        outputs = self._timer_outputs(now)
        return outputs if self.pending is None else [*outputs, self._status(peer.name, h)]

    def _switch(self, now: float) -> list[Output]:
        pending = self.pending
        assert pending is not None
        self.controller = pending.target
        self.epoch += 1
        self.lease_until = float("-inf")
        self.pending = None
        self.outcomes[pending.h] = ("done", "")
        self.switches.append((now, pending.target))
        return [
            Send(pending.target, {"t": "offer", "epoch": self.epoch}),
            self._status(pending.approver, pending.h),
        ]

    def _timer_outputs(self, now: float) -> list[Output]:
        pending = self.pending
        if pending is None:
            return []
        if now >= self.lease_until:
            return self._switch(now)
        if now - pending.revoke_sent >= self.retry:
            pending.revoke_sent = now
            return [Send(str(pending.source), {"t": "revoke", "epoch": self.epoch, "h": pending.h})]
        return []

    def on_timer(self, now: float) -> list[Output]:
        return self._timer_outputs(now)

    def next_deadline(self) -> float | None:
        if self.pending is None:
            return None
        return min(self.lease_until, self.pending.revoke_sent + self.retry)


@dataclass
class GcsControl:
    """A GCS's view of whether it controls one vehicle: a lease it renews, released on request."""

    name: str
    uxv: str
    renew_every: float = 1.0
    poll_every: float = 1.0
    epoch: int = 0
    released_epoch: int = 0
    expiry: float = float("-inf")
    _granted_n: int = -1
    _sent: dict[int, float] = field(default_factory=dict)
    _numbers: itertools.count = field(default_factory=itertools.count)
    _last_sent: float = float("-inf")

    def controlling(self, now: float) -> bool:
        return self.epoch > self.released_epoch and now < self.expiry

    def _renew(self, now: float) -> list[Message]:
        n = next(self._numbers)
        self._sent[n] = now
        if len(self._sent) > 256:
            del self._sent[min(self._sent)]
        self._last_sent = now
        return [{"t": "renew", "n": n}]

    def on_timer(self, now: float) -> list[Message]:
        interval = self.renew_every if self.controlling(now) else self.poll_every
        return self._renew(now) if now - self._last_sent >= interval else []

    def next_deadline(self, now: float) -> float:
        return self._last_sent + (self.renew_every if self.controlling(now) else self.poll_every)

    def on_message(self, message: Message, now: float) -> list[Message]:
        kind = message.get("t")
        if kind == "grant":
            n, epoch, lease = message.get("n"), int(message.get("epoch", 0)), float(message.get("lease", 0))
            if epoch <= self.released_epoch or n not in self._sent:
                return []
            expiry = self._sent[n] + lease
            if epoch != self.epoch:
                self.epoch, self.expiry = epoch, expiry
            else:
                self.expiry = max(self.expiry, expiry)
            self._granted_n = max(self._granted_n, int(n))
            return []
        if kind == "deny":
            n = message.get("n")
            if isinstance(n, int) and n > self._granted_n:
                self.expiry = float("-inf")
            return []
        if kind == "revoke":
            epoch = int(message.get("epoch", 0))
            self.released_epoch = max(self.released_epoch, epoch)
            return [{"t": "released", "epoch": epoch}]
        if kind == "offer":
            return self._renew(now)
        return []


@dataclass
class HandoverRequest:
    """A TC's approval of handover ``h``, resent until the vehicle reports it done or rejected."""

    h: str
    uxv: str
    source: str | None
    target: str
    retry: float = 0.5
    state: str = "pending"
    reason: str = ""
    finished_at: float | None = None
    _last_sent: float = float("-inf")

    def message(self) -> Message:
        return {"t": "approve", "h": self.h, "from": self.source, "to": self.target}

    def on_timer(self, now: float) -> list[Message]:
        if self.state != "pending" or now - self._last_sent < self.retry:
            return []
        self._last_sent = now
        return [self.message()]

    def on_message(self, message: Message, now: float) -> None:
        if message.get("t") != "status" or message.get("h") != self.h or self.state != "pending":
            return
        state = message.get("state")
        if state in ("done", "rejected"):
            self.state, self.reason, self.finished_at = str(state), str(message.get("reason", "")), now
