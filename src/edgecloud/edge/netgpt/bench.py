"""``edgecloud edge netgpt bench``: NetGPT's routing against always-edge, always-cloud and fixed
thresholds, over a grid of network states (through ``edgecloud.netem``) and price schedules.

1. **Agents.** Two real ``edgecloud serve`` processes: the edge agent (``--edge-model``) answers
   with ``tool_choice`` auto and its logprobs; the cloud agent (``--cloud-model``) is asked for a
   grammar-constrained call (``tool_choice`` required). Each answers every calibration and test
   question once (temperature 0), timed; BFCL's AST checker scores both.
2. **Score and calibration.** The score that separates correct from wrong edge answers best
   (AUROC on the calibration questions, train functions) is the router's; ``p_e`` and ``p_c`` are
   fitted on the calibration questions (``Calibration.fit``). Test questions are never used.
3. **Network grid.** Per state, the cloud sits behind a netem ``TcpProxy`` (delay RTT/2 each way,
   the bandwidth as its rate). A ``NetworkMonitor`` probes through it: the NetGPT threshold uses
   the *measured* state. Every test request's cloud exchange is replayed through the proxy (the
   real request body up, the cloud's recorded answer down, served by a caching front of the cloud
   server) and timed; the cloud's compute time measured in step 1 is added.
4. **Policies**, on the same requests: ``edge``, ``cloud``, ``fixed_<tau>`` and ``netgpt``; per
   state and price: accuracy, cost (cloud tokens at the price plus the price of the latency the
   user waits), p50 latency and offload rate.

Writes the JSON the issue specifies (``states`` and ``rounds``; rounds come from
``scripts/netgpt_rl.py``'s output when ``--rounds-json`` names it) and a PNG.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from edgecloud.edge.netgpt.bfcl import Question, load_split, score
from edgecloud.edge.netgpt.examples import chat_request, prompt_text
from edgecloud.edge.netgpt.network import NetworkMonitor, ProbeError
from edgecloud.edge.netgpt.policy import (
    PRICES,
    Calibration,
    FixedThreshold,
    NetGPTPolicy,
    NetworkState,
    PriceSchedule,
    RequestSize,
)
from edgecloud.edge.netgpt.score import SCORES, auroc, read_answer

FIXED = (0.1, 0.3, 0.5, 0.7, 0.9)
GRID = ((100.0, 10.0), (10.0, 50.0), (2.0, 150.0), (0.5, 400.0))  # (Mbit/s, RTT ms): LAN, good, cellular, poor


@dataclass
class BenchConfig:
    edge_model: str
    cloud_model: str
    num_test: int = 48
    num_calibration: int = 32
    max_prompt_tokens: int = 320
    max_tokens: int = 160
    concurrency: int = 8
    threads: int = 1
    grid: Sequence[tuple[float, float]] = GRID
    prices: Sequence[str] = ("cheap", "standard", "premium")
    score: str | None = None  # None: the best AUROC on the calibration questions
    seed: int = 0


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


# -- agents -------------------------------------------------------------------------------------


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


async def answer_all(questions: list[Question], edge: Agent, cloud: Agent, config: BenchConfig) -> list[Answered]:
    limit = asyncio.Semaphore(config.concurrency)

    async def one(client: httpx.AsyncClient, q: Question) -> Answered:
        body = chat_request(q, "netgpt", temperature=0, max_tokens=config.max_tokens)
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
        return Answered(
            id=q.id,
            edge_ok=score(q, _calls(e)).correct,
            cloud_ok=score(q, _calls(c)).correct,
            edge_valid=answer.valid,
            scores={name: f(answer) for name, f in SCORES.items()},
            edge_s=edge_s, cloud_s=cloud_s, request=cloud_body, cloud_response=c,
            tokens=int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0)),
        )

    async with httpx.AsyncClient(timeout=1800) as client:
        return list(await asyncio.gather(*(one(client, q) for q in questions)))


def _calls(response: dict[str, Any]) -> list[dict[str, Any]] | None:
    calls = response["choices"][0]["message"].get("tool_calls") or []
    out = []
    for call in calls:
        try:
            out.append({"name": call["function"]["name"], "arguments": json.loads(call["function"]["arguments"])})
        except (json.JSONDecodeError, KeyError, TypeError):
            return None
    return out or None


# -- the network grid -------------------------------------------------------------------------


def _key(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def caching_cloud(cloud_url: str, recorded: dict[str, dict[str, Any]]) -> Any:
    """The cloud server behind a response cache: a request the cloud already answered gets that
    answer at once (its compute time is accounted separately); anything else goes to the cloud."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            return JSONResponse({"error": {"message": "body is not JSON"}}, status_code=400)
        hit = recorded.get(_key(body))
        if hit is not None:
            return JSONResponse(hit)
        async with httpx.AsyncClient(timeout=600) as client:
            reply = await client.post(f"{cloud_url}/v1/chat/completions", content=raw,
                                      headers={"Content-Type": "application/json"})
        return Response(reply.content, status_code=reply.status_code, media_type="application/json")

    return app


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[tuple[str, int]]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield "127.0.0.1", sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def measure_state(bandwidth_mbps: float, rtt_ms: float, front: tuple[str, int],
                        answered: list[Answered], concurrency: int) -> tuple[NetworkState, list[float]]:
    """The measured state of a netem link with this bandwidth and RTT, and each request's cloud
    exchange time over it."""
    from edgecloud.netem import LinkProfile, TcpProxy

    link = LinkProfile(delay_ms=rtt_ms / 2, rate_mbps=bandwidth_mbps, queue_bytes=4 * 1024 * 1024)
    proxy = TcpProxy(target=front, uplink=link, downlink=link)
    await proxy.start()
    try:
        host, port = proxy.address
        url = f"http://{host}:{port}"
        async with httpx.AsyncClient(timeout=600) as client:
            monitor = NetworkMonitor(url, client, probe_bytes=32_000, alpha=1.0, timeout_s=120)
            samples = []
            for _ in range(3):
                try:
                    samples.append(await monitor.probe())
                except ProbeError as error:
                    raise RuntimeError(f"netem state {bandwidth_mbps} Mbit/s, {rtt_ms} ms: {error}") from error
            measured = NetworkState(statistics.median(s.bandwidth_mbps for s in samples),
                                    statistics.median(s.rtt_ms for s in samples))
            limit = asyncio.Semaphore(concurrency)

            async def exchange(a: Answered) -> float:
                async with limit:
                    start = time.monotonic()
                    reply = await client.post(f"{url}/v1/chat/completions", json=a.request)
                    reply.raise_for_status()
                    return time.monotonic() - start

            # one at a time: a request's time is its own, not a queue behind the others
            times = [await exchange(a) for a in answered]
    finally:
        await proxy.stop()
    return measured, times


