"""Scheduling: priorities, the token budget, service tiers (online preempts offline), and a recorded
engine run reproduced exactly by the real scheduler and KV manager under a fake executor."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from edgecloud.llm import SamplingParams
from edgecloud.llm.config import EngineConfig
from edgecloud.llm.engine import LLMEngine
from edgecloud.llm.engine_core import EngineCore
from edgecloud.llm.model_source import resolve_model
from edgecloud.llm.request import EngineCoreRequest
from edgecloud.llm.scheduler import SampledTokens, SchedulerOutput

PARAMS = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)


def engine(model_dir: Path, **options: object) -> LLMEngine:
    options = {"kv_cache_memory_mb": 1, **options}
    return LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", **options))  # type: ignore[arg-type]


def record(e: LLMEngine) -> list[list[tuple[str, int]]]:
    """Every step's scheduled (request id, tokens), as the engine ran them."""
    seen: list[list[tuple[str, int]]] = []
    e.core.on_step = lambda plan: seen.append(plan.summary())
    return seen


def run_order(e: LLMEngine) -> list[str]:
    seen = record(e)
    while e.has_unfinished():
        e.step()
    started: list[str] = []
    for step in seen:
        started += [rid for rid, _ in step if rid not in started]
    return started


def test_smaller_priority_runs_first_and_fcfs_within_a_priority(llama_dir: Path) -> None:
    e = engine(llama_dir, max_num_seqs=1)
    for request_id, priority in [("late-low", 2), ("urgent-1", 0), ("mid", 1), ("urgent-2", 0)]:
        e.add_request(request_id, [5, 6, 7], PARAMS, priority=priority)
    assert run_order(e) == ["urgent-1", "urgent-2", "mid", "late-low"]


def test_default_tier_runs_before_flex_whatever_the_priority(llama_dir: Path) -> None:
    e = engine(llama_dir, max_num_seqs=1)
    e.add_request("flex-urgent", [5, 6, 7], PARAMS, priority=-5, service_tier="flex")
    e.add_request("online", [5, 6, 8], PARAMS, priority=3)
    assert run_order(e) == ["online", "flex-urgent"]


def test_a_step_never_exceeds_the_token_budget_and_decodes_go_first(llama_dir: Path) -> None:
    e = engine(llama_dir, max_num_batched_tokens=10, max_num_seqs=8)
    seen = record(e)
    e.add_request("a", list(range(2, 9)), PARAMS)  # 7 prompt tokens
    e.step()
    e.add_request("b", list(range(10, 40)), PARAMS)  # 30 prompt tokens: chunked
    while e.has_unfinished():
        e.step()
    assert all(sum(n for _, n in step) <= 10 for step in seen)
    assert seen[0] == [("a", 7)]
    assert seen[1] == [("a", 1), ("b", 9)]  # the running decode first, then a prefill chunk
    assert sum(n for step in seen for rid, n in step if rid == "b") == 30 + 2  # prompt + 2 decodes


