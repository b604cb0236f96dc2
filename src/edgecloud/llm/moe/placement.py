"""Where each expert lives: placements of logical experts in the physical slots of EP ranks, and the
policies that compute them from measured load.

A ``Placement`` maps, per MoE layer, every physical slot to the logical expert it holds (-1: empty).
Slots ``[r * S, (r + 1) * S)`` live on rank ``r``. An expert held by several slots (replicas) has its
tokens split evenly among them (the MoE layer dispatches round-robin), so a rank's load is the sum of
``load[e] / replicas[e]`` over its slots and the step waits for the busiest rank: balance is
max / mean of the rank loads (1.0 = perfect).

Policies, all pure functions of a load matrix ``[layers, experts]`` (token choices per expert):

* ``static_placement``: experts in order, ``E / R`` contiguous experts per rank, no replicas (what
  an engine does without a balancer).
* ``eplb_placement``: DeepSeek's Expert Parallelism Load Balancer (github.com/deepseek-ai/EPLB),
  reimplemented: expert groups packed onto nodes (hierarchical mode), replicas added one at a time
  to the expert with the largest load per replica, then replicas packed onto ranks with exactly S
  per rank by longest-processing-time-first. Replicas may share a rank.
* ``omni_placement``: OmniPlacement (OmniInfer, arXiv 2511.22481; Huawei's open ``omni_placement``
  load balancer): for each number of redundant slots per rank (0, 1, ... up to the budget), a heap
  hands the extra replicas to the experts with the largest load per replica (at most
  ``max_replicas`` each, never two on one rank), the replicas go heaviest first to the least-loaded
  rank with room, ``refine`` moves or swaps single replicas off the busiest rank while that lowers
  it (a local search the published greedy does not have), and the candidate with the lowest max /
  mean is kept; one with fewer replicas only when it is lower by more than
  ``FEWER_REPLICAS_MARGIN`` (a tie on the input is not a tie on the next requests: replicas split
  the hot experts' fluctuations over more ranks).

``robust_omni_placement`` places from several loads that happened (scenarios, e.g. each past wave of
requests) instead of their sum: the mean over them of max / mean is what its local search lowers, so
experts that are hot in turn end up apart (session 9, docs/moe.md).

``align`` renumbers a new placement's ranks and slots to keep as many experts as possible where they
already are, so a rebalance copies only the weights that really move.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

EMPTY = -1
# ``omni_layer`` keeps fewer replicas than the slots allow only when that is this much (relative)
# lower on the input. Chosen on the long tuning trace (scripts/moe_predictive_placement.py's study,
# docs/moe.md): 0 (any gain, ties to fewer replicas) was worse on the next requests at EP=2 by
# 0.006 +- 0.002 of max / mean; 0.01, 0.03 and "always all slots" were equal.
FEWER_REPLICAS_MARGIN = 0.01


@dataclass(frozen=True, eq=False)
class Placement:
    slot_expert: np.ndarray  # [layers, ranks * slots_per_rank] int64; EMPTY = no expert in that slot
    num_ranks: int
    num_experts: int

    def __post_init__(self) -> None:
        table = np.asarray(self.slot_expert, dtype=np.int64)
        if table.ndim != 2:
            raise ValueError(f"slot_expert must be [layers, slots], got shape {table.shape}")
        if self.num_ranks < 1 or table.shape[1] % self.num_ranks:
            raise ValueError(f"slot_expert has {table.shape[1]} slots, not a multiple of num_ranks={self.num_ranks}")
        if table.size and (table.min() < EMPTY or table.max() >= self.num_experts):
            raise ValueError(f"slot_expert entries must be -1 or expert ids in [0, {self.num_experts})")
        for layer, row in enumerate(table):
            missing = np.setdiff1d(np.arange(self.num_experts), row)
            if missing.size:
                raise ValueError(f"layer {layer}: experts {missing[:8].tolist()} have no slot")
        table.setflags(write=False)
        object.__setattr__(self, "slot_expert", table)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Placement) and self.num_ranks == other.num_ranks
                and np.array_equal(self.slot_expert, other.slot_expert))

    @property
    def num_layers(self) -> int:
        return self.slot_expert.shape[0]

    @property
    def num_slots(self) -> int:
        return self.slot_expert.shape[1]

    @property
    def slots_per_rank(self) -> int:
        return self.num_slots // self.num_ranks

    def replica_counts(self) -> np.ndarray:
        """``[layers, experts]``: how many slots hold each expert."""
        counts = np.zeros((self.num_layers, self.num_experts), dtype=np.int64)
        for layer, row in enumerate(self.slot_expert):
            np.add.at(counts[layer], row[row >= 0], 1)
        return counts

    def rank_loads(self, load: np.ndarray) -> np.ndarray:
        """``[layers, ranks]``: the tokens each rank computes when experts' tokens are split evenly
        among their replicas."""
        load = _check_load(load, self.num_layers, self.num_experts)
        per_replica = load / np.maximum(self.replica_counts(), 1)
        slot_load = np.where(self.slot_expert >= 0,
                             np.take_along_axis(per_replica, np.maximum(self.slot_expert, 0), axis=1), 0.0)
        return slot_load.reshape(self.num_layers, self.num_ranks, self.slots_per_rank).sum(axis=2)

    def imbalance(self, load: np.ndarray) -> np.ndarray:
        """``[layers]``: max / mean rank load (1.0 for a layer without load)."""
        return max_over_mean(self.rank_loads(load))

    def with_layers(self, other: Placement, layers: list[int]) -> Placement:
        """This placement with ``layers`` taken from ``other`` (same shape)."""
        table = self.slot_expert.copy()
        table[layers] = other.slot_expert[layers]
        return Placement(table, self.num_ranks, self.num_experts)

    def moved_slots(self, other: Placement) -> np.ndarray:
        """``[layers]``: slots whose expert differs between the two placements (weights to copy)."""
        if self.slot_expert.shape != other.slot_expert.shape:
            return np.full(self.num_layers, self.slots_per_rank * self.num_ranks)
        return ((self.slot_expert != other.slot_expert) & (other.slot_expert >= 0)).sum(axis=1)

    def to_lists(self) -> list[list[int]]:
        return self.slot_expert.tolist()


def max_over_mean(rank_loads: np.ndarray) -> np.ndarray:
    mean = rank_loads.mean(axis=-1)
    return np.where(mean > 0, rank_loads.max(axis=-1) / np.where(mean > 0, mean, 1.0), 1.0)


def _check_load(load: np.ndarray, layers: int, experts: int) -> np.ndarray:
    load = np.asarray(load, dtype=np.float64)
    if load.shape != (layers, experts):
        raise ValueError(f"load must be [layers={layers}, experts={experts}], got {load.shape}")
    if (load < 0).any():
        raise ValueError("load must be non-negative")
    return load


def _min_slots(num_experts: int, num_ranks: int) -> int:
    return -(-num_experts // num_ranks)


def static_placement(num_layers: int, num_experts: int, num_ranks: int, slots_per_rank: int | None = None) -> Placement:
    """Experts ``[r * E/R, (r+1) * E/R)`` on rank ``r``, in order; spare slots stay empty."""
    per_rank = _min_slots(num_experts, num_ranks)
    slots = per_rank if slots_per_rank is None else slots_per_rank
    if slots < per_rank:
        raise ValueError(f"slots_per_rank={slots} cannot hold {num_experts} experts on {num_ranks} ranks")
    row = np.full(num_ranks * slots, EMPTY, dtype=np.int64)
    for expert in range(num_experts):
        rank, index = divmod(expert, per_rank)
        row[rank * slots + index] = expert
    return Placement(np.tile(row, (num_layers, 1)), num_ranks, num_experts)


# -- DeepSeek's EPLB ------------------------------------------------------------------------------


def _balanced_packing(weights: np.ndarray, num_packs: int) -> np.ndarray:
    """Pack items into ``num_packs`` packs of exactly ``len / num_packs`` items each, heaviest first
    into the lightest pack that still has room. Returns each item's pack."""
    per_pack = len(weights) // num_packs
    pack_of = np.empty(len(weights), dtype=np.int64)
    loads = np.zeros(num_packs)
    counts = np.zeros(num_packs, dtype=np.int64)
    for item in np.argsort(-weights, kind="stable"):
        open_packs = np.flatnonzero(counts < per_pack)
        pack = open_packs[np.argmin(loads[open_packs])]
        pack_of[item] = pack
        loads[pack] += weights[item]
        counts[pack] += 1
    return pack_of


