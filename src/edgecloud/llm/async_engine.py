"""The asyncio front of the engine: a background thread steps the engine while coroutines add,
stream and abort requests.

Requests are validated and tokenized in the caller (so errors raise where they belong), then
handed to the engine thread through a command queue; outputs come back to each request's
asyncio queue with ``call_soon_threadsafe``. A failing step fails the requests in it, never the
engine: their blocks are freed and the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from edgecloud.llm.config import EngineConfig
from edgecloud.llm.engine import EngineStats, LLMEngine, Prompt
from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.outputs import RequestOutput
from edgecloud.llm.sampling_params import SamplingParams
from edgecloud.llm.sequence import Request
from edgecloud.llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The engine failed while running a request (not the caller's fault)."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | Exception]

    def put(self, item: RequestOutput | Exception) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.engine = LLMEngine(config)
        # One ordered queue of commands for the engine thread: a Request to add, or an id to abort.
        self._commands: queue.SimpleQueue[Request | str] = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._stats = self.engine.stats()

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def generation_defaults(self) -> dict[str, float]:
        """Sampling defaults from the model's generation_config.json (see read_generation_defaults)."""
        return self.engine.generation_defaults

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def stats(self) -> EngineStats:
        """The engine's counters as of its last step (a snapshot the engine thread publishes, so
        readers on other threads never see its queues mid-change)."""
        return self._stats

    async def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgecloud-engine", daemon=True)
            self._thread.start()

    async def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    async def generate(
        self, prompt: Prompt, params: SamplingParams, request_id: str, priority: int = 0,
        lora_name: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yields cumulative outputs as tokens arrive; the last one has ``finished`` set.
        Leaving the iteration early (client gone, task cancelled) aborts the request."""
        if self._thread is None:
            await self.start()
        request = self.engine.make_request(request_id, prompt, params, priority, lora_name=lora_name)
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", "request_id")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        self._send(request)
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, Exception):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self._send(request_id)
            self._streams.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        self._send(request_id)

    def _send(self, command: Request | str) -> None:
        self._commands.put(command)
        self._wake.set()

    # -- engine thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._drain_commands()
            self._stats = self.engine.stats()
            if not self.engine.has_unfinished():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:
                log.exception("engine step failed; failing the requests it held")
                self._fail_all(EngineError(f"engine step failed: {exc}"))
                continue
            for out in outputs:
                stream = self._streams.get(out.request_id)
                if stream is not None:
                    stream.put(out)
            # Hand the GIL to the event loop between steps, so the tokens just queued go out (and
            # new requests get in) now rather than after the next step's Python work.
            time.sleep(0)
        for request_id in list(self.engine.requests):
            self.engine.abort(request_id)
        self._fail_all(EngineError("engine shut down"))

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, str):
                out = self.engine.abort(command)
                stream = self._streams.get(command)
                if out is not None and stream is not None:
                    stream.put(out)
                continue
            try:
                self.engine.add(command)
            except Exception as exc:
                stream = self._streams.get(command.request_id)
                if stream is not None:
                    stream.put(exc)

    def _fail_all(self, error: Exception) -> None:
        for request_id in list(self.engine.requests):
            self.engine.abort(request_id)
        for stream in list(self._streams.values()):
            stream.put(error)
