"""Incremental stepping (``incremental=True``, ``edgecloud.sim.incremental``) decides exactly as the
step-by-step simulation: the same instance, cached tokens, preemptions and output tokens for every
request, its first-token and finish times equal to float rounding, and the same engine counters,
block tables and free blocks at the end; its pricing of a batch equals ``PerfModel.step_time``."""

from __future__ import annotations

import random

import pytest

from edgecloud.cluster.policies import make_policy
from edgecloud.llm.perf_model import HardwareProfile, ModelProfile, Parallelism, PerfModel, StepShape
from edgecloud.sim.incremental import AggregatePricer
from edgecloud.sim.instance import SimEngineConfig, SimInstance
from edgecloud.sim.simulator import ClusterSimulator, SimRequest, SimResult, TransferModel
from tests.sim.test_decode_run import HW, MODEL, PERF, workload


def run(mode: str, policy: str = "round-robin", *, num_blocks: int = 60, roles: tuple[str, ...] = ("mixed",) * 3,
        requests: list[SimRequest] | None = None, until_s: float | None = None, max_batched: int = 40,
        ) -> tuple[SimResult, list[SimInstance]]:
    config = SimEngineConfig(num_blocks=num_blocks, max_model_len=160, block_size=4, max_num_seqs=8,
                             max_num_batched_tokens=max_batched)
    instances = [SimInstance(f"{role}{i}", PERF, config, b"x", role) for i, role in enumerate(roles)]  # type: ignore[arg-type]
    sim = ClusterSimulator(instances, make_policy(policy), frontend_s=1e-3, delivery_s=2e-4,
                           transfer=TransferModel(1e8, 1e-4), record_token_times=False,
                           incremental=mode == "incremental")
    return sim.run(requests if requests is not None else workload(0), until_s=until_s), instances


def assert_same(**options: object) -> tuple[SimResult, SimResult]:
    slow, slow_instances = run("step", **options)  # type: ignore[arg-type]
    fast, fast_instances = run("incremental", **options)  # type: ignore[arg-type]
    assert all(i.lazy is not None for i in fast_instances)  # the path under test was taken
    for a, b in zip(slow.records, fast.records, strict=True):
        assert (a.instance, a.prefill_instance, a.output_tokens, a.cached_tokens, a.preemptions, a.error) == (
            b.instance, b.prefill_instance, b.output_tokens, b.cached_tokens, b.preemptions, b.error), a.index
        assert (a.first_token_s is None) == (b.first_token_s is None) and (a.finish_s is None) == (
            b.finish_s is None), a.index
        if a.first_token_s is not None:
            assert b.first_token_s == pytest.approx(a.first_token_s, rel=1e-12, abs=1e-12), a.index
        if a.finish_s is not None:
            assert b.finish_s == pytest.approx(a.finish_s, rel=1e-12, abs=1e-12), a.index
    for a, b in zip(slow_instances, fast_instances, strict=True):
        sa, sb = a.stats(), b.stats()
        assert sa == sb
        assert a.num_steps == b.num_steps
        assert b.busy_s == pytest.approx(a.busy_s, rel=1e-12)
        assert [(r.request_id, r.num_computed_tokens, r.block_tables) for r in a.scheduler.running] == [
            (r.request_id, r.num_computed_tokens, r.block_tables) for r in b.scheduler.running]
        assert list(a.kv.pools[0].free) == list(b.kv.pools[0].free)  # same blocks free, in the same order
        b.scheduler.check_invariants()
    assert fast.simulated_s == pytest.approx(slow.simulated_s, rel=1e-12)
    return slow, fast


@pytest.mark.parametrize("policy", ["round-robin", "prefix-aware", "test-least-kv"])
def test_incremental_steps_give_the_step_by_step_times(policy: str) -> None:
    slow, _ = assert_same(policy=policy)
    assert sum(r.output_tokens for r in slow.records) > 2000
    assert sum(r.cached_tokens for r in slow.records) > 0  # prefix hits happened


def test_incremental_steps_agree_with_chunked_prefill_and_preemption() -> None:
    # a small token budget chunks the prompts (a long prompt starts decoding after shorter ones
    # that came later: blocks are still taken in running order); few blocks make the scheduler
    # preempt (the fallback)
    slow, _ = assert_same(num_blocks=400, max_batched=12)
    assert sum(r.preemptions for r in slow.records) == 0
    slow, _ = assert_same(num_blocks=24, max_batched=12)
    assert sum(r.preemptions for r in slow.records) > 0


def test_incremental_steps_take_blocks_in_running_order() -> None:
    # with priorities a request that starts decoding later may run before one already decoding:
    # where both cross into a new block at one step, the scheduler gives the first its block first
    rng = random.Random(7)
    at, requests = 0.0, []
    for _ in range(80):
        at += rng.expovariate(1 / 0.004)
        requests.append(SimRequest(at, [rng.randrange(2, 400) for _ in range(rng.randint(1, 30))],
                                   rng.randint(20, 100), priority=rng.randint(-2, 2)))
    assert_same(requests=requests, num_blocks=400, roles=("mixed",))


