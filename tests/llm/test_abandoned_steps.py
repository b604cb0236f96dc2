"""Preemption between layers (docs/engine-core.md): a step of flex work only is abandoned when the
core's ``interrupt`` says online work waits; nothing advances, and every output stays what an
uninterrupted run gives (greedy)."""

from __future__ import annotations

from pathlib import Path

from edgecloud.llm.config import EngineConfig
from edgecloud.llm.engine import LLMEngine
from edgecloud.llm.outputs import OutputKind
from edgecloud.llm.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
FLEX_PROMPT = [(7 * i) % 250 + 3 for i in range(90)]
ONLINE_PROMPT = [5, 9, 11, 13, 17, 19, 23, 29]


def engine_for(model: Path) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model), max_num_seqs=4, max_num_batched_tokens=32, kv_cache_memory_mb=4,
                                  seed=0))


def run(engine: LLMEngine) -> dict[str, list[int]]:
    done: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
    return done


def test_a_flex_step_is_dropped_whole_and_its_outputs_do_not_change(llama_dir: Path) -> None:
    reference = engine_for(llama_dir)
    reference.add_request("flex", FLEX_PROMPT, GREEDY, service_tier="flex", output_kind=OutputKind.FINAL_ONLY)
    reference.add_request("online", ONLINE_PROMPT, GREEDY, output_kind=OutputKind.FINAL_ONLY)
    want = run(reference)

    engine = engine_for(llama_dir)
    core = engine.core
    engine.add_request("flex", FLEX_PROMPT, GREEDY, service_tier="flex", output_kind=OutputKind.FINAL_ONLY)
    engine.step()  # a flex prefill chunk of 4 tokens (flex_max_batched_tokens = max_num_seqs)
    flex = core.scheduler.requests["flex"]
    computed, prompt_total = flex.num_computed_tokens, core.scheduler.prompt_tokens_total
    asked: list[int] = []
    core.interrupt = lambda: asked.append(1) is None  # "online work waits": yes, at the first layer
    assert engine.step() == []
    assert asked == [1] and core.num_abandoned_steps == 1
    assert flex.num_computed_tokens == computed and core.scheduler.prompt_tokens_total == prompt_total
    core.scheduler.check_invariants()
    core.interrupt = None
    engine.add_request("online", ONLINE_PROMPT, GREEDY, output_kind=OutputKind.FINAL_ONLY)
    got = run(engine)
    assert got == want
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_steps_with_online_work_are_never_abandoned(llama_dir: Path) -> None:
    engine = engine_for(llama_dir)
    engine.core.interrupt = lambda: True  # online work "waits" all the time
    engine.add_request("online", ONLINE_PROMPT, GREEDY, output_kind=OutputKind.FINAL_ONLY)
    engine.add_request("flex", FLEX_PROMPT[:8], GREEDY, service_tier="flex", output_kind=OutputKind.FINAL_ONLY)
    online: list[int] | None = None
    for _ in range(100):  # bounded: steps abandoned by mistake would otherwise loop for ever
        if online is not None:
            break
        for out in engine.step():
            if out.request_id == "online" and out.finished:
                online = out.outputs[0].token_ids
    # the steps that held the online request (flex work beside it) ran whole
    assert online is not None and len(online) == 6 and engine.core.num_abandoned_steps == 0
    assert engine.core.scheduler.requests["flex"].num_computed_tokens > 0
    engine.step()  # now only flex work is left: that step is dropped
    assert engine.core.num_abandoned_steps == 1
