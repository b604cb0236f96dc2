"""Concurrency, cancellation, overload and shutdown, against real server processes."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import ServerProcess, start_server


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_64_concurrent_streaming_clients_all_finish(server: ServerProcess) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[int, str | None, int]:
        stream = await client.completions.create(
            model=server.model, prompt=f"Client {i} says hello to the edge", max_tokens=24, temperature=0.7,
            seed=i, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
        finish, tokens = None, 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return i, finish, tokens

    async def run() -> list[tuple[int, str | None, int] | BaseException]:
        client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
        async with client:
            return await asyncio.gather(*(one(client, i) for i in range(64)), return_exceptions=True)

    results = asyncio.run(run())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    assert sorted(results) == [(i, "length", 24) for i in range(64)]  # type: ignore[type-var]


def test_disconnect_mid_stream_frees_kv_blocks(server: ServerProcess) -> None:
    before = server.metrics()
    body = {"model": server.model, "prompt": "A long story about the edge", "max_tokens": 1000,
            "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{server.base_url}/v1/completions",
                                                             json=body) as response:
        assert response.status_code == 200
        # Keep the line iterator referenced: dropping it would close the response early.
        lines = response.iter_lines()
        chunks: list[dict[str, object]] = []
        for line in lines:
            if line.startswith("data:"):
                chunks.append(json.loads(line[5:]))
            if len(chunks) == 20:
                break
        during = server.metrics()
        assert during["edgecloud_num_requests_running"] == 1
        assert during["edgecloud_kv_cache_free_blocks"] < during["edgecloud_kv_cache_total_blocks"]
    # The connection is closed: the server aborts the request and its blocks return to the pool.

    def freed() -> bool:
        now = server.metrics()
        return (now["edgecloud_num_requests_running"] == 0
                and now["edgecloud_kv_cache_free_blocks"] == now["edgecloud_kv_cache_total_blocks"])

    wait_for(freed)
    after = server.metrics()
    aborted = "edgecloud_request_success_total[finished_reason=abort]"
    assert after[aborted] == before.get(aborted, 0) + 1
    generated = after["edgecloud_generation_tokens_total"] - before["edgecloud_generation_tokens_total"]
    assert 20 <= generated < 1000


def test_disconnect_while_waiting_for_a_non_streamed_answer_aborts(server: ServerProcess) -> None:
    before = server.metrics()
    body = {"model": server.model, "prompt": "Patience", "max_tokens": 1000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=0.5)
    wait_for(lambda: server.metrics()["edgecloud_num_requests_running"] == 0)
    after = server.metrics()
    assert after["edgecloud_kv_cache_free_blocks"] == after["edgecloud_kv_cache_total_blocks"]
    assert after["edgecloud_generation_tokens_total"] - before["edgecloud_generation_tokens_total"] < 1000


def test_overload_then_graceful_sigterm(model_dir: Path, tmp_path: Path) -> None:
    """One sequence at a time and at most one waiting: a third request is refused with 503 and
    Retry-After; on SIGTERM the two in flight still finish all their tokens and the server exits 0."""
    server = start_server(model_dir, tmp_path / "server.log", "--max-num-seqs", "1", "--max-waiting", "1")
    try:
        results: dict[str, tuple[int, int, bool]] = {}

        def stream(name: str) -> None:
            body = {"model": server.model, "prompt": f"{name} runs long", "max_tokens": 900,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            tokens, done = 0, False
            with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=120) as response:
                for line in response.iter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data:") and (usage := json.loads(line[5:]).get("usage")):
                        tokens = usage["completion_tokens"]
                results[name] = (response.status_code, tokens, done)

        first = threading.Thread(target=stream, args=("first",))
        first.start()
        wait_for(lambda: server.metrics()["edgecloud_num_requests_running"] == 1)
        second = threading.Thread(target=stream, args=("second",))
        second.start()
        wait_for(lambda: server.metrics()["edgecloud_num_requests_waiting"] == 1)

        refused = httpx.post(f"{server.base_url}/v1/completions",
                             json={"model": server.model, "prompt": "third", "max_tokens": 2}, timeout=30)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"

        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(httpx.TransportError):
            for _ in range(50):  # the listening socket closes within uvicorn's next tick
                httpx.get(f"{server.base_url}/health", timeout=2)
                time.sleep(0.1)
        first.join(60)
        second.join(60)
        assert results == {"first": (200, 900, True), "second": (200, 900, True)}
        assert server.process.wait(60) == 0
    finally:
        server.stop(signal.SIGKILL)
