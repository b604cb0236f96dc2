"""The pieces of ``edgecloud edge bench`` that decide what is measured: conversations rebuilt from a
Mooncake trace, message lengths, the roaming schedule and the paired ratio intervals."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest

from edgecloud.edge.bench import (
    ProseCorpus,
    TurnRecord,
    comparisons,
    mooncake_chains,
    mooncake_workload,
    per_turn_comparisons,
    ratio_ci,
    schedule,
    summarize,
    trace_request_tokens,
    trace_workload,
)
from edgecloud.edge.topology import Topology


def write_trace(path: Path) -> Path:
    rows = [
        (1500, 100, [0, 1, 2]),      # conversation A, turn 1 (block 0 is a system prompt every request shares)
        (600, 20, [0, 7]),           # conversation B, turn 1
        (2000, 50, [0, 1, 5, 6]),    # A, turn 2: its prompt begins with A's first full blocks
        (700, 10, [0, 8]),           # C: shares only block 0, so a conversation of its own
        (2600, 80, [0, 1, 5, 6, 9]),  # A, turn 3
    ]
    path.write_text("".join(json.dumps({"timestamp": i, "input_length": n, "output_length": o, "hash_ids": h}) + "\n"
                            for i, (n, o, h) in enumerate(rows)))
    return path


def test_mooncake_conversations_follow_shared_prompt_blocks(tmp_path: Path) -> None:
    chains = mooncake_chains(write_trace(tmp_path / "trace.jsonl"))
    assert chains == [[(1500, 100), (2000, 50), (2600, 80)], [(600, 20)], [(700, 10)]]


def test_mooncake_messages_scale_the_opening_and_cap_what_the_user_typed(tmp_path: Path) -> None:
    def words(text: str) -> int:
        return len(text.split())

    trace = write_trace(tmp_path / "trace.jsonl")
    [conversation] = mooncake_workload(trace, conversations=1, turns=3, input_scale=0.1, output_scale=0.5,
                                       max_user_tokens=500, corpus=ProseCorpus(), count=words, seed=3)
    # opening: 1500 x 0.1; then what the trace added beyond the previous answer (2000 - 1500 - 100,
    # unscaled; 2600 - 2000 - 50, capped at 500)
    assert [words(m) for m in conversation.messages] == [150, 400, 500]
    assert conversation.max_tokens == (50, 25, 40)
    with pytest.raises(ValueError, match="only 1 conversations have 3 turns"):
        mooncake_workload(trace, 2, 3, 0.1, 0.5, 500, ProseCorpus(), words, 3)


def test_trace_conversations_keep_their_turns_and_scale_every_length_alike(tmp_path: Path) -> None:
    def words(text: str) -> int:
        return len(text.split())

    trace = write_trace(tmp_path / "trace.jsonl")
    [conversation] = trace_workload(trace, conversations=1, scale=0.1, corpus=ProseCorpus(), count=words, seed=3)
    # A's three turns (B and C have one): 1500 x 0.1, then (2000 - 1500 - 100) x 0.1, (2600 - 2000 - 50) x 0.1
    assert [words(m) for m in conversation.messages] == [150, 40, 55]
    assert conversation.max_tokens == (10, 5, 8)
    with pytest.raises(ValueError, match="only 1 conversations have 2 turns or more"):
        trace_workload(trace, 2, 0.1, ProseCorpus(), words, 3)


def test_per_turn_ratios_pair_each_turn_of_each_conversation() -> None:
    def mode(name: str, size: Callable[[int], int]) -> dict:
        records = [TurnRecord(name, "w", c, k, "edge-a", 1, 200, 10.0, size(k) + (5 if c == "c1" else 0))
                   for c in ("c0", "c1") for k in range(3 if c == "c0" else 2)]
        records.append(TurnRecord(name, "w", "c2", 0, "edge-a", 1, 503, 10.0, 999))  # unanswered: left out
        return {"records": [asdict(r) for r in records]}

    curves = per_turn_comparisons({"tokens": mode("tokens", lambda k: 200), "client": mode("client",
                                                                                          lambda k: 200 + 400 * k)})
    rows = curves["request_tokens_over_client"]
    assert [(r["turn"], r["n"]) for r in rows] == [(1, 2), (2, 2), (3, 1)]
    assert [r["ratio"] for r in rows] == pytest.approx([1.0, 202.5 / 602.5, 200 / 1000])
    assert "rt_tokens_over_text" not in curves


def test_turns_whose_re_tokenized_prompt_is_not_the_stored_tokens_are_counted() -> None:
    def mode(name: str, prompts: list[int]) -> dict:
        records = [TurnRecord(name, "w", "c0", k, "edge-a", 1, 200, 10.0, 50, prompt_tokens=n)
                   for k, n in enumerate(prompts)]
        return {"records": [asdict(r) | {"sync_bytes": 1} for r in records]}

    same = comparisons({"tokens": mode("tokens", [100, 173, 250]), "text": mode("text", [100, 173, 250])}, seed=0)
    assert same["prompts_differ"] == 0
    # the first answer re-tokenized one id shorter: every later prompt differs
    split = comparisons({"tokens": mode("tokens", [100, 173, 250]), "text": mode("text", [100, 172, 249])}, seed=0)
    assert split["prompts_differ"] == 2


def test_a_conversation_starts_at_its_own_node_and_roams_on() -> None:
    nodes = ["a", "b", "c"]
    assert schedule(0, 5, nodes, roam_every=2) == ["a", "a", "b", "b", "c"]
    assert schedule(2, 4, nodes, roam_every=1) == ["c", "a", "b", "c"]


def test_ratio_of_medians_with_a_paired_interval() -> None:
    rng = random.Random(1)
    base = [rng.uniform(100, 900) for _ in range(40)]
    exact = ratio_ci([0.8 * x for x in base], base)
    assert exact["ratio"] == pytest.approx(0.8)
    assert exact["low"] == pytest.approx(0.8) and exact["high"] == pytest.approx(0.8)  # paired: no spread
    noisy = ratio_ci([x * rng.uniform(0.6, 1.0) for x in base], base)
    assert noisy["low"] < noisy["ratio"] < noisy["high"] <= 1.0
    assert ratio_ci([], base) == {"ratio": None, "low": None, "high": None}


def test_a_topology_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['edges'\]"):
        Topology.from_dict({"nodes": ["a", "b"], "edges": {}})
    with pytest.raises(ValueError, match="at least 2 distinct names"):
        Topology.from_dict({"nodes": ["a", "a"]})
    with pytest.raises(ValueError, match="link 'a/x' must be NODE/NODE"):
        Topology.from_dict({"nodes": ["a", "b"], "links": {"a/x": {"delay_ms": 5}}})
    topology = Topology.from_dict({"nodes": ["a", "b", "c"], "edge_edge": {"delay_ms": 40},
                                   "links": {"c/a": {"delay_ms": 60}}})
    assert topology.edge_edge[("a", "c")] == topology.edge_edge[("c", "a")] != topology.edge_edge[("a", "b")]


def test_request_sizes_at_the_traces_full_length(tmp_path: Path) -> None:
    trace = trace_request_tokens(write_trace(tmp_path / "trace.jsonl"))
    # conversation A only (B and C have one turn): client 1500, 2000, 2600; session 1500, 400, 550
    assert trace["requests"] == 3
    assert trace["client_tokens_p50"] == 2000 and trace["session_tokens_p50"] == 550
    assert trace["session_over_client"]["ratio"] == pytest.approx(550 / 2000)


def test_sync_bytes_are_paired_by_conversation_and_turn_not_by_position() -> None:
    """Each answered turn's replication bytes are found by the turn it made (session, origin, seq);
    the tokens/text ratio pairs the same turn of the same conversation, whatever order the turns
    finished in and whatever the node stats list first."""

    def mode(name: str, order: list[tuple[str, int]], scale: float) -> dict:
        records, entries = [], []
        for n, (conversation, k) in enumerate(order):
            session, origin = f"{name}-{conversation}", f"edge-{'abc'[k % 3]}"
            records.append(TurnRecord(name, "w", conversation, k, origin, 1, 200, 100.0 + n, 50,
                                      session=session, turn_id=f"{origin}:{k + 1}"))
            entries.append({"session": session, "origin": origin, "seq": k + 1,
                            "bytes": round(scale * (1000 + 300 * k + (7 if conversation == "c1" else 0)))})
        records.append(TurnRecord(name, "w", "c9", 0, "edge-a", 2, 503, 9.0, 50, error="behind"))  # no turn
        stats = [{"turn_bytes": entries[::-1], "turns": []}]  # the nodes list turns in their own order
        return summarize(name, records, stats, (0.0, 0.0), 0, 1.0, 0, 0, 0, nodes_killed=[])

    turns = [(c, k) for c in ("c0", "c1") for k in range(4)]
    tokens = mode("tokens", turns, 0.75)
    text = mode("text", turns[::-1], 1.0)  # the same turns, answered in the reverse order
    assert [r["sync_bytes"] for r in tokens["records"][:2]] == [750, 975]
    assert tokens["records"][-1]["sync_bytes"] == 0 and len(tokens["sync_bytes"]) == 8
    ratio = comparisons({"tokens": tokens, "text": text}, seed=0)["sync_tokens_over_text"]
    # paired turn by turn, every pair's ratio is 0.75 (to the byte's rounding): no spread at all
    assert ratio["ratio"] == pytest.approx(0.75, abs=2e-3)
    assert ratio["high"] - ratio["low"] < 5e-3


def test_a_turns_prompt_built_from_stored_tokens_equals_the_whole_conversation_rendered_again() -> None:
    """``edgecloud edge prepare``'s measurement: both ways of building each turn's prompt are timed,
    and they give the same token ids (the tokens node appends to what is stored; the text one
    re-renders everything)."""
    from edgecloud.edge.bench import Conversation, prepare_costs
    from edgecloud.edge.chat import ChatFormat
    from edgecloud.llm.model_source import resolve_model
    from edgecloud.llm.tokenizer import Tokenizer
    from tests.edge.cluster import DEMO_TEMPLATE

    chat = ChatFormat(Tokenizer(resolve_model("demo").directory, DEMO_TEMPLATE), b"test")
    conversation = Conversation("c", ("a fool and", "his money", "are soon parted"), (4, 4, 4))
    rows = prepare_costs(chat, [conversation], [["are soon", "parted", "so they say"]], repeat=2)
    assert [r["turn"] for r in rows] == [1, 2, 3] and all(r["same"] for r in rows)
    assert rows[0]["prompt_tokens"] < rows[1]["prompt_tokens"] < rows[2]["prompt_tokens"]
    assert all(r["text_ms"] > 0 and r["tokens_ms"] > 0 for r in rows)


def test_a_requests_counted_size_is_what_the_server_reads_off_the_socket() -> None:
    """Both modes' requests are counted as HTTP/1.1 puts them on the wire (request line, every header
    the client sends, body): the count equals the bytes a plain TCP server reads, headers and all."""
    import asyncio

    import httpx

    from edgecloud.edge.bench import http1_request_bytes

    async def main() -> tuple[list[int], list[int]]:
        received: list[int] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                body = await reader.readexactly(length)
                received.append(len(head) + len(body))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")
                await writer.drain()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        counted = []
        async with httpx.AsyncClient() as client:
            for body, headers in ((b'{"messages": []}', {}), (json.dumps({"m": "\u00e9" * 300}).encode(),
                                                              {"X-Session-Id": "s-42", "X-Session-Version": "a:3"})):
                request = client.build_request("POST", f"http://127.0.0.1:{port}/v1/chat/completions", content=body,
                                               headers={"Content-Type": "application/json", **headers})
                counted.append(http1_request_bytes(request))
                assert (await client.send(request)).status_code == 200
        server.close()
        return counted, received

    counted, received = asyncio.run(main())
    assert counted == received
    assert counted[0] > len(b'{"messages": []}') + 100  # the request line and the client's own headers count


def test_where_a_turns_time_goes_from_the_nodes_histogram_sums() -> None:
    from edgecloud.edge.bench import time_breakdown

    counters = {"queue_s": 0.4, "queued": 4, "engine_ttft_s": 2.0, "engine_ttft_n": 4, "e2e_s": 8.0, "e2e_n": 4,
                "prefix_queries": 0.0, "prefix_hits": 0.0}
    parts = time_breakdown([2100.0, 2100.0, 2100.0, 2100.0], counters, [5.0, 15.0], [50.0, 70.0])
    assert parts == pytest.approx({"rt": 2100.0, "server": 2000.0, "network": 100.0, "prepare": 10.0, "queue": 100.0,
                                   "to_first_token": 390.0, "after_first_token": 1500.0, "commit": 60.0})
    assert time_breakdown([], {**counters, "e2e_n": 0}, [], [])["network"] is None


def test_concurrency_bounds_the_conversations_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--concurrency 1``: one conversation at a time (each engine meets one request at a time);
    without it every conversation starts at once."""
    import asyncio
    from types import SimpleNamespace

    from edgecloud.edge import bench
    from edgecloud.edge.bench import Conversation, run_workload

    in_flight: set[str] = set()
    most = [0]

    async def fake_turn(client, edge, model, mode, workload, conversation, k, text, budget, node, state, alive):
        in_flight.add(conversation)
        most[0] = max(most[0], len(in_flight))
        await asyncio.sleep(0.01)
        if k == 1:
            in_flight.discard(conversation)
        return TurnRecord(mode, workload, conversation, k, node, 1, 200, 10.0, 100, request_wire_bytes=300)

    async def no_counters(client, edge):
        return {}

    monkeypatch.setattr(bench, "one_turn", fake_turn)
    monkeypatch.setattr(bench, "node_counters", no_counters)
    monkeypatch.setattr(bench.asyncio, "sleep", _fast_sleep(asyncio.sleep))
    edge = SimpleNamespace(topology=SimpleNamespace(nodes=["a", "b"]), edge_bytes=lambda: 0, access_bytes=lambda: 0)
    conversations = [Conversation(f"c{i}", ("x", "y"), (4, 4)) for i in range(4)]
    for concurrency, expected in ((1, 1), (2, 2), (None, 4)):
        most[0] = 0
        result = asyncio.run(run_workload({"client": edge}, "m", "w", conversations, 1, 0.0, 0.0,
                                          concurrency=concurrency))
        assert most[0] == expected and result["client"]["turns"] == 8


def _fast_sleep(sleep):  # the bench's think and settle pauses, shortened: the test is about order only
    async def fast(seconds: float) -> None:
        await sleep(min(seconds, 0.01))

    return fast
