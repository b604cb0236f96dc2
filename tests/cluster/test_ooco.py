"""OOCO's pool policies (issue #19) on the simulator, which drives the same policy objects as the
real router: where online and offline requests go under ``ooco``, ``separate`` and ``priority``,
OOCO's admission limits (the linear saturation batch on the relaxed pool, the TPOT budget on the
strict pool), and the roofline model's answers."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace

import pytest

from edgecloud.cluster.ooco import OOCO, FlexStepBudget, Roofline
from edgecloud.cluster.policies import make_policy
from edgecloud.llm.perf_model import StepShape
from edgecloud.llm.scheduler import SchedulerOutput
from edgecloud.sim.ooco_bench import SimOOCOSettings, pool_policy, pooled_instances
from edgecloud.sim.simulator import Backlog, ClusterSimulator, SimRequest


def small_cluster() -> tuple[list, object, SimOOCOSettings]:
    settings = SimOOCOSettings(instances=4, strict=2, max_num_seqs=64)
    instances, link, _ = pooled_instances(settings)
    return instances, link, settings


def traffic(num_online: int = 12, num_offline: int = 60) -> tuple[list[SimRequest], list[SimRequest]]:
    online = [SimRequest(0.05 * i, list(range(1, 200 + 10 * i)), 20) for i in range(num_online)]
    offline = [SimRequest(0.0, [7] * (300 + i), 30, service_tier="flex") for i in range(num_offline)]
    return online, offline


def run(policy_name: str, **options: object) -> tuple[list, list, object]:
    instances, link, settings = small_cluster()
    if options:
        policy = make_policy(policy_name, perf=instances[0].perf, **options)
    else:  # as the benchmark sets it up: per-pool offline step rules, the strict pool's step budget
        policy, _ = pool_policy(replace(settings, tpot_slo_ms=50.0), policy_name, instances)
    online, offline = traffic()
    result = ClusterSimulator(instances, policy, transfer=link, record_token_times=False).run(
        online, backlog=Backlog(offline, 40))
    pools = {i.name: i.pool for i in instances}
    on = [(pools[r.instance], pools.get(r.prefill_instance or "")) for r in result.records[:len(online)]]
    off = result.records[len(online):]
    assert all(r.finish_s is not None and r.error is None for r in result.records)
    return on, off, policy


def test_separate_keeps_the_tiers_apart() -> None:
    on, off, _ = run("separate")
    assert {pool for pool, _ in on} == {"strict"}
    assert {r.instance for r in off} <= {"mixed2", "mixed3"}  # the relaxed pool


def test_priority_mixes_both_tiers_everywhere() -> None:
    _on, off, _ = run("priority")
    assert Counter(r.instance for r in off).keys() == {"mixed0", "mixed1", "mixed2", "mixed3"}


def test_ooco_pd_prefills_online_on_relaxed_decodes_on_strict_and_pulls_offline() -> None:
    on, off, policy = run("ooco-pd", tpot_slo_ms=50.0)
    assert set(on) == {("strict", "relaxed")}
    strict = [r for r in off if r.instance in ("mixed0", "mixed1")]
    assert strict and all(r.prefill_instance in ("mixed2", "mixed3") for r in strict)  # prefilled on relaxed
    assert policy.pulled == len(strict) and policy.pulled + policy.admitted == len(off)


def test_ooco_prefills_pulled_offline_work_on_the_strict_instance() -> None:
    on, off, policy = run("ooco")
    assert set(on) == {("strict", "relaxed")}
    strict = [r for r in off if r.instance in ("mixed0", "mixed1")]
    assert strict and all(r.prefill_instance is None for r in strict)
    assert policy.pulled == len(strict) and policy.pulled + policy.admitted == len(off)
    # One offline prompt at a time waiting on a strict instance: the rest go to the relaxed pool.
    _on, off, policy = run("ooco", tpot_slo_ms=50.0, strict_queue_tokens=1)
    strict = [r for r in off if r.instance in ("mixed0", "mixed1")]
    relaxed = [r for r in off if r.instance in ("mixed2", "mixed3")]
    assert strict and relaxed and policy.pulled == len(strict) and policy.admitted == len(relaxed)


def test_pd_priority_disaggregates_both_tiers() -> None:
    on, off, _ = run("pd-priority")
    assert set(on) == {("strict", "relaxed")}
    pools = {"mixed0": "strict", "mixed1": "strict", "mixed2": "relaxed", "mixed3": "relaxed"}
    assert {(pools[r.instance], pools[r.prefill_instance]) for r in off} == {("strict", "relaxed")}


def test_flex_step_budget_keeps_strict_steps_within_the_tpot_share() -> None:
    """Every step of a strict instance that carries offline work, priced by the same model, stays
    within the budget's limit; offline prefill chunks still run there."""
    instances, link, settings = small_cluster()
    policy, _ = pool_policy(replace(settings, tpot_slo_ms=30.0), "ooco", instances)
    limit = policy.slack * policy.tpot_slo_s
    steps: list[tuple[float, bool, int]] = []
    for instance in instances[:2]:
        plan_step = instance.start_step

        def start_step(now: float, instance=instance, plan_step=plan_step) -> float | None:
            duration = plan_step(now)
            plan = instance._plan
            if duration is not None and plan is not None:
                flex = [s for s in plan.scheduled if s.request.service_tier == "flex"]
                online_only = instance.perf.step_time([
                    StepShape(s.num_new_tokens, s.request.num_computed_tokens + s.num_new_tokens)
                    for s in plan.scheduled if s.request.service_tier != "flex"])
                steps.append((duration, bool(flex) and online_only <= limit,
                              max((s.num_new_tokens for s in flex), default=0)))
            return duration

        instance.start_step = start_step  # type: ignore[method-assign]
    online, offline = traffic()
    ClusterSimulator(instances, policy, transfer=link, record_token_times=False).run(
        online, backlog=Backlog(offline, 40))
    with_flex = [(d, chunk) for d, judged, chunk in steps if judged]
    assert with_flex and all(d <= limit * 1.001 for d, _ in with_flex)
    assert max(chunk for _, chunk in with_flex) > 1  # prompt chunks, not only decodes


