"""Bad requests fail precisely and leave the engine healthy; every block comes back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecloud.llm import LLM, AsyncEngine, EngineConfig, InvalidRequestError, SamplingParams
from edgecloud.llm.engine import LLMEngine


@pytest.fixture(scope="module")
def llm(llama_dir: Path) -> LLM:
    return LLM(model=str(llama_dir), dtype="float32", block_size=4, kv_cache_memory_mb=1, max_model_len=64)


@pytest.mark.parametrize(
    ("prompt", "param"),
    [("", "prompt"), ([], "prompt"), ([5] * 64, "prompt"), ([5, 100_000], "prompt"), ([-1], "prompt")],
)
def test_bad_prompts_are_rejected_and_engine_keeps_working(llm: LLM, prompt: object, param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        llm.generate([prompt], SamplingParams(max_tokens=4))  # type: ignore[list-item]
    assert info.value.param == param
    out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 4
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks
    assert not llm.engine.has_unfinished()


def test_generation_stops_at_the_context_length(llm: LLM) -> None:
    out = llm.generate([[5] * 60], SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True))[0]
    assert out.outputs[0].finish_reason == "length"
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == 64


def test_bad_engine_options_name_the_option(llama_dir: Path) -> None:
    for options, param, says in [
        ({"dtype": "float8"}, "dtype", "dtype must be one of auto, float32, bfloat16, float16, got 'float8'"),
        ({"block_size": 3}, "block_size", "block_size must be a power of two in [1, 256], got 3"),
        ({"max_model_len": 10**6}, "max_model_len", "max_model_len must be <= 1024 for this model, got 1000000"),
        ({"attention_backend": "nope"}, "attention_backend",
         "attention_backend must be one of ['paged', 'prefix'], got 'nope'"),
        ({"kv_cache_memory_mb": 0.001}, "kv_cache_memory_mb", "kv_cache_memory_mb=0.001 holds 0 blocks; need >= 2"),
        ({"quantization": "int3"}, "quantization", "quantization must be one of none, int8, int4, got 'int3'"),
    ]:
        with pytest.raises(InvalidRequestError) as info:
            LLM(model=str(llama_dir), **options)
        assert info.value.param == param
        assert str(info.value) == says


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(1, 30), st.integers(1, 12), st.integers(1, 3), st.integers(0, 2)),
            st.tuples(st.just("abort"), st.integers(0, 40)),
            st.tuples(st.just("step"), st.integers(1, 4)),
        ),
        max_size=30,
    )
)
def test_blocks_balance_under_random_add_abort_step(llama_dir: Path, ops: list[tuple]) -> None:
    engine = _small_engine(llama_dir)
    added = 0
    for op in ops:
        if op[0] == "add":
            _, length, max_tokens, n, priority = op
            engine.add_request(
                f"r{added}", [2 + (added + i) % 50 for i in range(length)],
                SamplingParams(n=n, temperature=0.7, seed=added, max_tokens=max_tokens, ignore_eos=True),
                priority=priority,
            )
            added += 1
        elif op[0] == "abort":
            engine.abort(f"r{op[1]}")
        else:
            for _ in range(op[1]):
                engine.step()
        engine.scheduler.check_invariants()
    while engine.has_unfinished():
        engine.step()
    engine.scheduler.check_invariants()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


_ENGINES: dict[Path, LLMEngine] = {}


def _small_engine(model_dir: Path) -> LLMEngine:
    # A fresh engine per example would reload the model; reuse it, resetting only its bookkeeping.
    if model_dir not in _ENGINES:
        _ENGINES[model_dir] = LLMEngine(EngineConfig(
            model=str(model_dir), dtype="float32", block_size=4, kv_cache_memory_mb=40 / 1024, max_num_seqs=4,
            max_num_batched_tokens=16,
        ))
    engine = _ENGINES[model_dir]
    for request_id in list(engine.processor.requests):
        engine.abort(request_id)
    return engine


def test_async_engine_streams_and_abort_frees_blocks(llama_dir: Path) -> None:
    async def scenario() -> None:
        engine = AsyncEngine(EngineConfig(model=str(llama_dir), dtype="float32", block_size=4, kv_cache_memory_mb=1))
        await engine.start()
        params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
        seen = [len(out.outputs[0].token_ids) async for out in engine.generate([5, 6, 7], params, "a")]
        assert seen == [1, 2, 3, 4, 5, 6]

        long = SamplingParams(temperature=0.0, max_tokens=10_000 // 16, ignore_eos=True)
        stream = engine.generate([5, 6, 7], long, "b")
        first = await stream.__anext__()
        assert not first.finished
        await stream.aclose()  # the client went away
        for _ in range(100):
            stats = engine.stats()
            if stats.num_running == 0 and stats.num_free_blocks == stats.num_total_blocks:
                break
            await asyncio.sleep(0.02)
        assert stats.num_free_blocks == stats.num_total_blocks

        with pytest.raises(InvalidRequestError, match="prompt must not be empty"):
            async for _ in engine.generate("", params, "c"):
                pass
        outs = [o async for o in engine.generate([9, 9], params, "d")]
        assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "length"
        await engine.shutdown()

    asyncio.run(scenario())
