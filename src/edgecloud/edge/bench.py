"""``edgecloud edge bench``: DisCEdge's three modes side by side on one emulated topology (DisCEdge,
arXiv 2511.22599, §5: response time, synchronisation traffic, client request size).

Each mode gets its own nodes (``edgecloud edge node`` processes, fresh stores and engines) behind
links of the same emulated topology (:mod:`edgecloud.edge.topology`). The three edges run at once
on the same conversations, roaming schedule and greedy decoding, interleaved: each conversation's
turn ``k`` is sent in one mode after the other, the order rotating from turn to turn, so the three
answers to one turn meet the same machine (on a shared machine, modes run one after the other would
meet different loads). They differ only in where the context lives and in what form it travels.
Two workloads:

* **mooncake**: conversations rebuilt from the Mooncake conversation trace (a request continues a
  conversation when its prompt's 512-token blocks begin with all full blocks of an earlier
  request's prompt); the first message is the conversation's opening context (scaled for a small
  model), each later message as long as what the trace added beyond the previous answer (what the
  user typed: unscaled, capped), the answer budget the trace's output length (scaled);
* **roaming**: a synthetic workload of shorter messages whose clients move to another node every
  ``--roam-every`` turns.

Message text is English prose from the Python documentation that ships with CPython
(``pydoc_data``), cut to each message's length in the model's tokens. Clients move between nodes
on a fixed schedule (conversation ``i`` starts at node ``i mod N``) and carry their session version.
After the two workloads, the ``tokens`` nodes serve a third run in which one node is killed with
SIGKILL mid-load: its clients continue at the next node with their version.

Per mode: response time p50/p95 (request sent to answer received, at the client), sync bytes per
turn (replication frames attributable to the turn: its pushes, their acknowledgements and fetch
replies carrying it, over all nodes), client request bytes (body and session headers), the
prefix-cache hit rate (all nodes' engines), stale reads and lost turns (:mod:`edgecloud.edge.checker`
over the versions the turns were generated from, read back from the nodes' stores at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import random
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MODES = ("tokens", "text", "client")
DEFAULT_TRACE = "../shared/traces/mooncake_conversation.jsonl"


# -- workloads ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversation:
    name: str
    messages: tuple[str, ...]
    max_tokens: tuple[int, ...]


class ProseCorpus:
    """Sentences of the Python documentation (``pydoc_data.topics``), prose only (no code, no headings)."""

    def __init__(self) -> None:
        from pydoc_data.topics import topics

        sentences: list[str] = []
        for key in sorted(topics):
            for paragraph in re.split(r"\n\s*\n", topics[key]):
                lines = paragraph.splitlines()
                if not lines or any(line.startswith((" ", "\t", "*", "=", "-", ">")) for line in lines):
                    continue
                text = " ".join(line.strip() for line in lines)
                if len(text) < 40 or text.count("`") > 6:
                    continue
                sentences += [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 4]
        self.sentences = sentences

    def text(self, rng: random.Random, num_tokens: int, count: Callable[[str], int]) -> str:
        """Consecutive sentences from a random place, cut to about ``num_tokens`` tokens."""
        start = rng.randrange(len(self.sentences))
        words: list[str] = []
        i, enough = start, max(1, num_tokens // 2)
        while True:  # enough words, counted O(log n) times (the trace's prompts reach 123k tokens)
            while len(words) < enough:
                words += self.sentences[i % len(self.sentences)].split()
                i += 1
            if count(" ".join(words)) >= num_tokens:
                break
            enough = len(words) * 3 // 2 + 1
        low, high = 1, len(words)
        while low < high:  # the fewest words that reach the length
            mid = (low + high) // 2
            if count(" ".join(words[:mid])) >= num_tokens:
                high = mid
            else:
                low = mid + 1
        return " ".join(words[:low])


def mooncake_chains(path: str | Path) -> list[list[tuple[int, int]]]:
    """Conversations of a Mooncake trace as lists of (input tokens, output tokens), in arrival order."""
    from edgecloud.bench.traces import read_mooncake_jsonl

    requests = read_mooncake_jsonl(path)
    latest: dict[tuple[int, ...], int] = {}
    chains: list[list[int]] = []
    chain_of: dict[int, int] = {}
    for j, request in enumerate(requests):
        blocks = request.hash_ids
        parent = next((latest[blocks[:n]] for n in range(len(blocks), 1, -1) if blocks[:n] in latest), None)
        if parent is None:
            chain_of[j] = len(chains)
            chains.append([j])
        else:
            chain_of[j] = chain_of[parent]
            chains[chain_of[j]].append(j)
        latest[blocks[:-1] if len(blocks) > 1 else blocks] = j
    return [[(requests[j].input_len, requests[j].output_len) for j in chain] for chain in chains]


def trace_request_tokens(path: str | Path, min_turns: int = 2, seed: int = 0) -> dict[str, Any]:
    """Client request sizes at the trace's full length, in tokens (no model runs): a client keeping
    its context sends a request's whole prompt (the trace's input length); a DisCEdge client sends
    what the prompt adds to the previous prompt and answer. Conversations of ``min_turns`` or more."""
    requests_client, requests_session = [], []
    for chain in mooncake_chains(path):
        if len(chain) < min_turns:
            continue
        for k, (input_len, _) in enumerate(chain):
            requests_client.append(input_len)
            previous = chain[k - 1] if k else (0, 0)
            requests_session.append(max(1, input_len - previous[0] - previous[1]))
    return {"conversations_min_turns": min_turns, "requests": len(requests_client),
            "client_tokens_p50": _percentile(requests_client, 50),
            "session_tokens_p50": _percentile(requests_session, 50),
            "session_over_client": ratio_ci(requests_session, requests_client, seed=seed)}


def _chains(path: str | Path, conversations: int, min_turns: int) -> list[list[tuple[int, int]]]:
    """The trace's first ``conversations`` conversations of ``min_turns`` turns or more."""
    chains = [c for c in mooncake_chains(path) if len(c) >= min_turns][:conversations]
    if len(chains) < conversations:
        raise ValueError(f"{path}: only {len(chains)} conversations have {min_turns} turns or more")
    return chains


