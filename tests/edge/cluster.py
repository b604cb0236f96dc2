"""Test helpers: a PKI for edge nodes and several nodes of one edge in this process."""

from __future__ import annotations

import socket
from pathlib import Path

from edgecloud.c2 import pki
from edgecloud.c2.privileges import Role
from edgecloud.edge.node import EdgeNode, NodeConfig
from edgecloud.edge.replication import ReplicationSettings
from edgecloud.llm import EngineConfig
from edgecloud.server.app import ServerSettings

# The demo model has no chat template; this one uses its special tokens.
DEMO_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eos|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_pki(directory: Path, names: list[str]) -> Path:
    pki.init(directory)
    for name in names:
        pki.issue_to_directory(directory, name, Role.UXV, frozenset())
    return directory


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def demo_engine(template: str = DEMO_TEMPLATE) -> EngineConfig:
    return EngineConfig(model="demo", chat_template=template, kv_cache_memory_mb=16, num_threads=1)


def edge_nodes(
    names: list[str], pki_dir: Path, store_dir: Path, mode: str = "tokens",
    settings: ReplicationSettings | None = None, **config: object,
) -> tuple[list[EdgeNode], list[socket.socket]]:
    """Nodes wired to each other (not started) and their replication sockets, bound already."""
    socks = [listening_socket() for _ in names]
    addresses = {name: sock.getsockname()[:2] for name, sock in zip(names, socks, strict=True)}
    nodes = []
    for name in names:
        node_config = NodeConfig(
            name=name, pki=pki_dir, peers={p: addresses[p] for p in names if p != name}, mode=mode,
            store=store_dir / f"{name}.sqlite", http=("127.0.0.1", 0), settings=settings,
            store_synchronous="NORMAL", **config,  # type: ignore[arg-type]
        )
        nodes.append(EdgeNode(node_config, demo_engine(), engine_core="thread",
                              server=ServerSettings(port=0, log_level="warning", engine_core="thread")))
    return nodes, socks
