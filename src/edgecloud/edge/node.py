"""An edge node: the engine and its OpenAI server, a context store, and replication with the peers
(DisCEdge, arXiv 2511.22599, §3: context manager + LLM service + replicated store on each node).

A chat request that names a session (``X-Session-Id`` header or ``"session"`` body field; ``new``
asks for a fresh id) carries only the client's new message. :class:`EdgeContext`, the server's
chat-context hook, waits until the node holds the version the client last saw
(``X-Session-Version`` header or ``"session_version"`` field), builds the prompt, and after the
answer commits the turn; the response carries the session id and its new version. Three modes,
one switch:

* ``tokens`` (DisCEdge): the prompt is the session's stored token ids plus the new message's; the
  engine's prefix cache hits on the earlier turns. Turns replicate as token deltas.
* ``text`` (baseline): turns replicate as text; every turn renders and tokenizes the whole
  conversation again.
* ``client`` (baseline): the node keeps nothing; the client sends its whole history each turn.

Requests without a session are served as by ``edgecloud serve``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from edgecloud.edge.chat import ChatFormat, context_fingerprint
from edgecloud.edge.replication import ReplicaCore, ReplicationSettings, majority
from edgecloud.edge.store import ContextStore
from edgecloud.edge.transport import EdgeError, Snapshot, Transport
from edgecloud.edge.turns import (
    NAME_PATTERN,
    Turn,
    VersionError,
    draft,
    format_version,
    pack_tokens,
    parse_version,
    total,
)
from edgecloud.llm import AsyncEngine, CompletionOutput, EngineConfig
from edgecloud.server.app import ChatTurn, ServerSettings, build_app
from edgecloud.server.errors import APIError
from edgecloud.server.protocol import ChatCompletionRequest

log = logging.getLogger(__name__)

MODES = ("tokens", "text", "client")
SESSION_HEADER = "X-Session-Id"
VERSION_HEADER = "X-Session-Version"
# Prompts longer than this many characters are rendered and tokenized off the event loop.
_INLINE_CHARS = 4096


@dataclass
class NodeConfig:
    """One node. ``peers``: name -> (host, port) of each peer's replication listener."""

    name: str
    pki: Path
    peers: dict[str, tuple[str, int]] = field(default_factory=dict)
    mode: str = "tokens"
    store: Path | None = None  # default: edge-NAME.sqlite in the working directory
    http: tuple[str, int] = ("127.0.0.1", 8000)
    replication: tuple[str, int] = ("127.0.0.1", 0)
    settings: ReplicationSettings | None = None  # default: majority quorum, every peer a replica
    store_max_pages: int | None = None
    store_synchronous: str = "FULL"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"name {self.name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        for peer in self.peers:
            if not NAME_PATTERN.match(peer) or peer == self.name:
                raise ValueError(f"peer name {peer!r}: a name of another node (letters, digits, '.', '_', '-')")
        if self.settings is None:
            self.settings = ReplicationSettings(write_quorum=majority(1 + len(self.peers)))
        self.settings.check(1 + len(self.peers))


def _session_fields(request: Request, body_bytes: bytes) -> tuple[str | None, str | None]:
    """The session id and version a request names, from its headers or its JSON body."""
    session = request.headers.get(SESSION_HEADER)
    version = request.headers.get(VERSION_HEADER)
    if session is None or version is None:
        try:
            body = json.loads(body_bytes)
        except ValueError:
            body = {}
        if isinstance(body, dict):
            for key, value in (("session", session), ("session_version", version)):
                field_value = body.get(key)
                if value is None and field_value is not None:
                    if not isinstance(field_value, str | int) or isinstance(field_value, bool):
                        raise APIError(400, f"{key} must be a string", key)
                    if key == "session":
                        session = str(field_value)
                    else:
                        version = str(field_value)
    return session, version


