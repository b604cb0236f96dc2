"""The simulator: the engine's own scheduler decides exactly as in a real core, steps last what the
cost model says on a virtual clock, the router's policies place requests as in the real cluster,
and P/D hands blocks over by key, skipping those the decode instance has."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edgecloud.cluster.policies import RoutingPolicy, make_policy, register_policy
from edgecloud.cluster.router import InstanceView, RouteRequest
from edgecloud.llm import SamplingParams
from edgecloud.llm.config import EngineConfig
from edgecloud.llm.engine_core import EngineCore
from edgecloud.llm.model_source import resolve_model
from edgecloud.llm.perf_model import HardwareProfile, PerfModel, StepShape
from edgecloud.llm.request import EngineCoreRequest
from edgecloud.llm.request_state import Request
from edgecloud.sim.instance import SimEngineConfig, SimInstance
from edgecloud.sim.profiles import local_twin
from edgecloud.sim.simulator import ClusterSimulator, SimRequest, TransferModel

HW = HardwareProfile("test", peak_flops=1e12, memory_bandwidth=1e11, step_overhead_s=1e-3, seq_overhead_s=1e-4)


def twin(llama_dir: Path, **options: object) -> tuple[EngineConfig, PerfModel, SimEngineConfig]:
    config = EngineConfig(model=str(llama_dir), dtype="float32", kv_cache_memory_mb=40 / 1024, block_size=4,
                          max_num_seqs=5, max_num_batched_tokens=24, **options)  # type: ignore[arg-type]
    perf, sim_config = local_twin(config, HW)
    return config, perf, sim_config


def test_a_simulated_instance_schedules_every_step_as_the_real_engine_core(llama_dir: Path) -> None:
    config, perf, sim_config = twin(llama_dir)
    rng = random.Random(3)
    shared = [rng.randrange(2, 400) for _ in range(9)]
    workload = [((shared if i % 3 == 0 else []) + [rng.randrange(2, 400) for _ in range(rng.randint(2, 30))],
                 rng.randint(1, 12)) for i in range(12)]
    real = EngineCore(config, resolve_model(str(llama_dir)))
    assert real.kv.num_blocks == sim_config.num_blocks and real.max_model_len == sim_config.max_model_len
    real_steps: list[list[tuple[str, int]]] = []
    real.on_step = lambda plan: real_steps.append(plan.summary())
    sim = SimInstance("i", perf, sim_config, real.kv.fingerprint)
    sim_steps: list[list[tuple[str, int]]] = []
    for i, (prompt, out) in enumerate(workload):
        params = SamplingParams(temperature=0.0, max_tokens=out, ignore_eos=True)
        real.add_request(EngineCoreRequest(request_id=str(i), prompt_token_ids=prompt, params=params,
                                           arrival_time=0.0))
        sim.add(Request(str(i), list(prompt), params, 0.0, 0, all_token_ids=list(prompt), block_tables=[[]]))
    while real.has_unfinished():
        real.step()
    now = 0.0
    while (duration := sim.start_step(now)) is not None:
        sim_steps.append(sim._plan.summary())  # type: ignore[union-attr]
        sim.end_step()
        now += duration
    assert sim_steps == real_steps  # preemptions included: the pool is small
    assert sim.scheduler.num_preemptions == real.scheduler.num_preemptions > 0
    assert sim.kv.prefix_hits == real.kv.prefix_hits > 0


def one_instance(perf: PerfModel, sim_config: SimEngineConfig, **options: object) -> ClusterSimulator:
    return ClusterSimulator([SimInstance("a", perf, sim_config, b"x")], make_policy("round-robin"),
                            **options)  # type: ignore[arg-type]


def test_latencies_are_the_modelled_steps_plus_the_serving_path(llama_dir: Path) -> None:
    _, perf, sim_config = twin(llama_dir)
    sim = one_instance(perf, sim_config, frontend_s=0.002, delivery_s=0.001)
    prompt = list(range(2, 12))  # 10 tokens
    result = sim.run([SimRequest(0.5, prompt, 4)])
    record = result.records[0]
    prefill = perf.step_time([StepShape(10, 10)])
    decodes = [perf.step_time([StepShape(1, n)]) for n in (11, 12, 13)]
    assert record.ttft == pytest.approx(0.002 + prefill + 0.001)
    assert record.tpot == pytest.approx(sum(decodes) / 3)
    assert record.e2e == pytest.approx(0.002 + prefill + sum(decodes) + 0.001)
    assert record.token_times is not None and len(record.token_times) == 4


def test_a_request_arriving_mid_step_waits_for_the_next_step(llama_dir: Path) -> None:
    _, perf, sim_config = twin(llama_dir)
    first = list(range(2, 22))
    prefill = perf.step_time([StepShape(20, 20)])
    result = one_instance(perf, sim_config).run([SimRequest(0.0, first, 3), SimRequest(prefill / 2, [7, 8, 9], 1)])
    late = result.records[1]
    # It joins the step after the first prefill: a decode of the first request and its own prefill.
    expected = prefill + perf.step_time([StepShape(1, 21), StepShape(3, 3)])
    assert late.first_token_s == pytest.approx(expected)


def test_requests_reaching_an_idle_instance_together_share_a_step(llama_dir: Path) -> None:
    _, perf, sim_config = twin(llama_dir)
    result = one_instance(perf, sim_config).run([SimRequest(0.0, [5, 6, 7], 1), SimRequest(0.0, [8, 9], 1)])
    assert result.records[0].first_token_s == result.records[1].first_token_s == pytest.approx(
        perf.step_time([StepShape(3, 3), StepShape(2, 2)]))


def test_prefix_aware_routing_finds_more_cached_tokens_than_round_robin(llama_dir: Path) -> None:
    _, perf, _ = twin(llama_dir)
    config = SimEngineConfig(num_blocks=400, max_model_len=1000, block_size=4, max_num_seqs=8,
                             max_num_batched_tokens=64)
    rng = random.Random(0)
    systems = [[rng.randrange(2, 400) for _ in range(40)] for _ in range(4)]
    workload = [SimRequest(0.05 * i, [*rng.choice(systems), *(rng.randrange(2, 400) for _ in range(6))], 2)
                for i in range(40)]
    rates = {}
    for policy in ("round-robin", "prefix-aware"):
        instances = [SimInstance(n, perf, config, b"x") for n in ("a", "b", "c")]
        ClusterSimulator(instances, make_policy(policy)).run(workload)
        rates[policy] = sum(i.kv.prefix_hits for i in instances) / sum(i.kv.prefix_queries for i in instances)
    assert rates["prefix-aware"] > rates["round-robin"]
    assert rates["prefix-aware"] > 0.6


def test_pd_hands_over_only_the_blocks_the_decode_instance_lacks(llama_dir: Path) -> None:
    _, perf, _ = twin(llama_dir)
    config = SimEngineConfig(num_blocks=200, max_model_len=1000, block_size=4, max_num_seqs=8,
                             max_num_batched_tokens=64)
    instances = [SimInstance("p", perf, config, b"x", role="prefill"),
                 SimInstance("d", perf, config, b"x", role="decode")]
    link = TransferModel(bandwidth=1e6, latency_s=1e-3)
    sim = ClusterSimulator(instances, make_policy("pd"), transfer=link)
    prompt = list(range(2, 42))  # 40 tokens: 10 blocks
    result = sim.run([SimRequest(0.0, prompt, 3), SimRequest(1.0, [*prompt[:36], 99, 98, 97, 96], 3)])
    first, second = result.handovers
    block_bytes = perf.model.kv_bytes_per_token * 4
    assert (first.blocks, first.skipped) == (10, 0)
    assert first.seconds == pytest.approx(1e-3 + 10 * block_bytes / 1e6)
    assert (second.blocks, second.skipped) == (10, 9)  # the first 9 blocks are the same chain
    assert all(r.output_tokens == 3 and r.error is None for r in result.records)
    assert result.records[0].prefill_instance == "p" and result.records[0].instance == "d"
    # The decode instance computed only what the prefix cache did not hold: of each 40-token prompt
    # (10 full blocks) it reuses 9, since the engine computes at least the last prompt token.
    d = instances[1]
    assert d.kv.prefix_hits == 36 + 36
    assert instances[0].kv.pins == {}  # the prefill instance unpinned its exported blocks


@register_policy("test-one-at-a-time")
class OneAtATime(RoutingPolicy):
    """Holds every request until an instance has nothing outstanding."""

    def choose(self, req: RouteRequest, candidates: list[InstanceView], now: float) -> InstanceView | None:
        idle = [v for v in candidates if v.outstanding == 0]
        return idle[0] if idle else None


def test_a_policy_may_hold_requests_until_an_instance_frees_up(llama_dir: Path) -> None:
    _, perf, sim_config = twin(llama_dir)
    sim = ClusterSimulator([SimInstance("a", perf, sim_config, b"x")], make_policy("test-one-at-a-time"))
    result = sim.run([SimRequest(0.0, [5, 6, 7], 3) for _ in range(3)])
    first, second, third = sorted(result.records, key=lambda r: r.first_token_s or 0)
    assert first.finish_s is not None and second.first_token_s is not None
    assert second.first_token_s > first.finish_s and third.first_token_s > second.finish_s  # type: ignore[operator]
