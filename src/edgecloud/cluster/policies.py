"""Routing policies, in one registry: each a small class that picks an instance for a request from
read-only ``InstanceView``s (``edgecloud.cluster.router``). The same objects route for the real
cluster and for the simulator.

- ``round-robin``: the next instance up, in turn.
- ``least-outstanding``: the instance with the fewest requests in flight (vLLM production-stack's
  and Ray Serve's default balancing).
- ``prefix-aware``: the instance where the request's first token is expected soonest, counting
  work in tokens: the prompt tokens it would have to compute there (those not already cached, from
  the stable block keys) plus the prompt tokens already waiting there, plus the steps that the
  requests decoding there add (the cache-aware scoring of SGLang's router and llm-d's scheduler,
  with load and cache match in one unit instead of weighted scores).
- ``pd``: prefill/decode disaggregation (DistServe, Splitwise, Dynamo): the prompt is prefilled on
  a ``prefill`` instance (by ``prefix-aware`` by default), its KV handed to a ``decode`` instance
  (``least-outstanding`` by default) that streams the answer.

``make_policy("prefix-aware", roles=("mixed",))`` builds one by name; options are checked.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from edgecloud.cluster.config import ROLES, Role
from edgecloud.cluster.router import InstanceView, Route, RouteRequest, Ticket

POLICIES: dict[str, type[RoutingPolicy]] = {}


def register_policy(name: str) -> Callable[[type[RoutingPolicy]], type[RoutingPolicy]]:
    def add(cls: type[RoutingPolicy]) -> type[RoutingPolicy]:
        if name in POLICIES:
            raise ValueError(f"routing policy {name!r} is registered twice")
        cls.name = name
        POLICIES[name] = cls
        return cls

    return add


def make_policy(name: str, **options: Any) -> RoutingPolicy:
    """A policy by its registry name; unknown names and options raise ``ValueError`` naming them."""
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown routing policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for key in options:
        if key not in accepted:
            raise ValueError(f"routing policy {name!r} has no option {key!r}; options: {', '.join(sorted(accepted))}")
    return cls(**options)


class RoutingPolicy(ABC):
    """Picks where a request goes. ``stages`` lists, per stage of a request, the roles an instance
    must have to serve it (the router refuses with 503 when none of them is up)."""

    name: ClassVar[str] = ""

    def __init__(self, roles: Sequence[Role] = ("mixed",), pools: Sequence[str] | None = None) -> None:
        for role in roles:
            if role not in ROLES:
                raise ValueError(f"roles: {role!r} is not one of {', '.join(ROLES)}")
        self.roles = tuple(roles)
        self.pools = None if pools is None else tuple(pools)

    @property
    def stages(self) -> tuple[tuple[Role, ...], ...]:
        return (self.roles,)

    def eligible(self, instances: Sequence[InstanceView]) -> list[InstanceView]:
        return [
            v for v in instances
            if v.healthy and v.role in self.roles and (self.pools is None or v.pool in self.pools)
        ]

    def check(self, instances: Sequence[InstanceView]) -> None:
        """Raises ``ValueError`` when the cluster cannot serve this policy at all."""
        for roles in self.stages:
            if not any(v.role in roles and (self.pools is None or v.pool in self.pools) for v in instances):
                where = "" if self.pools is None else f" in pool {'/'.join(self.pools)}"
                raise ValueError(
                    f"routing policy {self.name!r} needs a {' or '.join(roles)} instance{where}; the cluster has "
                    f"{', '.join(f'{v.name} ({v.role}, pool {v.pool})' for v in instances)}"
                )

    @abstractmethod
    def choose(self, req: RouteRequest, candidates: list[InstanceView], now: float) -> InstanceView | None:
        """The instance for ``req`` among healthy, eligible ``candidates`` (never empty)."""

    def route(self, req: RouteRequest, instances: Sequence[InstanceView], now: float) -> Route | None:
        candidates = self.eligible(instances)
        if not candidates:
            return None
        target = self.choose(req, candidates, now)
        return None if target is None else Route(target)

    # Policies that keep books of their own (OmniProxy's held queue and decode token load) hear of
    # what the runtime did with their decisions; the others ignore it.
    def began(self, ticket: Ticket) -> None:
        """A stage of a request was sent where this policy routed it (``Router.begin``)."""
        return None

    def ended(self, ticket: Ticket) -> None:
        """That stage is over: finished, failed or aborted (``Router.end``)."""
        return None

    def withdrawn(self, req: RouteRequest) -> None:
        """A request was given up before the stage that answers it began (while this policy held
        it, or during its prefill)."""
        return None


@register_policy("round-robin")
class RoundRobin(RoutingPolicy):
    def __init__(self, roles: Sequence[Role] = ("mixed",), pools: Sequence[str] | None = None) -> None:
        super().__init__(roles, pools)
        self._next = 0

    def choose(self, req: RouteRequest, candidates: list[InstanceView], now: float) -> InstanceView:
        target = candidates[self._next % len(candidates)]
        self._next += 1
        return target


@register_policy("least-outstanding")
class LeastOutstanding(RoutingPolicy):
    """Counts a request on its instance from the moment it is routed there. The router counts it
    only once its stage begins; as ``pd``'s decode policy that is after the prompt was prefilled
    elsewhere, so without these books every request routed during one prefill picked the same
    decode instance (herding: about 10% of requests waited seconds on a full instance in the
    OmniProxy simulation, issue #21)."""

    def __init__(self, roles: Sequence[Role] = ("mixed",), pools: Sequence[str] | None = None) -> None:
        super().__init__(roles, pools)
        self._booked: dict[str, InstanceView] = {}  # request id -> instance routed to, stage not begun
        self._promised: dict[InstanceView, int] = {}

    def promised(self, view: InstanceView) -> int:
        """Requests routed to ``view`` whose stage there has not begun."""
        return self._promised.get(view, 0)

    def choose(self, req: RouteRequest, candidates: list[InstanceView], now: float) -> InstanceView:
        self._release(req.request_id)  # routed again: where it went first failed before it began
        target = min(candidates, key=lambda v: (v.outstanding + self.promised(v), v.pending_prefill_tokens, v.routed))
        self._booked[req.request_id] = target
        self._promised[target] = self.promised(target) + 1
        return target

    def _release(self, request_id: str) -> None:
        view = self._booked.pop(request_id, None)
        if view is not None:
            self._promised[view] -= 1

    def began(self, ticket: Ticket) -> None:
        if self._booked.get(ticket.request.request_id) is ticket.view:
            self._release(ticket.request.request_id)  # the router's own count takes over

    def ended(self, ticket: Ticket) -> None:
        self._release(ticket.request.request_id)

    def withdrawn(self, req: RouteRequest) -> None:
        self._release(req.request_id)


def expected_work_tokens(view: InstanceView, req: RouteRequest) -> float:
    """Tokens of work on ``view`` before ``req``'s first token: the prompt tokens queued there and
    its own uncached ones, W, plus one token per decoding request in each of the max(1, W / budget)
    steps that W takes (chunked prefill shares every step with the running decodes)."""
    work = view.pending_prefill_tokens + req.num_prompt_tokens - view.cached_tokens(req)
    steps = max(1.0, work / view.max_num_batched_tokens)
    return work + view.decoding * steps


@register_policy("prefix-aware")
class PrefixAware(RoutingPolicy):
    def choose(self, req: RouteRequest, candidates: list[InstanceView], now: float) -> InstanceView:
        return min(candidates, key=lambda v: (expected_work_tokens(v, req), v.outstanding, v.routed))


@register_policy("pd")
class PrefillDecode(RoutingPolicy):
    """Prefill on a ``prefill`` instance, decode on a ``decode`` instance, each chosen by a policy
    of the registry (``prefill`` and ``decode`` name them)."""

    def __init__(
        self, prefill: str = "prefix-aware", decode: str = "least-outstanding", pools: Sequence[str] | None = None
    ) -> None:
        super().__init__(("prefill", "decode"), pools)
        if prefill == "pd" or decode == "pd":
            raise ValueError("pd's prefill and decode policies must be single-stage policies")
        self.prefill_policy = make_policy(prefill, roles=("prefill",), pools=pools)
        self.decode_policy = make_policy(decode, roles=("decode",), pools=pools)

    @property
    def stages(self) -> tuple[tuple[Role, ...], ...]:
        return (("prefill",), ("decode",))

    def choose(self, req: RouteRequest, candidates: list[InstanceView], now: float) -> InstanceView | None:
        raise NotImplementedError("pd routes in two stages (route)")

    def route(self, req: RouteRequest, instances: Sequence[InstanceView], now: float) -> Route | None:
        prefill = self.prefill_policy.route(req, instances, now)
        if prefill is None:
            return None
        decode = self.decode_policy.route(req, instances, now)
        return None if decode is None else Route(decode.target, prefill=prefill.target)

    # Each stage's policy hears of its own stage (books such as least-outstanding's or OmniProxy's).
    def _stage_policy(self, ticket: Ticket) -> RoutingPolicy:
        return self.prefill_policy if ticket.stage == "prefill" else self.decode_policy

    def began(self, ticket: Ticket) -> None:
        self._stage_policy(ticket).began(ticket)

    def ended(self, ticket: Ticket) -> None:
        self._stage_policy(ticket).ended(ticket)

    def withdrawn(self, req: RouteRequest) -> None:
        self.prefill_policy.withdrawn(req)
        self.decode_policy.withdrawn(req)


# The LoRA adapter policies (slora, affinity, loraserve) and OOCO's pool policies (ooco, separate,
# priority; issue #19) register themselves on import.
from edgecloud.cluster import lora as _lora_policies  # noqa: E402, F401
from edgecloud.cluster import omniproxy as _omniproxy_policies  # noqa: E402, F401  # OmniProxy, issue #21
from edgecloud.cluster.ooco import policies as _ooco_policies  # noqa: E402, F401