def test_incremental_steps_agree_on_colliding_keys_and_long_decodes() -> None:
    # equal prompts decode equal tokens: their blocks' keys collide, so who keys first matters
    rng = random.Random(5)
    prompts = [[rng.randrange(2, 400) for _ in range(rng.randint(3, 9))] for _ in range(2)]
    at, requests = 0.0, []
    for _ in range(50):
        at += rng.expovariate(1 / 0.01)
        requests.append(SimRequest(at, list(rng.choice(prompts)), rng.randint(20, 150)))
    for num_blocks in (30, 80):
        assert_same(requests=requests, num_blocks=num_blocks, roles=("mixed",))


def test_incremental_steps_agree_under_pd_and_a_time_limit() -> None:
    assert_same(policy="pd", roles=("prefill", "decode", "decode"))
    slow, _ = assert_same(until_s=0.5)
    assert any(r.finish_s is None and r.output_tokens > 0 for r in slow.records)


def test_a_flex_request_turns_incremental_stepping_off_and_keeps_the_times() -> None:
    requests = workload(1)
    requests[20] = SimRequest(requests[20].arrival_s, requests[20].prompt_token_ids, 30, service_tier="flex")
    slow, _ = run("step", requests=requests)
    fast, instances = run("incremental", requests=requests)
    assert any(i.lazy is None for i in instances)
    times = [t for r in slow.records for t in (r.first_token_s, r.finish_s)]
    assert [t for r in fast.records for t in (r.first_token_s, r.finish_s)] == pytest.approx(times, rel=1e-12)


def test_incremental_mode_wants_no_token_times_nor_decode_runs() -> None:
    instances = [SimInstance("a", PERF, SimEngineConfig(60, 160, 4, 8, 40), b"x")]
    with pytest.raises(ValueError, match="record_token_times=False"):
        ClusterSimulator(instances, make_policy("round-robin"), incremental=True)


@pytest.mark.parametrize("devices", [1, 2])
def test_the_aggregate_price_is_the_cost_models(devices: int) -> None:
    hw = HardwareProfile("t", peak_flops=3e14, memory_bandwidth=2e12, step_overhead_s=1e-3, layer_overhead_s=1e-5,
                         seq_overhead_s=2e-5, network_bandwidth=1e11, network_latency_s=1e-6)
    model = ModelProfile(num_layers=4, hidden_size=256, intermediate_size=512, num_heads=8, num_kv_heads=4,
                         head_dim=32, vocab_size=1000, weight_bytes_per_param=2, kv_bytes_per_element=2)
    perf = PerfModel(hw, model, Parallelism(devices))
    pricer = AggregatePricer(perf)
    assert pricer.ok
    rng = random.Random(devices)
    for _ in range(50):
        contexts = [rng.randint(1, 5000) for _ in range(rng.randint(0, 40))]
        others = [StepShape(k, c + k, rng.random() < 0.5) for k, c in
                  ((rng.randint(1, 300), rng.randint(0, 2000)) for _ in range(rng.randint(0, 3)))]
        if not contexts and not others:
            continue
        want = perf.step_time(others + [StepShape(1, c, True) for c in contexts])
        assert pricer.step_time(others, len(contexts), sum(contexts)) == pytest.approx(want, rel=1e-12)
    # a decode whose attention turns compute-bound cannot be summed from its context: not ok
    assert not AggregatePricer(PerfModel(HardwareProfile("slow", peak_flops=1e6, memory_bandwidth=1e15),
                                         model)).ok
    assert AggregatePricer(PERF).ok and HW.peak_flops > 0 and MODEL.num_layers == 2


def test_key_hints_give_the_keys_the_kv_manager_computes() -> None:
    # the simulator hands the router's prompt keys to the KV manager (Request.key_hint): the same
    # keys must come out, and a hint from another root (another adapter) must be ignored
    from edgecloud.llm.kv_cache import KVCacheManager, LayerGroup
    from edgecloud.llm.kv_cache.keys import chain_keys, root_key
    from edgecloud.llm.request_state import Request
    from edgecloud.llm.sampling_params import SamplingParams

    rng = random.Random(3)
    prompt = [rng.randrange(2, 400) for _ in range(37)]
    params = SamplingParams(temperature=0.0, max_tokens=9, ignore_eos=True)

    def keys_after_prefill(hint_root: bytes | None, adapter: str | None = None) -> list[bytes]:
        kv = KVCacheManager([LayerGroup("full", (0,))], 40, 4, b"fp")
        hint = None if hint_root is None else (hint_root, chain_keys(hint_root, prompt, 4))
        req = Request("r", list(prompt), params, 0.0, 0, adapter_id=adapter, all_token_ids=list(prompt),
                      block_tables=[[]], key_hint=hint)
        req.num_computed_tokens += kv.admit(req, 100)  # type: ignore[operator]
        kv.register_computed(req)
        return req.block_keys

    plain = keys_after_prefill(None)
    assert len(plain) == 9
    assert keys_after_prefill(root_key(b"fp")) == plain
    assert keys_after_prefill(root_key(b"fp", "lora-a")) == plain  # another root's hint: hashed anew
    assert keys_after_prefill(root_key(b"fp"), "lora-a") == keys_after_prefill(None, "lora-a") != plain
