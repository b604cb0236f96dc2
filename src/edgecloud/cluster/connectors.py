"""KV transfer between instances: how a prefilled prompt's KV blocks reach the decode instance.

A hand-over moves blocks by their stable keys (``edgecloud.llm.kv_cache.keys``), in chunks, and
never sends a block the receiver already holds: the receiver is asked first how much of the prompt
it has cached (``lookup``), only the keys after that are exported by the sender
(``export_blocks``: the blocks' tokens and K/V), and the receiver imports them
(``import_blocks``, which also skips any key it caches meanwhile). The request then goes to the
receiver, whose prefix cache finds the prompt there: no engine needs to know about P/D.

Two connectors move the bytes:

- ``zmq`` (default): over the engine clients' own ZMQ channels, sender core → router → receiver
  core (``ipc://`` sockets on one machine); msgpack frames with the tensors' raw bytes.
- ``ray``: through Ray's object store, straight from the sender's actor to the receiver's
  (``EngineCoreActor.call``): the router passes an object reference and never touches the data;
  across machines Ray moves it node to node.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgecloud.cluster.instance import Instance
from edgecloud.llm.config import ModelConfig
from edgecloud.llm.kv_cache.keys import BlockKey
from edgecloud.llm.output_processor import EngineError


@dataclass
class TransferResult:
    """One hand-over: blocks the prompt has, those the receiver already had (not sent), those
    sent, their bytes, and the time from the lookup's answer to the last import."""

    blocks: int
    skipped: int
    sent: int
    bytes: int
    seconds: float

    @property
    def bandwidth(self) -> float:
        """Bytes per second of the moving part (0 when nothing moved)."""
        return self.bytes / self.seconds if self.seconds > 0 and self.bytes else 0.0


def kv_bytes_per_block(instance: Instance) -> int:
    """K and V bytes of one block over all layers, from the instance's model config."""
    info = instance.info
    mc = ModelConfig.from_file(Path(info.model_dir) / "config.json")
    element = {"float32": 4, "bfloat16": 2, "float16": 2}[info.dtype]
    return 2 * mc.num_hidden_layers * info.block_size * mc.num_key_value_heads * mc.head_dim * element


class KVConnector(ABC):
    name: ClassVar[str] = ""

    def __init__(self, chunk_blocks: int = 64) -> None:
        if chunk_blocks < 1:
            raise ValueError(f"chunk_blocks must be >= 1, got {chunk_blocks}")
        self.chunk_blocks = chunk_blocks

    async def cached_blocks(
        self, dst: Instance, token_ids: Sequence[int], adapter_id: str | None = None, cache_salt: str | None = None
    ) -> int:
        """How many leading full blocks of the prompt the receiver holds."""
        tokens = await dst.engine.control("lookup", token_ids=list(token_ids), adapter_id=adapter_id,
                                          cache_salt=cache_salt)
        return int(tokens) // dst.info.block_size

    async def transfer(self, src: Instance, dst: Instance, keys: Sequence[BlockKey], have: int) -> TransferResult:
        """Moves ``keys[have:]`` (the receiver holds the first ``have``) from ``src`` to ``dst``."""
        start = time.perf_counter()
        missing = list(keys[have:])
        sent = moved_bytes = 0
        for i in range(0, len(missing), self.chunk_blocks):
            chunk = missing[i : i + self.chunk_blocks]
            count, size = await self._move(src, dst, chunk)
            sent += count
            moved_bytes += size
        return TransferResult(len(keys), min(have, len(keys)), sent, moved_bytes, time.perf_counter() - start)

    @abstractmethod
    async def _move(self, src: Instance, dst: Instance, keys: list[BlockKey]) -> tuple[int, int]:
        """Moves one chunk; returns (blocks imported, bytes moved). Blocks the sender no longer has,
        or that do not fit at the receiver, are not moved: the receiver computes them."""


class ZMQConnector(KVConnector):
    name = "zmq"

    async def _move(self, src: Instance, dst: Instance, keys: list[BlockKey]) -> tuple[int, int]:
        payload: dict[str, Any] = await src.engine.control("export_blocks", keys=keys)
        if not payload["keys"]:
            return 0, 0
        size = payload["k"].nbytes + payload["v"].nbytes
        imported = await dst.engine.control("import_blocks", **payload)
        return int(imported), size


class RayConnector(KVConnector):
    name = "ray"

    def __init__(self, chunk_blocks: int = 64) -> None:
        super().__init__(chunk_blocks)
        self._block_bytes: dict[str, int] = {}

    async def _move(self, src: Instance, dst: Instance, keys: list[BlockKey]) -> tuple[int, int]:
        import ray

        try:
            exported = src.ray_actor.call.remote("export_blocks", {"keys": keys})
            # Ray resolves the reference inside the receiving actor: the blocks go from the sender's
            # object store to the receiver's, not through this process.
            imported = int(await dst.ray_actor.call.remote("import_blocks", exported))
        except (ray.exceptions.RayError, RuntimeError) as error:
            raise EngineError(f"Ray object-store transfer failed: {error}") from error
        if dst.name not in self._block_bytes:
            self._block_bytes[dst.name] = kv_bytes_per_block(dst)
        return imported, imported * self._block_bytes[dst.name]


CONNECTORS: dict[str, type[KVConnector]] = {"zmq": ZMQConnector, "ray": RayConnector}


def make_connector(name: str, **options: Any) -> KVConnector:
    cls = CONNECTORS.get(name)
    if cls is None:
        raise ValueError(f"unknown KV connector {name!r}; known: {', '.join(CONNECTORS)}")
    return cls(**options)
