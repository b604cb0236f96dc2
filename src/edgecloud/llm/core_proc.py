"""The engine core's service loop, in a thread or in a process of its own.

``CoreService`` turns messages (add, abort, control, shutdown) into calls on an ``EngineCore``
and steps it while it has work; a rejected request, a bad control call or a failed step becomes
a reply or an output, never an exception out of the loop. ``run_engine_core`` is the entry point
of the core's own process: ZMQ sockets to the front end, one loop (read every pending message,
step if there is work, else wait on the socket up to 100 ms, send the step's outputs), and an
exit when the front end goes away. During a step of flex work only the core asks, between layers,
whether a message waiting on the socket adds online work; if so it abandons the step
(docs/engine-core.md, preemption between layers).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

from edgecloud.llm.config import EngineConfig
from edgecloud.llm.engine_core import EngineCore
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
    decode_to_core,
    encode,
)
from edgecloud.llm.model_source import ModelSource
from edgecloud.llm.outputs import EngineCoreOutput, EngineCoreOutputs

log = logging.getLogger(__name__)


class CoreService:
    """Applies front-end messages to a core; ``send`` receives everything the core has to say."""

    def __init__(self, core: EngineCore, send: Callable[[FromCore], None]) -> None:
        self.core = core
        self.send = send
        self.stopped = False

    def handle(self, message: ToCore) -> list[EngineCoreOutput]:
        """Applies one message; returns outputs it produced (rejections, aborts)."""
        if isinstance(message, AddRequests):
            outputs = []
            for req in message.requests:
                try:
                    self.core.add_request(req)
                except InvalidRequestError as error:
                    outputs.append(EngineCoreOutput(
                        request_id=req.request_id, finish_reason="error", error=str(error),
                        error_param=error.param, invalid=True,
                    ))
            return outputs
        if isinstance(message, AbortRequests):
            return self.core.abort_requests(message.request_ids)
        if isinstance(message, Control):
            self.send(self._control(message))
            return []
        if isinstance(message, Shutdown):
            self.stopped = True
            self.core.abort_requests(list(self.core.scheduler.requests))
        return []

    def _control(self, message: Control) -> ControlReply:
        try:
            return ControlReply(message.call_id, result=self.core.control(message.op, message.args))
        except InvalidRequestError as error:
            return ControlReply(message.call_id, error=str(error), error_param=error.param, invalid=True)
        except Exception as error:
            log.exception("control %s failed", message.op)
            return ControlReply(message.call_id, error=f"{type(error).__name__}: {error}")

    def publish(self, outputs: list[EngineCoreOutput]) -> None:
        self.send(Outputs(EngineCoreOutputs(outputs=outputs, stats=self.core.stats(), timestamp=time.monotonic())))

    def step(self) -> None:
        self.publish(self.core.step())


def _adds_online(data: bytes) -> bool:
    """Whether a front-end message adds a ``default``-tier request (a malformed one: no — the loop
    decodes it again and reports it as before)."""
    try:
        message = decode_to_core(data)
    except Exception:
        return False
    return isinstance(message, AddRequests) and any(r.service_tier == "default" for r in message.requests)


def run_engine_core(
    config: EngineConfig, source: ModelSource, input_address: str, output_address: str, parent_pid: int
) -> None:
    """The core process: load the model, say ``Ready`` (or ``Failed``), then serve until told to
    stop or until the parent process is gone."""
    import zmq

    # Ctrl-C reaches the whole process group; the front end decides when the core stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s engine-core: %(message)s")
    context = zmq.Context()
    inbox = context.socket(zmq.PULL)
    inbox.connect(input_address)
    outbox = context.socket(zmq.PUSH)
    outbox.setsockopt(zmq.LINGER, 2000)
    outbox.connect(output_address)

    def send(message: FromCore) -> None:
        outbox.send(encode(message), copy=False)

    try:
        core = EngineCore(config, source)
    except (InvalidRequestError, ModelLoadError) as error:
        send(Failed(str(error), getattr(error, "param", None), invalid=True))
        return
    except Exception as error:  # a bug or a broken model: say so rather than die silently
        log.exception("engine core failed to start")
        send(Failed(f"{type(error).__name__}: {error}"))
        return
    service = CoreService(core, send)
    # Messages read during a step (to see whether online work waits) are kept here, in order, for
    # the loop; a step of flex work only is abandoned between layers when one adds a default request.
    backlog: list[bytes] = []
    online_seen = False

    def online_waiting() -> bool:
        nonlocal online_seen
        while True:
            try:
                data = inbox.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:  # the socket is going away: let the step finish, the loop sees it
                return online_seen
            backlog.append(data)
            online_seen = online_seen or _adds_online(data)
        return online_seen

    core.interrupt = online_waiting
    send(Ready(core.info))
    poller = zmq.Poller()
    poller.register(inbox, zmq.POLLIN)
    while not service.stopped:
        busy = core.has_unfinished()
        events = dict(poller.poll(0 if busy or backlog else 100))
        produced: list[EngineCoreOutput] = []
        handled = bool(backlog)
        pending, backlog[:], online_seen = list(backlog), [], False
        for data in pending:
            produced += service.handle(decode_to_core(data))
        while inbox in events:
            try:
                data = inbox.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            handled = True
            produced += service.handle(decode_to_core(data))
        if os.getppid() != parent_pid:
            log.warning("front end is gone; engine core exits")
            break
        if core.has_unfinished() and not service.stopped:
            service.publish(produced + core.step())
        elif handled:
            service.publish(produced)
    core.close()
    outbox.close()
    inbox.close()
    context.term()

