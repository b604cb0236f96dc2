"""A real engine instance of the cluster: the engine's ``AsyncEngine`` over a core in a process of
its own on this machine (backend ``local``), in a Ray actor on any machine of a Ray cluster
(backend ``ray``), or in a thread of the router's process (backend ``thread``: tests, notebooks;
the cores share the router's GIL). It is a ``Backend`` of the router (``edgecloud.cluster.router``): up or not,
its engine counters, its restarts.

A core that dies is reported by its client at once (a process sentinel; a Ray poll failing), the
instance turns unhealthy, its in-flight requests fail, and the engine starts a new core.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from edgecloud.cluster.config import InstanceSpec
from edgecloud.llm.async_engine import AsyncEngine
from edgecloud.llm.config import EngineConfig
from edgecloud.llm.core_client import EngineClient, InprocClient, MPClient
from edgecloud.llm.engine_core import EngineInfo
from edgecloud.llm.model_source import ModelSource
from edgecloud.llm.outputs import EngineStats

log = logging.getLogger(__name__)

LaunchBackend = Literal["local", "ray", "thread"]
BACKENDS: tuple[LaunchBackend, ...] = ("local", "ray", "thread")


class InstanceStartError(RuntimeError):
    """An instance did not come up; the message names it and says why."""


class Instance:
    def __init__(self, spec: InstanceSpec, backend: LaunchBackend = "local", start_timeout_s: float = 300.0) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.spec = spec
        self.name = spec.name
        self.role = spec.role
        self.pool = spec.pool
        self.backend = backend
        self.start_timeout_s = start_timeout_s
        self.engine = AsyncEngine(spec.engine, core={"local": "process"}.get(backend, backend),
                                  client_factory=self._client)
        self._epoch = 0
        self._client_seen: EngineClient | None = None

    def _client(self, config: EngineConfig, source: ModelSource) -> EngineClient:
        if self.backend == "local":
            return MPClient(config, source, start_timeout_s=self.start_timeout_s)
        if self.backend == "thread":
            return InprocClient(config, source)
        from edgecloud.llm.ray_client import RayClient

        return RayClient(config, source, num_cpus=float(config.num_threads or 1))

    async def start(self) -> EngineInfo:
        try:
            await self.engine.start()
        except Exception as error:
            raise InstanceStartError(f"instance {self.name!r} did not come up: {error}") from error
        assert self.engine.info is not None
        self._client_seen = self.engine.client
        return self.engine.info

    async def shutdown(self) -> None:
        await self.engine.shutdown()

    # -- what the router reads ------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        assert self.engine.info is not None, "instance not started"
        return self.engine.info

    @property
    def healthy(self) -> bool:
        return self.engine.healthy

    @property
    def epoch(self) -> int:
        client = self.engine.client
        if client is not None and client is not self._client_seen:
            self._client_seen = client
            self._epoch += 1
        return self._epoch

    @property
    def num_blocks(self) -> int:
        return self.info.num_blocks

    @property
    def max_num_batched_tokens(self) -> int:
        return self.spec.engine.max_num_batched_tokens

    def stats(self) -> EngineStats:
        return self.engine.stats()

    @property
    def ray_actor(self) -> Any:
        """The Ray actor holding this instance's core (backend ``ray``)."""
        client = self.engine.client
        actor = getattr(client, "actor", None)
        if actor is None:
            raise RuntimeError(f"instance {self.name!r} has no Ray actor (backend {self.backend})")
        return actor

    @property
    def pid(self) -> int | None:
        """The core's process id (backend ``local``)."""
        process = getattr(self.engine.client, "process", None)
        return None if process is None else process.pid

    def describe(self) -> dict[str, Any]:
        s = self.stats()
        return {
            "name": self.name, "role": self.role, "pool": self.pool, "backend": self.backend, "pid": self.pid,
            "healthy": self.healthy, "restarts": self.epoch, "threads": self.spec.engine.num_threads,
            "num_waiting": s.num_waiting, "num_running": s.num_running, "kv_usage": s.kv_usage,
            "prefix_cache_hit_rate": s.prefix_cache_hits / s.prefix_cache_queries if s.prefix_cache_queries else 0.0,
        }
