"""Scheduling order and budgets: priorities first, FCFS within a priority, token budget per step."""

from __future__ import annotations

from pathlib import Path

from edgecloud.llm import SamplingParams
from edgecloud.llm.config import EngineConfig
from edgecloud.llm.engine import LLMEngine

PARAMS = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)


def engine(model_dir: Path, **options: object) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", kv_cache_memory_mb=1, **options))  # type: ignore[arg-type]


def run_order(e: LLMEngine) -> list[str]:
    started: list[str] = []
    while e.has_unfinished():
        e.step()
        for request in e.requests.values():
            if request.metrics.first_scheduled_time is not None and request.request_id not in started:
                started.append(request.request_id)
    return started


def test_smaller_priority_runs_first_and_fcfs_within_a_priority(llama_dir: Path) -> None:
    e = engine(llama_dir, max_num_seqs=1)
    for request_id, priority in [("late-low", 2), ("urgent-1", 0), ("mid", 1), ("urgent-2", 0)]:
        e.add_request(request_id, [5, 6, 7], PARAMS, priority=priority)
    assert run_order(e) == ["urgent-1", "urgent-2", "mid", "late-low"]


def test_a_step_never_exceeds_the_token_budget_and_decodes_go_first(llama_dir: Path) -> None:
    e = engine(llama_dir, max_num_batched_tokens=10, max_num_seqs=8)
    seen: list[list[tuple[str, int]]] = []
    e.on_step = lambda plan: seen.append([(s.seq.request.request_id, s.num_new_tokens) for s in plan.scheduled])
    e.add_request("a", list(range(2, 9)), PARAMS)  # 7 prompt tokens
    e.step()
    e.add_request("b", list(range(10, 40)), PARAMS)  # 30 prompt tokens: chunked
    while e.has_unfinished():
        e.step()
    assert all(sum(n for _, n in step) <= 10 for step in seen)
    assert seen[0] == [("a", 7)]
    assert seen[1] == [("a", 1), ("b", 9)]  # the running decode first, then a prefill chunk
    assert sum(n for step in seen for rid, n in step if rid == "b") == 30 + 2  # prompt + 2 decodes
