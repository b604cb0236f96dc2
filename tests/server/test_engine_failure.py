"""A failing engine step fails the requests it held, never the server: an unstreamed answer is a 500
with ``engine_error``, a streamed one ends with an error event, and the next request is served."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from edgecloud.llm import AsyncEngine, EngineConfig
from edgecloud.llm.core_client import InprocClient
from edgecloud.server.app import ServerSettings, build_app


def fail_next_steps(engine: AsyncEngine, count: int, after: int = 0) -> Callable[[], int]:
    """Makes ``count`` of the core's steps raise, after ``after`` more good ones; returns how many did."""
    client = engine.client
    assert isinstance(client, InprocClient) and client.core is not None
    executor = client.core.executor
    real = executor.execute
    failed = passed = 0

    def execute(plan: Any) -> Any:
        nonlocal failed, passed
        if plan.scheduled and passed < after:
            passed += 1
        elif failed < count and plan.scheduled:
            failed += 1
            raise RuntimeError("injected fault")
        return real(plan)

    executor.execute = execute  # type: ignore[method-assign]
    return lambda: failed


def test_a_failed_step_fails_its_requests_and_the_server_keeps_serving(model_dir: Path) -> None:
    async def run() -> None:
        engine = AsyncEngine(EngineConfig(model=str(model_dir), dtype="float32", kv_cache_memory_mb=4), core="thread")
        app = build_app(engine, ServerSettings())
        await engine.start()
        model = app.state.server.model_name
        body = {"model": model, "prompt": "Hello", "max_tokens": 4}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            failures = fail_next_steps(engine, 1)
            broken = await client.post("/v1/completions", json=body)
            assert broken.status_code == 500 and broken.json()["error"]["code"] == "engine_error"
            assert "injected fault" in broken.json()["error"]["message"]

            failures = fail_next_steps(engine, 1, after=3)  # the headers are out when it fails
            streamed = await client.post("/v1/completions", json={**body, "stream": True, "max_tokens": 20})
            assert streamed.status_code == 200
            events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
            assert len(events) >= 3 and events[-1] == "[DONE]"
            assert json.loads(events[-2])["error"]["code"] == "engine_error"
            assert failures() == 1

            ok = await client.post("/v1/completions", json=body)
            assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4
            assert (await client.get("/health")).status_code == 200
        stats = engine.stats()
        assert stats.num_running == 0 and stats.num_free_blocks == stats.num_total_blocks
        await engine.shutdown()

    asyncio.run(run())
