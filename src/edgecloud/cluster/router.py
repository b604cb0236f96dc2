"""The router's core, without I/O: the instances as a routing policy sees them, the request as it
sees it, and the router's own accounting of what it sent where.

The same ``Router`` object decides for the real cluster (``edgecloud.cluster.frontend``, over
engine instances in processes or Ray actors) and for the simulated one (``edgecloud.sim``, over
the engine's scheduler and KV manager driven by a cost model): a backend only has to say whether
an instance is up and hand over its engine counters (``EngineStats``); everything else a policy
reads (requests outstanding, prompt tokens waiting to be prefilled, which block keys an instance
holds) is kept here, from the router's own decisions, identically in both worlds.

A request's life in the router: ``route`` (the policy picks), ``begin`` (it is sent to an
instance for a stage: ``mixed``, ``prefill`` or ``decode``), ``prefilled`` (its first token, or the
end of its prefill stage), ``end``. A policy may also answer "not now" (``None``): the runtime
holds the request and asks again when an instance's state changes (a step ended, a request
finished), which is how a policy releases requests to an instance at the start of its next batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from edgecloud.cluster.config import Role
from edgecloud.cluster.prefix_index import PrefixIndex
from edgecloud.llm.kv_cache.keys import BlockKey, chain_keys, root_key
from edgecloud.llm.outputs import EngineStats

if TYPE_CHECKING:
    from edgecloud.cluster.policies import RoutingPolicy

Stage = Literal["mixed", "prefill", "decode"]


class NoInstanceAvailable(RuntimeError):
    """No instance that the policy could use is up (the front end answers 503 + Retry-After)."""


class Backend(Protocol):
    """What the router needs of an instance, real or simulated."""

    name: str
    role: Role
    pool: str

    @property
    def healthy(self) -> bool: ...

    @property
    def epoch(self) -> int:
        """Bumped when the instance restarts (its KV cache is then empty)."""
        ...

    @property
    def num_blocks(self) -> int: ...

    @property
    def max_num_batched_tokens(self) -> int: ...

    def stats(self) -> EngineStats: ...


@dataclass(eq=False)
class RouteRequest:
    """A request as the router sees it: token ids (the front end tokenized them), the output budget,
    the scheduling class, and the stable keys of its full prompt blocks (computed on first use)."""

    request_id: str
    prompt_token_ids: Sequence[int]
    max_tokens: int
    root: BlockKey
    block_size: int
    service_tier: str = "default"
    priority: int = 0
    adapter_id: str | None = None
    arrival_time: float = 0.0
    _keys: list[BlockKey] | None = field(default=None, repr=False)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def block_keys(self) -> list[BlockKey]:
        if self._keys is None:
            self._keys = chain_keys(self.root, self.prompt_token_ids, self.block_size)
        return self._keys


class InstanceView:
    """One instance as a routing policy sees it, read-only: identity and role, whether it is up,
    its engine counters, and the router's own accounting (requests outstanding, prompt tokens
    sent but not yet prefilled, requests decoding, which prompt blocks it holds)."""

    __slots__ = (
        "_backend",
        "_decoding",
        "_epoch",
        "_index",
        "_outstanding",
        "_pending_tokens",
        "_routed",
        "_tier_pending",
        "_tiers",
    )

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._index = PrefixIndex(max(1, backend.num_blocks))
        self._epoch = backend.epoch
        self._outstanding = 0
        self._pending_tokens = 0
        self._decoding = 0
        self._routed = 0
        self._tiers: dict[str, int] = {}
        self._tier_pending: dict[str, int] = {}

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def name(self) -> str:
        return self._backend.name

    @property
    def role(self) -> Role:
        return self._backend.role

    @property
    def pool(self) -> str:
        return self._backend.pool

    @property
    def healthy(self) -> bool:
        return self._backend.healthy

    @property
    def max_num_batched_tokens(self) -> int:
        return self._backend.max_num_batched_tokens

    def stats(self) -> EngineStats:
        """The engine's latest counters (waiting and running requests, KV usage, prefix hits)."""
        return self._backend.stats()

    @property
    def outstanding(self) -> int:
        """Requests (or stages of one) sent here and not finished."""
        return self._outstanding

    @property
    def pending_prefill_tokens(self) -> int:
        """Prompt tokens sent here, not found in its cache, whose prefill has not finished."""
        return self._pending_tokens

    def pending_prefill_tokens_in(self, service_tier: str) -> int:
        """``pending_prefill_tokens`` of one service tier: what an online prompt waits behind on an
        engine that runs ``default`` work before ``flex`` work (OOCO's prefill placement)."""
        return self._tier_pending.get(service_tier, 0)

    @property
    def decoding(self) -> int:
        """Requests here past their prefill, generating tokens."""
        return self._decoding

    def outstanding_in(self, service_tier: str) -> int:
        """Requests (stages) of one service tier sent here and not finished (OOCO's admission)."""
        return self._tiers.get(service_tier, 0)

    @property
    def routed(self) -> int:
        """Requests (stages) sent here since the router started."""
        return self._routed

    def cached_blocks(self, req: RouteRequest) -> int:
        """How many leading full blocks of ``req``'s prompt this instance holds, by the router's index."""
        if self._backend.epoch != self._epoch:
            self._epoch = self._backend.epoch
            self._index.clear()
        return self._index.match(req.block_keys)

    def cached_tokens(self, req: RouteRequest) -> int:
        """Prompt tokens of ``req`` this instance would find in its prefix cache (it computes at
        least the last prompt token itself)."""
        return min(self.cached_blocks(req) * req.block_size, req.num_prompt_tokens - 1)

    def __repr__(self) -> str:
        return f"InstanceView({self.name}, {self.role}, outstanding={self._outstanding})"


