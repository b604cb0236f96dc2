"""Edge nodes in this process (the demo model, the engine core in a thread), over real mutual TLS:
a roaming session, the three modes, and every kind of bad input the issue names."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import httpx
import msgspec

from edgecloud.c2 import pki, tls
from edgecloud.edge.node import EdgeNode, NodeConfig
from edgecloud.edge.replication import ReplicaCore, ReplicationSettings
from edgecloud.edge.store import ContextStore
from edgecloud.edge.transport import Transport
from edgecloud.edge.turns import sealed
from edgecloud.edge.wire import Hello, Ping, Pong, ProtocolError, Push, PushAck, decode, encode
from edgecloud.server.app import ServerSettings
from tests.edge.cluster import DEMO_TEMPLATE, demo_engine, edge_nodes, listening_socket, make_pki, run_watched

NAMES = ["edge-a", "edge-b", "edge-c"]
MODEL = "edgecloud-demo"


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 8, "temperature": 0,
            **extra}


async def start(nodes: list[EdgeNode], socks: list[Any]) -> None:
    await asyncio.gather(*(n.start(replication_sock=s) for n, s in zip(nodes, socks, strict=True)))
    for _ in range(1200):  # every node connected to every peer (60 s: TLS handshakes crawl on a loaded machine)
        if all(all(p["up"] for p in n.status().get("peers", {}).values()) for n in nodes):
            return
        await asyncio.sleep(0.05)
    raise AssertionError([n.status() for n in nodes])


async def stop(nodes: list[EdgeNode]) -> None:
    await asyncio.gather(*(n.stop() for n in nodes))


def test_a_roaming_session_carries_only_new_messages_and_reads_its_writes_everywhere(tmp_path: Path) -> None:
    async def run() -> None:
        pki_dir = make_pki(tmp_path / "pki", NAMES)
        nodes, socks = edge_nodes(NAMES, pki_dir, tmp_path)
        await start(nodes, socks)
        try:
            async with httpx.AsyncClient(timeout=60) as client:
                # The first turn names a new session in the body; the second sends the version in the body.
                first = await client.post(f"{nodes[0].url}/v1/chat/completions", json=chat("A fool", session="new"))
                assert first.status_code == 200, first.text
                session, version = first.headers["X-Session-Id"], first.headers["X-Session-Version"]
                assert version == "edge-a:1" and first.headers["X-Session-Turn"] == "edge-a:1"
                second = await client.post(f"{nodes[1].url}/v1/chat/completions",
                                           json=chat("and his money", session=session, session_version=version))
                assert second.status_code == 200, second.text
                assert second.headers["X-Session-Version"] == "edge-a:1,edge-b:1"
                assert second.json()["usage"]["prompt_tokens"] > first.json()["usage"]["prompt_tokens"] + 4
                third = await client.post(f"{nodes[2].url}/v1/chat/completions", json=chat("are soon parted"),
                                          headers={"X-Session-Id": session,
                                                   "X-Session-Version": second.headers["X-Session-Version"]})
                assert third.status_code == 200 and third.headers["X-Session-Turns"] == "3"
                version = third.headers["X-Session-Version"]
                views = [(await client.get(f"{n.url}/v1/sessions/{session}", headers={"X-Session-Version": version}))
                         .json() for n in nodes]
                assert all(v["turns"] == views[0]["turns"] for v in views) and not views[0]["conflicts"]
                assert [t["user"] for t in views[0]["turns"]] == ["A fool", "and his money", "are soon parted"]
                assert [t["version"] for t in views[0]["turns"]] == ["0", "edge-a:1", "edge-a:1,edge-b:1"]
                answers = [r.json()["choices"][0]["message"]["content"] for r in (first, second, third)]
                assert [t["assistant"] for t in views[0]["turns"]] == answers
                # The context is the stored tokens: node c's prompt is a's two turns plus the new message.
                stats = nodes[2].stats()
                assert stats["turns"][0]["context_turns"] == 2
                assert stats["turns"][0]["prompt_tokens"] == third.json()["usage"]["prompt_tokens"]
                assert nodes[0].stats()["turn_bytes"] and nodes[0].stats()["frames_dropped"] == 0
                # A plain request (no session) is served as by edgecloud serve.
                plain = await client.post(f"{nodes[0].url}/v1/chat/completions", json=chat("Hello"))
                assert plain.status_code == 200 and "X-Session-Id" not in plain.headers
        finally:
            await stop(nodes)

    run_watched(run())


def test_bad_session_input_gets_a_precise_error_and_leaves_the_session_as_it_was(tmp_path: Path) -> None:
    async def run() -> None:
        pki_dir = make_pki(tmp_path / "pki", NAMES)
        settings = ReplicationSettings(write_quorum=2, read_timeout_s=1.0)
        nodes, socks = edge_nodes(NAMES, pki_dir, tmp_path, settings=settings)
        await start(nodes, socks)
        try:
            async with httpx.AsyncClient(timeout=60) as client:
                url = f"{nodes[0].url}/v1/chat/completions"
                ok = await client.post(url, json=chat("A fool"), headers={"X-Session-Id": "s1"})
                assert ok.status_code == 200, ok.text

                async def error(body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, dict]:
                    response = await client.post(url, json=body, headers=headers or {})
                    return response.status_code, response.json()["error"]

                status, err = await error(chat("x"), {"X-Session-Id": "nobody", "X-Session-Version": "edge-a:1"})
                assert (status, err["code"]) == (404, "session_not_found") and "'nobody' is unknown" in err["message"]
                status, err = await error(chat("x"), {"X-Session-Id": "s1", "X-Session-Version": "edge-a:7"})
                assert (status, err["code"], err["param"]) == (409, "version_from_future", "session_version")
                assert "edge-a:7" in err["message"] and "edge-a:1" in err["message"]
                status, err = await error(chat("x"), {"X-Session-Id": "s1", "X-Session-Version": "edge-z:1"})
                assert status == 409 and "edge-z" in err["message"]
                status, err = await error(chat("x"), {"X-Session-Id": "s1", "X-Session-Version": "seven"})
                assert (status, err["code"]) == (400, "invalid_version") and "NODE:TURNS" in err["message"]
                status, err = await error(chat("x"), {"X-Session-Id": "no spaces"})
                assert (status, err["param"]) == (400, "session")
                status, err = await error(chat("x"), {"X-Session-Version": "edge-a:1"})
                assert status == 400 and "needs a session" in err["message"]
                two = {**chat("x"), "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
                status, err = await error(two, {"X-Session-Id": "s1"})
                assert (status, err["param"]) == (400, "messages") and "one user message" in err["message"]
                status, err = await error(chat("x", stream=True), {"X-Session-Id": "s1"})
                assert (status, err["param"]) == (400, "stream")
                view = (await client.get(f"{nodes[1].url}/v1/sessions/s1", headers={"X-Session-Version": "edge-a:1"}))
                assert view.json()["version"] == "edge-a:1" and len(view.json()["turns"]) == 1
                missing = await client.get(f"{nodes[1].url}/v1/sessions/nobody")
                assert missing.status_code == 404
        finally:
            await stop(nodes)

    run_watched(run())


async def raw_peer(pki_dir: Path, name: str, address: tuple[str, int]) -> tuple[Any, Any]:
    """A TLS connection to a node's replication port as ``name``, past the hellos."""
    context = tls.client_context(pki_dir, name)
    reader, writer = await asyncio.open_connection(*address, ssl=context, server_hostname="edge-a")
    writer.write(encode(Hello(name, "tokens", b"")))
    assert isinstance(await read(reader), Hello)
    return reader, writer


