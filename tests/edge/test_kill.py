"""``kill -9`` of a node in the middle of load (``edgecloud edge node`` processes behind emulated
links): no turn a client saw acknowledged is lost, and each session goes on at another node.

Three node processes take about 25 s on the 2-core machine, over the test-time budget of the
default run, so this runs with ``make bench`` (``edgecloud edge bench`` also kills a node of its
``tokens`` edge mid-load and checks the same)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from edgecloud.edge.topology import EmulatedEdge, Topology
from edgecloud.edge.turns import format_version, merged, parse_version
from tests.edge.cluster import DEMO_TEMPLATE, make_pki

NAMES = ["edge-a", "edge-b", "edge-c"]
LINK = {"delay_ms": 5.0, "jitter_ms": 1.0, "rate_mbps": 100.0}


@pytest.mark.bench
def test_kill_9_loses_no_acknowledged_turn_and_sessions_go_on(tmp_path: Path) -> None:
    async def run() -> None:
        topology = Topology.from_dict({"nodes": NAMES, "client_edge": LINK, "edge_edge": LINK})
        pki_dir = make_pki(tmp_path / "pki", NAMES)
        edge = EmulatedEdge(topology, "tokens", pki_dir, tmp_path, [
            "--model", "demo", "--chat-template", DEMO_TEMPLATE, "--engine-core", "thread", "--threads", "1",
            "--kv-cache-memory-mb", "16", "--store-sync", "normal",
        ])
        await edge.start(timeout_s=120)
        acked: dict[str, list[str]] = {}
        versions: dict[str, str] = {}
        killed = asyncio.Event()
        try:
            async with httpx.AsyncClient(timeout=30) as client:

                async def conversation(session: str, home: str) -> None:
                    node, version = home, ""
                    for turn in range(8):
                        for attempt in range(6):
                            if edge.nodes[node].process.poll() is not None:
                                node = NAMES[(NAMES.index(node) + 1) % 3]
                            headers = {"X-Session-Id": session, **({"X-Session-Version": version} if version else {})}
                            body = {"model": "edgecloud-demo", "max_tokens": 6, "temperature": 0,
                                    "messages": [{"role": "user", "content": f"{session} turn {turn}"}]}
                            request = asyncio.ensure_future(client.post(
                                f"{edge.client_url(node)}/v1/chat/completions", json=body, headers=headers))
                            if session == "s0" and turn == 3 and attempt == 0:
                                await asyncio.sleep(0.02)
                                edge.kill(node)  # the node dies with this request (and others) in flight
                                killed.set()
                            try:
                                response = await request
                            except httpx.TransportError:
                                response = None
                            if response is not None and response.status_code == 200:
                                version = response.headers["X-Session-Version"]
                                acked.setdefault(session, []).append(response.headers["X-Session-Turn"])
                                break
                            node = NAMES[(NAMES.index(node) + 1) % 3]  # roam on, carrying the version
                            await asyncio.sleep(0.2)
                        else:
                            raise AssertionError(f"{session} could not go on after turn {turn}")
                        versions[session] = version

                await asyncio.gather(*(conversation(f"s{i}", NAMES[i % 3]) for i in range(3)))
                assert killed.is_set()
                assert all(len(turns) == 8 for turns in acked.values()), acked
                for session, turns in acked.items():
                    want = parse_version(versions[session])
                    for node in ("edge-b", "edge-c"):
                        view = await client.get(f"{edge.direct_url(node)}/v1/sessions/{session}",
                                                headers={"X-Session-Version": format_version(want)})
                        assert view.status_code == 200, view.text
                        held = {f"{t['origin']}:{t['seq']}" for t in view.json()["turns"]}
                        assert set(turns) <= held, (session, node, set(turns) - held)
                        assert merged(parse_version(view.json()["version"]), want) == parse_version(
                            view.json()["version"])
        finally:
            await edge.stop()

    asyncio.run(run())