def test_flex_step_budget_is_off_by_default_and_gives_an_idle_engine_work() -> None:
    instances, _, _ = small_cluster()
    scheduler = instances[0].scheduler
    assert scheduler.flex_step_budget is None
    budget = FlexStepBudget(instances[0].perf, 1e-9)
    assert budget(scheduler, SchedulerOutput()) == 1  # nothing else to run: at least one token
    with pytest.raises(ValueError, match="limit_s"):
        FlexStepBudget(instances[0].perf, 0.0)


def test_ooco_admission_limits_hold() -> None:
    # A TPOT budget no decode step meets: nothing goes to the strict pool; one offline request
    # at a time per relaxed instance.
    _on, off, policy = run("ooco", tpot_slo_ms=0.001, max_offline_batch=1)
    assert policy.pulled == 0 and {r.instance for r in off} <= {"mixed2", "mixed3"}
    for name in ("mixed2", "mixed3"):
        # Routed only once the one before it finished (it may have waited in the router before).
        spans = sorted((r.first_token_s, r.finish_s) for r in off if r.instance == name)
        assert all(later[0] > earlier[1] for earlier, later in itertools.pairwise(spans))


def test_ooco_option_errors_name_the_field() -> None:
    instances, _, _ = small_cluster()
    with pytest.raises(ValueError, match="hardware"):
        make_policy("ooco")
    with pytest.raises(ValueError, match="slack"):
        make_policy("ooco", perf=instances[0].perf, slack=1.5)
    with pytest.raises(ValueError, match="no such profile"):
        make_policy("ooco", hardware="/nonexistent.json", model="/nonexistent")
    with pytest.raises(ValueError, match="pool 'relaxed'"):
        ClusterSimulator(instances[:2], OOCO(perf=instances[0].perf))


def test_roofline_answers() -> None:
    instances, _, _ = small_cluster()
    roofline = Roofline(instances[0].perf)
    bs = roofline.linear_saturation_bs
    assert roofline.gemm_intensity(bs) >= roofline.ridge_point > roofline.gemm_intensity(bs - 1)
    limit = roofline.decode_step_s(32, 1000) * 1.01
    longest = roofline.preferred_length(31, 31 * 1000, limit, 10**6)
    assert 0 < longest < 10**6
    assert roofline.decode_step_s(32, (31 * 1000 + longest) / 32) <= limit
    assert roofline.decode_step_s(32, (31 * 1000 + longest + 1) / 32) > limit
    assert roofline.preferred_length(31, 31 * 1000, 1e-6, 10**6) == 0
    step = instances[0].perf.step_time([StepShape(1, 1008)] * 8)
    assert roofline.decode_step_s(8, 1000) == pytest.approx(step)


