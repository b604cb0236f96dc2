"""A geo-distributed edge on one machine: node processes behind emulated links (``edgecloud.netem``).

A topology file names the nodes and the links between them, each a ``netem`` link profile (its
fields, or ``"profile": NAME`` to start from a named one)::

    {"nodes": ["edge-a", "edge-b", "edge-c"],
     "client_edge": {"delay_ms": 10, "jitter_ms": 3, "rate_mbps": 50},
     "edge_edge": {"delay_ms": 40, "jitter_ms": 5, "rate_mbps": 20},
     "links": {"edge-a/edge-c": {"delay_ms": 60, "jitter_ms": 8, "rate_mbps": 10}}}

``client_edge`` is every client's access link to a node; ``edge_edge`` every link between two
nodes unless ``links`` gives that pair its own (either order; both directions get the profile).
Each node connects to each peer through a TCP proxy of its own (node -> peer), so every direction
of every pair is shaped and counted; clients reach a node through that node's access proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from edgecloud.netem import LinkProfile, TcpProxy, profile_from_dict

DEFAULT_TOPOLOGY: dict[str, Any] = {
    "nodes": ["edge-a", "edge-b", "edge-c"],
    "client_edge": {"delay_ms": 10.0, "jitter_ms": 3.0, "rate_mbps": 50.0},
    "edge_edge": {"delay_ms": 40.0, "jitter_ms": 5.0, "rate_mbps": 20.0},
    "links": {
        "edge-a/edge-b": {"delay_ms": 20.0, "jitter_ms": 3.0, "rate_mbps": 100.0},
        "edge-a/edge-c": {"delay_ms": 60.0, "jitter_ms": 8.0, "rate_mbps": 10.0},
    },
}


@dataclass(frozen=True)
class Topology:
    nodes: tuple[str, ...]
    client_edge: LinkProfile
    edge_edge: dict[tuple[str, str], LinkProfile]  # every ordered pair

    @classmethod
    def from_dict(cls, spec: dict[str, Any], where: str = "topology") -> Topology:
        unknown = set(spec) - {"nodes", "client_edge", "edge_edge", "links"}
        if unknown:
            raise ValueError(
                f"{where}: unknown field(s) {sorted(unknown)}; allowed: nodes, client_edge, edge_edge, links"
            )
        nodes = spec.get("nodes")
        if not isinstance(nodes, list) or len(nodes) < 2 or len(set(nodes)) != len(nodes):
            raise ValueError(f"{where}: nodes must be a list of at least 2 distinct names, got {nodes!r}")
        try:
            client = profile_from_dict(spec.get("client_edge", {}))
            default = profile_from_dict(spec.get("edge_edge", {}))
            pairs = {(a, b): default for a in nodes for b in nodes if a != b}
            for key, link in (spec.get("links") or {}).items():
                a, sep, b = key.partition("/")
                if not sep or a not in nodes or b not in nodes or a == b:
                    raise ValueError(f"link {key!r} must be NODE/NODE of two nodes of {nodes}")
                profile = profile_from_dict(link)
                pairs[(a, b)] = pairs[(b, a)] = profile
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        return cls(tuple(nodes), client, pairs)

    @classmethod
    def from_file(cls, path: str | Path) -> Topology:
        try:
            spec = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(spec, str(path))

    def describe(self) -> dict[str, Any]:
        return {
            "nodes": list(self.nodes),
            "client_edge": self.client_edge.describe(),
            "edge_edge": {f"{a}/{b}": p.describe() for (a, b), p in self.edge_edge.items() if a < b},
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class NodeProcess:
    name: str
    http_port: int
    replication_port: int
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class EmulatedEdge:
    """``await edge.start()`` runs every node (``edgecloud edge node`` processes) behind the links;
    ``edge.client_url(node)`` is a client's way in; ``await edge.stop()``."""

    topology: Topology
    mode: str
    pki: Path
    work_dir: Path
    node_args: list[str] = field(default_factory=list)
    seed: int = 0
    nodes: dict[str, NodeProcess] = field(default_factory=dict)
    edge_proxies: dict[tuple[str, str], TcpProxy] = field(default_factory=dict)
    access: dict[str, TcpProxy] = field(default_factory=dict)

    async def start(self, timeout_s: float = 600.0) -> None:
        names = self.topology.nodes
        ports = {n: (free_port(), free_port()) for n in names}
        for i, (a, b) in enumerate(sorted(self.topology.edge_edge)):
            profile = self.topology.edge_edge[(a, b)]
            proxy = TcpProxy(target=("127.0.0.1", ports[b][1]), uplink=profile, downlink=profile,
                             seed=self.seed * 1000 + i)
            await proxy.start()
            self.edge_proxies[(a, b)] = proxy
        for i, name in enumerate(names):
            proxy = TcpProxy(target=("127.0.0.1", ports[name][0]), uplink=self.topology.client_edge,
                             downlink=self.topology.client_edge, seed=self.seed * 1000 + 500 + i)
            await proxy.start()
            self.access[name] = proxy
            peers = ",".join(f"{p}={self.edge_proxies[(name, p)].address[0]}:{self.edge_proxies[(name, p)].address[1]}"
                             for p in names if p != name)
            args = [
                sys.executable, "-m", "edgecloud.cli", "edge", "node", "--name", name, "--mode", self.mode,
                "--listen", f"127.0.0.1:{ports[name][0]}", "--replicate", f"127.0.0.1:{ports[name][1]}",
                "--peers", peers, "--pki", str(self.pki), "--store", str(self.work_dir / f"{name}.sqlite"),
                "--log-level", "warning", *self.node_args,
            ]
            log_path = self.work_dir / f"{name}.log"
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
            self.nodes[name] = NodeProcess(name, ports[name][0], ports[name][1], process, log_path)
        await self._wait_ready(timeout_s)

    async def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=5) as client:
            for node in self.nodes.values():
                while True:
                    if node.process.poll() is not None:
                        raise RuntimeError(f"node {node.name} exited ({node.process.returncode}):\n"
                                           f"{node.log_path.read_text()[-3000:]}")
                    try:
                        status = (await client.get(f"http://127.0.0.1:{node.http_port}/v1/edge/status")).json()
                        if all(p["up"] for p in status.get("peers", {}).values()):
                            break
                    except (httpx.HTTPError, ValueError):
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"node {node.name} not ready in {timeout_s:g} s:\n"
                                           f"{node.log_path.read_text()[-3000:]}")
                    await asyncio.sleep(0.3)

    def client_url(self, node: str) -> str:
        host, port = self.access[node].address
        return f"http://{host}:{port}"

    def direct_url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.nodes[node].http_port}"

    def edge_bytes(self) -> int:
        """Bytes delivered over the links between nodes, both directions, TLS included."""
        return sum(p.stats.uplink.bytes_delivered + p.stats.downlink.bytes_delivered
                   for p in self.edge_proxies.values())

    def access_bytes(self) -> int:
        """Bytes delivered from clients to the nodes over the access links (the requests, HTTP included)."""
        return sum(p.stats.uplink.bytes_delivered for p in self.access.values())

    def kill(self, node: str) -> None:
        """``kill -9``: the node dies with whatever it had in flight."""
        process = self.nodes[node].process
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait()

    async def stop(self) -> None:
        for node in self.nodes.values():
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            try:
                await asyncio.to_thread(node.process.wait, 30)
            except subprocess.TimeoutExpired:
                node.process.kill()
        for proxy in [*self.edge_proxies.values(), *self.access.values()]:
            await proxy.stop()
