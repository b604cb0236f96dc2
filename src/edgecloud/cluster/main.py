"""Running a cluster: start the instances (local processes or Ray actors), then serve the OpenAI
API of the router over them with uvicorn, as ``edgecloud serve`` serves one engine.

The router's app is the server's own (``edgecloud.server.build_app``) over a ``ClusterEngine``,
plus ``GET /cluster/instances`` (each instance's role, pool, health, load and hit rate) and
per-instance and hand-over series in ``/metrics``. Instances are started before the router
accepts requests; one that does not come up stops the command with a message that names it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from edgecloud.cluster.config import ClusterConfigError, InstanceSpec, RouterSettings
from edgecloud.cluster.connectors import make_connector
from edgecloud.cluster.frontend import ClusterEngine
from edgecloud.cluster.instance import Instance, InstanceStartError, LaunchBackend
from edgecloud.cluster.metrics import HandoverMetrics, InstanceCollector
from edgecloud.cluster.policies import make_policy
from edgecloud.llm.errors import InvalidRequestError, ModelLoadError
from edgecloud.server.app import OpenAIServer, ServerSettings, build_app
from edgecloud.server.main import bind, fast_paths, stamping

log = logging.getLogger(__name__)


@dataclass
class ClusterSettings:
    """How instances are launched and requests routed. ``connector`` defaults to ``ray`` on the
    Ray backend (the object store) and ``zmq`` otherwise."""

    backend: LaunchBackend = "local"
    ray_address: str | None = None
    policy: str = "round-robin"
    policy_options: dict[str, Any] = field(default_factory=dict)
    connector: str | None = None
    start_timeout_s: float = 300.0
    batch_dir: str | None = None  # the OpenAI Batch API's files and batches (issue #19); None: no Batch API
    batch_concurrency: int = 32

    def merged(self, router: RouterSettings) -> ClusterSettings:
        """A TOML file's ``[router]`` settings where the command line gave none."""
        return ClusterSettings(
            self.backend, self.ray_address, router.policy or self.policy,
            {**router.policy_options, **self.policy_options}, self.connector or router.connector,
            self.start_timeout_s, self.batch_dir, self.batch_concurrency,
        )


def connect_ray(address: str | None) -> None:
    """Joins the Ray cluster at ``address`` (``auto``: the one started on this machine with
    ``ray start``), or starts a local one for this process when ``address`` is None."""
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except ConnectionError as error:
        raise ClusterConfigError(
            f"cannot join the Ray cluster at {address!r}: {error} (start one with `ray start --head`, or leave "
            "--address out to start a local one)"
        ) from None


def build_cluster(specs: list[InstanceSpec], settings: ClusterSettings) -> ClusterEngine:
    """The instances and the router's engine over them (nothing started yet)."""
    try:
        policy = make_policy(settings.policy, **settings.policy_options)
        connector_name = settings.connector or ("ray" if settings.backend == "ray" else "zmq")
        if connector_name == "ray" and settings.backend != "ray":
            raise ValueError("connector 'ray' moves KV through Ray's object store: it needs --backend ray")
        connector = make_connector(connector_name)
    except ValueError as error:
        raise ClusterConfigError(str(error)) from None
    if settings.backend == "ray":
        connect_ray(settings.ray_address)
    instances = [Instance(spec, settings.backend, settings.start_timeout_s) for spec in specs]
    return ClusterEngine(instances, policy, connector)


def build_router_app(engine: ClusterEngine, settings: ServerSettings, batch_dir: str | None = None,
                     batch_concurrency: int = 32) -> FastAPI:
    app = build_app(engine, settings)  # type: ignore[arg-type]  # ClusterEngine has AsyncEngine's interface
    if batch_dir is not None:
        from edgecloud.cluster.batches import mount_batch_api

        mount_batch_api(app, batch_dir, batch_concurrency)
    server: OpenAIServer = app.state.server
    server.metrics.registry.register(InstanceCollector(engine))
    handovers = HandoverMetrics(server.metrics.registry)
    engine.on_handover = lambda h: handovers.observe(engine.connector.name, h)

    @app.get("/cluster/instances")
    async def instances() -> JSONResponse:
        return JSONResponse(engine.describe())

    return app


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, server: OpenAIServer) -> None:
        super().__init__(config)
        self.openai_server = server

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.openai_server.draining = True
        super().handle_exit(sig, frame)


def serve_cluster(specs: list[InstanceSpec], cluster: ClusterSettings, settings: ServerSettings) -> int:
    """``edgecloud cluster serve``: returns the exit code."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine = build_cluster(specs, cluster)
    except (ClusterConfigError, InvalidRequestError, ModelLoadError) as error:
        print(f"edgecloud cluster serve: {error}", file=sys.stderr)
        return 2
    try:
        sock = bind(settings.host, settings.port)
    except OSError as error:
        print(f"edgecloud cluster serve: cannot listen on {settings.host}:{settings.port}: {error}", file=sys.stderr)
        return 2
    app = build_router_app(engine, settings, cluster.batch_dir, cluster.batch_concurrency)
    loop, http = fast_paths()
    config = uvicorn.Config(
        app, loop=loop, http=stamping(import_from_string(HTTP_PROTOCOLS[http])), log_level=settings.log_level,
        access_log=settings.log_level == "debug", timeout_graceful_shutdown=settings.graceful_timeout_s,
    )
    server = _DrainingServer(config, app.state.server)
    host, port = sock.getsockname()[:2]
    roles = ", ".join(f"{s.name} ({s.role})" for s in specs)
    print(f"edgecloud cluster serve: starting {len(specs)} instances [{roles}] on {cluster.backend}; router on "
          f"http://{host}:{port} (policy {engine.policy.name}, connector {engine.connector.name})", flush=True)
    exit_code = 0

    def fatal(message: str) -> None:
        nonlocal exit_code
        print(f"edgecloud cluster serve: {message}; exiting", file=sys.stderr, flush=True)
        exit_code = 1
        server.should_exit = True

    engine.on_fatal = fatal

    async def run() -> int:
        try:
            await engine.start()
        except (InstanceStartError, ClusterConfigError) as error:
            print(f"edgecloud cluster serve: {error}", file=sys.stderr, flush=True)
            return 1
        print(f"edgecloud cluster serve: ready: {len(specs)} instances of {engine.model_name}", flush=True)
        # uvicorn re-raises the signal it caught once it has drained; with this handler in place
        # that is a no-op and a drained router exits 0 (a SIGTERM while instances start kills it).
        previous = signal.signal(signal.SIGTERM, lambda sig, frame: None)
        try:
            await server.serve(sockets=[sock])
        finally:
            signal.signal(signal.SIGTERM, previous)
        return exit_code

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        code = runner.run(run())
    if code == 0 and not server.started:
        return 1
    return code