def test_a_run_stops_at_until_with_the_tokens_it_had() -> None:
    instances, link, _ = small_cluster()
    online, offline = traffic()
    result = ClusterSimulator(instances, make_policy("separate"), transfer=link, record_token_times=False).run(
        online, until_s=0.3, backlog=Backlog(offline, 40))
    assert result.simulated_s == 0.3
    unfinished = [r for r in result.records if r.finish_s is None]
    assert unfinished and any(0 < r.output_tokens < 20 for r in unfinished)
    assert all(r.finish_s <= 0.3 for r in result.records if r.finish_s is not None)


def test_budget_variant_sets_the_step_budget_on_every_instance() -> None:
    instances, _, settings = small_cluster()
    policy, _ = pool_policy(settings, "priority+budget", instances)
    assert policy.name == "priority"
    assert all(isinstance(i.scheduler.flex_step_budget, FlexStepBudget) for i in instances)
    instances, _, settings = small_cluster()
    policy, _ = pool_policy(settings, "ooco", instances)
    assert [i.scheduler.flex_step_budget is not None for i in instances] == [True, True, False, False]
    # ooco overflows bursts to the strict pool, whose steps then stay within the TPOT budget
    step = Roofline(instances[0].perf).prefill_chunk_within(0.9 * settings.tpot_slo_ms / 1000, 8192)
    assert policy.overflow_tokens is not None and 0 < step < 8192
    assert [i.scheduler.max_num_batched_tokens for i in instances] == [step, step, 8192, 8192]
    instances, _, settings = small_cluster()
    policy, _ = pool_policy(replace(settings, overflow=False), "ooco", instances)
    assert policy.overflow_tokens is None and {i.scheduler.max_num_batched_tokens for i in instances} == {8192}
    with pytest.raises(ValueError, match="NAME\\+budget"):
        pool_policy(settings, "priority+fast", instances)


def test_the_scheduler_hook_caps_flex_tokens_per_step() -> None:
    from edgecloud.llm.request_state import Request
    from edgecloud.llm.sampling_params import SamplingParams

    instances, _, _ = small_cluster()
    instance = instances[0]
    scheduler = instance.scheduler
    scheduler.flex_max_batched_tokens = 8192
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    for i, tier in enumerate(["default", "flex", "flex"]):
        prompt = [i + 1] * (40 if tier == "default" else 300)
        instance.add(Request(request_id=str(i), prompt_token_ids=prompt, params=params, arrival_time=0.0, order=0,
                             service_tier=tier, all_token_ids=list(prompt), block_tables=[[]]))
    asked: list[int] = []

    def budget(sched: object, plan: SchedulerOutput) -> int:
        asked.append(sum(s.num_new_tokens for s in plan.scheduled))
        return 0 if len(asked) == 1 else 100

    scheduler.flex_step_budget = budget
    tiers = []
    for _ in range(4):
        instance.start_step(0.0)
        plan = instance._plan
        tiers.append(sum(s.num_new_tokens for s in plan.scheduled if s.request.service_tier == "flex"))
        instance.end_step()
    # Step 1 prefills the online prompt (no flex work, the hook not even asked); then the online
    # decode plus at most 0, then 100 flex tokens.
    assert tiers == [0, 0, 100, 100] and asked == [1, 1, 1]
    scheduler.check_invariants()


@pytest.mark.parametrize("name", ["ooco", "ooco-pd", "pd-priority"])
def test_online_prompts_go_where_the_fewest_online_tokens_wait(name: str) -> None:
    """An engine runs online work first, so a relaxed instance's offline queue is not ahead of an
    online prompt: placing online prefills by every pending token sent them all, for seconds, to
    whichever relaxed instance had the shortest offline queue (session 8's profile: 32 to 656 of
    1,953 online prefills per relaxed instance at load 1.0x)."""
    from edgecloud.cluster.router import Router

    instances, _, _ = small_cluster()
    options = {} if name == "pd-priority" else {"perf": instances[0].perf, "tpot_slo_ms": 50.0}
    router = Router(instances, make_policy(name, **options), b"edgecloud-sim", 16)
    a, b = router.by_name["mixed2"], router.by_name["mixed3"]  # the relaxed pool
    offline = router.begin(a, router.request("off", list(range(1, 6001)), 8, service_tier="flex"), "mixed")
    online = router.begin(b, router.request("on", list(range(1, 501)), 8), "prefill")
    assert (a.pending_prefill_tokens, a.pending_prefill_tokens_in("default"), a.pending_prefill_tokens_in("flex")) \
        == (6000, 0, 6000)
    assert (b.pending_prefill_tokens, b.pending_prefill_tokens_in("default")) == (500, 500)
    route = router.route(router.request("new", list(range(7, 300)), 8), 0.0)
    assert route is not None and route.prefill is a  # no online prompt waits there
    if name == "pd-priority":  # an offline prompt waits behind everything: the other way round
        route = router.route(router.request("new-off", list(range(7, 300)), 8, service_tier="flex"), 0.0)
        assert route is not None and route.prefill is b
    router.prefilled(online)
    router.end(offline)
    assert a.pending_prefill_tokens_in("flex") == b.pending_prefill_tokens_in("default") == 0