def test_an_online_request_preempts_flex_decodes_at_once_and_flex_output_is_unchanged(llama_dir: Path) -> None:
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    flex_prompts = [[2 + i, 3 + i, 4 + i, 5 + i, 6 + i] for i in range(4)]
    alone = engine(llama_dir, max_num_seqs=4)
    for i, prompt in enumerate(flex_prompts):
        alone.add_request(f"flex-{i}", prompt, greedy, service_tier="flex")
    want = {}
    while alone.has_unfinished():
        want.update({o.request_id: o.outputs[0].token_ids for o in alone.step() if o.finished})

    e = engine(llama_dir, max_num_seqs=4)
    seen = record(e)
    for i, prompt in enumerate(flex_prompts):
        e.add_request(f"flex-{i}", prompt, greedy, service_tier="flex")
    while e.stats().num_running < 4 or seen[-1] != [(f"flex-{i}", 1) for i in range(4)]:
        e.step()  # the flex requests fill every seat and decode
    first = len(seen)
    e.add_request("online", list(range(40, 60)), SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
    got = {}
    while e.has_unfinished():
        got.update({o.request_id: o.outputs[0].token_ids for o in e.step() if o.finished})
    # The very next step prefills the online prompt, alone: a seat was taken from a flex request.
    assert seen[first] == [("online", 20)]
    assert e.stats().num_preemptions == 1
    assert got.pop("online") and got == want
    # The preempted request resumed from its kept blocks: it recomputed only the token it was on.
    resumed = [step for step in seen[first + 1 :] for rid, n in step if rid.startswith("flex") and n > 1]
    assert resumed == []


def test_flex_work_in_a_step_is_capped_and_a_flex_prefill_never_stalls_flex_decodes(llama_dir: Path) -> None:
    # A step carrying flex work costs about one decode step of the batch (the cap defaults to
    # max_num_seqs tokens), so an online request arriving during it waits at most that long.
    e = engine(llama_dir, max_num_seqs=4, max_num_batched_tokens=64)
    seen = record(e)
    long = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    for i in range(3):
        e.add_request(f"flex-{i}", [2 + i, 3, 4], long, service_tier="flex")
    while e.has_unfinished() and len(seen) < 3:
        e.step()
    e.add_request("flex-long", list(range(2, 40)), long, service_tier="flex")  # 38 prompt tokens
    while e.has_unfinished():
        e.step()
    assert all(sum(n for _, n in step) <= 4 for step in seen)
    prefilled, chunks = 0, []
    for step in map(dict, seen):
        if "flex-long" in step and prefilled < 38:
            prefilled += step["flex-long"]
            chunks.append(step)
    assert prefilled == 38 and len(chunks) > 1  # chunked under the cap
    short_running = [step for step in chunks if any(f"flex-{i}" in step for i in range(3))]
    assert short_running  # the prompt came while the short requests decoded ...
    for step in short_running:  # ... and each of them kept its decode token beside the chunk
        assert all(step.get(f"flex-{i}", 1) == 1 for i in range(3))
        assert sum(step.values()) == 4

    e = engine(llama_dir, max_num_seqs=4, flex_max_batched_tokens=64)  # an offline-only engine
    seen = record(e)
    e.add_request("flex-long", list(range(2, 40)), long, service_tier="flex")
    e.step()
    assert seen[0] == [("flex-long", 38)]


def test_flex_is_preempted_when_an_online_request_needs_its_kv(llama_dir: Path) -> None:
    # 2 layers * 2 kv heads * 16 dims * 4 tokens * 2 * 4 bytes = 2 KiB a block: 12 blocks.
    e = engine(llama_dir, block_size=4, kv_cache_memory_mb=24 / 1024, max_num_seqs=8, flex_max_batched_tokens=64)
    long = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    e.add_request("flex", list(range(2, 30)), long, service_tier="flex")  # 28 tokens: 7-8 blocks
    e.step()
    e.add_request("online", list(range(40, 60)), SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
    seen = record(e)
    e.step()
    assert seen[0] == [("online", 20)]
    while e.has_unfinished():
        e.step()
    assert e.kv.num_free_blocks == e.kv.num_blocks


# -- a recorded run, replayed by the scheduler alone ------------------------------------------------


@dataclass
class ReplayExecutor:
    """Returns, step by step, the tokens a recorded run sampled; records what it is asked to run."""

    tokens: list[dict[str, int]]
    batches: list[list[tuple[str, int]]] = field(default_factory=list)

    def execute(self, plan: SchedulerOutput) -> SampledTokens:
        self.batches.append(plan.summary())
        return SampledTokens(token_ids=dict(self.tokens[len(self.batches) - 1]))


@dataclass
class VirtualClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_scheduler_and_kv_manager_reproduce_a_recorded_run_exactly(llama_dir: Path) -> None:
    options = {"block_size": 4, "kv_cache_memory_mb": 40 / 1024, "max_num_seqs": 5, "max_num_batched_tokens": 24}
    rng = random.Random(7)
    shared = [rng.randrange(2, 400) for _ in range(9)]
    arrivals = []  # (step, request id, prompt, params, tier)
    for i in range(14):
        prompt = (shared if i % 3 == 0 else []) + [rng.randrange(2, 400) for _ in range(rng.randint(2, 30))]
        params = SamplingParams(temperature=0.8, seed=i, max_tokens=rng.randint(1, 14), n=1 + (i % 5 == 0))
        arrivals.append((rng.randint(0, 12), f"r{i}", prompt, params, "flex" if i % 4 == 1 else "default"))

    real = engine(llama_dir, **options)
    batches = record(real)
    tokens: list[dict[str, int]] = []
    step = 0
    while step < 13 or real.core.has_unfinished():
        for at, rid, prompt, params, tier in arrivals:
            if at == step:
                real.add_request(rid, prompt, params, service_tier=tier)
        outputs = real.core.step()
        tokens.append({o.request_id: o.new_token_ids[0] for o in outputs if o.new_token_ids})
        step += 1
    assert real.stats().num_preemptions > 0, "the recorded run should exercise preemption"

    clock = VirtualClock()
    replay = ReplayExecutor(tokens)
    config = EngineConfig(model=str(llama_dir), dtype="float32", **options)  # type: ignore[arg-type]
    core = EngineCore(config, resolve_model(str(llama_dir)), clock=clock, executor=replay)
    for step in range(len(tokens)):
        for at, rid, prompt, params, tier in arrivals:
            if at == step:
                for i in range(params.n):
                    core.add_request(EngineCoreRequest(
                        request_id=rid if params.n == 1 else f"{rid}#{i}", prompt_token_ids=prompt, params=params,
                        arrival_time=clock.now, service_tier=tier, sample_index=i,
                        wait_for=None if params.n == 1 or i == 0 else f"{rid}#0",
                    ))
        core.step()
        clock.now += 0.01
    assert [b for b in replay.batches if b] == batches
    assert not core.has_unfinished()
