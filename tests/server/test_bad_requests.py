"""Malformed requests get the right 4xx and an OpenAI error body naming the field; the server
serves correctly afterwards."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from .conftest import ServerProcess

MODEL = "<model>"  # replaced by the served model's name


@dataclass
class Case:
    name: str
    body: Any
    status: int
    param: str | None = None
    path: str = "/v1/completions"
    method: str = "POST"
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Hello", "max_tokens": 4, **fields}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **fields}


CHAT = "/v1/chat/completions"
CASES = [
    Case("malformed JSON", None, 400, raw=b'{"model": "x", "prompt": '),
    Case("body is a list", ["not", "an", "object"], 400),
    Case("body is text/plain junk", None, 400, raw=b"hello", headers={"content-type": "text/plain"}),
    Case("missing model", {"prompt": "Hello"}, 400, "model"),
    Case("unknown model", completion(model="gpt-17"), 404, "model"),
    Case("missing prompt", {"model": MODEL}, 400, "prompt"),
    Case("prompt is a number", completion(prompt=42), 400, "prompt"),
    Case("prompt is empty text", completion(prompt=""), 400, "prompt"),
    Case("prompt is an empty list", completion(prompt=[]), 400, "prompt"),
    Case("prompt has a negative token id", completion(prompt=[1, -2, 3]), 400, "prompt"),
    Case("prompt token id outside the vocabulary", completion(prompt=[1, 10**9]), 400, "prompt"),
    Case("prompt longer than the context", completion(prompt=[5] * 2000), 400, "prompt"),
    Case("max_tokens is zero", completion(max_tokens=0), 400, "max_tokens"),
    Case("max_tokens is a string", completion(max_tokens="5"), 400, "max_tokens"),
    Case("max_tokens beyond the context", completion(max_tokens=5000), 400, "max_tokens"),
    Case("temperature negative", completion(temperature=-1), 400, "temperature"),
    Case("temperature too high", completion(temperature=3.5), 400, "temperature"),
    Case("top_p zero", completion(top_p=0), 400, "top_p"),
    Case("top_k below -1", completion(top_k=-5), 400, "top_k"),
    Case("n zero", completion(n=0), 400, "n"),
    Case("n huge", completion(n=1000), 400, "n"),
    Case("seed is a float", completion(seed=1.5), 400, "seed"),
    Case("logprobs above 20", completion(logprobs=21), 400, "logprobs"),
    Case("too many stop strings", completion(stop=[f"s{i}" for i in range(20)]), 400, "stop"),
    Case("stop is a number", completion(stop=7), 400, "stop"),
    Case("empty stop string", completion(stop=[""]), 400, "stop"),
    Case("stop_token_ids negative", completion(stop_token_ids=[-1]), 400, "stop_token_ids.0"),
    Case("presence_penalty out of range", completion(presence_penalty=5), 400, "presence_penalty"),
    Case("stream is a string", completion(stream="yes"), 400, "stream"),
    Case("stream_options is a list", completion(stream=True, stream_options=[1]), 400, "stream_options"),
    Case("priority is a string", completion(priority="high"), 400, "priority"),
    Case("echo is unsupported", completion(echo=True), 400, "echo"),
    Case("best_of differs from n", completion(best_of=3), 400, "best_of"),
    Case("chat: missing messages", {"model": MODEL}, 400, "messages", CHAT),
    Case("chat: empty messages", chat(messages=[]), 400, "messages", CHAT),
    Case("chat: messages is a string", chat(messages="hi"), 400, "messages", CHAT),
    Case("chat: unknown role", chat(messages=[{"role": "wizard", "content": "x"}]), 400, "messages.0.role", CHAT),
    Case("chat: content is a number", chat(messages=[{"role": "user", "content": 3}]), 400, "messages.0.content",
         CHAT),
    Case("chat: image content part", chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), 400,
         "messages.0.content", CHAT),
    Case("chat: user message without content", chat(messages=[{"role": "user"}]), 400, "messages.0.content", CHAT),
    Case("chat: system message with null content", chat(messages=[{"role": "system", "content": None},
                                                                  {"role": "user", "content": "Hi"}]),
         400, "messages.0.content", CHAT),
    Case("logit_bias key is not a token id", completion(logit_bias={"hello": 5}), 400, "logit_bias"),
    Case("logit_bias key is negative", chat(logit_bias={"-3": 5}), 400, "logit_bias", CHAT),
    Case("logit_bias key outside the vocabulary", completion(logit_bias={"999999999": 5}), 400, "logit_bias"),
    Case("logit_bias value out of range", completion(logit_bias={"5": 150}), 400, "logit_bias.5"),
    Case("service_tier not offered", completion(service_tier="scale"), 400, "service_tier"),
    Case("cache_salt empty", completion(cache_salt=""), 400, "cache_salt"),
    Case("chat: tool with an invalid parameter schema", chat(tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"x": {"type": 3}}}}}]), 400,
         "tools[0].function.parameters", CHAT),
    Case("chat: response_format of an unknown type", chat(response_format={"type": "yaml"}), 400,
         "response_format", CHAT),
    Case("chat: top_logprobs without logprobs", chat(top_logprobs=2), 400, "top_logprobs", CHAT),
    Case("chat: top_logprobs above 20", chat(logprobs=True, top_logprobs=50), 400, "top_logprobs", CHAT),
    Case("chat: max_completion_tokens negative", chat(max_completion_tokens=-3), 400, "max_completion_tokens",
         CHAT),
    Case("chat: unknown model", chat(model="nope"), 404, "model", CHAT),
    Case("GET on a POST endpoint", None, 405, method="GET"),
    Case("unknown route", completion(), 404, path="/v1/nothing"),
    Case("body over the size limit", None, 413, raw=b'{"prompt": "' + b"x" * (9 * 1024 * 1024) + b'"}'),
]


def substitute(body: Any, model: str) -> Any:
    if isinstance(body, dict):
        return {k: substitute(v, model) for k, v in body.items()}
    return model if body == MODEL else body


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_request_gets_its_4xx(server: ServerProcess, case: Case) -> None:
    content = case.raw if case.raw is not None else json.dumps(substitute(case.body, server.model)).encode()
    headers = {"content-type": "application/json", **case.headers}
    response = httpx.request(
        case.method, server.base_url + case.path, content=None if case.method == "GET" else content,
        headers=headers, timeout=30,
    )
    assert response.status_code == case.status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if case.param is not None:
        assert error["param"] == case.param, error
    assert response.headers["x-request-id"]


def test_server_still_serves_after_bad_requests(server: ServerProcess) -> None:
    # One bad request of each status first (so the test stands alone, in any order).
    for status in (400, 404, 405, 413):
        case = next(c for c in CASES if c.status == status)
        content = case.raw if case.raw is not None else json.dumps(substitute(case.body, server.model)).encode()
        httpx.request(case.method, server.base_url + case.path, content=None if case.method == "GET" else content,
                      headers={"content-type": "application/json"}, timeout=30)
    body = {"model": server.model, "prompt": "Hello edge", "max_tokens": 6, "temperature": 0}
    first = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=30)
    second = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=30)
    assert first.status_code == second.status_code == 200
    assert first.json()["choices"][0]["text"] == second.json()["choices"][0]["text"]
    assert first.json()["usage"]["completion_tokens"] == 6
    assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}
    metrics = server.metrics()
    assert metrics["edgecloud_num_requests_running"] == 0
    assert metrics["edgecloud_kv_cache_free_blocks"] == metrics["edgecloud_kv_cache_total_blocks"]
    assert metrics["edgecloud_event_loop_lag_seconds_count"] > 0
    for status in (400, 404, 405, 413):
        assert metrics[f"edgecloud_http_errors_total[status={status}]"] >= 1


@pytest.mark.parametrize(
    ("content", "headers", "says"),
    [
        (b"", {"content-type": "application/json"}, "the request body is empty"),
        (b'{"model": "m", "prompt": "hi"}', {}, "sent with Content-Type: application/json (got no Content-Type)"),
        (b'{"model": "m", "prompt": "hi"}', {"content-type": "text/plain"}, "(got text/plain)"),
    ],
    ids=["empty body", "JSON without a content type", "JSON as text/plain"],
)
def test_a_body_that_is_no_json_object_says_what_to_send(
    server: ServerProcess, content: bytes, headers: dict[str, str], says: str
) -> None:
    response = httpx.post(f"{server.base_url}/v1/completions", content=content, headers=headers, timeout=30)
    assert response.status_code == 400
    assert says in response.json()["error"]["message"]
