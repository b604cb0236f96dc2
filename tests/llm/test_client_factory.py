"""``AsyncEngine(client_factory=...)``: the caller decides how each core is started, restarts included."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edgecloud.llm import AsyncEngine, EngineConfig, OutputKind, SamplingParams
from edgecloud.llm.core_client import EngineClient, InprocClient
from edgecloud.llm.model_source import ModelSource


def test_every_core_comes_from_the_factory_and_a_restart_asks_it_again(llama_dir: Path) -> None:
    made: list[EngineClient] = []

    def factory(config: EngineConfig, source: ModelSource) -> EngineClient:
        client = InprocClient(config, source)
        made.append(client)
        return client

    async def run() -> None:
        engine = AsyncEngine(EngineConfig(model=str(llama_dir), dtype="float32", kv_cache_memory_mb=1),
                             core="process", client_factory=factory)
        await engine.start()
        assert made == [engine.client]  # not a process: the factory's thread core
        params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
        outs = [o async for o in engine.generate([5, 6, 7], params, "a", output_kind=OutputKind.FINAL_ONLY)]
        assert len(outs[-1].outputs[0].token_ids) == 3
        engine._on_dead("test: the core died")
        for _ in range(200):
            if engine.healthy:
                break
            await asyncio.sleep(0.05)
        assert engine.healthy and len(made) == 2 and engine.client is made[1]
        await engine.shutdown()

    asyncio.run(run())
