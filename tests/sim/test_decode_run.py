"""The simulator's fast path (``decode_runs=True``) gives every request the same times and tokens as
the step-by-step simulation, with far fewer events: runs of decode steps are cut wherever a
request arrives, a policy reads an instance, KV is handed over, blocks run out or a request ends."""

from __future__ import annotations

import random

import pytest

from edgecloud.cluster.policies import RoutingPolicy, make_policy, register_policy
from edgecloud.cluster.router import InstanceView, RouteRequest
from edgecloud.llm.perf_model import HardwareProfile, ModelProfile, PerfModel
from edgecloud.sim.instance import SimEngineConfig, SimInstance
from edgecloud.sim.simulator import ClusterSimulator, SimRequest, SimResult, TransferModel

HW = HardwareProfile("test", peak_flops=1e12, memory_bandwidth=1e11, step_overhead_s=1e-3, seq_overhead_s=1e-4)
MODEL = ModelProfile(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16,
                     vocab_size=512, weight_bytes_per_param=4, kv_bytes_per_element=4)
PERF = PerfModel(HW, MODEL)


@register_policy("test-least-kv")
class LeastKV(RoutingPolicy):
    """Reads every instance's engine counters at each decision (as OOCO's policies do)."""

    def choose(self, req: RouteRequest, candidates: list[InstanceView], now: float) -> InstanceView | None:
        return min(candidates, key=lambda v: (v.stats().kv_usage, v.stats().num_running, v.name))


def workload(seed: int, n: int = 60, same_prompts: bool = False) -> list[SimRequest]:
    rng = random.Random(seed)
    if same_prompts:  # equal prompts decode the same tokens: their blocks' keys collide
        prompts = [[rng.randrange(2, 400) for _ in range(rng.randint(4, 12))] for _ in range(2)]
        at, requests = 0.0, []
        for _ in range(n):
            at += rng.expovariate(1 / 0.01)
            requests.append(SimRequest(at, list(rng.choice(prompts)), rng.randint(8, 40)))
        return requests
    shared = [[rng.randrange(2, 400) for _ in range(rng.randint(8, 24))] for _ in range(3)]
    at, requests = 0.0, []
    for _ in range(n):
        at += rng.expovariate(1 / 0.02)
        prompt = (rng.choice(shared) if rng.random() < 0.6 else []) + [rng.randrange(2, 400)
                                                                        for _ in range(rng.randint(1, 30))]
        requests.append(SimRequest(at, prompt, rng.randint(1, 90)))
    return requests


def simulate(policy: str, decode_runs: bool, *, num_blocks: int = 60, roles: tuple[str, ...] = ("mixed",) * 3,
             until_s: float | None = None, seed: int = 0, same_prompts: bool = False,
             ) -> tuple[SimResult, list[SimInstance]]:
    config = SimEngineConfig(num_blocks=num_blocks, max_model_len=160, block_size=4, max_num_seqs=8,
                             max_num_batched_tokens=40)
    instances = [SimInstance(f"{role}{i}", PERF, config, b"x", role) for i, role in enumerate(roles)]  # type: ignore[arg-type]
    sim = ClusterSimulator(instances, make_policy(policy), frontend_s=1e-3, delivery_s=2e-4,
                           transfer=TransferModel(1e8, 1e-4), decode_runs=decode_runs)
    return sim.run(workload(seed, same_prompts=same_prompts), until_s=until_s), instances


def assert_same(policy: str, **options: object) -> tuple[SimResult, SimResult]:
    slow, slow_instances = simulate(policy, False, **options)  # type: ignore[arg-type]
    fast, fast_instances = simulate(policy, True, **options)  # type: ignore[arg-type]
    for a, b in zip(slow.records, fast.records, strict=True):
        assert (a.instance, a.prefill_instance, a.output_tokens, a.cached_tokens, a.preemptions, a.error) == (
            b.instance, b.prefill_instance, b.output_tokens, b.cached_tokens, b.preemptions, b.error), a.index
        assert b.first_token_s == pytest.approx(a.first_token_s, abs=1e-9), a.index
        assert b.finish_s == pytest.approx(a.finish_s, abs=1e-9), a.index
        assert b.token_times == pytest.approx(a.token_times, abs=1e-9), a.index
    for a, b in zip(slow_instances, fast_instances, strict=True):
        assert (a.num_steps, a.scheduler.num_preemptions, a.kv.prefix_hits, a.scheduler.generation_tokens_total) == (
            b.num_steps, b.scheduler.num_preemptions, b.kv.prefix_hits, b.scheduler.generation_tokens_total)
        assert b.busy_s == pytest.approx(a.busy_s, rel=1e-12)
    assert fast.simulated_s == pytest.approx(slow.simulated_s, abs=1e-9)
    assert [h.blocks for h in fast.handovers] == [h.blocks for h in slow.handovers]
    return slow, fast


