"""Running the server: build the engine, bind the socket, serve with uvicorn, drain on SIGTERM.

On SIGTERM (or Ctrl-C) the server stops admitting (``/health`` and new requests answer 503,
the listening socket closes), lets in-flight requests finish for up to ``graceful_timeout_s``,
aborts whatever is still running, stops the engine and exits 0.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import signal
import socket
import sys
import time
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from edgecloud.errors import USAGE, CLIError, listen_failed
from edgecloud.llm import AsyncEngine, EngineConfig, InvalidRequestError, ModelLoadError
from edgecloud.server.app import OpenAIServer, ServerSettings, build_app

log = logging.getLogger(__name__)


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, which also marks our server as draining the moment a signal arrives
    (uvicorn itself only notices on its next tick)."""

    def __init__(self, config: uvicorn.Config, server: OpenAIServer) -> None:
        super().__init__(config)
        self.openai_server = server

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.openai_server.draining = True
        super().handle_exit(sig, frame)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one (read it back with ``getsockname``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this. uvloop does not set it on connections of a socket it
    # did not bind, and without it Nagle + delayed ACKs add ~40 ms to every streamed response.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def fast_paths() -> tuple[str, str]:
    """uvicorn's event loop and HTTP parser: uvloop and httptools when installed (they are
    dependencies; uvloop has no Windows build), else the stock asyncio loop and pure-Python h11."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def stamping(protocol: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """uvicorn's HTTP ``protocol``, which also stamps each request with the moment the event loop
    read the bytes that began it (``scope["state"]["received_at"]``, ``time.monotonic``), so the
    server's latencies include parsing the request and waiting for the loop to start its task,
    not only what the ASGI app sees. uvicorn builds a request's scope while parsing (in
    ``data_received``) and starts its task on the next loop turn, so the stamp is in place first."""

    class Stamping(protocol):  # type: ignore[valid-type, misc]
        def data_received(self, data: bytes) -> None:
            read_at = time.monotonic()
            super().data_received(data)
            scope: dict[str, Any] | None = getattr(self, "scope", None)
            if scope is not None:
                # A new request's state is a fresh dict; one already stamped keeps its stamp.
                scope.setdefault("state", {}).setdefault("received_at", read_at)

    Stamping.__name__ = Stamping.__qualname__ = f"Stamping{protocol.__name__}"
    return Stamping


def serve(config: EngineConfig, settings: ServerSettings) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The port first: a port in use is reported at once, not after the model loads.
    try:
        sock = bind(settings.host, settings.port)
    except OSError as error:
        raise listen_failed(error, settings.host, settings.port, "--port") from error
    try:
        engine = AsyncEngine(config, core=settings.engine_core)
    except (InvalidRequestError, ModelLoadError) as error:
        sock.close()
        raise CLIError(str(error), USAGE) from error
    host, port = sock.getsockname()[:2]
    settings.url = f"http://{host}:{port}"
    app = build_app(engine, settings)
    loop, http = fast_paths()
    config = uvicorn.Config(
        app,
        loop=loop,
        http=stamping(import_from_string(HTTP_PROTOCOLS[http])),
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=settings.graceful_timeout_s,
    )
    server = _DrainingServer(config, app.state.server)
    print(
        f"edgecloud serve: starting {app.state.server.model_name} on {settings.url} "
        f"(engine core: {settings.engine_core}; event loop {loop}, HTTP {http})",
        flush=True,
    )
    exit_code = 0

    def fatal(message: str) -> None:
        nonlocal exit_code
        print(f"edgecloud serve: {message}; exiting", file=sys.stderr, flush=True)
        exit_code = 1
        server.should_exit = True

    engine.on_fatal = fatal
    # uvicorn re-raises the signal it caught once it has shut down; with this handler in place
    # that re-raise is a no-op and a drained server exits 0.
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    if exit_code == 0 and not server.started:
        return 1  # the engine failed to start (the lifespan said why)
    return exit_code