# -- policies -----------------------------------------------------------------------------------


def evaluate(answered: list[Answered], network_s: list[float], price: PriceSchedule, routes: list[str]
             ) -> dict[str, float]:
    """A policy's accuracy, mean cost, p50 latency and offload rate. ``routes``: per request
    ``edge`` (edge answer), ``cloud`` (edge first, then cloud) or ``cloud-only`` (no edge)."""
    correct, costs, latencies = [], [], []
    for a, net_s, route in zip(answered, network_s, routes, strict=True):
        cloud_latency = net_s + a.cloud_s  # the exchange over the link plus the cloud's compute time
        if route == "edge":
            latency, ok, cloud_tokens = a.edge_s, a.edge_ok, 0
        elif route == "cloud":
            latency, ok, cloud_tokens = a.edge_s + cloud_latency, a.cloud_ok, a.tokens
        else:
            latency, ok, cloud_tokens = cloud_latency, a.cloud_ok, a.tokens
        correct.append(ok)
        latencies.append(latency)
        costs.append(price.cloud_per_1k_tokens * cloud_tokens / 1e3 + price.latency_per_s * latency)
    n = len(answered)
    return {
        "accuracy": sum(correct) / n,
        "cost": sum(costs) / n,
        "latency_ms_p50": 1e3 * statistics.median(latencies),
        "offload_rate": sum(r != "edge" for r in routes) / n,
    }


