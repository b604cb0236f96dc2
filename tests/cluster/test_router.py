"""The router's core and its policies, over hand-made instances: which instance each policy
picks, and the router's accounting (outstanding requests, pending prompt tokens, cached blocks)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.cluster.policies import POLICIES, make_policy
from edgecloud.cluster.prefix_index import PrefixIndex
from edgecloud.cluster.router import NoInstanceAvailable, Router
from edgecloud.llm.outputs import EngineStats

FINGERPRINT = b"f" * 32
BS = 4


@dataclass
class FakeInstance:
    name: str
    role: str = "mixed"
    pool: str = "default"
    healthy: bool = True
    epoch: int = 0
    num_blocks: int = 100
    max_num_batched_tokens: int = 64
    counters: EngineStats = field(default_factory=lambda: EngineStats(0, 0, 100, 100, 0.0, 0, 0, 0, 0, 0))

    def stats(self) -> EngineStats:
        return self.counters


def router(policy: str, *instances: FakeInstance, **options: object) -> Router:
    return Router(list(instances), make_policy(policy, **options), FINGERPRINT, BS)


def test_round_robin_takes_turns_and_skips_an_instance_that_is_down() -> None:
    a, b, c = FakeInstance("a"), FakeInstance("b"), FakeInstance("c")
    r = router("round-robin", a, b, c)
    picks = [r.route(r.request(f"q{i}", [1, 2, 3], 4), 0.0).target.name for i in range(6)]  # type: ignore[union-attr]
    assert picks == ["a", "b", "c", "a", "b", "c"]
    b.healthy = False
    picks = [r.route(r.request(f"x{i}", [1, 2, 3], 4), 0.0).target.name for i in range(4)]  # type: ignore[union-attr]
    assert set(picks) == {"a", "c"}
    a.healthy = c.healthy = False
    with pytest.raises(NoInstanceAvailable, match="no mixed instance is up"):
        r.route(r.request("z", [1], 1), 0.0)


def test_least_outstanding_follows_the_routers_own_accounting() -> None:
    r = router("least-outstanding", FakeInstance("a"), FakeInstance("b"))
    first = r.request("1", list(range(10)), 4)
    t1 = r.begin(r.route(first, 0).target, first, "mixed")  # type: ignore[union-attr]
    second = r.request("2", list(range(10, 20)), 4)
    route = r.route(second, 0)
    assert route is not None and route.target.name != t1.view.name
    t2 = r.begin(route.target, second, "mixed")
    r.end(t1)
    third = r.request("3", [7], 1)
    assert r.route(third, 0).target is t1.view  # type: ignore[union-attr]
    r.end(t2)
    assert all(v.outstanding == 0 and v.pending_prefill_tokens == 0 and v.decoding == 0 for v in r.views)


def test_prefix_aware_sends_a_shared_prefix_where_it_is_cached_until_the_queue_there_costs_more() -> None:
    a, b = FakeInstance("a"), FakeInstance("b")
    r = router("prefix-aware", a, b)
    system = list(range(100, 140))  # 40 tokens: 10 blocks
    first = r.request("1", [*system, 1, 2], 4)
    t1 = r.begin(r.route(first, 0).target, first, "mixed")  # type: ignore[union-attr]
    r.prefilled(t1)
    home = t1.view
    # 42-token prompt, 40 cached at home: 2 tokens of work (+1 decoding request) against 42 elsewhere.
    second = r.request("2", [*system, 3, 4], 4)
    assert home.cached_tokens(second) == 40
    assert r.route(second, 0).target is home  # type: ignore[union-attr]
    # A long queue of unrelated prompt tokens at home outweighs the cache.
    long = r.request("3", list(range(1000, 1100)), 4)
    r.begin(home, long, "mixed")
    assert home.pending_prefill_tokens == 100
    assert r.route(second, 0).target is not home  # type: ignore[union-attr]


def test_a_restarted_instance_has_an_empty_cache() -> None:
    a = FakeInstance("a")
    r = router("prefix-aware", a)
    req = r.request("1", list(range(20)), 4)
    r.begin(r.views[0], req, "mixed")
    assert r.views[0].cached_blocks(req) == 5
    a.epoch += 1
    assert r.views[0].cached_blocks(req) == 0


def test_pd_prefills_on_a_prefill_instance_and_decodes_on_a_decode_instance() -> None:
    p, d0, d1 = FakeInstance("p", role="prefill"), FakeInstance("d0", role="decode"), FakeInstance("d1", role="decode")
    r = router("pd", p, d0, d1, decode="round-robin")
    routes = [r.route(r.request(str(i), [1, 2, 3], 4), 0) for i in range(2)]
    assert [(x.prefill.name, x.target.name) for x in routes if x and x.prefill] == [("p", "d0"), ("p", "d1")]
    p.healthy = False
    with pytest.raises(NoInstanceAvailable, match="no prefill instance is up"):
        r.route(r.request("x", [1], 1), 0)
    with pytest.raises(ValueError, match="needs a prefill instance"):
        router("pd", FakeInstance("m"), FakeInstance("d", role="decode"))
    with pytest.raises(ValueError, match="needs a mixed instance"):
        router("round-robin", FakeInstance("d", role="decode"))


def test_make_policy_names_what_is_wrong() -> None:
    assert {"round-robin", "least-outstanding", "prefix-aware", "pd"} <= set(POLICIES)
    with pytest.raises(ValueError, match="unknown routing policy 'fastest'; known: "):
        make_policy("fastest")
    with pytest.raises(ValueError, match="has no option 'weight'"):
        make_policy("round-robin", weight=2)
    with pytest.raises(ValueError, match="roles: 'both' is not one of"):
        make_policy("round-robin", roles=("both",))
    with pytest.raises(ValueError, match="unknown routing policy 'fastest'"):
        make_policy("pd", decode="fastest")


def test_the_prefix_index_evicts_least_recently_used_keys_beyond_capacity() -> None:
    index = PrefixIndex(3)
    index.insert([b"a", b"b", b"c"])
    index.insert([b"a"])  # touched: b is now the oldest
    index.insert([b"d"])
    assert b"b" not in index and len(index) == 3
    assert index.match([b"a", b"b", b"c"]) == 1  # a chain stops at its first missing block


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5), st.integers(1, 30)), min_size=1, max_size=40))
def test_the_accounting_returns_to_zero_whatever_the_order_of_events(events: list[tuple[int, int, int]]) -> None:
    r = router("least-outstanding", FakeInstance("a"), FakeInstance("b"))
    tickets = []
    for i, (kind, which, length) in enumerate(events):
        if kind == 0 or not tickets:
            req = r.request(str(i), list(range(length)), 4, service_tier="flex" if length % 2 else "default")
            tickets.append(r.begin(r.route(req, 0).target, req, "mixed"))  # type: ignore[union-attr]
        elif kind == 1:
            r.prefilled(tickets[which % len(tickets)])
        else:
            r.end(tickets.pop(which % len(tickets)))
        for v in r.views:
            assert v.outstanding >= 0 and v.pending_prefill_tokens >= 0 and 0 <= v.decoding <= v.outstanding
            tiers = (v.pending_prefill_tokens_in("default"), v.pending_prefill_tokens_in("flex"))
            assert min(tiers) >= 0 and sum(tiers) == v.pending_prefill_tokens
    for ticket in tickets:
        r.end(ticket)
    assert all(v.outstanding == v.pending_prefill_tokens == v.decoding == 0 for v in r.views)
    assert all(v.pending_prefill_tokens_in("default") == v.pending_prefill_tokens_in("flex") == 0 for v in r.views)


def test_pd_spreads_decodes_routed_while_their_prompts_are_prefilled() -> None:
    """pd picks the decode instance when it routes, before the prompt is prefilled elsewhere; the
    router counts the request there only once its decode stage begins. Requests routed during one
    prefill must still spread (they all went to the first decode instance: herding)."""
    p, d0, d1 = FakeInstance("p", role="prefill"), FakeInstance("d0", role="decode"), FakeInstance("d1", role="decode")
    r = router("pd", p, d0, d1)
    requests = [r.request(str(i), [1, 2, 3, i], 4) for i in range(4)]
    routes = [r.route(req, 0) for req in requests]
    prefills = [r.begin(route.prefill, req, "prefill") for route, req in zip(routes, requests, strict=True)]  # type: ignore[union-attr,arg-type]
    assert sorted(route.target.name for route in routes) == ["d0", "d0", "d1", "d1"]  # type: ignore[union-attr]
    # Decode stages begin: the router's count takes over from the policy's books, once.
    tickets = []
    for route, req, prefill in zip(routes, requests, prefills, strict=True):
        r.end(prefill)
        tickets.append(r.begin(route.target, req, "decode"))  # type: ignore[union-attr]
    decode = r.policy.decode_policy  # type: ignore[attr-defined]
    assert [decode.promised(v) for v in r.views] == [0, 0, 0] and [v.outstanding for v in r.views] == [0, 2, 2]
    # A request given up during its prefill releases the place it was promised.
    late = r.request("late", [9], 1)
    route = r.route(late, 0)
    assert route is not None and decode.promised(route.target) == 1
    r.withdraw(late)
    assert decode.promised(route.target) == 0
    for ticket in tickets:
        r.end(ticket)
