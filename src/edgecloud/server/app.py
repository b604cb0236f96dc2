"""The OpenAI-compatible HTTP API over ``AsyncEngine``: completions, chat completions, models,
health and Prometheus metrics.

Each HTTP request becomes one engine request per prompt. Streamed answers are Server-Sent Events
of OpenAI's chunk objects (framed by FastAPI's SSE support); a client that goes away, mid-stream
or while waiting for a non-streamed answer, has its engine requests aborted so their KV blocks
return to the pool at once. A streamed request is started (validated and admitted by the
engine) before the response headers go out, so a bad request is a 400, never a broken stream.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, format_sse_event
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.background import BackgroundTask

from edgecloud.llm import (
    AsyncEngine,
    CompletionOutput,
    EngineDeadError,
    EngineStats,
    InvalidRequestError,
    OutputKind,
    RequestOutput,
    SamplingParams,
    TokenLogprob,
)
from edgecloud.llm.structured import StructuredOutputsParams
from edgecloud.server.errors import APIError, install_error_handlers
from edgecloud.server.lora import LoRAAdapters, install_lora_routes
from edgecloud.server.metrics import ServerMetrics
from edgecloud.server.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from edgecloud.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingRequest
from edgecloud.server.tools import (
    ToolCallStream,
    ToolSet,
    parse_tool_calls,
    prompt_messages,
    response_format_constraint,
    template_renders_tools,
    tool_call_constraint,
    validate_tools,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# OpenAI's floor for a logprob that underflowed to -inf (JSON has no infinity).
_LOGPROB_FLOOR = -9999.0


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    max_waiting: int = 256
    max_body_bytes: int = 8 * 1024 * 1024
    graceful_timeout_s: float = 30.0
    log_level: str = "info"
    retry_after_s: int = 1
    engine_core: str = "process"  # process | thread
    url: str = ""  # where the server listens, once bound (for the ready line)


@dataclass
class ChatTurn:
    """A chat request that a :class:`ChatContext` has taken over (a turn of a session whose history
    the server keeps): the prompt to run instead of the rendered ``messages``; ``commit``, called
    with the finished answer before the response goes out, returns headers to add to it (and may
    raise ``APIError``: the client then gets that error, not the answer); ``release``, called once
    the request is over, answered or not."""

    prompt_token_ids: list[int]
    commit: Callable[[CompletionOutput], Awaitable[dict[str, str]]]
    release: Callable[[], Awaitable[None]]


class ChatContext(Protocol):
    """An optional hook of the server that keeps conversation state (``edgecloud.edge`` is one).

    ``prepare`` sees each chat request after its model and options are checked. It returns None for
    a request it leaves alone (served as usual) or a :class:`ChatTurn`; it may raise ``APIError``.
    A turn is answered unstreamed with ``n = 1``: a streamed or ``n > 1`` request it takes is a 400."""

    async def prepare(self, request: Request, body: ChatCompletionRequest) -> ChatTurn | None: ...


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first; then cancel it (which aborts the
    engine requests it drives) and raise ``ClientDisconnected``. ``work`` runs in the caller's
    task, a watcher cancels that task on disconnect: no task of its own for ``work``, whose
    completion would cost two more event-loop turns before the caller resumes (the first token
    of every streamed answer waits through them, behind every other stream's chunks)."""
    caller = asyncio.current_task()
    assert caller is not None, "until_disconnect runs in a task"
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        await _wait_disconnect(request)
        disconnected = True
        caller.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not disconnected:
            raise
        caller.uncancel()
        raise ClientDisconnected from None
    finally:
        watcher.cancel()


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def merge_streams(streams: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several engine streams as ``(stream index, output)``; closing the merged
    stream cancels (and so aborts) the ones still running."""
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for item in stream:
                await queue.put((index, item))
        except Exception as error:
            await queue.put((index, error))
            return
        await queue.put((index, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _indexed(stream: AsyncIterator[RequestOutput]) -> AsyncIterator[tuple[int, RequestOutput]]:
    try:
        async for out in stream:
            yield 0, out
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


@dataclass
class _ChoiceState:
    """How much of one completion has been streamed."""

    text_sent: int = 0
    tokens_sent: int = 0
    started: bool = False
    finished: bool = False
    tool_stream: ToolCallStream | None = None  # a chat answer parsed for tool calls as it streams


@dataclass
class _Job:
    """One HTTP generation request: its engine requests and how to shape answers."""

    request_id: str
    received_at: float
    created: int
    prompts: list[list[int]]
    params: SamplingParams
    priority: int
    service_tier: str
    cache_salt: str | None
    chat: bool
    include_usage: bool
    logprobs: int | None
    choices: dict[tuple[int, int], _ChoiceState] = field(default_factory=dict)
    tools: ToolSet | None = None  # chat answers parsed for tool calls
    adapter_id: str | None = None  # the LoRA adapter the request's model names

    @property
    def response_id(self) -> str:
        return f"{'chatcmpl' if self.chat else 'cmpl'}-{self.request_id}"

    @property
    def object_name(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    def choice_index(self, prompt_index: int, completion: CompletionOutput) -> int:
        return prompt_index * self.params.n + completion.index


class OpenAIServer:
    """The server's state and its endpoint logic; ``build_app`` wires it into FastAPI."""

    def __init__(self, engine: AsyncEngine, settings: ServerSettings, chat_context: ChatContext | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.chat_context = chat_context
        self.model_name = settings.served_model_name or engine.model_name
        self.metrics = ServerMetrics(self.engine_stats, self.model_name)
        self.draining = False
        self.pending = 0  # admitted engine requests that have not produced a token yet
        self._ids = itertools.count()
        self.created = int(time.time())
        self.adapters = LoRAAdapters(engine, self.model_name)

    def engine_stats(self) -> EngineStats:
        return self.engine.stats()

    # -- admission and generation -------------------------------------------------------------

    def check_model(self, model: str) -> str | None:
        """The LoRA adapter ``model`` names (None: the base model); 404 for any other name."""
        return self.adapters.resolve(model)

    def admit(self, num_requests: int) -> None:
        retry = {"Retry-After": str(self.settings.retry_after_s)}
        if self.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down", headers=retry)
        if not self.engine.healthy:
            reason = self.engine.dead_reason or "the engine is not running"
            raise APIError(503, f"the engine is unavailable ({reason}); retry later", code="engine_unavailable",
                           headers=retry)
        if self.pending + num_requests > self.settings.max_waiting:
            raise APIError(
                503,
                f"server overloaded: {self.pending} requests are waiting (limit {self.settings.max_waiting}); "
                "retry later",
                code="overloaded",
                headers=retry,
            )

    def check_lengths(self, ids: list[int], max_tokens: int | None, param: str) -> int:
        """Returns the output budget: ``max_tokens``, or whatever the context leaves."""
        limit = self.engine.max_model_len
        if not ids:
            raise APIError(400, f"{param} must not be empty", param, "invalid_value")
        if len(ids) >= limit:
            raise APIError(
                400,
                f"{param} has {len(ids)} tokens but this model's context is {limit} tokens "
                "(the prompt must be shorter to leave room for output)",
                param, "context_length_exceeded",
            )
        if max_tokens is None:
            return limit - len(ids)
        if len(ids) + max_tokens > limit:
            raise APIError(
                400,
                f"max_tokens must be <= {limit - len(ids)} for this prompt: the context is {limit} tokens "
                f"and the prompt uses {len(ids)} (got {max_tokens})",
                "max_tokens", "context_length_exceeded",
            )
        return max_tokens

    async def _engine_stream(
        self, engine_id: str, job: _Job, prompt: list[int], kind: OutputKind
    ) -> AsyncIterator[RequestOutput]:
        params = job.params
        self.pending += 1
        waiting = True
        finished = False
        num_tokens: dict[int, int] = {}
        done: set[int] = set()
        try:
            async for out in self.engine.generate(
                prompt, params, request_id=engine_id, priority=job.priority, service_tier=job.service_tier,
                cache_salt=job.cache_salt, output_kind=kind, adapter_id=job.adapter_id,
            ):
                if waiting:
                    waiting = False
                    self.pending -= 1
                for completion in out.outputs:
                    num_tokens[completion.index] = num_tokens.get(completion.index, 0) + len(completion.token_ids)
                    if completion.finish_reason is not None:
                        done.add(completion.index)
                        self.metrics.finished.labels(self.model_name, completion.finish_reason).inc()
                finished = out.finished
                if finished:
                    self.metrics.observe_engine(out, job.received_at, max(num_tokens.values(), default=0))
                yield out
        finally:
            if waiting:
                self.pending -= 1
            if not finished:
                self.metrics.finished.labels(self.model_name, "abort").inc(params.n - len(done))

    def start(self, job: _Job, stream: bool) -> AsyncIterator[tuple[int, RequestOutput]]:
        self.admit(len(job.prompts))
        kind = OutputKind.DELTA if stream else OutputKind.FINAL_ONLY
        streams = [
            self._engine_stream(f"{job.request_id}-{next(self._ids)}", job, ids, kind) for ids in job.prompts
        ]
        # One prompt (the usual case) is iterated in the caller's task: no pump task and queue
        # hop per token, which an event loop serving hundreds of streams feels.
        return merge_streams(streams) if len(streams) > 1 else _indexed(streams[0])

    # -- answers ------------------------------------------------------------------------------

    def token_text(self, token_id: int) -> str:
        return self.engine.tokenizer.decode([token_id], skip_special_tokens=False)

    def completion_logprobs(self, entries: list[TokenLogprob], text_offset: int) -> dict[str, Any]:
        tokens = [self.token_text(e.token_id) for e in entries]
        offsets = []
        for token in tokens:
            offsets.append(text_offset)
            text_offset += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": [_finite(e.logprob) for e in entries],
            "top_logprobs": [{self.token_text(t): _finite(lp) for t, lp in e.top} for e in entries],
            "text_offset": offsets,
        }

    def chat_logprobs(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            text = self.token_text(token_id)
            return {"token": text, "logprob": _finite(logprob), "bytes": list(text.encode())}

        return {
            "content": [
                {**entry(e.token_id, e.logprob), "top_logprobs": [entry(t, lp) for t, lp in e.top]} for e in entries
            ]
        }

    def _logprobs(self, job: _Job, completion: CompletionOutput, start: int, end: int, offset: int) -> Any:
        if job.logprobs is None or completion.logprobs is None:
            return None
        entries = completion.logprobs[start:end]
        return self.chat_logprobs(entries) if job.chat else self.completion_logprobs(entries, offset)

    def full_response(self, job: _Job, finals: dict[int, RequestOutput]) -> dict[str, Any]:
        choices = []
        prompt_tokens = completion_tokens = 0
        for prompt_index in range(len(job.prompts)):
            out = finals[prompt_index]
            prompt_tokens += len(out.prompt_token_ids)
            for completion in out.outputs:
                completion_tokens += len(completion.token_ids)
                choice: dict[str, Any] = {
                    "index": job.choice_index(prompt_index, completion),
                    "logprobs": self._logprobs(job, completion, 0, len(completion.token_ids), 0),
                    "finish_reason": completion.finish_reason,
                    "stop_reason": completion.stop_reason,
                }
                if job.chat:
                    choice["message"] = {"role": "assistant", "content": completion.text}
                    if job.tools is not None and job.tools.parses_calls:
                        content, calls = parse_tool_calls(completion.text, _names(job.tools))
                        if calls:
                            choice["message"] = {"role": "assistant", "content": content, "tool_calls": calls}
                            if completion.finish_reason == "stop":
                                choice["finish_reason"] = "tool_calls"
                else:
                    choice["text"] = completion.text
                choices.append(choice)
        choices.sort(key=lambda c: c["index"])
        return {
            "id": job.response_id,
            "object": job.object_name,
            "created": job.created,
            "model": job.adapter_id or self.model_name,
            "service_tier": job.service_tier,
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        }

    def chunk(self, job: _Job, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {
            "id": job.response_id,
            "object": f"{job.object_name}.chunk" if job.chat else job.object_name,
            "created": job.created,
            "model": job.adapter_id or self.model_name,
            "service_tier": job.service_tier,
            "choices": choices,
        }
        if job.include_usage:
            body["usage"] = usage
        return json.dumps(body)

    def delta_choices(self, job: _Job, prompt_index: int, out: RequestOutput) -> list[dict[str, Any]]:
        """One chunk's choices from the engine's delta output: each completion's new text and tokens.
        A choice goes out for every step that made tokens, even with no text yet (held back while it
        may begin a stop string, or special tokens): clients time tokens by chunks."""
        choices = []
        for completion in out.outputs:
            state = job.choices.setdefault((prompt_index, completion.index), _ChoiceState())
            if state.finished:
                continue
            choice: dict[str, Any] = {
                "index": job.choice_index(prompt_index, completion),
                "logprobs": self._logprobs(job, completion, 0, len(completion.token_ids), state.text_sent),
                "finish_reason": completion.finish_reason,
            }
            if job.chat:
                message: dict[str, Any] = {"content": completion.text}
                if job.tools is not None and job.tools.parses_calls:
                    message = self._tool_delta(job, state, completion, choice)
                if not state.started:
                    message = {"role": "assistant", **message}
                choice["delta"] = message
            else:
                choice["text"] = completion.text
                choice["stop_reason"] = completion.stop_reason
            state.text_sent += len(completion.text)
            state.tokens_sent += len(completion.token_ids)
            state.started = True
            state.finished = completion.finished
            choices.append(choice)
        return choices

    @staticmethod
    def _tool_delta(job: _Job, state: _ChoiceState, completion: CompletionOutput, choice: dict[str, Any]
                    ) -> dict[str, Any]:
        """A chat delta with text that may begin a tool call held back and each completed call as a
        ``tool_calls`` entry (one delta carries a whole call; OpenAI's clients accumulate them)."""
        assert job.tools is not None
        if state.tool_stream is None:
            state.tool_stream = ToolCallStream(_names(job.tools))
        first = len(state.tool_stream.calls)
        content, calls = state.tool_stream.feed(completion.text, final=completion.finished)
        message: dict[str, Any] = {"content": content}
        if calls:
            message["tool_calls"] = [{"index": first + k, **call} for k, call in enumerate(calls)]
        if completion.finished and state.tool_stream.calls and completion.finish_reason == "stop":
            choice["finish_reason"] = "tool_calls"
        return message

    async def sse(
        self, job: _Job, first: tuple[int, RequestOutput], rest: AsyncIterator[tuple[int, RequestOutput]]
    ) -> AsyncIterator[bytes]:
        """The SSE body. It also times the answer: the response sends each chunk before asking for
        the next, so when a ``yield`` returns, the chunk it gave is with the socket."""
        finals: dict[int, RequestOutput] = {}
        first_sent: float | None = None
        failed = False

        async def outputs() -> AsyncIterator[tuple[int, RequestOutput]]:
            yield first
            async for item in rest:
                yield item

        num_tokens: dict[tuple[int, int], int] = {}
        try:
            async for prompt_index, out in outputs():
                for completion in out.outputs:
                    key = (prompt_index, completion.index)
                    num_tokens[key] = num_tokens.get(key, 0) + len(completion.token_ids)
                if out.finished:
                    finals[prompt_index] = out
                choices = self.delta_choices(job, prompt_index, out)
                if choices:
                    yield format_sse_event(data_str=self.chunk(job, choices))
                    if first_sent is None:
                        first_sent = time.monotonic()
                        # at once: a stream that ends early (disconnect, error) still had its first token
                        self.metrics.observe_first_chunk(job.received_at, first_sent)
        except Exception as error:
            # Headers are gone: the error travels in the stream, as OpenAI's API does.
            failed = True
            log.error("stream %s failed: %s", job.request_id, error)
            code = "engine_unavailable" if isinstance(error, EngineDeadError) else "engine_error"
            body = APIError(500, f"generation failed: {error}", code=code).body()
            yield format_sse_event(data_str=json.dumps(body))
        else:
            if job.include_usage:
                prompt_tokens = sum(len(o.prompt_token_ids) for o in finals.values())
                completion_tokens = sum(num_tokens.values())
                yield format_sse_event(data_str=self.chunk(job, [], _usage(prompt_tokens, completion_tokens)))
        finally:
            await rest.aclose()  # type: ignore[attr-defined]
        yield format_sse_event(data_str="[DONE]")
        if not failed and first_sent is not None:
            longest = max(num_tokens.values(), default=0)
            self.metrics.observe_stream(job.received_at, first_sent, time.monotonic(), longest)

    async def run(self, request: Request, job: _Job, stream: bool, turn: ChatTurn | None = None) -> Response:
        outputs = self.start(job, stream)
        try:
            if not stream:
                finals = await until_disconnect(request, _collect(outputs))
                headers = await turn.commit(finals[0].outputs[0]) if turn is not None else None
                return JSONResponse(
                    self.full_response(job, finals), headers=headers, background=BackgroundTask(self._sent, job)
                )
            first = await until_disconnect(request, anext(outputs))
        except ClientDisconnected:
            await outputs.aclose()  # type: ignore[attr-defined]
            log.info("client of %s disconnected; request aborted", job.request_id)
            return Response(status_code=499)
        except BaseException:
            await outputs.aclose()  # type: ignore[attr-defined]
            raise
        return EventSourceResponse(self.sse(job, first, outputs), headers={"Cache-Control": "no-cache"})

    async def _sent(self, job: _Job) -> None:
        """An unstreamed answer's background task, which runs once its body is with the socket
        (a coroutine: a plain function would run on the thread pool, later)."""
        self.metrics.observe_unstreamed(job.received_at, time.monotonic())

    # -- endpoints ----------------------------------------------------------------------------

    def new_job(self, request: Request, body: SamplingRequest, prompts: list[list[int]], params: SamplingParams,
                chat: bool, logprobs: int | None, adapter_id: str | None = None) -> _Job:
        return _Job(
            request_id=request.state.request_id,
            received_at=request.state.received_at,
            created=int(time.time()),
            prompts=prompts,
            params=params,
            priority=body.priority,
            service_tier=body.engine_service_tier,
            cache_salt=body.cache_salt,
            chat=chat,
            include_usage=body.include_usage,
            logprobs=logprobs,
            adapter_id=adapter_id,
        )

    async def completions(self, request: Request, body: CompletionRequest) -> Response:
        adapter_id = self.check_model(body.model)
        for name, unsupported in (("echo", body.echo), ("suffix", body.suffix is not None)):
            if unsupported:
                raise APIError(400, f"{name} is not supported by this server", name, "unsupported")
        if body.best_of is not None and body.best_of != body.n:
            raise APIError(400, f"best_of must equal n ({body.n}) on this server, got {body.best_of}", "best_of")
        prompts = [await self.engine.encode(p) if isinstance(p, str) else p for p in body.prompts()]
        budgets = {self.check_lengths(ids, body.max_tokens or 16, "prompt") for ids in prompts}
        params = body.sampling_params(min(budgets), body.logprobs, self.engine.generation_defaults)
        job = self.new_job(request, body, prompts, params, chat=False, logprobs=body.logprobs, adapter_id=adapter_id)
        return await self.run(request, job, body.stream)

    async def chat_completions(self, request: Request, body: ChatCompletionRequest) -> Response:
        adapter_id = self.check_model(body.model)
        tools = validate_tools(body.tools, body.tool_choice, body.parallel_tool_calls)
        constraint = _checked(response_format_constraint(body.response_format), "response_format")
        tool_constraint = _checked(tool_call_constraint(tools), "tools")
        if constraint is not None and tool_constraint is not None:
            raise APIError(400, f"response_format {body.response_format.get('type')!r} cannot be combined with "
                           f"tool_choice {tools.choice!r}: both constrain the whole answer", "response_format")
        structured = constraint or tool_constraint
        turn = await self.chat_context.prepare(request, body) if self.chat_context is not None else None
        if turn is None:
            tokenizer = self.engine.tokenizer
            template_tools = template_renders_tools(tokenizer.chat_templates)
            text = tokenizer.apply_chat_template(
                prompt_messages([m.template_dict() for m in body.messages], tools, template_tools),
                add_generation_prompt=body.add_generation_prompt,
                tools=tools.tools if tools.in_prompt and template_tools else None,
            )
            # The template writes any BOS itself; the tokenizer must not add another.
            ids = await self.engine.encode(text, add_special_tokens=False)
            return await self._chat(request, body, ids, None, tools, structured, adapter_id)
        try:
            # a session turn's prompt is the context the store keeps, which has no tools in it
            for name, unsupported in (("stream", body.stream), ("n", body.n != 1), ("tools", tools.in_prompt)):
                if unsupported:
                    raise APIError(400, f"{name} is not supported for a session turn (one unstreamed answer, "
                                   "no tools)", name, "unsupported")
            return await self._chat(request, body, turn.prompt_token_ids, turn, tools, structured,
                                    adapter_id)
        finally:
            await turn.release()

    async def _chat(self, request: Request, body: ChatCompletionRequest, ids: list[int], turn: ChatTurn | None,
                    tools: ToolSet, structured: StructuredOutputsParams | None, adapter_id: str | None = None
                    ) -> Response:
        max_tokens = self.check_lengths(ids, body.requested_max_tokens, "messages")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs set to true", "top_logprobs")
        params = body.sampling_params(max_tokens, logprobs, self.engine.generation_defaults)
        params.structured_outputs = structured
        job = self.new_job(request, body, [ids], params, chat=True, logprobs=logprobs, adapter_id=adapter_id)
        job.tools = tools if tools.parses_calls else None
        return await self.run(request, job, body.stream, turn)

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{
                "id": self.model_name,
                "object": "model",
                "created": self.created,
                "owned_by": "edgecloud",
                "max_model_len": self.engine.max_model_len,
            }, *self.adapters.model_cards(self.created, self.engine.max_model_len)],
        }


def _names(tools: ToolSet) -> set[str]:
    return {t["function"]["name"] for t in tools.tools}


def _checked(spec: StructuredOutputsParams | None, param: str) -> StructuredOutputsParams | None:
    """The constraint, compiled once here so that a grammar the library refuses is a 400 naming the
    request's field (the engine core checks again)."""
    if spec is not None:
        try:
            spec.check()
        except InvalidRequestError as error:
            raise APIError(400, f"{param}: {error}", param) from None
    return spec


async def _collect(outputs: AsyncIterator[tuple[int, RequestOutput]]) -> dict[int, RequestOutput]:
    finals: dict[int, RequestOutput] = {}
    async for prompt_index, out in outputs:
        if out.finished:
            finals[prompt_index] = out
    return finals


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else _LOGPROB_FLOOR


def build_app(
    engine: AsyncEngine,
    settings: ServerSettings,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    chat_context: ChatContext | None = None,
) -> FastAPI:
    """The ASGI app. Its lifespan starts the engine and, on shutdown, stops it. ``chat_context``
    keeps conversation state for chat requests it takes over (see :class:`ChatContext`)."""
    server = OpenAIServer(engine, settings, chat_context)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        await server.adapters.refresh()
        tokenizer = engine.tokenizer
        if tokenizer.has_chat_template:
            template = f"chat template: {tokenizer.chat_template_source}"
        else:
            template = "no chat template: /v1/chat/completions answers 400 until one is given with --chat-template"
            log.warning("model %s has no chat template (none in chat_template.jinja, tokenizer_config.json or the "
                        "GGUF metadata): /v1/chat/completions answers 400 until one is given with --chat-template "
                        "FILE; /v1/completions works", server.model_name)
        where = f" on {settings.url}" if settings.url else ""
        print(f"edgecloud serve: ready: {server.model_name}{where} (max_model_len {engine.max_model_len}; "
              f"{template})", flush=True)
        watcher = asyncio.ensure_future(server.metrics.watch_event_loop())
        yield
        watcher.cancel()
        server.draining = True
        await engine.shutdown()
        if on_shutdown is not None:
            await on_shutdown()

    app = FastAPI(title="edgecloud OpenAI-compatible server", lifespan=lifespan)
    app.state.server = server
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> Response:
        if server.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not engine.healthy:
            reason = engine.dead_reason or "the engine is not running"
            return JSONResponse({"status": "engine_unavailable", "reason": reason}, status_code=503,
                                headers={"Retry-After": str(settings.retry_after_s)})
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return server.models()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        return await server.completions(request, body)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        return await server.chat_completions(request, body)

    install_lora_routes(app, server.adapters)

    # Outermost first: every answer, a 413 included, carries the request id.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware, on_status=server.metrics.count_status)
    return app