def dominated(point: dict[str, float], others: list[dict[str, float]]) -> bool:
    """Whether some other point has both lower cost and higher accuracy (strictly better in one,
    no worse in the other)."""
    return any(o["cost"] <= point["cost"] and o["accuracy"] >= point["accuracy"]
               and (o["cost"] < point["cost"] or o["accuracy"] > point["accuracy"]) for o in others)


def choose_score(answered: list[Answered]) -> dict[str, float]:
    labels = [a.edge_ok for a in answered]
    return {name: auroc([a.scores[name] for a in answered], labels) for name in SCORES}


# -- the run ------------------------------------------------------------------------------------


def pick_questions(config: BenchConfig, tokenizer: Any) -> tuple[list[Question], list[Question]]:
    """Test questions (test functions) and calibration questions (train functions) with prompts
    within ``max_prompt_tokens``, in a fixed pseudo-random order."""
    split = load_split()

    def short(qs: list[Question]) -> list[Question]:
        ranked = sorted(qs, key=lambda q: hashlib.sha256(f"{config.seed}:{q.id}".encode()).hexdigest())
        return [q for q in ranked if len(tokenizer.encode(prompt_text(tokenizer, q), add_special_tokens=False))
                <= config.max_prompt_tokens]

    return short(split.test)[: config.num_test], short(split.train)[-config.num_calibration:]


async def run_grid(config: BenchConfig, cloud: Agent, test: list[Answered], calibration: Calibration,
                   score_name: str, log: Any) -> list[dict[str, Any]]:
    recorded = {_key(a.request): a.cloud_response for a in test}
    cloud_compute = statistics.median(a.cloud_s for a in test)
    states = []
    async with serve_app(caching_cloud(cloud.url, recorded)) as front:
        for bandwidth, rtt in config.grid:
            measured, network_s = await measure_state(bandwidth, rtt, front, test, config.concurrency)
            log(f"state {bandwidth} Mbit/s, {rtt} ms: measured {measured.bandwidth_mbps:.2f} Mbit/s, "
                f"{measured.rtt_ms:.1f} ms; median exchange {1e3 * statistics.median(network_s):.0f} ms")
            for price_name in config.prices:
                price = PRICES[price_name]
                policy = NetGPTPolicy(calibration, cloud_compute_s=cloud_compute)
                scores = [a.scores[score_name] for a in test]
                sizes = [RequestSize(len(json.dumps(a.request)), len(json.dumps(a.cloud_response)), a.tokens)
                         for a in test]
                decisions = [policy.decide(s, measured, price, size) for s, size in zip(scores, sizes, strict=True)]
                policies = {
                    "edge": evaluate(test, network_s, price, ["edge"] * len(test)),
                    "cloud": evaluate(test, network_s, price, ["cloud-only"] * len(test)),
                }
                for tau in FIXED:
                    routes = [FixedThreshold(tau).decide(s) for s in scores]
                    policies[f"fixed_{tau}"] = evaluate(test, network_s, price, routes)
                policies["netgpt"] = evaluate(test, network_s, price, [d.route for d in decisions])
                policies["netgpt"]["threshold_mean"] = statistics.fmean(d.threshold for d in decisions)
                fixed = [v for k, v in policies.items() if k.startswith("fixed_")]
                states.append({
                    "bandwidth_mbps": bandwidth, "rtt_ms": rtt, "price": price_name,
                    "measured": {"bandwidth_mbps": measured.bandwidth_mbps, "rtt_ms": measured.rtt_ms},
                    "policies": policies,
                    "netgpt_on_or_above_fixed_frontier": not dominated(policies["netgpt"], fixed),
                })
                log(f"  {price_name}: netgpt acc {policies['netgpt']['accuracy']:.3f} cost "
                    f"{policies['netgpt']['cost']:.4f} offload {policies['netgpt']['offload_rate']:.2f} "
                    f"(tau {policies['netgpt']['threshold_mean']:.2f}); frontier ok "
                    f"{states[-1]['netgpt_on_or_above_fixed_frontier']}")
    return states