def test_a_burst_of_online_prompts_overflows_to_the_strict_pool() -> None:
    """With ``ttft_slo_ms`` an online request goes whole to a strict instance once more online
    prompt tokens would wait on the best relaxed instance than it prefills in half the TTFT SLO,
    and only if fewer wait there; without it, never."""
    from edgecloud.cluster.router import Router

    instances, _, _ = small_cluster()
    perf = instances[0].perf
    for ttft in (None, 20.0):
        policy = make_policy("ooco", perf=perf, tpot_slo_ms=50.0, ttft_slo_ms=ttft)
        router = Router(instances, policy, b"edgecloud-sim", 16)
        limit = policy.overflow_tokens
        assert (limit is None) == (ttft is None)
        if limit is not None:
            assert limit == Roofline(perf).prefill_tokens_within(0.01) and 100 < limit < 8192
        small = router.route(router.request("a", list(range(1, 101)), 8), 0.0)
        assert small is not None and small.prefill is not None and small.prefill.pool == "relaxed"
        for i, name in enumerate(("mixed2", "mixed3")):  # both relaxed instances: an online queue
            router.begin(router.by_name[name], router.request(f"q{i}", list(range(1, 3001)), 8), "prefill")
        route = router.route(router.request("b", list(range(1, 101)), 8), 0.0)
        assert route is not None
        if ttft is None:
            assert route.prefill is not None and route.prefill.pool == "relaxed"
            continue
        assert route.prefill is None and route.target.pool == "strict" and policy.overflowed == 1
        for i, name in enumerate(("mixed0", "mixed1")):  # the strict pool's queues longer still
            router.begin(router.by_name[name], router.request(f"s{i}", list(range(1, 5001)), 8), "mixed")
        route = router.route(router.request("c", list(range(1, 101)), 8), 0.0)
        assert route is not None and route.prefill is not None and route.prefill.pool == "relaxed"
    with pytest.raises(ValueError, match="ttft_slo_ms"):
        make_policy("ooco", perf=perf, ttft_slo_ms=0.0)


def test_an_online_arrival_drops_a_flex_step_between_layers_in_the_simulator() -> None:
    """With ``abandon_flex_steps`` an online request reaching an instance during a step of offline
    work only waits for the layer in flight, not the step (the real core's ``interrupt``); the
    dropped step advances nothing, its prompt tokens are computed again and counted once, and the
    offline request still ends with every token. Off (the default), the online request waits for
    the whole step."""
    from edgecloud.sim.instance import SimEngineConfig, SimInstance

    first: dict[bool, float] = {}
    for abandon in (False, True):
        instances, _, _ = small_cluster()
        perf = instances[0].perf
        instance = SimInstance("one", perf, SimEngineConfig(num_blocks=4096, max_model_len=8192),
                               b"edgecloud-sim", pool="relaxed")
        instance.scheduler.flex_max_batched_tokens = 8192
        step_s = perf.step_time([StepShape(8000, 8000)])
        layer_s = step_s / perf.model.num_layers
        arrival = 0.3 * step_s
        work = [SimRequest(0.0, [3] * 8000, 4, service_tier="flex"), SimRequest(arrival, list(range(1, 101)), 4)]
        result = ClusterSimulator([instance], make_policy("round-robin"), record_token_times=False,
                                  abandon_flex_steps=abandon).run(work)
        offline, online = result.records
        assert offline.output_tokens == online.output_tokens == 4 and offline.error is None
        assert instance.scheduler.prompt_tokens_total == 8100
        assert instance.num_abandoned_steps == (1 if abandon else 0)
        first[abandon] = online.first_token_s
        own = perf.step_time([StepShape(100, 100)])
        if abandon:
            dropped_at = -(-arrival // layer_s) * layer_s
            assert online.first_token_s == pytest.approx(dropped_at + own)
            assert online.first_token_s - arrival <= layer_s + own
            assert offline.first_token_s > step_s + own  # its prefill ran again after the online one
        else:
            assert online.first_token_s == pytest.approx(step_s + own)
    assert first[True] < first[False]
