"""OpenAI-style errors: every failure answers ``{"error": {"message", "type", "param", "code"}}``.

A client's mistake is a 4xx that names the field (never a 500); overload and shutdown are 503
with ``Retry-After``; only a failure of our own is a 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgecloud.llm import EngineDeadError, EngineError, InvalidRequestError

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An error answered to the client as it is."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": _TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_validation_error(error: RequestValidationError) -> APIError:
    """The first pydantic error, with its field path as ``param``."""
    first = error.errors()[0] if error.errors() else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        return APIError(400, f"request body is not valid JSON: {first.get('msg')}", code="invalid_json")
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    # Union members show up in the path (e.g. "stop.list[str]"); a client only needs the field.
    param = ".".join(part for part in loc if not _is_union_tag(part))
    message = first.get("msg", "invalid value")
    if param:
        message = f"{param}: {message}"
        if "input" in first and first.get("type") != "missing":
            message += f" (got {_short(first['input'])})"
    return APIError(400, message, param or None, code=first.get("type"))


def _is_union_tag(part: str) -> bool:
    return part in ("str", "int", "float", "bool", "none") or part.startswith(
        ("list[", "dict[", "function-", "tagged-union[", "constrained-")
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        whole_body = next(iter(error.errors()), {}).get("loc") == ("body",)
        if whole_body:  # not a field: the body itself is absent or not a JSON object
            content_type = request.headers.get("content-type", "")
            if not await request.body():
                message = "the request body is empty: send a JSON object (Content-Type: application/json)"
            elif not content_type.startswith("application/json"):
                message = (f"the request body must be a JSON object sent with Content-Type: application/json "
                           f"(got {content_type or 'no Content-Type'})")
            else:
                message = "the request body must be a JSON object"
            return APIError(400, message, code="invalid_body").response()
        return from_validation_error(error).response()

    @app.exception_handler(InvalidRequestError)
    async def invalid_request(request: Request, error: InvalidRequestError) -> JSONResponse:
        return APIError(400, str(error), error.param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no route {request.url.path}", 405: f"method {request.method} not allowed"}.get(
            error.status_code, str(error.detail)
        )
        return APIError(error.status_code, message, headers=dict(error.headers or {})).response()

    @app.exception_handler(EngineDeadError)
    async def engine_dead(request: Request, error: EngineDeadError) -> JSONResponse:
        log.error("engine unavailable on %s: %s", request.url.path, error)
        return APIError(503, f"the engine is unavailable: {error}; retry later", code="engine_unavailable",
                        headers={"Retry-After": "1"}).response()

    @app.exception_handler(EngineError)
    async def engine_error(request: Request, error: EngineError) -> JSONResponse:
        log.error("engine error on %s: %s", request.url.path, error)
        return APIError(500, f"the engine failed on this request: {error}", code="engine_error").response()
