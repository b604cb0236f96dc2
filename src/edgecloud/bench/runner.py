"""Drive a workload against an endpoint: send each request at its arrival time, at most
``max_concurrency`` in flight, and collect what every request saw."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import aiohttp

from edgecloud.bench.client import Endpoint, send_request
from edgecloud.bench.metrics import RequestRecord
from edgecloud.bench.workload import BenchRequest


async def run_requests(
    endpoint: Endpoint,
    requests: Sequence[BenchRequest],
    arrivals: Sequence[float],
    max_concurrency: int | None = None,
    timeout_s: float = 600.0,
    on_done: Callable[[RequestRecord], None] | None = None,
) -> list[RequestRecord]:
    """Send ``requests[i]`` at ``arrivals[i]`` seconds after the start (later if the concurrency
    limit is reached); return the records in request order."""
    if len(arrivals) != len(requests):
        raise ValueError(f"{len(requests)} requests but {len(arrivals)} arrival times")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    connections = max_concurrency or max(1, len(requests))
    async with aiohttp.ClientSession(
        # a stall limit, not a deadline: a healthy long stream never times out, one that goes
        # quiet for timeout_s does (as httpx's per-read timeout did); connecting gets 30 s at most
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(timeout_s, 30.0), sock_read=timeout_s),
        connector=aiohttp.TCPConnector(limit=connections),
    ) as session:
        t0 = time.perf_counter()

        async def one(index: int) -> RequestRecord:
            delay = arrivals[index] - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            if limit is None:
                record = await send_request(session, endpoint, requests[index], index, t0)
            else:
                async with limit:
                    record = await send_request(session, endpoint, requests[index], index, t0)
            if on_done is not None:
                on_done(record)
            return record

        return list(await asyncio.gather(*(one(i) for i in range(len(requests)))))


async def first_model(base_url: str, api_key: str | None = None, timeout_s: float = 30.0) -> str:
    """The first model id that ``GET /v1/models`` lists."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s), raise_for_status=True) as session,
        session.get(base_url.rstrip("/") + "/v1/models", headers=headers) as response,
    ):
        models = (await response.json()).get("data") or []
    if not models:
        raise RuntimeError(f"{base_url}/v1/models lists no model; pass --model")
    return str(models[0]["id"])
