"""How a front end reaches its engine core: one ``EngineClient`` interface, with the core in a
thread of this process (``InprocClient``), in a process of its own (``MPClient``, the server's
default), or in a Ray actor (``edgecloud.llm.ray_client.RayClient``).

A client delivers the core's ``EngineCoreOutputs`` to ``on_outputs`` on the caller's event loop,
and calls ``on_dead`` once if the core stops unexpectedly (a crashed thread, a killed process),
so that the front end fails what was in flight instead of waiting for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import queue
import shutil
import sys
import tempfile
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from edgecloud.llm.config import EngineConfig
from edgecloud.llm.core_proc import CoreService, run_engine_core
from edgecloud.llm.engine_core import EngineCore, EngineInfo
from edgecloud.llm.errors import InvalidRequestError, ModelLoadError
from edgecloud.llm.messages import (
    AbortRequests,
    AddRequests,
    Control,
    ControlReply,
    Failed,
    FromCore,
    Outputs,
    Ready,
    Shutdown,
    ToCore,
    decode_from_core,
    encode,
)
from edgecloud.llm.model_source import ModelSource
from edgecloud.llm.output_processor import EngineDeadError, EngineError
from edgecloud.llm.outputs import EngineCoreOutputs
from edgecloud.llm.request import EngineCoreRequest

log = logging.getLogger(__name__)

OnOutputs = Callable[[EngineCoreOutputs], None]
OnDead = Callable[[str], None]


class EngineClient(ABC):
    def __init__(self, config: EngineConfig, source: ModelSource) -> None:
        self.config = config
        self.source = source
        self.info: EngineInfo | None = None
        self._calls = itertools.count()
        self._pending: dict[int, asyncio.Future[Any]] = {}

    @abstractmethod
    async def start(self, on_outputs: OnOutputs, on_dead: OnDead) -> EngineInfo:
        """Starts the core (loading the model); raises ``ModelLoadError``/``InvalidRequestError``
        when it cannot start."""

    @abstractmethod
    def _send(self, message: ToCore) -> None:
        """Hands a message to the core without waiting."""

    @abstractmethod
    async def shutdown(self) -> None: ...

    def add_requests(self, requests: list[EngineCoreRequest]) -> None:
        self._send(AddRequests(requests))

    def abort(self, request_ids: list[str]) -> None:
        if request_ids:
            self._send(AbortRequests(request_ids))

    async def control(self, op: str, **args: Any) -> Any:
        """Runs a control operation in the core (``EngineCore.control``) and returns its result."""
        call_id = next(self._calls)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            self._send(Control(call_id, op, args))
            return await future
        finally:
            self._pending.pop(call_id, None)

    def _reply(self, reply: ControlReply) -> None:
        future = self._pending.get(reply.call_id)
        if future is None or future.done():
            return
        if reply.error is None:
            future.set_result(reply.result)
        elif reply.invalid:
            future.set_exception(InvalidRequestError(reply.error, reply.error_param))
        else:
            future.set_exception(EngineError(reply.error))

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(EngineDeadError(reason))


class InprocClient(EngineClient):
    """The core in a thread of this process: tests, and callers that want no second process.
    The thread shares this process's GIL with its caller."""

    def __init__(self, config: EngineConfig, source: ModelSource, shutdown_timeout_s: float = 10.0) -> None:
        super().__init__(config, source)
        self.shutdown_timeout_s = shutdown_timeout_s
        self._inbox: queue.Queue[ToCore] = queue.Queue()  # not SimpleQueue: the core thread peeks into it
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.core: EngineCore | None = None

    async def start(self, on_outputs: OnOutputs, on_dead: OnDead) -> EngineInfo:
        loop = asyncio.get_running_loop()
        self.core = await asyncio.to_thread(EngineCore, self.config, self.source)

        def send(message: FromCore) -> None:
            if isinstance(message, Outputs):
                loop.call_soon_threadsafe(on_outputs, message.batch)
            elif isinstance(message, ControlReply):
                loop.call_soon_threadsafe(self._reply, message)

        def died(reason: str) -> None:
            self._fail_pending(reason)
            on_dead(reason)

        service = CoreService(self.core, send)
        self.core.interrupt = self._online_waiting  # between layers of a flex-only step
        self._thread = threading.Thread(
            target=self._run, args=(service, lambda reason: loop.call_soon_threadsafe(died, reason)),
            name="edgecloud-engine-core", daemon=True,
        )
        self._thread.start()
        self.info = self.core.info
        return self.info

    def _send(self, message: ToCore) -> None:
        self._inbox.put(message)
        self._wake.set()

    def _online_waiting(self) -> bool:
        """Whether a queued message adds a ``default``-tier request (asked by the core thread)."""
        with self._inbox.mutex:
            return any(isinstance(m, AddRequests) and any(r.service_tier == "default" for r in m.requests)
                       for m in self._inbox.queue)

    def _run(self, service: CoreService, on_dead: Callable[[str], None]) -> None:
        core = service.core
        try:
            while not service.stopped:
                produced = []
                handled = False
                while True:
                    try:
                        message = self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    handled = True
                    produced += service.handle(message)
                if core.has_unfinished() and not service.stopped:
                    service.publish(produced + core.step())
                    # Hand the GIL to the event loop between steps, so the tokens just queued go
                    # out (and new requests get in) now rather than after the next step's work.
                    time.sleep(0)
                    continue
                if handled:
                    service.publish(produced)
                self._wake.wait(timeout=0.5)
                self._wake.clear()
        except Exception as error:  # a bug outside a step: report, never vanish silently
            log.exception("engine core thread died")
            on_dead(f"engine core thread died: {type(error).__name__}: {error}")
        finally:
            core.close()

    async def shutdown(self) -> None:
        """Asks the core thread to stop and waits ``shutdown_timeout_s`` for it. A thread cannot be
        killed: one still running then (a step that never returns) is left behind, a daemon that
        does not keep the process alive, with a warning that shows where it is stuck, and the
        calls waiting on it fail."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._send(Shutdown())
        await asyncio.to_thread(thread.join, self.shutdown_timeout_s)
        if thread.is_alive():
            frame = sys._current_frames().get(thread.ident or -1)
            where = "".join(traceback.format_stack(frame)[-4:]) if frame is not None else "(no frame)\n"
            log.warning("engine core thread %r did not stop within %.1f s of Shutdown; left running as a "
                        "daemon thread, stuck at:\n%s", thread.name, self.shutdown_timeout_s, where.rstrip())
            self._fail_pending(f"the engine core thread did not stop within {self.shutdown_timeout_s:g} s")


class MPClient(EngineClient):
    """The core in its own process (``run_engine_core``), over ZMQ PUSH/PULL sockets on ``ipc://``
    paths. The process's sentinel is watched: the moment it exits, ``on_dead`` runs."""

    def __init__(self, config: EngineConfig, source: ModelSource, start_timeout_s: float = 900.0) -> None:
        super().__init__(config, source)
        self.start_timeout_s = start_timeout_s
        self.process: multiprocessing.process.BaseProcess | None = None
        self._dir: str | None = None
        self._context: Any = None
        self._push: Any = None
        self._pull: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.bytes_received: list[int] = []  # size of every message from the core, in order

    async def start(self, on_outputs: OnOutputs, on_dead: OnDead) -> EngineInfo:
        import zmq
        import zmq.asyncio

        self._loop = loop = asyncio.get_running_loop()
        self._dir = tempfile.mkdtemp(prefix="edgecloud-core-")
        to_core, from_core = f"ipc://{self._dir}/in", f"ipc://{self._dir}/out"
        self._context = zmq.asyncio.Context()
        self._push = self._context.socket(zmq.PUSH)
        self._push.setsockopt(zmq.SNDHWM, 0)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.bind(to_core)
        self._pull = self._context.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, 0)
        self._pull.bind(from_core)
        ctx = multiprocessing.get_context("spawn")
        import os

        self.process = ctx.Process(
            target=run_engine_core, args=(self.config, self.source, to_core, from_core, os.getpid()),
            name="edgecloud-engine-core", daemon=True,
        )
        self.process.start()
        try:
            first = await self._wait_ready()
        except BaseException:
            await self.shutdown()
            raise
        self.info = first.info

        def exited() -> None:
            loop.remove_reader(self.process.sentinel)  # type: ignore[union-attr]
            if self._closing:
                return
            reason = f"engine core process exited (code {self.process.exitcode})"  # type: ignore[union-attr]
            log.error("%s", reason)
            self._fail_pending(reason)
            on_dead(reason)

        loop.add_reader(self.process.sentinel, exited)
        self._reader = asyncio.ensure_future(self._read(on_outputs))
        return self.info

    async def _wait_ready(self) -> Ready:
        """The core's first message: ``Ready`` once the model is loaded, or ``Failed``; meanwhile
        a core that dies is reported with its exit code."""
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if await self._pull.poll(200):
                message = decode_from_core(await self._pull.recv())
                if isinstance(message, Ready):
                    return message
                if isinstance(message, Failed):
                    if message.invalid:
                        raise ModelLoadError(message.message) if message.param is None else InvalidRequestError(
                            message.message, message.param
                        )
                    raise EngineError(f"engine core failed to start: {message.message}")
            if not self.process.is_alive():
                raise EngineError(f"engine core process exited while starting (code {self.process.exitcode})")
        raise EngineError(f"engine core did not start within {self.start_timeout_s:.0f} s")

    async def _read(self, on_outputs: OnOutputs) -> None:
        while True:
            try:
                data = await self._pull.recv()
            except Exception:  # the socket was closed by shutdown
                return
            self.bytes_received.append(len(data))
            message = decode_from_core(data)
            if isinstance(message, Outputs):
                on_outputs(message.batch)
            elif isinstance(message, ControlReply):
                self._reply(message)

    def _send(self, message: ToCore) -> None:
        if self._push is None:
            raise EngineDeadError("the engine core is not running")
        import zmq

        # non-blocking: with no send limit a PUSH to a connected peer only queues
        self._push.send(encode(message), flags=zmq.NOBLOCK, copy=False)

    async def shutdown(self) -> None:
        self._closing = True
        process = self.process
        if process is not None and process.is_alive():
            # A core that never said Ready may not have connected: a message to it would fail in a
            # future nobody awaits. It is still loading (a start timeout): stop it outright.
            if self._push is not None and self.info is not None:
                with contextlib.suppress(Exception):  # it may be dying already
                    self._send(Shutdown())
                await asyncio.to_thread(process.join, 10)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 5)
        if process is not None and self._loop is not None:
            self._loop.remove_reader(process.sentinel)
        if self._reader is not None:
            self._reader.cancel()
        for sock in (self._push, self._pull):
            if sock is not None:
                sock.close(linger=0)
        if self._context is not None:
            self._context.term()
        self._push = self._pull = self._context = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def make_client(kind: str, config: EngineConfig, source: ModelSource) -> EngineClient:
    """``thread``, ``process`` or ``ray``."""
    if kind == "thread":
        return InprocClient(config, source)
    if kind == "process":
        return MPClient(config, source)
    if kind == "ray":
        from edgecloud.llm.ray_client import RayClient

        return RayClient(config, source)
    raise InvalidRequestError(f"engine core must be one of thread, process, ray; got {kind!r}", "engine_core")
