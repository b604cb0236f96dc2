"""OmniProxy's policies (``edgecloud.cluster.omniproxy``) over hand-made instances and in the
simulator: the order prompts are released in, where they go (cache match among instances with
room, ties to the sooner start), holding at the proxy and releasing on a state change, withdrawn
requests, the decode side's token-load books, and bad options."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgecloud.cluster.omniproxy import OmniDecode, OmniPrefill, OmniProxy, prefill_weight
from edgecloud.cluster.policies import make_policy
from edgecloud.cluster.router import Router, RouteRequest, Ticket
from edgecloud.llm import SamplingParams
from edgecloud.sim.instance import SimEngineConfig, SimInstance
from edgecloud.sim.profiles import load_hardware, load_model, perf_model
from edgecloud.sim.simulator import ClusterSimulator, SimRequest, TransferModel
from tests.cluster.conftest import thread_cluster
from tests.cluster.test_frontend import answers, one_instance
from tests.cluster.test_router import BS, FINGERPRINT, FakeInstance


def cluster(policy: str, *instances: FakeInstance, **options: object) -> Router:
    return Router(list(instances), make_policy(policy, **options), FINGERPRINT, BS)


def ask(r: Router, req: RouteRequest, now: float, stage: str = "mixed") -> Ticket | None:
    """Routes ``req`` and, when the policy lets it go, begins it where it went (as a runtime does)."""
    route = r.route(req, now)
    if route is None:
        return None
    return r.begin(route.target, req, stage)  # type: ignore[arg-type]


def test_the_weight_favours_short_prompts_then_long_waits() -> None:
    assert prefill_weight(100, 0.0, 1000, 1.0, 0.8) == pytest.approx(0.8 * 0.9)
    assert prefill_weight(1000, 1.0, 1000, 1.0, 0.8) == pytest.approx(0.2)
    # Equal lengths: the longer wait goes first; a much shorter prompt beats any wait.
    assert prefill_weight(500, 0.9, 1000, 1.0, 0.8) > prefill_weight(500, 0.1, 1000, 1.0, 0.8)
    assert prefill_weight(100, 0.0, 1000, 1.0, 0.8) > prefill_weight(1000, 1.0, 1000, 1.0, 0.8)


def test_held_prompts_are_released_shortest_first_as_room_opens() -> None:
    a = FakeInstance("a", max_num_batched_tokens=8)  # room while fewer than 16 prompt tokens are queued
    r = cluster("omni-prefill", a)
    busy = r.request("busy", list(range(100, 140)), 4)
    t_busy = ask(r, busy, 0.0)
    assert t_busy is not None  # an idle instance takes any prompt
    long_, short, medium = (r.request(n, list(range(k, k + size)), 4) for n, k, size in
                            (("long", 1000, 60), ("short", 2000, 20), ("medium", 3000, 30)))
    for i, req in enumerate((long_, short, medium)):
        assert ask(r, req, 0.01 * i) is None  # held: 40 tokens queued at a
    assert r.policy.waiting == 3  # type: ignore[attr-defined]
    order = []
    tickets = [t_busy]
    for step in range(3):
        r.prefilled(tickets[-1])
        now = 1.0 + step
        released = [t for req in (long_, short, medium) if req.request_id not in order
                    for t in [ask(r, req, now)] if t is not None]
        assert len(released) == 1  # one prompt at a time fits under the room left
        order.append(released[0].request.request_id)
        tickets.append(released[0])
    assert order == ["short", "medium", "long"]
    assert r.policy.waiting == 0  # type: ignore[attr-defined]


def test_equal_prompts_leave_in_arrival_order() -> None:
    a = FakeInstance("a", max_num_batched_tokens=4)
    r = cluster("omni-prefill", a)
    first = ask(r, r.request("first", list(range(50)), 2), 0.0)
    assert first is not None
    late, early = r.request("late", list(range(100, 120)), 2), r.request("early", list(range(200, 220)), 2)
    assert ask(r, early, 0.1) is None and ask(r, late, 0.5) is None
    r.prefilled(first)
    assert ask(r, late, 2.0) is None  # the early one waited longer: it goes first
    assert ask(r, early, 2.0) is not None


def test_a_prompt_goes_to_the_deepest_cache_match_among_instances_with_room() -> None:
    a, b = FakeInstance("a", max_num_batched_tokens=32), FakeInstance("b", max_num_batched_tokens=32)
    r = cluster("omni-prefill", a, b)  # room while fewer than 64 prompt tokens are queued
    system = list(range(300, 340))  # 10 blocks
    first = ask(r, r.request("1", [*system, 1], 2), 0.0)
    assert first is not None and first.view.name == "a"
    home, other = first.view, r.by_name["b"]
    # home has 41 tokens queued, other none; home still has room: the cache match wins.
    second = ask(r, r.request("2", [*system, 2], 2), 0.1)
    assert second is not None and second.view is home
    third = ask(r, r.request("3", [*system, *range(500, 525)], 2), 0.2)
    assert third is not None and third.view is home and home.pending_prefill_tokens == 41 + 1 + 25
    # home is over its room now: a fourth shared prompt goes to the other instance, uncached.
    fourth = ask(r, r.request("4", [*system, 4], 2), 0.3)
    assert fourth is not None and fourth.view is other
    # Unrelated prompts (no match anywhere) go where they start soonest.
    for t in (first, second, third):
        r.prefilled(t)
    fifth = ask(r, r.request("5", list(range(900, 910)), 2), 0.4)
    assert fifth is not None and fifth.view is home


def test_without_holding_every_prompt_is_sent_at_once_to_the_least_queued_when_all_are_full() -> None:
    a, b = FakeInstance("a", max_num_batched_tokens=4), FakeInstance("b", max_num_batched_tokens=4)
    r = cluster("omni-prefill", a, b, hold=0)
    tickets = [ask(r, r.request(str(i), list(range(i * 100, i * 100 + 30 + i)), 2), 0.0) for i in range(4)]
    assert all(t is not None for t in tickets)
    assert [t.view.name for t in tickets] == ["a", "b", "a", "b"]  # type: ignore[union-attr]


def test_a_withdrawn_request_gives_its_place_to_the_next() -> None:
    a = FakeInstance("a", max_num_batched_tokens=4)
    r = cluster("omni-prefill", a)
    first = ask(r, r.request("first", list(range(50)), 2), 0.0)
    short, long_ = r.request("short", list(range(100, 110)), 2), r.request("long", list(range(200, 240)), 2)
    assert ask(r, long_, 0.1) is None and ask(r, short, 0.1) is None
    r.prefilled(first)  # type: ignore[arg-type]
    assert ask(r, long_, 1.0) is None  # the plan gives the room to short...
    r.withdraw(short)  # ...whose client goes away before it asks again
    assert ask(r, long_, 1.0) is not None
    assert r.policy.waiting == 0  # type: ignore[attr-defined]


def test_decode_goes_to_the_least_token_load_counting_requests_not_yet_handed_over() -> None:
    p, d1, d2 = FakeInstance("p", role="prefill"), FakeInstance("d1", role="decode"), FakeInstance("d2", role="decode")
    r = cluster("omniproxy", p, d1, d2)
    policy: OmniProxy = r.policy  # type: ignore[assignment]
    decode: OmniDecode = policy.decode_policy  # type: ignore[assignment]
    big = r.request("big", list(range(40)), 200)
    route = r.route(big, 0.0)
    assert route is not None and route.prefill is r.by_name["p"]
    r.begin(route.prefill, big, "prefill")
    # Nothing has begun on the decode instances yet, but the policy's books already count "big".
    small = [r.request(f"s{i}", list(range(100 + 10 * i, 105 + 10 * i)), 5) for i in range(3)]
    targets = []
    for req in small:
        rt = r.route(req, 0.0)
        assert rt is not None and rt.prefill is not None
        r.begin(rt.prefill, req, "prefill")
        targets.append(rt.target.name)
    assert route.target.name not in targets  # 240 tokens of load there; the small ones go to the other
    assert decode.token_load(route.target) == 240
    # The big request's decode stage begins and ends: its load is gone.
    t = r.begin(route.target, big, "decode")
    r.prefilled(t)
    r.end(t)
    assert decode.token_load(route.target) == 0
    other = next(v for v in r.views if v.role == "decode" and v is not route.target)
    assert decode.token_load(other) == 3 * 10
    for req in small:  # withdrawn before their decode stage began (client gone during the prefill)
        r.withdraw(req)
    assert decode.token_load(other) == 0


def test_a_request_routed_again_is_not_counted_twice() -> None:
    r = cluster("omni-decode", FakeInstance("a"), FakeInstance("b"))
    decode: OmniDecode = r.policy  # type: ignore[assignment]
    req = r.request("x", list(range(10)), 10)
    first = r.route(req, 0.0)
    second = r.route(req, 0.1)  # its first instance failed before answering
    assert first is not None and second is not None
    assert sum(decode.token_load(v) for v in r.views) == 20


@pytest.mark.parametrize(("options", "field"), [
    ({"room_tokens": 0}, "room_tokens"), ({"max_running": 0}, "max_running"),
    ({"length_weight": 1.5}, "length_weight"), ({"hold": "yes"}, "hold"),
])
def test_bad_options_are_refused_naming_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make_policy("omni-prefill", **options)
    with pytest.raises(ValueError, match="max_running"):
        make_policy("omni-decode", max_running=-1)
    with pytest.raises(ValueError, match="no option 'room'"):
        make_policy("omniproxy", room=3)
    with pytest.raises(ValueError, match=field):
        make_policy("omniproxy", **options)


def test_in_the_simulator_short_prompts_overtake_a_queue_of_long_ones() -> None:
    """A burst on 1 prefill + 1 decode (Llama-3-8B on an H100, simulated): with pd every prompt
    queues in arrival order at the prefill instance; omniproxy holds them at the proxy and releases
    the short ones first, and every request still completes with the policy's books back at zero."""
    hardware, _ = load_hardware("h100")
    perf = perf_model(hardware, load_model("llama-3-8b"))
    config = SimEngineConfig(num_blocks=4000, max_model_len=8192, block_size=16, max_num_seqs=64,
                             max_num_batched_tokens=2048)
    longs = [SimRequest(0.0, [7 + i, *range(1000 * i, 1000 * i + 3999)], 8) for i in range(6)]
    shorts = [SimRequest(0.001, [9 + i, *range(50_000 + 100 * i, 50_000 + 100 * i + 99)], 8) for i in range(6)]
    ttft = {}
    for name in ("pd", "omniproxy"):
        instances = [SimInstance("p", perf, config, b"x", role="prefill"),
                     SimInstance("d", perf, config, b"x", role="decode")]
        policy = make_policy(name)
        sim = ClusterSimulator(instances, policy, transfer=TransferModel(1e11))
        result = sim.run([*longs, *shorts])
        assert all(r.error is None and r.output_tokens == 8 for r in result.records)
        ttft[name] = [r.ttft for r in result.records]
        if isinstance(policy, OmniProxy):
            assert policy.prefill_policy.waiting == 0  # type: ignore[attr-defined]
            assert policy.decode_policy.token_load(sim.router.by_name["d"]) == 0  # type: ignore[attr-defined]
    # pd: the short prompts wait behind all six long ones (0.57 s); omniproxy lets them in as soon
    # as the prefill instance has room (0.19-0.30 s), and the long ones are not later for it.
    assert max(ttft["omniproxy"][6:]) < 0.6 * min(ttft["pd"][6:])
    assert max(ttft["omniproxy"][:6]) <= 1.05 * max(ttft["pd"][:6])