class EdgeContext:
    """The server's chat-context hook for a ``tokens`` or ``text`` node (a ``client`` node refuses
    session requests: the client keeps its history)."""

    def __init__(self, transport: Transport | None, chat: ChatFormat | None, mode: str) -> None:
        self.transport = transport
        self.chat = chat
        self.mode = mode
        self.turn_log: list[dict[str, Any]] = []  # per answered turn: timings, sizes (GET /v1/edge/stats)
        self._rendered: dict[tuple[str, str, int], list[int]] = {}  # turns of another tokenizer, rendered here

    async def prepare(self, request: Request, body: ChatCompletionRequest) -> ChatTurn | None:
        started = time.perf_counter()
        session, version_text = _session_fields(request, await request.body())
        if session is None:
            if version_text is not None:
                raise APIError(400, f"{VERSION_HEADER} needs a session: send {SESSION_HEADER} too", "session")
            return None
        if self.transport is None or self.chat is None:
            raise APIError(400, "this node runs in client mode: it keeps no session; send the whole history in "
                           "messages and no session", "session", "unsupported")
        create = session == "new"
        if create:
            session = secrets.token_urlsafe(12)  # 96 random bits in 16 characters
        elif not NAME_PATTERN.match(session):
            raise APIError(400, f"session id {session[:80]!r}: use 1-64 letters, digits, '.', '_' or '-' (or 'new')",
                           "session", "invalid_session")
        try:
            want = parse_version(version_text or "")
        except VersionError as error:
            raise APIError(400, str(error), "session_version", "invalid_version") from None
        if create and want:
            raise APIError(400, "a new session has no version yet: leave the version out", "session_version")
        if len(body.messages) != 1 or body.messages[0].role != "user":
            raise APIError(400, "a session turn carries exactly one user message (the node keeps the history); got "
                           f"{len(body.messages)} message(s), the first a {body.messages[0].role!r} one", "messages")
        user_text = body.messages[0].template_dict()["content"]
        try:
            snapshot = await self.transport.read(session, want, exclusive=True, create=create)
        except EdgeError as error:
            raise APIError(error.status, error.message, "session_version" if error.status == 409 else "session",
                           error.code) from None
        transport, chat = self.transport, self.chat
        try:
            prompt, user = await self._prompt(chat, snapshot, user_text)
        except BaseException:
            transport.release(snapshot.read_id)
            raise
        prepared = time.perf_counter()
        record: dict[str, Any] = {
            "session": session, "prepare_ms": (prepared - started) * 1e3, "prompt_tokens": len(prompt),
            "context_turns": len(snapshot.turns),
        }

        async def commit(answer: CompletionOutput) -> dict[str, str]:
            began = time.perf_counter()
            content = self._content(chat, user_text, user, answer)
            try:
                acked = await transport.commit(snapshot.read_id, content)
            except EdgeError as error:
                raise APIError(error.status, error.message, "session", error.code) from None
            record["commit_ms"] = (time.perf_counter() - began) * 1e3
            record["turn"] = f"{acked.turn.origin}:{acked.turn.seq}"
            self.turn_log.append(record)
            return {
                SESSION_HEADER: session, VERSION_HEADER: format_version(acked.version),
                "X-Session-Turns": str(total(acked.version)), "X-Session-Conflicts": str(acked.conflicts),
                "X-Session-Turn": f"{acked.turn.origin}:{acked.turn.seq}",
            }

        async def release() -> None:
            transport.release(snapshot.read_id)

        return ChatTurn(prompt, commit, release)

    async def _prompt(self, chat: ChatFormat, snapshot: Snapshot, text: str) -> tuple[list[int], Any]:
        if self.mode == "text":
            history = [(t.user_text or "", t.answer_text or "") for t in snapshot.turns]
            size = len(text) + sum(len(q) + len(a) for q, a in history)
            if size > _INLINE_CHARS:
                return await asyncio.to_thread(chat.full_prompt, history, text), None
            return chat.full_prompt(history, text), None
        context: list[int] = []
        for turn in snapshot.turns:
            context += self._tokens(chat, turn)
        user = chat.user_delta(text, first=not snapshot.turns)
        return context + user.ids, user

    def _tokens(self, chat: ChatFormat, turn: Turn) -> list[int]:
        if turn.form == "tokens" and turn.fingerprint == chat.fingerprint:
            return turn.token_ids()
        key = (turn.session, turn.origin, turn.seq)
        if key not in self._rendered:  # a model or tokenizer change: render again from the text
            self._rendered[key] = chat.tokens_of(turn)
        return self._rendered[key]

    def _content(self, chat: ChatFormat, user_text: str, user: Any, answer: CompletionOutput) -> Turn:
        if self.mode == "text":
            return draft("text", user_text, answer.text)
        answer_ids = chat.answer_ids(answer.token_ids)
        ids, answer_span = chat.turn_tokens(user, answer_ids)
        packed, width = pack_tokens(ids)
        a, b = user.span
        derivable = chat.decode_user(user.ids[a:b]) == user_text and chat.decode_answer(answer_ids) == answer.text
        return draft(
            "tokens", user_text, answer.text, fingerprint=chat.fingerprint, tokens=packed, width=width,
            user_span=user.span, answer_span=answer_span, derivable=derivable,
        )


