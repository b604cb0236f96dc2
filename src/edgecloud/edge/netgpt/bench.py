"""``edgecloud edge netgpt bench``: NetGPT's routing against always-edge, always-cloud and fixed
thresholds, over a grid of network states (through ``edgecloud.netem``) and price schedules.

1. **Agents** (``agents.py``). Two real ``edgecloud serve`` processes: the edge agent
   (``--edge-model``) answers with ``tool_choice`` auto and its logprobs; the cloud agent
   (``--cloud-model``) is asked for a grammar-constrained call (``tool_choice`` required). Each
   answers every calibration and test question once (temperature 0), timed; BFCL's AST checker
   scores both. Answers are kept per question in ``WORK_DIR/answers.jsonl``: a rerun answers only
   what is missing (and starts the models only then), so the steps below can be re-measured
   without the models.
2. **Score and calibration.** The score that separates correct from wrong edge answers best
   (AUROC on the calibration questions, train functions) is the router's; ``p_e`` and ``p_c`` are
   fitted on the calibration questions (``Calibration.fit``). Test questions are never used.
3. **Network grid.** Per state, the cloud sits behind a netem ``TcpProxy`` (delay RTT/2 each way,
   the bandwidth as its rate). A ``NetworkMonitor`` probes through it: the NetGPT threshold uses
   the *measured* state. Every test request's cloud exchange is replayed through the proxy (the
   real request body up, the cloud's recorded answer down, served by a front that holds the
   recorded answers) and timed; the cloud's compute time measured in step 1 is added. This step
   is live on every run: the link is emulated, the exchanges are real TCP through it.
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
import socket
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from edgecloud.bench.machine import cpu_model
from edgecloud.edge.netgpt.agents import Agent, AnswerCache, Answered, answer_all, start_agent, tool_calls
from edgecloud.edge.netgpt.bfcl import Question, load_split
from edgecloud.edge.netgpt.examples import prompt_text
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
from edgecloud.edge.netgpt.score import SCORES, auroc

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
    prices: Sequence[str] = ("relaxed", "cheap", "standard", "premium")
    score: str | None = None  # None: the best AUROC on the calibration questions
    seed: int = 0


# -- the network grid -------------------------------------------------------------------------


def _key(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def recorded_cloud(recorded: dict[str, dict[str, Any]]) -> Any:
    """The cloud's side of the link in the grid: a request the cloud answered in step 1 gets that
    answer at once (its compute time is accounted separately); anything else (the bandwidth probe
    names no model it serves) is read whole and answered 404, as the cloud server would."""
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            return JSONResponse({"error": {"message": "body is not JSON"}}, status_code=400)
        hit = recorded.get(_key(body))
        if hit is None:
            return JSONResponse({"error": {"message": f"no recorded answer for model {body.get('model')!r}"}},
                                status_code=404)
        return JSONResponse(hit)

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
                        answered: list[Answered]) -> tuple[NetworkState, list[float]]:
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

            async def exchange(a: Answered) -> float:
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
        "accuracy_ci95": bootstrap_ci(correct),
        "cost": sum(costs) / n,
        "latency_ms_p50": 1e3 * statistics.median(latencies),
        "offload_rate": sum(r != "edge" for r in routes) / n,
    }


def bootstrap_ci(values: Sequence[bool], resamples: int = 2000, seed: int = 0) -> list[float]:
    """A 95% percentile-bootstrap interval of the mean (questions resampled; fixed seed)."""
    import random

    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    return [means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]]


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


async def run_grid(config: BenchConfig, test: list[Answered], calibration: Calibration, score_name: str,
                   log: Any) -> list[dict[str, Any]]:
    recorded = {_key(a.request): a.cloud_response for a in test}
    cloud_compute = statistics.median(a.cloud_s for a in test)
    states = []
    async with serve_app(recorded_cloud(recorded)) as front:
        for bandwidth, rtt in config.grid:
            measured, network_s = await measure_state(bandwidth, rtt, front, test)
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
                    "netgpt_dominated_by": [k for k, v in policies.items()
                                            if k.startswith("fixed_") and dominated(policies["netgpt"], [v])],
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
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads_per_agent": config.threads,
                    "loadavg_before": os.getloadavg()},
    }
    cache = AnswerCache(work_dir / "answers.jsonl", config.edge_model, config.cloud_model)
    started: list[Agent] = []

    def agents() -> tuple[Agent, Agent]:
        if not started:
            started.append(start_agent(config.edge_model, "edge", config.threads, work_dir / "edge.log"))
            started.append(start_agent(config.cloud_model, "cloud", config.threads, work_dir / "cloud.log"))
        return started[0], started[1]

    try:
        start = time.monotonic()
        cal = asyncio.run(answer_all(cal_q, agents, cache, config.max_tokens, config.concurrency, log))
        test = asyncio.run(answer_all(test_q, agents, cache, config.max_tokens, config.concurrency, log))
        log(f"answers ready in {time.monotonic() - start:.0f} s")
    finally:
        for agent in started:
            agent.stop()
    result["answering"] = {
        "live": bool(started), "seconds": time.monotonic() - start,
        "loadavg_1m_min_max": [min(a.loadavg_1m for a in cal + test), max(a.loadavg_1m for a in cal + test)],
        "concurrency": config.concurrency}
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
    result["score"] = {"chosen": score_name, "auroc_calibration": separation, "auroc_test": choose_score(test)}
    result["calibration"] = calibration.to_dict()
    cloud_compute = statistics.median(a.cloud_s for a in test)
    save_rl_inputs(work_dir, cal, test, calibration, score_name, cloud_compute)
    result["threshold_curves"] = threshold_curves(calibration, cloud_compute, RequestSize(6000, 400, 1500))
    grid_start = time.monotonic()
    result["states"] = asyncio.run(run_grid(config, test, calibration, score_name, log))
    result["grid_seconds"] = time.monotonic() - grid_start
    result["answers"] = [{k: v for k, v in asdict(a).items() if k not in ("request", "cloud_response")}
                         for a in test]
    result["rounds"] = rounds or []
    result["machine"]["loadavg_after"] = os.getloadavg()
    return result


REFERENCE_STATE = NetworkState(10.0, 50.0)  # what the RL rounds' "same threshold rule" is evaluated at
REFERENCE_PRICE = "relaxed"  # with the others, this machine's cloud compute time alone makes tau* = 0


def save_rl_inputs(work_dir: Path, cal: list[Answered], test: list[Answered], calibration: Calibration,
                   score_name: str, cloud_compute_s: float) -> None:
    """What ``scripts/netgpt_rl.py`` learns from: the calibration requests the NetGPT rule offloads in
    the reference state and price with the cloud's answers, and the test ids."""
    policy = NetGPTPolicy(calibration, cloud_compute_s=cloud_compute_s)
    sizes = {a.id: RequestSize(len(json.dumps(a.request)), len(json.dumps(a.cloud_response)), a.tokens) for a in cal}
    median_size = sorted(sizes.values(), key=lambda z: z.request_bytes)[len(sizes) // 2]
    price = PRICES[REFERENCE_PRICE]
    tau = policy.threshold(REFERENCE_STATE, price, median_size)
    offloaded = [{"id": a.id, "score": a.scores[score_name], "cloud_calls": tool_calls(a.cloud_response) or []}
                 for a in cal if policy.decide(a.scores[score_name], REFERENCE_STATE, price,
                                               sizes[a.id]).route == "cloud"]
    (work_dir / "rl_inputs.json").write_text(json.dumps({
        "calibration": calibration.to_dict(), "score": score_name, "threshold": tau,
        "reference_state": asdict(REFERENCE_STATE), "reference_price": REFERENCE_PRICE, "offloaded": offloaded,
        "test_ids": [a.id for a in test],
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

    prices = [p for p in ("relaxed", "standard") if any(s["price"] == p for s in result["states"])]
    grid = [[s for s in result["states"] if s["price"] == p] for p in prices] or [result["states"]]
    fig, axes = plt.subplots(len(grid), len(grid[0]), figsize=(4 * len(grid[0]), 3.4 * len(grid)), squeeze=False)
    for row, states in zip(axes, grid, strict=True):
        for ax, state in zip(row, states, strict=True):
            pol = state["policies"]
            fixed = sorted((v["cost"], v["accuracy"], k) for k, v in pol.items() if k.startswith("fixed_"))
            ax.plot([f[0] for f in fixed], [f[1] for f in fixed], "o-", color="grey", label="fixed thresholds")
            for c, a, k in fixed:
                ax.annotate(k.removeprefix("fixed_"), (c, a), fontsize=7, color="grey")
            ax.plot(pol["edge"]["cost"], pol["edge"]["accuracy"], "s", markersize=9, label="always edge")
            ax.plot(pol["cloud"]["cost"], pol["cloud"]["accuracy"], "^", label="always cloud")
            ax.plot(pol["netgpt"]["cost"], pol["netgpt"]["accuracy"], "*", markersize=11, color="red", label="NetGPT")
            ax.set_title(f"{state['bandwidth_mbps']:g} Mbit/s, RTT {state['rtt_ms']:g} ms ({state['price']})",
                         fontsize=9)
            ax.set_xlabel("cost per request")
            ax.set_ylabel("accuracy (BFCL AST)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