@pytest.mark.parametrize("policy", ["round-robin", "prefix-aware", "test-least-kv"])
def test_runs_of_decode_steps_give_the_step_by_step_times(policy: str) -> None:
    slow, fast = assert_same(policy)
    assert sum(r.output_tokens for r in fast.records) > 2000
    assert fast.events < slow.events / 2  # the runs did skip most step events


def test_runs_stop_where_blocks_run_out_and_requests_are_preempted() -> None:
    slow, _ = assert_same("round-robin", num_blocks=24)
    assert sum(r.preemptions for r in slow.records) > 0


def test_runs_key_full_blocks_before_taking_new_ones_as_the_steps_do() -> None:
    # A block a request fills may carry the key of a free cached block that another request's new
    # block evicts at the same step boundary: keyed first, it stays unkeyed (the key was taken).
    for num_blocks, seed in ((20, 3), (24, 2), (30, 1)):
        assert_same("round-robin", num_blocks=num_blocks, roles=("mixed",), seed=seed, same_prompts=True)


def test_runs_agree_under_pd_handovers_and_a_time_limit() -> None:
    slow, _ = assert_same("pd", roles=("prefill", "decode", "decode"))
    assert len(slow.handovers) == 60
    slow, _ = assert_same("round-robin", until_s=0.5)
    assert any(r.finish_s is None and r.output_tokens > 0 for r in slow.records)


@register_policy("test-hold-briefly")
class HoldBriefly(RoutingPolicy):
    """Holds each request 5 ms after it arrives unless every instance is idle: released at the first
    step end after that, on any instance (so every step end matters while a request is held)."""

    def choose(self, req: RouteRequest, candidates: list[InstanceView], now: float) -> InstanceView | None:
        if now < req.arrival_time + 5e-3 and any(v.outstanding for v in candidates):
            return None
        return min(candidates, key=lambda v: (v.outstanding, v.name))


def test_runs_agree_when_a_policy_holds_requests() -> None:
    slow, _ = assert_same("test-hold-briefly")
    assert all(r.finish_s is not None for r in slow.records)
    assert sum(r.first_token_s - r.arrival_s > 5e-3 for r in slow.records) > 30  # type: ignore[operator]


def test_a_streamed_workload_replays_as_a_listed_one() -> None:
    def run(stream: bool) -> SimResult:
        instances = [SimInstance(f"i{i}", PERF, SimEngineConfig(60, 160, 4, 8, 40), b"x") for i in range(3)]
        requests = workload(2)
        requests[5:8] = [SimRequest(requests[5].arrival_s, r.prompt_token_ids, r.output_len) for r in requests[5:8]]
        sim = ClusterSimulator(instances, make_policy("prefix-aware"), decode_runs=True)
        return sim.run(iter(requests) if stream else requests)

    listed, streamed = run(False), run(True)
    assert [(r.first_token_s, r.finish_s, r.instance, r.output_tokens) for r in streamed.records] == [
        (r.first_token_s, r.finish_s, r.instance, r.output_tokens) for r in listed.records]
    instances = [SimInstance("a", PERF, SimEngineConfig(60, 160, 4, 8, 40), b"x")]
    with pytest.raises(ValueError, match=r"arrival order: arrival_s 0\.5 after 1\.0"):
        ClusterSimulator(instances, make_policy("round-robin")).run(iter([SimRequest(1.0, [1, 2], 2),
                                                                          SimRequest(0.5, [3, 4], 2)]))


class QuarterSecondSteps(PerfModel):
    def step_time(self, batch: object, moe_imbalance: float = 1.0, dispatch_imbalance: float = 1.0) -> float:
        return 0.25


@register_policy("test-first-idle")
class FirstIdle(RoutingPolicy):
    """The first instance with nothing outstanding, else the last one."""

    def choose(self, req: RouteRequest, candidates: list[InstanceView], now: float) -> InstanceView | None:
        return next((v for v in candidates if v.outstanding == 0), candidates[-1])


def test_a_streamed_arrival_goes_before_other_events_of_its_instant() -> None:
    # the third request arrives exactly when the first one's only step ends: queued first, as every
    # listed arrival is, it is routed while the first still counts as outstanding on "a"
    perf = QuarterSecondSteps(HW, MODEL)
    requests = [SimRequest(0.0, [1, 2, 3], 1), SimRequest(0.125, [4, 5, 6], 1), SimRequest(0.25, [7, 8, 9], 1)]
    for workload_ in (requests, iter(requests)):
        instances = [SimInstance(n, perf, SimEngineConfig(60, 160, 4, 8, 40), b"x") for n in ("a", "b")]
        result = ClusterSimulator(instances, make_policy("test-first-idle")).run(workload_)
        assert [r.instance for r in result.records] == ["a", "b", "b"]