def run_bench(config: BenchConfig, work_dir: Path, rounds: list[dict[str, Any]] | None = None,
              log: Any = print) -> dict[str, Any]:
    from edgecloud.llm.tokenizer import Tokenizer

    work_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(Path(config.edge_model))
    test_q, cal_q = pick_questions(config, tokenizer)
    log(f"{len(test_q)} test questions (held-out functions), {len(cal_q)} calibration questions (train functions)")
    result: dict[str, Any] = {
        "config": {**asdict(config), "grid": [list(g) for g in config.grid]},
        "machine": {"cpu": platform.processor() or platform.machine(), "loadavg_before": os.getloadavg()},
    }
    edge = start_agent(config.edge_model, "edge", config.threads, work_dir / "edge.log")
    cloud = start_agent(config.cloud_model, "cloud", config.threads, work_dir / "cloud.log")
    try:
        start = time.monotonic()
        cal = asyncio.run(answer_all(cal_q, edge, cloud, config))
        test = asyncio.run(answer_all(test_q, edge, cloud, config))
        log(f"answered in {time.monotonic() - start:.0f} s")
        separation = choose_score(cal)
        score_name = config.score or max(separation, key=lambda k: separation[k])
        calibration = Calibration.fit([a.scores[score_name] for a in cal], [a.edge_ok for a in cal],
                                      [a.cloud_ok for a in cal])
        result["agents"] = {
            "edge": {"model": config.edge_model, "test_accuracy": _mean([a.edge_ok for a in test]),
                     "test_schema_valid": _mean([a.edge_valid for a in test]),
                     "calibration_accuracy": _mean([a.edge_ok for a in cal]),
                     "latency_ms_p50": 1e3 * statistics.median(a.edge_s for a in test)},
            "cloud": {"model": config.cloud_model, "test_accuracy": _mean([a.cloud_ok for a in test]),
                      "calibration_accuracy": _mean([a.cloud_ok for a in cal]),
                      "compute_ms_p50": 1e3 * statistics.median(a.cloud_s for a in test)},
        }
        result["score"] = {"chosen": score_name, "auroc_calibration": separation,
                           "auroc_test": choose_score(test)}
        result["calibration"] = calibration.to_dict()
        save_rl_inputs(work_dir, cal, test, calibration, score_name, statistics.median(a.cloud_s for a in test))
        result["threshold_curves"] = threshold_curves(calibration, statistics.median(a.cloud_s for a in test),
                                                      RequestSize(6000, 400, 1500))
        result["states"] = asyncio.run(run_grid(config, cloud, test, calibration, score_name, log))
        result["answers"] = [{k: v for k, v in asdict(a).items() if k not in ("request", "cloud_response")}
                             for a in test]
    finally:
        edge.stop()
        cloud.stop()
    result["rounds"] = rounds or []
    result["machine"]["loadavg_after"] = os.getloadavg()
    return result


REFERENCE_STATE = NetworkState(10.0, 50.0)  # what the RL rounds' "same threshold rule" is evaluated at


