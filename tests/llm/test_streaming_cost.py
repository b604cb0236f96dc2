"""An 8k-token streamed generation costs O(L) bytes in all: every step sends the core's delta, not
the whole text so far, across the process boundary, and the front end hands out deltas."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgecloud.llm import AsyncEngine, EngineConfig, OutputKind, SamplingParams
from edgecloud.llm.core_client import MPClient
from edgecloud.llm.random_model import write_random_model

LENGTH = 8000


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_model(
        tmp_path_factory.mktemp("long") / "llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
    )


def test_an_8k_token_stream_sends_o_of_l_bytes(long_context_model: Path) -> None:
    config = EngineConfig(model=str(long_context_model), dtype="float32", kv_cache_memory_mb=4, num_threads=1)

    async def run() -> tuple[list[int], list[tuple[int, int]]]:
        engine = AsyncEngine(config, core="process")
        await engine.start()
        deltas: list[tuple[int, int]] = []
        params = SamplingParams(temperature=0.0, max_tokens=LENGTH, ignore_eos=True)
        async for out in engine.generate([5, 6, 7], params, "long", output_kind=OutputKind.DELTA):
            completion = out.outputs[0]
            deltas.append((len(completion.token_ids), len(completion.text)))
        client = engine.client
        assert isinstance(client, MPClient)
        sizes = list(client.bytes_received)
        await engine.shutdown()
        return sizes, deltas

    sizes, deltas = asyncio.run(run())
    assert sum(n for n, _ in deltas) == LENGTH
    assert max(n for n, _ in deltas) <= 2 and max(chars for _, chars in deltas) <= 64
    # Messages from the core: one per step, each about the same size whatever the length so far (the
    # counters in the stats they carry grow by a few bytes of msgpack integer width, no more).
    assert len(sizes) >= LENGTH
    early, late = sizes[100:1100], sizes[-1000:]
    assert max(late) <= 1.15 * max(early), (max(early), max(late))
    assert sum(sizes) < 400 * LENGTH  # O(L): a few hundred bytes a token, not O(L^2)
