"""`edgecloud bench tiers`: online requests against a batch full of offline (``flex``) decodes.

Three measurements on one engine, one model, the same online prompts:

* **idle**: the online requests at their arrival times on an otherwise idle engine (and, for
  reference, each one alone);
* **the flex batch's decode step**: ``max_num_seqs`` flex requests decoding together;
* **loaded**: flex requests keep every seat busy (refilled as they finish) while online requests
  arrive at Poisson times, once with service tiers (``default`` online, ``flex`` offline: an online
  request preempts a flex one at the next step and its prefill runs alone) and once without
  (every request ``default``, FCFS: an online request waits for a seat).

The goal (issue #17): with tiers, the online TTFT p99 is at most the idle TTFT p99 plus one decode
step of the flex batch. With long flex prompts (``flex_prompt_len``) the flex batch is mostly
prefilling, and the bench also gives OOCO's preemption figure (issue #19): how long an online request
that arrives during a step with flex prefill waits until its own prefill is scheduled, against the
bound of one layer's time (a whole flex prefill step's median over its layers) plus one step (the
flex batch's decode step). A step of flex work only is dropped between layers when an online request is due
(``EngineCore.interrupt``, as the served core does when one reaches its socket), so flex prefill can
run in large chunks (``flex_max_batched_tokens``) without holding online prefill back.
Every flex request that was preempted must finish with the same greedy
output as when it ran uninterrupted; the benchmark checks that too. The engine runs synchronously
here: an arrival during a step is admitted when the step ends, as an asynchronous front end's
would be, and its TTFT counts that wait.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgecloud.llm.config import EngineConfig
from edgecloud.llm.engine import LLMEngine
from edgecloud.llm.outputs import OutputKind
from edgecloud.llm.sampling_params import SamplingParams


@dataclass
class TiersResult:
    model: str
    threads: int
    cpu: str
    flex_batch: int
    online_requests: int
    online_prompt_len: int
    rate_per_s: float
    flex_max_batched_tokens: int
    idle_ttft_ms: list[float]  # each online request alone
    idle_arrivals_ttft_ms: list[float]  # the same requests at the same arrival times, no flex work
    decode_step_ms: float
    tiers_ttft_ms: list[float]
    fcfs_ttft_ms: list[float]
    idle_ttft_ms_p99: float = 0.0
    idle_arrivals_ttft_ms_p99: float = 0.0
    tiers_ttft_ms_p99: float = 0.0
    fcfs_ttft_ms_p99: float = 0.0
    bound_ms: float = 0.0  # idle p99 (same arrivals, no flex) + one flex decode step
    met: bool = False
    preempted_flex: int = 0
    preempted_flex_identical: int = 0
    flex_tokens_s_tiers: float = 0.0
    flex_tokens_s_fcfs: float = 0.0
    flex_prompt_len: tuple[int, int] = (16, 64)
    num_layers: int = 0
    # online requests that arrived during a step with flex prefill (tiers run): the wait from arrival
    # to their own first scheduled step, and the bound: one layer's time (a whole flex prefill step's
    # median split evenly over the layers) + one decode step of the flex batch
    prefill_arrivals: int = 0
    start_wait_ms: list[float] = field(default_factory=list)
    start_bound_ms: list[float] = field(default_factory=list)
    start_within_bound: int = 0
    start_wait_ms_p50: float = 0.0
    start_wait_ms_p99: float = 0.0
    flex_prefill_step_ms_p50: float = 0.0
    abandoned_steps: int = 0  # flex-only steps dropped between layers for an arriving online request
    notes: list[str] = field(default_factory=list)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def _p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


@dataclass
class _Starts:
    """Per online request that arrived during a step with flex prefill: its wait and a layer's time
    (a whole flex prefill step's median over the layers), in ms."""

    waits: list[float] = field(default_factory=list)
    layer_ms: list[float] = field(default_factory=list)
    flex_prefill_steps: list[float] = field(default_factory=list)
    abandoned_steps: int = 0


def _run_loaded(
    engine: LLMEngine, online: list[list[int]], arrivals: list[float], flex_prompts: list[list[int]],
    flex_params: SamplingParams, online_params: SamplingParams, tiers: bool, starts: _Starts | None = None,
) -> tuple[list[float], dict[str, list[int]], set[str], float]:
    """Keeps the batch full of flex work while online requests arrive; returns online TTFTs (ms),
    every finished flex request's tokens, which flex requests were preempted, and flex tokens/s.
    ``starts`` collects the prefill-start waits of online requests that arrived during flex prefill.
    Times are the engine's clock (``time.monotonic``), as its requests' ``first_scheduled_time``."""
    flex_tier = "flex" if tiers else "default"
    next_flex = 0

    def add_flex() -> None:
        nonlocal next_flex
        if not flex_prompts:  # the idle run: the same online arrivals, nothing else
            return
        prompt = flex_prompts[next_flex % len(flex_prompts)]
        engine.add_request(f"flex-{next_flex}", prompt, flex_params, service_tier=flex_tier,
                           output_kind=OutputKind.FINAL_ONLY)
        next_flex += 1

    for _ in range(engine.config.max_num_seqs):
        add_flex()
    if starts is None:  # flex work as decodes: every flex request prefilled before online ones arrive
        while any(r.num_computed_tokens < r.num_prompt_tokens for r in engine.scheduler.requests.values()):
            engine.step()
    start = time.monotonic()
    due = [start + a for a in arrivals]
    added_at: dict[str, float] = {}
    ttft: dict[str, float] = {}
    flex_out: dict[str, list[int]] = {}
    preempted: set[str] = set()
    flex_tokens = 0
    steps: list[tuple[float, float, bool, bool]] = []  # (start, end, with flex prefill, dropped)
    started: dict[str, float] = {}
    i = 0
    abandoned = engine.core.num_abandoned_steps
    planned: list[bool] = []  # whether the step's plan prefills flex work (asked before it runs)
    on_step = engine.core.on_step
    engine.core.on_step = lambda plan: planned.append(any(
        s.request.service_tier == "flex" and s.request.num_computed_tokens < s.request.num_prompt_tokens
        for s in plan.scheduled))
    if tiers and flex_prompts:
        # what an asynchronous front end gives the core: an online request is visible the moment it
        # arrives, so a flex-only step in flight is dropped between layers (docs/engine-core.md)
        engine.core.interrupt = lambda: i < len(online) and due[i] <= time.monotonic()
    while len(ttft) < len(online):
        now = time.monotonic()
        while i < len(online) and due[i] <= now:
            rid = f"online-{i}"
            engine.add_request(rid, online[i], online_params, output_kind=OutputKind.DELTA)
            added_at[rid] = due[i]
            i += 1
        if not engine.has_unfinished():
            time.sleep(max(0.0, due[i] - now) if i < len(online) else 0)
            continue
        step_start, dropped = time.monotonic(), engine.core.num_abandoned_steps
        planned.clear()
        outputs = engine.step()
        flex_prefill = any(planned)
        done = time.monotonic()
        steps.append((step_start, done, flex_prefill, engine.core.num_abandoned_steps > dropped))
        for req in engine.scheduler.requests.values():
            if req.num_preemptions and req.request_id.startswith("flex"):
                preempted.add(req.request_id)
            elif req.request_id.startswith("online") and req.first_scheduled_time is not None:
                started.setdefault(req.request_id, req.first_scheduled_time)
        for out in outputs:
            if out.request_id.startswith("online") and out.request_id not in ttft:
                ttft[out.request_id] = done - added_at[out.request_id]
            elif out.request_id.startswith("flex") and out.finished:
                flex_out[out.request_id] = out.outputs[0].token_ids
                flex_tokens += len(out.outputs[0].token_ids)
                add_flex()
    elapsed = time.monotonic() - start
    engine.core.interrupt = None
    engine.core.on_step = on_step
    if starts is not None:
        starts.abandoned_steps = engine.core.num_abandoned_steps - abandoned
        layers = engine.model_config.num_hidden_layers
        whole = [(b - a) * 1000 for a, b, prefill, dropped in steps if prefill and not dropped]
        starts.flex_prefill_steps += whole
        layer_ms = float(np.median(whole)) / layers if whole else 0.0  # a whole flex prefill step's share
        for k in range(len(online)):
            arrived = due[k]
            inflight = any(prefill and a <= arrived < b for a, b, prefill, _ in steps)
            if not inflight or f"online-{k}" not in started:
                continue
            starts.waits.append(float(started[f"online-{k}"] - arrived) * 1000)
            starts.layer_ms.append(layer_ms)
    # let the preempted flex requests still running finish (their output is checked), no new ones
    while any(rid in preempted for rid in engine.processor.requests):
        for out in engine.step():
            if out.request_id.startswith("flex") and out.finished:
                flex_out[out.request_id] = out.outputs[0].token_ids
    for rid in list(engine.processor.requests):
        engine.abort(rid)
    return [ttft[f"online-{k}"] * 1000 for k in range(len(online))], flex_out, preempted, flex_tokens / elapsed


def bench_tiers(
    model: str | None,
    flex_batch: int = 16,
    flex_output: int = 96,
    online_requests: int = 40,
    online_prompt_len: int = 128,
    online_output: int = 4,
    rate_per_s: float = 0.5,
    threads: int = 2,
    seed: int = 0,
    json_path: Path | None = None,
    flex_max_batched_tokens: int | None = None,
    flex_prompt_len: tuple[int, int] = (16, 64),
) -> TiersResult:
    torch.set_num_threads(threads)
    engine = LLMEngine(EngineConfig(model=model, max_num_seqs=flex_batch, seed=seed, kv_cache_memory_mb=1024,
                                    flex_max_batched_tokens=flex_max_batched_tokens))
    vocab = engine.model_config.vocab_size
    rng = random.Random(seed)
    online = [[rng.randrange(2, vocab) for _ in range(online_prompt_len)] for _ in range(online_requests)]
    flex_prompts = [[rng.randrange(2, vocab) for _ in range(rng.randint(*flex_prompt_len))]
                    for _ in range(4 * flex_batch)]
    prefilling = flex_prompt_len[0] > 64  # long flex prompts: measure starts during flex prefill
    flex_params = SamplingParams(temperature=0.0, max_tokens=flex_output, ignore_eos=True)
    online_params = SamplingParams(temperature=0.0, max_tokens=online_output, ignore_eos=True)

    def drain() -> None:
        while engine.has_unfinished():
            engine.step()

    # warm-up, then idle TTFTs (the prefix cache is emptied before each phase; the prompts are distinct)
    engine.add_request("warm", online[0][:32], online_params)
    drain()
    idle = []
    engine.kv.reset_prefix_cache()
    for k, prompt in enumerate(online):
        engine.add_request(f"idle-{k}", prompt, online_params)
        start = time.perf_counter()
        while True:
            outs = engine.step()
            if any(o.outputs[0].token_ids for o in outs):
                break
        idle.append((time.perf_counter() - start) * 1000)
        drain()

    # the flex batch's decode step (short prompts, so the measured steps are decodes whatever flex_prompt_len)
    lengths = random.Random(seed + 1)  # its own stream: the arrivals below stay as they were
    for k in range(flex_batch):
        engine.add_request(f"step-{k}", online[k % len(online)][: lengths.randint(16, 64)], flex_params,
                           service_tier="flex")
    for _ in range(3):
        engine.step()
    steps = []
    for _ in range(10):
        start = time.perf_counter()
        engine.step()
        steps.append((time.perf_counter() - start) * 1000)
    for rid in list(engine.processor.requests):
        engine.abort(rid)
    decode_step = float(np.median(steps))

    gaps = [rng.expovariate(rate_per_s) for _ in online]
    arrivals = list(np.cumsum(gaps))
    engine.kv.reset_prefix_cache()
    idle_arrivals, _, _, _ = _run_loaded(engine, online, arrivals, [], flex_params, online_params, tiers=True)
    engine.kv.reset_prefix_cache()
    starts = _Starts() if prefilling else None
    tiers_ttft, tiers_out, preempted, flex_rate_tiers = _run_loaded(
        engine, online, arrivals, flex_prompts, flex_params, online_params, tiers=True, starts=starts
    )
    engine.kv.reset_prefix_cache()
    fcfs_ttft, _, _, flex_rate_fcfs = _run_loaded(
        engine, online, arrivals, flex_prompts, flex_params, online_params, tiers=False
    )

    # uninterrupted reference of every preempted flex request that finished
    checked = [rid for rid in sorted(preempted) if rid in tiers_out]
    identical = 0
    for rid in checked:
        prompt = flex_prompts[int(rid.split("-")[1]) % len(flex_prompts)]
        engine.add_request("ref", prompt, flex_params, output_kind=OutputKind.FINAL_ONLY)
        final = None
        while engine.has_unfinished():
            for out in engine.step():
                final = out
        assert final is not None
        identical += final.outputs[0].token_ids == tiers_out[rid]

    result = TiersResult(
        model=engine.model_name, threads=threads, cpu=cpu_model(), flex_batch=flex_batch,
        online_requests=online_requests, online_prompt_len=online_prompt_len, rate_per_s=rate_per_s,
        flex_max_batched_tokens=engine.scheduler.flex_max_batched_tokens,
        idle_ttft_ms=idle, idle_arrivals_ttft_ms=idle_arrivals, decode_step_ms=decode_step,
        tiers_ttft_ms=tiers_ttft, fcfs_ttft_ms=fcfs_ttft, idle_ttft_ms_p99=_p99(idle),
        idle_arrivals_ttft_ms_p99=_p99(idle_arrivals), tiers_ttft_ms_p99=_p99(tiers_ttft),
        fcfs_ttft_ms_p99=_p99(fcfs_ttft),
        bound_ms=_p99(idle_arrivals) + decode_step, preempted_flex=len(checked), preempted_flex_identical=identical,
        flex_tokens_s_tiers=flex_rate_tiers, flex_tokens_s_fcfs=flex_rate_fcfs,
    )
    result.met = result.tiers_ttft_ms_p99 <= result.bound_ms
    result.flex_prompt_len = flex_prompt_len
    result.num_layers = engine.model_config.num_hidden_layers
    if starts is not None:
        result.prefill_arrivals = len(starts.waits)
        result.abandoned_steps = starts.abandoned_steps
        result.start_wait_ms = starts.waits
        result.start_bound_ms = [layer + decode_step for layer in starts.layer_ms]
        result.start_within_bound = sum(bool(w <= b) for w, b in zip(result.start_wait_ms, result.start_bound_ms,
                                                                       strict=True))
        result.start_wait_ms_p50 = float(np.percentile(starts.waits, 50)) if starts.waits else float("nan")
        result.start_wait_ms_p99 = _p99(starts.waits)
        result.flex_prefill_step_ms_p50 = (float(np.median(starts.flex_prefill_steps))
                                           if starts.flex_prefill_steps else float("nan"))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def plot_tiers(result: TiersResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, values in (("idle engine, same arrivals", result.idle_arrivals_ttft_ms),
                          ("flex batch, tiers", result.tiers_ttft_ms),
                          ("flex batch, FCFS (no tiers)", result.fcfs_ttft_ms)):
        xs = np.sort(values)
        ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=label)
    ax.axvline(result.bound_ms, color="grey", linestyle="--", label="idle p99 + one flex decode step (goal)")
    ax.set_xscale("log")
    ax.set_xlabel("online TTFT (ms, log)")
    ax.set_ylabel("fraction of online requests")
    ax.set_title(f"{result.model}: online TTFT beside {result.flex_batch} flex decodes ({result.threads} threads)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