def _added(chain: list[tuple[int, int]], k: int) -> int:
    """What turn ``k``'s prompt adds: the opening context, then what follows the previous answer."""
    return chain[0][0] if k == 0 else chain[k][0] - chain[k - 1][0] - chain[k - 1][1]


def _conversations(sized: list[tuple[list[int], list[int]]], corpus: ProseCorpus, count: Callable[[str], int],
                   seed: int) -> list[Conversation]:
    """Prose messages of the given lengths (in the model's tokens), with their answer budgets."""
    rng = random.Random(seed)
    return [Conversation(f"mooncake-{i}", tuple(corpus.text(rng, n, count) for n in lengths), tuple(budgets))
            for i, (lengths, budgets) in enumerate(sized)]


def mooncake_workload(
    path: str | Path, conversations: int, turns: int, input_scale: float, output_scale: float,
    max_user_tokens: int, corpus: ProseCorpus, count: Callable[[str], int], seed: int,
) -> list[Conversation]:
    sized = []
    for chain in _chains(path, conversations, turns):
        # The opening context (a document, a system prompt) is scaled; later messages are what a
        # user typed, kept at their length up to a cap.
        lengths = [max(4, round(_added(chain, 0) * input_scale))]
        lengths += [max(4, min(max_user_tokens, _added(chain, k))) for k in range(1, turns)]
        sized.append((lengths, [max(4, round(out * output_scale)) for _, out in chain[:turns]]))
    return _conversations(sized, corpus, count, seed)


def trace_workload(
    path: str | Path, conversations: int, scale: float, corpus: ProseCorpus, count: Callable[[str], int],
    seed: int, min_turns: int = 2,
) -> list[Conversation]:
    """The trace's conversations as they are, scaled: the first ``conversations`` conversations of
    ``min_turns`` turns or more in arrival order, each with all its turns, and every length (the
    opening context, each later message as what the trace added beyond the previous answer, each
    answer budget) times ``scale`` (at least one token). The number of turns, and the proportion of
    a conversation's opening context to what its later messages add, are the trace's."""
    sized = [([max(1, round(_added(chain, k) * scale)) for k in range(len(chain))],
              [max(1, round(out * scale)) for _, out in chain]) for chain in _chains(path, conversations, min_turns)]
    return _conversations(sized, corpus, count, seed)


def roaming_workload(conversations: int, turns: int, user_tokens: tuple[int, int], max_tokens: int,
                     corpus: ProseCorpus, count: Callable[[str], int], seed: int) -> list[Conversation]:
    rng = random.Random(seed + 1)
    return [
        Conversation(f"roaming-{i}", tuple(corpus.text(rng, rng.randint(*user_tokens), count) for _ in range(turns)),
                     (max_tokens,) * turns)
        for i in range(conversations)
    ]


