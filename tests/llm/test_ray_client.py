"""The engine core as a Ray actor on a local, in-process Ray cluster: the same answers as the core
in a thread, and a killed actor fails in-flight requests and is replaced."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud.llm import AsyncEngine, EngineConfig, EngineDeadError, OutputKind, SamplingParams
from tests.conftest import local_ray_cluster

ray = pytest.importorskip("ray", reason="ray is a dev dependency; without it the Ray backend cannot be tested")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    with local_ray_cluster(2):  # tests/conftest.py: without Ray's memory monitor, put back after
        yield


def answers(model: Path, core: str, prompts: list[list[int]]) -> list[list[int]]:
    async def run() -> list[list[int]]:
        engine = AsyncEngine(EngineConfig(model=str(model), dtype="float32", kv_cache_memory_mb=1), core=core)
        await engine.start()
        params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)

        async def one(i: int, prompt: list[int]) -> list[int]:
            outs = [o async for o in engine.generate(prompt, params, f"r{i}", output_kind=OutputKind.FINAL_ONLY)]
            return outs[-1].outputs[0].token_ids

        result = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
        assert await engine.control("lookup", token_ids=prompts[0]) >= 0
        await engine.shutdown()
        return list(result)

    return asyncio.run(run())


def test_the_ray_actor_core_answers_like_the_thread_core(llama_dir: Path, local_ray: None) -> None:
    prompts = [[5, 6, 7], [9, 8, 7, 6, 5, 4, 3, 2, 11, 12], [42]]
    assert answers(llama_dir, "ray", prompts) == answers(llama_dir, "thread", prompts)


def test_a_killed_actor_fails_in_flight_requests_and_is_replaced(llama_dir: Path, local_ray: None) -> None:
    async def run() -> None:
        engine = AsyncEngine(EngineConfig(model=str(llama_dir), dtype="float32", kv_cache_memory_mb=1), core="ray")
        await engine.start()
        stream = engine.generate([5, 6, 7], SamplingParams(temperature=0.0, max_tokens=5000, ignore_eos=True), "long")
        await stream.__anext__()
        ray.kill(engine.client.actor)  # type: ignore[union-attr]
        with pytest.raises(EngineDeadError):
            async for _ in stream:
                pass
        assert not engine.healthy
        for _ in range(600):
            if engine.healthy:
                break
            await asyncio.sleep(0.1)
        assert engine.healthy, "a new actor was not started"
        outs = [o async for o in engine.generate([5, 6], SamplingParams(temperature=0.0, max_tokens=3), "again")]
        assert outs[-1].finished
        await engine.shutdown()

    asyncio.run(run())
