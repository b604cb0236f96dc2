"""The load generator's timeout is a stall limit: a long stream that keeps talking finishes,
one that goes silent for the timeout fails as ``timeout``. Against a real aiohttp SSE server."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from edgecloud.bench.client import Endpoint
from edgecloud.bench.runner import run_requests
from edgecloud.bench.workload import BenchRequest


def sse_app(gap_s: float, chunks: int) -> web.Application:
    async def completions(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(chunks):
            await asyncio.sleep(gap_s)
            await response.write(f"data: {json.dumps({'choices': [{'index': 0, 'text': str(i)}]})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    return app


async def replay(gap_s: float, chunks: int, timeout_s: float) -> list:
    runner = web.AppRunner(sse_app(gap_s, chunks))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        endpoint = Endpoint(f"http://127.0.0.1:{port}", "m")
        return await run_requests(endpoint, [BenchRequest("hi", (1,), chunks)], [0.0], timeout_s=timeout_s)
    finally:
        await runner.cleanup()


def test_a_stream_longer_than_the_timeout_that_keeps_talking_finishes() -> None:
    (record,) = asyncio.run(replay(gap_s=0.15, chunks=6, timeout_s=0.5))  # 0.9 s in all
    assert record.error is None and len(record.chunk_times) == 6


def test_a_stream_silent_for_the_timeout_fails_as_timeout() -> None:
    (record,) = asyncio.run(replay(gap_s=1.0, chunks=2, timeout_s=0.3))
    assert record.error == "timeout"