def save_rl_inputs(work_dir: Path, cal: list[Answered], test: list[Answered], calibration: Calibration,
                   score_name: str, cloud_compute_s: float) -> None:
    """What ``scripts/netgpt_rl.py`` learns from: the calibration requests the NetGPT rule offloads in
    the reference state (standard prices) with the cloud's answers, and the test ids."""
    policy = NetGPTPolicy(calibration, cloud_compute_s=cloud_compute_s)
    sizes = {a.id: RequestSize(len(json.dumps(a.request)), len(json.dumps(a.cloud_response)), a.tokens) for a in cal}
    median_size = sorted(sizes.values(), key=lambda z: z.request_bytes)[len(sizes) // 2]
    tau = policy.threshold(REFERENCE_STATE, PRICES["standard"], median_size)
    offloaded = [{"id": a.id, "score": a.scores[score_name], "cloud_calls": _calls(a.cloud_response) or []}
                 for a in cal if policy.decide(a.scores[score_name], REFERENCE_STATE, PRICES["standard"],
                                               sizes[a.id]).route == "cloud"]
    (work_dir / "rl_inputs.json").write_text(json.dumps({
        "calibration": calibration.to_dict(), "score": score_name, "threshold": tau,
        "reference_state": asdict(REFERENCE_STATE), "offloaded": offloaded, "test_ids": [a.id for a in test],
    }, indent=1))


def _mean(values: list[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def threshold_curves(calibration: Calibration, cloud_compute_s: float, size: RequestSize) -> dict[str, Any]:
    """tau* against bandwidth (RTT 50 ms) and against RTT (10 Mbit/s), per price schedule."""
    policy = NetGPTPolicy(calibration, cloud_compute_s=cloud_compute_s)
    bandwidths = [0.1 * 10 ** (i / 8) for i in range(33)]  # 0.1 .. 1000 Mbit/s
    rtts = [25.0 * i for i in range(41)]  # 0 .. 1000 ms
    return {
        "request": asdict(size), "cloud_compute_s": cloud_compute_s,
        "bandwidth_mbps": bandwidths, "rtt_ms": rtts,
        "by_bandwidth": {p: [policy.threshold(NetworkState(b, 50.0), PRICES[p], size) for b in bandwidths]
                         for p in PRICES},
        "by_rtt": {p: [policy.threshold(NetworkState(10.0, r), PRICES[p], size) for r in rtts] for p in PRICES},
    }


def plot_threshold(curves: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for price, values in curves["by_bandwidth"].items():
        a.plot(curves["bandwidth_mbps"], values, label=price)
    for price, values in curves["by_rtt"].items():
        b.plot(curves["rtt_ms"], values, label=price)
    a.set_xscale("log")
    a.set_xlabel("bandwidth (Mbit/s), RTT 50 ms")
    b.set_xlabel("RTT (ms), 10 Mbit/s")
    for ax in (a, b):
        ax.set_ylabel("fallback threshold tau*")
        ax.set_ylim(-0.02, 1.02)
    a.legend(title="price", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    states = [s for s in result["states"] if s["price"] == "standard"] or result["states"]
    fig, axes = plt.subplots(1, len(states), figsize=(4 * len(states), 3.6), squeeze=False)
    for ax, state in zip(axes[0], states, strict=True):
        pol = state["policies"]
        fixed = sorted((v["cost"], v["accuracy"], k) for k, v in pol.items() if k.startswith("fixed_"))
        ax.plot([f[0] for f in fixed], [f[1] for f in fixed], "o-", color="grey", label="fixed thresholds")
        for c, a, k in fixed:
            ax.annotate(k.removeprefix("fixed_"), (c, a), fontsize=7, color="grey")
        ax.plot(pol["edge"]["cost"], pol["edge"]["accuracy"], "s", label="always edge")
        ax.plot(pol["cloud"]["cost"], pol["cloud"]["accuracy"], "^", label="always cloud")
        ax.plot(pol["netgpt"]["cost"], pol["netgpt"]["accuracy"], "*", markersize=14, color="red", label="NetGPT")
        ax.set_title(f"{state['bandwidth_mbps']:g} Mbit/s, RTT {state['rtt_ms']:g} ms ({state['price']})", fontsize=9)
        ax.set_xlabel("cost per request")
        ax.set_ylabel("accuracy (BFCL AST)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