async def read(reader: Any) -> Any:
    header = await asyncio.wait_for(reader.readexactly(4), 10)
    return decode(await reader.readexactly(int.from_bytes(header, "big")))


def test_foreign_revoked_and_corrupt_peers_are_refused_and_the_rest_goes_on(tmp_path: Path) -> None:
    async def run() -> None:
        pki_dir = make_pki(tmp_path / "pki", NAMES)
        foreign = make_pki(tmp_path / "foreign", ["edge-c"])  # edge-c's name, another CA
        nodes, socks = edge_nodes(NAMES, pki_dir, tmp_path)
        await start(nodes, socks)
        a = nodes[0]
        assert a.transport is not None
        address = a.transport.address
        try:
            async with httpx.AsyncClient(timeout=60) as client:
                # A corrupt frame and a tampered turn are refused; the connection and the node go on.
                reader, writer = await raw_peer(pki_dir, "edge-b", address)
                writer.write(len(b"\x93\xa4junk").to_bytes(4, "big") + b"\x93\xa4junk")
                reply = await read(reader)
                assert isinstance(reply, ProtocolError) and reply.code == "corrupt_message"
                ok = await client.post(f"{a.url}/v1/chat/completions", json=chat("A fool"),
                                       headers={"X-Session-Id": "s1"})
                assert ok.status_code == 200
                turn = a.transport.core.log("s1").order[0]
                tampered = msgspec.structs.replace(turn, session="s2", user_text="B fool", answer_text="x")
                writer.write(encode(Push(tampered)))
                ack = await read(reader)
                assert isinstance(ack, PushAck) and not ack.ok and ack.code == "corrupt_turn"
                writer.write(encode(Ping(1.0)))
                assert await read(reader) == Pong(1.0)
                assert not a.store.has("s2") and a.transport.stats.corrupt_messages == 1  # type: ignore[union-attr]
                writer.close()

                # A certificate of another CA never gets past the handshake.
                impostor = Transport(
                    ReplicaCore("edge-c", ["edge-a"], ContextStore(":memory:"), ReplicationSettings(write_quorum=1),
                                mode="tokens"),
                    {"edge-a": address}, foreign)
                refused = a.transport.stats.refused_connections
                await impostor.start(listening_socket())
                for _ in range(600):
                    if a.transport.stats.refused_connections > refused and impostor.stats.refused_connections:
                        break
                    await asyncio.sleep(0.05)
                assert a.transport.stats.refused_connections > refused and impostor.stats.refused_connections
                assert "edge-a" not in impostor.outgoing
                await impostor.stop()

                # Revoking edge-c cuts it off within the CRL check; a and b still make a quorum.
                pki.revoke(pki_dir, "edge-c")
                for _ in range(600):
                    if not a.status()["peers"]["edge-c"]["up"]:
                        break
                    await asyncio.sleep(0.05)
                assert not a.status()["peers"]["edge-c"]["up"]
                after = await client.post(f"{a.url}/v1/chat/completions", json=chat("and his money"),
                                          headers={"X-Session-Id": "s1", "X-Session-Version": "edge-a:1"})
                assert after.status_code == 200 and after.headers["X-Session-Version"] == "edge-a:2"
                assert len(nodes[1].transport.core.log("s1")) == 2  # type: ignore[union-attr]
                with_c = nodes[2].transport.core.log("s1")  # type: ignore[union-attr]
                assert len(with_c) == 1  # what it had before its certificate was revoked
        finally:
            await stop(nodes)

    run_watched(run())


