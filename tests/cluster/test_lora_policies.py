"""The LoRA policies over hand-made instances: rank-aware placement (equal rank-weighted load,
contiguous rank ranges, hot adapters shared), LoRAServe's routing to an adapter's homes, its
rebalancing as popularity moves, and the baselines (slora blind to adapters, affinity sticky)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.cluster.lora import LoRAServe, place_by_rank
from edgecloud.cluster.policies import POLICIES, make_policy
from edgecloud.cluster.router import Router

from .test_router import BS, FINGERPRINT, FakeInstance


def cluster(policy: str, n: int, **options: object) -> Router:
    return Router([FakeInstance(f"i{k}", max_num_batched_tokens=512) for k in range(n)], make_policy(policy, **options),
                  FINGERPRINT, BS)


_ids = itertools.count(1)


def send(r: Router, adapter: str | None, now: float, prompt: int = 8) -> str:
    """Routes one request and finishes it at once; returns the instance it went to."""
    k = next(_ids)
    req = r.request(f"r{k}", list(range(k * 100, k * 100 + prompt)), 8, adapter_id=adapter)
    route = r.route(req, now)
    assert route is not None
    ticket = r.begin(route.target, req, "mixed")
    r.prefilled(ticket)
    r.end(ticket)
    return route.target.name


def test_the_lora_policies_are_in_the_registry_with_checked_options() -> None:
    assert {"slora", "affinity", "loraserve"} <= set(POLICIES)
    with pytest.raises(ValueError, match="has no option 'rank'"):
        make_policy("loraserve", rank=3)
    with pytest.raises(ValueError, match="rebalance_s must be > 0"):
        make_policy("loraserve", rebalance_s=0)
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        make_policy("affinity", capacity=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([8, 16, 32, 64, 128]), st.floats(0.1, 100.0)), min_size=1, max_size=40),
       st.integers(1, 8))
def test_placement_balances_rank_weighted_load_over_contiguous_rank_ranges(
    adapters: list[tuple[int, float]], n: int
) -> None:
    ranks = {f"a{i}": r for i, (r, _) in enumerate(adapters)}
    loads = {f"a{i}": w for i, (_, w) in enumerate(adapters)}
    names = [f"i{k}" for k in range(n)]
    placement = place_by_rank(loads, ranks, names)
    per_instance = dict.fromkeys(names, 0.0)
    for adapter, parts in placement.homes.items():
        assert sum(s for _, s in parts) == pytest.approx(1.0)
        for name, share in parts:
            per_instance[name] += share * loads[adapter]
    total = sum(loads.values())
    for load in per_instance.values():  # adapters are split at the cuts, so every share is exact
        assert load == pytest.approx(total / n, rel=1e-6)
    # ranks never interleave: instance k's ranks are all <= instance k+1's
    spans = [placement.ranks[name] for name in names if name in placement.ranks]
    for (low, high), (next_low, _) in itertools.pairwise(spans):
        assert low <= high <= next_low


def test_a_hot_adapter_is_shared_and_small_ranks_stay_apart_from_large_ones() -> None:
    ranks = {"hot": 8, "s1": 8, "s2": 16, "l1": 128, "l2": 128}
    loads = {"hot": 50.0, "s1": 5.0, "s2": 5.0, "l1": 20.0, "l2": 20.0}
    placement = place_by_rank(loads, ranks, ["i0", "i1", "i2", "i3"])
    assert len(placement.instances_of("hot")) == 2  # 50 of 100 over 4 instances: two instances' worth
    assert placement.ranks["i0"] == (8, 8)
    assert placement.ranks["i3"] == (128, 128)


# The simulator's clock starts at 0; a real router's is monotonic time since boot (a day here).
@pytest.mark.parametrize("start", [0.0, 86_400.0])
def test_loraserve_routes_an_adapter_to_its_homes_and_rebalances_as_popularity_moves(start: float) -> None:
    ranks = {f"a{k}": 8 * 2 ** (k % 5) for k in range(8)}
    r = cluster("loraserve", 4, ranks=ranks, rank_cost=0.01, rebalance_s=10.0, window_s=5.0)
    policy = r.policy
    assert isinstance(policy, LoRAServe)
    now = start
    for step in range(400):  # every adapter, a0 the most popular
        adapter = "a0" if step % 2 else f"a{(step // 2) % 8}"
        send(r, adapter, now)
        now += 0.05
    assert policy.rebalances >= 1
    homes = {a: {n for n, _ in policy.placement.instances_of(a)} for a in ranks}
    assert len(homes["a0"]) >= 2  # half the load: more than one instance's share
    picks = {send(r, "a3", now) for _ in range(10)}
    assert picks <= homes["a3"]
    # popularity moves to a4 (rank 128): after the next rebalances it is spread and a0 is not
    for _ in range(600):
        send(r, "a4", now)
        now += 0.05
    assert len(policy.placement.instances_of("a4")) >= 3
    assert len(policy.placement.instances_of("a0")) <= 1


def test_loraserve_sends_a_newcomer_to_the_least_loaded_instance_then_moves_it_to_its_rank() -> None:
    # A newcomer's first load is a cold read; placed by rank, every large newcomer's read queued on
    # the instance of the large ranks (the simulator's slowest requests sat there).
    ranks = {"small": 8, "large": 128, "new-large": 128}
    r = cluster("loraserve", 2, ranks=ranks, window_s=5.0)
    policy = r.policy
    assert isinstance(policy, LoRAServe)
    policy.placement = place_by_rank({"small": 1.0, "large": 1.0}, ranks, ["i0", "i1"])
    policy.next_rebalance = 1e9
    assert policy.placement.instances_of("large") == (("i1", 1.0),)
    busy = r.request("busy", list(range(5000, 5200)), 8, adapter_id="large")
    route = r.route(busy, 0.0)
    assert route is not None and route.target.name == "i1"
    r.begin(route.target, busy, "mixed")  # i1 has work in flight, i0 none
    assert send(r, "new-large", 0.0) == "i0"
    assert {send(r, "new-large", 0.0) for _ in range(3)} == {"i0"}  # it stays there until a rebalance
    for _ in range(4):
        send(r, "small", 0.0)
    policy.next_rebalance = 0.0
    send(r, "small", 1.0)  # the next request rebalances: the two rank-128 adapters share a run
    assert {n for n, _ in policy.placement.instances_of("new-large")} == {"i1"}
    assert {n for n, _ in policy.placement.instances_of("small")} == {"i0"}


def test_loraserve_spills_a_burst_past_its_homes() -> None:
    a, b = FakeInstance("a", max_num_batched_tokens=64), FakeInstance("b", max_num_batched_tokens=64)
    r = Router([a, b], make_policy("loraserve", ranks={"x": 8}, spill_tokens=100.0), FINGERPRINT, BS)
    targets = []
    for k in range(6):  # never finished: the home's queue grows until the other instance is cheaper
        req = r.request(f"q{k}", list(range(k * 50, k * 50 + 40)), 8, adapter_id="x")
        route = r.route(req, 0.0)
        assert route is not None
        r.begin(route.target, req, "mixed")
        targets.append(route.target.name)
    assert len(set(targets)) == 2 and targets[0] == targets[1]


def test_affinity_sticks_to_a_holder_and_slora_ignores_adapters() -> None:
    r = cluster("affinity", 3)
    first = send(r, "x", 0.0)
    assert {send(r, "x", 0.0) for _ in range(5)} == {first}
    s = cluster("slora", 3)
    req = s.request("busy", list(range(5000, 5040)), 8, adapter_id="x")
    held = s.begin(s.route(req, 0.0).target, req, "mixed")  # type: ignore[union-attr]
    assert send(s, "x", 0.0) != held.view.name


def test_loraserve_sends_a_registered_adapter_to_its_registration_home_until_the_placement_knows_it() -> None:
    # i0 is least loaded and would take an unknown adapter; "x" was registered on i2
    r = cluster("loraserve", 3, ranks={"x": 64, "y": 64}, rebalance_s=100.0, registered={"x": (("i2", 1.0),)})
    assert [send(r, "x", 0.1 * k) for k in range(3)] == ["i2"] * 3
    assert send(r, "y", 0.5) == "i0"  # not registered: a newcomer, to the least loaded instance
