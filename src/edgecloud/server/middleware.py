"""ASGI middleware of the server: request ids and the request-body size limit.

Both are plain ASGI wrappers (no buffering of responses), so they cost nothing on streamed
answers.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = b"x-request-id"


class RequestIdMiddleware:
    """Echo the client's ``X-Request-Id`` (or make one) on every response; handlers read it
    from ``request.state.request_id``, and the request's arrival (``time.monotonic``, the
    engine's clock) from ``request.state.received_at``: the HTTP server's stamp when it gives
    one (``edgecloud.server.main.stamping``), else now. ``on_status`` sees every response's
    status code (error counters)."""

    def __init__(self, app: ASGIApp, on_status: Callable[[int], None] | None = None) -> None:
        self.app = app
        self.on_status = on_status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"").decode("latin-1").strip()
        # Ids are echoed into headers and logs: keep them short and printable.
        request_id = given[:128] if given and given.isprintable() else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state.setdefault("received_at", time.monotonic())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                if self.on_status is not None:
                    self.on_status(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, request_id.encode("latin-1"))]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the body outgrows the limit; an HTTPException so that the
    framework's body parsing passes it through to the error handlers (which answer 413)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body is larger than the server's limit of {max_bytes} bytes")


class BodySizeLimitMiddleware:
    """Answer 413 (OpenAI error body) to a request whose body exceeds ``max_bytes``, judged by
    ``Content-Length`` when given and by counting the bytes received otherwise."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps({
            "error": {
                "message": BodyTooLarge(self.max_bytes).detail,
                "type": "invalid_request_error",
                "param": None,
                "code": "request_too_large",
            }
        }).encode()
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})
