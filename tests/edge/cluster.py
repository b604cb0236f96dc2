"""Test helpers: a PKI for edge nodes and several nodes of one edge in this process."""

from __future__ import annotations

import asyncio
import faulthandler
import io
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

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


def stacks_of_tasks_and_threads() -> str:
    """Every asyncio task's stack on the running loop, then every thread's (faulthandler)."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        print(f"--- {task!r}", file=out)
        task.print_stack(limit=12, file=out)
    return out.getvalue()


def run_watched(main: Coroutine[Any, Any, None], explain_after_s: float = 200.0) -> None:
    """``asyncio.run(main)``; if it is still running after ``explain_after_s`` (pytest's timeout is
    300 s), print every task's and thread's stack to stderr, so that a hang explains itself in the
    captured output (the test goes on: a slow machine may still finish it). A blocked event loop
    cannot run that dump: pytest-timeout's thread dump covers it."""

    async def watched() -> None:
        def explain() -> None:
            print(f"\n=== still running after {explain_after_s:g} s: asyncio tasks ===\n"
                  f"{stacks_of_tasks_and_threads()}=== threads ===", file=sys.stderr, flush=True)
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)

        handle = asyncio.get_running_loop().call_later(explain_after_s, explain)
        try:
            await main
        finally:
            handle.cancel()

    asyncio.run(watched())
