"""The server's chat-context hook: a hook that takes a chat request over runs its prompt, commits
the answer before the response goes out (adding its headers, or failing the request), and is
released whatever happens; a request it leaves alone is served as usual."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from fastapi import Request

from edgecloud.llm import AsyncEngine, CompletionOutput, EngineConfig
from edgecloud.server.app import ChatTurn, ServerSettings, build_app
from edgecloud.server.errors import APIError
from edgecloud.server.protocol import ChatCompletionRequest


class RecordingContext:
    """Takes requests whose first message says ``take``; fails the commit of those that say ``refuse``."""

    def __init__(self) -> None:
        self.committed: list[CompletionOutput] = []
        self.released = 0

    async def prepare(self, request: Request, body: ChatCompletionRequest) -> ChatTurn | None:
        text = body.messages[0].template_dict()["content"]
        if not text.startswith("take"):
            return None

        async def commit(answer: CompletionOutput) -> dict[str, str]:
            if text == "take refuse":
                raise APIError(503, "not stored", code="not_stored")
            self.committed.append(answer)
            return {"X-Turn": str(len(self.committed))}

        async def release() -> None:
            self.released += 1

        return ChatTurn([5, 6, 7, 8], commit, release)


def test_a_chat_context_takes_requests_over_commits_answers_and_is_always_released(model_dir: Path) -> None:
    async def run() -> None:
        engine = AsyncEngine(EngineConfig(model=str(model_dir), dtype="float32", kv_cache_memory_mb=4), core="thread")
        context = RecordingContext()
        app = build_app(engine, ServerSettings(), chat_context=context)
        await engine.start()
        model = app.state.server.model_name

        def body(text: str, **extra: object) -> dict[str, object]:
            return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 3,
                    "temperature": 0, **extra}

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            taken = await client.post("/v1/chat/completions", json=body("take"))
            assert taken.status_code == 200, taken.text
            assert taken.headers["X-Turn"] == "1"
            assert taken.json()["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
            assert context.committed[0].token_ids and len(context.committed[0].token_ids) == 3
            assert context.released == 1

            refused = await client.post("/v1/chat/completions", json=body("take refuse"))
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_stored"
            assert context.released == 2 and len(context.committed) == 1

            tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            for extra, param in (({"stream": True}, "stream"), ({"n": 2}, "n"), ({"tools": [tool]}, "tools")):
                bad = await client.post("/v1/chat/completions", json=body("take", **extra))
                assert bad.status_code == 400 and bad.json()["error"]["param"] == param
            assert context.released == 5 and len(context.committed) == 1

            # A session turn's answer follows a response_format schema like any other (#24).
            schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                      "additionalProperties": False}
            fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
            shaped = await client.post("/v1/chat/completions", json=body("take", max_tokens=20, response_format=fmt))
            assert shaped.status_code == 200, shaped.text
            assert json.loads(shaped.json()["choices"][0]["message"]["content"]) in ({"ok": True}, {"ok": False})
            assert context.released == 6 and len(context.committed) == 2

            # Left alone: served as usual, from the rendered messages.
            plain = await client.post("/v1/chat/completions", json=body("hello"))
            assert plain.status_code == 200 and "X-Turn" not in plain.headers
            assert plain.json()["usage"]["prompt_tokens"] != 4
            assert context.released == 6
        stats = engine.stats()
        assert stats.num_running == 0 and stats.num_free_blocks == stats.num_total_blocks
        await engine.shutdown()

    asyncio.run(run())