def _turn_json(turn: Turn) -> dict[str, Any]:
    return {
        "origin": turn.origin, "seq": turn.seq, "version": format_version(turn.deps), "form": turn.form,
        "user": turn.user_text, "assistant": turn.answer_text, "tokens": len(turn.tokens) // (turn.width or 1),
    }


def add_edge_routes(app: FastAPI, node: EdgeNode) -> None:
    """Routes beside the OpenAI API: a session's turns, the node's state, its counters."""

    @app.get("/v1/sessions/{session}")
    async def session_view(session: str, request: Request) -> dict[str, Any]:
        transport = node.transport
        if transport is None:
            raise APIError(404, "this node runs in client mode: it keeps no sessions", "session", "unsupported")
        if not NAME_PATTERN.match(session):
            raise APIError(400, f"session id {session[:80]!r} is not valid", "session", "invalid_session")
        try:
            want = parse_version(request.headers.get(VERSION_HEADER, ""))
        except VersionError as error:
            raise APIError(400, str(error), "session_version", "invalid_version") from None
        try:
            snapshot = await transport.read(session, want, exclusive=False)
        except EdgeError as error:
            raise APIError(error.status, error.message, "session", error.code) from None
        if not snapshot.turns and not want:
            raise APIError(404, f"session {session!r} is unknown", "session", "session_not_found")
        conflicts = transport.session_log(session).conflicts
        return {
            "id": session, "version": format_version(snapshot.version),
            "turns": [_turn_json(t) for t in snapshot.turns],
            "conflicts": [{"first": f"{c.first[0]}:{c.first[1]}", "rebased": f"{c.rebased[0]}:{c.rebased[1]}"}
                          for c in conflicts],
        }

    @app.get("/v1/edge/status")
    async def status() -> dict[str, Any]:
        return node.status()

    @app.get("/v1/edge/stats")
    async def stats() -> dict[str, Any]:
        return node.stats()


