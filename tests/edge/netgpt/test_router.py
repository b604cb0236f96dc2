"""``edgecloud edge route`` end to end on loopback: a real edge agent (our server over a random-weight
model, in-process), clouds that answer, fail, hang or are not there, and the official ``openai``
client in front. A failing cloud costs time, never the answer: the router falls back and says so."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from edgecloud.edge.netgpt.network import NetworkMonitor, ProbeError
from edgecloud.edge.netgpt.policy import PRICES, Calibration, NetGPTPolicy, NetworkState
from edgecloud.edge.netgpt.router import NetGPTRouter, RouterSettings, build_app
from edgecloud.llm import AsyncEngine, EngineConfig
from edgecloud.llm.random_model import write_random_model
from edgecloud.server.app import ServerSettings
from edgecloud.server.app import build_app as build_server

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Oslo", "Lima"]}}, "required": ["city"],
    "additionalProperties": False}}}
BODY = {"model": "netgpt", "messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": [TOOL],
        "tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 120, "temperature": 0}
GOOD_NETWORK = NetworkState(100, 10)
# The cloud always pays off (the edge is never right, the cloud always): every request falls back.
ALWAYS_CLOUD = Calibration([0.0, 1.0], [0.0, 0.0], [0.0, 1.0], [1.0, 1.0], 2)
NEVER_CLOUD = Calibration([0.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0], 2)
CLOUD_ANSWER = {"id": "chatcmpl-cloud", "object": "chat.completion", "created": 0, "model": "cloud",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
                    "role": "assistant", "content": None, "tool_calls": [{"id": "call_c", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


def scripted_cloud(behaviour: str) -> FastAPI:
    """A peer standing in for a cloud that answers, errors or hangs (and answers probes)."""
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        if body["model"] != "cloud":
            return JSONResponse({"error": {"message": "no such model"}}, status_code=404)
        if behaviour == "error":
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=500)
        if behaviour == "hang":
            await asyncio.sleep(4)  # past the router's 1 s cloud timeout
        return JSONResponse(CLOUD_ANSWER)

    return app


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def free_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_model(tmp_path_factory.mktemp("netgpt-edge") / "llama", arch="llama")


def run_with_router(model_dir: Path, cloud: str, calibration: Calibration, check: Callable[[str], Any], *,
                    cloud_timeout_s: float = 10.0, prior: NetworkState | None = GOOD_NETWORK) -> None:
    async def main() -> None:
        engine = AsyncEngine(EngineConfig(model=str(model_dir), num_threads=1, kv_cache_memory_mb=16), core="thread")
        async with serving(build_server(engine, ServerSettings(served_model_name="edge"))) as edge_url:
            cloud_app = None if cloud == "absent" else scripted_cloud(cloud)
            async with (serving(cloud_app) if cloud_app is not None else _nothing()) as cloud_url:
                settings = RouterSettings(edge_url=edge_url, cloud_url=cloud_url or free_port_url(), edge_model="edge",
                                          cloud_model="cloud", cloud_timeout_s=cloud_timeout_s, prior=prior,
                                          probe_interval_s=60)
                router = NetGPTRouter(settings, NetGPTPolicy(calibration, cloud_compute_s=0.1), PRICES["cheap"])
                async with serving(build_app(router)) as router_url:
                    await asyncio.to_thread(check, router_url)

    asyncio.run(main())


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield None


def test_offloaded_requests_get_the_cloud_answer_and_the_decision(model_dir: Path) -> None:
    def check(url: str) -> None:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=60)
        raw = client.chat.completions.with_raw_response.create(**BODY)
        reply = raw.parse()
        assert raw.headers["x-netgpt-route"] == "cloud"
        assert float(raw.headers["x-netgpt-threshold"]) == 1.0 and "x-netgpt-score" in raw.headers
        assert reply.choices[0].message.tool_calls[0].id == "call_c" and reply.model == "netgpt"
        # streamed: the same answer as SSE chunks, readable by the client
        chunks = list(client.chat.completions.create(stream=True, **BODY))
        calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
        assert [(c.function.name, c.function.arguments) for c in calls] == [("get_weather", '{"city": "Oslo"}')]
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        state = httpx.get(f"{url}/netgpt/state").json()
        assert state["routes"]["cloud"] == 2

    run_with_router(model_dir, "ok", ALWAYS_CLOUD, check)


def test_confident_edge_answers_stay_at_the_edge(model_dir: Path) -> None:
    def check(url: str) -> None:
        reply = httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=60)
        assert reply.status_code == 200 and reply.headers["x-netgpt-route"] == "edge"
        call = reply.json()["choices"][0]["message"]["tool_calls"][0]
        assert json.loads(call["function"]["arguments"])["city"] in ("Oslo", "Lima")  # the edge's own, constrained
        assert "logprobs" not in reply.json()["choices"][0]  # asked for scoring, not by the client

    run_with_router(model_dir, "ok", NEVER_CLOUD, check)


@pytest.mark.parametrize(("cloud", "reason"), [
    ("error", "the cloud agent answered HTTP 500"),
    ("hang", "the cloud agent did not answer within 1 s"),
    ("absent", "the cloud agent could not be reached (ConnectError"),
])
def test_a_failing_cloud_falls_back_to_the_edge_answer_and_says_so(model_dir: Path, cloud: str, reason: str) -> None:
    def check(url: str) -> None:
        start = time.monotonic()
        reply = httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-netgpt-route"] == "edge-fallback"
        assert reply.headers["x-netgpt-fallback-reason"].startswith(reason)
        assert reply.json()["choices"][0]["message"]["tool_calls"]  # the edge's answer, not lost
        assert time.monotonic() - start < 20  # no hang

    run_with_router(model_dir, cloud, ALWAYS_CLOUD, check, cloud_timeout_s=1.0)


def test_bad_requests_and_an_unmeasured_network_are_clear_errors(model_dir: Path) -> None:
    def check(url: str) -> None:
        assert httpx.post(f"{url}/v1/chat/completions", content=b"[1,", timeout=30).status_code == 400
        wrong = httpx.post(f"{url}/v1/chat/completions", json={**BODY, "model": "gpt-9"}, timeout=30)
        assert wrong.status_code == 404 and "this router serves 'netgpt'" in wrong.json()["error"]["message"]
        bad_tool = {**BODY, "tool_choice": {"type": "function", "function": {"name": "nope"}}}
        reply = httpx.post(f"{url}/v1/chat/completions", json=bad_tool, timeout=30)
        assert reply.status_code == 400 and "not in tools" in reply.text  # the edge's 400, passed on
        # the cloud is not there, so no probe succeeded, and no prior was given
        reply = httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=30)
        assert reply.status_code == 502
        message = reply.json()["error"]["message"]
        assert "not measured" in message and "network probe GET" in message and "failed" in message

    run_with_router(model_dir, "absent", ALWAYS_CLOUD, check, prior=None)


def test_probes_measure_rtt_and_bandwidth_and_fail_clearly() -> None:
    async def main() -> None:
        async with serving(scripted_cloud("ok")) as url, httpx.AsyncClient() as client:
            monitor = NetworkMonitor(url, client, probe_bytes=20_000)
            state = await monitor.probe()
            assert state.rtt_ms > 0 and state.bandwidth_mbps > 0 and monitor.last_error is None
        async with httpx.AsyncClient() as client:
            monitor = NetworkMonitor(free_port_url(), client, timeout_s=2)
            start = time.monotonic()
            with pytest.raises(ProbeError, match=r"network probe GET .* failed: ConnectError"):
                await monitor.probe()
            assert time.monotonic() - start < 5 and monitor.estimate is None and monitor.last_error

    asyncio.run(main())
