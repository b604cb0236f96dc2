"""The two agents of the NetGPT bench answering BFCL questions: real ``edgecloud serve`` processes,
timed per request, their answers kept per question in a cache file.

The edge agent (``tool_choice`` auto, with logprobs) and the cloud agent (``tool_choice``
required: grammar-constrained) answer each question once at temperature 0. Answering is the
expensive, model-bound part of the bench; everything after it (scores, calibration, the routing
policies over network states and prices) reads only what an answer recorded: correctness by
BFCL's AST checker, the edge's scores, both agents' measured times, the request and the cloud's
response. So each answer is appended to ``answers.jsonl`` as soon as it arrives, with the load
average at that moment, and a rerun (after a stop, or to re-measure the network grid) answers only
what is missing: the models are started only then.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from edgecloud.edge.netgpt.bfcl import Question, score
from edgecloud.edge.netgpt.examples import chat_request
from edgecloud.edge.netgpt.score import SCORES, read_answer


@dataclass
class Answered:
    """One question answered by both agents."""

    id: str
    edge_ok: bool
    cloud_ok: bool
    edge_valid: bool
    scores: dict[str, float]
    edge_s: float
    cloud_s: float
    request: dict[str, Any] = field(repr=False)
    cloud_response: dict[str, Any] = field(repr=False)
    tokens: int = 0
    loadavg_1m: float = 0.0  # when the answer arrived: whose times were taken at what load


@dataclass
class Agent:
    process: subprocess.Popen[str]
    url: str
    model: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_agent(model: str, name: str, threads: int, log_path: Path) -> Agent:
    command = [sys.executable, "-m", "edgecloud.cli", "serve", "--model", model, "--port", "0", "--threads",
               str(threads), "--served-model-name", name, "--log-level", "warning", "--max-num-seqs", "16",
               "--kv-cache-memory-mb", "256"]
    log = log_path.open("w")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if " on http://" not in line:
        process.kill()
        raise RuntimeError(f"the {name} agent did not start: {line!r}; see {log_path}")
    url = line.split(" on ")[1].split()[0]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return Agent(process, url, name)
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the {name} agent never became healthy; see {log_path}")


class AnswerCache:
    """``answers.jsonl``: one line per answered question, keyed by both models and the exact
    requests, so a changed model, prompt or option is answered anew."""

    def __init__(self, path: Path, edge_model: str, cloud_model: str) -> None:
        self.path = path
        self.models = (edge_model, cloud_model)
        self.entries: dict[str, Answered] = {}
        if path.exists():
            for number, line in enumerate(path.read_text().splitlines(), 1):
                try:
                    entry = json.loads(line)
                    self.entries[entry["key"]] = Answered(**entry["answered"])
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ValueError(f"{path}:{number}: not an answer record ({error})") from error

    def key(self, body: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps([self.models, body], sort_keys=True).encode()).hexdigest()

    def get(self, body: dict[str, Any]) -> Answered | None:
        return self.entries.get(self.key(body))

    def put(self, body: dict[str, Any], answered: Answered) -> None:
        key = self.key(body)
        self.entries[key] = answered
        with self.path.open("a") as f:
            f.write(json.dumps({"key": key, "answered": asdict(answered)}) + "\n")


def question_body(q: Question, max_tokens: int) -> dict[str, Any]:
    return chat_request(q, "netgpt", temperature=0, max_tokens=max_tokens)


async def answer_all(questions: list[Question], agents: Callable[[], tuple[Agent, Agent]], cache: AnswerCache,
                     max_tokens: int, concurrency: int, log: Callable[[str], None] = print) -> list[Answered]:
    """Every question answered by both agents: from the cache, else live (``agents()`` starts
    them on first need). ``concurrency`` questions are in flight at once; within one, the edge
    answers first and then the cloud, each timed on its own."""
    missing = [q for q in questions if cache.get(question_body(q, max_tokens)) is None]
    if missing:
        edge, cloud = agents()
        log(f"answering {len(missing)} of {len(questions)} questions live ({len(questions) - len(missing)} cached)")
        limit = asyncio.Semaphore(concurrency)

        async def one(client: httpx.AsyncClient, q: Question) -> None:
            body = question_body(q, max_tokens)
            async with limit:
                start = time.monotonic()
                edge_reply = await client.post(f"{edge.url}/v1/chat/completions",
                                               json={**body, "model": edge.model, "logprobs": True})
                edge_s = time.monotonic() - start
                cloud_body = {**body, "model": cloud.model, "tool_choice": "required"}
                start = time.monotonic()
                cloud_reply = await client.post(f"{cloud.url}/v1/chat/completions", json=cloud_body)
                cloud_s = time.monotonic() - start
            edge_reply.raise_for_status()
            cloud_reply.raise_for_status()
            e, c = edge_reply.json(), cloud_reply.json()
            answer = read_answer(e, q.tools)
            usage = e.get("usage") or {}
            cache.put(body, Answered(
                id=q.id, edge_ok=score(q, tool_calls(e)).correct, cloud_ok=score(q, tool_calls(c)).correct,
                edge_valid=answer.valid, scores={name: f(answer) for name, f in SCORES.items()},
                edge_s=edge_s, cloud_s=cloud_s, request=cloud_body, cloud_response=c,
                tokens=int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0)),
                loadavg_1m=os.getloadavg()[0]))

        async with httpx.AsyncClient(timeout=1800) as client:
            await asyncio.gather(*(one(client, q) for q in missing))
    out = [cache.get(question_body(q, max_tokens)) for q in questions]
    return [a for a in out if a is not None]


def tool_calls(response: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A chat completion's tool calls as ``[{"name", "arguments": dict}]`` (``None``: none, or
    arguments that are not JSON)."""
    calls = response["choices"][0]["message"].get("tool_calls") or []
    out = []
    for call in calls:
        try:
            out.append({"name": call["function"]["name"], "arguments": json.loads(call["function"]["arguments"])})
        except (json.JSONDecodeError, KeyError, TypeError):
            return None
    return out or None
