"""One streamed request to an OpenAI-compatible endpoint, timed chunk by chunk.

Works with any server that speaks the OpenAI completions or chat-completions API with SSE
streaming (ours, vLLM, SGLang, OpenAI). Output length is forced with ``ignore_eos`` (a vLLM
extension that our server also accepts) so a replayed trace generates the lengths it recorded;
the token counts reported are the server's own (``usage`` with ``stream_options.include_usage``).

The HTTP client is aiohttp, as in ``vllm bench serve``: a load generator's own overhead lands in
every latency it reports, and aiohttp gets a request to an idle server in 0.25–0.6 ms where
httpx took 1.1 ms on the same machine (docs/server.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from edgecloud.bench.metrics import RequestRecord
from edgecloud.bench.workload import BenchRequest


@dataclass(frozen=True)
class Endpoint:
    """Where and how to send: ``base_url`` up to (not including) ``/v1``."""

    base_url: str
    model: str
    api: Literal["completions", "chat"] = "completions"
    ignore_eos: bool = True
    temperature: float = 0.0
    api_key: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        path = "/v1/completions" if self.api == "completions" else "/v1/chat/completions"
        return self.base_url.rstrip("/") + path

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def body(self, request: BenchRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.output_len,
            "temperature": self.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.api == "completions":
            body["prompt"] = request.prompt
        else:
            body["messages"] = [{"role": "user", "content": request.prompt}]
        if self.ignore_eos:
            body["ignore_eos"] = True
        body.update(self.extra_body)
        return body


async def sse_data(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The ``data:`` payloads of a server-sent-event stream, each as soon as its line is complete
    (lines of any length: a chunk with many logprobs can be long)."""
    pending = b""
    async for data in content.iter_any():
        lines = (pending + data).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                yield line[len(b"data:") :].strip().decode(errors="replace")


async def send_request(
    session: aiohttp.ClientSession, endpoint: Endpoint, request: BenchRequest, index: int, t0: float
) -> RequestRecord:
    """Send ``request``, stream its answer, and record what happened; never raises for a failure
    of the request itself (it becomes ``record.error``: ``http_<status>``, ``timeout``,
    ``connect``, ``transport``, ``stream_error``, ``bad_chunk`` or ``no_output``)."""
    # The request is built before the clock starts, as vllm bench serve builds its payload: the
    # clock covers sending it and waiting, not composing it.
    payload = json.dumps(endpoint.body(request)).encode()
    record = RequestRecord(index=index, send_time=time.perf_counter() - t0)
    record.expected_output_tokens = request.output_len
    try:
        async with session.post(endpoint.url, data=payload, headers=endpoint.headers()) as response:
            if response.status != 200:
                body = (await response.read()).decode(errors="replace")
                record.error, record.error_detail = f"http_{response.status}", body[:500]
                return record
            async for data in sse_data(response.content):
                if data == "[DONE]":
                    break
                now = time.perf_counter() - t0
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    record.error, record.error_detail = "bad_chunk", data[:500]
                    return record
                if "error" in chunk:
                    record.error, record.error_detail = "stream_error", json.dumps(chunk["error"])[:500]
                    return record
                # Any chunk with choices marks tokens, even with empty text (special tokens,
                # text a server holds back for stop strings); the usage-only chunk has none.
                if chunk.get("choices"):
                    record.chunk_times.append(now)
                if usage := chunk.get("usage"):
                    record.prompt_tokens = usage.get("prompt_tokens")
                    record.output_tokens = usage.get("completion_tokens") or 0
    except TimeoutError as error:  # aiohttp's timeouts (connect and read) are TimeoutErrors
        record.error, record.error_detail = "timeout", repr(error)
    except aiohttp.ClientConnectorError as error:
        record.error, record.error_detail = "connect", repr(error)
    except aiohttp.ClientError as error:
        record.error, record.error_detail = "transport", repr(error)
    finally:
        record.end_time = time.perf_counter() - t0
    if record.error is None and not record.chunk_times:
        record.error, record.error_detail = "no_output", "the stream ended without a chunk"
    if record.error is None and record.output_tokens == 0:
        # A server that does not report usage: count chunks, the best a client can do.
        record.output_tokens = len(record.chunk_times)
    return record
