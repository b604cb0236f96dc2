"""Routing and placement of LoRA adapters across instances: LoRAServe (arXiv 2511.22880, §4) and the
two baselines it is measured against, as policies of the cluster's registry (real and simulated).

- ``slora``: adapters play no part in routing; the instance with the fewest requests in flight
  takes the request and loads its adapter on demand (S-LoRA or vLLM multi-LoRA behind a
  least-loaded balancer: every instance ends up loading every adapter).
- ``affinity``: to an instance that already holds the request's adapter — by the router's own
  record of where it sent each adapter, an LRU of ``capacity`` adapters per instance — the least
  loaded of them; to the least loaded instance overall when none does, or when its holders are
  more than ``spill_tokens`` of work behind it.
- ``loraserve``: adapters are placed by rank and load and the placement is redone every
  ``rebalance_s``. Each adapter's load is its recent tokens (prompt + output budget, decayed with
  half-life ``window_s``) times its rank weight ``1 + rank_cost · rank`` (a token of a rank-r
  adapter costs that many base tokens). Adapters sorted by rank are cut into as many contiguous
  runs of equal rank-weighted load as there are instances: every instance serves about the same
  load and a narrow range of ranks, so a batch is never as slow as one large adapter among small
  ones (the rank skew), and an adapter hotter than one instance's share is spread over several.
  A request goes to the holder of its adapter with the least work per unit of share. Adapters
  registered ahead (``registered``: the simulator places every adapter at registration, as the
  paper does) go to their registration homes until the load-based placement takes them in; an
  adapter the policy does not know at all (a cold read) goes to the least loaded instance until
  the next rebalance moves it to the run of its rank. An instance that lacks the adapter fetches
  it from a peer (the cluster's adapter connector; RDMA in the simulator) instead of disk.

``work`` is the prefix-aware policy's measure (``expected_work_tokens``): tokens before the
request's first token there.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from edgecloud.cluster.config import Role
from edgecloud.cluster.policies import LeastOutstanding, RoutingPolicy, expected_work_tokens, register_policy
from edgecloud.cluster.router import InstanceView, RouteRequest


@register_policy("slora")
class SLoRA(LeastOutstanding):
    """Least-outstanding routing, blind to adapters (S-LoRA's on-demand loading on every instance)."""


@register_policy("affinity")
class AdapterAffinity(RoutingPolicy):
    def __init__(self, roles: Sequence[Role] = ("mixed",), pools: Sequence[str] | None = None, capacity: int = 64,
                 spill_tokens: float = 8192.0) -> None:
        super().__init__(roles, pools)
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.spill_tokens = spill_tokens
        self.held: dict[str, OrderedDict[str, None]] = {}  # instance -> adapters sent there, LRU

    def choose(self, req: RouteRequest, candidates: list[InstanceView], now: float) -> InstanceView:
        def work(v: InstanceView) -> tuple[float, int, int]:
            return expected_work_tokens(v, req), v.outstanding, v.routed

        best = min(candidates, key=work)
        adapter = req.adapter_id
        if adapter is None:
            return best
        holders = [v for v in candidates if adapter in self.held.get(v.name, ())]
        target = best
        if holders:
            home = min(holders, key=work)
            if work(home)[0] <= work(best)[0] + self.spill_tokens:
                target = home
        lru = self.held.setdefault(target.name, OrderedDict())
        lru[adapter] = None
        lru.move_to_end(adapter)
        while len(lru) > self.capacity:
            lru.popitem(last=False)
        return target


@dataclass
class Placement:
    """Which instances serve each adapter, with the share of its load each one takes."""

    homes: dict[str, tuple[tuple[str, float], ...]] = field(default_factory=dict)
    ranks: dict[str, tuple[int, int]] = field(default_factory=dict)  # instance -> (lowest, highest) rank

    def add(self, adapter: str, rank: int, parts: tuple[tuple[str, float], ...]) -> None:
        self.homes[adapter] = parts
        for name, _ in parts:
            low, high = self.ranks.get(name, (rank, rank))
            self.ranks[name] = (min(low, rank), max(high, rank))

    def instances_of(self, adapter: str) -> tuple[tuple[str, float], ...]:
        return self.homes.get(adapter, ())


def place_by_rank(loads: Mapping[str, float], ranks: Mapping[str, int], instances: Sequence[str]) -> Placement:
    """Adapters sorted by (rank, name), cut into ``len(instances)`` contiguous runs of equal load:
    an adapter whose load crosses a cut is shared by the instances on both sides, in proportion.
    ``loads`` are rank-weighted; adapters with no load are left out."""
    if not instances:
        raise ValueError("place_by_rank needs at least one instance")
    order = sorted((a for a, w in loads.items() if w > 0), key=lambda a: (ranks.get(a, 0), a))
    placement = Placement()
    if not order:
        return placement
    share = sum(loads[a] for a in order) / len(instances)
    last = len(instances) - 1
    start = 0.0
    for adapter in order:
        load = loads[adapter]
        end = start + load
        parts = []
        for i in range(min(last, int(start / share)), last + 1):
            low, high = i * share, (math.inf if i == last else (i + 1) * share)
            if low >= end:
                break
            overlap = min(end, high) - max(start, low)
            if overlap > 1e-9 * load:  # not a sliver left by rounding at a cut
                parts.append((instances[i], overlap / load))
        placement.add(adapter, ranks.get(adapter, 0), tuple(parts))
        start = end
    return placement


@register_policy("loraserve")
class LoRAServe(RoutingPolicy):
    def __init__(
        self,
        roles: Sequence[Role] = ("mixed",),
        pools: Sequence[str] | None = None,
        ranks: Mapping[str, int] | None = None,
        rank_cost: float = 0.0,
        rebalance_s: float = 30.0,
        window_s: float = 60.0,
        spill_tokens: float = 8192.0,
        registered: Mapping[str, tuple[tuple[str, float], ...]] | None = None,
    ) -> None:
        super().__init__(roles, pools)
        for name, value in (("rebalance_s", rebalance_s), ("window_s", window_s)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if rank_cost < 0:
            raise ValueError(f"rank_cost must be >= 0, got {rank_cost}")
        self.ranks = dict(ranks or {})
        self.rank_cost = rank_cost
        self.rebalance_s = rebalance_s
        self.window_s = window_s
        self.spill_tokens = spill_tokens
        # Rank-weighted tokens, decayed lazily: stored as of ``self._since`` (a token at ``now``
        # counts 2^((now - since) / window_s)), brought back to the present at each rebalance.
        self.loads: dict[str, float] = {}
        # Set at the first request: ``now`` is the router's clock (monotonic time since boot on a
        # real cluster, 0 in the simulator), so a fixed 0 here made 2^(now / window) overflow.
        self._since: float | None = None
        self.placement = Placement()
        # adapter -> its homes at registration, with their shares: where it goes while the placement,
        # which holds only adapters with recent load, does not hold it
        self.registered = dict(registered or {})
        self.next_rebalance: float | None = None
        self.rebalances = 0

    def weight(self, adapter: str) -> float:
        return 1.0 + self.rank_cost * self.ranks.get(adapter, 0)

    def _count(self, adapter: str, tokens: int, now: float) -> None:
        if self._since is None:
            self._since = now
        growth = 2.0 ** ((now - self._since) / self.window_s)
        self.loads[adapter] = self.loads.get(adapter, 0.0) + tokens * self.weight(adapter) * growth

    def current_loads(self, now: float) -> dict[str, float]:
        """Each adapter's decayed rank-weighted tokens at ``now``."""
        if self._since is None:
            return {}
        factor = 2.0 ** (-(now - self._since) / self.window_s)
        return {a: w * factor for a, w in self.loads.items()}

    def rebalance(self, candidates: Sequence[InstanceView], now: float) -> None:
        """Places every adapter seen lately anew over ``candidates`` (in their names' order)."""
        loads = self.current_loads(now)
        self.placement = place_by_rank(loads, self.ranks, sorted(v.name for v in candidates))
        self.loads = {a: w for a, w in loads.items() if w > 1e-6}
        self._since = now
        self.rebalances += 1

    def choose(self, req: RouteRequest, candidates: list[InstanceView], now: float) -> InstanceView:
        def work(v: InstanceView) -> float:
            return expected_work_tokens(v, req)

        adapter = req.adapter_id
        if adapter is None:
            return min(candidates, key=lambda v: (work(v), v.outstanding, v.routed))
        self._count(adapter, req.num_prompt_tokens + req.max_tokens, now)
        if self.next_rebalance is None:
            self.next_rebalance = now + self.rebalance_s
        elif now >= self.next_rebalance:
            self.rebalance(candidates, now)
            self.next_rebalance = now + self.rebalance_s
        by_name = {v.name: v for v in candidates}
        homes = [(by_name[n], s) for n, s in self.placement.instances_of(adapter) if n in by_name]
        if not homes:
            homes = [(by_name[n], s) for n, s in self.registered.get(adapter, ()) if n in by_name]
        if not homes:
            homes = [(self._newcomer_home(adapter, candidates, work), 1.0)]
        target, _ = min(homes, key=lambda h: (work(h[0]) / h[1], h[0].outstanding))
        coolest = min(candidates, key=lambda v: (work(v), v.outstanding))
        if work(target) > work(coolest) + self.spill_tokens:
            target = coolest  # a burst beyond its homes: served remotely rather than queued
        return target

    def _newcomer_home(self, adapter: str, candidates: Sequence[InstanceView],
                       work: Callable[[InstanceView], float]) -> InstanceView:
        """An adapter the placement does not know yet: the least loaded instance; it stays there
        until the next rebalance moves it to the instances of its rank (over the peer link).

        Such an adapter is usually held by no peer, so its first load is a disk read, the costliest
        move there is (a rank-128 adapter of Llama-3-8B: 671 MB, ~0.24 s), and it stalls its
        instance's step. Sent to the instances whose ranks are nearest its own (the first design),
        the cold reads of large adapters queued on the few instances holding the large ranks:
        in the simulator those instances stalled 3.7x the cluster's mean load time and held the
        slowest requests (docs/lora.md, "Why loraserve's gain was small")."""
        home = min(candidates, key=lambda v: (work(v), v.outstanding, v.routed))
        self.placement.add(adapter, self.ranks.get(adapter, 0), ((home.name, 1.0),))
        return home
