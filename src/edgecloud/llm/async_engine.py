"""The asyncio front end of the engine: what the OpenAI server drives.

Requests are validated and tokenized here (so errors raise where they belong; long prompts are
tokenized off the event loop), fanned out to the engine core through an ``EngineClient`` (a
thread, a process of its own, or a Ray actor), and the core's per-step deltas come back through
an ``OutputProcessor`` into one asyncio queue per request.

When the core dies, every in-flight request ends with ``EngineDeadError``, ``healthy`` turns
False, and the core is restarted (at most ``restart_limit`` times within ``restart_window_s``;
past that ``on_fatal`` is called and the engine stays down).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from edgecloud.llm.config import EngineConfig
from edgecloud.llm.core_client import EngineClient, make_client
from edgecloud.llm.engine_core import EngineInfo
from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.model_source import ModelSource, resolve_model
from edgecloud.llm.output_processor import EngineDeadError, EngineError, OutputProcessor, Prompt
from edgecloud.llm.outputs import EngineCoreOutputs, EngineStats, OutputKind, RequestOutput
from edgecloud.llm.request import KVTransferParams
from edgecloud.llm.sampling_params import SamplingParams
from edgecloud.llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

__all__ = ["AsyncEngine", "EngineDeadError", "EngineError"]

# Prompts longer than this many characters are tokenized on a worker thread, not the event loop.
_TOKENIZE_INLINE_CHARS = 4096


class AsyncEngine:
    def __init__(
        self,
        config: EngineConfig,
        core: str = "thread",
        restart_limit: int = 3,
        restart_window_s: float = 300.0,
        client_factory: Callable[[EngineConfig, ModelSource], EngineClient] | None = None,
    ) -> None:
        self.config = config
        self.source = resolve_model(config.model)
        self.tokenizer = Tokenizer(self.source.directory, chat_template=config.chat_template)
        self.core_kind = core
        # How a core is started (and restarted): by kind, or by a caller that needs options the kinds
        # do not take (the cluster: a start timeout per instance, a Ray actor's CPUs).
        self.client_factory = client_factory
        self.restart_limit = restart_limit
        self.restart_window_s = restart_window_s
        self.client: EngineClient | None = None
        self.info: EngineInfo | None = None
        self.processor: OutputProcessor | None = None
        self._streams: dict[str, asyncio.Queue[RequestOutput | Exception]] = {}
        self._stats: EngineStats | None = None
        self._restarts: deque[float] = deque()
        self._restarting: asyncio.Task[None] | None = None
        self.dead_reason: str | None = None
        self.on_fatal: Callable[[str], None] | None = None
        self.stopping = False
        self._starting: asyncio.Lock | None = None

    # -- what the server reads ------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.source.name

    def _require_info(self) -> EngineInfo:
        if self.info is None:
            raise EngineError("the engine has not started")
        return self.info

    @property
    def max_model_len(self) -> int:
        return self._require_info().max_model_len

    @property
    def generation_defaults(self) -> dict[str, float]:
        return self._require_info().generation_defaults

    @property
    def healthy(self) -> bool:
        return self.info is not None and self.dead_reason is None and not self.stopping

    def stats(self) -> EngineStats:
        """The core's counters as of its last step (pushed with every batch of outputs)."""
        if self._stats is None:
            info = self.info
            blocks = info.num_blocks if info else 0
            return EngineStats(0, 0, blocks, blocks, 0.0, 0, 0, 0, 0, 0)
        return self._stats

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts the engine core (loading the model); concurrent callers share one start."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self.client is not None:
                return
            if self.client_factory is not None:
                client = self.client_factory(self.config, self.source)
            else:
                client = make_client(self.core_kind, self.config, self.source)
            self.info = await client.start(self._on_outputs, self._on_dead)
            self.client = client
            self.processor = OutputProcessor(self.tokenizer, self.info)
            self.dead_reason = None

    async def shutdown(self) -> None:
        self.stopping = True
        if self._restarting is not None:
            self._restarting.cancel()
        if self.client is not None:
            await self.client.shutdown()
            self.client = None
        self._fail_all(EngineError("engine shut down"))

    def _on_outputs(self, batch: EngineCoreOutputs) -> None:
        if batch.stats is not None:
            self._stats = batch.stats
        if self.processor is None:
            return
        results, to_abort = self.processor.process(batch.outputs, time.monotonic())
        for out in results:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put_nowait(out)
        if to_abort and self.client is not None:
            self.client.abort(to_abort)

    def _on_dead(self, reason: str) -> None:
        if self.stopping:
            return
        self.dead_reason = reason
        log.error("%s; failing %d in-flight requests", reason, len(self._streams))
        self._fail_all(EngineDeadError(reason))
        self.processor = None
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > self.restart_window_s:
            self._restarts.popleft()
        if len(self._restarts) >= self.restart_limit:
            message = f"{reason}; restarted {len(self._restarts)} times in {self.restart_window_s:.0f} s, giving up"
            log.critical("%s", message)
            if self.on_fatal is not None:
                self.on_fatal(message)
            return
        self._restarts.append(now)
        self._restarting = asyncio.ensure_future(self._restart())

    async def _restart(self) -> None:
        old, self.client = self.client, None
        if old is not None:
            await old.shutdown()
        log.warning("restarting the engine core")
        try:
            await self.start()
        except Exception as error:
            log.critical("the engine core could not be restarted: %s", error)
            if self.on_fatal is not None:
                self.on_fatal(f"the engine core could not be restarted: {error}")
            return
        log.warning("engine core restarted")

    def _fail_all(self, error: Exception) -> None:
        for stream in self._streams.values():
            stream.put_nowait(error)

    # -- requests -------------------------------------------------------------------------------

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Tokenizes; long texts on a worker thread so the event loop keeps streaming."""
        if len(text) <= _TOKENIZE_INLINE_CHARS:
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return await asyncio.to_thread(self.tokenizer.encode, text, add_special_tokens)

    async def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        request_id: str,
        priority: int = 0,
        *,
        service_tier: str = "default",
        adapter_id: str | None = None,
        cache_salt: str | None = None,
        session_id: str | None = None,
        kv_transfer: KVTransferParams | None = None,
        output_kind: OutputKind = OutputKind.CUMULATIVE,
    ) -> AsyncIterator[RequestOutput]:
        """Yields outputs as tokens arrive (``output_kind``); the last one has ``finished`` set.
        Raises ``InvalidRequestError`` for a bad request and ``EngineError`` when the engine fails
        it. Leaving the iteration early (client gone, task cancelled) aborts the request."""
        if self.client is None and self.dead_reason is None:
            await self.start()
        if self.client is None or self.processor is None:
            raise EngineDeadError(self.dead_reason or "the engine is not running")
        ids = await self.encode(prompt) if isinstance(prompt, str) and prompt else None
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", "request_id")
        processor, client = self.processor, self.client
        core_requests = processor.add(
            request_id, prompt, params, time.monotonic(), kind=output_kind, priority=priority,
            service_tier=service_tier, adapter_id=adapter_id, cache_salt=cache_salt, session_id=session_id,
            kv_transfer=kv_transfer, prompt_token_ids=ids,
        )
        stream: asyncio.Queue[RequestOutput | Exception] = asyncio.Queue()
        self._streams[request_id] = stream
        client.add_requests(core_requests)
        finished = False
        try:
            while True:
                item = await stream.get()
                if isinstance(item, Exception):
                    finished = True
                    raise item
                if item.error is not None:
                    finished = item.finished
                    raise item.error
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished and self.processor is processor:
                client.abort(processor.core_ids(request_id))
                processor.abort(request_id)

    async def abort(self, request_id: str) -> None:
        if self.client is not None and self.processor is not None:
            self.client.abort(self.processor.core_ids(request_id))

    async def control(self, op: str, **args: Any) -> Any:
        if self.client is None:
            raise EngineDeadError(self.dead_reason or "the engine is not running")
        return await self.client.control(op, **args)