class EdgeNode:
    """A node in this process: ``await node.start()`` (binds, loads the model, connects to the
    peers), ``node.url``, ``await node.stop()``. ``edgecloud edge node`` runs one until SIGTERM."""

    def __init__(self, config: NodeConfig, engine_config: EngineConfig, *, engine_core: str = "thread",
                 server: ServerSettings | None = None) -> None:
        self.config = config
        self.engine = AsyncEngine(engine_config, core=engine_core)
        self.server_settings = server or ServerSettings(host=config.http[0], port=config.http[1],
                                                        engine_core=engine_core)
        self.store: ContextStore | None = None
        self.transport: Transport | None = None
        self.context: EdgeContext | None = None
        self.app: FastAPI | None = None
        self.url = ""
        self._uvicorn: Any = None
        self._serving: asyncio.Task[None] | None = None

    async def start(self, http_sock: Any = None, replication_sock: Any = None) -> None:
        from edgecloud.server.main import bind

        config = self.config
        http_sock = http_sock or bind(*config.http)
        await self.engine.start()
        chat = transport = None
        if config.mode != "client":
            info = self.engine.info
            assert info is not None
            fingerprint = context_fingerprint(self.engine.tokenizer, info.fingerprint)
            chat = ChatFormat(self.engine.tokenizer, fingerprint)
            self.store = ContextStore(config.store or Path(f"edge-{config.name}.sqlite"),
                                      synchronous=config.store_synchronous, max_pages=config.store_max_pages)
            assert config.settings is not None
            core = ReplicaCore(
                config.name, list(config.peers), self.store, config.settings, mode=config.mode,
                fingerprint=fingerprint, derive_texts=chat.derive_texts, now=time.monotonic(),
            )
            transport = Transport(core, config.peers, config.pki, config.replication)
            await transport.start(replication_sock)
        self.transport = transport
        self.context = EdgeContext(transport, chat, config.mode)
        self.app = build_app(self.engine, self.server_settings, chat_context=self.context)
        add_edge_routes(self.app, self)
        self._uvicorn = self._http_server()
        self._serving = asyncio.ensure_future(self._uvicorn.serve(sockets=[http_sock]))
        host, port = http_sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self.server_settings.url = self.url
        while not self._uvicorn.started:
            if self._serving.done():
                self._serving.result()
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.02)

    def _http_server(self) -> Any:
        import uvicorn
        from uvicorn.config import HTTP_PROTOCOLS
        from uvicorn.importer import import_from_string

        from edgecloud.server.main import fast_paths, stamping

        _, http = fast_paths()
        settings = self.server_settings
        config = uvicorn.Config(
            self.app, http=stamping(import_from_string(HTTP_PROTOCOLS[http])), log_level=settings.log_level,
            access_log=False, timeout_graceful_shutdown=settings.graceful_timeout_s,
        )
        return uvicorn.Server(config)

    async def wait(self) -> None:
        """Until the HTTP server stops (SIGTERM, SIGINT)."""
        if self._serving is not None:
            await self._serving

    async def stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._serving is not None:
            await asyncio.gather(self._serving, return_exceptions=True)
        if self.transport is not None:
            await self.transport.stop()
        await self.engine.shutdown()
        if self.store is not None:
            self.store.close()

    def status(self) -> dict[str, Any]:
        config = self.config
        body: dict[str, Any] = {"name": config.name, "mode": config.mode, "url": self.url}
        transport = self.transport
        if transport is not None:
            core = transport.core
            body["replication"] = "{}:{}".format(*transport.address)
            body["fingerprint"] = core.fingerprint.hex()
            body["write_quorum"] = core.settings.write_quorum
            body["replicas"] = core.settings.replicas if core.settings.replicas is not None else "all"
            body["peers"] = {
                name: {"up": state.up, "rtt_ms": None if state.rtt_s is None else round(state.rtt_s * 1e3, 2)}
                for name, state in core.peer.items()
            }
        return body

    def stats(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.config.name, "mode": self.config.mode}
        if self.transport is not None:
            body.update(self.transport.stats.as_dict())
        if self.context is not None:
            body["turns"] = list(self.context.turn_log)
        return body


def serve_node(config: NodeConfig, engine_config: EngineConfig, *, engine_core: str = "process",
               log_level: str = "info") -> int:
    """``edgecloud edge node``: bind both ports first (a taken port is reported at once), load the
    model, connect to the peers, serve until SIGTERM or SIGINT."""
    import signal
    import sys

    from edgecloud.edge.chat import TemplateError
    from edgecloud.errors import USAGE, CLIError, listen_failed
    from edgecloud.llm import InvalidRequestError, ModelLoadError
    from edgecloud.server.main import bind

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        http_sock = bind(*config.http)
    except OSError as error:
        raise listen_failed(error, config.http[0], config.http[1], "--listen") from error
    replication_sock = None
    if config.mode != "client":
        try:
            replication_sock = bind(*config.replication)
        except OSError as error:
            http_sock.close()
            raise listen_failed(error, config.replication[0], config.replication[1], "--replicate") from error
    try:
        node = EdgeNode(config, engine_config, engine_core=engine_core,
                        server=ServerSettings(host=config.http[0], port=config.http[1], log_level=log_level,
                                              engine_core=engine_core))
    except (InvalidRequestError, ModelLoadError) as error:
        raise CLIError(str(error), USAGE) from error

    async def run() -> None:
        try:
            await node.start(http_sock, replication_sock)
        except TemplateError as error:
            await node.stop()
            raise CLIError(f"{error} (mode {config.mode})", USAGE) from error
        where = f"; replication on {config.replication[0]}:{config.replication[1]}" if replication_sock else ""
        peers = ", ".join(f"{n}={h}:{p}" for n, (h, p) in config.peers.items()) or "none"
        print(f"edgecloud edge node: ready: {config.name} ({config.mode} mode) on {node.url}{where}; "
              f"peers: {peers}", flush=True)
        try:
            await node.wait()
        finally:
            await node.stop()

    previous = signal.signal(signal.SIGTERM, lambda sig, frame: None)
    try:
        try:
            import uvloop

            uvloop.run(run())
        except ImportError:
            asyncio.run(run())
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"edgecloud edge node: {config.name} stopped", file=sys.stderr, flush=True)
    return 0