def test_a_full_disk_refuses_the_turn_and_keeps_what_was_stored(tmp_path: Path) -> None:
    async def run() -> None:
        pki_dir = make_pki(tmp_path / "pki", ["solo"])
        config = NodeConfig(name="solo", pki=pki_dir, store=tmp_path / "solo.sqlite", http=("127.0.0.1", 0),
                            store_max_pages=6, store_synchronous="NORMAL")
        node = EdgeNode(config, demo_engine(), engine_core="thread",
                        server=ServerSettings(port=0, log_level="warning", engine_core="thread"))
        await node.start(replication_sock=listening_socket())
        try:
            async with httpx.AsyncClient(timeout=60) as client:
                url = f"{node.url}/v1/chat/completions"
                first = await client.post(url, json=chat("A fool"), headers={"X-Session-Id": "s0"})
                version = first.headers["X-Session-Version"]
                long = ("A fool and his money are soon parted. " * 30)[:1000]
                status, last, sessions = 200, first, 0
                while status == 200:  # other sessions fill the store
                    sessions += 1
                    last = await client.post(url, json=chat(long), headers={"X-Session-Id": f"s{sessions}"})
                    status = last.status_code
                assert status == 507, last.text
                err = last.json()["error"]
                assert err["code"] == "store_full" and "not stored and not acknowledged" in err["message"]
                assert not node.store.has(f"s{sessions}")  # type: ignore[union-attr]
                again = await client.post(url, json=chat(long), headers={"X-Session-Id": "s0",
                                                                         "X-Session-Version": version})
                assert again.status_code == 507
                view = await client.get(f"{node.url}/v1/sessions/s0", headers={"X-Session-Version": version})
                assert view.status_code == 200 and view.json()["version"] == version == "solo:1"
                assert [t["user"] for t in view.json()["turns"]] == ["A fool"]
        finally:
            await node.stop()

    run_watched(run())


