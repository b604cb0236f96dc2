"""``edgecloud edge route``: an OpenAI-compatible proxy in front of an edge agent and a cloud agent
that routes each chat request as NetGPT does (arXiv 2511.22217).

Per request: the edge agent answers first (with ``logprobs``); the answer's score, the network
as measured now (``NetworkMonitor``) and the price schedule give the fallback threshold
(``NetGPTPolicy``); below it the request goes to the cloud agent. A cloud that fails (an error
status, a broken connection, no answer within ``cloud_timeout_s``) costs nothing but time: the
client gets the edge's answer, and the response says so (``X-NetGPT-Route: edge-fallback`` and
``X-NetGPT-Fallback-Reason``). Every answer carries the decision (``X-NetGPT-Score``,
``X-NetGPT-Threshold``, ``X-NetGPT-Bandwidth-Mbps``, ``X-NetGPT-RTT-Ms``). Offloaded requests and
the cloud's answers are appended to ``offload_log`` (JSON lines): the data the edge learns from.

Streamed requests are answered as Server-Sent Events once the chosen answer is complete (the
score needs the edge's whole answer before anything can be sent).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from edgecloud.edge.netgpt.network import NetworkMonitor, ProbeError
from edgecloud.edge.netgpt.policy import (
    Decision,
    NetGPTPolicy,
    NetworkState,
    PriceSchedule,
    RequestSize,
    cloud_latency_s,
)
from edgecloud.edge.netgpt.score import SCORES, read_answer

log = logging.getLogger(__name__)


@dataclass
class RouterSettings:
    edge_url: str
    cloud_url: str
    edge_model: str
    cloud_model: str
    served_model_name: str = "netgpt"
    score: str = "valid_mean_prob"
    cloud_timeout_s: float = 60.0
    edge_timeout_s: float = 120.0
    probe_interval_s: float = 5.0
    probe_bytes: int = 64_000
    offload_log: Path | None = None
    prior: NetworkState | None = None  # used until the first probe succeeds
    # tool_choice the cloud is asked with when the client left it to the model ("auto" or unset):
    # "required" makes the cloud agent answer with a grammar-constrained call (docs/netgpt.md)
    cloud_tool_choice: str | None = None

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(sorted(SCORES))}, got {self.score!r}")
        for name in ("cloud_timeout_s", "edge_timeout_s", "probe_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


class RouteError(Exception):
    """Neither agent could answer."""


@dataclass
class RoutedAnswer:
    response: dict[str, Any]
    route: str  # edge | cloud | edge-fallback
    decision: Decision | None
    fallback_reason: str | None = None
    network: NetworkState | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        headers = {"X-NetGPT-Route": self.route}
        if self.decision is not None:
            headers["X-NetGPT-Score"] = f"{self.decision.score:.4f}"
            headers["X-NetGPT-Threshold"] = f"{self.decision.threshold:.4f}"
        if self.network is not None:
            headers["X-NetGPT-Bandwidth-Mbps"] = f"{self.network.bandwidth_mbps:.3f}"
            headers["X-NetGPT-RTT-Ms"] = f"{self.network.rtt_ms:.1f}"
        if self.fallback_reason:
            headers["X-NetGPT-Fallback-Reason"] = self.fallback_reason
        return headers


class NetGPTRouter:
    def __init__(self, settings: RouterSettings, policy: NetGPTPolicy, price: PriceSchedule,
                 client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.policy = policy
        self.price = price
        self.client = client or httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=32))
        self.monitor = NetworkMonitor(settings.cloud_url, self.client, probe_bytes=settings.probe_bytes,
                                      prior=settings.prior)
        self.counts = {"edge": 0, "cloud": 0, "edge-fallback": 0}

    async def close(self) -> None:
        await self.client.aclose()

    def network(self) -> NetworkState:
        if self.monitor.estimate is None:
            reason = self.monitor.last_error or "no probe has finished yet"
            raise RouteError(f"the network to the cloud is not measured ({reason}) and no --prior was given")
        return self.monitor.estimate

    async def _post(self, base: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        response = await self.client.post(f"{base.rstrip('/')}/v1/chat/completions", json=body, timeout=timeout)
        if response.status_code != 200:
            raise httpx.HTTPStatusError(f"{response.status_code}: {response.text[:300]}", request=response.request,
                                        response=response)
        return response.json()

    def _cloud_body(self, request: dict[str, Any]) -> dict[str, Any]:
        body = {**request, "model": self.settings.cloud_model}
        if self.settings.cloud_tool_choice and body.get("tools") and body.get("tool_choice", "auto") == "auto":
            body["tool_choice"] = self.settings.cloud_tool_choice
        return body

    async def route(self, body: dict[str, Any]) -> RoutedAnswer:
        """Answers one chat request (``body`` as the client sent it, ``stream`` ignored)."""
        wants_logprobs = bool(body.get("logprobs"))
        request = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        start = time.monotonic()
        edge_body = {**request, "model": self.settings.edge_model, "logprobs": True}
        try:
            edge = await self._post(self.settings.edge_url, edge_body, self.settings.edge_timeout_s)
        except httpx.HTTPStatusError as error:
            if 400 <= error.response.status_code < 500:
                raise  # the client's request is bad: the cloud would refuse it too
            return await self._cloud_only(request, _describe(error, "edge", self.settings.edge_timeout_s))
        except (httpx.HTTPError, ValueError) as error:
            return await self._cloud_only(request, _describe(error, "edge", self.settings.edge_timeout_s))
        edge_s = time.monotonic() - start
        answer = read_answer(edge, body.get("tools") or [])
        score = SCORES[self.settings.score](answer)
        usage = edge.get("usage") or {}
        size = RequestSize(len(json.dumps(request)), len(json.dumps(edge)),
                           int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0)))
        state = self.network()
        decision = self.policy.decide(score, state, self.price, size)
        if not wants_logprobs:
            edge["choices"][0].pop("logprobs", None)
        if decision.route == "edge":
            self.counts["edge"] += 1
            return RoutedAnswer(self._served(edge), "edge", decision, network=state, timings={"edge_s": edge_s})
        cloud_start = time.monotonic()
        try:
            cloud = await self._post(self.settings.cloud_url, self._cloud_body(request), self.settings.cloud_timeout_s)
        except (httpx.HTTPError, ValueError) as error:
            reason = _describe(error, "cloud", self.settings.cloud_timeout_s)
            log.warning("falling back to the edge answer: %s", reason)
            self.counts["edge-fallback"] += 1
            return RoutedAnswer(self._served(edge), "edge-fallback", decision, fallback_reason=reason, network=state,
                                timings={"edge_s": edge_s, "cloud_s": time.monotonic() - cloud_start})
        cloud_s = time.monotonic() - cloud_start
        # the cloud's own answer time, for the next thresholds: what the network does not explain
        network_s = cloud_latency_s(state, size, 0.0, self.price.round_trips)
        self.policy.cloud_compute_s = 0.8 * self.policy.cloud_compute_s + 0.2 * max(cloud_s - network_s, 0.0)
        self.counts["cloud"] += 1
        self._log_offload(request, edge, cloud, decision, state)
        return RoutedAnswer(self._served(cloud), "cloud", decision, network=state,
                            timings={"edge_s": edge_s, "cloud_s": cloud_s})

    async def _cloud_only(self, request: dict[str, Any], reason: str) -> RoutedAnswer:
        """No edge answer to score: the cloud is the only way left."""
        log.warning("%s; sending the request to the cloud", reason)
        try:
            cloud = await self._post(self.settings.cloud_url, self._cloud_body(request), self.settings.cloud_timeout_s)
        except (httpx.HTTPError, ValueError) as error:
            raise RouteError(f"{reason}; and {_describe(error, 'cloud', self.settings.cloud_timeout_s)}") from error
        self.counts["cloud"] += 1
        return RoutedAnswer(self._served(cloud), "cloud", None, fallback_reason=reason)

    def _served(self, response: dict[str, Any]) -> dict[str, Any]:
        return {**response, "model": self.settings.served_model_name}

    def _log_offload(self, request: dict[str, Any], edge: dict[str, Any], cloud: dict[str, Any], decision: Decision,
                     state: NetworkState) -> None:
        if self.settings.offload_log is None:
            return
        record = {"request": request, "edge": edge, "cloud": cloud, "score": decision.score,
                  "threshold": decision.threshold, "bandwidth_mbps": state.bandwidth_mbps, "rtt_ms": state.rtt_ms}
        with self.settings.offload_log.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _describe(error: Exception, agent: str, timeout: float) -> str:
    if isinstance(error, httpx.TimeoutException):
        return f"the {agent} agent did not answer within {timeout:g} s"
    if isinstance(error, httpx.HTTPStatusError):
        return f"the {agent} agent answered HTTP {error}"
    if isinstance(error, httpx.HTTPError):
        return f"the {agent} agent could not be reached ({type(error).__name__}: {error})"
    return f"the {agent} agent's answer is not JSON ({error})"


def sse_chunks(response: dict[str, Any]) -> list[str]:
    """A complete chat completion as the chunks of a stream: the role, the content, each tool call,
    and the finish reason."""
    choice = response["choices"][0]
    message = choice["message"]
    base = {"id": response.get("id", ""), "object": "chat.completion.chunk", "created": response.get("created", 0),
            "model": response.get("model", "")}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return json.dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    out = [chunk({"role": "assistant", "content": ""})]
    if message.get("content"):
        out.append(chunk({"content": message["content"]}))
    for i, call in enumerate(message.get("tool_calls") or []):
        out.append(chunk({"tool_calls": [{"index": i, **call}]}))
    out.append(chunk({}, choice.get("finish_reason")))
    return out


def build_app(router: NetGPTRouter) -> FastAPI:
    settings = router.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await router.monitor.probe()
        except ProbeError as error:
            log.warning("first network probe failed: %s", error)
        task = asyncio.ensure_future(router.monitor.run(settings.probe_interval_s))
        state = router.monitor.estimate
        measured = (f"{state.bandwidth_mbps:.2f} Mbit/s, RTT {state.rtt_ms:.1f} ms" if state
                    else f"not measured yet ({router.monitor.last_error})")
        print(f"edgecloud edge route: ready: edge {settings.edge_url} ({settings.edge_model}), cloud "
              f"{settings.cloud_url} ({settings.cloud_model}); network {measured}; price {router.price.name}",
              flush=True)
        yield
        task.cancel()
        await router.close()

    app = FastAPI(title="edgecloud NetGPT router", lifespan=lifespan)

    def error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error" if status < 500
                                       else "server_error", "param": param, "code": code}}, status_code=status)

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": settings.served_model_name, "object": "model", "owned_by": "netgpt"}]}

    @app.get("/netgpt/state")
    async def state() -> dict[str, Any]:
        estimate = router.monitor.estimate
        return {
            "network": None if estimate is None else {"bandwidth_mbps": estimate.bandwidth_mbps,
                                                      "rtt_ms": estimate.rtt_ms},
            "probe_error": router.monitor.last_error,
            "price": router.price.name,
            "cloud_compute_s": router.policy.cloud_compute_s,
            "routes": router.counts,
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the body must be a JSON object (a chat completion request)")
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object (a chat completion request)")
        if body.get("model") != settings.served_model_name:
            return error(404, f"model {body.get('model')!r} does not exist; this router serves "
                         f"{settings.served_model_name!r}", "model", "model_not_found")
        try:
            answer = await router.route(body)
        except RouteError as failure:
            return error(502, str(failure), code="agents_unavailable")
        except httpx.HTTPStatusError as failure:
            return error(failure.response.status_code, failure.response.text[:500])
        if not body.get("stream"):
            return JSONResponse(answer.response, headers=answer.headers())

        async def events() -> AsyncIterator[bytes]:
            for data in sse_chunks(answer.response):
                yield f"data: {data}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=answer.headers())

    return app