def schedule(conversation_index: int, turns: int, nodes: Sequence[str], roam_every: int) -> list[str]:
    """Conversation ``i`` starts at node ``i mod N`` and moves on every ``roam_every`` turns."""
    return [nodes[(conversation_index + k // roam_every) % len(nodes)] for k in range(turns)]


# -- one run ------------------------------------------------------------------------------------


@dataclass
class TurnRecord:
    mode: str
    workload: str
    conversation: str
    turn: int
    node: str
    attempts: int
    status: int
    rt_ms: float
    request_bytes: int
    prompt_tokens: int = 0
    request_wire_bytes: int = 0
    completion_tokens: int = 0
    session: str = ""
    turn_id: str = ""
    version: str = ""
    error: str = ""


@dataclass
class ClientState:
    session: str = "new"
    version: str = ""
    history: list[dict[str, str]] = field(default_factory=list)


def http1_request_bytes(request: Any) -> int:
    """What an ``httpx.Request`` puts on the wire over HTTP/1.1: its request line, every header the
    client sends (``Host``, ``Content-Length``, ``User-Agent``, ``Accept``... as well as the caller's)
    and its body. Both modes' requests are counted so; the access links' byte counters check it."""
    head = b"%s %s HTTP/1.1\r\n" % (request.method.encode(), request.url.raw_path)
    head += b"".join(name + b": " + value + b"\r\n" for name, value in request.headers.raw)
    return len(head) + 2 + len(request.content)


async def one_turn(
    client: Any, edge: Any, model: str, mode: str, workload: str, conversation: str, k: int, text: str,
    budget: int, node: str, state: ClientState, alive: Callable[[str], bool],
) -> TurnRecord:
    """One turn of one conversation in one mode: the request (with the whole history in client mode,
    the new message and the session's version otherwise); a client whose node is gone or failed
    moves on to the next node with its version, as a roaming client would."""
    nodes = list(edge.topology.nodes)
    message = {"role": "user", "content": text}
    body: dict[str, Any] = {"model": model, "max_tokens": budget, "temperature": 0}
    headers: dict[str, str] = {}
    if mode == "client":
        body["messages"] = [*state.history, message]
    else:
        body["messages"] = [message]
        headers["X-Session-Id"] = state.session
        if state.version:
            headers["X-Session-Version"] = state.version
    payload = json.dumps(body).encode()
    request_bytes = len(payload) + sum(len(name) + len(value) + 4 for name, value in headers.items())
    record: TurnRecord | None = None
    for attempt in range(1, 2 * len(nodes) + 1):
        if not alive(node):
            node = nodes[(nodes.index(node) + 1) % len(nodes)]
            continue
        request = client.build_request("POST", f"{edge.client_url(node)}/v1/chat/completions", content=payload,
                                       headers={"Content-Type": "application/json", **headers})
        wire_bytes = http1_request_bytes(request)
        started = time.perf_counter()
        try:
            response = await client.send(request)
        except Exception as error:  # the node died under the request
            record = TurnRecord(mode, workload, conversation, k, node, attempt, 0,
                                (time.perf_counter() - started) * 1e3, request_bytes, error=type(error).__name__,
                                request_wire_bytes=wire_bytes)
            node = nodes[(nodes.index(node) + 1) % len(nodes)]
            continue
        record = TurnRecord(mode, workload, conversation, k, node, attempt, response.status_code,
                            (time.perf_counter() - started) * 1e3, request_bytes, request_wire_bytes=wire_bytes)
        if response.status_code == 200:
            answer = response.json()
            usage = answer.get("usage", {})
            record.prompt_tokens = usage.get("prompt_tokens", 0)
            record.completion_tokens = usage.get("completion_tokens", 0)
            state.history += [message, {"role": "assistant", "content": answer["choices"][0]["message"]["content"]}]
            if mode != "client":
                state.session = response.headers["X-Session-Id"]
                state.version = response.headers["X-Session-Version"]
                record.session, record.version = state.session, state.version
                record.turn_id = response.headers.get("X-Session-Turn", "")
            return record
        record.error = response.text[:300]
        if response.status_code < 500:
            return record
        node = nodes[(nodes.index(node) + 1) % len(nodes)]
        await asyncio.sleep(0.2)
    assert record is not None
    return record


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# Each node's counters read from its /metrics: the prefix cache's lookups and hits, and the sums and
# counts of the server's per-request histograms, from which a run's mean time per turn in each part
# of a node's path follows (where the time goes).
_COUNTERS = {
    "prefix_queries": "edgecloud_prefix_cache_queries_total",
    "prefix_hits": "edgecloud_prefix_cache_hits_total",
    "queue_s": "edgecloud_request_queue_time_seconds_sum",
    "queued": "edgecloud_request_queue_time_seconds_count",
    "engine_ttft_s": "edgecloud_engine_time_to_first_token_seconds_sum",
    "engine_ttft_n": "edgecloud_engine_time_to_first_token_seconds_count",
    "e2e_s": "edgecloud_e2e_request_latency_seconds_sum",
    "e2e_n": "edgecloud_e2e_request_latency_seconds_count",
}


async def node_counters(client: Any, edge: Any) -> dict[str, dict[str, float]]:
    """Each live node's counters (``_COUNTERS``)."""
    counters = {}
    for node in edge.topology.nodes:
        if edge.nodes[node].process.poll() is not None:
            continue
        text = (await client.get(f"{edge.direct_url(node)}/metrics")).text
        counters[node] = {key: _metric(text, name) for key, name in _COUNTERS.items()}
    return counters


def counter_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each counter's growth during a run, over the nodes alive at its start and end (a killed
    node's are lost)."""
    nodes = set(before) & set(after)
    return {key: sum(after[n][key] - before[n][key] for n in nodes) for key in _COUNTERS}


def time_breakdown(rt_ms: Sequence[float], counters: dict[str, float], prepare_ms: Sequence[float],
                   commit_ms: Sequence[float]) -> dict[str, float | None]:
    """Where a turn's time goes, means per turn over a run (ms): at the client (``rt``), the node's
    whole handling (``server``: request read to answer handed to the socket), the rest (``network``:
    the access link both ways, the client), and within the node: ``prepare`` (session read, waiting
    for the client's version, building the prompt; session modes only), ``queue`` (in the engine,
    before first scheduled), ``to_first_token`` (request read to the engine's first token, less the
    two: the prefill, and in client mode the rendering and tokenizing of the history),
    ``after_first_token`` (the decode and the write quorum's wait) and ``commit`` (that wait)."""

    def mean(values: Sequence[float]) -> float | None:
        return sum(values) / len(values) if values else None

    def per(total_s: str, count: str) -> float | None:
        return counters[total_s] / counters[count] * 1e3 if counters.get(count) else None

    rt, server, queue, ttft = mean(rt_ms), per("e2e_s", "e2e_n"), per("queue_s", "queued"), per(
        "engine_ttft_s", "engine_ttft_n")
    prepare, commit = mean(prepare_ms) or 0.0, mean(commit_ms) or 0.0
    return {
        "rt": rt, "server": server, "network": rt - server if rt is not None and server is not None else None,
        "prepare": prepare, "queue": queue,
        "to_first_token": ttft - prepare - queue if ttft is not None and queue is not None else None,
        "after_first_token": server - ttft if server is not None and ttft is not None else None,
        "commit": commit,
    }


async def node_stats(client: Any, edge: Any, sessions: set[str]) -> list[dict[str, Any]]:
    """Each live node's counters of the turns of ``sessions`` (the nodes serve several workloads)."""
    stats = []
    for node in edge.topology.nodes:
        if edge.nodes[node].process.poll() is None:
            body = (await client.get(f"{edge.direct_url(node)}/v1/edge/stats")).json()
            body["turn_bytes"] = [t for t in body.get("turn_bytes", []) if t["session"] in sessions]
            body["turns"] = [t for t in body.get("turns", []) if t["session"] in sessions]
            stats.append(body)
    return stats


async def check_sessions(client: Any, edge: Any, records: list[TurnRecord]) -> tuple[int, int, int]:
    """Stale reads, lost turns and divergent copies, from what every live node's store holds."""
    from edgecloud.edge.checker import SessionChecker, turns_of
    from edgecloud.edge.turns import merged, parse_version

    checker = SessionChecker()
    union: dict[str, dict[str, int]] = {}
    for r in records:
        if r.status == 200 and r.session:
            union[r.session] = merged(union.get(r.session, {}), parse_version(r.version))
    live = [n for n in edge.topology.nodes if edge.nodes[n].process.poll() is None]
    copies: dict[str, dict[str, list[tuple[str, int]]]] = {n: {} for n in live}
    deps: dict[tuple[str, str, int], dict[str, int]] = {}
    for node in live:
        for session, version in union.items():
            from edgecloud.edge.turns import format_version

            response = await client.get(f"{edge.direct_url(node)}/v1/sessions/{session}",
                                        headers={"X-Session-Version": format_version(version)})
            if response.status_code != 200:
                copies[node][session] = []
                continue
            turns = response.json()["turns"]
            copies[node][session] = [(t["origin"], t["seq"]) for t in turns]
            for t in turns:
                deps[(session, t["origin"], t["seq"])] = parse_version(t["version"])
    for r in sorted(records, key=lambda r: (r.conversation, r.turn)):
        if r.status != 200 or not r.turn_id:
            continue
        origin, _, seq = r.turn_id.rpartition(":")
        base = deps.get((r.session, origin, int(seq)))
        if base is not None:  # the context the answer was generated from, as stored with the turn
            checker.read(r.conversation, r.session, turns_of(base), where=r.node)
        checker.acked(r.conversation, r.session, (origin, int(seq)))
    checker.final(copies)
    stale = checker.count("read_your_writes") + checker.count("monotonic_reads")
    return stale, checker.count("lost_turn"), checker.count("divergence")


async def run_workload(
    edges: dict[str, Any], model: str, workload: str, conversations: list[Conversation], roam_every: int,
    think_s: float, stagger_s: float, kill: tuple[str, float] | None = None, concurrency: int | None = None,
) -> dict[str, dict[str, Any]]:
    """The conversations in every mode at once, interleaved: each conversation's turn ``k`` runs in
    one mode after the other (the order rotating from turn to turn), so the modes of one turn meet
    the same machine, and every conversation's next turn waits for all of them. ``concurrency``: at
    most this many conversations in flight (the others start as one ends); all at once if None."""
    import httpx

    modes = list(edges)
    records: dict[str, list[TurnRecord]] = {m: [] for m in modes}
    killed: set[str] = set()
    nodes = list(next(iter(edges.values())).topology.nodes)
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0, connect=10.0)) as client:
        counters = {m: await node_counters(client, e) for m, e in edges.items()}
        wire0 = {m: e.edge_bytes() for m, e in edges.items()}
        uplink0 = {m: e.access_bytes() for m, e in edges.items()}
        slots = asyncio.Semaphore(concurrency or len(conversations) or 1)

        async def converse(i: int, conversation: Conversation) -> None:
            await asyncio.sleep(i * stagger_s)
            async with slots:
                await converse_now(i, conversation)

        async def converse_now(i: int, conversation: Conversation) -> None:
            route = schedule(i, len(conversation.messages), nodes, roam_every)
            states = {m: ClientState() for m in modes}
            for k, (text, budget) in enumerate(zip(conversation.messages, conversation.max_tokens, strict=True)):
                order = modes[(i + k) % len(modes):] + modes[:(i + k) % len(modes)]
                for mode in order:
                    if states[mode] is None:
                        continue
                    record = await one_turn(client, edges[mode], model, mode, workload, conversation.name, k, text,
                                            budget, route[k], states[mode], lambda n: n not in killed)
                    records[mode].append(record)
                    print(f"  {workload} {conversation.name} turn {k + 1} {mode} at {record.node}: {record.status}, "
                          f"{record.rt_ms:.0f} ms, {record.prompt_tokens}+{record.completion_tokens} tokens",
                          flush=True)
                    if record.status != 200:
                        states[mode] = None  # type: ignore[assignment]  # it cannot go on without its answer
                await asyncio.sleep(think_s)

        async def killer(node: str, after_s: float) -> None:
            await asyncio.sleep(after_s)
            killed.add(node)
            for edge in edges.values():
                edge.kill(node)
            # the links to the dead node now fail every connection attempt: expected, not news
            logging.getLogger("edgecloud.netem.tcp").setLevel(logging.ERROR)

        tasks = [converse(i, c) for i, c in enumerate(conversations)]
        if kill is not None:
            tasks.append(killer(*kill))
        began = time.monotonic()
        await asyncio.gather(*tasks)
        duration = time.monotonic() - began
        await asyncio.sleep(1.0)  # replication of the last turns settles
        results = {}
        for mode, edge in edges.items():
            delta = counter_delta(counters[mode], await node_counters(client, edge))
            sessions = {r.session for r in records[mode] if r.session}
            stats = await node_stats(client, edge, sessions) if mode != "client" else []
            stale = lost = divergent = 0
            if mode != "client":
                stale, lost, divergent = await check_sessions(client, edge, records[mode])
            results[mode] = summarize(mode, records[mode], stats, (delta["prefix_queries"], delta["prefix_hits"]),
                                      edge.edge_bytes() - wire0[mode], duration, stale, lost, divergent,
                                      nodes_killed=sorted(killed), counters=delta,
                                      uplink_bytes=edge.access_bytes() - uplink0[mode])
    return results


def _percentile(values: Sequence[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def summarize(mode: str, records: list[TurnRecord], stats: list[dict[str, Any]], prefix: tuple[float, float],
              wire_bytes: int, duration_s: float, stale: int, lost: int, divergent: int,
              nodes_killed: list[str], counters: dict[str, float] | None = None,
              uplink_bytes: int | None = None) -> dict[str, Any]:
    ok = [r for r in records if r.status == 200]
    turn_bytes: dict[tuple[str, str, int], int] = {}
    prepare, commit = [], []
    for node in stats:
        for entry in node.get("turn_bytes", []):
            key = (entry["session"], entry["origin"], entry["seq"])
            turn_bytes[key] = turn_bytes.get(key, 0) + entry["bytes"]
        prepare += [t["prepare_ms"] for t in node.get("turns", [])]
        commit += [t["commit_ms"] for t in node.get("turns", []) if "commit_ms" in t]
    rows = [asdict(r) for r in records]
    for row in rows:  # each answered turn's replication bytes, found by the turn it made
        origin, _, seq = row["turn_id"].rpartition(":")
        row["sync_bytes"] = turn_bytes.get((row["session"], origin, int(seq)), 0) if origin else 0
    sync = [row["sync_bytes"] for row in rows if row["status"] == 200]
    queries, hits = prefix
    return {
        "turns": len(ok),
        "failed_turns": len(records) - len(ok),
        "rt_ms_p50": _percentile([r.rt_ms for r in ok], 50),
        "rt_ms_p95": _percentile([r.rt_ms for r in ok], 95),
        "sync_bytes_p50": _percentile(sync, 50),
        "sync_bytes_mean": sum(sync) / len(sync) if sync else None,
        "wire_bytes_per_turn": wire_bytes / len(ok) if ok else None,
        "request_bytes_p50": _percentile([r.request_bytes for r in ok], 50),
        "request_wire_bytes_p50": _percentile([r.request_wire_bytes for r in ok], 50),
        # the access links' client-to-node bytes over the run, against the sum of every request's
        # HTTP/1.1 size (equal when no request was cut off or retried)
        "client_uplink_bytes": uplink_bytes,
        "request_wire_bytes_sum": sum(r.request_wire_bytes for r in records),
        "prefix_hit_rate": hits / queries if queries else None,
        "prepare_ms_p50": _percentile(prepare, 50),
        "commit_ms_p50": _percentile(commit, 50),
        "prompt_tokens_p50": _percentile([r.prompt_tokens for r in ok], 50),
        "completion_tokens_mean": sum(r.completion_tokens for r in ok) / len(ok) if ok else None,
        "stale_reads": stale,
        "lost_turns": lost,
        "divergent_sessions": divergent,
        "retried_turns": sum(1 for r in ok if r.attempts > 1),
        "nodes_killed": nodes_killed,
        "duration_s": round(duration_s, 2),
        "turns_per_s": round(len(ok) / duration_s, 4) if duration_s > 0 else None,
        "time_ms_mean": time_breakdown([r.rt_ms for r in ok], counters, prepare, commit) if counters else None,
        "records": rows,
        "sync_bytes": sync,
    }


def ratio_ci(numerator: Sequence[float], denominator: Sequence[float], seed: int = 0, draws: int = 2000
             ) -> dict[str, float | None]:
    """Ratio of medians with a 95% bootstrap interval, turns resampled in pairs (the same turn of the
    same conversation in both modes) when the two have the same turns."""
    import numpy as np

    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if not len(a) or not len(b):
        return {"ratio": None, "low": None, "high": None}
    ratio = float(np.median(a) / np.median(b)) if np.median(b) else None
    rng = np.random.default_rng(seed)
    paired = len(a) == len(b)
    samples = []
    for _ in range(draws):
        i = rng.integers(0, len(a), len(a))
        j = i if paired else rng.integers(0, len(b), len(b))
        denominator_median = np.median(b[j])
        if denominator_median:
            samples.append(np.median(a[i]) / denominator_median)
    low, high = (float(x) for x in np.percentile(samples, [2.5, 97.5])) if samples else (None, None)
    return {"ratio": ratio, "low": low, "high": high}


def _paired(mode_a: dict[str, Any], mode_b: dict[str, Any], key: str) -> tuple[list[float], list[float]]:
    """``key`` of the turns both modes answered, paired by (conversation, turn), not by position."""

    def by_turn(mode: dict[str, Any]) -> dict[tuple[str, int], float]:
        return {(r["conversation"], r["turn"]): r[key] for r in mode["records"] if r["status"] == 200}

    a, b = by_turn(mode_a), by_turn(mode_b)
    common = sorted(set(a) & set(b))
    return [a[k] for k in common], [b[k] for k in common]


def per_turn(mode_a: dict[str, Any], mode_b: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """``key``'s medians in both modes at each turn of the conversations (1 = a conversation's first
    turn), over the turns both answered, and their ratio."""
    import numpy as np

    def by_turn(mode: dict[str, Any]) -> dict[tuple[str, int], float]:
        return {(r["conversation"], r["turn"]): r[key] for r in mode["records"] if r["status"] == 200}

    a, b = by_turn(mode_a), by_turn(mode_b)
    rows = []
    for turn in sorted({k for _, k in set(a) & set(b)}):
        common = [c for c in set(a) & set(b) if c[1] == turn]
        median_a = float(np.median([a[c] for c in common]))
        median_b = float(np.median([b[c] for c in common]))
        rows.append({"turn": turn + 1, "n": len(common), "a_p50": median_a, "b_p50": median_b,
                     "ratio": median_a / median_b if median_b else None})
    return rows


def comparisons(modes: dict[str, dict[str, Any]], seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "tokens" in modes and "text" in modes:
        out["rt_tokens_over_text"] = ratio_ci(*_paired(modes["tokens"], modes["text"], "rt_ms"), seed=seed)
        out["sync_tokens_over_text"] = ratio_ci(*_paired(modes["tokens"], modes["text"], "sync_bytes"), seed=seed)
        # turns whose re-rendered, re-tokenized prompt is not the stored tokens (an answer sampled as
        # other ids than its text tokenizes to): the text node's prefix cache misses from there on
        out["prompts_differ"] = sum(a != b for a, b in zip(*_paired(modes["tokens"], modes["text"], "prompt_tokens"),
                                                           strict=True))
    if "tokens" in modes and "client" in modes:
        out["request_tokens_over_client"] = ratio_ci(
            *_paired(modes["tokens"], modes["client"], "request_bytes"), seed=seed)
        out["request_wire_tokens_over_client"] = ratio_ci(
            *_paired(modes["tokens"], modes["client"], "request_wire_bytes"), seed=seed)
        out["rt_tokens_over_client"] = ratio_ci(*_paired(modes["tokens"], modes["client"], "rt_ms"), seed=seed)
    return out


def per_turn_comparisons(modes: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The curves behind the medians: each ratio at each turn of the conversations."""
    out = {}
    if "tokens" in modes and "text" in modes:
        out["rt_tokens_over_text"] = per_turn(modes["tokens"], modes["text"], "rt_ms")
    if "tokens" in modes and "client" in modes:
        out["request_tokens_over_client"] = per_turn(modes["tokens"], modes["client"], "request_bytes")
        out["request_wire_tokens_over_client"] = per_turn(modes["tokens"], modes["client"], "request_wire_bytes")
        out["rt_tokens_over_client"] = per_turn(modes["tokens"], modes["client"], "rt_ms")
    return out


# -- building a turn's prompt, without the engine -------------------------------------------------


def prepare_costs(chat: Any, conversations: list[Conversation], answers: list[list[str]], repeat: int = 3
                  ) -> list[dict[str, Any]]:
    """Each turn's prompt built both ways, timed (median of ``repeat``): ``text`` renders the whole
    conversation with the chat template and tokenizes it (``ChatFormat.full_prompt``, as a text node
    does every turn); ``tokens`` unpacks the stored token deltas and appends the new message's
    tokens (as a tokens node does). ``same`` says whether the two prompts are the same token ids."""
    import statistics

    from edgecloud.edge.turns import pack_tokens, unpack_tokens

    def timed(work: Callable[[], Any]) -> tuple[float, Any]:
        times, result = [], None
        for _ in range(repeat):
            began = time.perf_counter()
            result = work()
            times.append((time.perf_counter() - began) * 1e3)
        return statistics.median(times), result

    def tokens_prompt(stored: list[tuple[bytes, int]], message: str, first: bool) -> tuple[list[int], Any]:
        context: list[int] = []
        for packed, width in stored:
            context += unpack_tokens(packed, width)
        user = chat.user_delta(message, first=first)
        return context + user.ids, user

    rows = []
    for conversation, replies in zip(conversations, answers, strict=True):
        history: list[tuple[str, str]] = []
        stored: list[tuple[bytes, int]] = []
        for k, (message, reply) in enumerate(zip(conversation.messages, replies, strict=True)):
            text_ms, text_ids = timed(functools.partial(chat.full_prompt, history, message))
            tokens_ms, (token_ids, user) = timed(functools.partial(tokens_prompt, stored, message, k == 0))
            rows.append({"conversation": conversation.name, "turn": k + 1, "prompt_tokens": len(text_ids),
                         "text_ms": text_ms, "tokens_ms": tokens_ms, "same": text_ids == token_ids})
            stored.append(pack_tokens(chat.turn_tokens(user, chat.encode(reply))[0]))
            history.append((message, reply))
    return rows


def run_prepare_cli(args: argparse.Namespace) -> int:
    """``edgecloud edge prepare``: what re-rendering the whole conversation costs a text node per turn
    against a tokens node's concatenation, at the trace's lengths (no engine, no nodes)."""
    from edgecloud.edge.chat import ChatFormat
    from edgecloud.errors import USAGE, CLIError
    from edgecloud.llm.model_source import resolve_model
    from edgecloud.llm.tokenizer import Tokenizer

    if not 0 < args.trace_scale <= 1:
        raise CLIError(f"--trace-scale: expected 0 < S <= 1, got {args.trace_scale:g}", USAGE)
    if args.repeat < 1:
        raise CLIError(f"--repeat: expected >= 1, got {args.repeat}", USAGE)
    if not Path(args.trace).is_file():
        raise CLIError(f"--trace: no file {args.trace}", USAGE)
    source = resolve_model(args.model)
    tokenizer = Tokenizer(source.directory, args.chat_template)
    chat = ChatFormat(tokenizer, b"prepare")

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    corpus = ProseCorpus()
    conversations = trace_workload(args.trace, args.conversations, args.trace_scale, corpus, count, args.seed)
    from edgecloud.bench.machine import LoadWatch

    watch = LoadWatch.begin()
    rng = random.Random(args.seed + 2)
    answers = [[corpus.text(rng, n, count) for n in c.max_tokens] for c in conversations]  # the trace's lengths
    rows = prepare_costs(chat, conversations, answers, args.repeat)
    import numpy as np

    def p50(key: str, rows: list[dict[str, Any]]) -> float:
        return float(np.median([r[key] for r in rows]))

    load = watch.finish()
    summary = {"turns": len(rows), "prompt_tokens_p50": p50("prompt_tokens", rows), "text_ms_p50": p50("text_ms", rows),
               "tokens_ms_p50": p50("tokens_ms", rows), "prompts_differ": sum(not r["same"] for r in rows),
               "text_ms_max": max(r["text_ms"] for r in rows),
               "prompt_tokens_max": max(r["prompt_tokens"] for r in rows)}
    report = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                         if k not in ("handler", "debug")} | {"model_name": source.name},
              "machine": load.as_dict(), "summary": summary, "turns": rows}
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(f"{len(rows)} turns of {len(conversations)} trace conversations x {args.trace_scale:g}: prompt p50 "
          f"{summary['prompt_tokens_p50']:.0f} tokens (max {summary['prompt_tokens_max']}); building it: text "
          f"{summary['text_ms_p50']:.2f} ms p50 (max {summary['text_ms_max']:.1f}), tokens "
          f"{summary['tokens_ms_p50']:.2f} ms p50; prompts that differ: {summary['prompts_differ']}")
    return 0


# -- the benchmark ------------------------------------------------------------------------------


def add_bench_options(parser: argparse.ArgumentParser) -> None:
    from edgecloud.errors import output_file

    parser.add_argument("--json", type=output_file, required=True, help="where to write the results")
    parser.add_argument("--plot", type=output_file, default=None, help="PNG of the results")
    parser.add_argument("--model", default=None, help="model of every node (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--chat-template", default=None, help="for a model without one (the demo model)")
    parser.add_argument("--topology", type=Path, default=None,
                        help="topology file (default: 3 nodes, client-edge 10 ms, edge-edge 20-60 ms, 10-100 Mbit/s)")
    parser.add_argument("--modes", default="tokens,text,client")
    parser.add_argument("--workloads", default="mooncake,roaming")
    parser.add_argument("--trace", default=DEFAULT_TRACE, help="Mooncake conversation trace (JSONL)")
    parser.add_argument("--conversations", type=int, default=4, help="per workload")
    parser.add_argument("--turns", type=int, default=5, help="per conversation")
    parser.add_argument("--input-scale", type=float, default=0.05, help="Mooncake opening context length x this")
    parser.add_argument("--output-scale", type=float, default=0.1, help="Mooncake answer budgets x this")
    parser.add_argument("--max-user-tokens", type=int, default=96, help="cap of later Mooncake messages (unscaled)")
    parser.add_argument("--trace-scale", type=float, default=None, metavar="S",
                        help="the mooncake workload as the trace has it, scaled: its conversations of 2+ turns "
                             "(the first --conversations in arrival order) with all their turns, every length x S "
                             "(--turns, --input-scale, --output-scale, --max-user-tokens: roaming only)")
    parser.add_argument("--user-tokens", default="16:64", help="roaming message lengths A:B")
    parser.add_argument("--max-tokens", type=int, default=48, help="roaming answer budget")
    parser.add_argument("--roam-every", type=int, default=2, help="turns at one node before moving on")
    parser.add_argument("--think", type=float, default=0.5, help="seconds between a client's turns")
    parser.add_argument("--stagger", type=float, default=1.0, help="seconds between conversation starts")
    parser.add_argument("--concurrency", type=int, default=None, metavar="C",
                        help="at most C conversations in flight per workload (default: all at once); 1 keeps "
                             "every engine unqueued, to measure the modes' own cost of a turn")
    parser.add_argument("--kill", default="edge-b:20", metavar="NODE:SECONDS",
                        help="the tokens nodes' extra run: kill -9 NODE this long into it ('none' to skip)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per node")
    parser.add_argument("--kv-cache-memory-mb", type=int, default=256, help="KV-cache pool of each node")
    parser.add_argument("--quantization", default="none", choices=["none", "int8", "int4"],
                        help="weight-only quantization of every node's engine (int4: the GGUF's Q4_1 blocks)")
    parser.add_argument("--engine-core", default="thread", choices=["thread", "process"])
    parser.add_argument("--seed", type=int, default=0)


def run_bench_cli(args: argparse.Namespace) -> int:
    from edgecloud.errors import USAGE, CLIError

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise CLIError(f"--modes: choose from {','.join(MODES)}, got {args.modes!r}", USAGE)
    if not workloads or any(w not in ("mooncake", "roaming") for w in workloads):
        raise CLIError(f"--workloads: choose from mooncake,roaming, got {args.workloads!r}", USAGE)
    try:
        low, high = (int(x) for x in args.user_tokens.split(":"))
        assert 1 <= low <= high
    except (ValueError, AssertionError):
        raise CLIError(f"--user-tokens: expected A:B with 1 <= A <= B, got {args.user_tokens!r}", USAGE) from None
    if args.trace_scale is not None and not 0 < args.trace_scale <= 1:
        raise CLIError(f"--trace-scale: expected 0 < S <= 1, got {args.trace_scale:g}", USAGE)
    if args.concurrency is not None and args.concurrency < 1:
        raise CLIError(f"--concurrency: expected >= 1, got {args.concurrency}", USAGE)
    kill = None
    if args.kill != "none":
        node, _, after = args.kill.partition(":")
        try:
            kill = (node, float(after))
        except ValueError:
            raise CLIError(f"--kill: expected NODE:SECONDS or none, got {args.kill!r}", USAGE) from None
    from edgecloud.edge.topology import DEFAULT_TOPOLOGY, Topology

    try:
        topology = Topology.from_file(args.topology) if args.topology else Topology.from_dict(DEFAULT_TOPOLOGY)
    except (OSError, ValueError) as error:
        raise CLIError(f"--topology: {error}", USAGE) from error
    if kill is not None and kill[0] not in topology.nodes:
        raise CLIError(f"--kill: {kill[0]!r} is not a node of the topology ({', '.join(topology.nodes)})", USAGE)
    if "mooncake" in workloads and not Path(args.trace).is_file():
        raise CLIError(f"--trace: no file {args.trace}", USAGE)
    report = asyncio.run(_stopped_by_sigterm(run_bench(args, topology, modes, workloads, (low, high), kill)))
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print_summary(report)
    if args.plot:
        plot(report, args.plot)
    return 0


async def _stopped_by_sigterm(work: Any) -> Any:
    """``work``, cancelled by SIGTERM (``timeout``, ``kill``) as by Ctrl-C, so that its ``finally``
    stops the node processes: they run in sessions of their own and would outlive the bench."""
    import signal

    from edgecloud.errors import CLIError

    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    terminated: list[bool] = []
    loop.add_signal_handler(signal.SIGTERM, lambda: (terminated.append(True), task.cancel()))
    try:
        return await task
    except asyncio.CancelledError:
        if terminated:
            raise CLIError("edge bench: stopped by SIGTERM; its nodes are stopped, no results written") from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def run_bench(args: argparse.Namespace, topology: Any, modes: list[str], workloads: list[str],
                    user_tokens: tuple[int, int], kill: tuple[str, float] | None) -> dict[str, Any]:
    from tokenizers import Tokenizer as HFTokenizer

    from edgecloud.bench.machine import LoadWatch
    from edgecloud.c2 import pki
    from edgecloud.c2.privileges import Role
    from edgecloud.edge.topology import EmulatedEdge
    from edgecloud.llm.model_source import resolve_model

    source = resolve_model(args.model)
    tokenizer = HFTokenizer.from_file(str(source.directory / "tokenizer.json"))

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    corpus = ProseCorpus()
    loads: dict[str, list[Conversation]] = {}
    if "mooncake" in workloads and args.trace_scale is not None:
        loads["mooncake"] = trace_workload(args.trace, args.conversations, args.trace_scale, corpus, count, args.seed)
    elif "mooncake" in workloads:
        loads["mooncake"] = mooncake_workload(args.trace, args.conversations, args.turns, args.input_scale,
                                              args.output_scale, args.max_user_tokens, corpus, count, args.seed)
    if "roaming" in workloads:
        loads["roaming"] = roaming_workload(args.conversations, args.turns, user_tokens, args.max_tokens, corpus,
                                            count, args.seed)
    node_args = ["--engine-core", args.engine_core, "--threads", str(args.threads), "--store-sync", "normal",
                 "--kv-cache-memory-mb", str(args.kv_cache_memory_mb), "--quantization", args.quantization]
    if args.model:
        node_args += ["--model", args.model]
    if args.chat_template:
        node_args += ["--chat-template", args.chat_template]
    watch = LoadWatch.begin()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    kill_case: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        work = Path(tmp)
        pki.init(work / "pki", common_name="edge bench root")
        for name in topology.nodes:
            pki.issue_to_directory(work / "pki", name, Role.UXV, frozenset())
        edges = {}
        for i, mode in enumerate(modes):
            (work / mode).mkdir()
            edges[mode] = EmulatedEdge(topology, mode, work / "pki", work / mode, node_args, seed=args.seed + i)
        print(f"edge bench: starting {len(topology.nodes)} nodes for each of {', '.join(modes)}", flush=True)
        try:
            for edge in edges.values():  # one edge after another: nodes peak in memory while loading
                await edge.start()
            model = await _served_model(next(iter(edges.values())))
            for workload, conversations in loads.items():
                print(f"edge bench: {workload}: {len(conversations)} conversations in {', '.join(modes)}", flush=True)
                results[workload] = await run_workload(edges, model, workload, conversations, args.roam_every,
                                                       args.think, args.stagger, concurrency=args.concurrency)
            if "tokens" in edges and kill is not None and "roaming" in loads:
                for mode in [m for m in edges if m != "tokens"]:
                    await edges.pop(mode).stop()
                print(f"edge bench: roaming again in tokens mode, {kill[0]} killed after {kill[1]:g} s", flush=True)
                renamed = [Conversation(f"kill-{c.name}", c.messages, c.max_tokens) for c in loads["roaming"]]
                kill_case = (await run_workload(edges, model, "roaming+kill", renamed, args.roam_every, args.think,
                                                args.stagger, kill=kill, concurrency=args.concurrency))["tokens"]
        finally:
            await asyncio.gather(*(edge.stop() for edge in edges.values()))
    load = watch.finish()
    topology_name = "default" if args.topology is None else str(args.topology)
    cases = [{"topology": topology_name, "workload": w, "modes": m, "comparisons": comparisons(m, args.seed),
              "per_turn": per_turn_comparisons(m)} for w, m in results.items()]
    if kill_case is not None:
        cases.append({"topology": topology_name, "workload": "roaming+kill", "modes": {"tokens": kill_case},
                      "comparisons": {}})
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k not in ("handler", "debug")}
    config["model_name"] = source.name
    report = {"config": config, "topology": topology.describe(), "machine": load.as_dict(), "cases": cases}
    if "mooncake" in workloads:
        report["trace_full_length"] = trace_request_tokens(args.trace, seed=args.seed)
    return report


async def _served_model(edge: Any) -> str:
    import httpx

    async with httpx.AsyncClient(timeout=10) as client:
        first = edge.topology.nodes[0]
        return str((await client.get(f"{edge.direct_url(first)}/v1/models")).json()["data"][0]["id"])


def print_summary(report: dict[str, Any]) -> None:
    keys = ("turns", "rt_ms_p50", "rt_ms_p95", "sync_bytes_p50", "request_bytes_p50", "request_wire_bytes_p50",
            "prefix_hit_rate", "prepare_ms_p50", "commit_ms_p50", "stale_reads", "lost_turns")
    for case in report["cases"]:
        print(f"\n{case['workload']}:")
        print("  " + "mode".ljust(8) + "".join(k.rjust(18) for k in keys))
        for mode, m in case["modes"].items():
            cells = [m.get(k) for k in keys]
            print("  " + mode.ljust(8) + "".join(
                (f"{c:.3f}" if isinstance(c, float) and c < 1 else f"{c:.1f}" if isinstance(c, float)
                 else str(c)).rjust(18) for c in cells))
        for mode, m in case["modes"].items():
            parts = m.get("time_ms_mean") or {}
            cells = ", ".join(f"{k} {v:.1f}" for k, v in parts.items() if v is not None)
            print(f"  {mode} ms per turn, mean: {cells}; {m.get('turns_per_s')} turns/s; uplink "
                  f"{m.get('client_uplink_bytes')} B of {m.get('request_wire_bytes_sum')} B sent")
        for name, value in case["comparisons"].items():
            if not isinstance(value, dict):
                print(f"  {name}: {value}")
            elif value["ratio"] is not None:
                print(f"  {name}: {value['ratio']:.3f} [{value['low']:.3f}, {value['high']:.3f}]")
        for name, rows in case.get("per_turn", {}).items():
            cells = " ".join(f"{r['turn']}:{r['ratio']:.2f}(n={r['n']})" for r in rows if r["ratio"] is not None)
            print(f"  {name} by turn: {cells}")
    trace = report.get("trace_full_length")
    if trace and trace["session_over_client"]["ratio"] is not None:
        ratio = trace["session_over_client"]
        print(f"\nMooncake trace at full length ({trace['requests']} requests of conversations with "
              f"{trace['conversations_min_turns']}+ turns, tokens): client request p50 "
              f"{trace['client_tokens_p50']:.0f}, "
              f"session request p50 {trace['session_tokens_p50']:.0f}, ratio {ratio['ratio']:.3f} "
              f"[{ratio['low']:.3f}, {ratio['high']:.3f}]")


def plot(report: dict[str, Any], path: str | Path) -> None:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgecloud.bench.report import cdf_steps

    cases = [c for c in report["cases"] if len(c["modes"]) > 1]
    if not cases:
        return
    figure, axes = plt.subplots(len(cases), 4, figsize=(21, 4.2 * len(cases)), squeeze=False)
    colors = {"tokens": "tab:blue", "text": "tab:orange", "client": "tab:green"}
    for row, case in zip(axes, cases, strict=True):
        # whole HTTP requests where the run counted them, else the payload (older JSON)
        size = "request_wire_bytes" if all(m.get("request_wire_bytes_p50") for m in case["modes"].values()) \
            else "request_bytes"
        for mode, m in case["modes"].items():
            ok = [r for r in m["records"] if r["status"] == 200]
            if ok:
                cdf_steps(row[0], [r["rt_ms"] for r in ok], color=colors[mode],
                          label=f"{mode} (p50 {m['rt_ms_p50']:.0f} ms)")
                cdf_steps(row[2], [r[size] for r in ok], color=colors[mode],
                          label=f"{mode} (p50 {m[size + '_p50']:.0f} B)")
            if mode != "client" and m["sync_bytes"]:
                cdf_steps(row[1], m["sync_bytes"], color=colors[mode],
                          label=f"{mode} (p50 {m['sync_bytes_p50']:.0f} B)")
            by_turn: dict[int, list[float]] = {}
            for r in ok:
                by_turn.setdefault(r["turn"] + 1, []).append(r[size])
            turns = sorted(by_turn)
            row[3].plot(turns, [float(np.median(by_turn[k])) for k in turns], marker="o", color=colors[mode],
                        label=mode)
        titles = ("response time (ms)", "sync bytes per turn (all nodes)",
                  "client request bytes" + (" (HTTP request on the wire)" if size == "request_wire_bytes" else ""),
                  "turn of the conversation")
        for axis, title in zip(row, titles, strict=True):
            axis.set_xlabel(title)
            axis.set_ylabel("fraction of turns")
            axis.grid(alpha=0.3)
            axis.legend(loc="lower right", fontsize=8)
        row[2].set_xscale("log")
        row[3].set_yscale("log")
        row[3].set_ylabel("client request bytes, median")
        row[3].set_title(f"{case['workload']}: request size by turn")
        row[0].set_title(f"{case['workload']}: response time CDF")
        row[1].set_title(f"{case['workload']}: replication traffic per turn")
        row[2].set_title(f"{case['workload']}: client request size")
    machine = report.get("machine", {})
    modes = " vs ".join(cases[0]["modes"])
    figure.suptitle(f"edgecloud edge bench: {report['config'].get('model_name')} on {machine.get('cpu', '?')}, "
                    f"{modes} on one emulated edge", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