def test_a_tokenizer_change_renders_stored_turns_again_from_their_text(tmp_path: Path) -> None:
    """A node restarted with another chat template (a new tokenizer fingerprint) and a peer that still
    runs the old one: the stored tokens are not reused, the text is."""

    async def run() -> None:
        pki_dir = make_pki(tmp_path / "pki", ["edge-a", "edge-b"])
        nodes, socks = edge_nodes(["edge-a", "edge-b"], pki_dir, tmp_path)
        other = DEMO_TEMPLATE.replace("<|eos|>{% endfor %}", "\n<|eos|>{% endfor %}")
        nodes[1].engine = type(nodes[1].engine)(demo_engine(other), core="thread")
        await start(nodes, socks)
        try:
            async with httpx.AsyncClient(timeout=60) as client:
                first = await client.post(f"{nodes[0].url}/v1/chat/completions", json=chat("A fool"),
                                          headers={"X-Session-Id": "s1"})
                version = first.headers["X-Session-Version"]
                assert nodes[0].status()["fingerprint"] != nodes[1].status()["fingerprint"]
                second = await client.post(f"{nodes[1].url}/v1/chat/completions", json=chat("and his money"),
                                           headers={"X-Session-Id": "s1", "X-Session-Version": version})
                assert second.status_code == 200, second.text
                # b's prompt is the whole conversation as its own template renders it
                tokenizer = nodes[1].engine.tokenizer
                answer = first.json()["choices"][0]["message"]["content"]
                rendered = tokenizer.apply_chat_template([
                    {"role": "user", "content": "A fool"}, {"role": "assistant", "content": answer},
                    {"role": "user", "content": "and his money"}], add_generation_prompt=True)
                expected = tokenizer.encode(rendered, add_special_tokens=False)
                assert second.json()["usage"]["prompt_tokens"] == len(expected)
                # a's turn reached b with its text, since b cannot decode a's tokens
                turn = nodes[1].transport.core.log("s1").order[0]  # type: ignore[union-attr]
                assert turn.form == "tokens" and turn.user_text == "A fool" and turn.answer_text == answer
        finally:
            await stop(nodes)

    run_watched(run())


def test_text_and_client_modes(tmp_path: Path) -> None:
    async def run() -> None:
        pki_dir = make_pki(tmp_path / "pki", ["edge-a", "edge-b"])
        for mode in ("text", "client"):
            nodes, socks = edge_nodes(["edge-a", "edge-b"], pki_dir, tmp_path / mode, mode=mode)
            (tmp_path / mode).mkdir()
            await start(nodes, socks)
            try:
                async with httpx.AsyncClient(timeout=60) as client:
                    first = await client.post(f"{nodes[0].url}/v1/chat/completions", json=chat("A fool"),
                                              headers={"X-Session-Id": "s1"})
                    if mode == "client":
                        assert first.status_code == 400 and "client mode" in first.json()["error"]["message"]
                        history = chat("A fool")
                        plain = await client.post(f"{nodes[0].url}/v1/chat/completions", json=history)
                        assert plain.status_code == 200
                        continue
                    assert first.status_code == 200
                    second = await client.post(
                        f"{nodes[1].url}/v1/chat/completions", json=chat("and his money"),
                        headers={"X-Session-Id": "s1", "X-Session-Version": first.headers["X-Session-Version"]})
                    assert second.status_code == 200
                    turns = nodes[1].transport.core.log("s1").order  # type: ignore[union-attr]
                    assert [t.form for t in turns] == ["text", "text"] and not turns[0].tokens
            finally:
                await stop(nodes)

    run_watched(run())


def test_a_sealed_turn_from_an_unconfigured_node_name_is_refused() -> None:
    core = ReplicaCore("edge-a", ["edge-b"], ContextStore(":memory:"), ReplicationSettings(write_quorum=1),
                       mode="text")
    from edgecloud.edge.turns import Turn

    stranger = sealed(Turn(session="s", origin="edge-x", seq=1, deps={}, form="text", user_text="a", answer_text="b"))
    (send,) = core.on_message("edge-b", Push(stranger), 0.0)[-1:]
    assert isinstance(send.message, PushAck) and send.message.code == "malformed_turn"
    assert "not a node of this edge" in send.message.message
    assert not ssl.OPENSSL_VERSION.startswith("LibreSSL 2")  # TLS 1.3 is available to the nodes
