"""Draining on SIGTERM: from the moment the signal arrives, ``/health`` answers 503 ``draining`` and a
new request 503 ``shutting_down`` with Retry-After, while the request already in flight finishes all
its tokens. (test_load.py sends a real SIGTERM and sees the listening socket close; a client cannot
reach a draining server over a new connection, so the 503s are checked here, in process.)"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx
import uvicorn

from edgecloud.llm import AsyncEngine, EngineConfig
from edgecloud.server.app import ServerSettings, build_app
from edgecloud.server.main import _DrainingServer


def test_a_signal_turns_health_and_new_requests_503_while_the_stream_in_flight_finishes(model_dir: Path) -> None:
    async def run() -> None:
        engine = AsyncEngine(EngineConfig(model=str(model_dir), dtype="float32", kv_cache_memory_mb=4), core="thread")
        app = build_app(engine, ServerSettings(retry_after_s=7))
        await engine.start()
        server = app.state.server
        model = server.model_name
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            assert (await client.get("/health")).json() == {"status": "ok"}
            body = {"model": model, "prompt": "Drain me", "max_tokens": 200, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            in_flight = asyncio.ensure_future(client.post("/v1/completions", json=body))
            async with asyncio.timeout(60):  # the request reaches the engine in milliseconds
                while engine.stats().num_running == 0:
                    await asyncio.sleep(0.01)

            # What uvicorn calls on SIGTERM; the app sees the flag at once, before uvicorn's next tick.
            _DrainingServer(uvicorn.Config(app), server).handle_exit(signal.SIGTERM, None)

            health = await client.get("/health")
            assert (health.status_code, health.json()) == (503, {"status": "draining"})
            for path, request in [("/v1/completions", {"model": model, "prompt": "late", "max_tokens": 2}),
                                  ("/v1/chat/completions", {"model": model, "max_tokens": 2,
                                                            "messages": [{"role": "user", "content": "late"}]})]:
                refused = await client.post(path, json=request)
                assert refused.status_code == 503, path
                assert refused.headers["retry-after"] == "7"
                assert refused.json()["error"]["code"] == "shutting_down"
            assert engine.stats().num_running == 1  # the refusals reached no engine

            streamed = await in_flight
            assert streamed.status_code == 200
            events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            assert json.loads(events[-2])["usage"]["completion_tokens"] == 200
        stats = engine.stats()
        assert stats.num_running == 0 and stats.num_free_blocks == stats.num_total_blocks
        await engine.shutdown()

    asyncio.run(run())
