"""``edgecloud.server.main``: the HTTP protocol stamps each request when the event loop read it,
before the app runs, afresh for every request on a kept-alive connection."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import uvicorn
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from edgecloud.server.main import bind, stamping


async def stamp_app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    """Answers with the request's stamp and the moment the app was called."""
    called_at = time.monotonic()
    body = json.dumps({"received_at": scope["state"].get("received_at"), "called_at": called_at}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_every_request_is_stamped_when_read_before_the_app_runs(http: str) -> None:
    async def run() -> list[dict[str, float]]:
        sock = bind("127.0.0.1", 0)
        config = uvicorn.Config(
            stamp_app, http=stamping(import_from_string(HTTP_PROTOCOLS[http])), lifespan="off", log_level="warning"
        )
        server = uvicorn.Server(config)
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        try:
            # One connection, kept alive: the second request must get a stamp of its own.
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as client:
                before = time.monotonic()
                answers = [(await client.post(url, content=b"x" * n)).json() for n in (10, 100_000)]
                return [{"before": before, **a} for a in answers]
        finally:
            server.should_exit = True
            await serving

    first, second = asyncio.run(run())
    assert first["before"] < first["received_at"] <= first["called_at"]
    assert first["called_at"] < second["received_at"] <= second["called_at"]