def test_omni_prefill_alone_is_a_single_stage_policy() -> None:
    assert isinstance(make_policy("omni-prefill"), OmniPrefill)
    assert make_policy("omni-prefill", roles=("prefill",)).stages == (("prefill",),)
    assert make_policy("omniproxy").stages == (("prefill",), ("decode",))


def test_over_real_instances_held_requests_are_released_and_answer_as_one_instance(demo_dir: Path) -> None:
    """2 prefill + 1 decode engine instances (threads of this process), each prefill instance taking
    one prompt at a time (``room_tokens=1``): six concurrent requests, most held at the proxy, all
    answer as one engine does, and the policy's books end empty."""
    prompts = [list(range(10 + 7 * i, 10 + 7 * i + 5 + 4 * i)) for i in range(6)]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    want = one_instance(demo_dir, prompts, params)

    async def run() -> None:
        cluster = thread_cluster(demo_dir, ["prefill", "prefill", "decode"], "omniproxy", room_tokens=1)
        await cluster.start()
        try:
            assert await answers(cluster, prompts, params, "q") == want
            policy: OmniProxy = cluster.policy  # type: ignore[assignment]
            assert policy.prefill_policy.waiting == 0 and policy.prefill_policy.held >= 3  # type: ignore[attr-defined]
            assert cluster.router is not None
            decode = cluster.router.by_name["decode2"]
            assert policy.decode_policy.token_load(decode) == 0  # type: ignore[attr-defined]
            assert {h.prefill_instance for h in cluster.handovers} == {"prefill0", "prefill1"}
        finally:
            await cluster.shutdown()

    asyncio.run(run())