@dataclass(frozen=True)
class Route:
    """Where a request goes: ``target`` generates the answer; with P/D, ``prefill`` computes the
    prompt's KV first and hands it to ``target``."""

    target: InstanceView
    prefill: InstanceView | None = None


@dataclass(eq=False)
class Ticket:
    """One stage of one request on one instance, as the router accounts for it."""

    view: InstanceView
    request: RouteRequest
    stage: Stage
    pending_tokens: int
    prefilled: bool = False
    ended: bool = False


class Router:
    def __init__(
        self, backends: Sequence[Backend], policy: RoutingPolicy, fingerprint: bytes, block_size: int
    ) -> None:
        self.views = [InstanceView(b) for b in backends]
        self.by_name = {v.name: v for v in self.views}
        self.policy = policy
        self.fingerprint = fingerprint
        self.block_size = block_size
        self._roots: dict[tuple[str | None, str | None], BlockKey] = {}
        policy.check(self.views)

    def request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        max_tokens: int,
        *,
        service_tier: str = "default",
        priority: int = 0,
        adapter_id: str | None = None,
        cache_salt: str | None = None,
        arrival_time: float = 0.0,
    ) -> RouteRequest:
        root = self._roots.get((adapter_id, cache_salt))
        if root is None:
            root = self._roots[(adapter_id, cache_salt)] = root_key(self.fingerprint, adapter_id, cache_salt)
        return RouteRequest(request_id, prompt_token_ids, max_tokens, root, self.block_size, service_tier,
                            priority, adapter_id, arrival_time)

    def route(self, req: RouteRequest, now: float) -> Route | None:
        """The policy's choice, or ``None`` to hold the request for now. Raises
        ``NoInstanceAvailable`` when no instance of a role the policy needs is up."""
        for roles in self.policy.stages:
            if not any(v.healthy and v.role in roles for v in self.views):
                needed = " or ".join(roles)
                raise NoInstanceAvailable(f"no {needed} instance is up")
        return self.policy.route(req, self.views, now)

    # -- accounting ---------------------------------------------------------------------------

    def begin(self, view: InstanceView, req: RouteRequest, stage: Stage) -> Ticket:
        """``req`` is sent to ``view`` for ``stage``; the instance will hold its prompt's blocks."""
        pending = req.num_prompt_tokens - view.cached_tokens(req)
        view._outstanding += 1
        view._pending_tokens += pending
        view._tier_pending[req.service_tier] = view._tier_pending.get(req.service_tier, 0) + pending
        view._routed += 1
        view._tiers[req.service_tier] = view._tiers.get(req.service_tier, 0) + 1
        view._index.insert(req.block_keys)
        ticket = Ticket(view, req, stage, pending)
        self.policy.began(ticket)
        return ticket

    def prefilled(self, ticket: Ticket) -> None:
        """The stage's prompt is computed (its first token came, or the prefill stage ended)."""
        if ticket.prefilled or ticket.ended:
            return
        ticket.prefilled = True
        ticket.view._pending_tokens -= ticket.pending_tokens
        ticket.view._tier_pending[ticket.request.service_tier] -= ticket.pending_tokens
        if ticket.stage != "prefill":
            ticket.view._decoding += 1

    def end(self, ticket: Ticket) -> None:
        """The stage is over (finished, failed or aborted)."""
        if ticket.ended:
            return
        view = ticket.view
        if ticket.prefilled:
            if ticket.stage != "prefill":
                view._decoding -= 1
        else:
            view._pending_tokens -= ticket.pending_tokens
            view._tier_pending[ticket.request.service_tier] -= ticket.pending_tokens
        view._outstanding -= 1
        view._tiers[ticket.request.service_tier] -= 1
        ticket.ended = True
        self.policy.ended(ticket)

    def withdraw(self, req: RouteRequest) -> None:
        """``req`` was given up before the stage that answers it began (its client went away while
        the policy held it or while it was being prefilled)."""
        self.policy.withdrawn(req)