def _replicate(weights: np.ndarray, num_physical: int) -> np.ndarray:
    """One replica each, then each further replica to the expert with the largest load per
    replica. Returns the replica count per expert."""
    counts = np.ones(len(weights), dtype=np.int64)
    for _ in range(num_physical - len(weights)):
        counts[np.argmax(weights / counts)] += 1
    return counts


def eplb_placement(load: np.ndarray, num_ranks: int, slots_per_rank: int, num_groups: int = 1,
                   num_nodes: int = 1) -> Placement:
    """DeepSeek's EPLB with ``num_ranks * slots_per_rank`` physical experts. Hierarchical when the
    ``num_groups`` expert groups divide among ``num_nodes`` nodes (groups packed onto nodes, replicas
    and ranks chosen within each node), global otherwise (one node, one group)."""
    load = np.asarray(load, dtype=np.float64)
    layers, experts = load.shape
    num_physical = num_ranks * slots_per_rank
    if num_physical < experts:
        raise ValueError(f"{num_ranks} ranks x {slots_per_rank} slots cannot hold {experts} experts")
    if experts % num_groups or num_groups % num_nodes or num_ranks % num_nodes or num_physical % num_nodes:
        num_groups, num_nodes = 1, 1  # EPLB's global policy
    group_size = experts // num_groups
    ranks_per_node = num_ranks // num_nodes
    table = np.empty((layers, num_physical), dtype=np.int64)
    for layer in range(layers):
        w = _check_load(load[layer : layer + 1], 1, experts)[0]
        # 1. Expert groups onto nodes, balancing the nodes' loads (equal group counts per node).
        group_node = _balanced_packing(w.reshape(num_groups, group_size).sum(axis=1), num_nodes)
        row: list[int] = []
        for node in range(num_nodes):
            node_experts = np.concatenate([np.arange(g * group_size, (g + 1) * group_size)
                                           for g in np.flatnonzero(group_node == node)])
            # 2. Replicas within the node.
            counts = _replicate(w[node_experts], num_physical // num_nodes)
            replicas = np.repeat(node_experts, counts)
            replica_load = np.repeat(w[node_experts] / counts, counts)
            # 3. Replicas onto the node's ranks, slots_per_rank each.
            rank_of = _balanced_packing(replica_load, ranks_per_node)
            for rank in range(ranks_per_node):
                row.extend(replicas[rank_of == rank].tolist())
        table[layer] = row
    return Placement(table, num_ranks, experts)


# -- OmniPlacement ---------------------------------------------------------------------------------


def _deployments(w: np.ndarray, extra: int, max_replicas: int) -> np.ndarray:
    """Replica counts after handing ``extra`` replicas, one at a time through a heap, to the expert
    with the largest load per replica (ties: the lower id), each expert at most ``max_replicas``."""
    counts = np.ones(len(w), dtype=np.int64)
    heap = [(-w[e], e) for e in range(len(w)) if max_replicas > 1 and w[e] > 0]
    heapq.heapify(heap)
    while extra > 0 and heap:
        _, expert = heapq.heappop(heap)
        counts[expert] += 1
        extra -= 1
        if counts[expert] < max_replicas:
            heapq.heappush(heap, (-w[expert] / counts[expert], expert))
    return counts


def _distribute(w: np.ndarray, counts: np.ndarray, num_ranks: int, capacity: int,
                spread: bool = True) -> list[list[int]] | None:
    """Replicas heaviest first onto the least-loaded rank that has room (and, when ``spread``, does
    not hold the expert yet). Returns each rank's experts, or None when they cannot all be placed."""
    instances = sorted(((w[e] / counts[e], e) for e in range(len(w)) for _ in range(counts[e])),
                       key=lambda item: (-item[0], item[1]))
    ranks: list[list[int]] = [[] for _ in range(num_ranks)]
    loads = np.zeros(num_ranks)
    for load, expert in instances:
        candidates = [r for r in range(num_ranks)
                      if len(ranks[r]) < capacity and not (spread and expert in ranks[r])]
        if not candidates:
            return None
        rank = min(candidates, key=lambda r: (loads[r], r))
        ranks[rank].append(expert)
        loads[rank] += load
    return ranks


def _rank_loads_of(ranks: list[list[int]], w: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return np.array([sum(w[e] / counts[e] for e in experts) for experts in ranks])


class _Layout:
    """One layer's replicas on ranks during the local search: each rank's experts, the replica count
    of each expert, the ranks holding it and the rank loads, kept up to date move by move."""

    def __init__(self, ranks: list[list[int]], w: np.ndarray, capacity: int, max_replicas: int) -> None:
        self.ranks = ranks
        self.w = w
        self.capacity = capacity
        self.max_replicas = max_replicas
        self.counts = np.zeros(len(w), dtype=np.int64)
        self.holders: list[list[int]] = [[] for _ in w]
        for rank, held in enumerate(ranks):
            for expert in held:
                self.counts[expert] += 1
                self.holders[expert].append(rank)
        self.loads = _rank_loads_of(ranks, w, self.counts)

    def unit(self, expert: int, extra: int = 0) -> float:
        return float(self.w[expert] / (self.counts[expert] + extra))

    def add(self, expert: int, rank: int) -> None:
        self._recount(expert, rank, +1)

    def remove(self, expert: int, rank: int) -> None:
        self._recount(expert, rank, -1)

    def _recount(self, expert: int, rank: int, step: int) -> None:
        before = self.unit(expert) if self.counts[expert] else 0.0
        for holder in self.holders[expert]:
            self.loads[holder] -= before
        if step > 0:
            self.ranks[rank].append(expert)
            self.holders[expert].append(rank)
        else:
            self.ranks[rank].remove(expert)
            self.holders[expert].remove(rank)
        self.counts[expert] += step
        after = self.unit(expert) if self.counts[expert] else 0.0
        for holder in self.holders[expert]:
            self.loads[holder] += after

    def resplit(self, expert: int, change: int, delta: dict[int, float]) -> None:
        """Adds to ``delta`` what changing ``expert``'s replica count by ``change`` does to the
        ranks that keep holding it (their share of its load)."""
        shift = self.unit(expert, change) - self.unit(expert)
        for holder in self.holders[expert]:
            delta[holder] = delta.get(holder, 0.0) + shift


Move = tuple[str, int, int, int]  # (kind, expert, rank, other expert or -1)


def _moves(layout: _Layout, hot: int) -> Iterator[tuple[dict[int, float], Move]]:
    """Every move of the local search off the busiest rank ``hot``, with what it changes in each
    rank's load."""
    ranks, w, capacity, cap = layout.ranks, layout.w, layout.capacity, layout.max_replicas
    spare = [g for g in range(len(w)) if layout.counts[g] >= 2]
    for expert in set(ranks[hot]):
        u = layout.unit(expert)
        for rank in range(len(ranks)):
            if rank == hot:
                continue
            if len(ranks[rank]) < capacity:
                yield {hot: -u, rank: u}, ("move", expert, rank, -1)
            for other in set(ranks[rank]):
                if other != expert and layout.unit(other) < u:
                    d = u - layout.unit(other)
                    yield {hot: -d, rank: d}, ("swap", expert, rank, other)
        if layout.counts[expert] < cap:
            # A further replica of this expert, in a free slot or in one of a spare replica.
            for rank in range(len(ranks)):
                if len(ranks[rank]) < capacity:
                    delta: dict[int, float] = {}
                    layout.resplit(expert, +1, delta)
                    delta[rank] = delta.get(rank, 0.0) + layout.unit(expert, 1)
                    yield delta, ("split", expert, rank, -1)
            for other in spare:
                if other == expert:
                    continue
                for rank in set(layout.holders[other]):
                    delta = {}
                    layout.resplit(expert, +1, delta)
                    layout.resplit(other, -1, delta)
                    # One replica of ``other`` leaves ``rank``: its share there goes with it.
                    delta[rank] = delta.get(rank, 0.0) - layout.unit(other, -1) + layout.unit(expert, 1)
                    yield delta, ("split", expert, rank, other)
        if layout.counts[expert] >= 2:
            # This replica's slot goes to another expert.
            for other in range(len(w)):
                if other == expert or layout.counts[other] >= cap:
                    continue
                delta = {}
                layout.resplit(expert, -1, delta)
                layout.resplit(other, +1, delta)
                delta[hot] = delta.get(hot, 0.0) - layout.unit(expert, -1) + layout.unit(other, 1)
                yield delta, ("merge", expert, hot, other)


def refine(ranks: list[list[int]], w: np.ndarray, counts: np.ndarray, capacity: int, max_rounds: int = 256,
           max_replicas: int | None = None) -> None:
    """Local search on one layer, in place: from the busiest rank, move a replica to another rank
    with room, swap it with a lighter one, give its expert a further replica (in a free slot, or in
    the slot of an expert that has replicas to spare), or give its slot to another expert when its
    own expert has another replica. Two replicas of an expert may share a rank (that rank gets two
    shares of the expert's tokens: uneven splits). The move that lowers (max rank load, sum of
    squared rank loads) the most is taken while one does, at most ``max_rounds`` moves; at most
    ``max_replicas`` replicas per expert (None: any). ``counts`` is updated."""
    cap = sum(len(held) for held in ranks) if max_replicas is None else max_replicas
    layout = _Layout(ranks, w, capacity, cap)
    eps = 1e-9 * max(float(w.sum()), 1e-300)
    for _ in range(max_rounds):
        loads = layout.loads
        order = np.argsort(-loads, kind="stable").tolist()
        hot = order[0]
        top = float(loads[hot])
        best: tuple[float, float, Move] | None = None
        for delta, move in _moves(layout, hot):
            changed_max = max(loads[r] + d for r, d in delta.items())
            rest = next((float(loads[r]) for r in order if r not in delta), 0.0)
            new_max = max(changed_max, rest)
            sumsq = sum((loads[r] + d) ** 2 - loads[r] ** 2 for r, d in delta.items())
            if new_max > top + eps or (new_max > top - eps and sumsq > -eps * top):
                continue  # neither the max nor the spread improves
            if best is None or (new_max, sumsq) < best[:2]:
                best = (new_max, sumsq, move)
        if best is None:
            break
        kind, expert, rank, other = best[2]
        if kind in ("move", "swap"):
            layout.remove(expert, hot)
            layout.add(expert, rank)
            if kind == "swap":
                layout.remove(other, rank)
                layout.add(other, hot)
        elif kind == "split":
            if other >= 0:
                layout.remove(other, rank)
            layout.add(expert, rank)
        else:  # merge
            layout.remove(expert, hot)
            layout.add(other, hot)
    counts[:] = layout.counts


def omni_layer(w: np.ndarray, num_ranks: int, slots_per_rank: int, max_replicas: int | None = None,
               refine_steps: bool = True) -> list[list[int]]:
    """OmniPlacement for one layer: each rank's experts (at most ``slots_per_rank``)."""
    experts = len(w)
    base = _min_slots(experts, num_ranks)
    if slots_per_rank < base:
        raise ValueError(f"slots_per_rank={slots_per_rank} cannot hold {experts} experts on {num_ranks} ranks")
    cap = num_ranks * slots_per_rank - experts + 1 if max_replicas is None else max(1, max_replicas)
    best: tuple[float, int, list[list[int]]] | None = None
    # The most redundancy first: a layout with fewer replicas replaces it only when it is lower by
    # more than FEWER_REPLICAS_MARGIN on the input. A fit that ties on the input generalizes worse
    # without the replicas (the next requests' hot experts are split over fewer ranks), and the
    # spare slots are allocated either way.
    for per_rank in range(slots_per_rank, base - 1, -1):
        extra = per_rank * num_ranks - experts
        # Two starts: replicas of an expert on distinct ranks (an even split), or anywhere (two
        # replicas on one rank give it two shares: uneven splits, as EPLB's packing makes).
        for spread in (True, False):
            counts = _deployments(w, extra, min(cap, num_ranks) if spread else cap)
            ranks = _distribute(w, counts, num_ranks, per_rank, spread)
            if ranks is None:
                continue
            if refine_steps:
                refine(ranks, w, counts, per_rank, max_replicas=cap)
            ratio = float(max_over_mean(_rank_loads_of(ranks, w, counts)))
            margin = FEWER_REPLICAS_MARGIN if best is not None and per_rank < best[1] else 0.0
            if best is None or ratio < best[0] * (1.0 - margin) - 1e-12:
                best = (ratio, per_rank, ranks)
    assert best is not None, "the redundancy-free candidate always fits"
    return best[2]


def _scenario_ratio(ranks: list[list[int]], scenarios: np.ndarray, weights: np.ndarray) -> float:
    """The weighted mean over scenarios ``[k, experts]`` of max / mean rank load."""
    held = [expert for experts in ranks for expert in experts]
    owner = np.zeros((len(held), len(ranks)))
    owner[np.arange(len(held)), [rank for rank, experts in enumerate(ranks) for _ in experts]] = 1.0
    counts = np.bincount(held, minlength=scenarios.shape[1])
    loads = (scenarios[:, held] / counts[held]) @ owner  # [k, ranks]
    mean = loads.mean(axis=1)
    ratio = np.where(mean > 0, loads.max(axis=1) / np.where(mean > 0, mean, 1.0), 1.0)
    return float(weights @ ratio)


def robust_layer(scenarios: np.ndarray, num_ranks: int, slots_per_rank: int, weights: np.ndarray | None = None,
                 max_replicas: int | None = None, max_rounds: int = 64) -> list[list[int]]:
    """OmniPlacement for one layer made robust to the next requests: ``scenarios [k, experts]`` are
    loads that happened (e.g. each past wave of requests on its own), and the placement is judged by
    the (``weights``-) mean over them of max / mean rank load, not by its fit to their sum. Starts
    from ``omni_layer`` on the weighted sum, then takes, while one lowers that mean, the best single
    move: a replica to a rank with room, two replicas swapped between ranks, or a replica's slot
    handed to another expert (its own keeping a replica; at most ``max_replicas`` each)."""
    scenarios = np.asarray(scenarios, dtype=np.float64)
    k, experts = scenarios.shape
    weights = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    cap = num_ranks * slots_per_rank - experts + 1 if max_replicas is None else max(1, max_replicas)
    ranks = omni_layer(weights @ scenarios, num_ranks, slots_per_rank, max_replicas)
    best = _scenario_ratio(ranks, scenarios, weights)
    for _ in range(max_rounds):
        found: tuple[float, list[list[int]]] | None = None
        for candidate in _robust_moves(ranks, slots_per_rank, experts, cap):
            value = _scenario_ratio(candidate, scenarios, weights)
            if value < best - 1e-9 and (found is None or value < found[0]):
                found = (value, candidate)
        if found is None:
            break
        best, ranks = found
    return ranks


def _robust_moves(ranks: list[list[int]], capacity: int, experts: int, cap: int) -> Iterator[list[list[int]]]:
    counts = Counter(e for held in ranks for e in held)
    for a, held in enumerate(ranks):
        for i, expert in enumerate(held):
            for b in range(len(ranks)):
                if b == a:
                    continue
                if len(ranks[b]) < capacity:
                    moved = [list(h) for h in ranks]
                    moved[a].pop(i)
                    moved[b].append(expert)
                    yield moved
                for j, other in enumerate(ranks[b]):
                    if other != expert:
                        swapped = [list(h) for h in ranks]
                        swapped[a][i], swapped[b][j] = other, expert
                        yield swapped
            if counts[expert] >= 2:
                for other in range(experts):
                    if other != expert and counts[other] < cap:
                        handed = [list(h) for h in ranks]
                        handed[a][i] = other
                        yield handed


def robust_omni_placement(scenarios: np.ndarray, num_ranks: int, slots_per_rank: int,
                          weights: np.ndarray | None = None, max_replicas: int | None = None) -> Placement:
    """``robust_layer`` for every layer of ``scenarios [k, layers, experts]``."""
    scenarios = np.asarray(scenarios, dtype=np.float64)
    if scenarios.ndim != 3 or len(scenarios) < 1:
        raise ValueError(f"scenarios must be [k >= 1, layers, experts], got shape {scenarios.shape}")
    _, layers, experts = scenarios.shape
    if (scenarios < 0).any():
        raise ValueError("scenarios must be non-negative")
    return _placement([robust_layer(scenarios[:, layer], num_ranks, slots_per_rank, weights, max_replicas)
                       for layer in range(layers)], num_ranks, slots_per_rank, experts)


def omni_placement(load: np.ndarray, num_ranks: int, slots_per_rank: int, max_replicas: int | None = None,
                   refine_steps: bool = True) -> Placement:
    """OmniPlacement's static placement from a load history ``[layers, experts]``."""
    load = np.asarray(load, dtype=np.float64)
    layers, experts = load.shape
    return _placement([omni_layer(_check_load(load[layer : layer + 1], 1, experts)[0], num_ranks, slots_per_rank,
                                  max_replicas, refine_steps) for layer in range(layers)],
                      num_ranks, slots_per_rank, experts)


def _placement(layouts: list[list[list[int]]], num_ranks: int, slots_per_rank: int, experts: int) -> Placement:
    """The placement of per-layer layouts (each rank's experts, a layer)."""
    table = np.full((len(layouts), num_ranks * slots_per_rank), EMPTY, dtype=np.int64)
    for layer, ranks in enumerate(layouts):
        for rank, held in enumerate(ranks):
            table[layer, rank * slots_per_rank : rank * slots_per_rank + len(held)] = held
    return Placement(table, num_ranks, experts)


def align(new: Placement, old: Placement) -> Placement:
    """``new`` with its ranks renumbered (per layer, the assignment that keeps the most experts on
    the rank that has them) and each rank's slots ordered so that experts stay in their old slot."""
    from scipy.optimize import linear_sum_assignment

    if new.slot_expert.shape != old.slot_expert.shape or new.num_ranks != old.num_ranks:
        return new
    slots, ranks = new.slots_per_rank, new.num_ranks
    table = np.full_like(new.slot_expert, EMPTY)
    for layer in range(new.num_layers):
        new_rows = [Counter(new.slot_expert[layer, r * slots : (r + 1) * slots].tolist()) for r in range(ranks)]
        for held in new_rows:
            held.pop(EMPTY, None)
        old_rows = [old.slot_expert[layer, r * slots : (r + 1) * slots].tolist() for r in range(ranks)]
        overlap = np.array([[sum((held & Counter(o)).values()) for o in old_rows] for held in new_rows])
        new_rank, old_rank = linear_sum_assignment(-overlap)
        for n, o in zip(new_rank, old_rank, strict=True):
            remaining = Counter(new_rows[n])
            row = []
            for expert in old_rows[o]:
                if remaining[expert] > 0:
                    remaining[expert] -= 1
                    row.append(expert)
                else:
                    row.append(EMPTY)
            rest = sorted(remaining.elements())
            row = [rest.pop(0) if expert == EMPTY and rest else expert for expert in row]
            table[layer, o * slots : (o + 1) * slots] = row
    return Placement(table, ranks, new.num_experts)
