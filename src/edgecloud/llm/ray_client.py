"""The engine core as a Ray actor: how the cluster places engine instances on the machines of a
Ray cluster (``ray start --head`` on one, ``ray start --address HEAD:6379`` on the others).

The actor runs the same ``CoreService`` loop as the core's own process, on a thread of the actor.
Messages travel in the same msgpack encoding as over ZMQ: the front end sends numbered messages
(the actor applies them in order) and long-polls for what the core produced. A dead actor (killed,
its node lost) surfaces as ``RayActorError`` on the next poll, and ``on_dead`` runs.

Ray is imported only here, so nothing else in the engine needs it installed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import logging
import queue
import threading
from typing import Any

from edgecloud.llm.config import EngineConfig
from edgecloud.llm.core_client import EngineClient, OnDead, OnOutputs
from edgecloud.llm.core_proc import CoreService
from edgecloud.llm.engine_core import EngineCore, EngineInfo
from edgecloud.llm.messages import (
    ControlReply,
    FromCore,
    Outputs,
    Shutdown,
    ToCore,
    decode_from_core,
    decode_to_core,
    encode,
)
from edgecloud.llm.model_source import ModelSource

log = logging.getLogger(__name__)


class EngineCoreActor:
    """Holds an ``EngineCore`` inside a Ray actor and steps it on a thread of its own."""

    def __init__(self, config: EngineConfig, source: ModelSource) -> None:
        self.core = EngineCore(config, source)
        self._outbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._inbox: list[tuple[int, bytes]] = []  # a heap by sequence number
        self._next = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._calls: queue.SimpleQueue[tuple[str, dict[str, Any], concurrent.futures.Future[Any]]] = (
            queue.SimpleQueue()
        )
        self.service = CoreService(self.core, lambda message: self._outbox.put(encode(message)))
        self._thread = threading.Thread(target=self._run, name="edgecloud-engine-core", daemon=True)
        self._thread.start()

    def info(self) -> EngineInfo:
        return self.core.info

    def send(self, seq: int, data: bytes) -> None:
        with self._lock:
            heapq.heappush(self._inbox, (seq, data))
        self._wake.set()

    def call(self, op: str, args: dict[str, Any]) -> Any:
        """Runs a control operation (``EngineCore.control``) on the core's thread, between steps,
        and returns its result as a Ray value. Unlike a ``Control`` message, whose reply comes
        back through the front end's poll, the result stays in Ray: passed as an argument to another
        actor's ``call`` it travels through the object store straight to that actor (how the
        cluster hands KV blocks from one instance to another without relaying them)."""
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._calls.put((op, args, done))
        self._wake.set()
        return done.result()

    def _run_calls(self) -> bool:
        ran = False
        while True:
            try:
                op, args, done = self._calls.get_nowait()
            except queue.Empty:
                return ran
            ran = True
            try:
                done.set_result(self.core.control(op, args))
            except Exception as error:  # the caller's ray.get raises it
                done.set_exception(error)

    def poll(self, timeout_s: float) -> list[bytes]:
        """What the core produced since the last poll, waiting up to ``timeout_s`` for something."""
        try:
            first = self._outbox.get(timeout=timeout_s)
        except queue.Empty:
            return []
        batch = [first]
        while True:
            try:
                batch.append(self._outbox.get_nowait())
            except queue.Empty:
                return batch

    def _take(self) -> list[ToCore]:
        messages = []
        with self._lock:
            while self._inbox and self._inbox[0][0] == self._next:
                messages.append(decode_to_core(heapq.heappop(self._inbox)[1]))
                self._next += 1
        return messages

    def _run(self) -> None:
        service, core = self.service, self.core
        while not service.stopped:
            produced = []
            messages = self._take()
            called = self._run_calls()
            for message in messages:
                produced += service.handle(message)
            if core.has_unfinished() and not service.stopped:
                service.publish(produced + core.step())
                continue
            if messages:
                service.publish(produced)
            if called:
                continue  # a call may have been queued while this one ran
            self._wake.wait(timeout=0.5)
            self._wake.clear()


class RayClient(EngineClient):
    """An ``EngineClient`` whose core is a Ray actor. Uses the Ray cluster this process is connected
    to (``ray.init(address=...)``), or starts a local one."""

    def __init__(self, config: EngineConfig, source: ModelSource, num_cpus: float = 1.0) -> None:
        super().__init__(config, source)
        self.num_cpus = num_cpus
        self.actor: Any = None
        self._seq = 0
        self._poller: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self, on_outputs: OnOutputs, on_dead: OnDead) -> EngineInfo:
        import ray

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        actor_class = ray.remote(num_cpus=self.num_cpus, max_concurrency=4)(EngineCoreActor)
        self.actor = actor_class.remote(self.config, self.source)
        try:
            self.info = await self.actor.info.remote()
        except ray.exceptions.RayActorError as error:
            raise RuntimeError(f"the engine core actor failed to start: {error}") from None
        self._poller = asyncio.ensure_future(self._poll(on_outputs, on_dead))
        return self.info

    async def _poll(self, on_outputs: OnOutputs, on_dead: OnDead) -> None:
        import ray

        while not self._closing:
            try:
                batch = await self.actor.poll.remote(0.2)
            except (ray.exceptions.RayActorError, ray.exceptions.RaySystemError) as error:
                if self._closing:
                    return
                reason = f"engine core actor died: {type(error).__name__}"
                log.error("%s", reason)
                self._fail_pending(reason)
                on_dead(reason)
                return
            for data in batch:
                message: FromCore = decode_from_core(data)
                if isinstance(message, Outputs):
                    on_outputs(message.batch)
                elif isinstance(message, ControlReply):
                    self._reply(message)

    def _send(self, message: ToCore) -> None:
        self.actor.send.remote(self._seq, encode(message))
        self._seq += 1

    async def shutdown(self) -> None:
        import ray

        self._closing = True
        if self.actor is not None:
            try:
                self._send(Shutdown())
                if self._poller is not None:
                    await asyncio.wait_for(self._poller, 2.0)
            except (TimeoutError, ray.exceptions.RayActorError):
                pass
            ray.kill(self.actor)
            self.actor = None
